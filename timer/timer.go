package timer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ordermail/ordermail/lease"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// Config of the timer.
// LeaseName names the sweep lease: one instance among those on a store
// sweeps, and ReadSweeper tells which.
const LeaseName = "timer"

// ReadSweeper reads who holds the sweep lease and until when; a zero
// Holding when nobody ever did.
func ReadSweeper(ctx context.Context, st store.Store) (lease.Holding, error) {
	return lease.New(st, LeaseName, "", 0, nil).Holder(ctx)
}

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

// DefaultInterval is the tick when Config.Interval is not set.
const DefaultInterval = time.Second

// LeaseTTL is the sweep lease's TTL for a timer ticking every interval
// (DefaultInterval when 0): the holder renews it every tick, and another
// instance takes over three ticks after it stops.
func LeaseTTL(interval time.Duration) time.Duration {
	if interval == 0 {
		interval = DefaultInterval
	}
	return max(3*interval, 3*time.Second)
}

func (c Config) withDefaults() Config {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Quantum == 0 {
		c.Quantum = order.DefaultQuantum
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
	// Held: this instance's sends are all held back (its circuit breaker
	// is open), so it flagged nothing and left the sweep lease.
	Held bool
	// Probe: its breaker lets one send through to decide, so it flagged
	// at most one due retry.
	Probe bool
	// Ahead: the sweep stopped where the retries flagged and not yet taken
	// are about a second of sends (pace), due retries possibly left; the
	// timer tops them up every pausedPoll meanwhile.
	Ahead bool
	// NoFeed: this instance's feed does not run (a standby on an embedded
	// store): it sends nothing, and sweeps nothing.
	NoFeed bool
	// Aside: it stands aside, its sweeps having failed, for the lease's
	// TTL, whether or not another instance took the lease meanwhile.
	Aside bool
}

// errSteppedAside says an instance left the sweep lease after its sweeps
// failed again and again.
var errSteppedAside = errors.New("the sweep lease is left to another instance")

// Role is this instance's part in sweeping.
type Role string

const (
	RoleUnknown Role = ""        // no tick has told yet
	RolePaused  Role = "paused"  // allow_retrys is absent: nobody sweeps
	RoleActive  Role = "active"  // this instance holds the sweep lease and sweeps
	RoleStandby Role = "standby" // another instance holds it
	// RoleHeld: this instance's sends are held back (its circuit breaker
	// is open, or the email service refuses its configuration): it flags
	// nothing and leaves the sweep lease to another.
	RoleHeld Role = "held"
)

// Why a sweeper gave the sweep lease up, as the lease records it
// (lease.Holding.Why); a failed sweep's is its error.
const (
	LeftStopped    = "stopped"
	LeftHeld       = "its sends are held back" // the two below begin with it
	LeftBreaker    = LeftHeld + ": circuit breaker open"
	LeftConfigured = LeftHeld + ": the email service refuses its configuration"
	LeftNoFeed     = "its feed does not run (a standby, or the service stopping)"
)

// heldWhy says why g holds every send back: its feed does not run (g has
// Standby, as the app's gate does), the configuration refused (g has
// Misconfigured, as *mailer.Client does) or the breaker.
func heldWhy(g Gate) string {
	if s, ok := g.(interface{ Standby() bool }); ok && s.Standby() {
		return LeftNoFeed
	}
	if m, ok := g.(interface{ Misconfigured() string }); ok && m.Misconfigured() != "" {
		return LeftConfigured
	}
	return LeftBreaker
}

// Gate says whether this instance's sends go out; *mailer.Client is one.
type Gate interface {
	// HeldBack says whether every send is held back now (held), or the
	// next one goes out as the probe that decides (probing).
	HeldBack() (held, probing bool)
}

// Hooks are called as the timer works, for metrics; any may be nil. They
// must not block.
type Hooks struct {
	// Sweep is called after each sweep that ran, with how long its
	// batches took.
	Sweep func(took time.Duration, flagged int)
}

// Status is what the timer knows of itself, for metrics and health.
type Status struct {
	Started bool
	Role    Role
	// Interval and Quantum are the settings in effect: the flags', or
	// allow_retrys' overrides.
	Interval, Quantum time.Duration
	// LastTick is when a tick last finished, successful or not (zero
	// before the first); LastSweep when a sweep last succeeded, on the
	// timer's clock.
	LastTick, LastSweep time.Time
	Ticks, SweepErrors  int64
	// Holder is the sweep lease as a standby last read it: who sweeps,
	// and HeartbeatAge how long ago it last renewed the lease.
	Holder       lease.Holding
	HeartbeatAge time.Duration
	// Armed says whether allow_retrys was there at the last read of it,
	// whatever the role (one unknown after a failed lease renewal still
	// knows it); ArmedKnown is false before any read.
	Armed, ArmedKnown bool
}

// Timer flags due retry documents on a schedule.
type Timer struct {
	cfg   Config
	store store.Store
	log   *slog.Logger
	now   func() time.Time
	done  chan struct{} // closed when the tick loop has ended
	lease *lease.Lease  // one sweeper among the instances on a store
	ticks atomic.Int64  // successful ticks
	fails atomic.Int64  // ticks whose sweep failed
	hooks atomic.Pointer[Hooks]
	gate  Gate // nil: sends always go out

	// epoch and lastTick (time since epoch, 0: none yet) on the monotonic
	// clock, for the liveness check: the injected clock may stand still.
	epoch    time.Time
	started  atomic.Bool
	startAt  atomic.Int64
	lastTick atomic.Int64

	mu        sync.Mutex
	lastSweep time.Time // the schedule's: when the last sweep ran, at the tick's now
	badCAS    uint64    // the allow_retrys version last reported as invalid
	interval  time.Duration
	quantum   time.Duration
	role      Role
	waiting   bool          // the last sweep found sends held back, or flagged a probe: tick every pausedPoll
	topping   bool          // the last sweep stopped at pace's window: top it up every pausedPoll
	resumed   bool          // a tick found allow_retrys absent since the last sweep: the next sweeps at once
	pace      pace          // how far ahead of the sends the sweep flags
	holder    lease.Holding // the lease as a standby last read it
	// sweepsFailed counts this instance's sweeps that failed in a row
	// while it held the lease; after failedSweepsToStepAside of them it
	// gives the lease up and leaves it to the others until asideUntil.
	sweepsFailed int
	asideUntil   time.Time
	// unpaced: the last sweep could not count the flagged retries (said
	// once, when it starts), and flagged one batch, unpaced.
	unpaced bool
	// batch is how many one sweep statement flags now: --sweep-batch,
	// halved after a statement the tick's time ran out on (a loaded
	// cluster, an indexer behind), doubled back after grownAfter sweeps
	// in a row that worked. sweptInRow counts those.
	batch, sweptInRow int
	// pausedSeen is when a tick last found allow_retrys absent (New: when
	// the process started, as it cannot know what came before); zero once
	// a tick found it armed and saw to the settings a pause kept
	// (dropKept).
	pausedSeen time.Time
	dropFailed bool // dropKept's last try failed: said once, not every tick
	armed      int8 // allow_retrys at the last read: 1 there, -1 absent, 0 not read yet

	// Logged state, for one line per change; only tick touches them.
	logged      Role
	loggedArmed int // 0 unknown, 1 armed, -1 paused
	loggedSet   [2]time.Duration
	failing     int64 // ticks failed in a row
	// steppedAside: among those, one gave the sweep lease up.
	steppedAside bool
	// releaseOwed: sends held, giving the lease up failed: it is tried
	// again at each tick while they are (only Sweep touches it).
	releaseOwed bool

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
	t := &Timer{cfg: cfg.withDefaults(), store: st, now: now, log: log.With("component", "timer"), epoch: time.Now(),
		pausedSeen: now()} // settings a pause kept before this process started are stale once armed
	if t.cfg.Owner == "" {
		t.cfg.Owner = lease.Owner()
	}
	t.interval, t.quantum = t.cfg.Interval, t.cfg.Quantum
	t.pace = newPace(t.cfg.SweepBatch)
	t.batch = t.cfg.SweepBatch
	// Three ticks: a holder that missed two renewals is taken over.
	t.lease = lease.New(st, LeaseName, t.cfg.Owner, LeaseTTL(t.cfg.Interval), now)
	return t, nil
}

// SetHooks sets the hooks; call it before Start.
func (t *Timer) SetHooks(h Hooks) { t.hooks.Store(&h) }

// SetGate has the sweep ask g whether sends go out; call it before Start.
// A due retry flagged while every send is held back would only be held and
// written again, its next try a breaker's cooldown later: a backlog of
// 20,000 retries cost 8% of a core and 670 writes a second through an
// outage, for nothing. While sends are held the sweep flags nothing and
// leaves the lease to an instance whose sends go out; while the breaker
// lets a probe through it flags one due retry a tick, so that the breaker
// closes once the email service is back and the next tick flags the
// backlog at full speed.
func (t *Timer) SetGate(g Gate) { t.gate = g }

// Sweep is one timer callback at time now: when allow_retrys exists, flag
// the retry documents that are due. allow_retrys may set a longer interval
// (sweeps are then skipped until it has passed) and the quantum.
func (t *Timer) Sweep(ctx context.Context, now time.Time) (Result, error) {
	asked := t.now() // before the read: absent then or later
	doc, err := t.store.Get(ctx, order.Retry, order.ControlKey)
	if errors.Is(err, store.ErrNotFound) {
		t.mu.Lock()
		t.pausedSeen = asked
		t.resumed = true
		t.armed = -1
		t.mu.Unlock()
		t.setRole(RolePaused, nil)
		return Result{}, nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("read %s: %w", order.ControlKey, err)
	}
	t.mu.Lock()
	seen := t.pausedSeen
	t.armed = 1
	t.mu.Unlock()
	if !seen.IsZero() {
		err := t.dropKept(ctx, seen)
		t.mu.Lock()
		if err == nil {
			t.pausedSeen = time.Time{}
		} else if !t.dropFailed {
			// Tried again every tick; said once, while it fails.
			t.log.Warn("could not see to the settings a pause kept", "key", order.KeptControlKey, "error", err)
		}
		t.dropFailed = err != nil
		t.mu.Unlock()
	}
	// Read before the lease, so that a standby too knows the settings in
	// effect (the backlog's quantum).
	interval, quantum := t.settings(doc)
	t.mu.Lock()
	t.interval, t.quantum = interval, quantum
	t.mu.Unlock()
	// The lease's write is not given up when ctx ends (Stop cancels it): a
	// store may still make a write whose caller gave up (the embedded
	// store's queue, a KV request already sent), here after Stop released
	// the lease, which would then stay held until it expires. The tick's
	// timeout bounds it still.
	lctx, lcancel := context.WithTimeout(context.WithoutCancel(ctx), t.tickTimeout())
	defer lcancel()
	var held, probing bool
	if t.gate != nil {
		held, probing = t.gate.HeldBack()
	}
	if held {
		// Active, or unknown after a renewal that failed, or held after
		// a release that failed: the lease may be ours (Release leaves
		// another's alone).
		if r := t.Status().Role; r == RoleActive || r == RoleUnknown || t.releaseOwed {
			if err := t.lease.Release(lctx, heldWhy(t.gate)); err != nil {
				t.releaseOwed = true
				t.setRole(RoleHeld, nil) // it flags nothing, whoever holds the lease
				return Result{Armed: true, Held: true}, fmt.Errorf("sweep lease: give it up while sends are held back: %w", err)
			}
			t.releaseOwed = false
		}
		if s, ok := t.gate.(interface{ Standby() bool }); ok && s.Standby() {
			// It sends nothing at all: nothing of its is held. Who sweeps,
			// for its report (the sweeper's heartbeat age), as a standby
			// by the lease reads it; failing to read it changes nothing.
			h, herr := t.lease.Holder(lctx)
			if herr != nil {
				h = lease.Holding{}
			}
			t.setRole(RoleStandby, &h)
			return Result{Armed: true, NoFeed: true}, nil
		}
		t.setRole(RoleHeld, nil)
		return Result{Armed: true, Held: true}, nil
	}
	t.mu.Lock()
	// Aside for a TTL from when it stepped aside; a clock stepped back to
	// before then does not make it longer.
	aside := now.Before(t.asideUntil) && !now.Before(t.asideUntil.Add(-t.lease.TTL()))
	t.mu.Unlock()
	if aside {
		err = lease.ErrHeld // its sweeps failed: another instance's may not
	} else {
		err = t.lease.Acquire(lctx)
	}
	if errors.Is(err, lease.ErrHeld) {
		// Who sweeps, and since when it last renewed, for the standby's
		// report; failing to read it changes nothing.
		h, herr := t.lease.Holder(lctx)
		if herr != nil {
			h = lease.Holding{}
		}
		t.setRole(RoleStandby, &h)
		return Result{Armed: true, Standby: true, Aside: aside}, nil
	} else if err != nil {
		// Whether it still holds the lease is unknown, and it sweeps not:
		// "active" kept the sweeper alert quiet while the lease expired.
		t.setRole(RoleUnknown, nil)
		return Result{Armed: true}, fmt.Errorf("sweep lease: %w", err)
	}
	t.setRole(RoleActive, nil)
	t.mu.Lock()
	// Half a tick of slack, so that a tick that comes a little early does
	// not push the sweep a whole tick later. Waiting on a breaker, the
	// first tick after it lets sends through sweeps: the probe goes out,
	// and the backlog once it got through, at once; a probe still out
	// (an email service that does not answer, up to --mail-timeout) gets
	// another one an interval later, not every poll.
	// A clock stepped back to before the last sweep sweeps at once rather
	// than wait until it is back there (and is said once: the sweep moves
	// the last sweep back with it); on the wall clock, as the readings
	// time.Now gives carry the monotonic clock too, which Sub would use,
	// and which never steps back. A resume sweeps at once, however soon
	// after the last sweep before the pause.
	back := t.lastSweep.Round(0).Sub(now.Round(0))
	due := t.lastSweep.IsZero() || t.resumed || t.waiting && !probing || t.topping || back > time.Second || now.Before(t.lastSweep) ||
		now.Sub(t.lastSweep) >= interval-t.cfg.Interval/2
	t.mu.Unlock()
	if back > time.Second {
		// Due times are the wall clock's, written in the documents: those
		// pending now fall due when the clock is back where they were.
		t.log.Warn("the clock stepped back since the last sweep: retries already pending are late by as much",
			"stepped_back", back.Round(time.Millisecond).String())
	}
	if !due {
		return Result{Armed: true, Probe: probing}, nil // a probe still out is no change of role
	}
	return t.sweepBatches(ctx, lctx, now, quantum, probing)
}

// sweepBatches flags the due retries, batch after batch, each a short
// transaction of its own, until none is left, the sweep's budget is spent,
// or retries are stopped; probing, it flags the one due longest alone.
// lctx bounds the lease's writes (sweepFailed).
func (t *Timer) sweepBatches(ctx, lctx context.Context, now time.Time, quantum time.Duration, probing bool) (Result, error) {
	res := Result{Armed: true, Probe: probing}
	t.mu.Lock()
	limit := t.batch
	t.mu.Unlock()
	if probing {
		limit = 1 // the probe; the others would be held back again
	}
	start := time.Now()
	room := -1 // no bound: the probe's one
	unpaced := false
	if probing {
		t.mu.Lock()
		t.pace.forget()
		t.mu.Unlock()
	} else if n, err := t.store.FlaggedRetries(ctx); err != nil && ctx.Err() == nil {
		// The count only paces the sweep: without it (on Couchbase,
		// ix_retry_fire missing and no primary index) the due retries are
		// flagged all the same, one batch a tick and no top-up between
		// (what is flagged, a pause no longer holds back).
		t.mu.Lock()
		t.pace.forget()
		report := !t.unpaced
		t.unpaced, unpaced = true, true
		t.mu.Unlock()
		if report {
			t.log.Warn("cannot count the flagged retries: the sweep flags one batch a tick, unpaced, until it can (ordermail setup makes the index it reads)",
				"error", err, "batch", limit)
		}
		room = limit
	} else if err != nil {
		return res, t.sweepFailed(lctx, now, fmt.Errorf("count the flagged retries: %w", err))
	} else {
		var stuck bool
		t.mu.Lock()
		counted := t.unpaced
		t.unpaced = false
		room, stuck = t.pace.room(n, time.Since(t.epoch), t.topUp(), max(stuckAfter, 10*t.interval), t.feedBehind())
		t.mu.Unlock()
		if counted {
			t.log.Info("the flagged retries are counted again: the sweep is paced")
		}
		if stuck {
			t.log.Warn("flagged retries are not being taken: the sweep sets them aside and flags past them; is a watcher running?",
				"flagged", n, "for_at_least", max(stuckAfter, 10*t.interval).String())
		}
	}
	paused := false
	for room != 0 {
		// Retries stopped meanwhile stop the sweep before this batch: a
		// pause in an outage must not let a second's worth of batches
		// through, nor the first, when the pause came while the tick
		// wrote its lease (up to seconds on a busy store).
		asked := t.now()
		if _, err := t.store.Get(ctx, order.Retry, order.ControlKey); errors.Is(err, store.ErrNotFound) {
			// As a tick that found the pause: a resume before the next
			// tick sweeps at once all the same, and sees to the settings
			// the pause kept (dropKept).
			paused = true
			t.mu.Lock()
			t.pausedSeen = asked
			t.mu.Unlock()
			break
		} else if err != nil {
			return res, t.sweepFailed(lctx, now, fmt.Errorf("read %s: %w", order.ControlKey, err))
		}
		n := limit
		if room > 0 {
			n = min(n, room)
			room -= n
		}
		began := time.Now()
		batch, err := t.store.SweepRetries(ctx, now, quantum, n)
		if err != nil && n > 1 && t.ranOutOn(ctx, began) {
			// The next ones flag half as many, until they finish in time.
			t.mu.Lock()
			t.batch, t.sweptInRow = max(1, n/2), 0
			next := t.batch
			t.mu.Unlock()
			err = fmt.Errorf("%w (a statement flagging up to %d did not finish within the tick's %s: the next flag up to %d; a longer --timer-interval gives each more time)",
				err, n, t.tickTimeout(), next)
		}
		if err != nil {
			return res, t.sweepFailed(lctx, now, err) // not recorded: the next tick tries again
		}
		res.Batches++
		res.Flagged += batch.Flagged
		res.More = batch.More
		// Each batch is a short transaction of its own: a backlog of any
		// size is flagged batch by batch, never in one long write.
		if !batch.More || probing || time.Since(start) >= t.cfg.SweepBudget {
			break
		}
	}
	// Stopped at the window with due retries left (or none looked for:
	// the window was full): topped up every topUp until they are flagged.
	res.Ahead = room == 0 && (res.More || res.Batches == 0) && !unpaced
	res.Swept = true
	t.mu.Lock()
	t.sweepsFailed = 0
	if t.batch < t.cfg.SweepBatch && !probing && res.Batches > 0 {
		if t.sweptInRow++; t.sweptInRow >= grownAfter {
			t.batch, t.sweptInRow = min(t.cfg.SweepBatch, 2*t.batch), 0
		}
	}
	if !probing && !unpaced {
		t.pace.swept(res.Flagged, res.Ahead)
	}
	// Topped up soon only while the sends move (took some within
	// movedLately): a window full of retries nobody takes waits for the
	// interval.
	t.topping = res.Ahead && (res.Flagged > 0 || t.pace.movedWithin(time.Since(t.epoch), movedLately))
	t.mu.Unlock()
	if h := t.hooks.Load(); h != nil && h.Sweep != nil {
		h.Sweep(time.Since(start), res.Flagged)
	}
	t.mu.Lock()
	t.lastSweep = now
	t.waiting = probing
	t.resumed = paused
	t.mu.Unlock()
	return res, nil
}

func (t *Timer) setRole(r Role, h *lease.Holding) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.role = r
	if r != RoleActive { // an active one's sweep says whether it waits (a probe)
		t.waiting = r == RoleHeld
		t.topping = false
		t.pace.forget()    // measured afresh once it sweeps again
		t.sweepsFailed = 0 // counted while it holds the lease, in a row
	}
	if h != nil {
		t.holder = *h
	}
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
			t.log.Warn("ignoring the settings in "+order.ControlKey, "reason", err, "interval", interval.String(), "quantum", quantum.String())
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

// dropKept drops the settings a pause kept (order.KeptControlKey) when the
// pause was over by pausedSeen, when this timer last found allow_retrys
// absent: allow_retrys was created since by other means than a resume
// (which gives them back and clears them itself), by hand as in the
// sample, and its settings stand; no later resume is to give the old ones
// back. Settings kept after pausedSeen are a pause's under way, and stay.
// A timer that finds allow_retrys armed at its first tick takes the
// process's start for pausedSeen: it cannot know what came before, and a
// pause under way then (kept, not yet deleted) is all it could wrongly
// drop. (The two times come from two hosts' clocks: a skew of more than
// the paused poll could leave stale settings, or drop those of a pause
// made within the skew of the arming.) An error (the store failed) leaves
// it to the next tick.
func (t *Timer) dropKept(ctx context.Context, pausedSeen time.Time) error {
	d, err := t.store.Get(ctx, store.Meta, order.KeptControlKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if k, err := order.DecodeKeptControl(d.Value); err == nil && !k.PausedAt.Before(pausedSeen) {
		return nil
	}
	err = t.store.Remove(ctx, store.Meta, order.KeptControlKey, d.CAS)
	switch {
	case err == nil:
		t.log.Info("dropped the settings a pause kept: "+order.ControlKey+" was created by other means since, and its settings stand", "key", order.KeptControlKey)
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrCASMismatch):
	default:
		return fmt.Errorf("drop: %w", err)
	}
	return nil
}

// Ticks counts the successful ticks since Start (paused and standby ones
// included; a tick whose sweep failed is not one), for operators and tests.
func (t *Timer) Ticks() int64 { return t.ticks.Load() }

// Status reports what the timer knows of itself.
func (t *Timer) Status() Status {
	s := Status{Started: t.started.Load(), Ticks: t.ticks.Load(), SweepErrors: t.fails.Load()}
	if lt := t.lastTick.Load(); lt > 0 {
		s.LastTick = t.epoch.Add(time.Duration(lt))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s.Role, s.Interval, s.Quantum, s.LastSweep = t.role, t.interval, t.quantum, t.lastSweep
	s.Armed, s.ArmedKnown = t.armed > 0, t.armed != 0
	if t.role == RoleStandby {
		s.Holder = t.holder
		if t.holder.Owner != "" {
			// The holder renews at each of its ticks for one TTL.
			s.HeartbeatAge = max(0, t.now().Sub(t.holder.RenewedAt(t.lease.TTL())))
		}
	}
	return s
}

// stallBound is how long the timer may go without finishing a tick before
// it counts as stuck: three intervals, and the bound of one tick's own work.
func (t *Timer) stallBound() time.Duration { return 3*t.cfg.Interval + t.tickTimeout() }

// ranOutOn says whether the tick's time (ctx's) ran out on a statement
// begun at began that had half of it at least: not on one the reads before
// it left little.
func (t *Timer) ranOutOn(ctx context.Context, began time.Time) bool {
	dl, ok := ctx.Deadline()
	return ok && errors.Is(ctx.Err(), context.DeadlineExceeded) && dl.Sub(began) >= t.tickTimeout()/2
}

// grownAfter is how many sweeps in a row must work before a batch halved
// for time (Timer.batch) doubles again.
const grownAfter = 10

func (t *Timer) tickTimeout() time.Duration { return max(t.cfg.Interval, time.Second) }

// Stalled says, for the liveness check, why the timer is stuck: no tick
// finished (successful or not) within three intervals, counted from Start
// when there was none yet. "" when it ticks, or was not started.
func (t *Timer) Stalled() string {
	if !t.started.Load() {
		return ""
	}
	last := max(t.lastTick.Load(), t.startAt.Load())
	if age := time.Since(t.epoch) - time.Duration(last); age > t.stallBound() {
		return fmt.Sprintf("no tick finished for %s (bound %s)", age.Round(time.Millisecond), t.stallBound())
	}
	return ""
}

// failedSweepsToStepAside is how many sweeps in a row may fail before the
// instance gives the lease up: a sweep that fails every time (the query
// service out of this host's reach, a user without the right to update)
// while the lease's own writes work would otherwise keep it, and no
// instance would flag a due retry.
const failedSweepsToStepAside = 3

// sweepFailed counts a failed sweep, and after failedSweepsToStepAside
// in a row gives the lease up for one lease TTL, so that another instance
// takes it; alone, this one takes it again then. It returns err, saying so.
func (t *Timer) sweepFailed(ctx context.Context, now time.Time, err error) error {
	t.mu.Lock()
	t.topping = false // failing, it tries again at the interval, not every poll
	t.pace.forget()   // and measures afresh: this sweep's flags went uncounted
	t.sweepsFailed++
	n := t.sweepsFailed
	t.mu.Unlock()
	if n < failedSweepsToStepAside {
		return err
	}
	if rerr := t.lease.Release(ctx, order.Shorten(fmt.Sprintf("its sweeps failed %d times in a row: %v", n, err), 300)); rerr != nil {
		return fmt.Errorf("%w; %d sweeps failed in a row, and giving the sweep lease up failed too: %w", err, n, rerr)
	}
	t.mu.Lock()
	t.sweepsFailed = 0
	t.asideUntil = now.Add(t.lease.TTL())
	t.mu.Unlock()
	t.setRole(RoleUnknown, nil)
	return fmt.Errorf("%w; %d sweeps failed in a row: %w for %s", err, n, errSteppedAside, t.lease.TTL())
}

func (t *Timer) tick() {
	defer func() { t.lastTick.Store(int64(time.Since(t.epoch))) }()
	ctx, cancel := context.WithTimeout(t.ctx, t.tickTimeout())
	defer cancel()
	now := t.now()
	res, err := t.Sweep(ctx, now)
	if err != nil && t.ctx.Err() != nil {
		return // stopping: a sweep cut short is no failure
	}
	if err != nil {
		// The schedule is already armed for the next tick: nothing to undo.
		// One warning when sweeps start failing, one line when they work
		// again; the ticks between are counted (sweep errors).
		t.fails.Add(1)
		if errors.Is(err, errSteppedAside) {
			t.steppedAside = true
		}
		if t.failing++; t.failing == 1 || errors.Is(err, errSteppedAside) {
			t.log.Warn("sweep failed; trying again at every tick", "error", err, "failed_ticks", t.failing)
		} else {
			t.log.Debug("sweep failed", "error", err, "failed_ticks", t.failing)
		}
		return
	}
	if res.Aside {
		// Standing aside after failed sweeps: no sweep worked, so none is
		// said to, nor that another instance sweeps (there may be none);
		// the failed ticks count on until a sweep works.
		t.failing++
		return
	}
	// Any tick that works ends the failures: the next one is warned.
	switch {
	case t.failing == 0:
	case res.Standby && t.steppedAside: // and another instance took the lease
		t.log.Info("this instance's sweeps failed; another instance sweeps now", "failed_ticks", t.failing)
	case res.Swept:
		t.log.Info("sweeps work again", "failed_ticks", t.failing)
	default: // standing by, paused, held, or not yet due by allow_retrys' interval
		t.log.Info("the timer's ticks work again", "failed_ticks", t.failing)
	}
	t.failing, t.steppedAside = 0, false
	t.logChanges(res) // before the tick counts: whoever sees it can read the lines
	t.ticks.Add(1)
	if res.Flagged > 0 {
		t.log.Debug("flagged retries", "count", res.Flagged, "batches", res.Batches, "more", res.More)
	}
}

// logChanges logs one line per change of the timer's state: armed (with
// the settings in effect) or paused, the settings changed, this instance
// sweeping or standing by.
func (t *Timer) logChanges(res Result) {
	st := t.Status()
	armed, set := -1, [2]time.Duration{st.Interval, st.Quantum}
	if res.Armed {
		armed = 1
	}
	switch {
	case armed != t.loggedArmed && res.Armed:
		t.log.Info("retries armed", "control", order.ControlKey, "interval", st.Interval.String(), "quantum", st.Quantum.String())
	case armed != t.loggedArmed:
		t.log.Info("retries paused", "control", order.ControlKey, "note", "retry documents wait until "+order.ControlKey+" exists again")
	case res.Armed && set != t.loggedSet:
		t.log.Info("retry settings changed", "control", order.ControlKey, "interval", st.Interval.String(), "quantum", st.Quantum.String())
	}
	t.loggedArmed, t.loggedSet = armed, set
	if st.Role == t.logged || st.Role == RoleActive && t.logged == RoleHeld && res.Probe {
		return // a held instance's probe, one a cooldown, changes nothing worth a line
	}
	switch st.Role {
	case RoleActive:
		if t.logged == RoleHeld {
			t.log.Info("sends go out again: this instance sweeps", "owner", t.lease.Owner())
			break
		}
		t.mu.Lock()
		prev := t.holder
		t.mu.Unlock()
		if t.logged == RoleStandby && prev.Owner != "" && prev.Owner != t.lease.Owner() && prev.Expired(t.now()) {
			t.log.Warn("took over the sweep: the sweeping instance stopped renewing its lease", "previous_holder", prev.Owner,
				"heartbeat_age", t.now().Sub(prev.RenewedAt(t.lease.TTL())).Round(time.Millisecond).String())
		} else {
			t.log.Info("this instance sweeps (it holds the sweep lease)", "owner", t.lease.Owner())
		}
	case RoleStandby:
		if res.NoFeed {
			t.log.Info("standby: this instance's feed does not run (another instance holds the store); it sweeps nothing")
			break
		}
		t.log.Info("standby: another instance sweeps", "holder", st.Holder.Owner)
	case RoleHeld:
		t.log.Info("sweep held: sends are held back (circuit breaker open, or the configuration refused); due retries wait unflagged until a probe gets through",
			"note", "another instance whose sends go out may sweep meanwhile")
	}
	t.logged = st.Role
}

// Start starts ticking; it does not block.
func (t *Timer) Start() {
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.done = make(chan struct{})
	t.startAt.Store(int64(time.Since(t.epoch)))
	t.started.Store(true)
	go t.run()
	t.log.Info("timer started", "interval", t.cfg.Interval.String(), "quantum", t.cfg.Quantum.String(), "owner", t.lease.Owner())
}

// run ticks until Stop: a tick period after the last tick began (a tick
// that overran starts the next at once). The periods are on the monotonic
// clock: a wall clock stepped back (NTP, a restored VM) delays no tick,
// where a schedule of wall times (robfig/cron's, before 2026-12-06) ticked
// nothing until the wall clock was back where it had been.
func (t *Timer) run() {
	defer close(t.done)
	next := time.NewTimer(t.period())
	defer next.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-next.C:
		}
		began := time.Now()
		t.safeTick()
		next.Reset(max(0, t.period()-time.Since(began)))
	}
}

// safeTick is one tick; a panic in it is logged and the ticks go on.
func (t *Timer) safeTick() {
	defer func() {
		if r := recover(); r != nil {
			t.log.Error("tick panicked; ticking on", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	t.tick()
}

// Stop stops ticking, waits for a sweep in progress until ctx ends, and
// hands the sweep lease on.
func (t *Timer) Stop(ctx context.Context) error {
	t.cancel() // first: Status().Started false says the ticks are told to end
	t.started.Store(false)
	select {
	case <-t.done:
	case <-ctx.Done():
		return fmt.Errorf("stop timer: %w", ctx.Err())
	}
	if err := t.lease.Release(ctx, LeftStopped); err != nil {
		return fmt.Errorf("stop timer: release sweep lease: %w", err)
	}
	return nil
}

// pausedPoll is how often a paused timer, or one that has not ticked yet,
// reads allow_retrys: `retries start` then takes effect at once (the
// first sweep within pausedPoll), however long the interval. A read of one
// document four times a second costs next to nothing (a paused idle
// service: 0.7-0.9% of a core, 0.6-0.75% polling at its interval; 1.05-1.15%
// at ten times a second).
const pausedPoll = 250 * time.Millisecond

// period is the time from one tick to the next: the interval, or
// pausedPoll while retries are paused or sends are held back (so that a
// breaker's probe, and the backlog once it closes, go out within a poll of
// when they can, not a whole interval later) or the sweep stopped at its
// window (topped up as the sends take it).
func (t *Timer) period() time.Duration {
	if t.polling() {
		return t.topUp()
	}
	return t.cfg.Interval
}

// feedBehind says whether this instance's feed has more changes ahead of
// its reader than a sweep batch, as the gate tells (sendGate: the
// watcher's): the flagged retries' changes may be among them.
func (t *Timer) feedBehind() bool {
	f, ok := t.gate.(interface{ FeedLag() (uint64, bool) })
	if !ok {
		return false
	}
	lag, known := f.FeedLag()
	return known && lag > uint64(t.cfg.SweepBatch)
}

// topUp is the tick while polling.
func (t *Timer) topUp() time.Duration { return min(pausedPoll, t.cfg.Interval) }

// stuckAfter is the least time flagged retries that nobody takes hold
// the sweep back (pace): ten intervals when longer.
const stuckAfter = 30 * time.Second

// movedLately: sends that took a flagged retry within it keep the timer
// topping its window up every pausedPoll.
const movedLately = 5 * time.Second

// polling says whether the last tick found no allow_retrys, or none has
// told yet, or sends held back, or the sweep stopped at its window.
func (t *Timer) polling() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.role == RolePaused || t.role == RoleUnknown || t.waiting || t.topping
}
