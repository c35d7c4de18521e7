package embedded_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/require"
)

// paidOrder is the paid order the benchmarks write.
var paidOrder = []byte(`{"email":"a@example.com","paymentStatus":"paid","items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`)

// BenchmarkWriteThenFeed writes documents and reads them back from the feed,
// acknowledging each: the store's share of every order.
func BenchmarkWriteThenFeed(b *testing.B) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(b.TempDir(), "o.db")})
	require.NoError(b, err)
	defer st.Close()
	sub, err := st.Subscribe(ctx, "bench", []string{"inbound"}, store.FeedOptions{})
	require.NoError(b, err)
	defer sub.Close(ctx)
	doc := paidOrder
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := st.Upsert(ctx, "inbound", fmt.Sprint("order_", i), doc); err != nil {
			b.Fatal(err)
		}
		ev, err := sub.Next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		ev.Ack()
	}
}

// BenchmarkFeedRead reads changes written before, as the watcher does
// after an outage or on a busy feed: the feed's cost of one order event,
// with its key's state (the watcher's first read answered by the feed).
func BenchmarkFeedRead(b *testing.B) {
	benchFeedRead(b, func(key string) []store.Write {
		return []store.Write{{Op: store.OpInsert, Collection: order.Inbound, Key: key, Value: paidOrder}}
	}, func(ev store.Event) bool {
		return string(ev.State.Order.Value) == string(paidOrder) && ev.State.Order.CAS == ev.CAS
	})
}

// BenchmarkFeedReadDueRetry is BenchmarkFeedRead for flagged retry
// documents, as the watcher reads a backlog of due retries: each event with
// its order (confirmed, so that the feed passes over the order's own
// change).
func BenchmarkFeedReadDueRetry(b *testing.B) {
	benchFeedRead(b, func(key string) []store.Write {
		return []store.Write{{Op: store.OpInsert, Collection: order.Inbound, Key: key, Value: confirmedOrder},
			{Op: store.OpInsert, Collection: order.Retry, Key: key,
				Value: fmt.Appendf(nil, `{"docId":%q,"attempt":1,"ts":1,"lastStatus":503,"reason":"transient","fireRetry":true}`, key)}}
	}, func(ev store.Event) bool {
		return ev.Collection == order.Retry && string(ev.State.Order.Value) == string(confirmedOrder) &&
			string(ev.State.Retry.Value) == string(ev.Value) && ev.State.Retry.CAS == ev.CAS
	})
}

// benchFeedRead writes the documents of b.N keys, then reads b.N events
// from the feed, each checked by ok.
func benchFeedRead(b *testing.B, docs func(key string) []store.Write, ok func(store.Event) bool) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(b.TempDir(), "o.db")})
	require.NoError(b, err)
	defer st.Close()
	for from := 0; from < b.N; from += 500 {
		var writes []store.Write
		for i := from; i < min(from+500, b.N); i++ {
			writes = append(writes, docs(fmt.Sprint("order_", i))...)
		}
		_, err := st.Apply(ctx, writes)
		require.NoError(b, err)
	}
	sub, err := st.Subscribe(ctx, "bench", []string{order.Inbound, order.Retry}, store.FeedOptions{SkipSettled: true})
	require.NoError(b, err)
	defer sub.Close(ctx)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		ev, err := sub.Next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if ev.State == nil || !ok(ev) {
			b.Fatalf("%s/%s: the state does not hold what was written", ev.Collection, ev.Key)
		}
		ev.Ack()
	}
}

// BenchmarkConfirmInGroupCommits applies the outcome of a sent
// confirmation (the order replaced under its CAS, its attempt record
// upserted) from 64 goroutines at once, as the settling sends do: the
// writer's cost of a confirmed order, group commits included. The 64
// waiting writes fill each batch as the last commits, so the writer does not
// wait for more (CommitDelay -1): the figure is its work alone.
func BenchmarkConfirmInGroupCommits(b *testing.B) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(b.TempDir(), "o.db"), CommitDelay: -1})
	require.NoError(b, err)
	defer st.Close()
	doc := paidOrder
	record := []byte(`{"docId":"o","attempts":[{"n":1,"at":1764000000000,"durationMs":2,"status":200,"class":"sent","outcome":"sent","instance":"bench"}]}`)
	cas := make([]uint64, b.N)
	for from := 0; from < b.N; from += 1000 {
		var writes []store.Write
		for i := from; i < min(from+1000, b.N); i++ {
			writes = append(writes, store.Write{Op: store.OpInsert, Collection: "inbound", Key: fmt.Sprint("order_", i), Value: doc})
		}
		got, err := st.Apply(ctx, writes)
		require.NoError(b, err)
		copy(cas[from:], got)
	}
	applyFromManyWriters(b, st, func(i int) []store.Write {
		key := fmt.Sprint("order_", i)
		return []store.Write{
			{Op: store.OpReplace, Collection: "inbound", Key: key, Value: confirmedOrder, CAS: cas[i]},
			{Op: store.OpUpsert, Collection: "attempts", Key: key, Value: record},
		}
	})
}

// confirmedOrder is paidOrder once its confirmation was sent.
var confirmedOrder = []byte(`{"email":"a@example.com","paymentStatus":"paid","items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}],"confirmationEmailSent":true}`)

// applyFromManyWriters applies outcome(i) for each i below b.N from 64
// goroutines at once, as the settling sends do.
func applyFromManyWriters(b *testing.B, st *embedded.Store, outcome func(i int) []store.Write) {
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32) // 64 goroutines on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := st.Apply(ctx, outcome(int(next.Add(1)-1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkOrderWritesInBatches writes paid orders 500 at a time, as an
// order system importing them would (and as ordermail bench does): ns/op is
// one order's share of the writer's time.
func BenchmarkOrderWritesInBatches(b *testing.B) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(b.TempDir(), "o.db")})
	require.NoError(b, err)
	defer st.Close()
	doc := paidOrder
	writes := make([]store.Write, 0, 500)
	flush := func() {
		if _, err := st.Apply(ctx, writes); err != nil {
			b.Fatal(err)
		}
		writes = writes[:0]
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		writes = append(writes, store.Write{Op: store.OpUpsert, Collection: "inbound", Key: fmt.Sprint("order_", i), Value: doc})
		if len(writes) == cap(writes) {
			flush()
		}
	}
	if len(writes) > 0 {
		flush()
	}
}

// BenchmarkSweepFlags flags due retry documents in the sweep's batches of
// 1,000, as the timer does after `retries start`: the writer's cost of one
// flag (the document rewritten with fireRetry, its new position, its index
// entries and counts).
func BenchmarkSweepFlags(b *testing.B) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(b.TempDir(), "o.db")})
	require.NoError(b, err)
	defer st.Close()
	due := time.Now().Add(-time.Minute).UnixMilli()
	for from := 0; from < b.N; from += 1000 {
		var writes []store.Write
		for i := from; i < min(from+1000, b.N); i++ {
			key := fmt.Sprintf("order_%09d", i)
			writes = append(writes, store.Write{Op: store.OpInsert, Collection: order.Retry, Key: key,
				Value: fmt.Appendf(nil, `{"docId":%q,"attempt":1,"ts":1,"nextAttemptAt":%d,"lastStatus":503}`, key, due)})
		}
		_, err := st.Apply(ctx, writes)
		require.NoError(b, err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	flagged := 0
	for flagged < b.N {
		res, err := st.SweepRetries(ctx, time.Now(), 15*time.Second, 1000)
		require.NoError(b, err)
		require.NotZero(b, res.Flagged, "%d of %d flagged, none due left", flagged, b.N)
		flagged += res.Flagged
	}
}

// BenchmarkSettleDueRetryInGroupCommits writes the outcome of a delivered
// due retry (the order replaced under its CAS, its flagged retry document
// removed, its attempt record upserted) from 64 goroutines at once: the
// writer's cost of a due retry's outcome, group commits included, to set
// beside BenchmarkConfirmInGroupCommits (a first send's) and
// BenchmarkSweepFlags (the flag before it).
func BenchmarkSettleDueRetryInGroupCommits(b *testing.B) {
	settleDueRetries(b, func(i int) string { return fmt.Sprint("order_", i) })
}

// BenchmarkSettleScatteredDueRetries is BenchmarkSettleDueRetryInGroupCommits
// with keys in no order (random identifiers): the retries fall due, and
// are settled, in the order they were written, which is not their keys'.
func BenchmarkSettleScatteredDueRetries(b *testing.B) {
	settleDueRetries(b, scatteredKey)
}

// scatteredKey is the i-th key of a sequence in no order.
func scatteredKey(i int) string {
	return fmt.Sprintf("order_%016x", rand.NewPCG(1, uint64(i)).Uint64())
}

func settleDueRetries(b *testing.B, keyOf func(i int) string) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(b.TempDir(), "o.db"), CommitDelay: -1})
	require.NoError(b, err)
	defer st.Close()
	first := []byte(`{"docId":"o","attempts":[{"n":1,"at":1764000000000,"durationMs":2,"status":503,"class":"transient","outcome":"retry","instance":"bench"}]}`)
	record := []byte(`{"docId":"o","attempts":[{"n":1,"at":1764000000000,"durationMs":2,"status":503,"class":"transient","outcome":"retry","instance":"bench"},{"n":2,"at":1764000001000,"durationMs":2,"status":200,"class":"sent","outcome":"sent","instance":"bench"}]}`)
	// Each order written with its retry document and the record of the
	// attempt that failed, as the first send's outcome leaves them.
	cas := make([]uint64, b.N)
	for from := 0; from < b.N; from += 500 {
		var writes []store.Write
		for i := from; i < min(from+500, b.N); i++ {
			key := keyOf(i)
			writes = append(writes,
				store.Write{Op: store.OpInsert, Collection: "inbound", Key: key, Value: paidOrder},
				store.Write{Op: store.OpInsert, Collection: order.Retry, Key: key,
					Value: fmt.Appendf(nil, `{"docId":%q,"attempt":1,"ts":1,"lastStatus":503,"reason":"transient","fireRetry":true}`, key)},
				store.Write{Op: store.OpUpsert, Collection: "attempts", Key: key, Value: first})
		}
		got, err := st.Apply(ctx, writes)
		require.NoError(b, err)
		for j := 0; j < len(got); j += 3 {
			cas[from+j/3] = got[j]
		}
	}
	applyFromManyWriters(b, st, func(i int) []store.Write {
		key := keyOf(i)
		return []store.Write{
			{Op: store.OpReplace, Collection: "inbound", Key: key, Value: confirmedOrder, CAS: cas[i]},
			{Op: store.OpRemove, Collection: order.Retry, Key: key},
			{Op: store.OpUpsert, Collection: "attempts", Key: key, Value: record},
		}
	})
}
