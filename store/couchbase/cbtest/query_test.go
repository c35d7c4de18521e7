package cbtest

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The statements below are the shapes the ordermail adapter sends
// (store/couchbase/store.go and setup.go), written out here so that this
// package tests the server with gocb alone.

const ksRetry = "`orders`.`_default`.`retry`"
const ksInbound = "`orders`.`_default`.`inbound`"
const ksDead = "`orders`.`_default`.`deadletter`"

var setupIndexes = []string{
	"CREATE PRIMARY INDEX IF NOT EXISTS ON " + ksRetry,
	"CREATE PRIMARY INDEX IF NOT EXISTS ON " + ksDead,
	"CREATE PRIMARY INDEX IF NOT EXISTS ON " + ksInbound,
	"CREATE INDEX IF NOT EXISTS ix_retry_next ON " + ksRetry + "(nextAttemptAt)",
	"CREATE INDEX IF NOT EXISTS ix_retry_ts ON " + ksRetry + "(ts) WHERE nextAttemptAt IS MISSING",
	"CREATE INDEX IF NOT EXISTS ix_inbound_paid ON " + ksInbound + "(paymentStatus, confirmationEmailSent)",
}

func sweep(limit string) string {
	s := "UPDATE " + ksRetry + " AS r SET r.fireRetry = true " +
		"WHERE META(r).id != $control AND (r.fireRetry IS MISSING OR r.fireRetry != true) AND (" +
		"(r.nextAttemptAt <= $now AND IS_NUMBER(r.nextAttemptAt)) OR " +
		"(r.nextAttemptAt IS MISSING AND r.ts < $cutoff AND IS_NUMBER(r.ts))) "
	if limit != "" {
		s += "LIMIT " + limit + " "
	}
	return s + "RETURNING RAW META(r).id"
}

const counts = "SELECT " +
	"(SELECT RAW COUNT(*) FROM " + ksInbound + " AS o WHERE o.paymentStatus = \"paid\")[0] AS ordersPaid, " +
	"(SELECT RAW COUNT(*) FROM " + ksInbound + " AS o WHERE o.paymentStatus = \"paid\" AND o.confirmationEmailSent = true)[0] AS ordersConfirmed, " +
	"(SELECT RAW COUNT(*) FROM " + ksRetry + " AS r WHERE META(r).id != $control)[0] AS retryDocs, " +
	"(SELECT RAW COUNT(*) FROM " + ksRetry + " AS r WHERE META(r).id != $control AND r.fireRetry = true)[0] AS retryFlagged, " +
	"(SELECT RAW COUNT(*) FROM " + ksDead + " AS d)[0] AS deadLetters"

func scan(ks string) string {
	return "SELECT RAW META(d).id FROM " + ks + " AS d WHERE META(d).id > $after ORDER BY META(d).id LIMIT $limit"
}

func queryRows[T any](t *testing.T, c *gocb.Cluster, stmt string, params map[string]any) ([]T, error) {
	t.Helper()
	// An EXPLAIN cannot be prepared, and gocb prepares what is not ad hoc.
	res, err := c.Query(stmt, &gocb.QueryOptions{NamedParameters: params, ScanConsistency: gocb.QueryScanConsistencyRequestPlus,
		Adhoc: strings.HasPrefix(stmt, "EXPLAIN ")})
	if err != nil {
		return nil, err
	}
	var out []T
	for res.Next() {
		var v T
		require.NoError(t, res.Row(&v))
		out = append(out, v)
	}
	return out, res.Err()
}

func queryServer(t *testing.T) (*Server, *gocb.Cluster, *gocb.Bucket) {
	s := Start(t, Options{Nodes: 2, VBuckets: 32, Buckets: []BucketSpec{
		{Name: "orders", Collections: []string{"_default.inbound", "_default.retry", "_default.deadletter"}}, {Name: "metadata"}}})
	c := connect(t, s)
	require.NoError(t, c.WaitUntilReady(10*time.Second, &gocb.WaitUntilReadyOptions{
		ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeManagement, gocb.ServiceTypeQuery}}))
	b := readyBucket(t, c, "orders")
	// Primary indexes, as a query no index serves fails (4120).
	for _, stmt := range setupIndexes[:3] {
		res, err := c.Query(stmt, nil)
		require.NoError(t, err, stmt)
		require.NoError(t, res.Close())
	}
	s.ResetWork()
	return s, c, b
}

func TestQueryAdapterStatements(t *testing.T) {
	s, c, b := queryServer(t)
	for round := 0; round < 2; round++ { // setup runs twice: IF NOT EXISTS
		for _, stmt := range setupIndexes {
			res, err := c.Query(stmt, nil)
			require.NoError(t, err, stmt)
			require.NoError(t, res.Close())
		}
	}
	assert.Equal(t, []string{"#primary", "ix_retry_next", "ix_retry_ts"}, s.Indexes("orders", "_default", "retry"))
	_, err := c.Query("CREATE INDEX ix_retry_next ON "+ksRetry+"(nextAttemptAt)", nil)
	assert.ErrorIs(t, err, gocb.ErrIndexExists)
	_, err = c.Query("CREATE PRIMARY INDEX IF NOT EXISTS ON `orders`.`_default`.`nope`", nil)
	assert.ErrorIs(t, err, gocb.ErrIndexFailure, "keyspace not found (12003), which setup retries")

	now := time.UnixMilli(1_767_225_600_000)
	retry := b.Collection("retry")
	docs := map[string]any{
		"control": map[string]any{"ts": 0},                                                      // the control document is skipped
		"due":     map[string]any{"nextAttemptAt": now.Add(-time.Minute).UnixMilli()},           // due
		"notyet":  map[string]any{"nextAttemptAt": now.Add(time.Minute).UnixMilli()},            // not due
		"strnext": map[string]any{"nextAttemptAt": "soon"},                                      // not a number
		"oldts":   map[string]any{"ts": now.Add(-time.Hour).UnixMilli()},                        // sample doc, old
		"newts":   map[string]any{"ts": now.UnixMilli()},                                        // sample doc, recent
		"flagged": map[string]any{"nextAttemptAt": 1, "fireRetry": true},                        // already flagged
		"unflag":  json.RawMessage(`{"nextAttemptAt":1,"fireRetry":false,"keep":"me","n":1.5}`), // due again
		"notjson": "just a string",
	}
	for k, v := range docs {
		_, err := retry.Upsert(k, v, nil)
		require.NoError(t, err)
	}
	params := map[string]any{"control": "control", "now": now.UnixMilli(), "cutoff": now.Add(-15 * time.Second).UnixMilli()}
	ids, err := queryRows[string](t, c, sweep(""), params)
	require.NoError(t, err)
	sort.Strings(ids)
	assert.Equal(t, []string{"due", "oldts", "unflag"}, ids)
	raw, _, _, ok := s.Doc("orders", "_default", "retry", "unflag")
	require.True(t, ok)
	assert.JSONEq(t, `{"nextAttemptAt":1,"fireRetry":true,"keep":"me","n":1.5}`, string(raw))
	assert.Equal(t, `{"nextAttemptAt":1,"fireRetry":true,"keep":"me","n":1.5}`, string(raw), "field order kept")
	got, err := retry.Get("due", nil)
	require.NoError(t, err)
	var due map[string]any
	require.NoError(t, got.Content(&due))
	assert.Equal(t, true, due["fireRetry"], "the UPDATE is visible to KV")

	// Again: everything due is flagged now. The second call runs the
	// prepared statement by name.
	ids, err = queryRows[string](t, c, sweep(""), params)
	require.NoError(t, err)
	assert.Empty(t, ids)

	// LIMIT, as a parameter or a literal.
	for i := 0; i < 5; i++ {
		_, err := retry.Upsert(fmt.Sprintf("lim%d", i), map[string]any{"nextAttemptAt": 0}, nil)
		require.NoError(t, err)
	}
	params["n"] = 2
	ids, err = queryRows[string](t, c, sweep("$n"), params)
	require.NoError(t, err)
	assert.Equal(t, []string{"lim0", "lim1"}, ids)
	ids, err = queryRows[string](t, c, sweep("2"), params)
	require.NoError(t, err)
	assert.Equal(t, []string{"lim2", "lim3"}, ids)

	// Counts.
	inbound := b.Collection("inbound")
	for i, d := range []map[string]any{
		{"paymentStatus": "paid", "confirmationEmailSent": true},
		{"paymentStatus": "paid", "confirmationEmailSent": false},
		{"paymentStatus": "paid"},
		{"paymentStatus": "pending"},
	} {
		_, err := inbound.Upsert(fmt.Sprintf("o%d", i), d, nil)
		require.NoError(t, err)
	}
	_, err = b.Collection("deadletter").Upsert("dl", map[string]any{}, nil)
	require.NoError(t, err)
	type countsRow struct{ OrdersPaid, OrdersConfirmed, RetryDocs, RetryFlagged, DeadLetters int }
	rows, err := queryRows[countsRow](t, c, counts, map[string]any{"control": "control"})
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, countsRow{OrdersPaid: 3, OrdersConfirmed: 1, RetryDocs: 13, RetryFlagged: 8, DeadLetters: 1}, rows[0])

	// Scan pages by key.
	var all []string
	after := ""
	for {
		page, err := queryRows[string](t, c, scan(ksRetry), map[string]any{"after": after, "limit": 4})
		require.NoError(t, err)
		all = append(all, page...)
		if len(page) < 4 {
			break
		}
		after = page[len(page)-1]
	}
	assert.Equal(t, []string{"control", "due", "flagged", "lim0", "lim1", "lim2", "lim3", "lim4", "newts", "notjson", "notyet", "oldts", "strnext", "unflag"}, all)

	// EXPLAIN of the sweep names both branch indexes and no primary scan.
	plans, err := queryRows[json.RawMessage](t, c, "EXPLAIN "+sweep("$n"), params)
	require.NoError(t, err)
	require.Len(t, plans, 1)
	assert.Contains(t, string(plans[0]), "ix_retry_next")
	assert.Contains(t, string(plans[0]), "ix_retry_ts")
	assert.NotContains(t, string(plans[0]), "PrimaryScan")

	// As the query service's grammar has it, an EXPLAIN cannot be prepared
	// (gocb prepares every query not marked ad hoc).
	_, err = c.Query("EXPLAIN "+sweep("$n"), &gocb.QueryOptions{NamedParameters: params})
	require.ErrorIs(t, err, gocb.ErrParsingFailure)
}

func TestQueryUnknownStatementFailsLoudly(t *testing.T) {
	_, c, _ := queryServer(t)
	stmt := "SELECT o.* FROM `orders`.`_default`.`inbound` AS o JOIN `orders`.`_default`.`retry` AS r ON KEYS o.k"
	_, err := queryRows[json.RawMessage](t, c, stmt, nil)
	require.Error(t, err)
	assert.ErrorIs(t, err, gocb.ErrParsingFailure)
	assert.Contains(t, err.Error(), "JOIN", "the error names the statement")

	_, err = queryRows[json.RawMessage](t, c, "SELECT RAW x FROM `orders`.`_default`.`inbound` WHERE FOO(x) = 1", nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "FOO")

	_, err = queryRows[json.RawMessage](t, c, "SELECT RAW 1 FROM `orders`.`_default`.`inbound` WHERE x = $missing", nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "$missing")
}

func TestQueryScopeContextAndAdhoc(t *testing.T) {
	s, c, b := queryServer(t)
	_, err := b.Collection("inbound").Upsert("a", map[string]any{"v": 1}, nil)
	require.NoError(t, err)
	_, err = b.Collection("inbound").Upsert("b", map[string]any{"v": 2}, nil)
	require.NoError(t, err)
	res, err := b.Scope("_default").Query("SELECT i.v, META(i).id AS id FROM inbound AS i WHERE i.v >= $1 ORDER BY i.v DESC",
		&gocb.QueryOptions{PositionalParameters: []any{1}, Adhoc: true})
	require.NoError(t, err)
	var rows []map[string]any
	for res.Next() {
		var r map[string]any
		require.NoError(t, res.Row(&r))
		rows = append(rows, r)
	}
	require.NoError(t, res.Err())
	assert.Equal(t, []map[string]any{{"v": 2.0, "id": "b"}, {"v": 1.0, "id": "a"}}, rows)

	del, err := queryRows[string](t, c, "DELETE FROM "+ksInbound+" AS i WHERE i.v = 1 RETURNING RAW META(i).id", nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, del)
	_, _, _, ok := s.Doc("orders", "_default", "inbound", "a")
	assert.False(t, ok)
}

// The adapter's backlog statement: aggregates (COUNT, MIN), GROUP BY,
// ORDER BY an aggregate, and a subquery used as an array.
func backlog() string {
	due := "META(r).id != $control AND (r.fireRetry = true OR " +
		"(r.nextAttemptAt <= $now AND IS_NUMBER(r.nextAttemptAt)) OR " +
		"(r.nextAttemptAt IS MISSING AND r.ts < $cutoff AND IS_NUMBER(r.ts)))"
	return "SELECT " +
		"(SELECT RAW COUNT(*) FROM " + ksRetry + " AS r WHERE " + due + ")[0] AS due, " +
		"(SELECT RAW MIN(IFMISSING(r.nextAttemptAt, r.ts + $quantum)) FROM " + ksRetry + " AS r WHERE " + due + " AND r.fireRetry != true)[0] AS oldest, " +
		"(SELECT d.reason AS reason, COUNT(*) AS count FROM " + ksDead + " AS d GROUP BY d.reason ORDER BY COUNT(*) DESC LIMIT 5) AS reasons"
}

func TestQueryBacklogShape(t *testing.T) {
	_, c, b := queryServer(t)
	params := map[string]any{"control": "control", "now": 1000, "cutoff": 500, "quantum": 50}
	type row struct {
		Due     int
		Oldest  *int64
		Reasons []struct {
			Reason string
			Count  int
		}
	}
	rows, err := queryRows[row](t, c, backlog(), params)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, 0, rows[0].Due)
	assert.Nil(t, rows[0].Oldest, "MIN of nothing is null")
	assert.Empty(t, rows[0].Reasons)

	retry, dead := b.Collection("retry"), b.Collection("deadletter")
	for k, v := range map[string]string{
		"control": `{"ts":1}`,
		"a":       `{"nextAttemptAt":900,"fireRetry":false}`,
		"b":       `{"ts":300}`, // due at 300+50, but fireRetry != true is MISSING here
		"c":       `{"nextAttemptAt":700,"fireRetry":true}`,
		"d":       `{"nextAttemptAt":2000}`,
	} {
		_, err := retry.Upsert(k, json.RawMessage(v), nil)
		require.NoError(t, err)
	}
	for i, reason := range []string{"bounce", "bounce", "invalid", "bounce", "invalid", "spam"} {
		_, err := dead.Upsert(fmt.Sprintf("dl%d", i), map[string]string{"reason": reason}, nil)
		require.NoError(t, err)
	}
	rows, err = queryRows[row](t, c, backlog(), params)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, 3, rows[0].Due)
	require.NotNil(t, rows[0].Oldest)
	assert.Equal(t, int64(900), *rows[0].Oldest, "SQL++: MISSING != true is MISSING, so b does not count")
	require.Len(t, rows[0].Reasons, 3)
	assert.Equal(t, "bounce", rows[0].Reasons[0].Reason)
	assert.Equal(t, 3, rows[0].Reasons[0].Count)
	assert.Equal(t, "invalid", rows[0].Reasons[1].Reason)
	assert.Equal(t, 1, rows[0].Reasons[2].Count)
}

// TestQueryDecodesADocumentOnce: a query holds the lock KV operations wait
// for, so it must not decode again what it decoded before (the counts the
// service and its tests poll scanned every order). A document written anew
// is decoded anew, and the counts follow it.
func TestQueryDecodesADocumentOnce(t *testing.T) {
	s, c, b := queryServer(t)
	for _, q := range setupIndexes {
		_, err := queryRows[any](t, c, q, nil)
		require.NoError(t, err, q)
	}
	inbound := b.Scope("_default").Collection("inbound")
	const n = 300
	for i := range n {
		_, err := inbound.Upsert(fmt.Sprint("o", i), map[string]any{"paymentStatus": "paid"}, nil)
		require.NoError(t, err)
	}
	decodes := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.decodes
	}
	confirmed := func() float64 {
		rows, err := queryRows[map[string]any](t, c, counts, map[string]any{"control": "allow_retrys"})
		require.NoError(t, err)
		require.Len(t, rows, 1)
		return rows[0]["ordersConfirmed"].(float64)
	}

	assert.Zero(t, confirmed())
	first := decodes()
	assert.GreaterOrEqual(t, first, n, "the first query decodes every order")
	assert.Zero(t, confirmed())
	assert.Equal(t, first, decodes(), "the second decodes none")

	_, err := inbound.Upsert("o7", map[string]any{"paymentStatus": "paid", "confirmationEmailSent": true}, nil)
	require.NoError(t, err)
	assert.Equal(t, 1.0, confirmed(), "the query reads the new version")
	assert.Equal(t, first+1, decodes(), "and decodes only it")
}

// A searched CASE: in a projection, a predicate, a GROUP BY and as an
// index key, which a predicate on the same expression (written with the
// query's alias) uses.
func TestQueryCaseExpression(t *testing.T) {
	_, c, b := queryServer(t)
	kind := func(a string) string {
		return "CASE WHEN " + a + "n > 10 THEN \"big \" || TOSTRING(" + a + "n) WHEN " + a + "n > 0 THEN \"small\" ELSE \"none\" END"
	}
	_, err := queryRows[any](t, c, "CREATE INDEX ix_kind ON "+ksRetry+"(("+kind("")+"), META().id)", nil)
	require.NoError(t, err)
	retry := b.Collection("retry")
	for k, v := range map[string]string{"a": `{"n":20}`, "b": `{"n":5}`, "c": `{}`, "d": `{"n":20}`, "e": `{"n":"x"}`} {
		_, err := retry.Upsert(k, json.RawMessage(v), nil)
		require.NoError(t, err)
	}
	ids, err := queryRows[string](t, c, "SELECT RAW META(r).id FROM "+ksRetry+" AS r WHERE ("+kind("r.")+") = $kind ORDER BY META(r).id", map[string]any{"kind": "big 20"})
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "d"}, ids)
	ids, err = queryRows[string](t, c, "SELECT RAW META(r).id FROM "+ksRetry+" AS r WHERE ("+kind("r.")+") = \"none\"", nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"c"}, ids, "MISSING > 10 is not TRUE: on to ELSE")

	type group struct {
		Kind  string
		Count int
	}
	groups, err := queryRows[group](t, c, "SELECT "+kind("r.")+" AS kind, COUNT(*) AS count FROM "+ksRetry+" AS r GROUP BY "+kind("r.")+" ORDER BY COUNT(*) DESC, kind", nil)
	require.NoError(t, err)
	assert.Equal(t, []group{{"big 20", 2}, {"big x", 1}, {"none", 1}, {"small", 1}}, groups,
		"a string sorts after every number (SQL++ collation): \"x\" > 10")

	plan, err := queryRows[json.RawMessage](t, c, "EXPLAIN SELECT RAW META(r).id FROM "+ksRetry+" AS r WHERE ("+kind("r.")+") = $kind", map[string]any{"kind": "small"})
	require.NoError(t, err)
	require.Len(t, plan, 1)
	assert.Contains(t, string(plan[0]), "ix_kind", "the index on the same expression")

	_, err = queryRows[any](t, c, "SELECT RAW CASE r.n WHEN 1 THEN 2 END FROM "+ksRetry+" AS r", nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "searched CASE")
}

// A statement no index serves fails as Couchbase's query service fails it
// (4120, a planning failure to gocb), EXPLAIN too, unless the server runs
// sequential scans (7.6, for a user with the role).
func TestAQueryNoIndexServesFails(t *testing.T) {
	for _, seq := range []bool{false, true} {
		s := Start(t, Options{VBuckets: 8, SequentialScans: seq, Buckets: []BucketSpec{{Name: "orders", Collections: []string{"_default.retry"}}}})
		c := connect(t, s)
		require.NoError(t, c.WaitUntilReady(10*time.Second, &gocb.WaitUntilReadyOptions{
			ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeQuery}}))
		readyBucket(t, c, "orders")
		for _, stmt := range []string{
			"SELECT COUNT(*) AS n FROM " + ksRetry + " AS r WHERE r.fireRetry = true",
			"EXPLAIN SELECT COUNT(*) AS n FROM " + ksRetry + " AS r WHERE r.fireRetry = true",
			"UPDATE " + ksRetry + " AS r SET r.fireRetry = true WHERE r.ts < 5",
		} {
			res, err := c.Query(stmt, &gocb.QueryOptions{Adhoc: true}) // an EXPLAIN cannot be prepared
			if seq {
				if assert.NoError(t, err, stmt) {
					assert.NoError(t, res.Close())
				}
				continue
			}
			assert.ErrorIs(t, err, gocb.ErrPlanningFailure, stmt)
			assert.ErrorContains(t, err, `"code":4120`, stmt)
		}
		if !seq {
			// An index that serves it: the statement runs.
			_, err := c.Query("CREATE INDEX ix_fire ON "+ksRetry+"(fireRetry)", nil)
			require.NoError(t, err)
			res, err := c.Query("SELECT COUNT(*) AS n FROM "+ksRetry+" AS r WHERE r.fireRetry = true", nil)
			require.NoError(t, err)
			require.NoError(t, res.Close())
		}
	}
}

// Concatenation with MISSING is MISSING, with NULL or a non-string NULL,
// as SQL++ has it: a filter IS NOT MISSING on such a value leaves out the
// documents that lack the field.
func TestQueryConcatenationOfMissingIsMissing(t *testing.T) {
	_, c, b := queryServer(t)
	retry := b.Collection("retry")
	for k, v := range map[string]string{"a": `{"why":"x"}`, "b": `{}`, "c": `{"why":null}`, "d": `{"why":3}`} {
		_, err := retry.Upsert(k, json.RawMessage(v), nil)
		require.NoError(t, err)
	}
	type row struct {
		ID      string `json:"id"`
		Missing bool   `json:"missing"`
		Null    bool   `json:"null"`
	}
	rows, err := queryRows[row](t, c, "SELECT META(r).id AS id, (\"dead: \" || r.why) IS MISSING AS missing, (\"dead: \" || r.why) IS NULL AS `null` FROM "+
		ksRetry+" AS r ORDER BY META(r).id", nil)
	require.NoError(t, err)
	assert.Equal(t, []row{{"a", false, false}, {"b", true, false}, {"c", false, true}, {"d", false, true}}, rows)
}

// Indexes made with defer_build wait for a BUILD INDEX, and no statement
// reads an index before it is online; system:indexes says their states,
// as gocb's query index manager reads them.
func TestDeferredIndexesAreReadOnceBuilt(t *testing.T) {
	s := Start(t, Options{VBuckets: 8, Buckets: []BucketSpec{{Name: "orders", Collections: []string{"_default.retry"}}}})
	c := connect(t, s)
	require.NoError(t, c.WaitUntilReady(10*time.Second, &gocb.WaitUntilReadyOptions{
		ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeQuery}}))
	b := readyBucket(t, c, "orders")
	run := func(stmt string) error {
		res, err := c.Query(stmt, &gocb.QueryOptions{Adhoc: true})
		if err == nil {
			err = res.Close()
		}
		return err
	}
	require.NoError(t, run(`CREATE PRIMARY INDEX IF NOT EXISTS ON `+ksRetry+` WITH {"defer_build":true}`))
	require.NoError(t, run(`CREATE INDEX IF NOT EXISTS ix_fire ON `+ksRetry+`(fireRetry) WHERE fireRetry = true WITH {"defer_build":true}`))
	err := run(`CREATE INDEX ix_two ON ` + ksRetry + `(ts) WITH {"num_replica":1}`)
	assert.ErrorContains(t, err, "not enough indexer nodes", "a replica needs a second index node")

	im := b.Collection("retry").QueryIndexes()
	states := func() map[string]string {
		all, err := im.GetAllIndexes(nil)
		require.NoError(t, err)
		out := map[string]string{}
		for _, ix := range all {
			out[ix.Name] = ix.State
		}
		return out
	}
	assert.Equal(t, map[string]string{"#primary": "deferred", "ix_fire": "deferred"}, states())
	stmt := "SELECT COUNT(*) AS n FROM " + ksRetry + " AS r WHERE r.fireRetry = true"
	assert.ErrorContains(t, run(stmt), `"code":4120`, "a deferred index is not read")

	release := s.HoldIndexBuilds()
	built, err := im.BuildDeferredIndexes(nil)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"#primary", "ix_fire"}, built)
	assert.Equal(t, map[string]string{"#primary": "building", "ix_fire": "building"}, states())
	assert.ErrorContains(t, run(stmt), `"code":4120`, "nor one building")
	assert.ErrorContains(t, run("BUILD INDEX ON "+ksRetry+"(ix_fire)"), "Build Already In Progress")

	release()
	assert.Equal(t, map[string]string{"#primary": "online", "ix_fire": "online"}, states())
	require.NoError(t, run(stmt))
	assert.ErrorContains(t, run("BUILD INDEX ON "+ksRetry+"(`ix_fire`)"), "already built")
	require.NoError(t, im.WatchIndexes([]string{"ix_fire"}, 10*time.Second, &gocb.WatchQueryIndexOptions{WatchPrimary: true}))
	assert.ErrorContains(t, run("DELETE FROM system:indexes"), "")
}
