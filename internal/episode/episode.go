// Package episode says a failure that repeats once, not at every try: an
// outage of minutes at one line a vBucket or an order a second would bury
// the one line an operator needs in tens of thousands.
package episode

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// RemindEvery is how often a failure that goes on is said again.
const RemindEvery = 5 * time.Minute

// An Episode is a failure of some things (vBuckets' streams, orders'
// writes), each by a key, from the first to fail until none does: its
// first failure is logged at Warn, the others at Debug, with a Warn that
// it goes on every RemindEvery, and its end at Info, with how many failed
// and for how long. Safe for concurrent use.
type Episode struct {
	log  *slog.Logger
	what string // what failed, for the reminder and the end: "streams"
	now  func() time.Time

	n        atomic.Int64 // len(failing): Mended's way past mu while nothing fails (every event calls it)
	mu       sync.Mutex
	failing  map[any]bool
	since    time.Time // the episode's first failure; zero: none under way
	reminded time.Time
	failures int
}

// New returns an episode of what (a plural: "streams", "outcome writes")
// logged to log; now may be nil for time.Now.
func New(log *slog.Logger, what string, now func() time.Time) *Episode {
	if now == nil {
		now = time.Now
	}
	return &Episode{log: log, what: what, now: now, failing: map[any]bool{}}
}

// Fail records that key failed, and logs msg with args: at Warn when it
// begins the episode, at Debug while one is under way.
func (e *Episode) Fail(ctx context.Context, key any, msg string, args ...any) {
	e.mu.Lock()
	now := e.now()
	first := e.since.IsZero()
	if first {
		e.since, e.reminded = now, now
	}
	e.failing[key] = true
	e.n.Store(int64(len(e.failing)))
	e.failures++
	remind := !first && now.Sub(e.reminded) >= RemindEvery
	if remind {
		e.reminded = now
	}
	failing, failures, since := len(e.failing), e.failures, e.since
	e.mu.Unlock()
	if first {
		e.log.Log(ctx, slog.LevelWarn, msg+" (more "+e.what+" failing are logged at debug level until none is)", args...)
		return
	}
	e.log.Log(ctx, slog.LevelDebug, msg, args...)
	if remind {
		// With the failure just now: another, begun while this one went
		// on (a second node down), is not hidden at debug level for good.
		e.log.Log(ctx, slog.LevelWarn, e.what+" still failing", append([]any{"failing", failing, "failures", failures,
			"for", now.Sub(since).Round(time.Second).String(), "last", msg}, args...)...)
	}
}

// Mended records that key works again; once none fails, the episode ends.
func (e *Episode) Mended(ctx context.Context, key any) {
	if e.n.Load() == 0 {
		return
	}
	e.mu.Lock()
	if !e.failing[key] {
		e.mu.Unlock()
		return
	}
	delete(e.failing, key)
	e.n.Store(int64(len(e.failing)))
	if len(e.failing) > 0 {
		e.mu.Unlock()
		return
	}
	e.endLocked(ctx)
}

// Clear ends the episode, if one is under way, whatever still failed: the
// caller saw that everything works (every stream open, say).
func (e *Episode) Clear(ctx context.Context) {
	e.mu.Lock()
	if e.since.IsZero() {
		e.mu.Unlock()
		return
	}
	clear(e.failing)
	e.n.Store(0)
	e.endLocked(ctx)
}

// endLocked ends the episode and unlocks e.mu.
func (e *Episode) endLocked(ctx context.Context) {
	now, since, failures := e.now(), e.since, e.failures
	e.since, e.failures = time.Time{}, 0
	e.mu.Unlock()
	if since.IsZero() {
		return
	}
	e.log.Log(ctx, slog.LevelInfo, e.what+" work again", "failures", failures, "for", now.Sub(since).Round(time.Second).String())
}

// Failing says how many keys fail now.
func (e *Episode) Failing() int { return int(e.n.Load()) }
