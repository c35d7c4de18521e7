package couchbase

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
)

// scaleSize is how many documents the Couchbase scale test writes:
// ORDERMAIL_CB_SCALE (scripts/couchbase-scale.sh runs 100,000), 2,000 in
// `go test ./...`.
func scaleSize(t *testing.T) int {
	n := 2_000
	if v := os.Getenv("ORDERMAIL_CB_SCALE"); v != "" {
		var err error
		n, err = strconv.Atoi(v)
		require.NoError(t, err, "ORDERMAIL_CB_SCALE")
	}
	return n
}

// insertAll writes n documents of coll, keyed prefix0..prefix(n-1), from
// 32 goroutines.
func insertAll(ctx context.Context, t *testing.T, s *Store, coll, prefix string, n int, value func(key string) []byte) {
	t.Helper()
	g, ctx := errgroup.WithContext(ctx)
	for w := range 32 {
		g.Go(func() error {
			for i := w; i < n; i += 32 {
				key := prefix + strconv.Itoa(i)
				if _, err := s.Insert(ctx, coll, key, value(key)); err != nil {
					return fmt.Errorf("insert %s: %w", key, err)
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
}

// TestCouchbaseScale counts the work the Couchbase store asks of the
// cluster at the sizes users reach, on the test server: what it reads by
// KV and which statements it runs (the test server runs every statement
// over the whole collection, so its times are no figure for a cluster; the
// plans are pinned by the TestIntegration...UseTheirIndex(es) tests and
// TestMissingIndexesCheckWhatSetupCreates, by EXPLAIN).
// Each figure is logged as a line starting "scale:".
func TestCouchbaseScale(t *testing.T) {
	n := scaleSize(t)
	cfg, srv := fakeCluster(t, cbtest.Options{})
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := openStore(t, cfg, func(s *Store) { s.now = clock })
	ctx := ctxFor(t, 30*time.Minute)
	// uncached forgets the answers the store serves for a while, so that
	// what a step reads is read.
	uncached := func() {
		s.orderCounts.stop()
		s.orderCounts = bgCount{}
		s.counts, s.backlog, s.reasons = newTTLCache[store.Counts](), newTTLCache[store.Backlog](), newTTLCache[[]store.Tally]()
	}

	start := time.Now()
	insertAll(ctx, t, s, order.Inbound, "o", n, func(string) []byte {
		return []byte(`{"email":"a@example.com","paymentStatus":"paid","confirmationEmailSent":true}`)
	})
	// Retries of one reason among many: n answered 503, 10 unanswered.
	insertAll(ctx, t, s, order.Retry, "r", n, func(key string) []byte {
		return order.RetryDoc{DocID: key, Attempt: 1, TS: 1, NextAttemptAt: clock().Add(24 * time.Hour).UnixMilli(), LastStatus: 503}.Encode()
	})
	insertAll(ctx, t, s, order.Retry, "x", 10, func(key string) []byte {
		return order.RetryDoc{DocID: key, Attempt: 1, TS: 1, NextAttemptAt: clock().Add(24 * time.Hour).UnixMilli(), LastError: "connection refused"}.Encode()
	})
	// Dead letters of one reason among many: n exhausted, 10 permanent.
	dead := func(reason string) func(string) []byte {
		return func(key string) []byte {
			return order.DeadLetterDoc{Type: "deadletter", DocID: key, Reason: reason, LastStatus: 503, DeadAt: 1}.Encode()
		}
	}
	insertAll(ctx, t, s, order.DeadLetter, "d", n, dead(order.ReasonExhausted))
	insertAll(ctx, t, s, order.DeadLetter, "p", 10, dead(order.ReasonPermanent))
	t.Logf("scale: %d paid orders, %d retries and %d dead letters written in %.1fs", n, n+10, n+10, time.Since(start).Seconds())

	t.Run("a minute of metrics refreshes counts the orders once", func(t *testing.T) {
		srv.ResetWork()
		for range 20 { // the refresh runs every 3s
			c, err := s.Counts(ctx)
			require.NoError(t, err)
			require.Equal(t, n, c.OrdersPaid)
			require.Equal(t, n+10, c.RetryDocs)
			advance(3 * time.Second)
		}
		w := srv.Work()
		orderCounts, counts := w.StatementsWith("AS paid"), w.StatementsWith("AS retryDocs")
		t.Logf("scale: a minute of refreshes (20, every 3s) over %d paid orders: order counts %d, backlog counts %d", n, orderCounts, counts)
		assert.Equal(t, 1, orderCounts, "the orders are counted at most once a minute")
		assert.Equal(t, 10, counts, "the backlog every CountsTTL")
	})

	t.Run("the retries of one reason are read alone", func(t *testing.T) {
		srv.ResetWork()
		start := time.Now()
		var found int
		require.NoError(t, s.ScanRetries(ctx, order.WhyNoAnswer, "", func(d store.Doc) error {
			if r, err := order.DecodeRetryDoc(d.Value); err == nil && r.Why() == order.WhyNoAnswer {
				found++
			}
			return nil
		}))
		w := srv.Work()
		t.Logf("scale: the 10 retries of %q among %d: %d documents read by KV, %.2fs on the test server", order.WhyNoAnswer, n+10, w.KV["get"], time.Since(start).Seconds())
		assert.Equal(t, 10, found)
		assert.Equal(t, 10, w.KV["get"], "the other retries are not read")
	})

	t.Run("the dead letters of one reason are read alone", func(t *testing.T) {
		srv.ResetWork()
		var found int
		require.NoError(t, s.ScanDeadLetters(ctx, order.ReasonPermanent, "", func(d store.Doc) error {
			if dl, err := order.DecodeDeadLetter(d.Value); err == nil && dl.Reason == order.ReasonPermanent {
				found++
			}
			return nil
		}))
		w := srv.Work()
		t.Logf("scale: the 10 dead letters of %q among %d: %d documents read by KV", order.ReasonPermanent, n+10, w.KV["get"])
		assert.Equal(t, 10, found)
		assert.Equal(t, 10, w.KV["get"], "the other dead letters are not read")
	})

	t.Run("a page of 50 reads a small first page; a whole scan grows its pages", func(t *testing.T) {
		srv.ResetWork()
		errEnough := errors.New("a page's worth")
		shown := 0
		err := s.ScanDeadLetters(ctx, order.ReasonExhausted, "", func(store.Doc) error {
			if shown++; shown == 50 {
				return errEnough
			}
			return nil
		})
		require.ErrorIs(t, err, errEnough)
		w := srv.Work()
		t.Logf("scale: a page of 50 dead letters among %d: %d documents read by KV", n+10, w.KV["get"])
		assert.LessOrEqual(t, w.KV["get"], firstScanPage, "a page of 50 reads no more than the first scan page")

		srv.ResetWork()
		found := 0
		require.NoError(t, s.ScanDeadLetters(ctx, order.ReasonExhausted, "", func(store.Doc) error { found++; return nil }))
		w = srv.Work()
		pages := w.StatementsWith("d.reason = $reason")
		t.Logf("scale: all %d exhausted dead letters: %d pages, %d documents read by KV", n, pages, w.KV["get"])
		assert.Equal(t, n, found)
		assert.Equal(t, n, w.KV["get"], "each read once")
		assert.LessOrEqual(t, pages, 3+n/lastScanPage, "the pages grow to the largest")
	})

	t.Run("a status reads a few documents", func(t *testing.T) {
		uncached()
		srv.ResetWork()
		st, err := ops.ReadStatus(ctx, s, clock(), 15*time.Second)
		require.NoError(t, err)
		w := srv.Work()
		t.Logf("scale: retries status over %d orders, %d retries and %d dead letters: %d documents read by KV, %d statements",
			n, n+10, n+10, w.KV["get"], len(w.Statements))
		assert.Equal(t, n, st.OrdersPaid)
		assert.Equal(t, n+10, st.RetryDocs)
		assert.Equal(t, n+10, st.DeadLetters)
		assert.LessOrEqual(t, w.KV["get"], 5, "the control document, the sweep lease, the members: %v", w.KV)
		// The reasons, only shown, do not wait for the indexer; the rest
		// reads what was written before it.
		reasons := 0
		for text, c := range w.Consistency {
			want := "request_plus"
			if strings.HasSuffix(text, ") AS dead") { // the reasons
				want = "not_bounded"
				reasons++
			}
			assert.Equal(t, want, c, "%s", text)
		}
		assert.Equal(t, 1, reasons, "the status reads the reasons: %v", w.Statements)
	})

	t.Run("a page browses the indexes as they are, a scan waits for them", func(t *testing.T) {
		// A page of the console under an outage's writes must not wait
		// for the indexer past its timeout; a bulk action must miss
		// nothing written before it.
		srv.ResetWork()
		_, err := ops.ListDeadLetterPage(ctx, s, ops.ListQuery{Reason: order.ReasonExhausted})
		require.NoError(t, err)
		_, err = ops.ListRetries(ctx, s, ops.ListQuery{Reason: ops.RetryReasonNone})
		require.NoError(t, err)
		browsed := srv.Work().Consistency
		srv.ResetWork()
		errOne := errors.New("one is enough")
		require.ErrorIs(t, s.ScanDeadLetters(ctx, order.ReasonExhausted, "", func(store.Doc) error { return errOne }), errOne)
		scanned := srv.Work().Consistency
		require.NotEmpty(t, browsed)
		for text, c := range browsed {
			assert.Equal(t, "not_bounded", c, "browsed: %s", text)
		}
		require.NotEmpty(t, scanned)
		for text, c := range scanned {
			assert.Equal(t, "request_plus", c, "scanned: %s", text)
		}
	})

	t.Run("nothing due: the backlog and a sweep read no document", func(t *testing.T) {
		uncached()
		srv.ResetWork()
		b, err := s.Backlog(ctx, clock(), 15*time.Second)
		require.NoError(t, err)
		assert.Zero(t, b.Due)
		res, err := s.SweepRetries(ctx, clock(), 15*time.Second, 500)
		require.NoError(t, err)
		assert.Zero(t, res.Flagged)
		w := srv.Work()
		t.Logf("scale: backlog and sweep over %d retries due in a day: %d documents read by KV, %d written, %d statements", n+10,
			w.KV["get"], w.KV["set"]+w.KV["replace"], len(w.Statements))
		assert.Zero(t, w.KV["get"]+w.KV["set"]+w.KV["replace"]+w.KV["add"], "no document read or written: %v", w.KV)
	})
	t.Run("due retries are flagged a batch a statement", func(t *testing.T) {
		m := max(n/10, 10)
		insertAll(ctx, t, s, order.Retry, "u", m, func(key string) []byte {
			return order.RetryDoc{DocID: key, Attempt: 1, TS: 1, NextAttemptAt: clock().Add(-time.Minute).UnixMilli(), LastStatus: 503}.Encode()
		})
		srv.ResetWork()
		const limit = 500
		flagged, sweeps := 0, 0
		for more := true; more; sweeps++ {
			require.Less(t, sweeps, m/limit+2, "the sweep does not end")
			res, err := s.SweepRetries(ctx, clock(), 15*time.Second, limit)
			require.NoError(t, err)
			flagged += res.Flagged
			more = res.More
		}
		w := srv.Work()
		t.Logf("scale: %d due retries among %d: %d flagged in %d statements of at most %d, %d documents read or written by KV",
			m, n+10+m, flagged, w.StatementsWith("UPDATE"), limit, w.KV["get"]+w.KV["set"]+w.KV["replace"])
		assert.Equal(t, m, flagged)
		assert.Equal(t, (m+limit)/limit, w.StatementsWith("UPDATE"), "a statement a batch, and the one that finds the rest empty when the last is full")
		assert.Zero(t, w.KV["get"]+w.KV["set"]+w.KV["replace"], "flagged by the statements: %v", w.KV)
	})
}
