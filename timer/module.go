package timer

import (
	"log/slog"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/watcher"
	"go.uber.org/fx"
)

// Module provides the *Timer, its sweeps gated by the email service's
// circuit breaker (SetGate), and runs it with the app.
var Module = fx.Module("timer",
	fx.Provide(func(cfg Config, st store.Store, log *slog.Logger, m *mailer.Client, w *watcher.Watcher) (*Timer, error) {
		t, err := New(cfg, st, log, nil)
		if err != nil {
			return nil, err
		}
		t.SetGate(sendGate{m, w})
		return t, nil
	}),
	fx.Invoke(func(lc fx.Lifecycle, t *Timer) {
		lc.Append(fx.StartStopHook(t.Start, t.Stop))
	}),
)

// sendGate is the mailer's breaker as the sweep sees it, and one case
// more: an instance that stepped aside (its vBuckets handed to the others
// while its sends were held) counts as held even when its breaker would
// let a probe through. A probe it flagged would go to another instance's
// vBuckets, never through its own breaker, and while it held the sweep
// lease it would flag one retry a tick for every instance: 5,000 held
// orders drained at 2-5 a second on the Couchbase test server.
type sendGate struct {
	m Gate
	w feedReporter
}

// feedReporter reports the feed's figures (*watcher.Watcher).
type feedReporter interface {
	FeedStats() (store.FeedStats, bool)
}

func (g sendGate) HeldBack() (held, probing bool) {
	held, probing = g.m.HeldBack()
	if probing {
		if st, ok := g.w.FeedStats(); ok && st.Aside {
			return true, false
		}
	}
	return held, probing
}
