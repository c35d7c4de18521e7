package timer

import (
	"log/slog"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/watcher"
	"go.uber.org/fx"
)

// Module provides the *Timer, its sweeps gated by the email service's
// circuit breaker (SetGate). Its owner starts and stops it, after the
// watcher's start and before its stop: a tick between would take the
// instance for a standby (its feed not running).
var Module = fx.Module("timer",
	fx.Provide(func(cfg Config, st store.Store, log *slog.Logger, m *mailer.Client, w *watcher.Watcher) (*Timer, error) {
		t, err := New(cfg, st, log, nil)
		if err != nil {
			return nil, err
		}
		t.SetGate(sendGate{m, w})
		return t, nil
	}),
)

// sendGate is the mailer's breaker as the sweep sees it, and one case
// more: while the breaker would let a probe through and another member
// of the feed sends (its heartbeat says its sends go out), this instance
// counts as held and leaves the sweep to it. The single instance's probe,
// one retry flagged a tick, assumes the retry comes back through this
// instance's breaker; with several it goes to whichever owns its vBucket,
// and while the probing instance held the sweep lease every instance's
// retries went out one a tick: an instance that had stepped aside (no
// vBuckets, its breaker half-open for ever) drained 5,000 held orders at
// 2-5 a second on the Couchbase test server.
type sendGate struct {
	m Gate
	w feedReporter
}

// feedReporter reports the feed's figures (*watcher.Watcher).
type feedReporter interface {
	FeedStats() (store.FeedStats, bool)
}

func (g sendGate) HeldBack() (held, probing bool) {
	// An instance whose feed does not run (a standby on an embedded store)
	// sends nothing: its breaker, closed for want of sends, says nothing
	// of the email service, and sweeping on it would flag every due retry
	// while the instance that sends has its breaker open.
	if g.Standby() {
		return true, false
	}
	held, probing = g.m.HeldBack()
	if probing {
		if st, ok := g.w.FeedStats(); ok && st.AnotherSends() {
			return true, false
		}
	}
	return held, probing
}

// Misconfigured is the mailer's (*mailer.Client.Misconfigured): why the
// email service refuses the configuration, or "" when it does not.
func (g sendGate) Misconfigured() string {
	if m, ok := g.m.(interface{ Misconfigured() string }); ok {
		return m.Misconfigured()
	}
	return ""
}

// Standby says whether this instance's feed does not run (a standby on an
// embedded store): it sweeps nothing, as a held one, but nothing of its is
// held back, and it says so as a standby.
func (g sendGate) Standby() bool {
	r, ok := g.w.(interface{ Running() bool })
	return ok && !r.Running()
}

// FeedLag is how many changes are ahead of this instance's feed reader,
// as far as the feed tells: the embedded store's events say it as they are
// read (the watcher's ReadLag), Couchbase's streams keep it (past the
// checkpoints).
func (g sendGate) FeedLag() (uint64, bool) {
	if r, ok := g.w.(interface{ ReadLag() (uint64, bool) }); ok {
		if n, known := r.ReadLag(); known {
			return n, true
		}
	}
	if st, ok := g.w.FeedStats(); ok {
		return st.Lag, true
	}
	return 0, false
}
