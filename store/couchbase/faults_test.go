package couchbase

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The feed and the writes against cbtest's faults, one test per defect of
// the issue "Couchbase for real". They skip on a real cluster.

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// subscribe opens a feed, closed (if the test did not) when the test ends.
func subscribe(t *testing.T, s *Store, name string, colls []string, fromNow bool) store.Subscription {
	t.Helper()
	sub, err := s.Subscribe(ctxFor(t, 30*time.Second), name, colls, store.FeedOptions{FromNow: fromNow})
	require.NoError(t, err)
	t.Cleanup(func() { sub.Close(context.Background()) })
	return sub
}

// putOnEveryVBucket writes an order on each vBucket, keyed k-..., and
// returns the keys, the vBucket's the index.
func putOnEveryVBucket(t *testing.T, s *Store, srv *cbtest.Server) []string {
	t.Helper()
	var keys []string
	for vb := range uint16(testVBuckets) {
		keys = append(keys, keyOn(srv, "k-", vb))
		put(t, s, order.Inbound, keys[vb])
	}
	return keys
}

// keyOn returns a key with prefix that hashes to vb.
func keyOn(srv *cbtest.Server, prefix string, vb uint16) string {
	for i := 0; ; i++ {
		if k := fmt.Sprintf("%s%d", prefix, i); srv.VBucketOf(k) == vb {
			return k
		}
	}
}

// readUntil reads and acknowledges events until done says so, and
// returns them; it fails the test on an error or after two minutes (a
// bound for a failure, not a budget).
func readUntil(t *testing.T, sub store.Subscription, done func(seen []store.Event) bool) []store.Event {
	t.Helper()
	ctx := ctxFor(t, 2*time.Minute)
	var seen []store.Event
	for !done(seen) {
		ev, err := sub.Next(ctx)
		require.NoError(t, err, "waiting for events; have %v", eventKeys(seen))
		ev.Ack()
		seen = append(seen, ev)
	}
	return seen
}

// sawKeys is a readUntil condition: every key seen.
func sawKeys(keys ...string) func([]store.Event) bool {
	return func(seen []store.Event) bool {
		got := map[string]bool{}
		for _, ev := range seen {
			got[ev.Key] = true
		}
		for _, k := range keys {
			if !got[k] {
				return false
			}
		}
		return true
	}
}

func eventKeys(evs []store.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Key
	}
	return out
}

// savedCheckpoint reads the checkpoint document of feed name and vb as
// the server holds it.
func savedCheckpoint(srv *cbtest.Server, name string, vb uint16) (position, bool) {
	v, _, _, ok := srv.Doc("metadata", "_default", "_default", checkpointKey(name, vb))
	if !ok {
		return position{}, false
	}
	var p position
	if json.Unmarshal(v, &p) != nil {
		return position{}, false
	}
	return p, true
}

// stats reads a subscription's FeedStats, as the metrics do.
func stats(sub store.Subscription) FeedStats {
	return sub.(interface{ Stats() FeedStats }).Stats()
}

// waitStreaming waits until sub streams all n vBuckets. A member claims
// them after Subscribe returns, each by its checkpoint document: a node
// hung before then holds up the claims of the vBuckets whose checkpoints
// it keeps, wherever their data is (under load, 4 to 65 of 683 in a
// 1,024-vBucket test), and a test of what goes on around a hung node
// needs them all streaming first.
func waitStreaming(t *testing.T, sub store.Subscription, n int) {
	t.Helper()
	waitForWithin(t, 2*time.Minute, func() (bool, string) { // a bound for a failure, not a budget
		st := stats(sub)
		return st.StreamsOpen == n, fmt.Sprintf("%d of %d streams open; %+v", st.StreamsOpen, n, st)
	})
}

func firstVBOf(srv *cbtest.Server, node int) uint16 {
	for vb := range uint16(srv.NumVBuckets()) {
		if srv.NodeOf(vb) == node {
			return vb
		}
	}
	panic("no vBucket on node")
}

func put(t *testing.T, s *Store, coll, key string) {
	t.Helper()
	_, err := s.Upsert(ctxFor(t, 10*time.Second), coll, key, []byte(`{"k":"`+key+`"}`))
	require.NoError(t, err)
}

// Defect 1: --from-now start positions were kept in memory only, so a
// restart skipped what was written while ordermail was down.
func TestFromNowSavesEveryStartBeforeAnyEvent(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	sub := subscribe(t, s, "feed", watched, true)
	for vb := range uint16(testVBuckets) {
		p, ok := savedCheckpoint(srv, "feed", vb)
		if assert.True(t, ok, "vb %d: saved at once, so that a crash now loses nothing", vb) {
			assert.Equal(t, srv.HighSeqno("orders", vb), p.Seq, "vb %d", vb)
		}
	}
	require.NoError(t, sub.Close(ctxFor(t, 10*time.Second)))

	put(t, s, order.Inbound, "while-down")
	again := subscribe(t, s, "feed", watched, true)
	readUntil(t, again, sawKeys("while-down"))
}

// Defects 2 and 11: the high seqnos were asked of servers 0..n-1 where
// gocbcore numbers them 1..n, so on three nodes the last node's vBuckets
// started from 0 and replayed their history.
func TestFromNowOnThreeNodesStartsEveryVBucketAtItsEnd(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	s := openStore(t, cfg)
	for vb := range uint16(testVBuckets) {
		put(t, s, order.Inbound, keyOn(srv, "before-", vb))
	}
	sub := subscribe(t, s, "feed", watched, true)
	for vb := range uint16(testVBuckets) {
		p, ok := savedCheckpoint(srv, "feed", vb)
		require.True(t, ok, "vb %d", vb)
		assert.Equal(t, srv.HighSeqno("orders", vb), p.Seq, "vb %d (node %d) starts at its end", vb, srv.NodeOf(vb))
		assert.Equal(t, srv.FailoverLog("orders", vb)[0].VBUUID, p.UUID, "vb %d", vb)
	}
	var after []string
	for node := range 3 {
		vb := firstVBOf(srv, node)
		after = append(after, keyOn(srv, "after-", vb))
		put(t, s, order.Inbound, after[node])
	}
	for _, ev := range readUntil(t, sub, sawKeys(after...)) {
		assert.False(t, strings.HasPrefix(ev.Key, "before-"), "%s was written before the feed started", ev.Key)
	}
}

// Defect 3: Close closed the streams one by one, each waiting its timeout
// on a hung node, ignored its context, and saved the checkpoints last.
func TestCloseOnAHungNodeSavesFirstAndHonoursItsContext(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	cfg.Timeout = 2 * time.Second
	s := openStore(t, cfg, func(s *Store) { s.feedOpts.flushEvery = time.Hour }) // only Close saves
	sub := subscribe(t, s, "feed", watched, true)
	keys := putOnEveryVBucket(t, s, srv)
	seqs := map[uint16]uint64{}
	for _, ev := range readUntil(t, sub, sawKeys(keys...)) {
		seqs[ev.Partition] = max(seqs[ev.Partition], ev.Seq)
	}

	srv.HangNode(2)
	t.Cleanup(func() { srv.ResumeNode(2) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- sub.Close(ctx) }()
	select {
	case err := <-closed:
		// Checkpoints whose documents live on the hung node could not be saved.
		assert.ErrorContains(t, err, "save checkpoints")
		assert.Positive(t, stats(sub).CheckpointSaveFailures)
	case <-time.After(15 * time.Second):
		t.Fatal("Close did not return after its context ended")
	}
	for vb, seq := range seqs {
		if srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))) == 2 {
			continue
		}
		p, _ := savedCheckpoint(srv, "feed", vb)
		assert.Equal(t, seq, p.Seq, "vb %d: saved at Close", vb)
	}
}

// A node that hangs holds up the checkpoints kept on it alone. With 1,024
// vBuckets on three nodes about 340 checkpoint documents are there; the
// saver's writes, bounded to 32 at once, gave every slot to writes to
// that node until they timed out, and the checkpoints kept on the nodes
// that answer waited behind them (a pass took minutes where it takes a
// second).
func TestAHungNodeHoldsUpOnlyTheCheckpointsKeptOnIt(t *testing.T) {
	const vbuckets, hung = 1024, 2
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3, VBuckets: vbuckets})
	s := openStore(t, cfg, func(s *Store) {
		s.feedOpts.opTimeout = 10 * time.Minute // a write to the hung node waits as long as it hangs
	})
	sub := subscribe(t, s, "feed", watched, true)
	put(t, s, order.Inbound, "warm") // the collection's ID is known before the node hangs
	waitStreaming(t, sub, vbuckets)
	srv.HangNode(hung)
	t.Cleanup(func() { srv.ResumeNode(hung) })

	// A change on every vBucket whose data the hung node does not hold.
	var keys []string
	for vb := range uint16(vbuckets) {
		if srv.NodeOf(vb) != hung {
			keys = append(keys, keyOn(srv, "k-", vb))
			put(t, s, order.Inbound, keys[len(keys)-1])
		}
	}
	seqs := map[uint16]uint64{}
	for _, ev := range readUntil(t, sub, sawKeys(keys...)) {
		seqs[ev.Partition] = max(seqs[ev.Partition], ev.Seq)
	}
	onHung := 0
	for vb := range seqs {
		if srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))) == hung {
			onHung++
			delete(seqs, vb) // cannot be saved while it hangs
		}
	}
	require.Greater(t, onHung, 32, "the hung node keeps more of the moved checkpoints than the old bound of writes at once")
	unsaved := func() (n int) {
		for vb, seq := range seqs {
			if p, _ := savedCheckpoint(srv, "feed", vb); p.Seq != seq {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return unsaved() == 0 }, 60*time.Second, 10*time.Millisecond,
		"checkpoints kept on the nodes that answer, not saved: %v of %d (%d kept on the hung node)",
		later.Value(func() any { return unsaved() }), len(seqs), onHung)

	// Changes after that pass began, on the vBuckets whose checkpoints the
	// nodes that answer keep, are saved by the next passes: a pass waited
	// for its every write, those to the hung node too, and the next began
	// only once they timed out (here never; by default --cb-timeout later).
	var more []string
	for vb := range seqs {
		more = append(more, keyOn(srv, "m-", vb))
		put(t, s, order.Inbound, more[len(more)-1])
	}
	for _, ev := range readUntil(t, sub, sawKeys(more...)) {
		if _, ok := seqs[ev.Partition]; ok {
			seqs[ev.Partition] = max(seqs[ev.Partition], ev.Seq)
		}
	}
	require.Eventually(t, func() bool { return unsaved() == 0 }, 60*time.Second, 10*time.Millisecond,
		"checkpoints moved after a pass began, on the nodes that answer, not saved: %v of %d",
		later.Value(func() any { return unsaved() }), len(seqs))
}

// Defect 4: a dropped collection made its streams fail and reopen every
// second, forever, with nothing in Next.
func TestDroppedCollectionFailsTheFeedNamingIt(t *testing.T) {
	for _, tt := range []struct {
		name  string
		colls []string // streamed
	}{
		{"OthersRemain", watched},          // a collection-dropped event
		{"NoneRemains", []string{"retry"}}, // the stream ends: filter empty
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, srv := fakeCluster(t, cbtest.Options{})
			s := openStore(t, cfg)
			sub := subscribe(t, s, "feed", tt.colls, true)
			require.NoError(t, srv.DropCollection("orders", "_default", "retry"))
			ctx := ctxFor(t, 2*time.Minute) // a bound for a failure, not a budget
			var err error
			for err == nil {
				var ev store.Event
				if ev, err = sub.Next(ctx); err == nil {
					ev.Ack()
				}
			}
			require.NotErrorIs(t, err, context.DeadlineExceeded, "Next reports the loss")
			assert.ErrorContains(t, err, "orders._default.retry")
			assert.ErrorContains(t, err, "ordermail setup")
			_, err = sub.Next(ctx)
			assert.ErrorContains(t, err, "orders._default.retry", "for good")
		})
	}
}

// Defect 4, second half: collection IDs were resolved once, so a
// collection dropped and created again was never streamed again.
func TestRecreatedCollectionIsStreamedOnItsNewID(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	sub := subscribe(t, s, "feed", watched, true)
	oldID, err := srv.CollectionID("orders", "_default", "retry")
	require.NoError(t, err)
	require.NoError(t, srv.DropCollection("orders", "_default", "retry"))
	require.NoError(t, srv.CreateCollection("orders", "_default", "retry"))
	newID, err := srv.CollectionID("orders", "_default", "retry")
	require.NoError(t, err)
	require.NotEqual(t, oldID, newID)

	put(t, s, order.Retry, "again")
	put(t, s, order.Inbound, "still")
	readUntil(t, sub, sawKeys("again", "still"))
}

func rollbacks(srv *cbtest.Server, vb uint16) int {
	n := 0
	for _, r := range srv.StreamRequests("orders", vb) {
		if r.Status == 0x23 {
			n++
		}
	}
	return n
}

// Defect 5: after a rollback (or a failover) the saved checkpoint kept the
// old vBucket UUID, because it was saved only when its seqno moved.
func TestRollbackAndFailoverSaveTheNewBranch(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	cfg.Durability = "none" // its writes stand for the order system's, which a failover may lose
	s := openStore(t, cfg)
	x, y := srv.VBucketOf("x"), srv.VBucketOf("y")
	require.NotEqual(t, x, y)
	sub := subscribe(t, s, "feed", watched, true)
	var keys []string
	for i := range 3 {
		keys = append(keys, keyOn(srv, fmt.Sprintf("x%d-", i), x))
		put(t, s, order.Inbound, keys[i])
	}
	readUntil(t, sub, sawKeys(keys...))
	require.NoError(t, sub.Close(ctxFor(t, 10*time.Second)))
	high := srv.HighSeqno("orders", x)

	// x loses its last two changes and takes other ones; y fails over
	// to an up-to-date replica: same history, new UUID.
	require.NoError(t, srv.Rollback("orders", x, high-2))
	for i := range 2 {
		put(t, s, order.Inbound, keyOn(srv, fmt.Sprintf("x-new%d-", i), x))
	}
	require.NoError(t, srv.Failover("orders", y))

	sub = subscribe(t, s, "feed", watched, true)
	readUntil(t, sub, sawKeys(keyOn(srv, "x-new1-", x)))
	require.NoError(t, sub.Close(ctxFor(t, 10*time.Second)))
	assert.Equal(t, 1, rollbacks(srv, x))
	assert.Equal(t, uint64(1), stats(sub).Rollbacks)
	for _, vb := range []uint16{x, y} {
		p, _ := savedCheckpoint(srv, "feed", vb)
		assert.Equal(t, srv.FailoverLog("orders", vb)[0].VBUUID, p.UUID, "vb %d: the checkpoint is on the new branch", vb)
	}

	sub = subscribe(t, s, "feed", watched, true)
	put(t, s, order.Inbound, keyOn(srv, "x-later-", x))
	readUntil(t, sub, sawKeys(keyOn(srv, "x-later-", x)))
	assert.Equal(t, 1, rollbacks(srv, x), "a restart does not roll back again")
}

// A start while one node hangs waits for it (the members document and
// checkpoints may be there) and failed saying the bucket was "missing?
// run ordermail setup; wrong credentials?": it now names the node that
// does not answer.
func TestAStartWhileANodeHangsNamesIt(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	cfg.Timeout = time.Second
	srv.HangNode(2)
	t.Cleanup(func() { srv.ResumeNode(2) })
	_, err := Open(context.Background(), cfg, testLog)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "node "+srv.KVAddr(2)+" does not answer (2 other node(s) of the bucket do)")
	assert.NotContains(t, err.Error(), "run ordermail setup")
	assert.NotContains(t, err.Error(), srv.KVAddr(0))
}

// Each event says which node holds its key (Locus): the watcher holds back
// the keys of a node that does not answer together, rather than trying
// each vBucket's at the cost of a timeout each.
func TestEventsSayTheNodeOfTheirKey(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	s := openStore(t, cfg)
	sub := subscribe(t, s, "feed", watched, true)
	keys := putOnEveryVBucket(t, s, srv)
	for _, ev := range readUntil(t, sub, sawKeys(keys...)) {
		assert.Equal(t, srv.NodeOf(ev.Partition), ev.Locus&1023, "vb %d", ev.Partition)
	}
}

// Defect 6: checkpoints were saved one at a time, stopped at the first
// error, on the goroutine that also reopened streams: one hung node held
// back every checkpoint and every reopen.
func TestCheckpointsAndReopensGoOnAroundAHungNode(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	// How long a save to the hung node waits: longer than the test, so
	// that what goes on meanwhile is shown without a race against it.
	cfg.Timeout = 10 * time.Minute
	s := openStore(t, cfg)
	sub := subscribe(t, s, "feed", watched, true)
	keys := putOnEveryVBucket(t, s, srv)
	seqs := map[uint16]uint64{}
	for _, ev := range readUntil(t, sub, sawKeys(keys...)) {
		seqs[ev.Partition] = max(seqs[ev.Partition], ev.Seq)
	}
	srv.HangNode(2)
	t.Cleanup(func() { srv.ResumeNode(2) })

	// Every checkpoint whose document is on a running node is saved while
	// the saves to the hung node wait.
	onHung := 0
	for vb := range seqs {
		if srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))) == 2 {
			onHung++
		}
	}
	require.NotZero(t, onHung, "no checkpoint document is on the hung node")
	pending := []int{-1}
	assert.Eventually(t, func() bool {
		pending[0] = 0
		for vb, seq := range seqs {
			if srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))) == 2 {
				continue
			}
			if p, _ := savedCheckpoint(srv, "feed", vb); p.Seq != seq {
				pending[0]++
			}
		}
		return pending[0] == 0
	}, 2*time.Minute, 20*time.Millisecond, "checkpoints on running nodes not saved: %v", later.Value(func() any { return pending[0] }))

	// A stream on a running node that ends is reopened meanwhile.
	vb := uint16(0)
	require.Equal(t, 0, srv.NodeOf(vb))
	require.Equal(t, 1, srv.EndStream("orders", vb, cbtest.EndStateChanged))
	late := keyOn(srv, "late-", vb)
	put(t, s, order.Inbound, late)
	readUntil(t, sub, sawKeys(late))
	// Reopened while the saves to the hung node still wait.
	for vb, seq := range seqs {
		if srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))) == 2 {
			p, _ := savedCheckpoint(srv, "feed", vb)
			assert.NotEqual(t, seq, p.Seq, "vb %d: saved on the hung node", vb)
		}
	}
}

// Defect 7: when the failover log could not be read after a rollback, the
// stream was reopened with UUID 0: a rollback to 0 and a full replay.
func TestFailoverLogFailureIsRetriedNotReplayed(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	cfg.Durability = "none" // its writes stand for the order system's, which a failover may lose
	s := openStore(t, cfg, func(s *Store) { s.feedOpts.reopenDelay = 50 * time.Millisecond })
	x := srv.VBucketOf("x")
	var early []string
	for i := range 3 {
		early = append(early, keyOn(srv, fmt.Sprintf("early%d-", i), x))
		put(t, s, order.Inbound, early[i])
	}
	sub := subscribe(t, s, "feed", watched, true)
	lost := keyOn(srv, "lost-", x)
	put(t, s, order.Inbound, lost)
	readUntil(t, sub, sawKeys(lost))
	require.NoError(t, sub.Close(ctxFor(t, 10*time.Second)))
	require.NoError(t, srv.Rollback("orders", x, srv.HighSeqno("orders", x)-1))
	srv.FailFailoverLogs("orders", x, 2)

	sub = subscribe(t, s, "feed", watched, false) // resumes: reads no failover log but the rollback's
	fresh := keyOn(srv, "fresh-", x)
	put(t, s, order.Inbound, fresh)
	for _, ev := range readUntil(t, sub, sawKeys(fresh)) {
		assert.NotContains(t, early, ev.Key, "no replay from the start")
	}
	for _, r := range srv.StreamRequests("orders", x) {
		assert.False(t, r.UUID == 0 && r.Start > 0, "a stream request with UUID 0: %+v", r)
	}
	assert.Equal(t, 1, rollbacks(srv, x))
}

// Defect 9: a stream request the server never answered left its vBucket
// unstreamed, with nothing logged.
func TestUnansweredStreamRequestIsSentAgain(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	x := srv.VBucketOf("late")
	srv.IgnoreStreamRequests("orders", x, 1)
	// By default a stream request may go unanswered for cfg.Timeout.
	s := openStore(t, cfg, func(s *Store) { s.feedOpts.openTimeout = time.Second })
	sub := subscribe(t, s, "feed", watched, true)
	put(t, s, order.Inbound, "late")
	readUntil(t, sub, sawKeys("late"))
	reqs := srv.StreamRequests("orders", x)
	require.GreaterOrEqual(t, len(reqs), 2)
	assert.True(t, reqs[0].Ignored)
}

// openLogged is openStore with the store's log, at debug level, in the
// buffer it returns.
func openLogged(t *testing.T, cfg Config) (*Store, *syncbuf.Buffer) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	s, err := Open(context.Background(), cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s, logs
}

// Streams that fail are said once, not once a vBucket a try: a hung node's
// 341 streams asked again every 10s wrote 61,000 warnings an hour, and
// nothing said when they were back. Here 8 streams end, their requests go
// unanswered three times each: one warning (the first stream's end), the
// tries at debug level, and one line once every stream is open again.
func TestFailingStreamsAreSaidOnce(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s, logs := openLogged(t, cfg)
	s.feedOpts.openTimeout, s.feedOpts.reopenDelay = 200*time.Millisecond, 10*time.Millisecond
	sub := subscribe(t, s, "feed", watched, true)
	waitStreaming(t, sub, testVBuckets)
	for vb := range uint16(8) {
		srv.IgnoreStreamRequests("orders", vb, 3)
		require.Positive(t, srv.EndStream("orders", vb, cbtest.EndStateChanged), "vb %d streamed", vb)
	}
	waitForWithin(t, 2*time.Minute, func() (bool, string) {
		return len(logs.Lines("streams work again")) == 1, logs.String()
	})
	waitStreaming(t, sub, testVBuckets)
	assert.Len(t, logs.Lines("level=DEBUG", "stream request unanswered"), 8*3, "every unanswered request, at debug level")
	var warned []string
	for _, l := range logs.Lines("level=WARN") {
		if strings.Contains(l, "stream") {
			warned = append(warned, l)
		}
	}
	assert.Len(t, warned, 1, "one warning for the streams' failures: %v", warned)
	assert.Contains(t, logs.Lines("streams work again")[0], "level=INFO")
}

// Checkpoint saves that fail are said once, not once a pass (48 a minute
// while a node hung, each with three errors in full), and their end is
// said.
func TestFailingCheckpointSavesAreSaidOnce(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	s, logs := openLogged(t, cfg)
	s.feedOpts.opTimeout, s.feedOpts.flushEvery = 200*time.Millisecond, 20*time.Millisecond
	sub := subscribe(t, s, "feed", watched, true)
	keys := putOnEveryVBucket(t, s, srv)
	readUntil(t, sub, sawKeys(keys...))
	srv.HangNode(2)
	t.Cleanup(func() { srv.ResumeNode(2) })
	waitForWithin(t, 2*time.Minute, func() (bool, string) {
		n := len(logs.Lines("level=DEBUG", "save a checkpoint"))
		return n >= 20, fmt.Sprintf("%d failed saves at debug level; log:\n%s", n, logs.String())
	})
	srv.ResumeNode(2)
	waitForWithin(t, 2*time.Minute, func() (bool, string) {
		return len(logs.Lines("checkpoint saves work again")) == 1, logs.String()
	})
	assert.Len(t, logs.Lines("level=WARN", "checkpoint"), 1, "one warning for the failed saves")
	assert.Contains(t, logs.Lines("checkpoint saves work again")[0], "level=INFO")
}

// heldOpen says whether sub's feed streams vb.
func heldOpen(sub store.Subscription, vb uint16) bool {
	f := sub.(*feed)
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.state[vb]
	return st.held && st.phase == phaseOpen
}

// waitHeld waits until sub's feed streams vb, or (want false) no longer
// holds it.
func waitHeld(t *testing.T, sub store.Subscription, vb uint16, want bool) {
	t.Helper()
	f := sub.(*feed)
	require.Eventually(t, func() bool {
		if want {
			return heldOpen(sub, vb)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		return !f.state[vb].held
	}, time.Minute, 10*time.Millisecond, "vb %d held: want %v", vb, want)
}

// With --from-now on members, every vBucket's start is written before any
// is claimed, so a vBucket claimed later starts where the service started;
// its claim used to read the end of that later moment, skipping what was
// written between (one whose first claim failed at start, here its
// failover log unreadable: a read is tried a few times, then Subscribe
// fails, as the fixed set of vBuckets does).
func TestFromNowMembersWriteEveryStartBeforeAnyClaim(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	writer := openStore(t, cfg)
	const vb = 5
	old := keyOn(srv, "before-", vb)
	put(t, writer, order.Inbound, old)
	srv.FailFailoverLogs("orders", vb, startTries) // as often as it is tried
	s := openStore(t, cfg, func(s *Store) { s.member = "a" })
	_, err := s.Subscribe(ctxFor(t, 30*time.Second), "feed", watched, store.FeedOptions{FromNow: true})
	require.ErrorContains(t, err, "vb 5", "a start that cannot be written fails the start")

	srv.FailFailoverLogs("orders", vb, 1) // a node warming up: tried again
	sub := subscribe(t, s, "feed", watched, true)
	for v := range uint16(testVBuckets) {
		p, ok := savedCheckpoint(srv, "feed", v)
		if assert.True(t, ok, "vb %d: its start is written before Subscribe returns", v) {
			assert.Equal(t, srv.HighSeqno("orders", v), p.Seq, "vb %d", v)
		}
	}
	early := keyOn(srv, "early-", vb)
	put(t, writer, order.Inbound, early)
	seen := readUntil(t, sub, sawKeys(early))
	assert.NotContains(t, eventKeys(seen), old, "from now: the history is not sent")
}

// A checkpoint document lost after a --from-now start (made without
// durability: a failover lost it) is streamed from the vBucket's
// beginning, not from its end at the claim, which skipped what was written
// between the loss and the claim.
func TestFromNowALostCheckpointIsStreamedFromTheBeginning(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	cfg.Durability = "none" // a failover can lose the metadata's writes
	writer := openStore(t, cfg)
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	sub := subscribe(t, a, "feed", watched, true)
	const v = 7
	require.NoError(t, srv.Rollback("metadata", srv.VBucketOf(checkpointKey("feed", v)), 0))
	k1 := keyOn(srv, "k1-", v)
	put(t, writer, order.Inbound, k1) // its checkpoint save is refused: the document is gone
	seen := readUntil(t, sub, sawKeys(k1))
	waitHeld(t, sub, v, false)
	k2 := keyOn(srv, "k2-", v)
	put(t, writer, order.Inbound, k2) // after the loss, before the claim again
	waitHeld(t, sub, v, true)
	k3 := keyOn(srv, "k3-", v)
	put(t, writer, order.Inbound, k3)
	seen = append(seen, readUntil(t, sub, sawKeys(k2, k3))...)
	assert.Contains(t, eventKeys(seen), k2)
}

// A vBucket's change of owner is written durably: a failover of the
// metadata bucket cannot lose a handover's write, which left the document
// naming the former owner (which no longer streams it and never looks at
// it again) and the new one refused for as long as the former lived: the
// vBucket streamed by nobody. The test server, as Couchbase, refuses to
// roll a vBucket back below a durable write.
func TestAHandoverIsWrittenSoThatAFailoverKeepsIt(t *testing.T) {
	for _, durability := range []string{"majority", "none"} {
		t.Run(durability, func(t *testing.T) {
			cfg, srv := fakeCluster(t, cbtest.Options{})
			cfg.Durability = durability
			a := openStore(t, cfg, func(s *Store) { s.member = "a" })
			subA := subscribe(t, a, "feed", watched, false)
			consume(t, "a", subA, &consumer{seen: map[string][]string{}})
			var v uint16
			for vb, o := range assignment([]string{"a", "b"}, testVBuckets) {
				if o == "b" {
					v = uint16(vb)
					break
				}
			}
			mvb := srv.VBucketOf(checkpointKey("feed", v))
			waitHeld(t, subA, v, true)
			before := srv.HighSeqno("metadata", mvb)

			b := openStore(t, cfg, func(s *Store) { s.member = "b" })
			subB := subscribe(t, b, "feed", watched, false)
			consume(t, "b", subB, &consumer{seen: map[string][]string{}})
			waitHeld(t, subB, v, true) // a released it, b claimed it
			err := srv.Rollback("metadata", mvb, before)
			if durability == "none" {
				assert.NoError(t, err, "the control: without durability a failover may lose the handover")
				return
			}
			assert.ErrorContains(t, err, "written durably", "the handover's writes survive any failover")
		})
	}
}

// --from-now writes the starts once, at the feed's first start: a
// checkpoint document lost later (made without durability, a failover
// lost it) and found missing at a restart is streamed from the
// beginning; written again at the end then, it skipped what came while
// nothing ran.
func TestFromNowARestartAfterALostCheckpointSkipsNothing(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	cfg.Durability = "none" // a failover can lose the metadata's writes
	writer := openStore(t, cfg)
	var v uint16 // a vBucket whose checkpoint's metadata vBucket holds neither feed's started mark
	for srv.VBucketOf(checkpointKey("feed", v)) == srv.VBucketOf(startedKey("feed")) ||
		srv.VBucketOf(checkpointKey("static", v)) == srv.VBucketOf(startedKey("static")) {
		v++
	}
	for _, name := range []string{"feed", "static"} {
		mcfg := cfg
		if name == "static" { // a fixed set of vBuckets: all of them
			mcfg.Instance, mcfg.Instances = 0, 1
		}
		s := openStore(t, mcfg)
		sub := subscribe(t, s, name, watched, true)
		require.NoError(t, sub.Close(ctxFor(t, 10*time.Second)))
		_, ok := savedCheckpoint(srv, name, v)
		require.True(t, ok, "%s: vb %d's start is written", name, v)
		require.NoError(t, srv.Rollback("metadata", srv.VBucketOf(checkpointKey(name, v)), 0))
		_, ok = savedCheckpoint(srv, name, v)
		require.False(t, ok, "%s: vb %d's checkpoint is lost", name, v)

		k := keyOn(srv, name+"-while-down-", v)
		put(t, writer, order.Inbound, k)
		again := subscribe(t, s, name, watched, true)
		readUntil(t, again, sawKeys(k))
		require.NoError(t, again.Close(ctxFor(t, 10*time.Second)))
	}
}

// A fixed set of vBuckets in two instances, --from-now from the first
// deployment: the first to start writes every vBucket's start, the other
// instance's too, so that the second, starting on the mark, starts where
// the service did and sends none of the history.
func TestFromNowStaticInstancesAllStartAtTheStart(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	writer := openStore(t, cfg)
	const v = 1 // instance 1 of 2's
	old := keyOn(srv, "old-", v)
	put(t, writer, order.Inbound, old) // written before the service ever ran

	c0, c1 := cfg, cfg
	c0.Instance, c0.Instances = 0, 2
	c1.Instance, c1.Instances = 1, 2
	subscribe(t, openStore(t, c0), "feed", watched, true)
	p, ok := savedCheckpoint(srv, "feed", v)
	require.True(t, ok, "the first instance wrote the other's start too")
	assert.Equal(t, srv.HighSeqno("orders", v), p.Seq)

	sub1 := subscribe(t, openStore(t, c1), "feed", watched, true)
	k := keyOn(srv, "new-", v)
	put(t, writer, order.Inbound, k)
	seen := readUntil(t, sub1, sawKeys(k))
	assert.NotContains(t, eventKeys(seen), old, "an order written before --from-now's first start is not sent")
}

// Two static instances starting at the same moment: B reads its
// checkpoints (none), A then writes every start and the mark, and B reads
// the mark: B reads its checkpoints again before it takes one for lost,
// which it used to stream from the beginning, history and all.
func TestFromNowStaticInstanceReadsAgainWhatWasWrittenBeforeTheMark(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	c0, c1 := cfg, cfg
	c0.Instance, c0.Instances = 0, 2
	c1.Instance, c1.Instances = 1, 2
	subscribe(t, openStore(t, c0), "feed", watched, true) // A: every start, then the mark
	b := openStore(t, c1)
	vbs := ownedVbuckets(c1, testVBuckets)
	saved := map[uint16]position{} // B's read, made before A wrote
	require.NoError(t, startStaticFromNow(ctxFor(t, 10*time.Second), nil, metaCheckpoints{b}, "feed", vbs, saved,
		feedOptions{}.withDefaults(), testLog))
	for _, vb := range vbs {
		p, ok := saved[vb]
		written, _ := savedCheckpoint(srv, "feed", vb)
		if assert.True(t, ok, "vb %d: the start A wrote is read", vb) {
			assert.Equal(t, written, p, "vb %d", vb)
		}
	}
}

// A feed stopped longer than the bucket's metadata purge interval finds
// the deletions past its checkpoint purged: the server rolls the stream
// back to 0, as Couchbase does, and the feed reads every change again
// from the vBucket's beginning, saying why.
func TestAFeedResumingPastPurgedDeletionsStartsOver(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	var logs syncbuf.Buffer
	s, err := Open(ctxFor(t, 20*time.Second), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	const v = 5
	old, gone := keyOn(srv, "old-", v), keyOn(srv, "gone-", v)
	put(t, s, order.Inbound, old)
	put(t, s, order.Inbound, gone)
	sub := subscribe(t, s, "feed", watched, false)
	readUntil(t, sub, sawKeys(old, gone))
	require.NoError(t, sub.Close(ctxFor(t, 10*time.Second)))
	from, _ := savedCheckpoint(srv, "feed", v)
	require.NotZero(t, from.Seq)

	// While it is stopped: a deletion, a new order, and compaction.
	require.NoError(t, s.Remove(ctxFor(t, 10*time.Second), order.Inbound, gone, 0))
	after := keyOn(srv, "after-", v)
	put(t, s, order.Inbound, after)
	purged, err := srv.PurgeTombstones("orders", v)
	require.NoError(t, err)
	require.Greater(t, purged, from.Seq)

	sub = subscribe(t, s, "feed", watched, false)
	seen := readUntil(t, sub, sawKeys(old, after))
	assert.NotContains(t, eventKeys(seen), gone, "its deletion was purged")
	assert.Equal(t, 1, rollbacks(srv, v))
	assert.Len(t, logs.Lines("rolls the stream back to the vBucket's beginning", fmt.Sprintf("vb=%d", v)), 1, "logs:\n%s", logs.String())
}

// A vBucket's failover log keeps its 25 newest entries, as Couchbase's
// does: a feed whose checkpoint is on a branch dropped from it is rolled
// back to 0 and reads every change again, saying why.
func TestAFeedOnABranchDroppedFromTheFailoverLogStartsOver(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	var logs syncbuf.Buffer
	s, err := Open(ctxFor(t, 20*time.Second), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	const v = 6
	old := keyOn(srv, "old-", v)
	put(t, s, order.Inbound, old)
	sub := subscribe(t, s, "feed", watched, false)
	readUntil(t, sub, sawKeys(old))
	require.NoError(t, sub.Close(ctxFor(t, 10*time.Second)))
	from, _ := savedCheckpoint(srv, "feed", v)
	require.NotZero(t, from.Seq)

	after := keyOn(srv, "after-", v)
	put(t, s, order.Inbound, after)
	for range 25 {
		require.NoError(t, srv.Failover("orders", v))
	}
	flog := srv.FailoverLog("orders", v)
	require.Len(t, flog, 25, "the newest 25 kept")
	for _, e := range flog {
		require.NotEqual(t, from.UUID, e.VBUUID, "the checkpoint's branch is dropped")
	}

	sub = subscribe(t, s, "feed", watched, false)
	readUntil(t, sub, sawKeys(old, after))
	assert.Equal(t, 1, rollbacks(srv, v))
	assert.Len(t, logs.Lines("rolls the stream back to the vBucket's beginning", fmt.Sprintf("vb=%d", v)), 1, "logs:\n%s", logs.String())
}

// A checkpoint document that is no checkpoint (edited by hand, written by
// something else) is taken for one lost, with a warning naming it: its
// vBucket is streamed from the beginning and the document written again.
// It failed every start of a static feed, and left its vBucket unclaimed
// by every member.
func TestAnUnreadableCheckpointIsTakenForALostOne(t *testing.T) {
	for _, mode := range []string{"static", "member"} {
		t.Run(mode, func(t *testing.T) {
			cfg, srv := fakeCluster(t, cbtest.Options{})
			writer := openStore(t, cfg)
			const v = 5
			k := keyOn(srv, "before-", v)
			put(t, writer, order.Inbound, k)
			_, err := writer.Upsert(ctxFor(t, 10*time.Second), store.Meta, checkpointKey("feed", v), []byte(`{"seq":"garbage"`))
			require.NoError(t, err)
			logs := &syncbuf.Buffer{}
			s := openStore(t, cfg, func(s *Store) {
				s.log = slog.New(slog.NewTextHandler(logs, nil))
				if mode == "member" {
					s.member = "a"
				}
			})
			sub := subscribe(t, s, "feed", watched, false)
			readUntil(t, sub, sawKeys(k))
			assert.Contains(t, logs.String(), "a checkpoint document is unreadable", logs.String())
			assert.Contains(t, logs.String(), checkpointKey("feed", v))
			require.Eventually(t, func() bool { _, ok := savedCheckpoint(srv, "feed", v); return ok }, 30*time.Second, 10*time.Millisecond,
				"the document was not written again")
		})
	}
}
