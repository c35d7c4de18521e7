package timer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/robfig/cron/v3"
)

// Config of the timer.
type Config struct {
	// Interval between sweeps. Default 20s, the sample's retryTimerInterval.
	Interval time.Duration
	// Quantum is how old a retry document's last attempt must be before it
	// is retried. Default 15s, the sample's.
	Quantum time.Duration
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if c.Interval < 0 || (c.Interval > 0 && c.Interval < 10*time.Millisecond) {
		return fmt.Errorf("timer-interval: %s is below 10ms", c.Interval)
	}
	if c.Quantum < 0 {
		return fmt.Errorf("retry-quantum: %s is negative", c.Quantum)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Interval == 0 {
		c.Interval = 20 * time.Second
	}
	if c.Quantum == 0 {
		c.Quantum = 15 * time.Second
	}
	return c
}

// Result is what one sweep did.
type Result struct {
	Armed   bool // allow_retrys exists
	Flagged int
}

// Timer flags due retry documents on a schedule.
type Timer struct {
	cfg   Config
	store store.Store
	log   *slog.Logger
	now   func() time.Time
	cron  *cron.Cron
	armed atomic.Bool

	ctx    context.Context // ends at Stop, so a sweep in progress gives up
	cancel context.CancelFunc
}

// New returns a timer; now may be nil for time.Now.
func New(cfg Config, st store.Store, log *slog.Logger, now func() time.Time) (*Timer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	t := &Timer{cfg: cfg.withDefaults(), store: st, now: now, log: log.With("component", "timer")}
	cl := cronLogger{t.log}
	t.cron = cron.New(cron.WithLogger(cl), cron.WithChain(cron.Recover(cl), cron.SkipIfStillRunning(cl)))
	t.cron.Schedule(every(t.cfg.Interval), cron.FuncJob(t.tick))
	return t, nil
}

// Sweep is one timer callback at time now: when allow_retrys exists, flag
// the retry documents whose last attempt is older than the quantum.
func (t *Timer) Sweep(ctx context.Context, now time.Time) (Result, error) {
	_, err := t.store.Get(ctx, order.Retry, order.ControlKey)
	if errors.Is(err, store.ErrNotFound) {
		return Result{}, nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("read %s: %w", order.ControlKey, err)
	}
	res, err := t.store.SweepRetries(ctx, now.Add(-t.cfg.Quantum))
	if err != nil {
		return Result{Armed: true}, err
	}
	return Result{Armed: true, Flagged: res.Flagged}, nil
}

func (t *Timer) tick() {
	ctx, cancel := context.WithTimeout(t.ctx, max(t.cfg.Interval, time.Second))
	defer cancel()
	res, err := t.Sweep(ctx, t.now())
	if err != nil {
		// The schedule is already armed for the next tick: nothing to undo.
		t.log.Warn("sweep", "error", err)
		return
	}
	if was := t.armed.Swap(res.Armed); was != res.Armed {
		if res.Armed {
			t.log.Info("retries armed", "control", order.ControlKey, "interval", t.cfg.Interval, "quantum", t.cfg.Quantum)
		} else {
			t.log.Info("retries paused", "control", order.ControlKey)
		}
	}
	if res.Flagged > 0 {
		t.log.Info("flagged retries", "count", res.Flagged)
	}
}

// Start starts ticking; it does not block.
func (t *Timer) Start() {
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.cron.Start()
	t.log.Info("timer started", "interval", t.cfg.Interval, "quantum", t.cfg.Quantum)
}

// Stop stops ticking and waits for a sweep in progress, until ctx ends.
func (t *Timer) Stop(ctx context.Context) error {
	t.cancel()
	select {
	case <-t.cron.Stop().Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop timer: %w", ctx.Err())
	}
}

// every is a cron schedule of a fixed interval. cron.Every rounds to whole
// seconds, which is too coarse for the demo and tests.
type every time.Duration

func (e every) Next(t time.Time) time.Time { return t.Add(time.Duration(e)) }

// cronLogger sends cron's own messages to slog; its Info is chatty, so Debug.
type cronLogger struct{ log *slog.Logger }

func (l cronLogger) Info(msg string, kv ...any) { l.log.Debug("cron: "+msg, kv...) }
func (l cronLogger) Error(err error, msg string, kv ...any) {
	l.log.Error("cron: "+msg, append(kv, "error", err)...)
}
