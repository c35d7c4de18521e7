package couchbase

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Defect 10: a write whose answer timed out was reported as "unavailable,
// retry", and the retry failed with exists or CAS mismatch when the first
// one had been made. Apply now reads the document back.
func TestAmbiguousWriteIsResolvedByReadingItBack(t *testing.T) {
	for _, tt := range []struct {
		name string
		lose bool // the server drops the request instead of making it late
	}{
		{"MadeLate", false},
		{"Lost", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, srv := fakeCluster(t, cbtest.Options{})
			cfg.Timeout = time.Second // how long the write waits on the hung node
			ambiguous := make(chan store.Write, 10)
			s := openStore(t, cfg, func(s *Store) { s.onAmbiguous = func(w store.Write) { ambiguous <- w } })
			ctx := ctxFor(t, 30*time.Second)
			cas, err := s.Insert(ctx, order.Retry, "amb", []byte(`{"attempt":1}`))
			require.NoError(t, err)

			srv.HangNode(0)
			t.Cleanup(func() { srv.ResumeNode(0) })
			type result struct {
				cas []uint64
				err error
			}
			done := make(chan result, 1)
			go func() {
				c, err := s.Apply(ctx, []store.Write{
					{Op: store.OpReplace, Collection: order.Retry, Key: "amb", Value: []byte(`{"attempt":2}`), CAS: cas},
					{Op: store.OpInsert, Collection: order.DeadLetter, Key: "amb", Value: []byte(`{"reason":"x"}`)},
				})
				done <- result{c, err}
			}()
			select {
			case w := <-ambiguous:
				assert.Equal(t, store.OpReplace, w.Op)
			case r := <-done:
				t.Fatalf("Apply returned before its write timed out: %v", r.err)
			case <-ctx.Done():
				t.Fatal("the write did not time out")
			}
			if tt.lose {
				srv.DropConnections() // the request waiting on the hung node goes with its connection
			}
			srv.ResumeNode(0)
			r := <-done
			require.NoError(t, r.err)
			st, err := s.State(ctx, "amb")
			require.NoError(t, err)
			assert.JSONEq(t, `{"attempt":2}`, string(st.Retry.Value))
			assert.Equal(t, st.Retry.CAS, r.cas[0], "the CAS of the write made")
			assert.True(t, st.DeadLetter.Found(), "Apply went on with the next write")
		})
	}
}

// A write whose caller's context ends after it was sent is made all the
// same when the server gets to it (gocb says "request canceled"): the
// caller is told it was made, with its CAS, and not that it failed;
// one the server never makes is reported failed.
func TestAWriteCutOffByItsContextIsReadBack(t *testing.T) {
	for _, tt := range []struct {
		name string
		lose bool
	}{
		{"Made", false},
		{"Lost", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, srv := fakeCluster(t, cbtest.Options{})
			s := openStore(t, cfg)
			bg := ctxFor(t, 30*time.Second)
			cas, err := s.Insert(bg, order.Retry, "cut", []byte(`{"attempt":1}`))
			require.NoError(t, err)

			srv.HangNode(0)
			t.Cleanup(func() { srv.ResumeNode(0) })
			ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
			defer cancel()
			go func() {
				<-ctx.Done() // the caller has given up: the server answers now
				if tt.lose {
					srv.DropConnections()
				}
				srv.ResumeNode(0)
			}()
			newCAS, err := s.Replace(ctx, order.Retry, "cut", []byte(`{"attempt":2}`), cas)
			d, gerr := s.Get(bg, order.Retry, "cut")
			require.NoError(t, gerr)
			if tt.lose {
				require.Error(t, err)
				assert.JSONEq(t, `{"attempt":1}`, string(d.Value), "not made: reported failed")
				return
			}
			require.NoError(t, err, "made: the caller is told so")
			assert.JSONEq(t, `{"attempt":2}`, string(d.Value))
			assert.Equal(t, d.CAS, newCAS, "the CAS of the write made")
		})
	}
}

func TestAmbiguousWriteOutcomes(t *testing.T) {
	t.Parallel()
	v1, v2 := []byte(`{"v":1}`), []byte(`{"v":2}`)
	doc := func(v []byte, cas uint64) store.Doc { return store.Doc{Key: "k", Value: v, CAS: cas} }
	tests := []struct {
		name string
		give store.Write
		now  store.Doc // the document read back; zero: missing
		want outcome
	}{
		{"insert made", store.Write{Op: store.OpInsert, Value: v1}, doc(v1, 5), outcomeMade},
		{"insert not made", store.Write{Op: store.OpInsert, Value: v1}, store.Doc{}, outcomeNotMade},
		{"insert beaten", store.Write{Op: store.OpInsert, Value: v1}, doc(v2, 5), outcomeGuardFailed},
		{"upsert made", store.Write{Op: store.OpUpsert, Value: v1}, doc(v1, 5), outcomeMade},
		{"upsert not made", store.Write{Op: store.OpUpsert, Value: v1}, doc(v2, 5), outcomeNotMade},
		{"replace made", store.Write{Op: store.OpReplace, Value: v2, CAS: 4}, doc(v2, 5), outcomeMade},
		{"replace not made", store.Write{Op: store.OpReplace, Value: v2, CAS: 4}, doc(v1, 4), outcomeNotMade},
		{"replace beaten", store.Write{Op: store.OpReplace, Value: v2, CAS: 4}, doc(v1, 6), outcomeGuardFailed},
		{"replace of a removed doc", store.Write{Op: store.OpReplace, Value: v2, CAS: 4}, store.Doc{}, outcomeGuardFailed},
		{"remove made", store.Write{Op: store.OpRemove, CAS: 4}, store.Doc{}, outcomeMade},
		{"remove not made", store.Write{Op: store.OpRemove, CAS: 4}, doc(v1, 4), outcomeNotMade},
		{"remove beaten", store.Write{Op: store.OpRemove, CAS: 4}, doc(v1, 6), outcomeGuardFailed},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, judge(tt.give, tt.now), tt.name)
	}
}

// Defect 14: the feed's streams, lag and counters for the metrics.
func TestFeedStats(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	s := openStore(t, cfg, func(s *Store) {
		s.feedOpts.statsEvery = 20 * time.Millisecond
		s.feedOpts.reopenDelay = 20 * time.Millisecond
	})
	sub := subscribe(t, s, "feed", watched, true)
	stats := sub.(interface{ Stats() FeedStats }).Stats
	st := stats()
	assert.Equal(t, testVBuckets, st.VBuckets)
	assert.Equal(t, testVBuckets, st.StreamsOpen)
	assert.Equal(t, uint64(testVBuckets), st.Claimed, "a lone member claims every vBucket")
	assert.Equal(t, s.member, st.Member)
	if assert.Len(t, st.Members, 1) {
		assert.Equal(t, s.member, st.Members[0].Name)
		assert.True(t, st.Members[0].Live)
	}

	x := srv.VBucketOf("x")
	var keys []string
	for i := range 3 {
		keys = append(keys, keyOn(srv, fmt.Sprintf("lag%d-", i), x))
		put(t, s, order.Inbound, keys[i])
	}
	ctx := ctxFor(t, 20*time.Second)
	var held []store.Event
	for len(held) < 3 {
		ev, err := sub.Next(ctx)
		require.NoError(t, err)
		held = append(held, ev) // not acknowledged: the checkpoint lags
	}
	// Each wait is required: the ones after it measure from what it waited
	// for (a lag that never reached 3 would make "back to 0" no news; a
	// stream never reopened, "no rollback" none either).
	require.Eventually(t, func() bool { st := stats(); return st.Lag == 3 && st.MaxLag == 3 }, 10*time.Second, 10*time.Millisecond,
		"lag 3 and max lag 3 for 3 unacknowledged events; last: %v",
		later.Value(func() any { st := stats(); return fmt.Sprintf("lag %d, max lag %d", st.Lag, st.MaxLag) }))
	for _, ev := range held {
		ev.Ack()
	}
	require.Eventually(t, func() bool { return stats().Lag == 0 }, 10*time.Second, 10*time.Millisecond,
		"lag back to 0 once all acknowledged; last lag %v", later.Value(func() any { return stats().Lag }))

	require.Equal(t, 1, srv.EndStream("orders", x, cbtest.EndStateChanged))
	require.Eventually(t, func() bool { st := stats(); return st.Reopens == 1 && st.StreamsOpen == testVBuckets },
		10*time.Second, 10*time.Millisecond, "the ended stream reopened: want reopens 1, streams open %d; last: %v", testVBuckets,
		later.Value(func() any {
			st := stats()
			return fmt.Sprintf("reopens %d, streams open %d", st.Reopens, st.StreamsOpen)
		}))
	assert.Zero(t, stats().Rollbacks)
	assert.Zero(t, stats().CheckpointSaveFailures)
}

// The lag counts what the feed has not done of its own collections. The
// watcher writes an attempt record (collection attempts, off the feed)
// after every outcome, in the order's vBucket, and attempt records expire
// and dead letters are purged in bulk: a real server streams the feed
// nothing for those writes, so a lag measured against the whole vBucket's
// high seqno never came back to 0.
func TestFeedLagIgnoresWritesToOtherCollections(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	// The test reads the high seqnos itself, once everything is written.
	s := openStore(t, cfg, func(s *Store) { s.feedOpts.statsEvery = time.Hour })
	sub := subscribe(t, s, "feed", watched, true)
	var keys []string
	for i := range 5 {
		k := fmt.Sprintf("order-%d", i)
		keys = append(keys, k)
		put(t, s, order.Inbound, k)
		put(t, s, order.Attempts, k) // after its outcome, as the watcher writes it
	}
	for i := range 30 {
		put(t, s, order.Attempts, fmt.Sprintf("old-%d", i))
	}
	readUntil(t, sub, sawKeys(keys...)) // each acknowledged
	require.NoError(t, sub.(*feed).readHighs(ctxFor(t, 10*time.Second)))

	lagGone := assert.Eventually(t, func() bool { return stats(sub).Lag == 0 }, 20*time.Second, 10*time.Millisecond)
	st := stats(sub)
	vb := srv.VBucketOf(keys[0])
	require.True(t, lagGone, "lag %d (at most %d on one vBucket) with every change of %v acknowledged; "+
		"vb %d of %s is at seqno %d", st.Lag, st.MaxLag, watched, vb, keys[0], srv.HighSeqno("orders", vb))
}

// Defect 14: Counts and Backlog answer from a reading younger than
// CountsTTL, so that a metrics scrape does not query each time; the paid
// and confirmed orders, whose count goes over an index entry for every
// paid order, from one younger than OrderCountsTTL.
func TestCountsAndBacklogAreCachedForTheirTTL(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := openStore(t, cfg, func(s *Store) { s.now = clock })
	require.Equal(t, 5*time.Second, s.cfg.CountsTTL)
	require.Equal(t, time.Minute, s.cfg.OrderCountsTTL)
	ctx := ctxFor(t, 20*time.Second)

	t0 := clock()
	c0, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, t0, c0.OrdersCountedAt)
	b0, err := s.Backlog(ctx, time.Now(), 15*time.Second)
	require.NoError(t, err)
	_, err = s.Insert(ctx, order.Inbound, "o1", []byte(`{"paymentStatus":"paid"}`))
	require.NoError(t, err)
	_, err = s.Insert(ctx, order.Retry, "o1", []byte(`{"docId":"o1","attempt":1,"ts":1,"fireRetry":true}`))
	require.NoError(t, err)

	advance(4 * time.Second)
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, c0, c, "within the TTL: the last reading")
	flagged, err := s.FlaggedRetries(ctx)
	require.NoError(t, err)
	assert.Equal(t, c0.RetryFlagged+1, flagged, "the sweep's count of the flagged is read afresh")
	b, err := s.Backlog(ctx, time.Now(), 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, b0, b)

	advance(2 * time.Second)
	c, err = s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, c0.RetryDocs+1, c.RetryDocs, "past the TTL: read again")
	assert.Equal(t, c0.RetryFlagged+1, c.RetryFlagged)
	assert.Equal(t, c0.OrdersPaid, c.OrdersPaid, "the orders are counted apart, at most every OrderCountsTTL")
	assert.Equal(t, t0, c.OrdersCountedAt, "and say when they were")
	b, err = s.Backlog(ctx, time.Now(), 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, b0.Due+1, b.Due)

	advance(54 * time.Second)
	c, err = s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, t0, c.OrdersCountedAt, "past OrderCountsTTL: the last count at once, the next made meanwhile")
	var last atomic.Value
	require.Eventually(t, func() bool {
		c, err := s.Counts(ctx)
		last.Store(fmt.Sprint(c, err))
		return err == nil && c.OrdersCountedAt.Equal(t0.Add(time.Minute))
	}, 20*time.Second, 10*time.Millisecond, "the next count: %v", later.Value(func() any { return last.Load() }))
	c, err = s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, c0.OrdersPaid+1, c.OrdersPaid, "counted again")
	assert.Equal(t, c0.OrdersConfirmed, c.OrdersConfirmed)
}

// The orders are counted apart from the caller's deadline: on millions
// of paid orders a count may outlast the metrics' refresh (5s), and cut
// off at each refresh it was never made; a failed refresh also threw the
// cheap figures away. A caller that gives up leaves the count going on
// for the next; past the TTL callers get the last count at once while the
// next is made; one count at a time; stop ends the one under way.
func TestOrderCountsOutlastTheirCaller(t *testing.T) {
	t.Parallel()
	var b bgCount
	var mu sync.Mutex
	now := time.Unix(100, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	var reads atomic.Int32
	release := make(chan struct{})
	read := func(ctx context.Context) (orderCounts, error) {
		n := reads.Add(1)
		select {
		case <-release:
			return orderCounts{Paid: int(n), at: clock()}, nil
		case <-ctx.Done():
			return orderCounts{}, ctx.Err()
		}
	}
	answer := func() {
		select {
		case release <- struct{}{}:
		case <-time.After(10 * time.Second):
			t.Error("no count waits for its answer")
		}
	}
	short, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := b.get(short, clock, time.Minute, read, quietLog)
	require.ErrorIs(t, err, context.Canceled)
	assert.ErrorContains(t, err, "the count goes on")
	_, err = b.get(short, clock, time.Minute, read, quietLog)
	require.Error(t, err)
	answer()
	ctx := ctxFor(t, 20*time.Second)
	o, err := b.get(ctx, clock, time.Minute, read, quietLog)
	require.NoError(t, err)
	assert.Equal(t, 1, o.Paid, "the count the first caller started")
	assert.EqualValues(t, 1, reads.Load(), "one count for three callers")

	advance(2 * time.Minute)
	o, err = b.get(short, clock, time.Minute, read, quietLog)
	require.NoError(t, err, "past the TTL: the last count, even for a caller out of time")
	assert.Equal(t, 1, o.Paid)
	o, err = b.get(short, clock, time.Minute, read, quietLog)
	require.NoError(t, err)
	assert.Equal(t, 1, o.Paid, "while the next is made")
	answer()
	require.Eventually(t, func() bool {
		o, err := b.get(ctx, clock, time.Minute, read, quietLog)
		return err == nil && o.Paid == 2
	}, 20*time.Second, time.Millisecond)
	assert.EqualValues(t, 2, reads.Load())

	advance(2 * time.Minute)
	_, err = b.get(ctx, clock, time.Minute, read, quietLog) // starts a third, which never ends by itself
	require.NoError(t, err)
	b.stop()
	assert.EqualValues(t, 3, reads.Load())
	b.mu.Lock()
	defer b.mu.Unlock()
	assert.ErrorIs(t, b.err, context.Canceled, "stop ended the count under way")
}

func TestTTLCache(t *testing.T) {
	t.Parallel()
	c := newTTLCache[int]()
	ctx := context.Background()
	reads := 0
	read := func() (int, error) { reads++; return reads, nil }
	t0 := time.Unix(100, 0)
	for _, tt := range []struct {
		at   time.Duration
		ttl  time.Duration
		key  string
		want int
	}{
		{0, 5 * time.Second, "a", 1},
		{4 * time.Second, 5 * time.Second, "a", 1},
		{4 * time.Second, 5 * time.Second, "b", 2}, // another key
		{9 * time.Second, 5 * time.Second, "b", 3}, // expired
		{9 * time.Second, -1, "b", 4},              // off
	} {
		got, err := c.get(ctx, func() time.Time { return t0.Add(tt.at) }, tt.ttl, tt.key, read)
		require.NoError(t, err)
		assert.Equal(t, tt.want, got, "%+v", tt)
	}
	_, err := c.get(ctx, func() time.Time { return t0 }, time.Second, "x", func() (int, error) { return 0, errors.New("boom") })
	assert.Error(t, err, "errors are not cached")
}

// A caller that waited while another read gets that reading: the time it
// compares is taken once its turn has come (the cache's semaphore held),
// not when it asked, which could be before the other's reading (and so
// read again right after it).
func TestTTLCacheTakesTheTimeOnItsTurn(t *testing.T) {
	t.Parallel()
	c := newTTLCache[int]()
	var outOfTurn atomic.Int64
	clock := func() time.Time {
		if len(c.sem) != 1 {
			outOfTurn.Add(1)
		}
		return time.Unix(100, 0)
	}
	for range 3 {
		_, err := c.get(context.Background(), clock, time.Second, "", func() (int, error) { return 1, nil })
		require.NoError(t, err)
	}
	assert.Zero(t, outOfTurn.Load(), "times taken before the caller's turn")
}

// Defect 15: setup names the role it lacks, for the cluster's edition.
func TestSetupNamesTheMissingRole(t *testing.T) {
	t.Parallel()
	cfg := Config{Username: "om", Bucket: "orders", MetadataBucket: "metadata"}
	forbidden := fmt.Errorf("create bucket: %w", &gocb.HTTPError{InnerError: errors.New("http error"),
		ErrorText: `{"message":"Forbidden. User needs the following permissions","permissions":["cluster.buckets!create"]}`})
	tests := []struct {
		edition string
		step    setupStep
		want    []string
		not     []string
	}{
		{editionEnterprise, stepBuckets, []string{"Cluster Admin (cluster_admin)", "Enterprise"}, []string{"only Community"}},
		{editionEnterprise, stepCollections, []string{"scope_admin[orders]", "bucket_admin[orders]"}, nil},
		{editionEnterprise, stepIndexes, []string{"query_manage_index[orders]"}, nil},
		{editionCommunity, stepBuckets, []string{"Full Admin (admin)", "only Community Edition role"}, []string{"cluster_admin"}},
		{editionCommunity, stepIndexes, []string{"bucket_full_access[orders]"}, []string{"query_manage_index"}},
		{editionUnknown, stepBuckets, []string{"cluster_admin", "Full Admin (admin), the only Community"}, nil},
	}
	for _, tt := range tests {
		err := errRights(cfg, tt.edition, tt.step, "create bucket orders", forbidden)
		msg := err.Error()
		assert.Contains(t, msg, `user "om" lacks the rights`)
		for _, w := range tt.want {
			assert.Contains(t, msg, w, "%s %d", tt.edition, tt.step)
		}
		for _, n := range tt.not {
			assert.NotContains(t, msg, n, "%s %d", tt.edition, tt.step)
		}
		assert.ErrorIs(t, err, forbidden)
	}
	other := errRights(cfg, editionEnterprise, stepBuckets, "create bucket orders", errors.New("disk full"))
	assert.False(t, strings.Contains(other.Error(), "lacks the rights"), "only refusals are about rights")

	// Logged in by a client certificate, there is no username to name.
	certCfg := Config{CertFile: "/run/secrets/cb.pem", Bucket: "orders", MetadataBucket: "metadata"}
	msg := errRights(certCfg, editionEnterprise, stepConnect, "reach the cluster", forbidden).Error()
	assert.Contains(t, msg, "the user /run/secrets/cb.pem (--cb-cert-file) maps to lacks the rights")
	assert.Contains(t, msg, "does the cluster map /run/secrets/cb.pem (--cb-cert-file) to one of its users?")
	assert.NotContains(t, msg, "username")
}

func TestClusterEdition(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	assert.Equal(t, editionEnterprise, clusterEdition(ctxFor(t, 10*time.Second), s.cluster), "cbtest says 7.6.2-0000-enterprise")
}

// A sweep UPDATE writes each due retry by the CAS it read. One written or
// removed by someone else meanwhile (a re-paid order, a redrive) fails
// alone, with a 12009 error after the others' results: the sweep flagged
// the others and is no failure (a failed sweep is counted, and three in a
// row give up the sweep lease), and that retry is read again by the next
// batch or tick, which flags it if it is still due.
func TestSweepGoesOnPastARetryWrittenUnderIt(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := ctxFor(t, 30*time.Second)
	now := time.Now()
	const limit = exactSweep + 4 // flagged by the UPDATE, not one by one
	flagged := func(key string) bool {
		v, _, _, ok := srv.Doc("orders", "_default", order.Retry, key)
		return ok && strings.Contains(string(v), `"fireRetry":true`)
	}
	tests := []struct {
		name       string
		remove     bool
		wantFirst  store.SweepResult
		wantSecond store.SweepResult
	}{
		{"written", false, store.SweepResult{Flagged: limit - 1, More: true}, store.SweepResult{Flagged: 1}},
		{"removed", true, store.SweepResult{Flagged: limit - 1, More: true}, store.SweepResult{}},
	}
	for _, tt := range tests {
		var keys []string
		for i := range limit {
			k := fmt.Sprintf("%s-%02d", tt.name, i)
			keys = append(keys, k)
			_, err := s.Insert(ctx, order.Retry, k, order.RetryDoc{DocID: k, Attempt: 1, TS: 1,
				NextAttemptAt: now.Add(-time.Minute).UnixMilli(), LastStatus: 503}.Encode())
			require.NoError(t, err)
		}
		changed := keys[5]
		srv.ConflictOnUpdate("orders", "_default", order.Retry, changed, tt.remove)

		res, err := s.SweepRetries(ctx, now, 15*time.Second, limit)
		require.NoError(t, err, "%s: a retry %s under the sweep failed the sweep", tt.name, tt.name)
		assert.Equal(t, tt.wantFirst, res, "%s: the others are flagged, and the batch was full", tt.name)
		for _, k := range keys {
			assert.Equal(t, k != changed, flagged(k), "%s: %s flagged", tt.name, k)
		}

		res, err = s.SweepRetries(ctx, now, 15*time.Second, limit)
		require.NoError(t, err, tt.name)
		assert.Equal(t, tt.wantSecond, res, "%s: the next pass", tt.name)
		if !tt.remove {
			assert.True(t, flagged(changed), "%s: the next pass flags %s, still due", tt.name, changed)
		}
	}
}

// The probe (a sweep of one, the oldest due first) flags the oldest due
// retry even when it is one a KV write does not edit byte for byte (a field
// twice), or one Go's decoder reads otherwise than the query that named it
// (a name in another case): by the sweep's statement, as a
// full sweep would. Left unflagged it stayed every probe's oldest, and no
// probe went out.
func TestTheProbeFlagsAnOldestRetryItCannotEditByKV(t *testing.T) {
	now := time.Now()
	long := now.Add(-time.Hour).UnixMilli()
	for _, odd := range []string{
		fmt.Sprintf(`{"docId":"odd","attempt":1,"attempt":2,"ts":1,"nextAttemptAt":%d}`, long),
		`{"docId":"odd","attempt":1,"ts":1000,"FireRetry":true}`,
		`{"docId":"odd","attempt":1,"ts":1000,"NextAttemptAt":99999999999999}`,
		// (fireRetry twice is not here: the test server's UPDATE keeps both
		// and adds a third, where a query service rewrites the document
		// whole.)
	} {
		t.Run(odd, func(t *testing.T) {
			cfg, srv := fakeCluster(t, cbtest.Options{})
			s := openStore(t, cfg)
			ctx := ctxFor(t, 30*time.Second)
			_, err := s.Upsert(ctx, order.Retry, "odd", []byte(odd))
			require.NoError(t, err)
			_, err = s.Insert(ctx, order.Retry, "later", order.RetryDoc{DocID: "later", Attempt: 1, TS: 1,
				NextAttemptAt: now.Add(-time.Minute).UnixMilli()}.Encode())
			require.NoError(t, err)

			res, err := s.SweepRetries(ctx, now, 15*time.Second, 1)
			require.NoError(t, err)
			assert.Equal(t, 1, res.Flagged)
			v, _, _, _ := srv.Doc("orders", "_default", order.Retry, "odd")
			assert.Contains(t, string(v), `"fireRetry":true`, "the oldest is flagged")
			res, err = s.SweepRetries(ctx, now, 15*time.Second, 1)
			require.NoError(t, err)
			assert.Equal(t, 1, res.Flagged, "the next probe takes the next one")
			v, _, _, _ = srv.Doc("orders", "_default", order.Retry, "later")
			assert.Contains(t, string(v), `"fireRetry":true`)
		})
	}
}

// The order system may give its orders an expiry (a retention policy):
// marking one confirmed, a replace that sets none, keeps it, and a write
// that sets one still sets it. A plain replace made the order live for
// ever.
func TestAReplaceKeepsTheDocumentsExpiry(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	cfg, srv := fakeCluster(t, cbtest.Options{Clock: clock})
	s := openStore(t, cfg)
	ctx := ctxFor(t, 30*time.Second)
	res, err := s.colls[order.Inbound].Insert("o1", []byte(`{"paymentStatus":"paid"}`),
		&gocb.InsertOptions{Context: ctx, Expiry: time.Hour})
	require.NoError(t, err)
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Inbound, Key: "o1",
		Value: []byte(`{"paymentStatus":"paid","confirmationEmailSent":true}`), CAS: uint64(res.Cas())}})
	require.NoError(t, err)
	// The mark after a send: a sub-document write, which keeps it too.
	res, err = s.colls[order.Inbound].Insert("o3", []byte(`{"paymentStatus":"paid"}`),
		&gocb.InsertOptions{Context: ctx, Expiry: time.Hour})
	require.NoError(t, err)
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Inbound, Key: "o3",
		Value: []byte(`{"paymentStatus":"paid","confirmationEmailSent":true}`), CAS: uint64(res.Cas()), Sent: "confirmation:o3@1"}})
	require.NoError(t, err)
	res, err = s.colls[order.Inbound].Insert("o2", []byte(`{"paymentStatus":"paid"}`), &gocb.InsertOptions{Context: ctx})
	require.NoError(t, err)
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Inbound, Key: "o2",
		Value: []byte(`{"paymentStatus":"paid","confirmationEmailSent":true}`), CAS: uint64(res.Cas()), Expiry: clock().Add(time.Hour)}})
	require.NoError(t, err)

	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	srv.ExpireNow()
	for _, k := range []string{"o1", "o2", "o3"} {
		_, err = s.Get(ctx, order.Inbound, k)
		assert.ErrorIs(t, err, store.ErrNotFound, k)
	}
}

// An outcome is written durably: acknowledged by the active node alone, a
// retry written after a failed send was lost in a failover to a replica
// that had not received it, and the feed, past the order's event, never
// brought the order back (a paid order never confirmed). The test server
// refuses to roll a vBucket back below a durable write, as no failover
// loses one; written with --cb-durability none, the same retry is lost.
func TestAnOutcomeIsWrittenSoThatAFailoverKeepsIt(t *testing.T) {
	for _, c := range []struct {
		durability string
		kept       bool
	}{{"", true}, {"none", false}} {
		t.Run("durability "+c.durability, func(t *testing.T) {
			cfg, srv := fakeCluster(t, cbtest.Options{})
			cfg.Durability = c.durability
			s := openStore(t, cfg)
			ctx := ctxFor(t, 20*time.Second)
			x := srv.VBucketOf("x")
			k := keyOn(srv, "ord-", x)
			put(t, s, order.Inbound, k) // the order system's write
			before := srv.HighSeqno("orders", x)
			_, err := s.Apply(ctx, []store.Write{{Op: store.OpInsert, Collection: order.Retry, Key: k, Value: []byte(`{"attempt":1,"nextAttemptAt":1}`)}})
			require.NoError(t, err)

			err = srv.Rollback("orders", x, before) // the active node dies; a replica takes over
			if c.kept {
				require.Error(t, err, "a failover may lose the retry")
			} else {
				require.NoError(t, err)
			}
			_, err = s.Get(ctx, order.Retry, k)
			if c.kept {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, store.ErrNotFound)
			}

			// The mark after a send (a sub-document write) likewise.
			d, err := s.Get(ctx, order.Inbound, k)
			require.NoError(t, err)
			before = srv.HighSeqno("orders", x)
			_, err = s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Inbound, Key: k,
				Value: []byte(`{"paymentStatus":"paid","confirmationEmailSent":true}`), CAS: d.CAS, Sent: "confirmation:" + k + "@1"}})
			require.NoError(t, err)
			err = srv.Rollback("orders", x, before)
			if c.kept {
				require.Error(t, err, "a failover may lose the mark")
			} else {
				require.NoError(t, err)
			}
		})
	}
}

// A durable write that the replicas did not confirm in time is answered
// "ambiguous": it may have been made. It is read back, as after a timeout:
// made, it stands (not written again, which would fail its guard).
func TestAnAmbiguousDurableWriteIsReadBack(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	ambiguous := make(chan store.Write, 4)
	s := openStore(t, cfg, func(s *Store) { s.onAmbiguous = func(w store.Write) { ambiguous <- w } })
	ctx := ctxFor(t, 20*time.Second)
	k := keyOn(srv, "ord-", srv.VBucketOf("x"))
	srv.AnswerDurableWritesAmbiguous("orders", srv.VBucketOf(k), 1)
	cas, err := s.Apply(ctx, []store.Write{{Op: store.OpInsert, Collection: order.Retry, Key: k, Value: []byte(`{"attempt":1,"nextAttemptAt":1}`)}})
	require.NoError(t, err, "made, the insert is not made again (which would fail: exists)")
	require.Len(t, ambiguous, 1, "the answer was ambiguous")
	d, err := s.Get(ctx, order.Retry, k)
	require.NoError(t, err)
	assert.Equal(t, d.CAS, cas[0])
}

// A durability the cluster cannot meet now: at start (a one-node cluster
// whose bucket has replicas) it is said, and the store opens all the same
// (a command that reads must run in an incident); during a failover not
// yet rebalanced, an outcome is written without it, on the active copy
// there are allow, and durably again once it can be. Taken for a failure
// of the write's own, it was dead-lettered (refused too) and its event
// acknowledged, its order lost; waited out, it held every worker until
// the rebalance.
func TestADurabilityTheClusterCannotMeetNowIsWrittenWithout(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{DurabilityImpossible: true})
	var logs syncbuf.Buffer
	s, err := Open(ctxFor(t, 20*time.Second), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	assert.Contains(t, logs.String(), "--cb-durability majority cannot be met on bucket orders now")

	ctx := ctxFor(t, 20*time.Second)
	x := srv.VBucketOf("x")
	write := func(key string) uint64 {
		t.Helper()
		before := srv.HighSeqno("orders", x)
		_, err := s.Apply(ctx, []store.Write{{Op: store.OpInsert, Collection: order.Retry, Key: keyOn(srv, key, x), Value: []byte(`{"attempt":1,"nextAttemptAt":1}`)}})
		require.NoError(t, err)
		return before
	}
	before := write("a-")
	write("b-")
	assert.Equal(t, 1, strings.Count(logs.String(), "cannot be met on a vBucket now"), "said once a minute, not at each write")
	require.NoError(t, srv.Rollback("orders", x, before), "written without durability: a failover may lose it")
	assert.EqualValues(t, 2, s.WritesWithoutDurability(), "counted (a metric)")

	srv.SetDurabilityImpossible(false) // rebalanced
	before = write("c-")
	require.Error(t, srv.Rollback("orders", x, before), "durable again")
	assert.EqualValues(t, 2, s.WritesWithoutDurability())
}

// A level the bucket does not have at all (a persisting one on an
// ephemeral bucket) could never write an outcome: the start fails, naming
// the setting.
func TestADurabilityTheBucketDoesNotHaveFailsTheStart(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{MajorityOnly: true})
	cfg.Durability = "persistToMajority"
	_, err := Open(ctxFor(t, 20*time.Second), cfg, testLog)
	require.Error(t, err)
	assert.ErrorContains(t, err, "cb-durability persistToMajority: bucket orders does not support it")
	cfg.Durability = "majority"
	s := openStore(t, cfg)
	_, err = s.Apply(ctxFor(t, 20*time.Second), []store.Write{{Op: store.OpUpsert, Collection: order.Retry, Key: "r", Value: []byte(`{}`)}})
	assert.NoError(t, err)

	// Where the probe got no answer at start, the writes find out: each
	// is waited out (unavailable), never given up as a failure of its own.
	s.cfg.Durability = "persistToMajority"
	_, err = s.Apply(ctxFor(t, 20*time.Second), []store.Write{{Op: store.OpUpsert, Collection: order.Retry, Key: "r", Value: []byte(`{}`)}})
	require.ErrorIs(t, err, store.ErrUnavailable)
	assert.ErrorContains(t, err, "--cb-durability is a level the bucket does not support")
}

// The metadata bucket takes the level too (a vBucket's change of owner is
// written durably): one it does not have fails the start as well. It used
// to start and stream nothing, every claim refused.
func TestADurabilityTheMetadataBucketDoesNotHaveFailsTheStart(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{MajorityOnlyBuckets: []string{"metadata"}})
	cfg.Durability = "persistToMajority"
	_, err := Open(ctxFor(t, 20*time.Second), cfg, testLog)
	require.Error(t, err)
	assert.ErrorContains(t, err, "cb-durability persistToMajority: bucket metadata does not support it")

	// A fixed set of vBuckets writes nothing there durably: it starts, and
	// streams, from now too.
	cfg.Instance, cfg.Instances = 0, 2 // the other instance's starts written too
	subscribe(t, openStore(t, cfg), "static", watched, true)
}

// A durable write answered ambiguous and not made (the active node
// aborted it, its replicas too slow: Couchbase's usual case) is read
// back, found not made, and written again: an insert, a guarded replace
// and a guarded remove each end made once.
func TestAnAmbiguousDurableWriteNotMadeIsWrittenAgain(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	ambiguous := make(chan store.Write, 8)
	s := openStore(t, cfg, func(s *Store) { s.onAmbiguous = func(w store.Write) { ambiguous <- w } })
	ctx := ctxFor(t, 20*time.Second)
	k := keyOn(srv, "ord-", srv.VBucketOf("x"))
	vb := srv.VBucketOf(k)

	srv.AnswerDurableWritesAmbiguousNotMade("orders", vb, 1)
	cas, err := s.Apply(ctx, []store.Write{{Op: store.OpInsert, Collection: order.Retry, Key: k, Value: []byte(`{"attempt":1,"nextAttemptAt":1}`)}})
	require.NoError(t, err, "not made, the insert is made again")
	require.Len(t, ambiguous, 1)
	d, err := s.Get(ctx, order.Retry, k)
	require.NoError(t, err)
	assert.Equal(t, cas[0], d.CAS)

	srv.AnswerDurableWritesAmbiguousNotMade("orders", vb, 1)
	cas, err = s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Retry, Key: k, CAS: d.CAS, Value: []byte(`{"attempt":2,"nextAttemptAt":1}`)}})
	require.NoError(t, err, "not made, the replace is made again under the same guard")
	require.Len(t, ambiguous, 2)
	d, err = s.Get(ctx, order.Retry, k)
	require.NoError(t, err)
	assert.Equal(t, cas[0], d.CAS)
	assert.JSONEq(t, `{"attempt":2,"nextAttemptAt":1}`, string(d.Value))

	srv.AnswerDurableWritesAmbiguousNotMade("orders", vb, 1)
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpRemove, Collection: order.Retry, Key: k, CAS: d.CAS}})
	require.NoError(t, err, "not made, the remove is made again")
	require.Len(t, ambiguous, 3)
	_, err = s.Get(ctx, order.Retry, k)
	assert.ErrorIs(t, err, store.ErrNotFound)
}

// The backlog over each kind of due retry: flagged (by nextAttemptAt, or
// by ts for the sample's documents), unflagged by nextAttemptAt, and the
// sample's by ts, and the oldest of them all. A flagged retry edited by
// hand into a time that is no number is counted, and passed over for the
// oldest, not the backlog's failure.
func TestBacklogOverEveryKindOfDueRetry(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	const q = 15 * time.Second
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	for _, c := range []struct {
		name   string
		docs   map[string]string
		due    int
		oldest time.Time
	}{
		{"every kind", map[string]string{
			"flagged-next":   fmt.Sprintf(`{"docId":"flagged-next","ts":1,"fireRetry":true,"nextAttemptAt":%d}`, ms(-time.Minute)),
			"flagged-ts":     fmt.Sprintf(`{"docId":"flagged-ts","ts":%d,"fireRetry":true}`, ms(-10*time.Minute)),
			"due-next":       fmt.Sprintf(`{"docId":"due-next","ts":1,"nextAttemptAt":%d}`, ms(-3*time.Minute)),
			"due-ts":         fmt.Sprintf(`{"docId":"due-ts","ts":%d}`, ms(-4*time.Minute)),
			"not-due-next":   fmt.Sprintf(`{"docId":"not-due-next","ts":1,"nextAttemptAt":%d}`, ms(time.Minute)),
			"not-due-ts":     fmt.Sprintf(`{"docId":"not-due-ts","ts":%d}`, ms(-time.Second)),
			order.ControlKey: `{}`,
		}, 4, now.Add(-10*time.Minute + q)},
		{"a flagged one edited by hand", map[string]string{
			"flagged-soon": `{"docId":"flagged-soon","ts":1,"fireRetry":true,"nextAttemptAt":"soon"}`,
			"due-next":     fmt.Sprintf(`{"docId":"due-next","ts":1,"nextAttemptAt":%d}`, ms(-3*time.Minute)),
		}, 2, now.Add(-3 * time.Minute)},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, _ := fakeCluster(t, cbtest.Options{})
			s := openStore(t, cfg, func(s *Store) { s.cfg.CountsTTL = -1 })
			ctx := ctxFor(t, 20*time.Second)
			for key, v := range c.docs {
				_, err := s.Insert(ctx, order.Retry, key, []byte(v))
				require.NoError(t, err)
			}
			b, err := s.Backlog(ctx, now, q)
			require.NoError(t, err)
			assert.Equal(t, c.due, b.Due)
			assert.Equal(t, c.oldest, b.OldestDue)
		})
	}
}
