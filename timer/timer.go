package timer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ordermail/ordermail/lease"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/robfig/cron/v3"
)

// Config of the timer.
type Config struct {
	// Interval between ticks: each reads allow_retrys and, unless it sets a
	// longer interval, sweeps. Default 1s: retries are due at their own
	// nextAttemptAt, so frequent ticks make them fire on time.
	Interval time.Duration
	// Quantum: a retry document without nextAttemptAt (the sample's) is due
	// once its last attempt is this old. Default 15s, the sample's.
	Quantum time.Duration
	// Owner names this instance in the sweep lease. Default lease.Owner().
	Owner string
	// SweepBatch is how many due retries one sweep transaction flags.
	// Default 1000.
	SweepBatch int
	// SweepBudget bounds how long one tick keeps sweeping batch after batch
	// while due retries are left; the rest waits for the next tick. Default
	// half the interval, at most 1s.
	SweepBudget time.Duration
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if c.Interval < 0 || (c.Interval > 0 && c.Interval < 10*time.Millisecond) {
		return fmt.Errorf("timer-interval: %s is below 10ms", c.Interval)
	}
	if c.Quantum < 0 {
		return fmt.Errorf("retry-quantum: %s is negative", c.Quantum)
	}
	if c.SweepBatch < 0 || c.SweepBatch > 100_000 {
		return fmt.Errorf("sweep-batch: %d is not between 1 and 100000", c.SweepBatch)
	}
	if c.SweepBudget < 0 {
		return fmt.Errorf("sweep-budget: %s is negative", c.SweepBudget)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.Quantum == 0 {
		c.Quantum = 15 * time.Second
	}
	if c.SweepBatch == 0 {
		c.SweepBatch = 1000
	}
	if c.SweepBudget == 0 {
		c.SweepBudget = min(c.Interval/2, time.Second)
	}
	return c
}

// Result is what one tick did.
type Result struct {
	Armed   bool // allow_retrys exists
	Standby bool // another instance holds the sweep lease and sweeps
	Swept   bool // the sweep ran (not skipped for allow_retrys' longer interval)
	Flagged int
	Batches int  // sweep transactions
	More    bool // due retries were left for the next tick (the budget ran out)
}

// Timer flags due retry documents on a schedule.
type Timer struct {
	cfg   Config
	store store.Store
	log   *slog.Logger
	now   func() time.Time
	cron  *cron.Cron
	lease *lease.Lease // one sweeper among the instances on a store
	armed atomic.Bool
	ticks atomic.Int64

	mu        sync.Mutex
	lastSweep time.Time
	badCAS    uint64 // the allow_retrys version last reported as invalid

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
	if t.cfg.Owner == "" {
		t.cfg.Owner = lease.Owner()
	}
	// Three ticks: a holder that missed two renewals is taken over.
	t.lease = lease.New(st, "timer", t.cfg.Owner, max(3*t.cfg.Interval, 3*time.Second), now)
	cl := cronLogger{t.log}
	t.cron = cron.New(cron.WithLogger(cl), cron.WithChain(cron.Recover(cl), cron.SkipIfStillRunning(cl)))
	t.cron.Schedule(every(t.cfg.Interval), cron.FuncJob(t.tick))
	return t, nil
}

// Sweep is one timer callback at time now: when allow_retrys exists, flag
// the retry documents that are due. allow_retrys may set a longer interval
// (sweeps are then skipped until it has passed) and the quantum.
func (t *Timer) Sweep(ctx context.Context, now time.Time) (Result, error) {
	doc, err := t.store.Get(ctx, order.Retry, order.ControlKey)
	if errors.Is(err, store.ErrNotFound) {
		return Result{}, nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("read %s: %w", order.ControlKey, err)
	}
	if err := t.lease.Acquire(ctx); errors.Is(err, lease.ErrHeld) {
		return Result{Armed: true, Standby: true}, nil
	} else if err != nil {
		return Result{Armed: true}, fmt.Errorf("sweep lease: %w", err)
	}
	interval, quantum := t.settings(doc)
	t.mu.Lock()
	// Half a tick of slack, so that a tick that comes a little early does
	// not push the sweep a whole tick later.
	due := t.lastSweep.IsZero() || now.Sub(t.lastSweep) >= interval-t.cfg.Interval/2
	t.mu.Unlock()
	if !due {
		return Result{Armed: true}, nil
	}
	res := Result{Armed: true}
	start := time.Now()
	for {
		batch, err := t.store.SweepRetries(ctx, now, quantum, t.cfg.SweepBatch)
		if err != nil {
			return res, err // not recorded: the next tick tries again
		}
		res.Batches++
		res.Flagged += batch.Flagged
		res.More = batch.More
		// Each batch is a short transaction of its own: a backlog of any
		// size is flagged batch by batch, never in one long write.
		if !batch.More || time.Since(start) >= t.cfg.SweepBudget {
			break
		}
	}
	res.Swept = true
	t.mu.Lock()
	t.lastSweep = now
	t.mu.Unlock()
	return res, nil
}

// settings reads allow_retrys' overrides; a document that does not make
// sense is reported once per version and overrides nothing.
func (t *Timer) settings(doc store.Doc) (interval, quantum time.Duration) {
	interval, quantum = t.cfg.Interval, t.cfg.Quantum
	ctl, err := order.DecodeControl(doc.Value)
	if err != nil {
		t.mu.Lock()
		report := t.badCAS != doc.CAS
		t.badCAS = doc.CAS
		t.mu.Unlock()
		if report {
			t.log.Warn("ignoring the settings in "+order.ControlKey, "reason", err, "interval", interval, "quantum", quantum)
		}
		return interval, quantum
	}
	if ctl.Interval > 0 {
		interval = ctl.Interval
	}
	if ctl.Quantum > 0 {
		quantum = ctl.Quantum
	}
	return interval, quantum
}

// Ticks counts the ticks finished since Start, for operators and tests.
func (t *Timer) Ticks() int64 { return t.ticks.Load() }

func (t *Timer) tick() {
	defer t.ticks.Add(1)
	ctx, cancel := context.WithTimeout(t.ctx, max(t.cfg.Interval, time.Second))
	defer cancel()
	res, err := t.Sweep(ctx, t.now())
	if err != nil {
		// The schedule is already armed for the next tick: nothing to undo.
		t.log.Warn("sweep", "error", err)
		return
	}
	if res.Standby {
		t.log.Debug("another instance sweeps")
	}
	if was := t.armed.Swap(res.Armed); was != res.Armed {
		if res.Armed {
			t.log.Info("retries armed", "control", order.ControlKey, "interval", t.cfg.Interval, "quantum", t.cfg.Quantum)
		} else {
			t.log.Info("retries paused", "control", order.ControlKey)
		}
	}
	if res.Flagged > 0 {
		t.log.Debug("flagged retries", "count", res.Flagged, "batches", res.Batches, "more", res.More)
	}
}

// Start starts ticking; it does not block.
func (t *Timer) Start() {
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.cron.Start()
	t.log.Info("timer started", "interval", t.cfg.Interval, "quantum", t.cfg.Quantum)
}

// Stop stops ticking, waits for a sweep in progress until ctx ends, and
// hands the sweep lease on.
func (t *Timer) Stop(ctx context.Context) error {
	t.cancel()
	select {
	case <-t.cron.Stop().Done():
	case <-ctx.Done():
		return fmt.Errorf("stop timer: %w", ctx.Err())
	}
	if err := t.lease.Release(ctx); err != nil {
		return fmt.Errorf("stop timer: release sweep lease: %w", err)
	}
	return nil
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
