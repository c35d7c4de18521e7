package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Opener opens the store under test. Opening twice with the same t must give
// two handles on the same data (a restart).
type Opener func(t *testing.T) store.Store

// Run runs the whole contract.
func Run(t *testing.T, open Opener) {
	t.Run("KV", func(t *testing.T) { testKV(t, open(t)) })
	t.Run("FeedDeliversChangesInOrderPerKey", func(t *testing.T) { testFeedOrder(t, open(t)) })
	t.Run("FeedResumesAfterAcknowledgedOnly", func(t *testing.T) { testFeedResume(t, open) })
	t.Run("FeedFromNow", func(t *testing.T) { testFeedFromNow(t, open(t)) })
	t.Run("FeedFromNowSurvivesACrashBeforeItsFirstEvent", func(t *testing.T) { testFromNowCrash(t, open) })
	t.Run("FeedWakesOnWrite", func(t *testing.T) { testFeedWakes(t, open(t)) })
	t.Run("SweepRetries", func(t *testing.T) { testSweep(t, open(t)) })
	t.Run("Counts", func(t *testing.T) { testCounts(t, open(t)) })
	t.Run("Scan", func(t *testing.T) { testScan(t, open(t)) })
	t.Run("ScanDeadLettersOfAReason", func(t *testing.T) { testScanDeadLetters(t, open(t)) })
	t.Run("ScanRetriesOfAReason", func(t *testing.T) { testScanRetries(t, open(t)) })
	t.Run("StateAndApply", func(t *testing.T) { testStateAndApply(t, open(t)) })
	t.Run("SweepIsBounded", func(t *testing.T) { testSweepBounded(t, open(t)) })
	t.Run("SweepTakesTheOldestDueFirst", func(t *testing.T) { testSweepOldestFirst(t, open(t)) })
	t.Run("Backlog", func(t *testing.T) { testBacklog(t, open(t)) })
	t.Run("AttemptRecordsExpire", func(t *testing.T) { testExpiry(t, open(t)) })
	t.Run("AttemptRecordCAS", func(t *testing.T) { testAttemptsCAS(t, open(t)) })
}

// testAttemptsCAS: each write of an attempt record, upserts included,
// gives it a new CAS, the one a read returns, and a guarded write holds
// only against that one.
func testAttemptsCAS(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	k := prefix(t) + "a"
	rec := func(n int) []byte { return fmt.Appendf(nil, `{"docId":"a","n":%d}`, n) }
	var seen []uint64
	for n := range 3 {
		cas, err := s.Apply(ctx, []store.Write{{Op: store.OpUpsert, Collection: order.Attempts, Key: k, Value: rec(n)}})
		require.NoError(t, err)
		require.Len(t, cas, 1)
		assert.NotContains(t, seen, cas[0], "a new CAS at each write")
		seen = append(seen, cas[0])
		doc, err := s.Get(ctx, order.Attempts, k)
		require.NoError(t, err)
		assert.Equal(t, cas[0], doc.CAS, "what the write returned is what a read gives")
		assert.JSONEq(t, string(rec(n)), string(doc.Value))
	}
	_, err := s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Attempts, Key: k, Value: rec(9), CAS: seen[1]}})
	assert.ErrorIs(t, err, store.ErrCASMismatch, "an older CAS")
	cas, err := s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Attempts, Key: k, Value: rec(3), CAS: seen[2]}})
	require.NoError(t, err)
	doc, err := s.Get(ctx, order.Attempts, k)
	require.NoError(t, err)
	assert.Equal(t, cas[0], doc.CAS)
	assert.JSONEq(t, string(rec(3)), string(doc.Value))
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpInsert, Collection: order.Attempts, Key: k, Value: rec(4)}})
	assert.ErrorIs(t, err, store.ErrExists)
}

func testStateAndApply(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	k := prefix(t) + "o"
	st, err := s.State(ctx, k)
	require.NoError(t, err)
	assert.False(t, st.Order.Found() || st.Retry.Found() || st.DeadLetter.Found())

	cas, err := s.Apply(ctx, []store.Write{
		{Op: store.OpInsert, Collection: order.Inbound, Key: k, Value: []byte(`{"paymentStatus":"paid"}`)},
		{Op: store.OpInsert, Collection: order.Retry, Key: k, Value: []byte(`{"docId":"x","ts":1}`)},
	})
	require.NoError(t, err)
	require.Len(t, cas, 2)
	st, err = s.State(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, cas[0], st.Order.CAS)
	assert.Equal(t, cas[1], st.Retry.CAS)
	assert.False(t, st.DeadLetter.Found())
	assert.JSONEq(t, `{"paymentStatus":"paid"}`, string(st.Order.Value))

	// A failed guard names its write; the writes before it are the store's
	// to undo (embedded) or the caller's to order (Couchbase), so the
	// failing write comes first here.
	_, err = s.Apply(ctx, []store.Write{
		{Op: store.OpReplace, Collection: order.Retry, Key: k, Value: []byte(`{}`), CAS: cas[1] + 12345},
		{Op: store.OpRemove, Collection: order.Inbound, Key: k, CAS: cas[0]},
	})
	var we *store.WriteError
	require.ErrorAs(t, err, &we)
	assert.ErrorIs(t, err, store.ErrCASMismatch)
	assert.Equal(t, order.Retry, we.Write.Collection)
	st, err = s.State(ctx, k)
	require.NoError(t, err)
	assert.True(t, st.Order.Found(), "the write after the failed one was not made")

	// The writes before a failed guard: undone (none returned), or made
	// and returned with their CAS; never made and not said.
	made, err := s.Apply(ctx, []store.Write{
		{Op: store.OpUpsert, Collection: order.DeadLetter, Key: k, Value: []byte(`{"docId":"x"}`)},
		{Op: store.OpReplace, Collection: order.Retry, Key: k, Value: []byte(`{}`), CAS: cas[1] + 12345},
	})
	require.ErrorAs(t, err, &we)
	assert.Equal(t, order.Retry, we.Write.Collection)
	st, err = s.State(ctx, k)
	require.NoError(t, err)
	if assert.LessOrEqual(t, len(made), 1) && len(made) == 1 {
		assert.Equal(t, made[0], st.DeadLetter.CAS, "the write made before the failed guard")
		require.NoError(t, s.Remove(ctx, order.DeadLetter, k, made[0]))
	} else {
		assert.False(t, st.DeadLetter.Found(), "a write made before the failed guard, and not said")
	}

	// An order removed and created again is a new incarnation (where the
	// store can tell).
	inc := st.Order.Incarnation
	require.NoError(t, s.Remove(ctx, order.Inbound, k, st.Order.CAS))
	_, err = s.Insert(ctx, order.Inbound, k, []byte(`{"paymentStatus":"paid"}`))
	require.NoError(t, err)
	st, err = s.State(ctx, k)
	require.NoError(t, err)
	if inc != 0 {
		assert.NotEqual(t, inc, st.Order.Incarnation)
		again, err := s.Replace(ctx, order.Inbound, k, []byte(`{"paymentStatus":"paid","n":2}`), st.Order.CAS)
		require.NoError(t, err)
		d, err := s.Get(ctx, order.Inbound, k)
		require.NoError(t, err)
		assert.Equal(t, again, d.CAS)
		assert.Equal(t, st.Order.Incarnation, d.Incarnation, "an update keeps the incarnation")

		// So does an upsert of a document that is there; over a removed
		// one, an upsert starts a new incarnation.
		_, err = s.Upsert(ctx, order.Inbound, k, []byte(`{"paymentStatus":"paid","n":3}`))
		require.NoError(t, err)
		up, err := s.Get(ctx, order.Inbound, k)
		require.NoError(t, err)
		assert.Equal(t, st.Order.Incarnation, up.Incarnation, "an upsert of a live document keeps the incarnation")
		require.NoError(t, s.Remove(ctx, order.Inbound, k, up.CAS))
		_, err = s.Upsert(ctx, order.Inbound, k, []byte(`{"paymentStatus":"paid","n":4}`))
		require.NoError(t, err)
		anew, err := s.Get(ctx, order.Inbound, k)
		require.NoError(t, err)
		assert.NotEqual(t, up.Incarnation, anew.Incarnation, "an upsert over a removed document is a new incarnation")
		assert.NotZero(t, anew.Incarnation)
	}
}

func testSweepBounded(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	now := time.Now()
	for i := range 25 {
		doc := fmt.Sprintf(`{"type":"confirmation","docId":"%s%d","attempt":1,"ts":1,"nextAttemptAt":%d}`, p, i, now.Add(-time.Hour).UnixMilli())
		_, err := s.Upsert(ctx, order.Retry, fmt.Sprintf("%s%02d", p, i), []byte(doc))
		require.NoError(t, err)
	}
	total := 0
	for range 100 {
		res, err := s.SweepRetries(ctx, now, 15*time.Second, 10)
		require.NoError(t, err)
		assert.LessOrEqual(t, res.Flagged, 10, "no batch is larger than its limit")
		total += res.Flagged
		if !res.More {
			break
		}
	}
	assert.GreaterOrEqual(t, total, 25, "batches continue until nothing due is left")
	res, err := s.SweepRetries(ctx, now, 15*time.Second, 10)
	require.NoError(t, err)
	assert.False(t, res.More)
}

// testSweepOldestFirst: a sweep of one flags the retry that fell due
// first, whatever its key, so that the timer's probe of an email service
// that is down (one retry a cooldown) goes round the backlog: the same
// retry probed every time would spend its whole attempt budget on a
// service known to be down. Due in 1970, older than any other test's.
func testSweepOldestFirst(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	for k, at := range map[string]int{"a": 30000, "b": 10, "c": 20000} {
		doc := fmt.Sprintf(`{"type":"confirmation","docId":"%s%s","attempt":1,"ts":1,"nextAttemptAt":%d}`, p, k, at)
		_, err := s.Upsert(ctx, order.Retry, p+k, []byte(doc))
		require.NoError(t, err)
	}
	// The sample's document, due by its ts and the quantum: 15001.
	_, err := s.Upsert(ctx, order.Retry, p+"d", []byte(fmt.Sprintf(`{"type":"confirmation","docId":"%sd","ts":1}`, p)))
	require.NoError(t, err)
	var got []string
	for range 4 {
		res, err := s.SweepRetries(ctx, time.Now(), 15*time.Second, 1)
		require.NoError(t, err)
		require.Equal(t, 1, res.Flagged)
		for _, k := range []string{"a", "b", "c", "d"} {
			d, err := s.Get(ctx, order.Retry, p+k)
			require.NoError(t, err)
			r, err := order.DecodeRetryDoc(d.Value)
			require.NoError(t, err)
			if r.FireRetry && !slices.Contains(got, k) {
				got = append(got, k)
			}
		}
	}
	assert.Equal(t, []string{"b", "d", "c", "a"}, got, "flagged in the order they fell due, of either kind")
}

func testBacklog(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	now := time.Now()
	before, err := s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	due := now.Add(-time.Hour)
	put := func(k, v string) {
		_, err := s.Upsert(ctx, order.Retry, p+k, []byte(v))
		require.NoError(t, err)
	}
	put("a", fmt.Sprintf(`{"docId":"a","attempt":1,"ts":1,"nextAttemptAt":%d,"lastStatus":503}`, due.UnixMilli()))
	put("b", fmt.Sprintf(`{"docId":"b","attempt":1,"ts":1,"nextAttemptAt":%d}`, now.Add(time.Hour).UnixMilli()))
	put("c", `{"docId":"c","attempt":1,"ts":1,"fireRetry":true}`)
	after, err := s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 2, after.Due-before.Due, "a (due) and c (flagged), not b")
	require.False(t, after.OldestDue.IsZero())
	assert.False(t, after.OldestDue.After(due))

	// A flagged retry counts for the oldest due, from when it fell due:
	// the sweep flags ahead of the sends, and a backlog waits flagged. One
	// flagged by hand before it fell due is due now, not later.
	flaggedDue := now.Add(-2 * time.Hour)
	put("d", fmt.Sprintf(`{"docId":"d","attempt":1,"ts":1,"nextAttemptAt":%d,"fireRetry":true}`, flaggedDue.UnixMilli()))
	put("e", fmt.Sprintf(`{"docId":"e","attempt":1,"ts":1,"nextAttemptAt":%d,"fireRetry":true}`, now.Add(time.Hour).UnixMilli()))
	flagged, err := s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 4, flagged.Due-before.Due, "a, c, d and e")
	assert.False(t, flagged.OldestDue.After(flaggedDue), "the oldest due %s, d flagged and due since %s", flagged.OldestDue, flaggedDue)
	assert.False(t, flagged.OldestDue.After(now))
}

// testExpiry: an attempt record written with an expiry goes away once it
// has passed (the embedded store purges as its feed moves, so each look
// moves the feed first), and State reads the record where the store reads
// it with the outcome.
func testExpiry(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	_, err := s.Apply(ctx, []store.Write{
		{Op: store.OpUpsert, Collection: order.Attempts, Key: p + "gone", Value: []byte(`{"docId":"g"}`), Expiry: time.Now().Add(time.Second)},
		{Op: store.OpUpsert, Collection: order.Attempts, Key: p + "kept", Value: []byte(`{"docId":"k"}`)},
	})
	require.NoError(t, err)
	st, err := s.State(ctx, p+"kept")
	require.NoError(t, err)
	if st.Attempts.Found() {
		assert.JSONEq(t, `{"docId":"k"}`, string(st.Attempts.Value))
	}
	round := 0
	var last error
	gone := func() bool {
		round++
		if last = moveFeed(ctx, s, p, round); last != nil {
			return false
		}
		_, last = s.Get(ctx, order.Attempts, p+"gone")
		return errors.Is(last, store.ErrNotFound)
	}
	if !assert.Eventually(t, gone, 30*time.Second, 100*time.Millisecond) {
		t.Fatalf("the expired record is still there after %d looks: %v", round, last)
	}
	_, err = s.Get(ctx, order.Attempts, p+"kept")
	assert.NoError(t, err, "no expiry: kept")
	// Reads of the record give their connection back: more of them than
	// any pool holds, then a read that needs one.
	for range 20 {
		_, err = s.Get(ctx, order.Attempts, p+"kept")
		require.NoError(t, err)
		_, err = s.Get(ctx, order.Attempts, p+"gone")
		require.ErrorIs(t, err, store.ErrNotFound)
	}
	_, err = s.State(ctx, p+"kept")
	require.NoError(t, err)
}

// moveFeed writes one order and reads it back through a subscription that
// acknowledges it and closes: the feed's checkpoint moves, and with it the
// embedded store's purge.
func moveFeed(ctx context.Context, s store.Store, p string, round int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sub, err := s.Subscribe(ctx, p+"feed", []string{order.Inbound}, store.FeedOptions{FromNow: true})
	if err != nil {
		return err
	}
	err = readOwn(ctx, s, sub, fmt.Sprintf("%so%d", p, round))
	return errors.Join(err, sub.Close(ctx))
}

// readOwn writes key and reads the feed, acknowledging, up to its event.
func readOwn(ctx context.Context, s store.Store, sub store.Subscription, key string) error {
	if _, err := s.Insert(ctx, order.Inbound, key, []byte(`{}`)); err != nil {
		return err
	}
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		ev.Ack()
		if ev.Key == key {
			return nil
		}
	}
}

// prefix makes keys no other run uses.
func prefix(t *testing.T) string {
	return fmt.Sprintf("st_%s_%d_", strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()), rand.Uint32())
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testKV(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	k := prefix(t) + "a"

	_, err := s.Get(ctx, order.Inbound, k)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.Replace(ctx, order.Inbound, k, []byte(`{}`), 0)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorIs(t, s.Remove(ctx, order.Inbound, k, 0), store.ErrNotFound)

	cas1, err := s.Insert(ctx, order.Inbound, k, []byte(`{"n":1}`))
	require.NoError(t, err)
	_, err = s.Insert(ctx, order.Inbound, k, []byte(`{"n":2}`))
	require.ErrorIs(t, err, store.ErrExists)

	d, err := s.Get(ctx, order.Inbound, k)
	require.NoError(t, err)
	assert.JSONEq(t, `{"n":1}`, string(d.Value))
	assert.Equal(t, cas1, d.CAS)

	_, err = s.Get(ctx, order.Retry, k)
	require.ErrorIs(t, err, store.ErrNotFound, "collections are separate")

	cas2, err := s.Replace(ctx, order.Inbound, k, []byte(`{"n":3}`), cas1)
	require.NoError(t, err)
	assert.NotEqual(t, cas1, cas2)
	_, err = s.Replace(ctx, order.Inbound, k, []byte(`{"n":4}`), cas1)
	require.ErrorIs(t, err, store.ErrCASMismatch)
	require.ErrorIs(t, s.Remove(ctx, order.Inbound, k, cas1), store.ErrCASMismatch)

	cas3, err := s.Upsert(ctx, order.Inbound, k, []byte(`{"n":5}`))
	require.NoError(t, err)
	require.NoError(t, s.Remove(ctx, order.Inbound, k, cas3))
	_, err = s.Get(ctx, order.Inbound, k)
	require.ErrorIs(t, err, store.ErrNotFound)

	_, err = s.Insert(ctx, order.Inbound, k, []byte(`{"n":6}`))
	require.NoError(t, err, "a removed key can be inserted again")
	_, err = s.Upsert(ctx, order.Retry, k+"_new", []byte(`{}`))
	require.NoError(t, err, "upsert creates")
}

// collect reads events for keys starting with p until cond holds, acking
// every event it reads.
func collect(t *testing.T, sub store.Subscription, p string, cond func([]store.Event) bool) []store.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []store.Event
	for !cond(got) {
		ev, err := sub.Next(ctx)
		require.NoError(t, err, "waiting for events; have %d", len(got))
		ev.Ack()
		if strings.HasPrefix(ev.Key, p) {
			got = append(got, ev)
		}
	}
	return got
}

func atLeast(n int) func([]store.Event) bool {
	return func(evs []store.Event) bool { return len(evs) >= n }
}

func testFeedOrder(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	sub, err := s.Subscribe(ctx, p+"sub", []string{order.Inbound, order.Retry}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	defer sub.Close(context.Background())

	_, err = s.Upsert(ctx, order.DeadLetter, p+"x", []byte(`{"ignored":true}`))
	require.NoError(t, err)
	cas, err := s.Insert(ctx, order.Inbound, p+"o1", []byte(`{"v":1}`))
	require.NoError(t, err)
	_, err = s.Insert(ctx, order.Retry, p+"o1", []byte(`{"v":"r"}`))
	require.NoError(t, err)
	require.NoError(t, s.Remove(ctx, order.Inbound, p+"o1", cas))
	_, err = s.Insert(ctx, order.Inbound, p+"o2", []byte(`{"v":2}`))
	require.NoError(t, err)

	// Changes of different keys may come in any order (DCP orders them per
	// vBucket only): read until the last state of each has come.
	got := collect(t, sub, p, func(evs []store.Event) bool {
		var o2, o1Gone, retry bool
		for _, ev := range evs {
			switch {
			case ev.Key == p+"o2":
				o2 = true
			case ev.Collection == order.Inbound && ev.Key == p+"o1" && ev.Deleted:
				o1Gone = true
			case ev.Collection == order.Retry && ev.Key == p+"o1":
				retry = true
			}
		}
		return o2 && o1Gone && retry
	})
	var inboundO1 []store.Event
	sawRetry := false
	for _, ev := range got {
		assert.NotEqual(t, order.DeadLetter, ev.Collection, "unsubscribed collection delivered")
		if ev.Collection == order.Inbound && ev.Key == p+"o1" {
			inboundO1 = append(inboundO1, ev)
		}
		if ev.Collection == order.Retry && ev.Key == p+"o1" {
			sawRetry = true
			assert.JSONEq(t, `{"v":"r"}`, string(ev.Value))
		}
	}
	assert.True(t, sawRetry)
	// A feed may drop the intermediate state of a key, never its last one.
	require.NotEmpty(t, inboundO1)
	last := inboundO1[len(inboundO1)-1]
	assert.True(t, last.Deleted, "the deletion of o1 is the last event for it")
	assert.Nil(t, last.Value)
	for i := 1; i < len(inboundO1); i++ {
		assert.Less(t, inboundO1[i-1].Seq, inboundO1[i].Seq)
	}
}

func testFeedResume(t *testing.T, open Opener) {
	ctx := ctxFor(t)
	p := prefix(t)
	s := open(t)
	name := p + "sub"
	sub, err := s.Subscribe(ctx, name, []string{order.Inbound}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	// One key per write so that no deduplication can merge them.
	for i := range 4 {
		_, err := s.Insert(ctx, order.Inbound, fmt.Sprintf("%sk%d", p, i), []byte(`{}`))
		require.NoError(t, err)
	}
	var got []store.Event
	for len(got) < 4 {
		ev, err := sub.Next(ctx)
		require.NoError(t, err)
		if strings.HasPrefix(ev.Key, p) {
			got = append(got, ev)
		} else {
			ev.Ack()
		}
	}
	// Acknowledge k0 and k2 but not k1 (by key: keys of different
	// partitions may come in any order): the checkpoint may not pass k1.
	for _, ev := range got {
		if ev.Key == p+"k0" || ev.Key == p+"k2" {
			ev.Ack()
		}
	}
	require.NoError(t, sub.Close(ctx))

	s2 := open(t) // a restart on the same data
	sub2, err := s2.Subscribe(ctx, name, []string{order.Inbound}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	defer sub2.Close(context.Background())
	again := collect(t, sub2, p, func(evs []store.Event) bool {
		seen := map[string]bool{}
		for _, ev := range evs {
			seen[ev.Key] = true
		}
		return seen[p+"k1"] && seen[p+"k3"]
	})
	for _, ev := range again {
		assert.NotEqual(t, p+"k0", ev.Key, "k0 was acknowledged before the checkpoint")
	}
}

// testFromNowCrash: a feed started from now dies (no Close, nothing
// acknowledged) before it hands out anything; what was written meanwhile
// is still delivered after a restart, not skipped by a new "now".
func testFromNowCrash(t *testing.T, open Opener) {
	ctx := ctxFor(t)
	p := prefix(t)
	s := open(t)
	_, err := s.Insert(ctx, order.Inbound, p+"before", []byte(`{}`))
	require.NoError(t, err)
	dead, err := s.Subscribe(ctx, p+"sub", []string{order.Inbound}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	// It died: not closed (which saves) until the test is over. A feed
	// that can stop as a crash would (no save, no goodbye) does.
	t.Cleanup(func() { dead.Close(context.Background()) })
	if c, ok := dead.(interface{ Crash() }); ok {
		c.Crash()
	}
	_, err = s.Insert(ctx, order.Inbound, p+"while_down", []byte(`{}`))
	require.NoError(t, err)

	s2 := open(t)
	sub, err := s2.Subscribe(ctx, p+"sub", []string{order.Inbound}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	defer sub.Close(context.Background())
	got := collect(t, sub, p, atLeast(1))
	assert.Equal(t, p+"while_down", got[0].Key, "the start position was saved before anything was handed out")
}

func testFeedFromNow(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	_, err := s.Insert(ctx, order.Inbound, p+"before", []byte(`{}`))
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, p+"sub", []string{order.Inbound}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	defer sub.Close(context.Background())
	_, err = s.Insert(ctx, order.Inbound, p+"after", []byte(`{}`))
	require.NoError(t, err)
	got := collect(t, sub, p, atLeast(1))
	assert.Equal(t, p+"after", got[0].Key)
}

func testFeedWakes(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	sub, err := s.Subscribe(ctx, p+"sub", []string{order.Retry}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	defer sub.Close(context.Background())
	// Next is called, and blocks unless the write has come first (nothing
	// here can tell); the test's goroutine judges what it returned
	// (nothing may fail the test from another).
	type next struct {
		ev  store.Event
		err error
	}
	done := make(chan next, 1)
	nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		for {
			ev, err := sub.Next(nctx)
			if err == nil {
				ev.Ack()
			}
			if err != nil || strings.HasPrefix(ev.Key, p) {
				done <- next{ev, err}
				return
			}
		}
	}()
	_, err = s.Insert(ctx, order.Retry, p+"late", []byte(`{}`))
	require.NoError(t, err)
	got := <-done
	require.NoError(t, got.err, "a blocked Next did not return after a write")
	assert.Equal(t, p+"late", got.ev.Key)
}

func testSweep(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	now := time.Now()
	old := now.Add(-time.Minute).UnixMilli()
	fresh := now.UnixMilli()
	docs := map[string]string{
		p + "old":     fmt.Sprintf(`{"type":"confirmation","docId":"%sold","attempt":1,"ts":%d}`, p, old),
		p + "fresh":   fmt.Sprintf(`{"type":"confirmation","docId":"%sfresh","attempt":1,"ts":%d}`, p, fresh),
		p + "flagged": fmt.Sprintf(`{"type":"confirmation","docId":"%sflagged","attempt":2,"ts":%d,"fireRetry":true}`, p, old),
		p + "junk":    `not json at all`,
		p + "strts":   `{"docId":"x","ts":"yesterday"}`,
		// nextAttemptAt decides over ts when present.
		p + "due":    fmt.Sprintf(`{"docId":"x","attempt":3,"ts":%d,"nextAttemptAt":%d}`, fresh, now.UnixMilli()),
		p + "notyet": fmt.Sprintf(`{"docId":"x","attempt":3,"ts":%d,"nextAttemptAt":%d}`, old, now.Add(time.Second).UnixMilli()),
	}
	for k, v := range docs {
		_, err := s.Upsert(ctx, order.Retry, k, []byte(v))
		require.NoError(t, err)
	}
	sub, err := s.Subscribe(ctx, p+"sub", []string{order.Retry}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	defer sub.Close(context.Background())

	res, err := s.SweepRetries(ctx, now, 15*time.Second, 1000)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, res.Flagged, 2)

	d, err := s.Get(ctx, order.Retry, p+"old")
	require.NoError(t, err)
	r, err := order.DecodeRetryDoc(d.Value)
	require.NoError(t, err)
	assert.True(t, r.FireRetry)
	assert.Equal(t, 1, r.Attempt, "the sweep changes only fireRetry")
	assert.Equal(t, old, r.TS)

	d, err = s.Get(ctx, order.Retry, p+"fresh")
	require.NoError(t, err)
	r, err = order.DecodeRetryDoc(d.Value)
	require.NoError(t, err)
	assert.False(t, r.FireRetry, "younger than the quantum")
	for k, want := range map[string]bool{"due": true, "notyet": false} {
		d, err = s.Get(ctx, order.Retry, p+k)
		require.NoError(t, err)
		r, err = order.DecodeRetryDoc(d.Value)
		require.NoError(t, err)
		assert.Equal(t, want, r.FireRetry, k)
	}

	got := collect(t, sub, p, atLeast(2))
	assert.ElementsMatch(t, []string{"retry/" + p + "old", "retry/" + p + "due"}, keys(got),
		"the flagged documents come back on the feed")

	// The already-flagged document was not written again: a second sweep
	// flags nothing of ours and the feed brings nothing more of ours.
	_, err = s.SweepRetries(ctx, now, 15*time.Second, 1000)
	require.NoError(t, err)
	marker := p + "zz_marker"
	_, err = s.Insert(ctx, order.Retry, marker, []byte(`{}`))
	require.NoError(t, err)
	rest := collect(t, sub, p, func(evs []store.Event) bool {
		return len(evs) > 0 && evs[len(evs)-1].Key == marker
	})
	assert.Len(t, rest, 1, "only the marker: got %v", keys(rest))
}

func keys(evs []store.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Collection + "/" + ev.Key
	}
	return out
}

func testCounts(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	before, err := s.Counts(ctx)
	require.NoError(t, err)
	flaggedBefore, err := s.FlaggedRetries(ctx)
	require.NoError(t, err)
	put := func(coll, k, v string) {
		_, err := s.Upsert(ctx, coll, p+k, []byte(v))
		require.NoError(t, err)
	}
	put(order.Inbound, "paid", `{"paymentStatus":"paid"}`)
	put(order.Inbound, "sent", `{"paymentStatus":"paid","confirmationEmailSent":true}`)
	put(order.Inbound, "init", `{"paymentStatus":"initiated"}`)
	put(order.Inbound, "junk", `[1,2`)
	put(order.Retry, "r1", `{"docId":"x","attempt":1,"ts":1}`)
	put(order.Retry, "r2", `{"docId":"y","attempt":1,"ts":1,"fireRetry":true}`)
	put(order.DeadLetter, "d1", `{"docId":"z","reason":"permanent_error"}`)
	after, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, store.Counts{OrdersPaid: 2, OrdersConfirmed: 1, RetryDocs: 2, RetryFlagged: 1, DeadLetters: 1}, store.Counts{
		DeadLetters:     after.DeadLetters - before.DeadLetters,
		OrdersPaid:      after.OrdersPaid - before.OrdersPaid,
		OrdersConfirmed: after.OrdersConfirmed - before.OrdersConfirmed,
		RetryDocs:       after.RetryDocs - before.RetryDocs,
		RetryFlagged:    after.RetryFlagged - before.RetryFlagged,
	})
	flagged, err := s.FlaggedRetries(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, flagged-flaggedBefore, "FlaggedRetries")

	// allow_retrys is in the retry collection and is no retry.
	if _, err := s.Get(ctx, order.Retry, order.ControlKey); errors.Is(err, store.ErrNotFound) {
		cas, err := s.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
		require.NoError(t, err)
		armed, err := s.Counts(ctx)
		require.NoError(t, s.Remove(ctx, order.Retry, order.ControlKey, cas))
		require.NoError(t, err)
		assert.Equal(t, after.RetryDocs, armed.RetryDocs, "the control document is no retry")
	}
}

func testScan(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	coll := order.DeadLetter
	want := map[string]string{}
	for i := range 1203 { // more than one page of any sensible size
		k := fmt.Sprintf("%s%05d", p, i)
		want[k] = fmt.Sprintf(`{"n":%d}`, i)
		_, err := s.Upsert(ctx, coll, k, []byte(want[k]))
		require.NoError(t, err)
	}
	cas, err := s.Insert(ctx, coll, p+"gone", []byte(`{}`))
	require.NoError(t, err)
	require.NoError(t, s.Remove(ctx, coll, p+"gone", cas))

	// Pages: each stops after a few documents and the next starts after
	// the last key seen; together they see every document once, in order.
	var paged []string
	stopPage := errors.New("page full")
	for after := p; ; {
		n, end := 0, false
		err := s.Scan(ctx, coll, after, func(d store.Doc) error {
			if !strings.HasPrefix(d.Key, p) {
				end = true // past the prefix
				return stopPage
			}
			require.Greater(t, d.Key, after, "a page starts after its key")
			paged = append(paged, d.Key)
			if n++; n == 400 {
				return stopPage
			}
			return nil
		})
		if err != nil {
			require.ErrorIs(t, err, stopPage)
		}
		if err == nil || end {
			break
		}
		after = paged[len(paged)-1]
	}
	require.Len(t, paged, len(want))
	assert.True(t, slices.IsSorted(paged), "key order across pages")
	for _, k := range paged {
		assert.Contains(t, want, k)
	}
	var tail []string
	require.NoError(t, s.Scan(ctx, coll, fmt.Sprintf("%s%05d", p, 1199), func(d store.Doc) error {
		if strings.HasPrefix(d.Key, p) {
			tail = append(tail, d.Key)
		}
		return nil
	}))
	assert.Equal(t, []string{p + "01200", p + "01201", p + "01202"}, tail, "after is excluded, the rest follows")

	got := map[string]string{}
	last := ""
	err = s.Scan(ctx, coll, "", func(d store.Doc) error {
		assert.Greater(t, d.Key, last, "key order")
		last = d.Key
		if strings.HasPrefix(d.Key, p) {
			got[d.Key] = string(d.Value)
			// fn may write, as redrive --all does.
			return s.Remove(ctx, coll, d.Key, d.CAS)
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, want, got, "every live document once, no deleted one")

	stop := fmt.Errorf("enough")
	n := 0
	_, err = s.Upsert(ctx, coll, p+"a", []byte(`{}`))
	require.NoError(t, err)
	_, err = s.Upsert(ctx, coll, p+"b", []byte(`{}`))
	require.NoError(t, err)
	err = s.Scan(ctx, coll, "", func(d store.Doc) error { n++; return stop })
	assert.ErrorIs(t, err, stop)
	assert.Equal(t, 1, n)
}

// testScanDeadLetters: the dead letters of one reason, in key order and in
// pages, none of another reason; a dead letter whose reason changes moves
// with it, and one removed or rewritten as something else leaves.
func testScanDeadLetters(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	dead := func(key, reason string) []byte {
		return order.DeadLetterDoc{DocID: key, Reason: reason, LastStatus: 406, DeadAt: 1}.Encode()
	}
	var want []string
	for i := range 1203 { // more than one page of any sensible size
		k := fmt.Sprintf("%s%05d", p, i)
		reason := order.ReasonExhausted
		if i%100 == 7 {
			reason = order.ReasonPermanent
			want = append(want, k)
		}
		_, err := s.Upsert(ctx, order.DeadLetter, k, dead(k, reason))
		require.NoError(t, err)
	}
	// Not dead letters of the reason: another collection's document
	// written like one, and a dead letter that cannot be read.
	_, err := s.Upsert(ctx, order.Retry, p+"00107", dead(p+"00107", order.ReasonPermanent))
	require.NoError(t, err)
	_, err = s.Upsert(ctx, order.DeadLetter, p+"x-unreadable", []byte(`{"reason":"`+order.ReasonPermanent+`"}`))
	require.NoError(t, err)

	ofReason := func(reason, after string, limit int) []string {
		scan := func(fn func(store.Doc) error) error { return s.ScanDeadLetters(ctx, reason, after, fn) }
		return scanned(t, scan, limit, func(d store.Doc) bool {
			_, err := order.DecodeDeadLetter(d.Value) // an unreadable one may come: callers decode and check
			return strings.HasPrefix(d.Key, p) && err == nil
		})
	}
	assert.Equal(t, want, ofReason(order.ReasonPermanent, "", 0), "every one of the reason, in key order")
	first := ofReason(order.ReasonPermanent, "", 5)
	assert.Equal(t, want[:5], first)
	assert.Equal(t, want[5:], ofReason(order.ReasonPermanent, first[4], 0), "the next page starts after the last key")
	assert.Len(t, ofReason(order.ReasonExhausted, "", 0), 1203-len(want))
	assert.Empty(t, ofReason(order.ReasonMalformedOrder, "", 0))

	// Rewritten with another reason, removed, written again as it was.
	moved, gone := want[0], want[1]
	_, err = s.Upsert(ctx, order.DeadLetter, moved, dead(moved, order.ReasonExhausted))
	require.NoError(t, err)
	d, err := s.Get(ctx, order.DeadLetter, gone)
	require.NoError(t, err)
	require.NoError(t, s.Remove(ctx, order.DeadLetter, gone, d.CAS))
	assert.Equal(t, want[2:], ofReason(order.ReasonPermanent, "", 0))
	_, err = s.Upsert(ctx, order.DeadLetter, gone, dead(gone, order.ReasonPermanent))
	require.NoError(t, err)
	assert.Equal(t, want[1:], ofReason(order.ReasonPermanent, "", 0))
}

// testScanRetries: the retries that wait for one reason, in key order and
// in pages, read without the others; one whose reason changes moves with
// it. The reasons are order.RetryDoc.Why's, which each store must read
// alike (Couchbase in SQL++): every branch of it is here.
func testScanRetries(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	p := prefix(t)
	retry := func(key string, status int, lastError, held string) []byte {
		return order.RetryDoc{Type: order.TypeConfirmation, DocID: key, Attempt: 1, TS: 1, NextAttemptAt: 1 << 50,
			LastStatus: status, LastError: lastError, HeldBack: held}.Encode()
	}
	want := map[string][]string{} // by reason, in key order
	for i := range 620 {
		k := fmt.Sprintf("%s%05d", p, i)
		v := retry(k, 0, "no answer: timeout", "")
		switch i % 10 {
		case 3:
			v = retry(k, 503, "answered 503", "")
		case 5:
			v = retry(k, 503, "answered 503", "circuit breaker open") // held back since: the answer counts
		case 7:
			v = retry(k, 0, "", "")
		case 8:
			v = retry(k, 0, "", "circuit breaker open")
		case 9:
			v = retry(k, 0, order.NotAttemptedPrefix+"rate limit", "") // as written before heldBack existed
		}
		r, err := order.DecodeRetryDoc(v)
		require.NoError(t, err)
		want[r.Why()] = append(want[r.Why()], k)
		_, err = s.Upsert(ctx, order.Retry, k, v)
		require.NoError(t, err)
	}
	_, err := s.Upsert(ctx, order.Retry, p+"x-unreadable", []byte(`not json`))
	require.NoError(t, err)
	require.Len(t, want, 4, "HTTP 503, no answer, held back and none")

	others := 0
	waitingFor := func(why, after string, limit int) []string {
		scan := func(fn func(store.Doc) error) error { return s.ScanRetries(ctx, why, after, fn) }
		return scanned(t, scan, limit, func(d store.Doc) bool {
			r, err := order.DecodeRetryDoc(d.Value) // others may come: callers check
			if ok := strings.HasPrefix(d.Key, p) && err == nil && r.Why() == why; ok || !strings.HasPrefix(d.Key, p) {
				return ok
			}
			others++
			return false
		})
	}
	for why, keys := range want {
		assert.Equal(t, keys, waitingFor(why, "", 0), "every one of %q, in key order", why)
	}
	assert.LessOrEqual(t, others, 1, "the others of this test are not read, the unreadable one aside")
	first := waitingFor("HTTP 503", "", 5)
	assert.Equal(t, want["HTTP 503"][5:], waitingFor("HTTP 503", first[4], 0), "the next page starts after the last key")

	// It fails again with another answer: it moves.
	moved := want["HTTP 503"][0]
	_, err = s.Upsert(ctx, order.Retry, moved, retry(moved, 502, "answered 502", ""))
	require.NoError(t, err)
	assert.Equal(t, want["HTTP 503"][1:], waitingFor("HTTP 503", "", 0))
	assert.Equal(t, []string{moved}, waitingFor("HTTP 502", "", 0))
}

// scanned runs scan and gives the keys of the documents keep keeps, in the
// order scan gave them, stopping at limit of them (0: none).
func scanned(t *testing.T, scan func(fn func(store.Doc) error) error, limit int, keep func(store.Doc) bool) []string {
	t.Helper()
	var got []string
	stop := errors.New("page full")
	err := scan(func(d store.Doc) error {
		if !keep(d) {
			return nil
		}
		got = append(got, d.Key)
		if len(got) == limit {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		require.NoError(t, err)
	}
	return got
}
