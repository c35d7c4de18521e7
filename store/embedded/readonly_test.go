package embedded

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadOnlyReadsAsItIsAndWritesNothing: a store opened ReadOnly reads
// what is there, refuses every write by name, and leaves the file as it
// was, byte for byte.
func TestReadOnlyReadsAsItIsAndWritesNothing(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	s, err := Open(ctx, Config{Path: path})
	require.NoError(t, err)
	_, err = s.Upsert(ctx, order.Inbound, "o1", []byte(`{"email":"a@example.com","paymentStatus":"paid"}`))
	require.NoError(t, err)
	_, err = s.Upsert(ctx, order.Retry, "o1", []byte(`{"docId":"o1","attempt":1,"ts":1}`))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	sum := func() [32]byte {
		t.Helper()
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		return sha256.Sum256(b)
	}
	before := sum()

	ro, err := Open(ctx, Config{Path: path, ReadOnly: true})
	require.NoError(t, err)
	d, err := ro.Get(ctx, order.Inbound, "o1")
	require.NoError(t, err)
	assert.JSONEq(t, `{"email":"a@example.com","paymentStatus":"paid"}`, string(d.Value))
	c, err := ro.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, c.OrdersPaid)
	assert.Equal(t, 1, c.RetryDocs)
	var keys []string
	require.NoError(t, ro.Scan(ctx, order.Retry, "", func(d store.Doc) error { keys = append(keys, d.Key); return nil }))
	assert.Equal(t, []string{"o1"}, keys)

	_, err = ro.Insert(ctx, order.Inbound, "o2", []byte(`{}`))
	assert.ErrorIs(t, err, ErrReadOnly)
	err = ro.Remove(ctx, order.Retry, "o1", 0)
	assert.ErrorIs(t, err, ErrReadOnly)
	_, err = ro.Subscribe(ctx, "feed", []string{order.Inbound}, store.FeedOptions{})
	assert.ErrorIs(t, err, ErrReadOnly, "a feed saves its checkpoint: no feed on a store that reads alone")
	require.NoError(t, ro.Close())
	assert.Equal(t, before, sum(), "the file is as it was")
	for _, suffix := range []string{"-wal", "-shm"} {
		_, err := os.Stat(path + suffix)
		assert.ErrorIs(t, err, os.ErrNotExist, "a read made no %s file (made beside a file its user cannot write, it would keep the file's mode)", suffix)
	}
	_, err = ro.Get(ctx, order.Inbound, "o1")
	assert.ErrorIs(t, err, store.ErrClosed)
}

// TestReadOnlyRefusesWhatItCannotRead: an older schema (which only a
// write could upgrade), another program's database and a missing file are
// refused by name, and left as they were.
func TestReadOnlyRefusesWhatItCannotRead(t *testing.T) {
	ctx := context.Background()
	old, db := fileAtVersion(t, SchemaVersion-1)
	require.NoError(t, db.Close())
	_, err := Open(ctx, Config{Path: old, ReadOnly: true})
	require.ErrorContains(t, err, "older than this ordermail's")
	version := func(path string) int {
		t.Helper()
		db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
		require.NoError(t, err)
		defer db.Close()
		var v int
		require.NoError(t, db.QueryRow(`PRAGMA user_version`).Scan(&v))
		return v
	}
	assert.Equal(t, SchemaVersion-1, version(old), "not upgraded")

	foreign := filepath.Join(t.TempDir(), "other.db")
	fdb, err := sql.Open("sqlite", "file:"+foreign)
	require.NoError(t, err)
	_, err = fdb.Exec(`CREATE TABLE users (id INTEGER PRIMARY KEY)`)
	require.NoError(t, err)
	require.NoError(t, fdb.Close())
	_, err = Open(ctx, Config{Path: foreign, ReadOnly: true})
	require.ErrorContains(t, err, "not an ordermail store")

	_, err = Open(ctx, Config{Path: filepath.Join(t.TempDir(), "missing.db"), ReadOnly: true})
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// openFailure says which of three things kept the store file from being
// opened for writing: a read-only mount, a file this user may not write,
// or a directory it may not enter (said "read-only (its file mode...)" of
// a file that did not exist). Root may do all three here, so the errors
// are given.
func TestOpenFailureSaysWhatWasRefused(t *testing.T) {
	const path = "/srv/locked/o.db"
	denied := &fs.PathError{Op: "open", Path: path, Err: syscall.EACCES}
	for _, tt := range []struct {
		name            string
		openErr, statEr error
		want            string
		readOnly        bool
	}{
		{"a read-only mount", &fs.PathError{Op: "open", Path: path, Err: syscall.EROFS}, nil, "is read-only (a read-only mount)", true},
		{"a file this user may not write", denied, nil, "is read-only (its file mode, or an immutable file)", true},
		{"no file, a directory this user may not write", denied, &fs.PathError{Op: "stat", Path: path, Err: syscall.ENOENT},
			"cannot create it in /srv/locked", false},
		{"a directory this user may not enter", denied, &fs.PathError{Op: "stat", Path: path, Err: syscall.EACCES},
			"this user may not enter /srv/locked", false},
		{"anything else", &fs.PathError{Op: "open", Path: path, Err: syscall.EISDIR}, nil, "is a directory", false},
	} {
		err := openFailure(path, tt.openErr, tt.statEr)
		assert.ErrorContains(t, err, tt.want, tt.name)
		assert.Equal(t, tt.readOnly, errors.Is(err, ErrReadOnly), tt.name)
	}
}
