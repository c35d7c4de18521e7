package embedded

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The statements whose cost must not grow with the store, with their
// arguments, and what their plan must say.
var plans = []struct {
	name, query string
	args        []any
	want        []string // each in the plan
}{
	{"feed read", feedQuery,
		[]any{true, 0, 256, 4096, 0, unreadableRetry}, []string{"SEARCH d USING INDEX docs_by_seq (seq>? AND seq<?)", "SEARCH o USING INDEX docs_by_key (coll=? AND key=?)",
			"SEARCH r USING INDEX docs_by_key (coll=? AND key=?)", "SEARCH l USING INDEX docs_by_key (coll=? AND key=?)",
			"SEARCH a USING INDEX attempts_by_key (key=?)"}},
	{"sweep by nextAttemptAt", dueNextQuery, []any{0, 100}, []string{"SEARCH docs USING INDEX retry_next (next_at>? AND next_at<?)"}},
	{"sweep by ts", dueTSQuery, []any{0, 100}, []string{"SEARCH docs USING INDEX retry_ts (ts_at>? AND ts_at<?)"}},
	{"state", `SELECT coll, value, seq, created FROM docs WHERE coll IN (?, ?, ?) AND key = ?
			UNION ALL SELECT 'attempts', value, rev, 0 FROM attempts WHERE key = ?`,
		[]any{"a", "b", "c", "k", "k"}, []string{"SEARCH docs USING INDEX docs_by_key (coll=? AND key=?)", "SEARCH attempts USING INDEX attempts_by_key (key=?)"}},
	{"expire", expireQuery,
		[]any{0, 0, 10, "inbound"}, []string{"SEARCH attempts USING INTEGER PRIMARY KEY (rowid=?)", "CO-ROUTINE e",
			"SEARCH attempts USING INDEX attempts_expiring (expires_at>? AND expires_at<?)", "SEARCH d USING INDEX docs_by_key (coll=? AND key=?)"}},
	{"postpone", postponeQuery,
		[]any{0, 0, 10, "inbound", 0, 0}, []string{"SEARCH attempts USING INTEGER PRIMARY KEY (rowid=?)", "CO-ROUTINE e",
			"SEARCH attempts USING INDEX attempts_expiring (expires_at>? AND expires_at<?)", "SEARCH d EXISTS USING INDEX docs_by_key (coll=? AND key=?)"}},
	{"purge", purgeQuery,
		[]any{0, 10}, []string{"SEARCH docs USING INTEGER PRIMARY KEY (rowid=?)", "SEARCH docs USING INDEX tombstones (seq<?)"}},
	{"counts", `SELECT paid, confirmed, retry, fire, dead FROM stats`, nil, []string{"SCAN stats"}},
	{"backlog", backlogQuery, []any{0, 0}, []string{
		"SEARCH due_minutes USING PRIMARY KEY (kind=? AND minute<?)",
		"SEARCH docs USING COVERING INDEX retry_next (next_at>? AND next_at<?)",
		"SEARCH docs USING COVERING INDEX retry_ts (ts_at>? AND ts_at<?)",
		"SEARCH docs USING COVERING INDEX retry_fired"}},
	{"an outcome's guarded replace", guardedReplaceQuery,
		[]any{"{}", 1, false, false, false, false, nil, nil, false, nil, nil, nil, "inbound", "k", 1},
		[]string{"SEARCH docs USING INDEX docs_by_key (coll=? AND key=?)"}},
	{"an order's guarded replace", flatReplaceQuery, []any{"{}", 1, false, false, "inbound", "k", 1},
		[]string{"SEARCH docs USING INDEX docs_by_key (coll=? AND key=?)"}},
	{"retries of a reason", retriesQuery, []any{"retrying: HTTP 503", "", 500},
		[]string{"SEARCH docs USING INDEX retry_tally (tally=? AND key>?)"}},
	{"dead letters of a reason", deadLettersQuery, []any{"exhausted", "", 500},
		[]string{"SEARCH docs USING INDEX dead_reason (reason=? AND key>?)"}},
	{"a flag by nextAttemptAt", flagQuery("next_at"), []any{"{}", 1, 0, 7}, []string{"SEARCH docs USING INTEGER PRIMARY KEY (rowid=?)"}},
	{"a flag by ts", flagQuery("ts_at"), []any{"{}", 1, 0, 7}, []string{"SEARCH docs USING INTEGER PRIMARY KEY (rowid=?)"}},
	{"a put's update", putSetQuery, []any{"inbound", "k", "{}", 1, 1, false, false, false, false, nil, nil, false, nil, nil, nil},
		[]string{"SEARCH docs USING INDEX docs_by_key (coll=? AND key=?)"}},
	{"a flat put's update", flatSetQuery, []any{"inbound", "k", "{}", 1, 1, false, false},
		[]string{"SEARCH docs USING INDEX docs_by_key (coll=? AND key=?)"}},
	{"an attempt record's update", attPutQuery, []any{"{}", nil, "k"},
		[]string{"SEARCH attempts USING INDEX attempts_by_key (key=?)"}},
	{"a removal leaving a tombstone", buryQuery, []any{1, "retry", "k"}, []string{"SEARCH docs USING INDEX docs_by_key (coll=? AND key=?)"}},
	{"a removal leaving none", eraseQuery, []any{"retry", "k"}, []string{"SEARCH docs USING INDEX docs_by_key (coll=? AND key=?)"}},
}

// triggers lists the triggers a statement may run, from its bytecode: each
// trigger's program starts with a "-- TRIGGER name" comment.
func triggers(t *testing.T, s *Store, query string, args ...any) []string {
	t.Helper()
	rows, err := s.read.Query("EXPLAIN "+query, args...)
	require.NoError(t, err)
	defer rows.Close()
	var names []string
	for rows.Next() {
		var addr, p1, p2, p3, p5 int
		var opcode string
		var p4, comment sql.NullString
		require.NoError(t, rows.Scan(&addr, &opcode, &p1, &p2, &p3, &p4, &p5, &comment))
		if name, ok := strings.CutPrefix(p4.String, "-- TRIGGER "); ok {
			names = append(names, name)
		}
	}
	require.NoError(t, rows.Err())
	sort.Strings(names)
	return names
}

// assertNoStatementJournal checks what spares the writer's statements on
// documents a statement journal (writer.go): each says OR FAIL and calls no
// JSON function, and so does every statement of every trigger on docs (a
// DELETE, which has no conflict clause, leaves their own to them).
func assertNoStatementJournal(t *testing.T, s *Store) {
	t.Helper()
	orFail := regexp.MustCompile(`^(UPDATE|INSERT) OR FAIL `)
	for _, q := range []string{putAddQuery, putSetQuery, flatAddQuery, flatSetQuery, guardedReplaceQuery, flatReplaceQuery,
		buryQuery, flagQuery("next_at"), flagQuery("ts_at"), attAddQuery, attPutQuery} {
		assert.Regexp(t, `^(UPDATE OR FAIL|INSERT OR IGNORE) `, q)
		assert.NotContains(t, q, "json", q)
		assert.NotContains(t, q, "ON CONFLICT", q)
	}
	rows, err := s.read.Query(`SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'docs'`)
	require.NoError(t, err)
	defer rows.Close()
	n := 0
	for rows.Next() {
		var name, def string
		require.NoError(t, rows.Scan(&name, &def))
		_, body, ok := strings.Cut(def, " BEGIN")
		require.True(t, ok, def)
		for stmt := range strings.SplitSeq(body, ";") {
			stmt = strings.TrimSpace(stmt)
			if strings.HasPrefix(stmt, "UPDATE") || strings.HasPrefix(stmt, "INSERT") {
				assert.Regexp(t, orFail, stmt, name)
			}
		}
		n++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, 12, n, "the triggers on docs")
}

func TestWritesNeedNoStatementJournal(t *testing.T) {
	t.Parallel()
	assertNoStatementJournal(t, openTest(t))
}

// An order's write (outside the retry and dead-letter collections) runs
// the counts' triggers and not those of the due minutes, which concern
// retry documents alone: a replace none of them, a put (an insert, or an
// update when the key is there) only the inserts', whose WHEN skips it.
// A flag runs those of the column it clears; a retry document's replace
// runs them all.
func TestWriteTriggers(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	assert.Equal(t, []string{"docs_update", "docs_update_tally"},
		triggers(t, s, flatReplaceQuery, "{}", 1, false, false, "inbound", "k", 1))
	assert.Equal(t, []string{"docs_insert", "due_insert_next_at", "due_insert_ts_at"},
		triggers(t, s, flatAddQuery, "inbound", "k", "{}", 1, 1, false, false))
	assert.Equal(t, []string{"docs_update", "docs_update_tally"},
		triggers(t, s, flatSetQuery, "inbound", "k", "{}", 1, 1, false, false))
	// A flag clears the one column its retry document is due by, and runs
	// that column's due triggers alone.
	assert.Equal(t, []string{"docs_update", "docs_update_tally", "due_update_next_at_new", "due_update_next_at_old"},
		triggers(t, s, flagQuery("next_at"), "{}", 1, 0, 7))
	assert.Equal(t, []string{"docs_update", "docs_update_tally", "due_update_ts_at_new", "due_update_ts_at_old"},
		triggers(t, s, flagQuery("ts_at"), "{}", 1, 0, 7))
	dueUpdates := []string{"due_update_next_at_new", "due_update_next_at_old", "due_update_ts_at_new", "due_update_ts_at_old"}
	all := triggers(t, s, guardedReplaceQuery, "{}", 1, false, false, false, false, nil, nil, false, nil, nil, nil, "retry", "k", 1)
	assert.Subset(t, all, dueUpdates, "a retry document's replace")
	// A flat collection's documents never carry the columns that
	// flatReplaceQuery leaves alone, whatever they hold.
	for _, coll := range []string{order.Inbound, order.Attempts, "other"} {
		require.True(t, flat(coll), coll)
		for _, v := range []string{`{"paymentStatus":"paid","confirmationEmailSent":true}`,
			`{"docId":"o1","attempt":1,"ts":1,"nextAttemptAt":2,"lastStatus":503,"fireRetry":true}`,
			`{"docId":"x","reason":"max_attempts","lastStatus":503}`} {
			c := classify(coll, "k", []byte(v))
			c.paid, c.confirmed = false, false
			assert.Equal(t, columns{}, c, "%s: %s", coll, v)
		}
	}
	assert.False(t, flat(order.Retry))
	assert.False(t, flat(order.DeadLetter))
}

// TestQueryPlans pins the plan of every statement on the hot and periodic
// paths: a range or point search of an index, never a scan of docs, and
// no temporary B-tree for ORDER BY.
func TestQueryPlans(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	for _, p := range plans {
		rows, err := s.read.Query("EXPLAIN QUERY PLAN "+p.query, p.args...)
		require.NoError(t, err, p.name)
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			require.NoError(t, rows.Scan(&id, &parent, &notused, &detail))
			plan = append(plan, detail)
		}
		require.NoError(t, rows.Close())
		got := strings.Join(plan, "; ")
		for _, w := range p.want {
			assert.Contains(t, got, w, p.name)
		}
		for _, step := range plan {
			// stats and a constant row are one row each; e, the expiry's
			// co-routine, is at most its LIMIT (a batch).
			if strings.HasPrefix(step, "SCAN") && step != "SCAN stats" && step != "SCAN CONSTANT ROW" && step != "SCAN e" {
				t.Errorf("%s: %s scans", p.name, step)
			}
		}
		assert.NotContains(t, got, "TEMP B-TREE", p.name)
	}
	// The statements the store prepared are the ones pinned here.
	for _, q := range []string{plans[0].query, plans[1].query, plans[2].query} {
		assert.True(t, strings.Contains(strings.Join(strings.Fields(allStatements), " "), strings.Join(strings.Fields(q), " ")), q)
	}
}

// allStatements is this package's source, to check that the pinned
// statements are the ones it runs.
var allStatements = func() string {
	var b strings.Builder
	for _, f := range []string{"embedded.go", "writer.go"} {
		src, _ := os.ReadFile(f)
		b.Write(src)
	}
	return b.String()
}()

// skipScale skips a scale test where it would not run in seconds.
func skipScale(t *testing.T) {
	t.Helper()
	switch {
	case testing.Short():
		t.Skip("scale test: not with -short")
	case raceDetector:
		t.Skip("scale test: not under the race detector, which slows SQLite 25-fold; go test ./... runs it")
	}
}

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// recount counts what the stats triggers keep by reading every document's
// typed columns.
func recount(t *testing.T, s *Store) store.Counts {
	t.Helper()
	var c store.Counts
	require.NoError(t, s.read.QueryRow(`SELECT sum(paid), sum(confirmed), sum(retry), sum(fire), sum(dead) FROM docs`).
		Scan(&c.OrdersPaid, &c.OrdersConfirmed, &c.RetryDocs, &c.RetryFlagged, &c.DeadLetters))
	return c
}

// dueMinutes is the due_minutes table, kept by triggers: kind and minute
// to count.
func dueMinutes(t *testing.T, s *Store) map[[2]int64]int64 {
	t.Helper()
	return minutes(t, s, `SELECT kind, minute, n FROM due_minutes`)
}

// recountMinutes counts what due_minutes keeps by reading every retry
// document's typed columns.
func recountMinutes(t *testing.T, s *Store) map[[2]int64]int64 {
	t.Helper()
	return minutes(t, s, `SELECT 0, next_at / 60000, count(*) FROM docs WHERE next_at IS NOT NULL GROUP BY 2
		UNION ALL SELECT 1, ts_at / 60000, count(*) FROM docs WHERE ts_at IS NOT NULL GROUP BY 2`)
}

func minutes(t *testing.T, s *Store, query string) map[[2]int64]int64 {
	t.Helper()
	rows, err := s.read.Query(query)
	require.NoError(t, err)
	defer rows.Close()
	m := map[[2]int64]int64{}
	for rows.Next() {
		var kind, minute, n int64
		require.NoError(t, rows.Scan(&kind, &minute, &n))
		m[[2]int64{kind, minute}] = n
	}
	require.NoError(t, rows.Err())
	return m
}

// fill writes n documents per collection in batches, as a store that has
// seen a long history.
func fill(t *testing.T, s *Store, n int, doc func(i int) (coll, key string, value []byte)) {
	t.Helper()
	ctx := context.Background()
	var batch []store.Write
	for i := range n {
		coll, key, value := doc(i)
		batch = append(batch, store.Write{Op: store.OpUpsert, Collection: coll, Key: key, Value: value})
		if len(batch) == 1000 || i == n-1 {
			_, err := s.Apply(ctx, batch)
			require.NoError(t, err)
			batch = batch[:0]
		}
	}
}

// TestScaleSweepTouchesOnlyDue: 50,000 retry documents not yet due and 300
// due ones. A sweep batch flags at most its limit, the batches end when
// nothing due is left, and what is not due is never written: the feed sees
// exactly the due documents.
func TestScaleSweepTouchesOnlyDue(t *testing.T) {
	skipScale(t)
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	now := time.Now()
	later := now.Add(time.Hour).UnixMilli()
	fill(t, s, 50_000, func(i int) (string, string, []byte) {
		return order.Retry, fmt.Sprintf("wait_%06d", i), fmt.Appendf(nil, `{"type":"confirmation","docId":"wait_%06d","attempt":1,"ts":1,"nextAttemptAt":%d}`, i, later)
	})
	fill(t, s, 300, func(i int) (string, string, []byte) {
		return order.Retry, fmt.Sprintf("due_%03d", i), fmt.Appendf(nil, `{"type":"confirmation","docId":"due_%03d","attempt":1,"ts":1,"nextAttemptAt":%d}`, i, now.Add(-time.Minute).UnixMilli())
	})
	sub, err := s.Subscribe(ctx, "t", []string{order.Retry}, store.FeedOptions{FromNow: true})
	require.NoError(t, err)
	defer sub.Close(ctx)

	var batches []int
	for {
		res, err := s.SweepRetries(ctx, now, 15*time.Second, 100)
		require.NoError(t, err)
		batches = append(batches, res.Flagged)
		if !res.More {
			break
		}
		require.Less(t, len(batches), 10, "the sweep does not end")
	}
	assert.Equal(t, []int{100, 100, 100, 0}, batches)

	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, 50_300, c.RetryDocs)
	assert.Equal(t, 300, c.RetryFlagged)

	var seen int
	for seen < 300 {
		wait, cancel := context.WithTimeout(ctx, 30*time.Second)
		ev, err := sub.Next(wait)
		cancel()
		require.NoError(t, err, "after %d events", seen)
		require.True(t, strings.HasPrefix(ev.Key, "due_"), "a document that was not due was written: %s", ev.Key)
		ev.Ack()
		seen++
	}
	// A wait for nothing to come: long enough for a stray event to, on a
	// loaded machine (the counts above are the check that cannot be late).
	wait, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = sub.Next(wait)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "nothing more on the feed")
}

// TestScaleCountsAndBacklogReadNoDocuments: with 50,000 orders and 20,000
// retries, the counts come from one row kept by triggers (they agree with
// a full recount), and so does the backlog's due count (see
// TestScaleDueCountReadsMinutes).
func TestScaleCountsAndBacklogReadNoDocuments(t *testing.T) {
	skipScale(t)
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	now := time.Now()
	fill(t, s, 50_000, func(i int) (string, string, []byte) {
		return order.Inbound, fmt.Sprintf("o%06d", i), fmt.Appendf(nil, `{"email":"a@b.c","paymentStatus":"paid","confirmationEmailSent":%t}`, i%2 == 0)
	})
	fill(t, s, 20_000, func(i int) (string, string, []byte) {
		at := now.Add(time.Hour)
		if i < 50 {
			at = now.Add(-time.Minute)
		}
		return order.Retry, fmt.Sprintf("o%06d", i), fmt.Appendf(nil, `{"docId":"o%06d","attempt":1,"ts":1,"nextAttemptAt":%d,"lastStatus":503}`, i, at.UnixMilli())
	})
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, store.Counts{OrdersPaid: 50_000, OrdersConfirmed: 25_000, RetryDocs: 20_000}, c)
	assert.Equal(t, recount(t, s), c, "the trigger-kept counts agree with a recount")

	b, err := s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 50, b.Due)
	reasons, err := s.Reasons(ctx)
	require.NoError(t, err)
	assert.Equal(t, []store.Tally{{Reason: "retrying: HTTP 503", Count: 20_000}}, reasons)
}

// TestScaleDueCountReadsMinutes: 60,000 retries due over the last hour,
// 500 of them this very millisecond, and 20,000 due later. The due count
// is exact and reads a row per minute the backlog spans (due_minutes holds
// 81 rows for 80,500 retries) and, on the index, only the current
// minute's entries: backlogQuery's plan is pinned in TestQueryPlans.
func TestScaleDueCountReadsMinutes(t *testing.T) {
	skipScale(t)
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	now := time.Now()
	fill(t, s, 80_500, func(i int) (string, string, []byte) {
		var at time.Time
		switch {
		case i < 60_000: // due over the last hour, a thousand a minute
			at = now.Add(-time.Duration(i/1000+1) * time.Minute)
		case i < 60_500: // due now
			at = now
		default: // due over the next 20 minutes
			at = now.Add(time.Duration((i-60_500)/1000+1) * time.Minute)
		}
		return order.Retry, fmt.Sprintf("o%06d", i), fmt.Appendf(nil, `{"docId":"o%06d","attempt":1,"ts":1,"nextAttemptAt":%d,"lastStatus":503}`, i, at.UnixMilli())
	})
	b, err := s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 60_500, b.Due)
	assert.Equal(t, now.Add(-60*time.Minute).UnixMilli(), b.OldestDue.UnixMilli())
	m := dueMinutes(t, s)
	assert.Equal(t, recountMinutes(t, s), m)
	assert.LessOrEqual(t, len(m), 82, "a row per minute (the hour's, now's, and the next 20), not per retry")

	// Flagged and settled, the due leave the count and their minutes go.
	for {
		res, err := s.SweepRetries(ctx, now, 15*time.Second, 10_000)
		require.NoError(t, err)
		if !res.More {
			break
		}
	}
	b, err = s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 60_500, b.Due, "flagged, they are still due")
	assert.Len(t, dueMinutes(t, s), 20, "only the minutes still waiting")
}

// TestTombstonesPurgedBelowCheckpoints: deletions every saved checkpoint
// has passed are removed, in bounded batches, and only those.
func TestTombstonesPurgedBelowCheckpoints(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	// It wants deletions (no SkipSettled), so removals leave tombstones.
	sub, err := s.Subscribe(ctx, "feed", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	fill(t, s, 2500, func(i int) (string, string, []byte) {
		return order.Inbound, fmt.Sprintf("k%05d", i), []byte(`{}`)
	})
	for i := range 2500 {
		require.NoError(t, s.Remove(ctx, order.Inbound, fmt.Sprintf("k%05d", i), 0))
	}
	tombstones := func() int {
		var n int
		require.NoError(t, s.read.QueryRow(`SELECT count(*) FROM docs WHERE value IS NULL`).Scan(&n))
		return n
	}
	require.Equal(t, 2500, tombstones())
	for range 2500 {
		ev, err := sub.Next(ctx)
		require.NoError(t, err)
		ev.Ack()
	}
	// A checkpoint save goes on batch after batch, each a transaction of
	// its own, while they come back whole.
	require.NoError(t, sub.Close(ctx))
	assert.LessOrEqual(t, tombstones(), 1, "every tombstone below the checkpoint purged (the one at it is kept)")
	_, err = s.Insert(ctx, order.Inbound, "k00000", []byte(`{}`))
	require.NoError(t, err, "a purged key can be created again")
}

// TestRemovalsLeaveTombstonesOnlyWhileASubscriptionWantsDeletions: with
// only subscriptions that skip settled changes (the watcher's), a removal
// deletes the row; one that wants deletions, saved under any name, gets
// tombstones and is handed the deletions, until it is opened again with
// SkipSettled.
func TestRemovalsLeaveTombstonesOnlyWhileASubscriptionWantsDeletions(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	rows := func(key string) int {
		var n int
		require.NoError(t, s.read.QueryRow(`SELECT count(*) FROM docs WHERE coll = ? AND key = ?`, order.Retry, key).Scan(&n))
		return n
	}
	removed := func(key string) uint64 {
		_, err := s.Insert(ctx, order.Retry, key, []byte(`{"docId":"`+key+`","attempt":1,"ts":1,"reason":"transient"}`))
		require.NoError(t, err)
		cas, err := s.Apply(ctx, []store.Write{{Op: store.OpRemove, Collection: order.Retry, Key: key}})
		require.NoError(t, err)
		return cas[0]
	}
	open := func(name string, opts store.FeedOptions) store.Subscription {
		sub, err := s.Subscribe(ctx, name, []string{order.Retry}, opts)
		require.NoError(t, err)
		return sub
	}

	watcher := open("watcher", store.FeedOptions{SkipSettled: true, FromNow: true})
	defer watcher.Close(ctx)
	at := removed("r1")
	assert.Zero(t, rows("r1"), "nobody wants the deletion: no tombstone")
	assert.NotZero(t, at, "a removal still has its position")
	seq, err := s.Upsert(ctx, order.Retry, "other", []byte(`{}`))
	require.NoError(t, err)
	assert.Greater(t, seq, at, "positions go on after it")

	audit := open("audit", store.FeedOptions{FromNow: true})
	removed("r2")
	assert.Equal(t, 1, rows("r2"), "a subscription wants deletions: a tombstone")
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		ev, err := audit.Next(wait)
		require.NoError(t, err, "the deletion of r2 was not handed out")
		ev.Ack()
		if ev.Key == "r2" && ev.Deleted {
			break
		}
	}
	require.NoError(t, audit.Close(ctx))
	removed("r3")
	assert.Equal(t, 1, rows("r3"), "a closed subscription saved under its name still wants them")

	audit = open("audit", store.FeedOptions{FromNow: true, SkipSettled: true})
	defer audit.Close(ctx)
	removed("r4")
	assert.Zero(t, rows("r4"), "opened again with SkipSettled, it no longer wants them")
	_, err = s.Insert(ctx, order.Retry, "r1", []byte(`{}`))
	require.NoError(t, err, "a removed key can be created again")

	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, recount(t, s), c, "the trigger-kept counts agree with a recount")
	assert.Equal(t, 2, c.RetryDocs)
}

// TestMigratesAFirstReleaseFile: a file made by the first release (no
// schema version, no typed columns) is upgraded in place: documents,
// counts, the sweep and the feed's checkpoint carry over.
func TestMigratesAFirstReleaseFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	_, err = db.Exec(schemaV1)
	require.NoError(t, err)
	due := time.Now().Add(-time.Minute).UnixMilli()
	for i, d := range []struct{ coll, key, value string }{
		{order.Inbound, "o1", `{"email":"a@b.c","paymentStatus":"paid"}`},
		{order.Inbound, "o2", `{"email":"a@b.c","paymentStatus":"paid","confirmationEmailSent":true}`},
		{order.Retry, "o1", fmt.Sprintf(`{"docId":"o1","attempt":1,"ts":1,"nextAttemptAt":%d}`, due)},
		{order.Retry, order.ControlKey, `{}`},
		{order.DeadLetter, "o3", `{"docId":"o3","reason":"permanent_error","lastStatus":400}`},
	} {
		_, err = db.Exec(`INSERT INTO docs (coll, key, value, seq) VALUES (?, ?, ?, ?)`, d.coll, d.key, d.value, i+1)
		require.NoError(t, err)
	}
	_, err = db.Exec(`INSERT INTO docs (coll, key, value, seq) VALUES ('inbound', 'gone', NULL, 6)`)
	require.NoError(t, err)
	_, err = db.Exec(`UPDATE counters SET value = 6; INSERT INTO checkpoints VALUES ('ordermail', 0, 4)`)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	ctx := context.Background()
	s := openUpgraded(t, path)
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, store.Counts{OrdersPaid: 2, OrdersConfirmed: 1, RetryDocs: 1, DeadLetters: 1}, c)
	var wants bool
	require.NoError(t, s.read.QueryRow(`SELECT deletions FROM checkpoints WHERE name = 'ordermail'`).Scan(&wants))
	assert.True(t, wants, "a subscription saved before says nothing of deletions: it is taken to want them")
	assert.Equal(t, map[[2]int64]int64{{0, due / 60000}: 1}, dueMinutes(t, s), "the due retry counted by its minute")
	b, err := s.Backlog(ctx, time.Now(), 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 1, b.Due)
	sub, err := s.Subscribe(ctx, "ordermail", []string{order.Inbound, order.Retry}, store.FeedOptions{})
	require.NoError(t, err)
	defer sub.Close(ctx)
	ev, err := sub.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(6), ev.Seq, "the feed resumes after its checkpoint")
	res, err := s.SweepRetries(ctx, time.Now(), 15*time.Second, 10)
	require.NoError(t, err)
	assert.Equal(t, 1, res.Flagged)
	cas, err := s.Upsert(ctx, order.Inbound, "o9", []byte(`{}`))
	require.NoError(t, err)
	assert.Greater(t, cas, uint64(7), "sequence numbers go on from the old counter")

	// The first release sent "confirmation:<key>" on every attempt and kept
	// no key: its retries and dead letters keep that one, lest the attempts
	// after the upgrade reach the email service as a new confirmation.
	r, err := s.Get(ctx, order.Retry, "o1")
	require.NoError(t, err)
	rd, err := order.DecodeRetryDoc(r.Value)
	require.NoError(t, err)
	assert.Equal(t, "confirmation:o1", rd.IdempotencyKey, "%s", r.Value)
	assert.True(t, rd.FireRetry, "and the rest as it was: flagged by the sweep above")
	d, err := s.Get(ctx, order.DeadLetter, "o3")
	require.NoError(t, err)
	dd, err := order.DecodeDeadLetter(d.Value)
	require.NoError(t, err)
	assert.Equal(t, "confirmation:o3", dd.IdempotencyKey)
	assert.Equal(t, 400, dd.LastStatus)
	ctl, err := s.Get(ctx, order.Retry, order.ControlKey)
	require.NoError(t, err)
	assert.JSONEq(t, `{}`, string(ctl.Value), "the control document is no retry")
}

// TestScaleFeedPassesOverSettledHistoryInWindows: 50,000 confirmed orders,
// then one paid. With SkipSettled the feed hands out the paid order alone;
// each read looks at one window of positions at most, returns nothing for
// what it passes over, and the checkpoint moves past all of it.
func TestScaleFeedPassesOverSettledHistoryInWindows(t *testing.T) {
	skipScale(t)
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	const n = 50_000
	fill(t, s, n, func(i int) (string, string, []byte) {
		return order.Inbound, fmt.Sprintf("o%06d", i), []byte(`{"paymentStatus":"paid","confirmationEmailSent":true}`)
	})
	paid, err := s.Insert(ctx, order.Inbound, "new", []byte(`{"paymentStatus":"paid"}`))
	require.NoError(t, err)

	st, err := s.Subscribe(ctx, "feed", []string{order.Inbound, order.Retry}, store.FeedOptions{SkipSettled: true})
	require.NoError(t, err)
	sub := st.(*subscription)
	reads := 0
	for len(sub.buf) == 0 || sub.buf[len(sub.buf)-1].skip {
		before := sub.lastRead
		require.NoError(t, sub.fill(ctx))
		reads++
		require.LessOrEqual(t, sub.lastRead-before, uint64(scanWindow), "one read looked past its window")
		require.Less(t, reads, n/scanWindow+3, "the reads do not move: at %d of %d", sub.lastRead, paid)
	}
	for _, e := range sub.buf[:len(sub.buf)-1] {
		require.True(t, e.skip)
	}
	assert.Equal(t, n/scanWindow+1, reads, "one read a window, the last one finding the paid order")
	ev, err := sub.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, "new", ev.Key)
	ev.Ack()
	require.NoError(t, sub.Close(ctx))
	var saved uint64
	require.NoError(t, s.read.QueryRow(`SELECT seq FROM checkpoints WHERE name = ? AND partition = 0`, "feed").Scan(&saved))
	assert.Equal(t, paid, saved, "the checkpoint is the paid order's position, past the history")
}

// TestWritesInAStreamShareCommits: the watcher's writes
// (store.WithSharedCommit) that come one after another, each well after
// the last one's commit could have been made, share commits while they
// keep coming (CommitDelay), where each would otherwise commit alone.
func TestWritesInAStreamShareCommits(t *testing.T) {
	t.Parallel()
	s, err := Open(context.Background(), Config{Path: filepath.Join(t.TempDir(), "o.db"), CommitDelay: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	ctx := store.WithSharedCommit(context.Background())
	before := s.commits.Load()
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, err := s.Upsert(ctx, order.Inbound, fmt.Sprintf("k%02d", i), []byte(`{}`))
			errs <- err
		})
		time.Sleep(2 * time.Millisecond) // the pace of the stream, not a wait for an outcome
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	commits := s.commits.Load() - before
	assert.LessOrEqual(t, commits, uint64(n/5), "%d writes in %d commits", n, commits)
}

// TestOneWriteAfterAnotherIsNotHeld: a caller that waits for each write
// before the next (ordermail load, pay) is not held for other writers that
// are not there, however long CommitDelay: its writes are not marked
// store.WithSharedCommit. Held, each of these would wait a minute.
func TestOneWriteAfterAnotherIsNotHeld(t *testing.T) {
	t.Parallel()
	s, err := Open(context.Background(), Config{Path: filepath.Join(t.TempDir(), "o.db"), CommitDelay: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	const n = 20
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if _, err := s.Upsert(context.Background(), order.Inbound, fmt.Sprintf("k%02d", i), []byte(`{}`)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%d writes one after another did not finish in 30s: held for other writers (CommitDelay)", n)
	}
}

// TestMigratesAVersion5File: a file of schema version 5, whose documents
// and attempt records sat where their keys sort, keeps every row, count and
// checkpoint through version 6, and its documents' rows then follow the
// order they were written (the feed's), whatever their keys.
// A version-3 file as three commits of 2026-12-02 made it (eaee1d8,
// c5748fd, cb22961): attempt records in docs, with docs.expires_at, and
// no attempts table. It upgrades, its records moved to their table, where
// migrateV6 failed on it for good.
func TestMigratesAnEarlyVersion3File(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v3early.db")
	db, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	db.SetMaxOpenConns(1)
	require.NoError(t, migrateTo(ctx, db, 2))
	_, err = db.ExecContext(ctx, `ALTER TABLE docs ADD COLUMN expires_at INTEGER;
		CREATE INDEX expiring ON docs (expires_at) WHERE expires_at IS NOT NULL;
		PRAGMA user_version = 3;`)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `INSERT INTO docs (coll, key, value, seq, created, paid, expires_at) VALUES
		('attempts', 'o1', '{"docId":"o1","attempts":[]}', 1, 1, 0, 4102444800000),
		('inbound', 'o1', '{"email":"a@b.c","paymentStatus":"paid"}', 2, 2, 1, NULL)`)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `UPDATE counters SET value = 2 WHERE name = 'seq'`)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	s, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	defer s.Close()
	rec, err := s.Get(ctx, "attempts", "o1")
	require.NoError(t, err, "the attempt record moved to its table")
	assert.JSONEq(t, `{"docId":"o1","attempts":[]}`, string(rec.Value))
	o, err := s.Get(ctx, "inbound", "o1")
	require.NoError(t, err)
	assert.NotZero(t, o.CAS)
	var left int
	require.NoError(t, s.read.QueryRowContext(ctx, `SELECT count(*) FROM docs WHERE coll = 'attempts'`).Scan(&left))
	assert.Zero(t, left, "no attempt record left in docs")
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, c.OrdersPaid)
}

func TestMigratesAVersion5File(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v5.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=temp_store(MEMORY)")
	require.NoError(t, err)
	db.SetMaxOpenConns(1) // as the store's writer
	require.NoError(t, migrateTo(ctx, db, 5))
	var tempStore int
	require.NoError(t, db.QueryRow(`PRAGMA temp_store`).Scan(&tempStore))
	require.Equal(t, 2, tempStore, "the migrations' temporary files are theirs alone: the connection's setting is back")
	now := time.Now()
	var keys []string // in write order, not in key order
	for i := range 40 {
		key := fmt.Sprintf("%02d-%d", (i*17)%40, i)
		keys = append(keys, key)
		var coll string
		var value []byte
		switch i % 4 {
		case 0:
			coll, value = order.Inbound, []byte(`{"paymentStatus":"paid"}`)
		case 1:
			coll, value = order.Retry, fmt.Appendf(nil, `{"docId":%q,"attempt":1,"ts":1,"nextAttemptAt":%d,"reason":"transient"}`, key, now.Add(time.Duration(i)*time.Minute).UnixMilli())
		case 2:
			coll, value = order.DeadLetter, []byte(`{"docId":"x","reason":"permanent_error","lastStatus":400}`)
		case 3:
			coll = order.Retry // a tombstone
		}
		var v any
		if value != nil {
			v = string(value)
		}
		_, err := db.Exec(`INSERT INTO docs (coll, key, value, seq, created, paid, confirmed, retry, fire, next_at, ts_at, dead, tally)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, append([]any{coll, key, v, i + 1, i + 1}, classify(coll, key, value).args()...)...)
		require.NoError(t, err)
		_, err = db.Exec(`INSERT INTO attempts (key, value, rev, expires_at) VALUES (?, '{}', ?, ?)`, key, i+1, now.Add(time.Hour).UnixMilli())
		require.NoError(t, err)
	}
	_, err = db.Exec(`UPDATE counters SET value = 40; INSERT INTO checkpoints (name, partition, seq, deletions) VALUES ('ordermail', 0, 20, 0)`)
	require.NoError(t, err)
	dump := func(db *sql.DB) map[string][][]any {
		out := map[string][][]any{}
		for name, query := range map[string]string{
			"docs":     `SELECT coll, key, value, seq, created, paid, confirmed, retry, fire, next_at, ts_at, dead, tally FROM docs ORDER BY seq`,
			"attempts": `SELECT key, value, rev, expires_at FROM attempts ORDER BY key`,
			"stats":    `SELECT * FROM stats`, "tallies": `SELECT * FROM tallies ORDER BY name`,
			"due_minutes": `SELECT * FROM due_minutes ORDER BY kind, minute`, "checkpoints": `SELECT * FROM checkpoints`,
			"counters": `SELECT * FROM counters`,
		} {
			rows, err := db.Query(query)
			require.NoError(t, err)
			cols, err := rows.Columns()
			require.NoError(t, err)
			for rows.Next() {
				row := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range row {
					ptrs[i] = &row[i]
				}
				require.NoError(t, rows.Scan(ptrs...))
				out[name] = append(out[name], row)
			}
			require.NoError(t, rows.Close())
		}
		return out
	}
	before := dump(db)
	require.Len(t, before["docs"], 40)
	require.NoError(t, db.Close())

	s := openUpgraded(t, path)
	assert.Equal(t, before, dump(s.read), "every row carried over")
	assertNoStatementJournal(t, s)
	rows, err := s.read.Query(`SELECT key FROM docs ORDER BY id`)
	require.NoError(t, err)
	var inRowOrder []string
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		inRowOrder = append(inRowOrder, k)
	}
	require.NoError(t, rows.Close())
	assert.Equal(t, keys, inRowOrder, "the rows follow the order written, not the keys")

	_, err = s.Upsert(ctx, order.Inbound, "00-new", []byte(`{"paymentStatus":"paid"}`))
	require.NoError(t, err)
	var last string
	require.NoError(t, s.read.QueryRow(`SELECT key FROM docs ORDER BY id DESC LIMIT 1`).Scan(&last))
	assert.Equal(t, "00-new", last, "a new document's row comes after the others, though its key sorts first")
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, recount(t, s), c)
	assert.Equal(t, recountMinutes(t, s), dueMinutes(t, s))
	res, err := s.SweepRetries(ctx, now.Add(time.Hour), 15*time.Second, 100)
	require.NoError(t, err)
	assert.Equal(t, 10, res.Flagged, "the retry documents found by their index and flagged by row id")
	c, err = s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, recount(t, s), c)
}

// A version-6 file's triggers have statements without a conflict clause,
// as that version wrote them: version 7 makes them again, saying OR FAIL,
// and the counts they keep go on adding up.
func TestMigratesAVersion6File(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path, db := fileAtVersion(t, 6)
	rows, err := db.Query(`SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'docs'`)
	require.NoError(t, err)
	defs := map[string]string{}
	for rows.Next() {
		var name, def string
		require.NoError(t, rows.Scan(&name, &def))
		defs[name] = def
	}
	require.NoError(t, rows.Close())
	require.Len(t, defs, 12)
	for name, def := range defs {
		_, err := db.Exec(fmt.Sprintf("DROP TRIGGER %q; %s", name, strings.ReplaceAll(def, " OR FAIL", "")))
		require.NoError(t, err, name)
	}
	require.NoError(t, db.Close())

	s := openUpgraded(t, path)
	assertNoStatementJournal(t, s)

	now := time.Now()
	_, err = s.Upsert(ctx, order.Inbound, "o1", []byte(`{"paymentStatus":"paid"}`))
	require.NoError(t, err)
	_, err = s.Upsert(ctx, order.Retry, "o1", fmt.Appendf(nil, `{"docId":"o1","attempt":1,"ts":1,"nextAttemptAt":%d,"fireRetry":false}`, now.UnixMilli()))
	require.NoError(t, err)
	res, err := s.SweepRetries(ctx, now.Add(time.Minute), 15*time.Second, 100)
	require.NoError(t, err)
	assert.Equal(t, 1, res.Flagged)
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, store.Counts{OrdersPaid: 1, RetryDocs: 1, RetryFlagged: 1}, c)
	assert.Equal(t, recount(t, s), c)
	assert.Equal(t, recountMinutes(t, s), dueMinutes(t, s))
	d, err := s.Get(ctx, order.Retry, "o1")
	require.NoError(t, err)
	assert.JSONEq(t, fmt.Sprintf(`{"docId":"o1","attempt":1,"ts":1,"nextAttemptAt":%d,"fireRetry":true}`, now.UnixMilli()), string(d.Value),
		"the flag sets fireRetry and keeps every other field")
}

// A version-7 file's flagged retry documents get the time they fell due
// (fire_at) when version 8 adds it, the rules of classifyRetry, so that the
// oldest due counts them at once.
func TestMigratesAVersion7File(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path, db := fileAtVersion(t, 7)
	now := time.Now()
	byNext, byTS := now.Add(-3*time.Hour).UnixMilli(), now.Add(-5*time.Hour).UnixMilli()
	writeOldDocs(t, db, order.Retry, []oldDoc{
		{"n", fmt.Sprintf(`{"docId":"n","attempt":1,"ts":1,"nextAttemptAt":%d,"fireRetry":true}`, byNext), "retrying", true},
		{"t", fmt.Sprintf(`{"docId":"t","ts":%d,"fireRetry":true}`, byTS), "retrying", true},
		{"u", `{"docId":"u","attempt":1,"fireRetry":true}`, "retrying", true}, // due by nothing: not in the oldest
	})

	s := openUpgraded(t, path)
	got := map[string]any{}
	rows, err := s.read.Query(`SELECT key, fire_at FROM docs WHERE coll = 'retry'`)
	require.NoError(t, err)
	for rows.Next() {
		var key string
		var at sql.NullInt64
		require.NoError(t, rows.Scan(&key, &at))
		got[key] = nil
		if at.Valid {
			got[key] = at.Int64
		}
	}
	require.NoError(t, rows.Close())
	assert.Equal(t, map[string]any{"n": byNext, "t": byTS, "u": nil}, got)
	b, err := s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 3, b.Due)
	assert.Equal(t, byTS, b.OldestDue.UnixMilli())
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, recount(t, s), c)
}

// Version 9 counts the retry documents a held-back send wrote before
// heldBack existed (lastError "not attempted: ...", no lastStatus) as held
// back, where version 8 counted them as getting no answer; the others keep
// their reason.
func TestMigratesAVersion8File(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path, db := fileAtVersion(t, 8)
	writeOldDocs(t, db, order.Retry, []oldDoc{
		{"held", `{"docId":"held","attempt":0,"ts":1,"lastError":"not attempted: circuit breaker open: email service not called"}`, "retrying: no answer", false},
		{"timeout", `{"docId":"timeout","attempt":1,"ts":1,"lastError":"no answer: timeout"}`, "retrying: no answer", false},
		{"answered", `{"docId":"answered","attempt":1,"ts":1,"lastStatus":503,"lastError":"answered 503 Service Unavailable"}`, "retrying: HTTP 503", false},
		{"bad", `not json`, "retrying: unreadable retry document", false},
	})

	s := openUpgraded(t, path)
	tallies, err := s.Reasons(ctx)
	require.NoError(t, err)
	assert.ElementsMatch(t, []store.Tally{
		{Reason: "retrying: held back", Count: 1}, {Reason: "retrying: no answer", Count: 1},
		{Reason: "retrying: HTTP 503", Count: 1}, {Reason: "retrying: unreadable retry document", Count: 1},
	}, tallies)
	var tally string
	require.NoError(t, s.read.QueryRow(`SELECT tally FROM docs WHERE coll = 'retry' AND key = 'held'`).Scan(&tally))
	assert.Equal(t, "retrying: held back", tally)
}

// A version-9 file's readable dead letters get their reason's column, and
// the dead letters of a reason are read on its index.
func TestMigratesAVersion9File(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path, db := fileAtVersion(t, 9)
	writeOldDocs(t, db, order.DeadLetter, []oldDoc{
		{key: "a", value: `{"docId":"a","reason":"permanent","lastStatus":406}`, tally: "dead: permanent (HTTP 406)"},
		{key: "b", value: `{"docId":"b","reason":"exhausted"}`, tally: "dead: exhausted"},
		{key: "c", value: `{"docId":"c","reason":"permanent"}`, tally: "dead: permanent"},
		{key: "d", value: `{"reason":"permanent"}`, tally: "dead: unreadable dead letter"},
		{key: "e", value: `not json`, tally: "dead: unreadable dead letter"},
	})

	s := openUpgraded(t, path)
	of := func(reason string) []string {
		var keys []string
		require.NoError(t, s.ScanDeadLetters(ctx, reason, "", func(d store.Doc) error { keys = append(keys, d.Key); return nil }))
		return keys
	}
	assert.Equal(t, []string{"a", "c"}, of("permanent"))
	assert.Equal(t, []string{"b"}, of("exhausted"))
	var unreadable int
	require.NoError(t, s.read.QueryRow(`SELECT count(*) FROM docs WHERE dead = 1 AND reason IS NULL`).Scan(&unreadable))
	assert.Equal(t, 2, unreadable, "an unreadable dead letter has no reason")
	var indexes int
	require.NoError(t, s.read.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name IN ('dead_reason', 'retry_tally')`).Scan(&indexes))
	assert.Equal(t, 2, indexes, "the dead letters' and the retries' reasons are indexed")
	assert.Equal(t, store.Counts{DeadLetters: 5}, recount(t, s))
}

// oldDoc is a retry document or dead letter as an older version's file
// holds it.
type oldDoc struct {
	key, value, tally string
	fire              bool
}

// writeOldDocs writes docs of coll (retry or deadletter) into db, a file of
// an older version, with their typed columns as that version's writer gave
// them, and closes it.
func writeOldDocs(t *testing.T, db *sql.DB, coll string, docs []oldDoc) {
	t.Helper()
	for i, d := range docs {
		_, err := db.Exec(`INSERT INTO docs (coll, key, value, seq, created, retry, fire, dead, tally) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			coll, d.key, d.value, i+1, i+1, coll == order.Retry, d.fire, coll == order.DeadLetter, d.tally)
		require.NoError(t, err)
	}
	_, err := db.Exec(`UPDATE counters SET value = ? WHERE name = 'seq'`, len(docs))
	require.NoError(t, err)
	require.NoError(t, db.Close())
}

// fileAtVersion makes a store file of schema version v, and the handle
// that made it, one connection as the store's writer has. The file is in
// WAL mode, as every release has made them: in SQLite's rollback journal
// mode, which no release used, readers and a writer block each other.
func fileAtVersion(t *testing.T, v int) (string, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("v%d.db", v))
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)")
	require.NoError(t, err)
	db.SetMaxOpenConns(1)
	require.NoError(t, migrateTo(context.Background(), db, v))
	return path, db
}

// openUpgraded opens the file at path as the store, which upgrades it, and
// checks that it is at SchemaVersion.
func openUpgraded(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Path: path})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	var version int
	require.NoError(t, s.read.QueryRow(`PRAGMA user_version`).Scan(&version))
	require.Equal(t, SchemaVersion, version)
	return s
}

// A flag keeps when its retry document fell due (fire_at): by its
// nextAttemptAt, or by its ts and the quantum, as the sweep found it due.
// The oldest due counts flagged documents by it, so a backlog the sweep
// flagged ahead of the sends still shows its age.
func TestFlagKeepsWhenItFellDue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	now := time.Now()
	byNext, byTS := now.Add(-time.Hour).UnixMilli(), now.Add(-2*time.Hour).UnixMilli()
	_, err := s.Upsert(ctx, order.Retry, "n", fmt.Appendf(nil, `{"docId":"n","attempt":1,"ts":1,"nextAttemptAt":%d}`, byNext))
	require.NoError(t, err)
	_, err = s.Upsert(ctx, order.Retry, "t", fmt.Appendf(nil, `{"docId":"t","ts":%d}`, byTS))
	require.NoError(t, err)
	res, err := s.SweepRetries(ctx, now, 15*time.Second, 10)
	require.NoError(t, err)
	require.Equal(t, 2, res.Flagged)

	fireAt := func(key string) int64 {
		var at int64
		require.NoError(t, s.read.QueryRow(`SELECT fire_at FROM docs WHERE coll = 'retry' AND key = ?`, key).Scan(&at))
		return at
	}
	assert.Equal(t, byNext, fireAt("n"))
	assert.Equal(t, byTS+15_000, fireAt("t"), "due a quantum after its ts")
	b, err := s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 2, b.Due)
	assert.Equal(t, byTS+15_000, b.OldestDue.UnixMilli())

	// Sent (removed) or failed again (written unflagged), a document
	// leaves the oldest due.
	_, err = s.Apply(ctx, []store.Write{{Op: store.OpRemove, Collection: order.Retry, Key: "t"}})
	require.NoError(t, err)
	_, err = s.Upsert(ctx, order.Retry, "n", fmt.Appendf(nil, `{"docId":"n","attempt":2,"ts":1,"nextAttemptAt":%d}`, now.Add(time.Hour).UnixMilli()))
	require.NoError(t, err)
	b, err = s.Backlog(ctx, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 0, b.Due)
	assert.True(t, b.OldestDue.IsZero(), "%s", b.OldestDue)
	var left int
	require.NoError(t, s.read.QueryRow(`SELECT count(*) FROM docs WHERE fire_at IS NOT NULL`).Scan(&left))
	assert.Zero(t, left)
}

// TestTwoProcessesOpeningAtOnceBothOpen: a service and its standby, or run
// and load, opening a new file, or an older one, at once: each step of the
// schema is made once, by whichever takes the write lock first, and the
// other finds it made (each read the version outside that lock, and the
// second failed on "duplicate column", in 19 of 20 rounds).
func TestTwoProcessesOpeningAtOnceBothOpen(t *testing.T) {
	t.Parallel()
	for _, from := range []int{0, SchemaVersion - 1} {
		for round := range 10 {
			var path string
			if from == 0 {
				path = filepath.Join(t.TempDir(), "new.db")
			} else {
				var db *sql.DB
				path, db = fileAtVersion(t, from)
				require.NoError(t, db.Close())
			}
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i := range errs {
				wg.Go(func() {
					s, err := Open(context.Background(), Config{Path: path})
					errs[i] = err
					if err == nil {
						s.Close()
					}
				})
			}
			wg.Wait()
			for _, err := range errs {
				require.NoError(t, err, "from version %d, round %d", from, round)
			}
			s := openUpgraded(t, path)
			require.NoError(t, s.Close())
		}
	}
}

// TestAFileAServiceRunsOnIsNotUpgradedUnderIt: an older service runs on the
// file (it holds the process lock); this version's command or standby
// opening it must not upgrade it under that service, whose writes would
// leave the new columns empty for good: it says to stop the service first.
func TestAFileAServiceRunsOnIsNotUpgradedUnderIt(t *testing.T) {
	t.Parallel()
	path, db := fileAtVersion(t, SchemaVersion-1)
	require.NoError(t, db.Close())
	running := NewProcessLock(path)
	ok, err := running.TryLock()
	require.NoError(t, err)
	require.True(t, ok)

	_, err = Open(context.Background(), Config{Path: path})
	requireRefusedAndLeft(t, path, err)

	require.NoError(t, running.Unlock()) // the old service stopped
	s := openUpgraded(t, path)
	require.NoError(t, s.Close())
	again := NewProcessLock(path)
	ok, err = again.TryLock()
	require.NoError(t, err)
	assert.True(t, ok, "the upgrade let the lock go: the new service takes it")
	require.NoError(t, again.Unlock())
}

// TestAFileAnOlderProcessHasOpenIsNotUpgraded: a process of an older
// version that has the file open without running the feed (a standby
// waiting to take over, a command) holds the open lock shared; this
// version waits for it to let the file go, then refuses, and upgrades once
// it has. Taking over later, the standby would have written as the older
// version does, leaving the new columns empty.
func TestAFileAnOlderProcessHasOpenIsNotUpgraded(t *testing.T) {
	t.Parallel()
	path, db := fileAtVersion(t, SchemaVersion-1)
	require.NoError(t, db.Close())
	older, err := os.OpenFile(path+".open", os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	defer older.Close()
	require.NoError(t, flock(older, syscall.LOCK_SH))

	_, err = Open(context.Background(), Config{Path: path, BusyTimeout: 200 * time.Millisecond})
	requireRefusedAndLeft(t, path, err)

	require.NoError(t, flock(older, syscall.LOCK_UN)) // the older process stopped
	s := openUpgraded(t, path)
	defer s.Close()
	assert.Equal(t, SchemaVersion, versionOf(t, path))
}

// requireRefusedAndLeft checks that Open refused to upgrade the file at
// path (of SchemaVersion-1) under an older process, and left it as it was.
func requireRefusedAndLeft(t *testing.T, path string, err error) {
	t.Helper()
	require.ErrorIs(t, err, ErrUpgradeWhileRunning)
	assert.ErrorContains(t, err, fmt.Sprintf("schema version %d is older than this ordermail's %d", SchemaVersion-1, SchemaVersion))
	assert.Equal(t, SchemaVersion-1, versionOf(t, path), "left as it was")
}

// versionOf reads the schema version of the file at path.
func versionOf(t *testing.T, path string) int {
	t.Helper()
	check, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	require.NoError(t, err)
	defer check.Close()
	version, err := fileVersion(context.Background(), check)
	require.NoError(t, err)
	return version
}

// TestAnOpenStoreHoldsTheOpenLockShared: while a store is open, no process
// can take the open lock for itself (a newer version waits for it to
// close), another of this version opens the file beside it, and an older
// release, which takes the upgrade lock for its look alone, is not kept
// waiting (it waited as long as the store was open).
func TestAnOpenStoreHoldsTheOpenLockShared(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(context.Background(), Config{Path: path})
	require.NoError(t, err)
	newer, err := os.OpenFile(path+".open", os.O_RDWR, 0)
	require.NoError(t, err)
	defer newer.Close()
	require.ErrorIs(t, tryFlock(newer, syscall.LOCK_EX), syscall.EWOULDBLOCK, "an open store lets a newer version upgrade it")
	olderRelease, err := os.OpenFile(path+".upgrade", os.O_RDWR, 0)
	require.NoError(t, err)
	defer olderRelease.Close()
	require.NoError(t, tryFlock(olderRelease, syscall.LOCK_EX), "an older release's look waits for the store to close")
	require.NoError(t, flock(olderRelease, syscall.LOCK_UN))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	beside, err := Open(ctx, Config{Path: path, BusyTimeout: 200 * time.Millisecond})
	require.NoError(t, err, "a second store of this version opens the file beside the first")
	require.NoError(t, beside.Close())
	assert.ErrorIs(t, tryFlock(newer, syscall.LOCK_EX), syscall.EWOULDBLOCK, "one store closed, the other still open")

	require.NoError(t, s.Close())
	assert.NoError(t, tryFlock(newer, syscall.LOCK_EX), "closed, the file may be upgraded")
}

// TestAnUpgradeMakesNoLockFile: with no lock file (none ran here, or its
// file was deleted), the upgrade makes none: a standby waiting on a lock
// file deleted under the service it stands by for would take the new one
// as not its own to wait out.
func TestAnUpgradeMakesNoLockFile(t *testing.T) {
	t.Parallel()
	path, db := fileAtVersion(t, SchemaVersion-1)
	require.NoError(t, db.Close())
	s := openUpgraded(t, path)
	require.NoError(t, s.Close())
	_, err := os.Stat(NewProcessLock(path).Path())
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// Tombstones are purged below the lowest saved checkpoint, not below the
// highest: a subscription that has read further purges nothing that one
// behind it still has to read.
func TestTombstonesAreKeptForTheSubscriptionBehind(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	slow, err := s.Subscribe(ctx, "slow", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	fast, err := s.Subscribe(ctx, "fast", []string{order.Inbound}, store.FeedOptions{})
	require.NoError(t, err)
	const n = 10
	for i := range n {
		k := fmt.Sprintf("k%02d", i)
		_, err := s.Insert(ctx, order.Inbound, k, []byte(`{}`))
		require.NoError(t, err)
		require.NoError(t, s.Remove(ctx, order.Inbound, k, 0))
	}
	// readDeletions reads sub until it has seen every removal, each as a
	// deletion (a key's insertion may be overtaken by its removal).
	readDeletions := func(name string, sub store.Subscription) {
		deleted := map[string]bool{}
		for len(deleted) < n {
			nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			ev, err := sub.Next(nctx)
			cancel()
			require.NoError(t, err, "%s: the deletions read: %v", name, deleted)
			if ev.Deleted {
				deleted[ev.Key] = true
			}
			ev.Ack()
		}
	}
	readDeletions("fast", fast)
	require.NoError(t, fast.Close(ctx)) // saves its checkpoint, and purges what is below the lowest
	readDeletions("slow", slow)         // the subscription behind loses none
	require.NoError(t, slow.Close(ctx))
}
