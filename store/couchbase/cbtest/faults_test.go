package cbtest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/couchbase/gocbcore/v10"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func failoverLog(t *testing.T, a *gocbcore.DCPAgent, vb uint16) ([]gocbcore.FailoverEntry, error) {
	t.Helper()
	type res struct {
		e   []gocbcore.FailoverEntry
		err error
	}
	ch := make(chan res, 1)
	_, err := a.GetFailoverLog(vb, func(e []gocbcore.FailoverEntry, err error) { ch <- res{e, err} })
	require.NoError(t, err)
	r := <-ch
	return r.e, r.err
}

func TestFailFailoverLogs(t *testing.T) {
	s := Start(t, Options{VBuckets: 4})
	agent := newDCPAgent(t, s, "orders", 0)
	s.FailFailoverLogs("orders", 2, 2)
	for range 2 {
		_, err := failoverLog(t, agent, 2)
		assert.ErrorIs(t, err, gocbcore.ErrTemporaryFailure)
	}
	got, err := failoverLog(t, agent, 2)
	require.NoError(t, err, "the third read is answered")
	assert.Equal(t, s.FailoverLog("orders", 2)[0].VBUUID, uint64(got[0].VbUUID))
	_, err = failoverLog(t, agent, 1)
	assert.NoError(t, err, "other vBuckets are not affected")
}

func TestIgnoreStreamRequestsAndTheRequestLog(t *testing.T) {
	s := Start(t, Options{VBuckets: 4})
	agent := newDCPAgent(t, s, "orders", 0)
	s.IgnoreStreamRequests("orders", 1, 1)
	answered := make(chan error, 1)
	op, err := agent.OpenStream(1, 0, 0, 0, 0xffffffffffffffff, 0, 0, newRecorder(), gocbcore.OpenStreamOptions{},
		func(_ []gocbcore.FailoverEntry, err error) { answered <- err })
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(s.StreamRequests("orders", 1)) == 1 }, 30*time.Second, time.Millisecond,
		"one stream request for vb 1 in the log; last: %v", later.Value(func() any { return s.StreamRequests("orders", 1) }))
	select {
	case err := <-answered:
		t.Fatalf("an ignored stream request was answered: %v", err)
	default:
	}
	assert.Empty(t, s.OpenStreams(), "no stream opened")
	op.Cancel()
	assert.ErrorIs(t, <-answered, gocbcore.ErrRequestCanceled)

	// The next request is answered, and logged with its position.
	_, err = open(t, agent, 1, position{}, nil, newRecorder())
	require.NoError(t, err)
	uuid := s.FailoverLog("orders", 1)[0].VBUUID
	_, err = open(t, newDCPAgent(t, s, "orders", 0), 1, position{uuid: uuid + 1, seq: 0, snapStart: 0, snapEnd: 0}, nil, newRecorder())
	require.NoError(t, err, "start 0 never rolls back")
	reqs := s.StreamRequests("orders", 1)
	require.Len(t, reqs, 3)
	assert.True(t, reqs[0].Ignored)
	assert.Equal(t, StreamRequest{Bucket: "orders", VB: 1, Status: 0, Node: 0, ConnectionName: reqs[1].ConnectionName}, reqs[1])
	assert.Equal(t, uuid+1, reqs[2].UUID)
}

func TestStreamRequestLogRecordsRollbacks(t *testing.T) {
	s := Start(t, Options{VBuckets: 4})
	c := connect(t, s)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	key := "k"
	vb := s.VBucketOf(key)
	for i := range 3 {
		_, err := coll.Upsert(key, i, nil)
		require.NoError(t, err)
	}
	uuid := s.FailoverLog("orders", vb)[0].VBUUID
	require.NoError(t, s.Rollback("orders", vb, 1))
	agent := newDCPAgent(t, s, "orders", 0)
	_, err := open(t, agent, vb, position{uuid: uuid, seq: 3, snapStart: 3, snapEnd: 3}, nil, newRecorder())
	var rb gocbcore.DCPRollbackError
	require.ErrorAs(t, err, &rb)
	reqs := s.StreamRequests("orders", vb)
	require.Len(t, reqs, 1)
	assert.Equal(t, uint16(0x23), reqs[0].Status)
	assert.Equal(t, uint64(1), reqs[0].RollbackTo)
	assert.Equal(t, uint64(3), reqs[0].Start)
}

// writeOrder is a bucket with a retry collection holding two documents,
// first on a vBucket above 16 and second below it, first < second: an
// UPDATE of both writes first first, on the higher vBucket.
type writeOrder struct {
	s             *Server
	c             *gocb.Cluster
	retryID       uint32
	first, second string
	rec           *recorder
	k             *tracker
}

func newWriteOrder(t *testing.T) *writeOrder {
	s := Start(t, Options{VBuckets: 32, Buckets: []BucketSpec{{Name: "orders", Collections: []string{"_default.retry"}}}})
	c := connect(t, s)
	require.NoError(t, c.WaitUntilReady(10*time.Second, &gocb.WaitUntilReadyOptions{
		ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeQuery}}))
	readyBucket(t, c, "orders")
	// The UPDATE's keys are read through the primary index, as Couchbase
	// needs one.
	_, err := c.Query("CREATE PRIMARY INDEX ON `orders`.`_default`.`retry`", nil)
	require.NoError(t, err)
	retryID, err := s.CollectionID("orders", "_default", "retry")
	require.NoError(t, err)
	w := &writeOrder{s: s, c: c, retryID: retryID, rec: newRecorder(), k: newTracker(t)}
	for i := 0; w.first == "" || w.second == ""; i++ {
		k := fmt.Sprintf("a%03d", i)
		switch vb := s.VBucketOf(k); {
		case w.first == "" && vb > 16:
			w.first = k
		case w.first != "" && vb < 16:
			w.second = k
		}
	}
	for _, k := range []string{w.first, w.second} {
		_, err := c.Bucket("orders").Scope("_default").Collection("retry").Upsert(k, map[string]any{"n": 0}, nil)
		require.NoError(t, err)
	}
	return w
}

// from is the position of vb's stream at its high seqno.
func (w *writeOrder) from(vb uint16) position {
	h := w.s.HighSeqno("orders", vb)
	return position{uuid: w.s.FailoverLog("orders", vb)[0].VBUUID, seq: h, snapStart: h, snapEnd: h}
}

// update rewrites both documents in one UPDATE, first first (it visits
// keys in order).
func (w *writeOrder) update(t *testing.T) {
	_, err := w.c.Query("UPDATE `orders`.`_default`.`retry` AS r SET r.n = 1 WHERE META(r).id IN $keys",
		&gocb.QueryOptions{NamedParameters: map[string]any{"keys": []string{w.first, w.second}}})
	require.NoError(t, err)
}

// sentInWriteOrder checks that the two mutations arrive first first.
func (w *writeOrder) sentInWriteOrder(t *testing.T) {
	var order []string
	w.rec.until(t, func(e dcpEvent) bool {
		w.k.apply(e)
		if e.kind == "mutation" {
			order = append(order, e.key)
		}
		return len(order) == 2
	})
	assert.Equal(t, []string{w.first, w.second}, order, "vb %d's write before vb %d's",
		w.s.VBucketOf(w.first), w.s.VBucketOf(w.second))
}

// One connection's snapshots go out in the order of their writes, whatever
// their vBuckets: an UPDATE writes two documents of one node, the one on
// the higher vBucket first, before the producer's next pass.
func TestDCPSendsSnapshotsInWriteOrder(t *testing.T) {
	w := newWriteOrder(t)
	agent := newDCPAgent(t, w.s, "orders", 0)
	from := map[uint16]position{}
	for vb := range uint16(w.s.NumVBuckets()) {
		from[vb] = w.from(vb)
	}
	openAll(t, w.s, agent, from, []uint32{w.retryID}, w.rec, w.k)
	w.update(t)
	w.sentInWriteOrder(t)
}

// A stream opened while a pass is between listing the streams and locking
// the bucket: a write on it, made before a write on another vBucket, still
// goes out first. (The pass used to send what it had listed, the later
// write first, and the new stream's on its next pass.)
func TestDCPStreamOpenedDuringAPassKeepsWriteOrder(t *testing.T) {
	w := newWriteOrder(t)
	s, late := w.s, w.s.VBucketOf(w.first)
	agent := newDCPAgent(t, s, "orders", 0)
	for vb := range uint16(s.NumVBuckets()) {
		if vb != late {
			_, err := open(t, agent, vb, w.from(vb), []uint32{w.retryID}, w.rec)
			require.NoError(t, err, "vb %d", vb)
		}
	}
	// The next pass that lists every stream but late's stops there until
	// the stream on late is open and the UPDATE is done.
	paused, resume := make(chan struct{}, 1), make(chan struct{})
	var once sync.Once
	hook := func(n int) {
		if n == s.NumVBuckets()-1 {
			once.Do(func() { paused <- struct{}{}; <-resume })
		}
	}
	s.passPaused.Store(&hook)
	t.Cleanup(func() { s.passPaused.Store(nil) })
	// A change the retry streams filter out, to start a pass.
	_, err := w.c.Bucket("orders").DefaultCollection().Upsert("wake", 1, nil)
	require.NoError(t, err)
	select {
	case <-paused:
	case <-time.After(10 * time.Second):
		t.Fatal("no DCP pass listing every stream but late's within 10s of a write")
	}
	_, err = open(t, agent, late, w.from(late), []uint32{w.retryID}, w.rec)
	require.NoError(t, err)
	w.update(t)
	close(resume)
	w.sentInWriteOrder(t)
}

// SyncDCP: a KV write answers once every DCP connection of its bucket has
// sent it.
func TestSyncDCP(t *testing.T) {
	s := Start(t, Options{Nodes: 3, VBuckets: 12, SyncDCP: true})
	c := connect(t, s)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	agent := newDCPAgent(t, s, "orders", 0)
	openAll(t, s, agent, nil, nil, newRecorder(), newTracker(t))
	for i := range 20 {
		_, err := coll.Upsert(fmt.Sprintf("k%d", i), i, nil)
		require.NoError(t, err)
		s.mu.Lock()
		changes := s.buckets["orders"].changes
		s.mu.Unlock()
		for _, d := range s.allDCP() {
			assert.GreaterOrEqual(t, d.caughtUp.Load(), changes, "write %d was sent before it was answered", i)
		}
	}
}

// A query UPDATE writes document by document, each by the CAS it read: a
// document written or removed in between fails alone, with a 12009 error
// after the other documents' results, which gocb reads as ErrCasMismatch
// or ErrDocumentNotFound once the rows are read.
func TestConflictOnUpdate(t *testing.T) {
	s, c, b := queryServer(t)
	retry := b.Collection("retry")
	params := map[string]any{"control": "allow_retrys", "now": 2, "cutoff": 0}
	for _, tt := range []struct {
		give     string // the document written in the middle of the UPDATE
		remove   bool
		want     error
		wantCode float64 // the 12009 error's reason
		wantNext []string
	}{
		{give: "b", want: gocb.ErrCasMismatch, wantCode: 12033, wantNext: []string{"b"}},
		{give: "e", remove: true, want: gocb.ErrDocumentNotFound, wantCode: 17014},
	} {
		keys := []string{"a", "b", "c"}
		if tt.remove {
			keys = []string{"d", "e", "f"}
		}
		for _, k := range keys {
			_, err := retry.Upsert(k, map[string]any{"nextAttemptAt": 1}, nil)
			require.NoError(t, err)
		}
		_, _, casBefore, ok := s.Doc("orders", "_default", "retry", tt.give)
		require.True(t, ok)

		s.ConflictOnUpdate("orders", "_default", "retry", tt.give, tt.remove)
		got, err := queryRows[string](t, c, sweep(""), params)
		assert.ElementsMatch(t, without(keys, tt.give), got, "the other due documents are flagged")
		assert.ErrorIs(t, err, tt.want)
		var qe *gocb.QueryError
		if assert.ErrorAs(t, err, &qe) && assert.Len(t, qe.Errors, 1, "errors: %+v", qe.Errors) {
			assert.Equal(t, uint32(12009), qe.Errors[0].Code)
			assert.Equal(t, tt.wantCode, qe.Errors[0].Reason["code"], "reason %v", qe.Errors[0].Reason)
			assert.Contains(t, qe.Errors[0].Message, "key "+tt.give)
		}
		v, _, cas, ok := s.Doc("orders", "_default", "retry", tt.give)
		if tt.remove {
			assert.False(t, ok, "%s was removed", tt.give)
		} else if assert.True(t, ok, "%s was written, not removed", tt.give) {
			assert.NotEqual(t, casBefore, cas, "another client wrote %s", tt.give)
			assert.JSONEq(t, `{"nextAttemptAt":1}`, string(v), "%s is as the other client left it: not flagged", tt.give)
		}

		got, err = queryRows[string](t, c, sweep(""), params)
		require.NoError(t, err, "a conflict is injected once")
		assert.Equal(t, tt.wantNext, got, "the next pass")
	}
}

func without(keys []string, drop string) []string {
	var out []string
	for _, k := range keys {
		if k != drop {
			out = append(out, k)
		}
	}
	return out
}
