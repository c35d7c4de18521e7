package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/ordermail/ordermail/internal/episode"
	"github.com/ordermail/ordermail/internal/tracing"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// Config of the watcher.
type Config struct {
	// Workers is how many events are handled at once. Default 8.
	Workers int
	// FeedName names the feed's checkpoint in the store. Default "ordermail".
	FeedName string
	// FromNow makes a feed with no checkpoint start at the current end of the
	// feed instead of its beginning.
	FromNow bool
	// Policy decides retries and dead letters. Zero: order.DefaultPolicy().
	Policy order.Policy
	// ClaimTTL is how long a retry claimed for a send is left alone by other
	// instances, and by the sweep should this one die. It must outlast a
	// send. Default 1m.
	ClaimTTL time.Duration
	// SingleConsumer says no other instance reads this feed (the embedded
	// store's process lock): flagged retries are then sent without a claim,
	// one write less each.
	SingleConsumer bool
	// AtomicOutcomes says the store writes an outcome in one transaction
	// (the embedded store): a confirmed order then needs no clean-up check.
	AtomicOutcomes bool
	// MaxOrderBytes: a larger order is dead-lettered, not posted. Default 1 MiB.
	MaxOrderBytes int
	// MaxEventFailures: a change whose handling fails this many times with
	// an error other than an unavailable store, or a send whose outcome the
	// store refuses this many times, is dead-lettered (poison_event) and
	// acknowledged. Default 5.
	MaxEventFailures int
	// PoisonAfter is how long such failures must last, as well, before a
	// change is given up on: a store's blip (a rebalance's, an error it
	// seldom gives) fails MaxEventFailures tries within a second, and
	// dead-letters paid orders an operator must then redrive. Default 30s.
	PoisonAfter time.Duration
	// AttemptHistory is how many send attempts an order's attempt record
	// keeps (the latest). Default 20; negative: no record is kept.
	AttemptHistory int
	// AttemptRetention is how long an attempt record stays after its last
	// attempt (its order confirmed, dead-lettered, or left so). Default 7
	// days.
	AttemptRetention time.Duration
	// Instance names this instance in the attempt records. Default: the
	// host name.
	Instance string
	// SnapshotAge is how old the state a feed event carries may be for a
	// decision to rest on it; an older one is read again. Default 250ms:
	// about as long as a send may take anyway, and a read saved whenever
	// the workers keep up.
	SnapshotAge time.Duration
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if c.Workers < 0 || c.Workers > 1024 {
		return fmt.Errorf("workers: %d is not between 1 and 1024", c.Workers)
	}
	if c.ClaimTTL < 0 {
		return fmt.Errorf("claim-ttl: %s is negative", c.ClaimTTL)
	}
	if c.MaxOrderBytes < 0 {
		return fmt.Errorf("max-order-bytes: %d is negative", c.MaxOrderBytes)
	}
	if c.PoisonAfter < 0 {
		return fmt.Errorf("poison after: %s is negative", c.PoisonAfter)
	}
	if c.MaxEventFailures < 0 {
		return fmt.Errorf("max-event-failures: %d is negative", c.MaxEventFailures)
	}
	if c.AttemptRetention < 0 {
		return fmt.Errorf("attempt-retention: %s is negative", c.AttemptRetention)
	}
	if c.SnapshotAge < 0 {
		return fmt.Errorf("snapshot age: %s is negative", c.SnapshotAge)
	}
	if c.Policy != (order.Policy{}) {
		return c.Policy.Validate()
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Workers == 0 {
		c.Workers = 8
	}
	if c.FeedName == "" {
		c.FeedName = store.DefaultFeed
	}
	if c.Policy == (order.Policy{}) {
		c.Policy = order.DefaultPolicy()
	}
	if c.ClaimTTL == 0 {
		c.ClaimTTL = time.Minute
	}
	if c.MaxOrderBytes == 0 {
		c.MaxOrderBytes = 1 << 20
	}
	if c.MaxEventFailures == 0 {
		c.MaxEventFailures = 5
	}
	if c.PoisonAfter == 0 {
		c.PoisonAfter = 30 * time.Second
	}
	if c.AttemptHistory == 0 {
		c.AttemptHistory = 20
	}
	if c.AttemptRetention == 0 {
		c.AttemptRetention = 7 * 24 * time.Hour
	}
	if c.Instance == "" {
		c.Instance, _ = os.Hostname()
	}
	if c.SnapshotAge == 0 {
		c.SnapshotAge = 250 * time.Millisecond
	}
	return c
}

// Sender sends one confirmation; nil means the service accepted it (2xx).
type Sender interface {
	Send(ctx context.Context, idempotencyKey string, order []byte) error
}

// heldBacker is a Sender that says whether its sends are all held back
// (held), or the next goes out as the probe that decides (probing): until
// one gets through, this instance sends nothing (mailer.Client).
type heldBacker interface {
	HeldBack() (held, probing bool)
}

// Stats counts what the watcher did since it started.
type Stats struct {
	Handled int64 // events finished and acknowledged
	// Sends are the requests made to the email service: Sent succeeded,
	// SendFailures did not. Held are sends held back without a request
	// (breaker, configuration, rate limit); neither counts them.
	Sends, Sent, SendFailures, Held int64
	DeadLettered, Ignored           int64
	// GivenUp are the changes given up on (--max-event-failures) whose
	// dead letter could not be written either: logged, and not in the
	// dead letters; the order waits for its next change.
	GivenUp int64
	// Unreachable is how many loci (Couchbase nodes; the embedded store,
	// one) the store last answered unavailable for: their events wait
	// apart, one probe at a time.
	Unreachable int64
}

// Hooks are called as the watcher works, for metrics; any may be nil. They
// are called from the workers and must not block.
type Hooks struct {
	// Send is called after every call of the Sender with how long it took
	// and what it returned.
	Send func(took time.Duration, err error)
	// Event is called when an event is acknowledged, with how long it took
	// from the moment a worker took it up.
	Event func(took time.Duration)
	// Outcome is called when the outcome of a send is written: "sent",
	// "retry" or "dead_letter".
	Outcome func(result string)
	// DeadLettered is called for every confirmation dead-lettered, with
	// its reason.
	DeadLettered func(reason string)
	// RetriesPaused says whether allow_retrys is absent, so that the log
	// of a retry scheduled can say it waits.
	RetriesPaused func() bool
}

// Watcher runs the feed. Start and Stop it once.
type Watcher struct {
	cfg   Config
	store store.Store
	mail  Sender
	log   *slog.Logger
	now   func() time.Time

	handled, sends, sent, sendFailures, held, deadLettered, ignored, givenUp atomic.Int64
	rand                                                                     func() float64 // jitter draws
	tracer                                                                   trace.Tracer
	hooks                                                                    atomic.Pointer[Hooks]
	progress                                                                 progress
	// lag is, on a feed that gives each event the store's position when
	// it was read (the embedded store's), how many changes the store had
	// past the event last read; 0 once the reader waits idle.
	lag      atomic.Uint64
	lagKnown atomic.Bool

	sub      store.Subscription
	failed   chan error     // the feed stopped for good
	reporter atomic.Value   // store.StatsReporter of the subscription, once started
	settling sync.WaitGroup // outcome writes of sends made, acknowledging their events when done
	inflight chan struct{}  // bounds them
	// unreachable holds back the events of the loci the store answered
	// unavailable for.
	unreachable *unreachable
	// storeDown says the store unavailable once an outage, not once an
	// order (a disk full: 101 warnings a minute).
	storeDown *episode.Episode
	cancel    context.CancelFunc // stops the reader
	abort     context.CancelFunc // aborts in-flight work
	stopping  chan struct{}
	reader    sync.WaitGroup
	workers   sync.WaitGroup
}

// New returns a watcher; now may be nil for time.Now.
func New(cfg Config, st store.Store, mail Sender, log *slog.Logger, now func() time.Time) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	w := &Watcher{
		cfg: cfg.withDefaults(), store: st, mail: mail, now: now, rand: rand.Float64, failed: make(chan error, 1),
		log: slog.New(lazyAttrs{h: log.Handler()}).With("component", "watcher"), tracer: otel.Tracer(tracing.Name),
	}
	w.progress.epoch = time.Now()
	w.progress.workers = make([]workerProgress, w.cfg.Workers)
	w.unreachable = newUnreachable(w.cfg.Workers, time.Now) // waits: the real clock's, whatever w.now says
	w.storeDown = episode.New(w.log, "store calls", time.Now)
	return w, nil
}

// Stats returns the counters.
func (w *Watcher) Stats() Stats {
	return Stats{
		Handled: w.handled.Load(),
		Sends:   w.sends.Load(), Sent: w.sent.Load(), SendFailures: w.sendFailures.Load(), Held: w.held.Load(),
		DeadLettered: w.deadLettered.Load(), Ignored: w.ignored.Load(), GivenUp: w.givenUp.Load(),
		Unreachable: int64(w.unreachable.count()),
	}
}

// SetHooks sets the hooks; call it before Start.
func (w *Watcher) SetHooks(h Hooks) { w.hooks.Store(&h) }

func (w *Watcher) hook() *Hooks {
	if h := w.hooks.Load(); h != nil {
		return h
	}
	return &Hooks{}
}

// deadLetter counts a confirmation dead-lettered for reason.
func (w *Watcher) deadLetter(reason string) {
	w.deadLettered.Add(1)
	if f := w.hook().DeadLettered; f != nil {
		f(reason)
	}
}

// timedAck wraps an event's Ack to report how long the event took.
func (w *Watcher) timedAck(ack func(), started time.Time) func() {
	f := w.hook().Event
	if f == nil || ack == nil {
		return ack
	}
	return func() {
		ack()
		f(time.Since(started))
	}
}

// Start subscribes to the feed and starts the reader and the workers. It
// does not block.
func (w *Watcher) Start(ctx context.Context) error {
	opts := store.FeedOptions{FromNow: w.cfg.FromNow, SkipSettled: w.cfg.AtomicOutcomes, // what Settled ignores then
		LocusHeld: w.unreachable.held}
	if g, ok := w.mail.(heldBacker); ok {
		opts.SendsHeld = g.HeldBack
	}
	sub, err := w.store.Subscribe(ctx, w.cfg.FeedName, []string{order.Inbound, order.Retry}, opts)
	if err != nil {
		return fmt.Errorf("start watcher: %w", err)
	}
	w.sub = sub
	if r, ok := sub.(store.StatsReporter); ok {
		w.reporter.Store(r) // read by the metrics' scrapes
	}
	readCtx, cancel := context.WithCancel(context.Background())
	// The workers' writes are many writers' at once: a group-committing
	// store may hold each a moment for others to share its commit.
	workCtx, abort := context.WithCancel(store.WithSharedCommit(context.Background()))
	w.cancel, w.abort = cancel, abort
	w.stopping = make(chan struct{})

	// Outcomes wait for a group commit (up to the store's commit delay):
	// enough of them in flight that a worker seldom waits for a slot.
	w.inflight = make(chan struct{}, max(maxSettling, 4*w.cfg.Workers))
	d := newDispatcher(w.cfg.Workers, 2*cap(w.inflight), w.supersede)
	for i := range w.cfg.Workers {
		w.workers.Add(1)
		go w.work(workCtx, &w.progress.workers[i], d)
	}
	w.progress.expect(&w.progress.reader, 2*readPoll)
	w.progress.running.Store(true)
	w.reader.Add(1)
	go w.read(readCtx, d)
	w.log.Info("watching", "feed", w.cfg.FeedName, "workers", w.cfg.Workers)
	return nil
}

// supersede acknowledges an event that a newer one of its document
// replaced while it waited (see dispatcher): there was nothing to decide
// on it that the newer one does not decide.
func (w *Watcher) supersede(ev store.Event) {
	w.log.Debug("ignore", "reason", "superseded by a newer change", "collection", ev.Collection, "key", ev.Key)
	w.ignored.Add(1)
	ev.Ack()
	w.handled.Add(1)
}

// Stop stops reading, lets in-flight events finish (then aborts them:
// unacknowledged, they come back after a restart) and saves the checkpoint.
// In-flight events get four fifths of ctx's time, saving the checkpoint
// half of the rest, and the rest is left for whatever stops after it: fx
// runs no further stop hook once the deadline has passed, and the store
// must close.
func (w *Watcher) Stop(ctx context.Context) error {
	grace, save := ctx, ctx
	if dl, ok := ctx.Deadline(); ok {
		reserve := time.Until(dl) / 5
		var cancelGrace, cancelSave context.CancelFunc
		grace, cancelGrace = context.WithDeadline(ctx, dl.Add(-reserve))
		save, cancelSave = context.WithDeadline(ctx, dl.Add(-reserve/2))
		defer cancelGrace()
		defer cancelSave()
	}
	w.progress.running.Store(false)
	w.cancel()
	w.reader.Wait()
	close(w.stopping)
	done := make(chan struct{})
	go func() { w.workers.Wait(); w.settling.Wait(); close(done) }()
	select {
	case <-done:
	case <-grace.Done():
		w.log.Warn("in-flight events did not finish in time; they will be replayed", "error", grace.Err())
		w.abort()
		<-done
	}
	w.abort()
	if err := w.sub.Close(save); err != nil {
		return fmt.Errorf("stop watcher: %w", err)
	}
	w.log.Info("stopped", "sends", w.sends.Load(), "sent", w.sent.Load())
	return nil
}

// Failed delivers the error of a feed that stopped for good
// (store.ErrFeedFailed): reading it again cannot help.
func (w *Watcher) Failed() <-chan error { return w.failed }

// FeedStats reports the subscription's own figures, where it keeps any.
func (w *Watcher) FeedStats() (store.FeedStats, bool) {
	if r, ok := w.reporter.Load().(store.StatsReporter); ok {
		return r.FeedStats(), true
	}
	return store.FeedStats{}, false
}

// ReadLag is, for a feed that keeps no FeedStats but gives its events the
// store's position when they were read (the embedded store's), how many
// changes the store had past the event the reader last read: a feed
// falling behind. It is 0 once the reader waits idle; ok is false when the
// feed does not tell.
func (w *Watcher) ReadLag() (changes uint64, ok bool) {
	return w.lag.Load(), w.lagKnown.Load()
}

// Running says whether the watcher reads the feed: started, not stopped
// (a standby's is not).
func (w *Watcher) Running() bool { return w.progress.running.Load() }

// readPoll bounds one wait of the reader in the feed's Next: an idle feed
// comes back to the reader at least this often, so that a reader that does
// not is known to be stuck.
const readPoll = 2 * time.Second

// stallBound is how long a worker may go without a step on one event
// before it counts as stuck: a send is bounded by the mail timeout, which
// the claim TTL outlasts, and each store operation is far shorter.
func (w *Watcher) stallBound() time.Duration { return 2 * w.cfg.ClaimTTL }

// progress is when each of the watcher's goroutines must next show that it
// moves, as deadlines on the monotonic clock (time since epoch; 0: none),
// for the liveness check. Each sets its own at every step.
type progress struct {
	epoch   time.Time
	running atomic.Bool
	// reader: back from the feed's Next (or its backoff); none while it
	// hands an event to a busy worker, whose own deadline then counts.
	reader atomic.Int64
	inNext atomic.Bool
	// retrying: a store operation is being tried again, by a worker or by
	// the write of an outcome: an outage waited out, not a hang.
	retrying atomic.Int64
	workers  []workerProgress
}

// workerProgress is one worker's: a deadline while it has an event.
type workerProgress struct {
	due atomic.Int64
	key atomic.Pointer[string]
}

func (p *progress) now() int64 { return int64(time.Since(p.epoch)) }

// expect sets deadline d to within bound from now.
func (p *progress) expect(d *atomic.Int64, bound time.Duration) { d.Store(p.now() + int64(bound)) }

// Stalled says, for the liveness check, which of the watcher's goroutines
// made no progress within its bound: the feed reader (back from the feed
// within twice its poll bound, or from a backoff), a worker (a step on its
// event within twice the claim TTL, unless the store is being waited out).
// Empty when none, or when the watcher does not run.
func (w *Watcher) Stalled() []string {
	p := &w.progress
	if !p.running.Load() {
		return nil
	}
	now := p.now()
	var out []string
	if due := p.reader.Load(); due != 0 && now > due {
		where := "not back from the change feed's Next"
		if !p.inNext.Load() {
			where = "not back to the change feed"
		}
		// The deadline was set a bound ahead of the last sign of life.
		out = append(out, fmt.Sprintf("feed reader: %s for %s (bound %s)", where,
			(time.Duration(now-due)+2*readPoll).Round(time.Millisecond), 2*readPoll))
	}
	retrying := p.retrying.Load()
	for i := range p.workers {
		wp := &p.workers[i]
		due := wp.due.Load()
		if due == 0 || now <= max(due, retrying) {
			continue
		}
		key := ""
		if k := wp.key.Load(); k != nil {
			key = *k
		}
		out = append(out, fmt.Sprintf("worker %d: no progress on %q for %s (bound %s)", i, key,
			(time.Duration(now-due)+w.stallBound()).Round(time.Millisecond), w.stallBound()))
	}
	return out
}

func (w *Watcher) read(ctx context.Context, d *dispatcher) {
	defer w.reader.Done()
	p := &w.progress
	backoff := newBackoff()
	// Waits in Next are bounded, so that an idle reader shows it is alive.
	// One bound serves every Next of a readPoll window (a context and a
	// timer per event would be work on the hot path for nothing).
	var win pollWindow
	defer win.end()
	for {
		pctx := win.current(ctx)
		p.expect(&p.reader, 2*readPoll)
		p.inNext.Store(true)
		ev, err := w.sub.Next(pctx)
		idle := pctx.Err() != nil
		p.inNext.Store(false)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, store.ErrFeedFailed) {
			w.failed <- err
			return
		}
		if err != nil && idle {
			w.lag.Store(0) // nothing came within readPoll: caught up
			continue
		}
		if err != nil {
			w.log.Warn("read change feed", "error", err, "retry_in", backoff.peek().String())
			p.expect(&p.reader, backoff.peek()+2*readPoll)
			if !backoff.wait(ctx) {
				return
			}
			continue
		}
		backoff.reset()
		if ev.Snapshot != 0 && ev.Snapshot >= ev.Seq {
			w.lag.Store(ev.Snapshot - ev.Seq)
			w.lagKnown.Store(true)
		}
		p.reader.Store(0) // a busy worker's own deadline counts meanwhile
		if !d.add(ctx, ev) {
			return // not acknowledged: read again after a restart
		}
	}
}

// maxSettling is how many sends' outcomes may be waiting to be written,
// unless the workers are more than a quarter of it.
const maxSettling = 256

// pollWindow is the bound of the reader's waits in Next: one context for a
// readPoll, renewed once it has run out.
type pollWindow struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (w *pollWindow) current(parent context.Context) context.Context {
	if w.ctx == nil || w.ctx.Err() != nil {
		w.end()
		w.ctx, w.cancel = context.WithTimeout(parent, readPoll)
	}
	return w.ctx
}

func (w *pollWindow) end() {
	if w.cancel != nil {
		w.cancel()
	}
}

// work takes a line from the queue and handles its events one after the
// other (see dispatcher). The outcome of a send is written while the worker
// goes on (see sendAndSettle); the key's next event waits for it, parked
// off the worker (park), so that it decides on the state with that outcome
// in it.
func (w *Watcher) work(ctx context.Context, wp *workerProgress, d *dispatcher) {
	defer w.workers.Done()
	defer wp.due.Store(0)
lines:
	for {
		wp.due.Store(0)
		var next dispatched
		select {
		case <-w.stopping:
			return // queued events stay unacknowledged and are replayed
		case next = <-d.queue:
		}
		ev, ln := next.ev, next.line
		again := next.again
		for more := true; more; ev, more = d.done(ln) {
			if wr := ln.last; wr != nil {
				select {
				case <-wr.done:
				default:
					// The key's last outcome is not written yet: the line
					// waits for it apart, and the worker goes on with
					// other keys (a store refusing one order's outcome
					// would hold a worker for each of its changes).
					park(w, d, dispatched{ev: ev, line: ln}, wr.done)
					continue lines
				}
			}
			key := ev.Key // ev changes with the line's next event, read meanwhile by Stalled
			wp.key.Store(&key)
			w.progress.expect(&wp.due, w.stallBound())
			if !again { // timed once, from its first handling
				ev.Ack = w.timedAck(ev.Ack, time.Now())
			}
			again = false
			switch done, delay := w.complete(ctx, wp, ev, ln); done {
			case stopped:
				return
			case waiting:
				if w.unreachable.held(ev.Locus) {
					d.setAside(ln)
				}
				park(w, d, dispatched{ev: ev, line: ln, again: true}, time.After(delay))
				continue lines
			}
		}
	}
}

// park puts ln's event p back on the queue once ready gives: the key's
// last write made (its written's done), or a failed event's wait over.
// There are at most as many parked events as lines (a key has one line).
func park[T any](w *Watcher, d *dispatcher, p dispatched, ready <-chan T) {
	w.workers.Add(1) // by a worker: Stop's wait cannot have ended
	go func() {
		defer w.workers.Done()
		select {
		case <-ready:
		case <-w.stopping:
			return // unacknowledged: replayed
		}
		select {
		case d.queue <- p:
		case <-w.stopping:
		}
	}()
}

// written is a key's last write by its line's worker: done once made, at
// position seq (set before done closes). An event whose state snapshot
// predates it reads the state again.
type written struct {
	done chan struct{}
	seq  uint64
	// at is when it was written (or given up on), once done: a state
	// read after it shows it, whatever its seq.
	at time.Time
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// highest is the feed position of the latest of writes, whose CAS values
// are cas: math.MaxUint64 (unknown: the key's next event reads the state)
// when none has one. An attempt record's CAS is a revision of its own, no
// feed position (the feed does not carry the attempts): taken for one, an
// outcome that wrote the record alone (a retry dropped or redriven during
// its send) let the next event decide on a state read before it, and its
// send's record was built from the stale one, losing an attempt.
func highest(writes []store.Write, cas []uint64) uint64 {
	var m uint64
	found := false
	for i, c := range cas {
		if i < len(writes) && writes[i].Collection == order.Attempts {
			continue
		}
		m, found = max(m, c), true
	}
	if !found {
		return math.MaxUint64
	}
	return m
}

// completion is how complete left an event.
type completion int

const (
	completed completion = iota // handled: acknowledged, or its outcome being written
	stopped                     // the watcher stops: not acknowledged, replayed
	waiting                     // failed: to be handled again later (park)
)

// complete handles ev once. Handled, its outcome is written or being
// written. Failed, it waits apart (park) while the worker handles other
// keys, and is tried again: an unavailable store (on Couchbase, the key's
// node down until it is failed over) however long; any other failure until
// it has failed MaxEventFailures times over PoisonAfter at least, after
// which the event is dead-lettered as a poison event and acknowledged, so
// that it cannot hold its key's later events for good.
func (w *Watcher) complete(ctx context.Context, wp *workerProgress, ev store.Event, ln *keyLine) (completion, time.Duration) {
	select {
	case <-w.stopping:
		return stopped, 0
	default:
	}
	ok, probe, wait := w.admit(ev)
	if !ok {
		if f := ln.failing; f != nil {
			f.failures, f.since = 0, time.Time{} // an outage between failures, as below
		}
		return waiting, wait // the store does not answer where its key is: not tried
	}
	w.progress.expect(&wp.due, w.stallBound())
	ln.touched = false
	settling, err := w.handle(ctx, ev, ln)
	w.unreachable.done(ev.Locus, probe, ln.touched, errors.Is(err, store.ErrUnreachable))
	if err == nil {
		ln.failing = nil
		w.storeDown.Mended(ctx, ev.Key)
		if settling != nil {
			ln.last = settling // it acknowledges ev when written
			return completed, 0
		}
		ev.Ack()
		w.handled.Add(1)
		return completed, 0
	}
	if ctx.Err() != nil {
		return stopped, 0 // aborted at shutdown
	}
	log := w.log.With("collection", ev.Collection, "key", ev.Key)
	f := ln.failing
	if f == nil {
		f = &failing{wait: newBackoff()}
		ln.failing = f
	}
	if errors.Is(err, store.ErrUnavailable) {
		// A line for the outage's first wait, not for every try of every
		// key whose node is down.
		w.storeDown.Fail(ctx, ev.Key, "change not done: the store is unavailable; trying again",
			"collection", ev.Collection, "key", ev.Key, "error", err, "retry_in", f.wait.peek().String())
		f.failures, f.since = 0, time.Time{} // an outage between failures: in a row no more (as settle's)
		return waiting, f.wait.next()        // taken now: once the line is parked, another worker may have it
	}
	if f.failures++; f.failures == 1 {
		f.since = time.Now()
	}
	if f.failures >= w.cfg.MaxEventFailures && time.Since(f.since) >= w.cfg.PoisonAfter {
		if !w.poison(ctx, log, ev, err, "") {
			return stopped, 0 // stopped before its dead letter was written: replayed
		}
		// The key's next change reads its state again: a snapshot
		// taken before the dead letter does not show it.
		ln.last = &written{done: closed, seq: math.MaxUint64, at: time.Now()}
		ln.failing = nil
		w.storeDown.Mended(ctx, ev.Key) // its unavailable tries, if any, are over
		ev.Ack()
		w.handled.Add(1)
		return completed, 0
	}
	log.Warn("change not done; trying again", "error", err, "failures", f.failures, "retry_in", f.wait.peek().String())
	return waiting, f.wait.next() // taken now: once the line is parked, another worker may have it
}

// admit says whether ev is handled now, as unreachable.admit; an event
// that needs nothing of the store (Settled) always is.
func (w *Watcher) admit(ev store.Event) (ok bool, probe *downPart, wait time.Duration) {
	if w.unreachable.count() > 0 {
		if _, settled := Settled(changeOf(ev), w.now(), w.limits()); settled {
			return true, nil, 0
		}
	}
	return w.unreachable.admit(ev.Locus)
}

// failing is how the event a line's worker handles has failed so far.
type failing struct {
	wait     *retryWait // before it is tried again
	failures int        // failures other than the store unavailable
	since    time.Time  // the first of them
}

// poison dead-letters an event that keeps failing. The dead letter keeps
// the key's retry's key and attempts, if it has a retry, and the retry's
// own change has the dead letter take its place in the same writes, as any
// retry given up on does: left flagged, no sweep would flag it again, and
// its event is behind the checkpoint. A dead letter written or purged
// meanwhile by someone else is read again and written over (at most
// maxStale times). If it cannot be written even so, the failure is logged
// and the event let go: the document is untouched, and its next change
// brings it back (for a flagged retry, Run now in the console writes it
// again). It returns false when ctx ended first: the event is then not let
// go but replayed. sentKey, when not empty, is the key a send for the
// change went out under (an outcome the store refused): the dead letter
// keeps it, so that a redrive is answered as a replay (on Couchbase the
// event's own key, of its CAS, may be another).
func (w *Watcher) poison(ctx context.Context, log *slog.Logger, ev store.Event, cause error, sentKey string) bool {
	detail := order.Shorten(cause.Error(), maxDetail)
	conflicts := 0
	// By the dead letter, and the retry when it can be read: the failure
	// may be in reading the rest.
	err := w.retryStore(ctx, log, "write poison dead letter", func() error {
		for {
			var st store.State
			cur, err := w.store.Get(ctx, order.DeadLetter, ev.Key)
			if err == nil {
				st.DeadLetter = cur
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			d := order.DeadLetterDoc{DocID: ev.Key, Reason: order.ReasonPoisonEvent, LastError: detail, DeadAt: w.now().UnixMilli()}
			r, doc, ok, err := w.pendingRetry(ctx, ev)
			if err != nil {
				return err
			}
			// The retry's own change takes its place: left flagged, no
			// sweep would flag it again. Another change (the order's)
			// leaves it, its key and attempts copied: a retry that an
			// instance has claimed, or one newer than the change, goes on,
			// and the dead letter supersedes it once it is flagged again.
			removeRetry := ev.Collection == order.Retry
			if ok {
				if removeRetry {
					st.Retry = doc
				}
				d = deadLetterFrom(r, order.ReasonPoisonEvent, w.now())
				d.LastError = detail
			} else if old, err := order.DecodeDeadLetter(st.DeadLetter.Value); err == nil && st.DeadLetter.Found() && keepsKey(old, ev) {
				// Written over, its attempts and key kept: they may be what
				// a poisoned change of the key's retry left.
				d.Attempts, d.LastStatus, d.FirstAttemptAt, d.LastAttemptAt, d.IdempotencyKey =
					old.Attempts, old.LastStatus, old.FirstAttemptAt, old.LastAttemptAt, old.IdempotencyKey
			}
			if sentKey != "" {
				d.IdempotencyKey = sentKey
			}
			if d.IdempotencyKey == "" {
				d.IdempotencyKey = eventKey(ev)
			}
			_, err = w.store.Apply(ctx, deadLetterWrites(st, d, removeRetry))
			raced := errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrCASMismatch) ||
				errors.Is(err, store.ErrNotFound) // purged by an operator meanwhile
			if raced && conflicts < maxStale {
				conflicts++
				continue
			}
			return err
		}
	})
	if err != nil && ctx.Err() != nil {
		return false
	}
	// Counted once the line is written: as a dead letter only when it is
	// one (an alert on the dead letters sent operators to a list without
	// it), else as given up.
	if err != nil {
		defer w.givenUp.Add(1)
		log.Error("change given up on; could not dead-letter it either", "failures", w.cfg.MaxEventFailures, "error", cause, "dead_letter_error", err)
		return true
	}
	defer w.deadLetter(order.ReasonPoisonEvent)
	log.Error("change given up on and dead-lettered", "reason", order.ReasonPoisonEvent, "failures", w.cfg.MaxEventFailures, "error", cause)
	return true
}

// pendingRetry reads the retry document of a poison event's key, whatever
// the event's collection, when it can: the dead letter takes over what it
// says (attempts, and the key its attempts were sent under, which a change
// of the order since would not give), and for the retry's own change
// removes it, guarded by its CAS. Only the store being unavailable is an error (waited out); another
// failure to read it leaves the dead letter alone: the failure may be in
// reading.
func (w *Watcher) pendingRetry(ctx context.Context, ev store.Event) (order.RetryDoc, store.Doc, bool, error) {
	if ev.Key == order.ControlKey {
		return order.RetryDoc{}, store.Doc{}, false, nil
	}
	doc, err := w.store.Get(ctx, order.Retry, ev.Key)
	if errors.Is(err, store.ErrUnavailable) {
		return order.RetryDoc{}, store.Doc{}, false, err
	}
	if err != nil {
		return order.RetryDoc{}, store.Doc{}, false, nil
	}
	r, err := order.DecodeRetryDoc(doc.Value)
	if err != nil || r.DocID != ev.Key {
		// Removed with the dead letter all the same: it may be what failed.
		return order.RetryDoc{DocID: ev.Key}, doc, true, nil
	}
	return r, doc, true, nil
}

// keepsKey says whether a poison dead letter written over old keeps old's
// key and attempts: unless old is of another incarnation of the order than
// the event's (a deleted order's, where the store tells them apart).
func keepsKey(old order.DeadLetterDoc, ev store.Event) bool {
	k := eventKey(ev)
	return k == "" || old.IdempotencyKey == k || ev.Incarnation == 0 || ev.Collection != order.Inbound
}

// eventKey is the idempotency key a poison event's dead letter keeps, so
// that it holds up the order it was about and not one created anew under
// its key: a retry's own, or the order's at the event.
func eventKey(ev store.Event) string {
	switch {
	case ev.Collection == order.Retry && !ev.Deleted:
		if r, err := order.DecodeRetryDoc(ev.Value); err == nil {
			return r.IdempotencyKey
		}
	case ev.Collection == order.Inbound && !ev.Deleted:
		return order.IdempotencyKey(ev.Key, incarnation(store.Doc{CAS: ev.CAS, Incarnation: ev.Incarnation}))
	}
	return ""
}

func (w *Watcher) limits() Limits {
	return Limits{MaxOrderBytes: w.cfg.MaxOrderBytes, ClaimTTL: w.cfg.ClaimTTL, Policy: w.cfg.Policy, SingleConsumer: w.cfg.SingleConsumer, AtomicOutcomes: w.cfg.AtomicOutcomes}
}

// handle loads the state of ev's key, decides, and carries the plan out.
// It returns an error when the outcome could not be written; the event is
// then not acknowledged. After a send it returns the channel that closes
// once the outcome is written and ev acknowledged.
func (w *Watcher) handle(ctx context.Context, ev store.Event, ln *keyLine) (*written, error) {
	log := w.log.With("collection", ev.Collection, "key", ev.Key)
	c := changeOf(ev)
	if p, ok := Settled(c, w.now(), w.limits()); ok {
		if p.Warn != "" {
			log.Warn(p.Warn)
		}
		w.ignored.Add(1)
		log.Debug("ignore", "reason", p.Reason)
		return nil, nil
	}
	// The feed's snapshot of the key's state serves unless the key was
	// written since it was taken, or it was taken a while ago: the event
	// waited in the queue (a slow email service, a backlog) while others
	// may have written the key (a cancelled order is not mailed).
	snapshot := ev.State != nil && time.Since(ev.StateAt) <= w.cfg.SnapshotAge
	if wr := ln.last; wr != nil && wr.seq > ev.Snapshot {
		snapshot = false
	}
	for try := range maxStale {
		var st store.State
		if try == 0 && snapshot {
			st = *ev.State
		} else {
			// Once: an unavailable store (a node of the key's down) is
			// waited out with the event parked off the worker (complete).
			var err error
			ln.touched = true
			if st, err = w.store.State(ctx, ev.Key); err != nil {
				return nil, err
			}
		}
		p := Decide(c, st, w.now(), w.limits())
		if p.Warn != "" {
			log.Warn(p.Warn)
		}
		switch p.Action {
		case Ignore:
			w.ignored.Add(1)
			log.Debug("ignore", "reason", p.Reason)
			return nil, nil
		case Write:
			cas, err := w.applyOnce(ctx, ln, p.Writes)
			if isStale(err) {
				continue // changed since it was read: decide again
			}
			if err == nil {
				ln.last = &written{done: closed, seq: highest(p.Writes, cas)}
			}
			if err == nil && p.Detail != "" {
				log.Warn("dead-lettered", "reason", p.Reason, "detail", p.Detail)
				w.deadLetter(p.Reason)
			} else if err == nil {
				log.Debug("written", "reason", p.Reason)
			}
			return nil, err
		case Send:
			if len(p.Writes) > 0 {
				cas, err := w.applyOnce(ctx, ln, p.Writes)
				if isStale(err) {
					continue
				}
				if err != nil {
					return nil, err
				}
				ln.last = &written{done: closed, seq: highest(p.Writes, cas)}
				st.Retry.CAS, st.Retry.Value = cas[0], p.Retry.Encode()
			}
			return w.sendAndSettle(ctx, log, p, st, ev)
		}
	}
	return nil, fmt.Errorf("state of %s kept changing under %d decisions", ev.Key, maxStale)
}

// maxStale bounds how often one event is decided again because its
// documents changed between the read and the write.
const maxStale = 10

func isStale(err error) bool {
	var we *store.WriteError
	return errors.As(err, &we)
}

// sendAndSettle sends, then hands the outcome to a goroutine of its own
// that writes it and acknowledges ev, so that the worker takes its next
// event meanwhile: the write waits for a commit, which the outcomes of many
// workers share. Once the email service has been called, the outcome is
// written there, however long that takes: going back to the decision would
// send again.
func (w *Watcher) sendAndSettle(ctx context.Context, log *slog.Logger, p Plan, st store.State, ev store.Event) (*written, error) {
	log = log.With("attempt", p.Attempt)
	// The span of the whole confirmation: the send's (otelhttp's) and the
	// outcome's are its children.
	sctx, span := w.tracer.Start(ctx, "confirm order", trace.WithAttributes(
		attribute.String("ordermail.collection", ev.Collection), attribute.String("ordermail.order_key", p.OrderKey),
		attribute.Int("ordermail.attempt", p.Attempt)))
	started := w.now()
	sendErr := w.send(sctx, p)
	took := w.now().Sub(started)
	if sendErr != nil && ctx.Err() != nil {
		span.End()
		return nil, ctx.Err()
	}
	a, attempted := attemptOf(started, took, sendErr, w.cfg.Instance)
	if !attempted || w.cfg.AttemptHistory < 0 {
		a = order.Attempt{} // nothing to record: no request was made
	}
	select {
	case w.inflight <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err() // not written: the event is replayed, the send repeated with its key
	}
	wr := &written{done: make(chan struct{})}
	w.settling.Add(1)
	go func() {
		defer w.settling.Done()
		defer close(wr.done)
		defer func() { <-w.inflight }()
		defer span.End()
		actx := sctx
		if span.IsRecording() { // unrecorded, a span is work for nobody
			var aspan trace.Span
			actx, aspan = w.tracer.Start(sctx, "apply outcome")
			defer aspan.End()
		}
		seq, ok, refused := w.settle(actx, log, p, st, sendErr, a)
		switch {
		case ok:
			wr.seq = seq
			ev.Ack()
			w.handled.Add(1)
		case refused != nil && w.poison(actx, log, ev, outcomeRefused(sendErr, refused), p.IdempotencyKey):
			// Dead-lettered, or let go: the checkpoint moves on.
			wr.seq = math.MaxUint64
			ev.Ack()
			w.handled.Add(1)
		default:
			wr.seq = math.MaxUint64 // unknown: the next event of the key reads the state
		}
		wr.at = time.Now() // before done closes
	}()
	return wr, nil
}

// settle writes the outcome of a send until it is written or ctx ends
// (then the event is replayed and the send repeated under its key). A guard
// that fails reads the state again and settles the same result on it. A
// store unavailable is waited out; a write the store refuses otherwise,
// MaxEventFailures times in a row, is given up on and its error returned:
// the event is then dead-lettered as a poison event (a refusal for good
// would hold the feed's checkpoint, and grow what waits behind it, for the
// life of the process).
func (w *Watcher) settle(ctx context.Context, log *slog.Logger, p Plan, st store.State, sendErr error, a order.Attempt) (uint64, bool, error) {
	b := newBackoff()
	stale := 0   // guards failed in a row
	refused := 0 // writes or reads refused in a row, neither a conflict nor the store unavailable
	var refusedSince time.Time
	givenUp := func() bool { // refused once more
		if refused++; refused == 1 {
			refusedSince = time.Now()
		}
		return refused >= w.cfg.MaxEventFailures && time.Since(refusedSince) >= w.cfg.PoisonAfter
	}
	// The store unavailable: a line for the outage's first wait, not for
	// every try of every send's outcome.
	defer w.storeDown.Mended(ctx, p.OrderKey)
	for {
		now := w.now()
		out := Settle(p, st, sendErr, now, w.limits(), w.rand())
		a.Outcome = out.Result
		writes := out.Writes
		if a.At != 0 && w.cfg.AtomicOutcomes {
			// In the outcome's own transaction.
			writes = append(writes[:len(writes):len(writes)], w.record(p.OrderKey, p.IdempotencyKey, st.Order.Incarnation, st.Attempts, a, now))
		}
		// Once a pass: an unavailable store, waited out here, ends a run of
		// refusals (retryStore would wait it out unseen).
		var cas []uint64
		var err error
		if len(writes) > 0 {
			cas, err = w.store.Apply(ctx, writes)
		}
		if err == nil {
			w.logOutcome(log, out, sendErr)
			if a.At != 0 && !w.cfg.AtomicOutcomes {
				w.recordApart(ctx, log, p.OrderKey, p.IdempotencyKey, a, now)
			}
			return highest(writes, cas), true, nil
		}
		if ctx.Err() != nil {
			return 0, false, nil
		}
		if !isStale(err) {
			stale = 0
			if errors.Is(err, store.ErrUnavailable) {
				refused = 0 // an outage between refusals: in a row no more
				w.storeDown.Fail(ctx, p.OrderKey, "write the outcome of a send; trying again",
					"key", p.OrderKey, "result", out.Result, "error", err, "retry_in", b.peek().String())
			} else if givenUp() {
				return 0, false, err
			} else {
				log.Error("write the outcome of a send; trying again", "result", out.Result, "error", err, "retry_in", b.peek().String())
			}
			w.progress.expect(&w.progress.retrying, b.peek()+w.stallBound())
			if !b.wait(ctx) {
				return 0, false, nil
			}
		} else if refused, stale = 0, stale+1; stale > maxStale {
			// Someone keeps writing the key: a read and a write a moment
			// apart, not a loop as fast as the store answers.
			log.Warn("the documents of the send's outcome keep changing; trying again", "conflicts", stale, "retry_in", b.peek().String())
			w.progress.expect(&w.progress.retrying, b.peek()+w.stallBound())
			if !b.wait(ctx) {
				return 0, false, nil
			}
		}
		fresh, rerr := w.store.State(ctx, p.OrderKey)
		if rerr == nil {
			st = fresh
			continue
		}
		// What was last read stands (an empty state would settle the
		// send as dropped and write nothing): its guards fail again and
		// the state is read once more.
		if ctx.Err() != nil {
			return 0, false, nil
		}
		if errors.Is(rerr, store.ErrUnavailable) {
			refused = 0
			w.storeDown.Fail(ctx, p.OrderKey, "read state to settle a send; trying again", "key", p.OrderKey, "error", rerr, "retry_in", b.peek().String())
		} else if givenUp() {
			return 0, false, rerr
		} else {
			log.Error("read state to settle a send; trying again", "error", rerr, "retry_in", b.peek().String())
		}
		w.progress.expect(&w.progress.retrying, b.peek()+w.stallBound())
		if !b.wait(ctx) {
			return 0, false, nil
		}
	}
}

// outcomeRefused is why a send's outcome was given up on, for its dead
// letter: whether the email went out says what a redrive does (sends again
// under the same key: an idempotent service answers it as a replay).
func outcomeRefused(sendErr, err error) error {
	if sendErr == nil {
		return fmt.Errorf("the email was sent, but the store refused its outcome (the order marked confirmed): %w", err)
	}
	return fmt.Errorf("the store refused the outcome of a failed send: %w", err)
}

// record is the write that adds attempt a, made under the idempotency key
// idem, to the order's attempt record doc: an upsert (the key's events are
// handled one at a time) that expires AttemptRetention after it, settled
// or not: a record whose order ends without another send (refunded, its
// retry dropped by an operator, dead-lettered so and purged) would
// otherwise stay for ever, one for every such order in the history; a
// retry still waiting is sent again with its own key. inc is
// the order's incarnation where the store keeps one (else 0): a record of
// another incarnation is a deleted order's.
func (w *Watcher) record(key, idem string, inc uint64, doc store.Doc, a order.Attempt, now time.Time) store.Write {
	rec := order.AttemptsDoc{DocID: key}
	if doc.Found() {
		// An unreadable record starts afresh, as does one of an order
		// deleted since (another under the same key).
		old, err := order.DecodeAttempts(doc.Value)
		if err == nil && !order.OfAnotherIncarnation(old.IdempotencyKey, key, inc) {
			rec = old
		}
	}
	rec = rec.Add(a, w.cfg.AttemptHistory, now)
	rec.IdempotencyKey = idem
	return store.Write{Op: store.OpUpsert, Collection: order.Attempts, Key: key, Value: rec.Encode(),
		Expiry: now.Add(w.cfg.AttemptRetention)}
}

// recordApart writes the attempt record after the outcome, where outcomes
// are not one transaction (Couchbase): the outcome first, since it is what
// matters; a crash in between loses this attempt's record only.
func (w *Watcher) recordApart(ctx context.Context, log *slog.Logger, key, idem string, a order.Attempt, now time.Time) {
	err := w.retryStore(ctx, log, "write attempt record", func() error {
		doc, err := w.store.Get(ctx, order.Attempts, key)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		_, err = w.store.Apply(ctx, []store.Write{w.record(key, idem, 0, doc, a, now)})
		return err
	})
	if err != nil {
		log.Warn("the attempt record was not written", "error", err)
	}
}

// attemptOf describes a send for the attempt record, free of customer data;
// attempted is false when no request was made (held by the breaker or the
// gate, invalid): that is no attempt to record.
func attemptOf(started time.Time, took time.Duration, sendErr error, instance string) (a order.Attempt, attempted bool) {
	a = order.Attempt{At: started.UnixMilli(), DurationMs: took.Milliseconds(), Class: "sent", Instance: instance}
	if sendErr == nil {
		return a, true
	}
	a.Class = mailer.Transient.String()
	var se *mailer.SendError
	if errors.As(sendErr, &se) {
		if se.NotAttempted || se.Class == mailer.Invalid {
			return a, false
		}
		a.Class, a.Status, a.Error = se.Class.String(), se.Status, se.Cause()
	}
	_, _, a.Reason = failureOf(sendErr)
	return a, true
}

func (w *Watcher) logOutcome(log *slog.Logger, out Outcome, sendErr error) {
	h := w.hook()
	if h.Outcome != nil {
		// Counted after the line is written: whoever sees the count can
		// read the line.
		defer h.Outcome(out.Result)
	}
	switch out.Result {
	case "sent":
		log.Debug("confirmation sent")
	case "dead_letter":
		log.Warn("dead-lettered", "reason", out.Reason, "error", sendErr)
		w.deadLetter(out.Reason)
	default:
		msg, held := "send failed, retry scheduled", ""
		if se, ok := errors.AsType[*mailer.SendError](sendErr); ok && se.Held() != "" {
			msg, held = "send held back, retry scheduled", se.Held()
		}
		args := []any{"error", sendErr, "retry_in", out.Delay.String()}
		if held != "" {
			args = append(args, "held", held)
		}
		if h.RetriesPaused != nil && h.RetriesPaused() {
			// The timer flags no retry while allow_retrys is absent: the
			// delay is when it becomes due, not when it goes out.
			msg += " but retries are paused: it waits for " + order.ControlKey
			args = append(args, "paused", true)
		}
		log.Debug(msg, args...)
	}
}

// applyOnce writes writes, once, for ln's event.
func (w *Watcher) applyOnce(ctx context.Context, ln *keyLine, writes []store.Write) ([]uint64, error) {
	if len(writes) == 0 {
		return nil, nil
	}
	ln.touched = true
	return w.store.Apply(ctx, writes)
}

func (w *Watcher) send(ctx context.Context, p Plan) error {
	started := time.Now()
	err := w.mail.Send(ctx, p.IdempotencyKey, p.Body)
	if f := w.hook().Send; f != nil {
		f(time.Since(started), err)
	}
	// Only requests made count as sends: one held back (breaker,
	// configuration, rate limit) or that cannot be made (invalid) is none.
	se, _ := errors.AsType[*mailer.SendError](err)
	switch {
	case err == nil:
		w.sends.Add(1)
		w.sent.Add(1)
	case se != nil && se.NotAttempted:
		w.held.Add(1)
	case se != nil && se.Class == mailer.Invalid, se == nil && ctx.Err() != nil:
		// No request, or given up at shutdown: the event is replayed.
	default:
		w.sends.Add(1)
		w.sendFailures.Add(1)
	}
	return err
}

// retryStore runs op until it succeeds, fails for good, or ctx ends. An
// unavailable store is tried again; other errors, a failed guard among them,
// are the caller's to judge.
func (w *Watcher) retryStore(ctx context.Context, log *slog.Logger, what string, op func() error) error {
	b := newBackoff()
	for {
		err := op()
		if !errors.Is(err, store.ErrUnavailable) {
			return err
		}
		log.Warn(what, "error", err, "retry_in", b.peek().String())
		w.progress.expect(&w.progress.retrying, b.peek()+w.stallBound())
		if !b.wait(ctx) {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
	}
}
