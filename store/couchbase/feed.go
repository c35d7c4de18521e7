package couchbase

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/couchbase/gocbcore/v10"
	"github.com/ordermail/ordermail/store"
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
// real one; the tests drive a fake and call the observers themselves.
type dcpAgent interface {
	// OpenStream asks for vb's changes in collectionIDs from `from` on; cb
	// gets the vBucket's current UUID or the error (a DCPRollbackError).
	OpenStream(vb uint16, from position, collectionIDs []uint32, obs gocbcore.StreamObserver, cb func(uuid uint64, err error)) error
	CloseStream(vb uint16) error
	// FailoverLog is vb's failover log, newest entry first.
	FailoverLog(vb uint16) ([]gocbcore.FailoverEntry, error)
	// HighSeqnos is where every active vBucket is now.
	HighSeqnos() (map[uint16]position, error)
	Close() error
}

// checkpointStore keeps positions per feed name and vBucket.
type checkpointStore interface {
	Load(ctx context.Context, name string, vbs []uint16) (map[uint16]position, error)
	Save(ctx context.Context, name string, positions map[uint16]position) error
}

type snapshot struct{ start, end uint64 }

// vbState is one vBucket's current stream.
type vbState struct {
	gen        int        // stream incarnation; callbacks of older ones are dropped
	uuid       uint64     // the vBucket UUID the stream runs on
	base       position   // where the stream started
	snaps      []snapshot // snapshot markers since base, oldest first
	rollbackTo *uint64    // the server asked to restart from here
}

// feedOptions tune the feed; zero values are the defaults.
type feedOptions struct {
	buffer      int           // events read ahead of the watcher; default 256
	flushEvery  time.Duration // checkpoint save interval; default 1s
	reopenDelay time.Duration // wait before reopening an ended stream; default 1s
	tick        time.Duration // supervisor resolution; default 100ms
}

// feed is a store.Subscription over DCP streams on a set of vBuckets.
// gocbcore calls the observers on its DCP goroutine and acknowledges the
// server's flow-control buffer when a callback returns, so a callback that
// blocks because the watcher is behind slows the server down instead of
// making it drop the stream.
type feed struct {
	agent dcpAgent
	cps   checkpointStore
	name  string
	colls map[uint32]string
	ids   []uint32
	vbs   []uint16
	opts  feedOptions
	log   *slog.Logger

	acks   *store.AckTracker
	events chan store.Event
	done   chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex
	state   map[uint16]*vbState
	saved   map[uint16]position  // last saved checkpoint
	reopen  map[uint16]time.Time // streams to open again, and when
	flushed time.Time
	closed  bool
}

// newFeed loads the checkpoints of vbs, opens their streams and starts the
// supervisor that reopens ended streams and saves checkpoints.
func newFeed(ctx context.Context, agent dcpAgent, cps checkpointStore, name string, colls map[uint32]string,
	vbs []uint16, fromNow bool, opts feedOptions, log *slog.Logger) (*feed, error) {
	if opts.buffer == 0 {
		opts.buffer = 256
	}
	if opts.flushEvery == 0 {
		opts.flushEvery = time.Second
	}
	if opts.reopenDelay == 0 {
		opts.reopenDelay = time.Second
	}
	if opts.tick == 0 {
		opts.tick = 100 * time.Millisecond
	}
	saved, err := cps.Load(ctx, name, vbs)
	if err != nil {
		return nil, fmt.Errorf("load checkpoints of %s: %w", name, err)
	}
	if fromNow && len(saved) < len(vbs) {
		highs, err := agent.HighSeqnos()
		if err != nil {
			return nil, fmt.Errorf("feed %s from now: %w", name, err)
		}
		for _, vb := range vbs {
			if _, ok := saved[vb]; !ok {
				saved[vb] = highs[vb]
			}
		}
	}
	f := &feed{
		agent: agent, cps: cps, name: name, colls: colls, vbs: vbs, opts: opts,
		log:    log.With("component", "dcp", "feed", name),
		acks:   store.NewAckTracker(nil),
		events: make(chan store.Event, opts.buffer),
		done:   make(chan struct{}),
		state:  map[uint16]*vbState{},
		saved:  map[uint16]position{},
		reopen: map[uint16]time.Time{},
	}
	for id := range colls {
		f.ids = append(f.ids, id)
	}
	sort.Slice(f.ids, func(i, j int) bool { return f.ids[i] < f.ids[j] })
	for _, vb := range vbs {
		p := saved[vb]
		f.saved[vb] = p
		f.state[vb] = &vbState{uuid: p.UUID, base: p}
		f.acks.Reset(vb, p.Seq)
	}
	for _, vb := range vbs {
		f.open(vb)
	}
	f.wg.Add(1)
	go f.supervise()
	return f, nil
}

// open (re)opens vb's stream from its committed checkpoint, or from where
// the server said to roll back to.
func (f *feed) open(vb uint16) {
	f.mu.Lock()
	st := f.state[vb]
	rollback := st.rollbackTo
	st.rollbackTo = nil
	f.mu.Unlock()

	var uuid uint64
	if rollback != nil {
		uuid = f.uuidAt(vb, *rollback)
	}

	f.mu.Lock()
	var from position
	if rollback != nil {
		from = position{UUID: uuid, Seq: *rollback, SnapStart: *rollback, SnapEnd: *rollback}
	} else {
		from = f.positionAt(vb, f.acks.Checkpoints()[vb])
	}
	st.gen++
	gen := st.gen
	st.uuid, st.base, st.snaps = from.UUID, from, nil
	// Events of the old stream still in flight are acknowledged into the
	// void: the new stream delivers them again.
	f.acks.Reset(vb, from.Seq)
	delete(f.reopen, vb)
	f.mu.Unlock()

	obs := &observer{f: f, vb: vb, gen: gen}
	err := f.agent.OpenStream(vb, from, f.ids, obs, func(uuid uint64, err error) { f.opened(vb, gen, uuid, err) })
	if err != nil {
		f.retryLater(vb, gen, fmt.Errorf("open stream: %w", err))
	}
}

// uuidAt picks the failover log entry that covers seq.
func (f *feed) uuidAt(vb uint16, seq uint64) uint64 {
	log, err := f.agent.FailoverLog(vb)
	if err != nil {
		f.log.Warn("failover log", "vb", vb, "error", err)
		return 0 // the server answers with a rollback to 0 if it must
	}
	for _, e := range log {
		if uint64(e.SeqNo) <= seq {
			return uint64(e.VbUUID)
		}
	}
	return 0
}

func (f *feed) opened(vb uint16, gen int, uuid uint64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.state[vb]
	if f.closed || gen != st.gen {
		return
	}
	var rb gocbcore.DCPRollbackError
	switch {
	case err == nil:
		st.uuid = uuid
	case errors.As(err, &rb):
		seq := uint64(rb.SeqNo)
		st.rollbackTo = &seq
		f.reopen[vb] = time.Time{} // at once
		f.log.Warn("rollback", "vb", vb, "from", st.base.Seq, "to", seq)
	default:
		f.reopen[vb] = time.Now().Add(f.opts.reopenDelay)
		f.log.Warn("open stream", "vb", vb, "error", err, "retry_in", f.opts.reopenDelay)
	}
}

func (f *feed) retryLater(vb uint16, gen int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || gen != f.state[vb].gen {
		return
	}
	f.reopen[vb] = time.Now().Add(f.opts.reopenDelay)
	f.log.Warn("stream", "vb", vb, "error", err, "reopen_in", f.opts.reopenDelay)
}

// current says whether a callback belongs to vb's live stream; callers hold f.mu.
func (f *feed) current(vb uint16, gen int) bool {
	return !f.closed && f.state[vb] != nil && f.state[vb].gen == gen
}

func (f *feed) snapshotMarker(vb uint16, gen int, start, end uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current(vb, gen) {
		st := f.state[vb]
		st.snaps = append(st.snaps, snapshot{start, end})
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
	coll, ok := f.colls[collID]
	if !ok { // not filtered out by the server: not ours either
		f.acks.Skip(vb, seq)
		f.mu.Unlock()
		return
	}
	ev := store.Event{Collection: coll, Key: string(key), Deleted: deleted, CAS: cas, Partition: vb, Seq: seq}
	if !deleted {
		ev.Value = append([]byte(nil), value...) // gocbcore reuses its buffers
	}
	// Deliver under f.mu, so that a reopen cannot slip between the
	// generation check and the delivery.
	ev.Ack = f.acks.Deliver(vb, seq)
	f.mu.Unlock()
	select {
	case f.events <- ev:
	case <-f.done:
	}
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

func (f *feed) ended(vb uint16, gen int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.current(vb, gen) {
		return
	}
	f.reopen[vb] = time.Now().Add(f.opts.reopenDelay)
	f.log.Warn("stream ended; reopening from the checkpoint", "vb", vb, "error", err, "reopen_in", f.opts.reopenDelay)
}

// positionAt is the resume position for vb once everything up to seq is
// done; callers hold f.mu.
func (f *feed) positionAt(vb uint16, seq uint64) position {
	st := f.state[vb]
	if seq == st.base.Seq {
		return st.base
	}
	snap := snapshot{st.base.SnapStart, st.base.SnapEnd}
	for _, s := range st.snaps {
		if s.start <= seq {
			snap = s
		}
	}
	return position{UUID: st.uuid, Seq: seq, SnapStart: snap.start, SnapEnd: max(snap.end, seq)}
}

func (f *feed) supervise() {
	defer f.wg.Done()
	t := time.NewTicker(f.opts.tick)
	defer t.Stop()
	for {
		select {
		case <-f.done:
			return
		case now := <-t.C:
			f.mu.Lock()
			var due []uint16
			for vb, at := range f.reopen {
				if !at.After(now) {
					due = append(due, vb)
				}
			}
			flush := now.Sub(f.flushed) >= f.opts.flushEvery
			f.mu.Unlock()
			for _, vb := range due {
				f.open(vb)
			}
			if flush {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := f.flush(ctx); err != nil {
					f.log.Warn("save checkpoints", "error", err)
				}
				cancel()
			}
		}
	}
}

// flush saves the checkpoints that moved, and forgets snapshots below them.
func (f *feed) flush(ctx context.Context) error {
	cps := f.acks.Checkpoints()
	f.mu.Lock()
	f.flushed = time.Now()
	changed := map[uint16]position{}
	for vb, seq := range cps {
		if _, ours := f.state[vb]; ours && seq != f.saved[vb].Seq {
			changed[vb] = f.positionAt(vb, seq)
		}
	}
	f.mu.Unlock()
	if len(changed) == 0 {
		return nil
	}
	if err := f.cps.Save(ctx, f.name, changed); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for vb, p := range changed {
		f.saved[vb] = p
		st := f.state[vb]
		for len(st.snaps) > 1 && st.snaps[1].start <= p.Seq {
			st.snaps = st.snaps[1:]
		}
	}
	return nil
}

func (f *feed) Next(ctx context.Context) (store.Event, error) {
	select {
	case ev := <-f.events:
		return ev, nil
	case <-ctx.Done():
		return store.Event{}, ctx.Err()
	case <-f.done:
		return store.Event{}, store.ErrClosed
	}
}

// Close stops the streams and saves what was acknowledged.
func (f *feed) Close(ctx context.Context) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.mu.Unlock()
	close(f.done)
	f.wg.Wait()
	for _, vb := range f.vbs {
		if err := f.agent.CloseStream(vb); err != nil {
			f.log.Debug("close stream", "vb", vb, "error", err)
		}
	}
	return errors.Join(f.flush(ctx), f.agent.Close())
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
	if name, ours := o.f.colls[d.CollectionID]; ours {
		o.f.log.Error("a watched collection was dropped; run ordermail setup and restart", "collection", name)
	}
	o.f.skip(o.vb, o.gen, d.SeqNo)
}

func (o *observer) FlushCollection(c gocbcore.DcpCollectionFlush) { o.f.skip(o.vb, o.gen, c.SeqNo) }

func (o *observer) CreateScope(c gocbcore.DcpScopeCreation) { o.f.skip(o.vb, o.gen, c.SeqNo) }

func (o *observer) DeleteScope(d gocbcore.DcpScopeDeletion) { o.f.skip(o.vb, o.gen, d.SeqNo) }

func (o *observer) ModifyCollection(m gocbcore.DcpCollectionModification) {
	o.f.skip(o.vb, o.gen, m.SeqNo)
}

func (o *observer) OSOSnapshot(gocbcore.DcpOSOSnapshot) {} // OSO backfill is not asked for
