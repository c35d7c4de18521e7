package storetest

import (
	"context"
	"database/sql"
	"testing"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite" // the embedded store's driver
)

// HoldWriteLock takes the write lock of the embedded store's file at path,
// as another process's transaction would (a sqlite3 session, a backup),
// until ROLLBACK on the connection returned, or the test's end.
func HoldWriteLock(t testing.TB, path string) *sql.Conn {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	_, err = conn.ExecContext(context.Background(), "BEGIN IMMEDIATE")
	require.NoError(t, err)
	return conn
}
