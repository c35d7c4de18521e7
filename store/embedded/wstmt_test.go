package embedded

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"path/filepath"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The writer's statements run on the driver: its conversions must give what
// database/sql would, and refuse what it would refuse, by name.
func TestWriteStatementsConvertAsDatabaseSQLWould(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer s.Close()

	var seq, cas, missing uint64
	var low sql.NullInt64
	tomb := true
	err = s.submit(ctx, func(t *txn) error {
		if err := s.stmts.seqGet.QueryRow(t.ctx).Scan(&seq); err != nil {
			return err
		}
		if err := s.stmts.saveCheckpoint.Exec(t.ctx, "feed", uint64(7)); err != nil {
			return err
		}
		if err := s.stmts.minCkpt.QueryRow(t.ctx).Scan(&low); err != nil {
			return err
		}
		if err := t.put(s.stmts.putAdd, s.stmts.putSet, append([]any{"inbound", "k1", `{}`, t.next(), t.seq},
			columns{}.args()...)...); err != nil {
			return err
		}
		ids, err := s.stmts.dueNext.IDValues(t.ctx, int64(1<<62), 10)
		if err != nil || len(ids) > 0 {
			return err
		}
		if err := s.stmts.cur.QueryRow(t.ctx, "inbound", "k1").Scan(&cas, &tomb); err != nil {
			return err
		}
		return s.stmts.cur.QueryRow(t.ctx, "inbound", "absent").Scan(&missing, &tomb)
	})
	assert.ErrorIs(t, err, sql.ErrNoRows, "a point read of an absent key")
	assert.Equal(t, sql.NullInt64{Int64: 7, Valid: true}, low)
	assert.Equal(t, seq+1, cas, "the CAS of the write after the counter read")
	assert.False(t, tomb)

	_, err = named([]any{"a", float32(1)})
	assert.ErrorContains(t, err, "argument 2: float32 is no SQLite value")
	var n uint64
	assert.ErrorContains(t, wrow{vals: []driver.Value{nil}}.Scan(&n), "scan column 1: <nil> is not an integer")
	assert.ErrorContains(t, wrow{vals: []driver.Value{int64(1)}}.Scan(&n, &n), "1 values into 2 destinations")
}

// A txError after a job wrote fails its transaction, as an error of
// SQLite does: nothing of that job is committed, and a job that shared the
// transaction is written when it runs again alone.
func TestTxErrorRollsTheJobBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	put := func(key string, fail bool) *job {
		return &job{ctx: ctx, done: make(chan struct{}), fn: func(t *txn) error {
			if _, err := t.write(store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: key, Value: []byte(`{}`)}, columns{}); err != nil {
				return err
			}
			if fail {
				return &txError{"broken after a write"}
			}
			return nil
		}}
	}
	broken, fine := put("k1", true), put("k2", false)
	s.runBatch([]*job{broken, fine}) // the writer is idle: nothing was submitted
	assert.ErrorContains(t, broken.err, "broken after a write")
	assert.NoError(t, fine.err)
	_, err := s.Get(ctx, order.Inbound, "k1")
	assert.ErrorIs(t, err, store.ErrNotFound, "the broken job's write was rolled back")
	_, err = s.Get(ctx, order.Inbound, "k2")
	assert.NoError(t, err, "the other job was written")
}

// A put over a row that is there keeps a live document's incarnation and
// starts a new one over a tombstone, in both forms of put (a flat
// collection's, and the retry and dead-letter collections').
func TestPutKeepsOrStartsTheIncarnation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t)
	sub, err := s.Subscribe(ctx, "deletions", []string{order.Inbound, order.Retry}, store.FeedOptions{})
	require.NoError(t, err)
	require.NoError(t, sub.Close(ctx)) // saved: removals leave tombstones
	for _, coll := range []string{order.Inbound, order.Retry} {
		value := []byte(`{"docId":"k","attempt":1,"ts":1}`)
		_, err := s.Upsert(ctx, coll, "k", value)
		require.NoError(t, err)
		first, err := s.Get(ctx, coll, "k")
		require.NoError(t, err)
		_, err = s.Upsert(ctx, coll, "k", value)
		require.NoError(t, err)
		live, err := s.Get(ctx, coll, "k")
		require.NoError(t, err)
		assert.Equal(t, first.Incarnation, live.Incarnation, "%s: a put over a live document keeps its incarnation", coll)
		require.NoError(t, s.Remove(ctx, coll, "k", live.CAS))
		var tomb bool
		require.NoError(t, s.read.QueryRow(`SELECT value IS NULL FROM docs WHERE coll = ? AND key = ?`, coll, "k").Scan(&tomb))
		require.True(t, tomb, "%s: the removal left a tombstone", coll)
		_, err = s.Upsert(ctx, coll, "k", value)
		require.NoError(t, err)
		again, err := s.Get(ctx, coll, "k")
		require.NoError(t, err)
		assert.Equal(t, again.CAS, again.Incarnation, "%s: a put over a tombstone starts an incarnation at its own position", coll)
		assert.NotEqual(t, live.Incarnation, again.Incarnation, coll)
	}
}

// A due retry whose value another program stored as a BLOB (the sqlite3
// shell's readfile(), a driver binding bytes) is swept as text is: the
// sweep's read failed on it at every tick, and no retry was flagged again.
func TestASweepReadsAValueStoredAsABlob(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	defer s.Close()
	now := time.Now()
	for _, key := range []string{"blob", "text"} {
		_, err := s.Insert(ctx, order.Retry, key, order.RetryDoc{DocID: key, Attempt: 1, TS: 1,
			NextAttemptAt: now.Add(-time.Minute).UnixMilli()}.Encode())
		require.NoError(t, err)
	}
	other, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	defer other.Close()
	res, err := other.ExecContext(ctx, `UPDATE docs SET value = CAST(value AS BLOB) WHERE coll = ? AND key = 'blob'`, order.Retry)
	require.NoError(t, err)
	n, err := res.RowsAffected()
	require.NoError(t, err)
	require.EqualValues(t, 1, n)

	swept, err := s.SweepRetries(ctx, now, time.Second, 10)
	require.NoError(t, err)
	assert.Equal(t, 2, swept.Flagged)
	d, err := s.Get(ctx, order.Retry, "blob")
	require.NoError(t, err)
	assert.Contains(t, string(d.Value), `"fireRetry":true`)
}
