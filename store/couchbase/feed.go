package couchbase

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/couchbase/gocbcore/v10"
	"github.com/ordermail/ordermail/internal/episode"
	"github.com/ordermail/ordermail/store"
	"golang.org/x/sync/semaphore"
)

// position is where a vBucket's stream resumes: the DCP stream request's
// vBucket UUID, start sequence number and the snapshot that holds it.
type position struct {
	UUID      uint64 `json:"vbUUID"`
	Seq       uint64 `json:"seqNo"`
	SnapStart uint64 `json:"snapStart"`
	SnapEnd   uint64 `json:"snapEnd"`
}

// dcpAgent is what the feed needs of gocbcore's DCP agent. dcpClient is the
// real one; the unit tests drive a fake and call the observers themselves.
type dcpAgent interface {
	// OpenStream asks for vb's changes in collectionIDs from `from` on; cb
	// gets the vBucket's current UUID or the error (a DCPRollbackError).
	// cancel abandons the request while it is unanswered.
	OpenStream(vb uint16, from position, collectionIDs []uint32, obs gocbcore.StreamObserver,
		cb func(uuid uint64, err error)) (cancel func(), err error)
	// CloseStream closes vb's stream on this connection, if one is open.
	CloseStream(ctx context.Context, vb uint16) error
	// FailoverLog is vb's failover log, newest entry first.
	FailoverLog(ctx context.Context, vb uint16) ([]gocbcore.FailoverEntry, error)
	// HighSeqnos is where each of vbs is now, asked of the nodes that
	// hold them.
	HighSeqnos(ctx context.Context, vbs []uint16) (map[uint16]uint64, error)
	// CollectionHighSeqnos is, for each of vbs, the highest seqno of a
	// change to one of the collections: where a stream filtered to them
	// ends, as the writes to other collections are never sent to it. A
	// vBucket none of them is on is left out.
	CollectionHighSeqnos(ctx context.Context, vbs []uint16, collectionIDs []uint32) (map[uint16]uint64, error)
	// ServerOf names the node that holds vb now, as the cluster's map
	// says (its revision and the node's index in it); -1 when it does not.
	ServerOf(vb uint16) int
	Close() error
}

// checkpointStore keeps one position per feed name and vBucket.
type checkpointStore interface {
	Load(ctx context.Context, name string, vbs []uint16) (map[uint16]position, error)
	Save(ctx context.Context, name string, vb uint16, p position) error
}

// resolver reads the IDs of the feed's collections again, by name; a
// collection that no longer exists is an error that wraps
// gocbcore.ErrCollectionNotFound or ErrScopeNotFound and names it.
type resolver func(ctx context.Context) (map[uint32]string, error)

// FeedStats is what a Couchbase subscription reports about its streams;
// Subscribe's store.Subscription has a Stats() FeedStats method.
type FeedStats struct {
	VBuckets    int // streamed by this instance
	StreamsOpen int
	// Lag is, summed over the vBuckets and at most for one, how many
	// sequence numbers the server has past the checkpoint up to the last
	// change of a watched collection (read every few seconds). The writes
	// to other collections of the bucket after that are not counted: the
	// streams are never sent them, so the checkpoint does not pass them.
	// Those in between are: the lag bounds the changes left from above.
	Lag, MaxLag uint64
	// Since Subscribe: rollbacks the server asked for, streams reopened
	// (ended, refused, unanswered, or restarted from their checkpoints
	// after a heartbeat came late), checkpoint documents not saved.
	Rollbacks, Reopens, CheckpointSaveFailures uint64

	// Membership mode: this member's name, the feed's members as its last
	// heartbeat read them, and since Subscribe the vBuckets it claimed,
	// handed over, and lost (a checkpoint write refused: another member
	// had claimed the vBucket).
	Member                    string
	Members                   []Member
	Claimed, Released, Fenced uint64
	Aside                     bool // this member stepped aside (aside.go)
}

type snapshot struct{ start, end uint64 }

// pending is an event on its way to Next, with the stream incarnation it
// came from: one that became void meanwhile is dropped there.
type pending struct {
	ev       store.Event
	st       *vbState
	gen      int
	restarts int
}

type phase int

const (
	phaseWaiting phase = iota // to be (re)opened at vbState.at
	phaseOpening              // being opened; a request may be out
	phaseOpen
	phaseParked // waits for the collections to be resolved again
	// Membership mode: not this member's, or being handed over; nothing
	// is streamed or handed out.
	phaseUnowned
)

// vbState is one vBucket's stream.
type vbState struct {
	phase      phase
	at         time.Time  // phaseWaiting: when to open
	sent       time.Time  // phaseOpening: when the request went out; zero before
	cancel     func()     // phaseOpening: abandons the request
	gen        int        // stream incarnation; callbacks of older ones are dropped
	void       int        // events of incarnations before this one are never handed out (restartLocked, voidLocked)
	restarts   int        // restartLocked calls: the acknowledgements an event counts in
	dropped    int        // events Next dropped since the last restart: never acknowledged
	uuid       uint64     // the vBucket UUID the stream runs on
	base       position   // where the stream started
	snaps      []snapshot // snapshot markers since base, oldest first
	rollbackTo *uint64    // the server asked to restart from here
	closeFirst bool       // the server may hold a stream of ours on vb
	failures   int        // failover-log reads failed in a row
	high       uint64     // the highest seqno of the watched collections the server has shown
	settled    bool       // the first stream request was answered (or given up)
	locus      int        // the node holding vb, as the stream of generation locusOf-1 found it
	locusOf    int

	// Membership mode (f.own set).
	held      bool  // this member owns vb: it claimed it and has not lost or released it
	claim     claim // the epoch and the CAS of our last checkpoint write
	claiming  bool  // a claim is under way
	unsure    bool  // our last claim failed, perhaps after it was made: the document may name us
	disowning bool  // a Disown is under way
	releasing bool  // being handed over: nothing more is handed out
	suspect   bool  // voided when we may have been taken for dead: streamed again once a checkpoint write says it is ours
	// op is held while a stream request is sent and while a release
	// closes the stream, so that no request goes out after the close.
	op sync.Mutex
}

// feedOptions tune the feed; zero values are the defaults.
type feedOptions struct {
	buffer      int           // events read ahead of the watcher; 256
	bufferBytes int64         // and their values' bytes at most; 64 MiB
	allVBuckets int           // the bucket's vBuckets, of which a static instance streams some; 0: vbs
	flushEvery  time.Duration // checkpoint save interval; 1s
	reopenDelay time.Duration // wait before reopening an ended stream; 1s
	tick        time.Duration // supervisor resolution; 100ms
	openTimeout time.Duration // a stream request unanswered this long is sent again; 10s
	opTimeout   time.Duration // bounds each failover-log, high-seqno and checkpoint call; 10s
	backoffMax  time.Duration // cap of the failover-log retry backoff; 10s
	statsEvery  time.Duration // high seqnos read for the lag; 5s
	releaseWait time.Duration // a handover waits this long for in-flight events; 30s
	now         func() time.Time
	// locusHeld is store.FeedOptions.LocusHeld: a held node's changes
	// wait in their stream, looked at again every heldPoll.
	locusHeld func(locus int) bool
	heldPoll  time.Duration // 50ms
}

func (o feedOptions) withDefaults() feedOptions {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.buffer == 0 {
		o.buffer = 256
	}
	if o.bufferBytes == 0 {
		o.bufferBytes = 64 << 20
	}
	def(&o.flushEvery, time.Second)
	def(&o.reopenDelay, time.Second)
	def(&o.tick, 100*time.Millisecond)
	def(&o.openTimeout, 10*time.Second)
	def(&o.opTimeout, 10*time.Second)
	def(&o.backoffMax, 10*time.Second)
	def(&o.statsEvery, 5*time.Second)
	def(&o.releaseWait, 30*time.Second)
	def(&o.heldPoll, 50*time.Millisecond)
	if o.now == nil {
		o.now = time.Now
	}
	return o
}

// feed is a store.Subscription over DCP streams on a set of vBuckets.
// gocbcore calls the observers on its DCP goroutines and acknowledges the
// server's flow-control buffer when a callback returns, so a callback that
// blocks because the watcher is behind slows the server down instead of
// making it drop the stream.
//
// Its goroutines: the supervisor (opens and reopens streams, gives up on
// unanswered requests), one opener per stream being opened (it may read a
// failover log first), the saver (checkpoints, apart from the streams),
// the high-seqno reader (lag) and a collection resolver when a watched
// collection goes. Close stops and waits for all of them.
type feed struct {
	agent   dcpAgent
	cps     checkpointStore
	resolve resolver
	name    string
	vbs     []uint16
	opts    feedOptions
	log     *slog.Logger

	acks   *store.AckTracker
	events chan pending
	room   *semaphore.Weighted // the bytes events may hold read ahead (feedOptions.bufferBytes)
	ctx    context.Context     // ends at Close
	stop   context.CancelFunc
	// handovers is the context of the handovers under way, which Close
	// waits for: it ends with Close's own context, not at its start.
	handovers   context.Context
	endHandover context.CancelFunc
	wg          sync.WaitGroup
	wake        chan struct{}
	ready       chan struct{} // closed when every first stream request is settled

	failed chan struct{} // closed with err set: the feed cannot go on
	err    error

	mu          sync.Mutex
	colls       map[uint32]string
	ids         []uint32
	state       map[uint16]*vbState
	saved       map[uint16]position // last saved checkpoints
	saving      map[uint16]bool     // a periodic save's write of it is under way
	unsettled   int
	needResolve bool
	resolving   bool
	resolveAt   time.Time
	closed      bool
	stats       FeedStats

	// Failures said once an episode, not at every try (a hung node's 341
	// streams asked again every 10s wrote 61,000 lines an hour).
	streams, saves, beats, claims *episode.Episode
	handoffs, rechecks            *episode.Episode // handovers and disowns of a vBucket; fence's checks again

	own *ownership // membership mode; nil: a fixed set of vBuckets
}

// newFeed loads the checkpoints of vbs (with fromNow, saves the current
// end of the vBuckets that have none before anything is streamed) and
// starts the goroutines that open the streams and keep them going.
//
// With own set (membership mode), vbs is every vBucket and the feed
// streams those it claims; see handover.go.
func newFeed(ctx context.Context, agent dcpAgent, cps checkpointStore, resolve resolver, name string,
	colls map[uint32]string, vbs []uint16, fromNow bool, opts feedOptions, log *slog.Logger, own *ownership) (*feed, error) {
	opts = opts.withDefaults()
	log = log.With("feed", name) // the store's logger names the component
	saved := map[uint16]position{}
	if own == nil {
		var err error
		if saved, err = cps.Load(ctx, name, vbs); err != nil {
			return nil, fmt.Errorf("load checkpoints of %s: %w", name, err)
		}
		if fromNow {
			if err := startStaticFromNow(ctx, agent, cps, name, vbs, saved, opts, log); err != nil {
				return nil, fmt.Errorf("feed %s from now: %w", name, err)
			}
		}
	}
	fctx, stop := context.WithCancel(context.Background())
	hctx, endHandover := context.WithCancel(context.Background())
	f := &feed{
		agent: agent, cps: cps, resolve: resolve, name: name, vbs: vbs, opts: opts, log: log,
		acks:   store.NewAckTracker(nil),
		events: make(chan pending, opts.buffer),
		room:   semaphore.NewWeighted(opts.bufferBytes),
		ctx:    fctx, stop: stop,
		handovers: hctx, endHandover: endHandover,
		wake:   make(chan struct{}, 1),
		ready:  make(chan struct{}),
		failed: make(chan struct{}),
		state:  map[uint16]*vbState{},
		saved:  map[uint16]position{},
		saving: map[uint16]bool{},
		own:    own,
	}
	f.streams = episode.New(log, "streams", opts.now)
	f.saves = episode.New(log, "checkpoint saves", opts.now)
	f.beats = episode.New(log, "membership heartbeats", opts.now)
	f.claims = episode.New(log, "vBucket claims", opts.now)
	f.handoffs = episode.New(log, "vBucket handovers", opts.now)
	f.rechecks = episode.New(log, "checks of vBuckets not yet found ours", opts.now)
	f.setCollections(colls)
	if own != nil {
		if err := f.join(ctx, fromNow); err != nil {
			stop()
			return nil, fmt.Errorf("feed %s: %w", name, err)
		}
	} else {
		for _, vb := range vbs {
			p := saved[vb]
			f.saved[vb] = p
			st := &vbState{uuid: p.UUID, base: p, high: p.Seq}
			f.state[vb] = st
			f.restartLocked(vb, st, p.Seq)
		}
		f.stats.VBuckets = len(vbs)
		f.unsettled = len(vbs)
	}
	if f.unsettled == 0 {
		close(f.ready)
	}
	if own != nil {
		f.wg.Go(f.memberLoop)
	}
	f.wg.Go(f.supervise)
	f.wg.Go(f.saveLoop)
	f.wg.Go(f.highsLoop)
	return f, nil
}

// waitReady waits until the server has answered every first stream
// request (or one was given up on), so that what is written after it is
// streamed as it happens; it shuts the feed down when it fails.
func (f *feed) waitReady(ctx context.Context) error {
	var err error
	select {
	case <-f.ready:
		return nil
	case <-f.failed:
		err = f.err
	case <-ctx.Done():
		err = ctx.Err()
	}
	f.shutdown() // nothing was handed out: nothing to save
	return err
}

// fromNowMarker records that a feed's --from-now start was written for
// every vBucket (metaCheckpoints).
type fromNowMarker interface {
	Started(ctx context.Context, name string) (bool, error)
	MarkStarted(ctx context.Context, name string, durable bool) error
	Begin(ctx context.Context, name string, vb uint16, p position, durable bool) error
}

// startStaticFromNow is startFromNow for a fixed set of vBuckets, once for
// the feed (when cps records it): a checkpoint missing at a later start was
// lost, and its vBucket is streamed from the beginning, said, never from
// its end then, which would skip what was written between. The first
// instance to start writes every vBucket's start, its own and, where none
// is yet, the other instances' (which start later, on the mark), and then
// the mark.
func startStaticFromNow(ctx context.Context, agent dcpAgent, cps checkpointStore, name string, vbs []uint16,
	saved map[uint16]position, opts feedOptions, log *slog.Logger) error {
	marker, marks := cps.(fromNowMarker)
	if marks {
		started, err := marker.Started(ctx, name)
		if err != nil {
			return err
		}
		if started {
			// Read before the mark: another instance starting at the same
			// moment may have written them since, then the mark.
			var missing []uint16
			for _, vb := range vbs {
				if _, ok := saved[vb]; !ok {
					missing = append(missing, vb)
				}
			}
			if len(missing) > 0 {
				again, err := cps.Load(ctx, name, missing)
				if err != nil {
					return err
				}
				maps.Copy(saved, again)
			}
			for _, vb := range missing {
				if _, ok := saved[vb]; !ok {
					log.Warn("a vBucket's checkpoint document is gone although --from-now wrote it at the first start: streamed from its beginning "+
						"(paid orders written before that start and not confirmed are sent)", "vbucket", vb)
				}
			}
			return nil
		}
	}
	if err := startFromNow(ctx, agent, vbs, saved, opts, func(ctx context.Context, vb uint16, p position) error {
		return cps.Save(ctx, name, vb, p)
	}); err != nil {
		return err
	}
	if !marks {
		return nil
	}
	var others []uint16
	for vb := range opts.allVBuckets {
		if !slices.Contains(vbs, uint16(vb)) {
			others = append(others, uint16(vb))
		}
	}
	if len(others) > 0 {
		theirs, err := cps.Load(ctx, name, others)
		if err != nil {
			return fmt.Errorf("load the other instances' checkpoints: %w", err)
		}
		if err := startFromNow(ctx, agent, others, theirs, opts, func(ctx context.Context, vb uint16, p position) error {
			return marker.Begin(ctx, name, vb, p, false) // as MarkStarted
		}); err != nil {
			return fmt.Errorf("the other instances' starts: %w", err)
		}
	}
	// Not durable: static mode writes nothing else durably to the
	// metadata bucket, which may lack the level (an ephemeral one).
	return marker.MarkStarted(ctx, name, false)
}

// startTries is how often startFromNow tries each read.
const startTries = 3

// startFromNow gives every vBucket of vbs without a checkpoint (in saved)
// its current end as checkpoint, and saves those (save) before anything
// is streamed, so that a restart, or a claim made later, resumes there
// instead of at the end of that later moment.
func startFromNow(ctx context.Context, agent dcpAgent, vbs []uint16, saved map[uint16]position, opts feedOptions,
	save func(context.Context, uint16, position) error) error {
	var missing []uint16
	for _, vb := range vbs {
		if _, ok := saved[vb]; !ok {
			missing = append(missing, vb)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	// A node warming up answers a read or two with a temporary failure: each
	// read is tried a few times, within its bound, before the start fails.
	// A backoff of its own for each: it keeps state, and the vBuckets are
	// read in parallel.
	tries := func() []backoff.RetryOption {
		return []backoff.RetryOption{backoff.WithBackOff(backoff.NewExponentialBackOff()), backoff.WithMaxTries(startTries)}
	}
	octx, cancel := context.WithTimeout(ctx, opts.opTimeout)
	highs, err := backoff.Retry(octx, func() (map[uint16]uint64, error) { return agent.HighSeqnos(octx, missing) }, tries()...)
	cancel()
	if err != nil {
		return err
	}
	var mu sync.Mutex
	errs := parallel(ctx, missing, func(ctx context.Context, vb uint16) error {
		ctx, cancel := context.WithTimeout(ctx, opts.opTimeout)
		defer cancel()
		flog, err := backoff.Retry(ctx, func() ([]gocbcore.FailoverEntry, error) { return agent.FailoverLog(ctx, vb) }, tries()...)
		if err != nil {
			return fmt.Errorf("failover log of vb %d: %w", vb, err)
		}
		if len(flog) == 0 {
			return fmt.Errorf("vb %d has an empty failover log", vb)
		}
		s := highs[vb]
		p := position{UUID: uint64(flog[0].VbUUID), Seq: s, SnapStart: s, SnapEnd: s}
		if err := save(ctx, vb, p); err != nil {
			return fmt.Errorf("save start of vb %d: %w", vb, err)
		}
		mu.Lock()
		saved[vb] = p
		mu.Unlock()
		return nil
	})
	return joinErrs(errs, len(missing))
}

// parallel calls fn for each item, all at once, and returns the errors by
// item. The items are vBuckets (at most 1,024) or servers: under a bound of
// fewer, the writes to a node that hangs (a third of them on three nodes)
// took every slot until they timed out, and held up the vBuckets of the
// nodes that answer.
func parallel[T comparable](ctx context.Context, items []T, fn func(context.Context, T) error) map[T]error {
	errs := map[T]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, it := range items {
		wg.Go(func() {
			if err := fn(ctx, it); err != nil {
				mu.Lock()
				errs[it] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}

// joinErrs sums up the errors of parallel: how many of total failed, and
// the first few, sorted; errors.Is sees them all.
func joinErrs[T comparable](errs map[T]error, total int) error {
	if len(errs) == 0 {
		return nil
	}
	e := &someFailed{total: total}
	for _, err := range errs {
		e.errs = append(e.errs, err)
	}
	sort.Slice(e.errs, func(i, j int) bool { return e.errs[i].Error() < e.errs[j].Error() })
	return e
}

type someFailed struct {
	total int
	errs  []error
}

func (e *someFailed) Error() string {
	var msgs []string
	for i, err := range e.errs {
		if i == 3 {
			msgs = append(msgs, "...")
			break
		}
		msgs = append(msgs, err.Error())
	}
	return fmt.Sprintf("%d of %d failed: %s", len(e.errs), e.total, strings.Join(msgs, "; "))
}

func (e *someFailed) Unwrap() []error { return e.errs }

// setCollections sets the collections streamed; callers hold f.mu or own f.
func (f *feed) setCollections(colls map[uint32]string) {
	f.colls = colls
	f.ids = f.ids[:0:0]
	for id := range colls {
		f.ids = append(f.ids, id)
	}
	slices.Sort(f.ids)
}

func (f *feed) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// failLocked stops the feed for good: Next returns err from now on.
func (f *feed) failLocked(err error) {
	select {
	case <-f.failed:
		return
	default:
	}
	f.err = fmt.Errorf("%w: %w", store.ErrFeedFailed, err)
	close(f.failed)
	f.log.Error("change feed stopped", "error", err)
	for _, st := range f.state {
		f.settleLocked(st)
	}
}

// settleLocked records that vb's first stream request is answered.
func (f *feed) settleLocked(st *vbState) {
	if st.settled {
		return
	}
	st.settled = true
	f.unsettled--
	if f.unsettled == 0 {
		close(f.ready)
	}
}

func (f *feed) isFailed() bool {
	select {
	case <-f.failed:
		return true
	default:
		return false
	}
}

// supervise opens the streams that are due, gives up on stream requests
// left unanswered, and starts the collection resolver when asked.
func (f *feed) supervise() {
	t := time.NewTicker(f.opts.tick)
	defer t.Stop()
	for {
		f.superviseOnce()
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		case <-f.wake:
		}
	}
}

func (f *feed) superviseOnce() {
	now := f.opts.now()
	start := map[uint16]int{} // the vBuckets to open, with their generations
	var abandon []func()
	f.mu.Lock()
	if f.closed || f.isFailed() {
		f.mu.Unlock()
		return
	}
	wanted, open := 0, 0 // the streams that should be open, and are
	for vb, st := range f.state {
		if st.phase != phaseUnowned && st.phase != phaseParked && (f.own == nil || st.held && !st.releasing) {
			wanted++
			if st.phase == phaseOpen {
				open++
			}
		}
		switch st.phase {
		case phaseWaiting:
			if !st.at.After(now) {
				st.phase = phaseOpening
				st.sent = time.Time{}
				st.gen++ // whatever the old stream still says is void
				start[vb] = st.gen
			}
		case phaseOpening:
			if !st.sent.IsZero() && now.Sub(st.sent) >= f.opts.openTimeout {
				f.streams.Fail(f.ctx, vb, "stream request unanswered; sending it again", "vb", vb, "waited", now.Sub(st.sent))
				abandon = append(abandon, st.cancel)
				st.cancel = nil
				st.gen++
				st.closeFirst = true // in case the server answers it after all
				st.phase, st.at = phaseWaiting, now
				f.stats.Reopens++
				f.settleLocked(st)
			}
		}
	}
	if wanted == open {
		f.streams.Clear(f.ctx)
	}
	resolve := f.needResolve && !f.resolving && !f.resolveAt.After(now)
	if resolve {
		f.resolving = true
	}
	f.mu.Unlock()
	for _, cancel := range abandon {
		if cancel != nil {
			cancel() // outside f.mu: it may call the callback at once
		}
	}
	for vb, gen := range start {
		f.wg.Go(func() { f.open(vb, gen) })
	}
	if resolve {
		f.wg.Go(f.reresolve)
	}
	if len(abandon) > 0 {
		f.poke() // reopen them on the next pass, not a tick later
	}
}

// open opens vb's stream from its checkpoint, or from where the server
// said to roll back to (on the failover log entry that covers it: the log
// is read again until it can be, never guessed). gen is the generation
// the supervisor started it for: once another has begun (a handover, a
// void, a reopen), open does nothing, and no stream request goes out after
// a handover has closed the stream.
func (f *feed) open(vb uint16, gen int) {
	f.mu.Lock()
	st := f.state[vb]
	if st.gen != gen {
		f.mu.Unlock()
		return
	}
	rollback, closeFirst := st.rollbackTo, st.closeFirst
	f.mu.Unlock()

	if closeFirst {
		// A stream of ours may be open on the server (a request it
		// answered after we gave up on it, or a stream on the old
		// collections): a second request would be refused.
		ctx, cancel := context.WithTimeout(f.ctx, f.opts.opTimeout)
		if err := f.agent.CloseStream(ctx, vb); err != nil {
			f.log.Debug("close stream before reopening", "vb", vb, "error", err)
		}
		cancel()
	}
	var uuid uint64
	if rollback != nil {
		ctx, cancel := context.WithTimeout(f.ctx, f.opts.opTimeout)
		flog, err := f.agent.FailoverLog(ctx, vb)
		cancel()
		var ok bool
		if err == nil {
			uuid, ok = uuidAt(flog, *rollback)
			if !ok {
				// The server dropped the entries that cover it (it keeps
				// 25): from the start instead, where no uuid is needed and
				// the server never asks for a rollback again. More is
				// replayed; asking again would never end.
				if *rollback != 0 {
					f.log.Warn("no failover log entry covers the seqno the server rolls back to: streamed from the vBucket's beginning "+
						"(with --from-now, paid orders written before the start and not confirmed are sent)",
						"vb", vb, "seqno", *rollback)
				}
				zero := uint64(0)
				rollback, uuid = &zero, 0
			}
		}
		if err != nil {
			f.mu.Lock()
			if st.gen == gen && f.ctx.Err() == nil {
				st.failures++
				delay := min(f.opts.reopenDelay<<min(st.failures-1, 10), f.opts.backoffMax)
				st.phase, st.at = phaseWaiting, f.opts.now().Add(delay)
				f.streams.Fail(f.ctx, vb, "read failover log to roll back; trying again", "vb", vb, "error", err, "retry_in", delay)
			}
			f.mu.Unlock()
			return
		}
	}

	f.mu.Lock()
	if st.gen != gen || f.closed || f.isFailed() {
		f.mu.Unlock()
		return
	}
	var from position
	if rollback != nil {
		from = position{UUID: uuid, Seq: *rollback, SnapStart: *rollback, SnapEnd: *rollback}
	} else {
		from = f.positionAt(vb, f.acks.Checkpoint(vb))
	}
	st.failures, st.closeFirst, st.rollbackTo = 0, false, nil
	st.uuid, st.base, st.snaps = from.UUID, from, nil
	f.restartLocked(vb, st, from.Seq)
	st.sent = f.opts.now()
	ids := f.ids
	f.mu.Unlock()

	obs := &observer{f: f, vb: vb, gen: gen}
	// A handover closes the stream under st.op: the request goes out
	// before the close, or not at all.
	st.op.Lock()
	f.mu.Lock()
	current := st.gen == gen
	f.mu.Unlock()
	var cancel func()
	var err error
	if current {
		cancel, err = f.agent.OpenStream(vb, from, ids, obs, func(uuid uint64, err error) { f.opened(vb, gen, uuid, err) })
	}
	st.op.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if st.gen != gen || st.phase != phaseOpening {
		return // answered already, or given up on
	}
	if err != nil {
		f.retryLocked(vb, st, fmt.Errorf("open stream: %w", err))
		return
	}
	st.cancel = cancel
}

// uuidAt picks the failover log entry that covers seq.
func uuidAt(flog []gocbcore.FailoverEntry, seq uint64) (uint64, bool) {
	for _, e := range flog {
		if uint64(e.SeqNo) <= seq {
			return uint64(e.VbUUID), true
		}
	}
	return 0, false
}

// retryLocked reopens st's stream after the reopen delay.
func (f *feed) retryLocked(vb uint16, st *vbState, err error) {
	st.phase, st.at, st.cancel = phaseWaiting, f.opts.now().Add(f.opts.reopenDelay), nil
	f.stats.Reopens++
	f.settleLocked(st)
	f.streams.Fail(f.ctx, vb, "stream failed; reopening it", "vb", vb, "error", err, "reopen_in", f.opts.reopenDelay)
}

func (f *feed) opened(vb uint16, gen int, uuid uint64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.state[vb]
	if f.closed || gen != st.gen || st.phase != phaseOpening {
		return
	}
	st.cancel = nil
	var rb gocbcore.DCPRollbackError
	switch {
	case err == nil:
		st.phase = phaseOpen
		if uuid != 0 {
			st.uuid = uuid
		}
		f.settleLocked(st)
	case errors.As(err, &rb):
		seq := uint64(rb.SeqNo)
		st.rollbackTo = &seq
		st.phase, st.at = phaseWaiting, time.Time{}
		f.stats.Rollbacks++
		f.settleLocked(st)
		if seq == 0 && st.base.Seq > 0 {
			// The history past the checkpoint is gone on the server:
			// deletions purged (the feed was stopped longer than the
			// bucket's metadata purge interval), or the checkpoint's
			// branch dropped from the failover log (25 failovers since).
			f.log.Warn("the server rolls the stream back to the vBucket's beginning (deletions past the checkpoint were purged: "+
				"was the feed stopped longer than the bucket's metadata purge interval, 3 days by default? or its vBucket UUID "+
				"left the failover log): every change is read again; "+
				"confirmed orders are not sent again, but with --from-now paid orders written before the start and not confirmed are sent",
				"vb", vb, "from", st.base.Seq)
		} else {
			f.log.Warn("rollback", "vb", vb, "from", st.base.Seq, "to", seq)
		}
		f.poke()
	case errors.Is(err, gocbcore.ErrDocumentExists):
		// A stream of ours is open on vb already (a request we gave up
		// on was answered after all): close it, then open again.
		st.closeFirst = true
		f.retryLocked(vb, st, err)
	case errors.Is(err, gocbcore.ErrCollectionNotFound), errors.Is(err, gocbcore.ErrScopeNotFound):
		st.phase = phaseParked
		f.needResolve = true
		f.settleLocked(st)
		f.log.Warn("a watched collection is unknown to the server; reading the collections again", "vb", vb, "error", err)
		f.poke()
	case errors.Is(err, gocbcore.ErrAuthenticationFailure):
		f.failLocked(fmt.Errorf("feed %s: the server refused the stream of vBucket %d "+
			"(the user needs Data DCP Reader on the bucket, or Application Access on Community Edition): %w", f.name, vb, err))
	default:
		f.retryLocked(vb, st, err)
	}
}

// current says whether a callback belongs to vb's live stream; callers hold f.mu.
func (f *feed) current(vb uint16, gen int) bool {
	st := f.state[vb]
	return !f.closed && st != nil && st.gen == gen && st.phase == phaseOpen
}

func (f *feed) snapshotMarker(vb uint16, gen int, start, end uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current(vb, gen) {
		st := f.state[vb]
		st.snaps = append(st.snaps, snapshot{start, end})
		st.high = max(st.high, end)
	}
}

// change hands a mutation, deletion or expiration to Next. It blocks while
// the watcher is behind: that is the flow control.
func (f *feed) change(vb uint16, gen int, collID uint32, key, value []byte, deleted bool, cas, seq uint64) {
	f.mu.Lock()
	if !f.current(vb, gen) {
		f.mu.Unlock()
		return
	}
	if f.own != nil && !f.own.validLocked(f.opts.now()) {
		// Our heartbeat may have expired (this process was paused): another
		// member may own vb by now. Hand nothing out until the next
		// heartbeat says what is still ours (fence).
		f.voidLocked(vb)
		f.mu.Unlock()
		return
	}
	coll, ok := f.colls[collID]
	if !ok { // not filtered out by the server: not ours either
		f.acks.Skip(vb, seq)
		f.mu.Unlock()
		return
	}
	st := f.state[vb]
	if st.locusOf != gen+1 { // once a stream: a stream moves with its vBucket
		st.locus, st.locusOf = f.agent.ServerOf(vb), gen+1
	}
	ev := store.Event{Collection: coll, Key: string(key), Deleted: deleted, CAS: cas, Partition: vb, Locus: st.locus, Seq: seq}
	if !deleted {
		ev.Value = append([]byte(nil), value...) // gocbcore reuses its buffers
	}
	// Deliver under f.mu, so that a reopen cannot slip between the
	// generation check and the delivery.
	ev.Ack = f.acks.Deliver(vb, seq)
	p := pending{ev, st, gen, st.restarts}
	f.mu.Unlock()
	// A node the watcher holds back (its keys' reads and writes went
	// unanswered): its changes wait here, in their stream, and not among
	// the watcher's, whose read-ahead they would fill while the other
	// nodes' waited behind them. One voided meanwhile is dropped by Next,
	// as any.
	if f.opts.locusHeld != nil && f.opts.locusHeld(ev.Locus) {
		t := time.NewTicker(f.opts.heldPoll)
		for f.opts.locusHeld(ev.Locus) {
			select {
			case <-t.C:
			case <-f.ctx.Done():
				t.Stop()
				return // closed
			}
		}
		t.Stop()
	}
	// The values read ahead are bounded in bytes too: 256 documents of
	// Couchbase's 20 MiB would be 5 GiB. Waiting here, the stream waits
	// (DCP flow control: its buffer is acknowledged once this returns).
	if f.room.Acquire(f.ctx, f.weight(p)) != nil {
		return // closed
	}
	select {
	case f.events <- p:
	case <-f.ctx.Done():
		f.room.Release(f.weight(p))
	}
}

// weight is what p holds of the read-ahead's bytes: its value's length
// (and a little for the event itself), never more than the whole.
func (f *feed) weight(p pending) int64 {
	return min(int64(len(p.ev.Value)+len(p.ev.Key)+64), f.opts.bufferBytes)
}

// restartLocked starts vb's acknowledgements again at seq, for a stream
// opened from there (a claim, a reopen, a rollback). The events of the
// streams before it are void: those still on their way to Next are
// dropped there, and those already handed out are acknowledged into the
// void; the new stream delivers them again.
func (f *feed) restartLocked(vb uint16, st *vbState, seq uint64) {
	f.acks.Reset(vb, seq)
	st.void, st.dropped = st.gen, 0
	st.restarts++
}

// inFlight is how many events of vb were handed out by Next and not
// acknowledged yet, or are on their way to it and will be.
func (f *feed) inFlight(vb uint16) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acks.Outstanding(vb) - f.state[vb].dropped
}

// skip moves vb past seq, a change that is not ours (a system event, or
// SeqNoAdvanced for changes filtered out).
func (f *feed) skip(vb uint16, gen int, seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current(vb, gen) {
		f.acks.Skip(vb, seq)
	}
}

// collectionDropped reads the collections again when a watched one is
// dropped: gone for good, the feed fails; created again, the streams
// restart on its new ID. Meanwhile the stream stops at the drop: what it
// would say after it (changes of a new collection of that name, filtered
// out) must not move its checkpoint.
func (f *feed) collectionDropped(vb uint16, gen int, collID uint32, seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.current(vb, gen) {
		return
	}
	f.acks.Skip(vb, seq)
	name, ours := f.colls[collID]
	if !ours {
		return
	}
	st := f.state[vb]
	st.phase, st.closeFirst = phaseParked, true
	st.gen++
	if !f.needResolve {
		f.log.Warn("a watched collection was dropped; reading the collections again", "collection", name)
		f.needResolve = true
		f.poke()
	}
}

func (f *feed) ended(vb uint16, gen int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.current(vb, gen) {
		return
	}
	st := f.state[vb]
	switch {
	case errors.Is(err, gocbcore.ErrDCPStreamFilterEmpty):
		st.phase = phaseParked
		f.needResolve = true
		f.log.Warn("every collection of the stream was dropped; reading the collections again", "vb", vb)
		f.poke()
	case err != nil && strings.HasPrefix(err.Error(), "unknown stream close reason (8)"):
		// kv_engine's "lost privileges", which gocbcore has no name for.
		f.failLocked(fmt.Errorf("feed %s: the server ended the stream of vBucket %d because the user lost its rights "+
			"(Data DCP Reader on the bucket, or Application Access on Community Edition)", f.name, vb))
	default:
		if err == nil {
			err = errors.New("ended")
		}
		f.retryLocked(vb, st, fmt.Errorf("stream ended; reopening from the checkpoint: %w", err))
	}
}

// reresolve reads the collection IDs again after a watched collection was
// dropped or a stream was refused for an unknown one.
func (f *feed) reresolve() {
	var colls map[uint32]string
	err := errors.New("no way to read the collections again")
	if f.resolve != nil {
		ctx, cancel := context.WithTimeout(f.ctx, 3*f.opts.opTimeout)
		colls, err = f.resolve(ctx)
		cancel()
	}
	var abandon []func()
	defer func() {
		for _, cancel := range abandon {
			cancel() // outside f.mu: it may call the callback at once
		}
	}()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resolving = false
	switch {
	case f.closed || f.ctx.Err() != nil:
	case f.resolve == nil || errors.Is(err, gocbcore.ErrCollectionNotFound) || errors.Is(err, gocbcore.ErrScopeNotFound):
		f.failLocked(fmt.Errorf("feed %s: a watched collection is gone (run ordermail setup, then restart): %w", f.name, err))
	case err != nil:
		f.resolveAt = f.opts.now().Add(f.opts.reopenDelay)
		f.log.Warn("read collections", "error", err, "retry_in", f.opts.reopenDelay)
	default:
		f.needResolve = false
		changed := !sameCollections(colls, f.colls)
		if changed {
			f.log.Warn("watched collections were created again; restarting the streams on them", "collections", colls)
			f.setCollections(colls)
		}
		now := f.opts.now()
		for _, st := range f.state {
			// A vBucket this member does not own (membership mode) stays
			// unstreamed: its owner opens it on the new collections.
			if st.phase == phaseParked || (changed && st.phase != phaseWaiting && st.phase != phaseUnowned) {
				if st.phase == phaseOpening && st.cancel != nil {
					abandon = append(abandon, st.cancel)
				}
				st.closeFirst = st.closeFirst || st.phase != phaseParked
				st.phase, st.at, st.cancel = phaseWaiting, now, nil
				st.gen++
				f.stats.Reopens++
			}
		}
		f.poke()
	}
}

func sameCollections(a, b map[uint32]string) bool {
	if len(a) != len(b) {
		return false
	}
	for id, name := range a {
		if b[id] != name {
			return false
		}
	}
	return true
}

// trimSnaps keeps of a vBucket's snapshot markers (oldest first) those a
// checkpoint can still be in: for each sequence number it may yet rest on
// (ends, increasing; AckTracker.Ends), the last marker starting at or
// below it, which positionAt takes; and every marker starting above the
// last of them, the changes still to come.
func trimSnaps(snaps []snapshot, ends []uint64) []snapshot {
	if len(ends) == 0 {
		return snaps
	}
	out := snaps[:0]
	j := 0
	for i, s := range snaps {
		if s.start > ends[len(ends)-1] {
			return append(out, snaps[i:]...)
		}
		next := uint64(math.MaxUint64)
		if i+1 < len(snaps) {
			next = snaps[i+1].start
		}
		for j < len(ends) && ends[j] < s.start {
			j++
		}
		if j < len(ends) && ends[j] < next { // s is where ends[j] is
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil
	}
	if cap(out) > 64 && len(out) < cap(out)/4 {
		return slices.Clone(out) // the array of a long stall goes
	}
	return out
}

// positionAt is the resume position for vb once everything up to seq is
// done; callers hold f.mu.
func (f *feed) positionAt(vb uint16, seq uint64) position {
	st := f.state[vb]
	if seq == st.base.Seq {
		p := st.base
		if st.uuid != 0 {
			p.UUID = st.uuid // after a rollback, the branch the stream runs on
		}
		return p
	}
	snap := snapshot{st.base.SnapStart, st.base.SnapEnd}
	for _, s := range st.snaps {
		if s.start <= seq {
			snap = s
		}
	}
	return position{UUID: st.uuid, Seq: seq, SnapStart: snap.start, SnapEnd: max(snap.end, seq)}
}

// saveLoop saves the checkpoints that moved every flushEvery. A pass does
// not wait for the one before: a write that hangs (its node hung) holds up
// its own vBucket's checkpoint alone, not the saves of the others, which
// the next passes make; the vBuckets whose writes are under way are left
// out of them (feed.saving).
func (f *feed) saveLoop() {
	var passes sync.WaitGroup
	defer passes.Wait() // Close saves again once they are over
	f.every(f.opts.flushEvery, func() {
		passes.Go(func() {
			_, _ = f.save(f.ctx, nil) // each vBucket's failure is said by f.saves

		})
	})
}

// every calls fn every d until the feed ends.
func (f *feed) every(d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

// flush saves every checkpoint that moved (sequence number, snapshot or
// UUID), all of them even when some fail, and forgets the snapshots below
// the saved ones.
func (f *feed) flush(ctx context.Context) error {
	_, err := f.save(ctx, nil)
	return err
}

// save is flush; with force, it writes the checkpoints of those vBuckets
// this member owns, moved or not (fence: a write by our last CAS says
// whether it is still ours). It returns the vBuckets it saved. Each write's
// outcome is taken as it comes (what was saved, the claim it leaves), not
// once every write of the pass is done: a pass with a write that hangs
// would hold the others' outcomes, and a later pass would write them again
// by a claim already spent. A periodic pass (no force) leaves out the
// vBuckets whose writes another pass has under way.
func (f *feed) save(ctx context.Context, force map[uint16]bool) ([]uint16, error) {
	f.mu.Lock()
	var vbs []uint16
	for vb, st := range f.state {
		// Only the snapshots a position to come can be in are kept: while
		// saves fail, or behind an event never acknowledged (a key the
		// store does not answer for), they would pile up, one a marker,
		// and be looked through at each save. The first end is the
		// checkpoint, read with them.
		ends := f.acks.Ends(vb)
		st.snaps = trimSnaps(st.snaps, ends)
		if f.own != nil && (!st.held || st.releasing) {
			if !st.held {
				f.saves.Mended(f.ctx, vb) // not ours to save: a failure of its saves is over
			} // being handed over: ours until it is, and perhaps kept (readyToRelease)
			continue
		}
		if force != nil {
			if force[vb] {
				vbs = append(vbs, vb)
			}
		} else if p := f.positionAt(vb, ends[0]); p != f.saved[vb] && !f.saving[vb] {
			vbs = append(vbs, vb)
			f.saving[vb] = true
		}
	}
	f.mu.Unlock()
	if len(vbs) == 0 {
		return nil, nil
	}
	stopping := func() bool { return ctx == f.ctx && f.ctx.Err() != nil } // the saver, cut short by Close: Close saves again
	var mu sync.Mutex                                                     // guards saved
	var saved []uint16
	lost := 0 // guarded by f.mu
	errs := parallel(ctx, vbs, func(ctx context.Context, vb uint16) (err error) {
		releasing := false // being handed over, still ours: its failure is not over
		defer func() {
			if err == nil && !releasing { // saved, or not ours to save: a failure of its saves is over
				f.saves.Mended(ctx, vb)
			}
		}()
		if force == nil {
			defer func() {
				f.mu.Lock()
				delete(f.saving, vb)
				f.mu.Unlock()
			}()
		}
		ctx, cancel := context.WithTimeout(ctx, f.opts.opTimeout)
		defer cancel()
		if f.own != nil {
			// A handover's checkpoint write and ours must not cross: each
			// is by the CAS of the other's.
			unlock, err := f.own.lockSaves(ctx, vb)
			if err != nil {
				if !stopping() {
					f.saves.Fail(ctx, vb, "save a checkpoint: wait for a handover's write", "vb", vb, "error", err)
				}
				return err
			}
			defer unlock()
		}
		// Read under f.mu, as open's rollback resets them under it: read
		// before, a checkpoint past the rollback point would be saved on
		// the new branch.
		f.mu.Lock()
		st := f.state[vb]
		p, was := f.positionAt(vb, f.acks.Checkpoint(vb)), st.claim
		handedOver := f.own != nil && (!st.held || st.releasing)
		releasing = handedOver && st.held
		f.mu.Unlock()
		if handedOver { // while this waited for the handover's write
			return nil // not ours to save
		}
		var c claim
		if f.own == nil {
			err = f.cps.Save(ctx, f.name, vb, p)
		} else {
			c, err = f.own.cps.SaveOwned(ctx, f.name, vb, f.own.me, p, was)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		switch {
		case errors.Is(err, errFenced):
			// Lost at once, unless claimed again meanwhile: while it waited
			// for the pass's slowest write, its stream went on handing out
			// another member's events, and the next passes wrote again by
			// the spent claim.
			if st := f.state[vb]; st.held && st.claim == was {
				f.dropLocked([]uint16{vb}) // at once; said once for the pass, below
				lost++
			}
			return nil // not a failure: not ours to save
		case err != nil:
			if !stopping() {
				f.stats.CheckpointSaveFailures++
				f.saves.Fail(ctx, vb, "save a checkpoint", "vb", vb, "error", err)
			}
			return err
		}
		f.saved[vb] = p
		if st := f.state[vb]; f.own != nil && st.claim == was {
			st.claim = c
		}
		mu.Lock()
		saved = append(saved, vb)
		mu.Unlock()
		return nil
	})
	f.mu.Lock()
	if lost > 0 {
		f.log.Warn("lost vBuckets to another member", "vbuckets", lost, "why", "their checkpoint writes were refused: another member claimed them")
	}
	f.mu.Unlock()
	if err := joinErrs(errs, len(vbs)); err != nil {
		return saved, fmt.Errorf("save checkpoints of %s: %w", f.name, err)
	}
	return saved, nil
}

// highsLoop reads the vBuckets' high seqnos now and then, for the lag.
func (f *feed) highsLoop() {
	f.every(f.opts.statsEvery, func() {
		if err := f.readHighs(f.ctx); err != nil && f.ctx.Err() == nil {
			f.log.Debug("read high seqnos", "error", err)
		}
	})
}

// readHighs reads how far the watched collections go on the vBuckets
// this feed streams. Not the vBuckets' own high seqnos: the attempt
// records the watcher writes after every outcome, and the other
// collections' bulk writes, would count as lag for good.
func (f *feed) readHighs(ctx context.Context) error {
	vbs := f.vbs
	if f.own != nil {
		vbs = f.heldVbuckets()
		if len(vbs) == 0 {
			return nil
		}
	}
	f.mu.Lock()
	ids := f.ids
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, f.opts.opTimeout)
	highs, err := f.agent.CollectionHighSeqnos(ctx, vbs, ids)
	cancel()
	if err != nil {
		return err
	}
	f.mu.Lock()
	for vb, h := range highs {
		if st := f.state[vb]; st != nil {
			st.high = max(st.high, h)
		}
	}
	f.mu.Unlock()
	return nil
}

// Stats reports the streams, the lag and the counters.
func (f *feed) Stats() FeedStats {
	cps := f.acks.Checkpoints()
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	if f.own != nil {
		s.Member, s.Members = f.own.me, f.own.doc.members(f.opts.now())
		s.Aside = f.own.doc.Members[f.own.me].Aside
	}
	for vb, st := range f.state {
		if st.phase == phaseOpen {
			s.StreamsOpen++
		}
		if f.own != nil && !st.held {
			continue
		}
		if cp := cps[vb]; st.high > cp {
			lag := st.high - cp
			s.Lag += lag
			s.MaxLag = max(s.MaxLag, lag)
		}
	}
	return s
}

// FeedStats is Stats in the store's terms, for the metrics.
func (f *feed) FeedStats() store.FeedStats {
	st := f.Stats()
	out := store.FeedStats{Partitions: st.VBuckets, StreamsOpen: st.StreamsOpen, Lag: st.Lag, MaxLag: st.MaxLag,
		Rollbacks: st.Rollbacks, Reopens: st.Reopens, CheckpointSaveFailures: st.CheckpointSaveFailures,
		Member: st.Member, Claimed: st.Claimed, Released: st.Released, Fenced: st.Fenced, Aside: st.Aside}
	for _, m := range st.Members {
		out.Members = append(out.Members, m.store())
	}
	return out
}

func (f *feed) Next(ctx context.Context) (store.Event, error) {
	for {
		p, err := f.receive(ctx)
		if err != nil {
			return store.Event{}, err
		}
		if f.handOut(p) {
			return p.ev, nil
		}
		// Its stream became void after it was read (a fence, a reopen, a
		// handover): it comes again from the checkpoint, here or at the
		// vBucket's new owner. Never acknowledged, it holds the checkpoint
		// below it.
	}
}

// handOut says whether p may be handed out: its stream is not void, and
// (membership mode) this process cannot have been paused past its TTL
// since the heartbeat loop last ran; if it may have, p's stream is voided
// as change does, until the next heartbeat says what is still ours.
func (f *feed) handOut(p pending) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false // received as Close began: Next says closed
	}
	st := p.st
	if p.gen >= st.void && f.own != nil && !f.own.validLocked(f.opts.now()) {
		if st.held {
			// Being handed over too: another member may have claimed it
			// while we were paused. A release under way goes on (its
			// checkpoint write, by our claim, says whether it is still
			// ours); one that cannot leaves it suspect, to be checked.
			f.voidLocked(p.ev.Partition)
		} else {
			st.void = st.gen
		}
	}
	if p.gen >= st.void {
		return true
	}
	if p.restarts == st.restarts { // counted against the acknowledgements it is in
		st.dropped++
	}
	return false
}

func (f *feed) receive(ctx context.Context) (pending, error) {
	if f.ctx.Err() != nil {
		// Closed: what is still queued was read but never handed out, and
		// its acknowledgement would come after Close saved the checkpoints
		// and handed the vBuckets over; their next reader has it again.
		return pending{}, store.ErrClosed
	}
	select {
	case p := <-f.events:
		f.room.Release(f.weight(p))
		return p, nil
	default:
	}
	select {
	case p := <-f.events:
		f.room.Release(f.weight(p))
		return p, nil
	case <-ctx.Done():
		return pending{}, ctx.Err()
	case <-f.failed:
		return pending{}, f.err
	case <-f.ctx.Done():
		return pending{}, store.ErrClosed
	}
}

// Close saves what was acknowledged, then closes the DCP connections,
// which ends every stream at once: it waits on no stream (or node) in
// particular, and gives up saving when ctx ends.
func (f *feed) Close(ctx context.Context) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.mu.Unlock()
	defer f.endHandover()
	defer context.AfterFunc(ctx, f.endHandover)()
	f.stop()
	f.wg.Wait()
	err := f.flush(ctx)
	if f.own == nil {
		return errors.Join(err, f.agent.Close())
	}
	f.own.group.forget(f.name)
	// Hand every vBucket over at once instead of after our TTL, and say
	// we left only once our streams are gone with the connections.
	err = errors.Join(err, f.handOverAll(ctx), f.agent.Close())
	return errors.Join(err, f.leave(ctx))
}

// Crash stops the feed as the death of its process would: nothing is
// saved, nothing handed over, the connections are dropped. Tests use it.
func (f *feed) Crash() {
	if f.own != nil {
		f.own.group.forget(f.name)
	}
	f.shutdown()
}

// shutdown stops the goroutines and the connections without saving.
func (f *feed) shutdown() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.stop()
	f.endHandover()
	f.wg.Wait()
	if err := f.agent.Close(); err != nil {
		f.log.Debug("close dcp agent", "error", err)
	}
}

// observer receives one stream incarnation's callbacks.
type observer struct {
	f   *feed
	vb  uint16
	gen int
}

func (o *observer) SnapshotMarker(m gocbcore.DcpSnapshotMarker) {
	o.f.snapshotMarker(o.vb, o.gen, m.StartSeqNo, m.EndSeqNo)
}

func (o *observer) Mutation(m gocbcore.DcpMutation) {
	o.f.change(o.vb, o.gen, m.CollectionID, m.Key, m.Value, false, m.Cas, m.SeqNo)
}

func (o *observer) Deletion(d gocbcore.DcpDeletion) {
	o.f.change(o.vb, o.gen, d.CollectionID, d.Key, nil, true, d.Cas, d.SeqNo)
}

func (o *observer) Expiration(e gocbcore.DcpExpiration) {
	o.f.change(o.vb, o.gen, e.CollectionID, e.Key, nil, true, e.Cas, e.SeqNo)
}

func (o *observer) End(_ gocbcore.DcpStreamEnd, err error) { o.f.ended(o.vb, o.gen, err) }

func (o *observer) SeqNoAdvanced(s gocbcore.DcpSeqNoAdvanced) { o.f.skip(o.vb, o.gen, s.SeqNo) }

func (o *observer) CreateCollection(c gocbcore.DcpCollectionCreation) { o.f.skip(o.vb, o.gen, c.SeqNo) }

func (o *observer) DeleteCollection(d gocbcore.DcpCollectionDeletion) {
	o.f.collectionDropped(o.vb, o.gen, d.CollectionID, d.SeqNo)
}

func (o *observer) FlushCollection(c gocbcore.DcpCollectionFlush) { o.f.skip(o.vb, o.gen, c.SeqNo) }

func (o *observer) CreateScope(c gocbcore.DcpScopeCreation) { o.f.skip(o.vb, o.gen, c.SeqNo) }

func (o *observer) DeleteScope(d gocbcore.DcpScopeDeletion) { o.f.skip(o.vb, o.gen, d.SeqNo) }

func (o *observer) ModifyCollection(m gocbcore.DcpCollectionModification) {
	o.f.skip(o.vb, o.gen, m.SeqNo)
}

func (o *observer) OSOSnapshot(gocbcore.DcpOSOSnapshot) {} // OSO backfill is not asked for
