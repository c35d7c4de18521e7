package cbtest

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/couchbase/gocbcore/v10"
	"github.com/couchbase/gocbcore/v10/memd"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dcpEvent is one observer callback.
type dcpEvent struct {
	kind       string // marker, mutation, deletion, expiration, seqadv, end, createColl, dropColl, createScope, dropScope
	vb         uint16
	seqno      uint64
	start, end uint64 // marker
	key        string
	cid        uint32
	value      []byte
	err        error
}

// recorder is a StreamObserver that forwards every callback to events.
type recorder struct{ events chan dcpEvent }

func newRecorder() *recorder { return &recorder{events: make(chan dcpEvent, 1<<16)} }

func (r *recorder) SnapshotMarker(m gocbcore.DcpSnapshotMarker) {
	r.events <- dcpEvent{kind: "marker", vb: m.VbID, start: m.StartSeqNo, end: m.EndSeqNo}
}
func (r *recorder) Mutation(m gocbcore.DcpMutation) {
	r.events <- dcpEvent{kind: "mutation", vb: m.VbID, seqno: m.SeqNo, key: string(m.Key), cid: m.CollectionID, value: m.Value}
}
func (r *recorder) Deletion(m gocbcore.DcpDeletion) {
	r.events <- dcpEvent{kind: "deletion", vb: m.VbID, seqno: m.SeqNo, key: string(m.Key), cid: m.CollectionID}
}
func (r *recorder) Expiration(m gocbcore.DcpExpiration) {
	r.events <- dcpEvent{kind: "expiration", vb: m.VbID, seqno: m.SeqNo, key: string(m.Key), cid: m.CollectionID}
}
func (r *recorder) End(e gocbcore.DcpStreamEnd, err error) {
	r.events <- dcpEvent{kind: "end", vb: e.VbID, err: err}
}
func (r *recorder) CreateCollection(c gocbcore.DcpCollectionCreation) {
	r.events <- dcpEvent{kind: "createColl", vb: c.VbID, seqno: c.SeqNo, cid: c.CollectionID, key: string(c.Key)}
}
func (r *recorder) DeleteCollection(c gocbcore.DcpCollectionDeletion) {
	r.events <- dcpEvent{kind: "dropColl", vb: c.VbID, seqno: c.SeqNo, cid: c.CollectionID}
}
func (r *recorder) FlushCollection(gocbcore.DcpCollectionFlush) {}
func (r *recorder) CreateScope(c gocbcore.DcpScopeCreation) {
	r.events <- dcpEvent{kind: "createScope", vb: c.VbID, seqno: c.SeqNo}
}
func (r *recorder) DeleteScope(c gocbcore.DcpScopeDeletion) {
	r.events <- dcpEvent{kind: "dropScope", vb: c.VbID, seqno: c.SeqNo}
}
func (r *recorder) ModifyCollection(gocbcore.DcpCollectionModification) {}
func (r *recorder) OSOSnapshot(gocbcore.DcpOSOSnapshot)                 {}
func (r *recorder) SeqNoAdvanced(a gocbcore.DcpSeqNoAdvanced) {
	r.events <- dcpEvent{kind: "seqadv", vb: a.VbID, seqno: a.SeqNo}
}

// next returns the next event, failing the test after a while.
func (r *recorder) next(t *testing.T) dcpEvent {
	t.Helper()
	select {
	case e := <-r.events:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no DCP event within 10s")
		return dcpEvent{}
	}
}

// until reads events, passing each to f, until f returns true.
func (r *recorder) until(t *testing.T, f func(e dcpEvent) bool) {
	t.Helper()
	for !f(r.next(t)) {
	}
}

// waitFor passes events to handle until cond holds (checked first).
func (r *recorder) waitFor(t *testing.T, handle func(dcpEvent), cond func() bool) {
	t.Helper()
	for !cond() {
		handle(r.next(t))
	}
}

func newDCPAgent(t *testing.T, s *Server, bucket string, bufSize int) *gocbcore.DCPAgent {
	t.Helper()
	agent, _, _ := dcpAgentOf(t, s, bucket, bufSize)
	return agent
}

// dcpAgentOf opens a DCP agent on bucket with a flow-control buffer of
// bufSize (0: none) and returns it, its DCP connection name and a close
// the test may call early.
func dcpAgentOf(t *testing.T, s *Server, bucket string, bufSize int) (*gocbcore.DCPAgent, string, func()) {
	t.Helper()
	ac := &gocbcore.DCPAgentConfig{}
	require.NoError(t, ac.FromConnStr(s.ConnStr()))
	ac.SecurityConfig.Auth = gocbcore.PasswordAuthProvider{Username: s.Username(), Password: s.Password()}
	ac.BucketName = bucket
	ac.UserAgent = "cbtest"
	ac.IoConfig.UseCollections = true
	ac.DCPConfig.UseExpiryOpcode = true
	ac.DCPConfig.BufferSize = bufSize
	ac.CompressionConfig.Enabled = false
	// Names are unique: like kv_engine, the server closes an older DCP
	// connection of the same name.
	name := fmt.Sprintf("cbtest-%s-%d", t.Name(), agentSeq.Add(1))
	agent, err := gocbcore.CreateDcpAgent(ac, name, memd.DcpOpenFlagProducer)
	require.NoError(t, err)
	var once sync.Once // gocbcore panics on a second Close
	closeAgent := func() { once.Do(func() { _ = agent.Close() }) }
	t.Cleanup(closeAgent)
	ready := make(chan error, 1)
	_, err = agent.WaitUntilReady(time.Now().Add(10*time.Second), gocbcore.WaitUntilReadyOptions{},
		func(_ *gocbcore.WaitUntilReadyResult, err error) { ready <- err })
	require.NoError(t, err)
	require.NoError(t, <-ready)
	return agent, name, closeAgent
}

var agentSeq atomic.Int64

type position struct{ uuid, seq, snapStart, snapEnd uint64 }

// open opens one stream and waits for the answer.
func open(t *testing.T, a *gocbcore.DCPAgent, vb uint16, from position, ids []uint32, obs gocbcore.StreamObserver) ([]gocbcore.FailoverEntry, error) {
	t.Helper()
	type res struct {
		fl  []gocbcore.FailoverEntry
		err error
	}
	ch := make(chan res, 1)
	var opts gocbcore.OpenStreamOptions
	if ids != nil {
		opts.FilterOptions = &gocbcore.OpenStreamFilterOptions{CollectionIDs: ids}
	}
	_, err := a.OpenStream(vb, 0, gocbcore.VbUUID(from.uuid), gocbcore.SeqNo(from.seq), gocbcore.SeqNo(math.MaxUint64),
		gocbcore.SeqNo(from.snapStart), gocbcore.SeqNo(from.snapEnd), obs, opts,
		func(fl []gocbcore.FailoverEntry, err error) { ch <- res{fl, err} })
	require.NoError(t, err)
	select {
	case r := <-ch:
		return r.fl, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("STREAM_REQ on vb %d: no answer", vb)
		return nil, nil
	}
}

// tracker follows the positions of streams, as a DCP consumer keeps them.
type tracker struct {
	mu   sync.Mutex
	pos  map[uint16]position
	seen map[string]dcpEvent // by key: the latest item event
	t    *testing.T
}

func newTracker(t *testing.T) *tracker {
	return &tracker{pos: map[uint16]position{}, seen: map[string]dcpEvent{}, t: t}
}

func (k *tracker) apply(e dcpEvent) {
	k.mu.Lock()
	defer k.mu.Unlock()
	p := k.pos[e.vb]
	switch e.kind {
	case "marker":
		assert.LessOrEqual(k.t, e.start, e.end, "marker")
		p.snapStart, p.snapEnd = e.start, e.end
	case "mutation", "deletion", "expiration", "seqadv", "createColl", "dropColl", "createScope", "dropScope":
		assert.GreaterOrEqual(k.t, e.seqno, p.snapStart, "%s %d outside snapshot [%d,%d] on vb %d", e.kind, e.seqno, p.snapStart, p.snapEnd, e.vb)
		assert.LessOrEqual(k.t, e.seqno, p.snapEnd, "%s %d outside snapshot [%d,%d] on vb %d", e.kind, e.seqno, p.snapStart, p.snapEnd, e.vb)
		assert.Greater(k.t, e.seqno, p.seq, "seqnos rise on vb %d", e.vb)
		p.seq = e.seqno
		if e.key != "" && e.kind != "createColl" {
			k.seen[e.key] = e
		}
	}
	k.pos[e.vb] = p
}

func openAll(t *testing.T, s *Server, a *gocbcore.DCPAgent, from map[uint16]position, ids []uint32, obs gocbcore.StreamObserver, k *tracker) {
	t.Helper()
	for vb := 0; vb < s.NumVBuckets(); vb++ {
		p := from[uint16(vb)]
		fl, err := open(t, a, uint16(vb), p, ids, obs)
		require.NoError(t, err, "vb %d", vb)
		require.NotEmpty(t, fl)
		p.uuid = uint64(fl[0].VbUUID)
		k.mu.Lock()
		k.pos[uint16(vb)] = p
		k.mu.Unlock()
	}
}

// closeStreams closes every stream of the agent.
func closeStreams(t *testing.T, a *gocbcore.DCPAgent, n int) {
	t.Helper()
	for vb := 0; vb < n; vb++ {
		done := make(chan error, 1)
		_, err := a.CloseStream(uint16(vb), gocbcore.CloseStreamOptions{}, func(err error) { done <- err })
		require.NoError(t, err)
		require.NoError(t, <-done)
	}
}

func TestDCPBackfillLiveAndFilter(t *testing.T) {
	clock := newFakeClock()
	s := Start(t, Options{Nodes: 3, VBuckets: 64, Clock: clock.Now, ExpiryPagerInterval: -1,
		Buckets: []BucketSpec{{Name: "orders", Collections: []string{"_default.inbound", "_default.retry"}}}})
	c := connect(t, s)
	b := readyBucket(t, c, "orders")
	inbound, retry := b.Collection("inbound"), b.Collection("retry")
	for i := 0; i < 20; i++ {
		_, err := inbound.Upsert(fmt.Sprintf("in_%02d", i), map[string]int{"i": i}, nil)
		require.NoError(t, err)
		_, err = retry.Upsert(fmt.Sprintf("re_%02d", i), map[string]int{"i": i}, nil)
		require.NoError(t, err)
	}
	inID, err := s.CollectionID("orders", "_default", "inbound")
	require.NoError(t, err)

	// The collection id as the adapter gets it: a plain gocbcore agent.
	ac := &gocbcore.AgentConfig{}
	require.NoError(t, ac.FromConnStr(s.ConnStr()))
	ac.SecurityConfig.Auth = gocbcore.PasswordAuthProvider{Username: s.Username(), Password: s.Password()}
	ac.BucketName, ac.IoConfig.UseCollections = "orders", true
	kv, err := gocbcore.CreateAgent(ac)
	require.NoError(t, err)
	cidCh := make(chan error, 2)
	_, err = kv.GetCollectionID("_default", "inbound", gocbcore.GetCollectionIDOptions{Deadline: time.Now().Add(30 * time.Second)},
		func(r *gocbcore.GetCollectionIDResult, err error) {
			if err == nil && r.CollectionID != inID {
				err = fmt.Errorf("collection id %d, want %d", r.CollectionID, inID)
			}
			cidCh <- err
		})
	require.NoError(t, err)
	require.NoError(t, <-cidCh)
	_, err = kv.GetCollectionID("_default", "nope", gocbcore.GetCollectionIDOptions{Deadline: time.Now().Add(30 * time.Second)},
		func(_ *gocbcore.GetCollectionIDResult, err error) { cidCh <- err })
	require.NoError(t, err)
	assert.ErrorIs(t, <-cidCh, gocbcore.ErrCollectionNotFound)
	require.NoError(t, kv.Close())

	agent := newDCPAgent(t, s, "orders", 0)
	rec, k := newRecorder(), newTracker(t)
	openAll(t, s, agent, nil, []uint32{inID}, rec, k)
	streams := s.OpenStreams()
	assert.Len(t, streams, 64)
	for vb, n := range streams {
		assert.Equal(t, 1, n, "vb %d streamed once", vb)
	}

	seqAdv := 0
	handle := func(e dcpEvent) {
		k.apply(e)
		if e.kind == "seqadv" {
			seqAdv++
		}
		if e.kind == "mutation" || e.kind == "deletion" || e.kind == "expiration" {
			assert.Equal(t, inID, e.cid, "only inbound passes the filter: %s", e.key)
		}
		if e.kind == "end" {
			t.Errorf("stream on vb %d ended: %v", e.vb, e.err)
		}
	}
	haveAll := func(keys ...string) func() bool {
		return func() bool {
			k.mu.Lock()
			defer k.mu.Unlock()
			for _, key := range keys {
				if _, ok := k.seen[key]; !ok {
					return false
				}
			}
			return true
		}
	}
	kindOf := func(key, kind string) func() bool {
		return func() bool {
			k.mu.Lock()
			defer k.mu.Unlock()
			return k.seen[key].kind == kind
		}
	}
	var keys []string
	for i := 0; i < 20; i++ {
		keys = append(keys, fmt.Sprintf("in_%02d", i))
	}
	rec.waitFor(t, handle, haveAll(keys...)) // backfill
	assert.Positive(t, seqAdv, "vBuckets whose last item is in retry end their snapshot with SEQNO_ADVANCED")
	assert.JSONEq(t, `{"i":3}`, string(k.seen["in_03"].value))

	// Live: writes after the backfill reach the open streams.
	_, err = inbound.Upsert("in_live", map[string]string{"live": "yes"}, nil)
	require.NoError(t, err)
	_, err = inbound.Remove("in_00", nil)
	require.NoError(t, err)
	_, err = inbound.Upsert("in_exp", "x", &gocb.UpsertOptions{Expiry: 5 * time.Second})
	require.NoError(t, err)
	rec.waitFor(t, handle, haveAll("in_live", "in_exp"))
	rec.waitFor(t, handle, kindOf("in_00", "deletion"))
	clock.Advance(10 * time.Second)
	assert.Equal(t, 1, s.ExpireNow())
	rec.waitFor(t, handle, kindOf("in_exp", "expiration"))

	// CLOSE_STREAM ends the stream with "closed".
	vb := s.VBucketOf("in_live")
	closed := make(chan error, 1)
	_, err = agent.CloseStream(vb, gocbcore.CloseStreamOptions{}, func(err error) { closed <- err })
	require.NoError(t, err)
	require.NoError(t, <-closed)
	rec.until(t, func(e dcpEvent) bool {
		if e.kind == "end" {
			assert.Equal(t, vb, e.vb)
			assert.ErrorIs(t, e.err, gocbcore.ErrDCPStreamClosed)
			return true
		}
		handle(e)
		return false
	})
	assert.Zero(t, s.OpenStreams()[vb])
	assert.Len(t, s.OpenStreams(), 63)
}

func TestDCPResumeRollbackAndFailover(t *testing.T) {
	s := Start(t, Options{VBuckets: 8})
	c := connect(t, s)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	write := func(prefix string, n int) []string {
		var keys []string
		for i := 0; i < n; i++ {
			key := fmt.Sprintf("%s_%02d", prefix, i)
			_, err := coll.Upsert(key, map[string]int{"i": i}, nil)
			require.NoError(t, err)
			keys = append(keys, key)
		}
		return keys
	}
	first := write("a", 24)

	agent := newDCPAgent(t, s, "orders", 0)
	rec, k := newRecorder(), newTracker(t)
	openAll(t, s, agent, nil, []uint32{0}, rec, k)
	seenAll := func(keys []string) func(dcpEvent) bool {
		return func(e dcpEvent) bool {
			require.NotEqual(t, "end", e.kind, "unexpected end: %v", e.err)
			k.apply(e)
			for _, key := range keys {
				if _, ok := k.seen[key]; !ok {
					return false
				}
			}
			return true
		}
	}
	rec.until(t, seenAll(first))
	closeStreams(t, agent, s.NumVBuckets())
	saved := map[uint16]position{}
	for vb, p := range k.pos {
		saved[vb] = p
	}

	// Resume from the saved positions: only the later writes arrive.
	second := write("b", 10)
	agent2 := newDCPAgent(t, s, "orders", 0)
	rec2, k2 := newRecorder(), newTracker(t)
	for vb, p := range saved {
		k2.pos[vb] = p
	}
	openAll(t, s, agent2, saved, []uint32{0}, rec2, k2)
	rec2.until(t, func(e dcpEvent) bool {
		require.NotEqual(t, "end", e.kind)
		k2.apply(e)
		if e.kind == "mutation" {
			require.Equal(t, "b", e.key[:1], "resumed streams send only later writes, got %s", e.key)
		}
		for _, key := range second {
			if _, ok := k2.seen[key]; !ok {
				return false
			}
		}
		return true
	})

	// A stale vbuuid gets a rollback to 0.
	vb := s.VBucketOf("a_05")
	agent3 := newDCPAgent(t, s, "orders", 0)
	stale := k2.pos[vb]
	stale.uuid = 0xdead
	_, err := open(t, agent3, vb, stale, []uint32{0}, newRecorder())
	var rb gocbcore.DCPRollbackError
	require.ErrorAs(t, err, &rb)
	assert.Equal(t, gocbcore.SeqNo(0), rb.SeqNo)

	// Rollback: the open stream ends (state changed); the old position is
	// told to roll back to the branch point.
	high := s.HighSeqno("orders", vb)
	require.GreaterOrEqual(t, high, uint64(3))
	require.NoError(t, s.Rollback("orders", vb, high-2))
	rec2.until(t, func(e dcpEvent) bool {
		if e.kind != "end" {
			return false
		}
		assert.Equal(t, vb, e.vb)
		assert.ErrorIs(t, e.err, gocbcore.ErrDCPStreamStateChanged)
		return true
	})
	old := k2.pos[vb]
	require.Equal(t, high, old.seq)
	_, err = open(t, agent2, vb, old, []uint32{0}, rec2)
	require.ErrorAs(t, err, &rb)
	assert.Equal(t, gocbcore.SeqNo(high-2), rb.SeqNo)
	fl := s.FailoverLog("orders", vb)
	require.Len(t, fl, 2)
	assert.Equal(t, high-2, fl[0].Seqno)
	_, err = open(t, agent2, vb, position{uuid: fl[0].VBUUID, seq: high - 2, snapStart: high - 2, snapEnd: high - 2}, []uint32{0}, rec2)
	require.NoError(t, err)

	// Failover to an up-to-date replica: resuming with the old uuid at the
	// branch point needs no rollback.
	vb2 := s.VBucketOf("b_03")
	require.NotEqual(t, vb, vb2)
	p := k2.pos[vb2]
	require.Equal(t, s.HighSeqno("orders", vb2), p.seq)
	require.NoError(t, s.Failover("orders", vb2))
	rec2.until(t, func(e dcpEvent) bool {
		if e.kind == "end" && e.vb == vb2 {
			assert.ErrorIs(t, e.err, gocbcore.ErrDCPStreamStateChanged)
			return true
		}
		return false
	})
	got, err := open(t, agent2, vb2, p, []uint32{0}, rec2)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, p.seq, uint64(got[0].SeqNo))
	assert.Equal(t, p.uuid, uint64(got[1].VbUUID))
}

func TestDCPSeqnosAndFailoverLogs(t *testing.T) {
	s := Start(t, Options{Nodes: 3, VBuckets: 48})
	c := connect(t, s)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	for i := 0; i < 50; i++ {
		_, err := coll.Upsert(fmt.Sprintf("k%d", i), i, nil)
		require.NoError(t, err)
	}
	agent := newDCPAgent(t, s, "orders", 0)
	seen := map[uint16]bool{}
	for server := 1; server <= 3; server++ { // 1-based, facts §6.3
		ch := make(chan []gocbcore.VbSeqNoEntry, 1)
		errc := make(chan error, 1)
		_, err := agent.GetVbucketSeqnos(server, memd.VbucketStateActive, gocbcore.GetVbucketSeqnoOptions{},
			func(e []gocbcore.VbSeqNoEntry, err error) { ch <- e; errc <- err })
		require.NoError(t, err)
		entries := <-ch
		require.NoError(t, <-errc)
		require.Len(t, entries, 16)
		for _, e := range entries {
			assert.Equal(t, server-1, s.NodeOf(e.VbID), "vb %d listed by node %d", e.VbID, server-1)
			assert.Equal(t, s.HighSeqno("orders", e.VbID), uint64(e.SeqNo))
			seen[e.VbID] = true
		}
	}
	assert.Len(t, seen, 48)
	for _, vb := range []uint16{0, 20, 47} {
		ch := make(chan []gocbcore.FailoverEntry, 1)
		_, err := agent.GetFailoverLog(vb, func(e []gocbcore.FailoverEntry, err error) {
			assert.NoError(t, err)
			ch <- e
		})
		require.NoError(t, err)
		got := <-ch
		want := s.FailoverLog("orders", vb)
		require.Len(t, got, len(want))
		assert.Equal(t, want[0].VBUUID, uint64(got[0].VbUUID))
	}
}

func TestDCPFaults(t *testing.T) {
	s := Start(t, Options{Nodes: 2, VBuckets: 8,
		Buckets: []BucketSpec{{Name: "orders", Collections: []string{"_default.inbound", "_default.retry"}}}})
	c := connect(t, s)
	readyBucket(t, c, "orders")
	inID, _ := s.CollectionID("orders", "_default", "inbound")
	reID, _ := s.CollectionID("orders", "_default", "retry")
	agent := newDCPAgent(t, s, "orders", 0)
	rec, k := newRecorder(), newTracker(t)
	openAll(t, s, agent, nil, []uint32{inID}, rec, k)
	recRetry := newRecorder()
	agentRetry := newDCPAgent(t, s, "orders", 0)
	openAll(t, s, agentRetry, nil, []uint32{reID}, recRetry, newTracker(t))
	for vb, n := range s.OpenStreams() {
		assert.Equal(t, 2, n, "vb %d: one stream per agent", vb)
	}

	// EndStream with a reason the client maps to a sentinel error.
	assert.Equal(t, 2, s.EndStream("orders", 3, EndTooSlow), "one stream per agent")
	for _, r := range []*recorder{rec, recRetry} {
		r.until(t, func(e dcpEvent) bool {
			return e.kind == "end" && e.vb == 3 && assert.ErrorIs(t, e.err, gocbcore.ErrDCPStreamTooSlow)
		})
	}

	// Dropping the only filtered collection: the drop event, then
	// STREAM_END "filter empty" on every open stream.
	require.NoError(t, s.DropCollection("orders", "_default", "retry"))
	dropped, ended := map[uint16]bool{}, map[uint16]bool{}
	recRetry.until(t, func(e dcpEvent) bool {
		switch e.kind {
		case "dropColl":
			assert.Equal(t, reID, e.cid)
			assert.False(t, ended[e.vb], "drop before end")
			dropped[e.vb] = true
		case "end":
			assert.ErrorIs(t, e.err, gocbcore.ErrDCPStreamFilterEmpty)
			ended[e.vb] = true
		}
		return len(ended) == 7
	})
	assert.Len(t, dropped, 7)

	// DropConnections ends the remaining streams with a connection error.
	s.DropConnections()
	ends := map[uint16]bool{}
	rec.until(t, func(e dcpEvent) bool {
		if e.kind == "end" {
			assert.Error(t, e.err)
			ends[e.vb] = true
		}
		return len(ends) == 7
	})
	assert.Empty(t, s.OpenStreams())
}

func TestHangNode(t *testing.T) {
	s := Start(t, Options{Nodes: 2, VBuckets: 8})
	c := connect(t, s)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	var key string
	for i := 0; ; i++ {
		key = fmt.Sprintf("k%d", i)
		if s.NodeOf(s.VBucketOf(key)) == 1 {
			break
		}
	}
	s.HangNode(1)
	_, err := coll.Upsert(key, "v", &gocb.UpsertOptions{Timeout: 200 * time.Millisecond})
	assert.True(t, errors.Is(err, gocb.ErrTimeout), "%v", err)
	s.ResumeNode(1)
	_, err = coll.Upsert(key, "v", nil)
	require.NoError(t, err)
}

func TestDCPFlowControl(t *testing.T) {
	s := Start(t, Options{VBuckets: 4})
	c := connect(t, s)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	value := make([]byte, 2000)
	for i := range value {
		value[i] = 'x'
	}
	const n = 200 // about 400 kB through a 16 kB window
	for i := 0; i < n; i++ {
		_, err := coll.Upsert(fmt.Sprintf("big%03d", i), string(value), nil)
		require.NoError(t, err)
	}
	agent := newDCPAgent(t, s, "orders", 16<<10)
	rec, k := newRecorder(), newTracker(t)
	openAll(t, s, agent, nil, nil, rec, k)
	got := 0
	rec.until(t, func(e dcpEvent) bool {
		k.apply(e)
		if e.kind == "mutation" {
			got++
		}
		return got == n
	})
	for _, d := range s.allDCP() {
		d.fcMu.Lock()
		peak, size := d.peakUnacked, d.bufSize
		d.fcMu.Unlock()
		assert.Equal(t, int64(16<<10), size)
		assert.LessOrEqual(t, peak, size+2100, "the producer pauses when the window is full")
		assert.Greater(t, peak, size/2, "the client acknowledges at half the window")
	}
}

func TestDCPNoop(t *testing.T) {
	s := Start(t, Options{VBuckets: 4, DCPNoopInterval: 20 * time.Millisecond})
	agent := newDCPAgent(t, s, "orders", 0)
	openAll(t, s, agent, nil, nil, newRecorder(), newTracker(t))
	// acks: the NOOPs each DCP connection had answered.
	acks := func() []int64 {
		var n []int64
		for _, d := range s.allDCP() {
			n = append(n, d.noopAcks.Load())
		}
		return n
	}
	acked := func() bool {
		for _, n := range acks() {
			if n >= 2 {
				return true
			}
		}
		return false
	}
	assert.Eventually(t, acked, 30*time.Second, 10*time.Millisecond,
		"an idle DCP connection gets NOOPs, which the client answers (2 at least); NOOPs answered per connection: %v", later.Value(func() any { return acks() }))
}

// kv_engine sends a collection-filtered stream nothing for the writes of
// other collections: a memory snapshot's marker covers the stream's items
// only and no SEQNO_ADVANCED follows it, and a backfill whose collections
// have nothing after the start is not sent at all (active_stream.cc,
// processItemsInner and snapshot; backfill_by_seqno_disk.cc). A client
// learns how far its collections go from GET_ALL_VB_SEQNOS with a
// collection id.
func TestDCPSendsNothingForOtherCollections(t *testing.T) {
	s := Start(t, Options{VBuckets: 16,
		Buckets: []BucketSpec{{Name: "orders", Collections: []string{"_default.inbound", "_default.attempts"}}}})
	c := connect(t, s)
	b := readyBucket(t, c, "orders")
	inbound, attempts := b.Collection("inbound"), b.Collection("attempts")
	inID, err := s.CollectionID("orders", "_default", "inbound")
	require.NoError(t, err)
	vb := s.VBucketOf("a")
	keyOn := func(prefix string) string {
		for i := 0; ; i++ {
			if k := fmt.Sprintf("%s%d", prefix, i); s.VBucketOf(k) == vb {
				return k
			}
		}
	}
	write := func(coll *gocb.Collection, prefix string) (string, uint64) {
		k := keyOn(prefix)
		_, err := coll.Upsert(k, map[string]string{"k": k}, nil)
		require.NoError(t, err)
		return k, s.HighSeqno("orders", vb)
	}

	agent := newDCPAgent(t, s, "orders", 0)
	rec := newRecorder()
	h := s.HighSeqno("orders", vb)
	from := position{uuid: s.FailoverLog("orders", vb)[0].VBUUID, seq: h, snapStart: h, snapEnd: h}
	_, err = open(t, agent, vb, from, []uint32{inID}, rec)
	require.NoError(t, err)

	// next reads the events up to the mutation of key and checks that
	// they are its marker and it, nothing else.
	next := func(key string, seq, markerStart uint64) {
		t.Helper()
		var got []dcpEvent
		rec.until(t, func(e dcpEvent) bool { got = append(got, e); return e.kind == "mutation" })
		want := []dcpEvent{{kind: "marker", vb: vb, start: markerStart, end: seq}, {kind: "mutation", vb: vb, seqno: seq, key: key, cid: inID}}
		for i := range got {
			got[i].value = nil
		}
		assert.Equal(t, want, got, "the events up to %s", key)
	}
	a, seqA := write(inbound, "a")
	next(a, seqA, h) // a stream's first marker starts at its start
	write(attempts, "x")
	write(attempts, "y")
	bk, seqB := write(inbound, "b")
	next(bk, seqB, seqB)
	write(attempts, "z")
	ck, seqC := write(inbound, "c")
	next(ck, seqC, seqC)

	// What the stream's collection reaches, and the vBucket beyond it.
	_, highZ := write(attempts, "w")
	ch := make(chan []gocbcore.VbSeqNoEntry, 1)
	errc := make(chan error, 1)
	_, err = agent.GetVbucketSeqnos(1, memd.VbucketStateActive,
		gocbcore.GetVbucketSeqnoOptions{FilterOptions: &gocbcore.GetVbucketSeqnoFilterOptions{CollectionID: inID}},
		func(e []gocbcore.VbSeqNoEntry, err error) { ch <- e; errc <- err })
	require.NoError(t, err)
	entries := <-ch
	require.NoError(t, <-errc)
	highs := map[uint16]uint64{}
	for _, e := range entries {
		highs[e.VbID] = uint64(e.SeqNo)
	}
	assert.Equal(t, seqC, highs[vb], "inbound's high seqno on vb %d (the vBucket's is %d)", vb, highZ)

	// Resumed at c with only other collections' writes after it: the
	// backfill is skipped, and the next marker is the next item's.
	done := make(chan error, 1)
	_, err = agent.CloseStream(vb, gocbcore.CloseStreamOptions{}, func(err error) { done <- err })
	require.NoError(t, err)
	require.NoError(t, <-done)
	rec.until(t, func(e dcpEvent) bool { return e.kind == "end" })
	from = position{uuid: from.uuid, seq: seqC, snapStart: seqC, snapEnd: seqC}
	_, err = open(t, agent, vb, from, []uint32{inID}, rec)
	require.NoError(t, err)
	dk, seqD := write(inbound, "d")
	next(dk, seqD, seqC)
}
