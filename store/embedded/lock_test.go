package embedded_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"modernc.org/sqlite"
)

func TestProcessLockIsExclusive(t *testing.T) {
	db := filepath.Join(t.TempDir(), "o.db")
	a, b := embedded.NewProcessLock(db), embedded.NewProcessLock(db)
	ok, err := a.TryLock()
	require.NoError(t, err)
	assert.True(t, ok)
	// flock locks belong to open files: a second open file is refused,
	// as a second process would be.
	ok, err = b.TryLock()
	require.NoError(t, err)
	assert.False(t, ok)
	require.NoError(t, a.Unlock())
	ok, err = b.TryLock()
	require.NoError(t, err)
	assert.True(t, ok, "free once released")
	require.NoError(t, b.Unlock())
	assert.Equal(t, db+".lock", a.Path())
}

// The lock file deleted, or replaced (a restore, a sync renaming a file
// over it), under the process that holds it: a second process locked the
// new file and ran the feed beside the first. The database file's own
// lock keeps it out until the first lets go.
func TestTheStoreIsLockedWhateverHappensToTheLockFile(t *testing.T) {
	for _, how := range []string{"deleted", "replaced"} {
		dir := t.TempDir()
		db := filepath.Join(dir, "o.db")
		require.NoError(t, os.WriteFile(db, []byte("sqlite"), 0o600))
		a, b := embedded.NewProcessLock(db), embedded.NewProcessLock(db)
		ok, err := a.TryLock()
		require.NoError(t, err)
		require.True(t, ok)
		switch how {
		case "deleted":
			require.NoError(t, os.Remove(a.Path()))
		case "replaced":
			other := filepath.Join(dir, "restored")
			require.NoError(t, os.WriteFile(other, nil, 0o600))
			require.NoError(t, os.Rename(other, a.Path()))
		}
		ok, err = b.TryLock()
		require.NoError(t, err, how)
		assert.False(t, ok, "lock file %s: a second process takes the store", how)
		require.NoError(t, a.Unlock())
		ok, err = b.TryLock()
		require.NoError(t, err, how)
		assert.True(t, ok, "lock file %s: free once the first lets go", how)
		require.NoError(t, b.Unlock())
	}
}

// A command run with sudo on a store the service's user owns leaves that
// user every file it made beside the store: a lock file root kept would
// stop the service at its next start ("permission denied").
func TestLockFilesRootMakesAreTheStoresOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it shows what a command run as root leaves the store's owner")
	}
	dir := t.TempDir()
	db := filepath.Join(dir, "o.db")
	const uid, gid = 65534, 65534 // nobody
	require.NoError(t, os.WriteFile(db, nil, 0o600))
	require.NoError(t, os.Chown(db, uid, gid))

	s, err := embedded.Open(context.Background(), embedded.Config{Path: db})
	require.NoError(t, err)
	l := embedded.NewProcessLock(db)
	ok, err := l.TryLock()
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, l.Unlock())
	require.NoError(t, s.Close())

	names, err := filepath.Glob(db + ".*")
	require.NoError(t, err)
	require.Len(t, names, 4, "the process, open, upgrade and write locks: %v", names)
	for _, name := range append(names, db+"-wal", db+"-shm") {
		st, err := os.Stat(name)
		if errors.Is(err, os.ErrNotExist) && (strings.HasSuffix(name, "-wal") || strings.HasSuffix(name, "-shm")) {
			continue // SQLite's own, gone with the last connection
		}
		require.NoError(t, err)
		sys := st.Sys().(*syscall.Stat_t)
		assert.Equal(t, [2]uint32{uid, gid}, [2]uint32{sys.Uid, sys.Gid}, "%s belongs to the store's owner", filepath.Base(name))
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "%s stays private", filepath.Base(name))
	}
}

// A hard link to another file, put where a lock file goes, is refused:
// the lock would write that file and, run as root, give it away.
func TestALockFileThatIsAHardLinkIsNotGivenAway(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "o.db")
	require.NoError(t, os.WriteFile(db, nil, 0o600))
	if os.Geteuid() == 0 {
		require.NoError(t, os.Chown(db, 65534, 65534)) // the store's owner, not root
	}
	secret := filepath.Join(dir, "root-only")
	require.NoError(t, os.WriteFile(secret, []byte("x"), 0o600))
	require.NoError(t, os.Link(secret, db+".lock"))

	_, err := embedded.NewProcessLock(db).TryLock()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a lock file of its own")
	st, err := os.Stat(secret)
	require.NoError(t, err)
	assert.Equal(t, uint32(os.Geteuid()), st.Sys().(*syscall.Stat_t).Uid, "still its owner's")
	b, err := os.ReadFile(secret)
	require.NoError(t, err)
	assert.Equal(t, "x", string(b), "not written")
}

// SQLite locks the database file with open file description locks on
// Linux, which the process's own open and close of the file (Open does
// one, so does a second store on the same file in one process) leaves be.
// It checks the mode only: that such locks survive a close is the
// kernel's, and modernc's tests'.
func TestSQLiteLocksAreOpenFileDescriptionLocks(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("open file description locks are Linux's")
	}
	db := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(context.Background(), embedded.Config{Path: db})
	require.NoError(t, err)
	defer st.Close()
	assert.True(t, sqlite.OFDLockingEnabled(), "SQLite's locks are OFD locks")
}
