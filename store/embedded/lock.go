package embedded

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// ProcessLock is an exclusive lock on a file beside the database, held by
// the one process that runs the service on it, and on the database file
// itself. The kernel releases them when the process ends, however it ends,
// so a standby takes over at once after a crash, with no lease to expire
// and no clocks to trust. Other commands (load, status) do not take it.
//
// The lock file says who holds it (its pid), and a standby waits on it;
// the database file's lock is what keeps two processes off one store's
// feed whatever happens to the lock file: deleted, or replaced by a
// restore or a sync, it let a second process lock the new file and run
// the feed beside the first (every order mailed twice until the first
// noticed). The database file's lock is an flock, which SQLite's own
// (fcntl) locks do not touch; where the file system has no flock, the lock
// file's alone guards. Its file is opened once and never closed: closing
// any descriptor of the database file lets go every fcntl lock the process
// holds on it, SQLite's own among them, and another process could then
// take the database for unused (and delete its write-ahead log).
type ProcessLock struct {
	db, path string
	f        *os.File
	dbf      *os.File // the database file, open for its flock; never closed
	dbLocked bool
	created  bool
}

// NewProcessLock returns the lock for the database at dbPath.
func NewProcessLock(dbPath string) *ProcessLock {
	db := RealPath(dbPath)
	return &ProcessLock{db: db, path: db + ".lock"}
}

// Path is the lock file.
func (l *ProcessLock) Path() string { return l.path }

// TryLock takes the lock if it is free; false when another process holds it.
func (l *ProcessLock) TryLock() (bool, error) {
	if l.f != nil {
		return true, nil
	}
	_, statErr := os.Stat(l.path)
	f, err := openLockFile(l.db, l.path)
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", l.path, err)
	}
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("lock %s: %w", l.path, err)
	}
	locked, err := l.lockDatabase()
	if err != nil {
		flock(f, syscall.LOCK_UN)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil // held by a process whose lock file was deleted or replaced
		}
		return false, fmt.Errorf("lock %s: %w", l.db, err)
	}
	l.dbLocked = locked
	// For the operator who looks: who holds it.
	f.Truncate(0)
	fmt.Fprintf(f, "pid %d\n", os.Getpid())
	l.f, l.created = f, errors.Is(statErr, os.ErrNotExist)
	return true, nil
}

// lockDatabase takes an flock on the database file, opening it the first
// time: false, with no error, when there is no such file yet or its file
// system has no flock; syscall.EWOULDBLOCK when another holds it.
func (l *ProcessLock) lockDatabase() (bool, error) {
	if l.dbf == nil {
		f, err := os.OpenFile(l.db, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		l.dbf = f // never closed: see ProcessLock
	}
	switch err := flock(l.dbf, syscall.LOCK_EX|syscall.LOCK_NB); {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		return false, err
	default: // ENOLCK, EOPNOTSUPP: the lock file's alone
		return false, nil
	}
}

// Created says whether the lock taken is on a file that was not there
// before: a store's first service, or a lock file deleted, perhaps under
// a process that still runs the feed and has not noticed yet (Check).
func (l *ProcessLock) Created() bool { return l.f != nil && l.created }

// ErrLockLost says the lock file was deleted or replaced: another process
// can take a lock on the new file and run the feed alongside.
var ErrLockLost = errors.New("lock file deleted or replaced")

// Check returns ErrLockLost (wrapped) when the file at the lock's path is no
// longer the one this process locked.
func (l *ProcessLock) Check() error {
	if l.f == nil {
		return nil
	}
	held, err := l.f.Stat()
	if err != nil {
		return fmt.Errorf("lock %s: %w", l.path, err)
	}
	now, err := os.Stat(l.path)
	if err != nil || !os.SameFile(held, now) {
		return fmt.Errorf("lock %s: %w", l.path, ErrLockLost)
	}
	return nil
}

// Unlock releases the lock.
func (l *ProcessLock) Unlock() error {
	if l.f == nil {
		return nil
	}
	err := errors.Join(flock(l.f, syscall.LOCK_UN), l.f.Close())
	if l.dbLocked {
		err = errors.Join(err, flock(l.dbf, syscall.LOCK_UN)) // kept open: see ProcessLock
	}
	l.f, l.dbLocked = nil, false
	return err
}

// writeLock is an flock on a file beside the database that ordermail's
// writers, in every process, hold around each write transaction. SQLite's
// own lock still guards the data; this one makes the handover prompt. A
// writer that finds SQLite's lock taken sleeps 1, 2, 5, 10, 15, 20, 25ms...
// between tries, and the holder, beginning again as soon as it commits,
// takes the lock back in between: under a burst of another process's
// writes the service's writer waited 8-34ms at a time for a lock that was
// free after each of the other's 10ms transactions. The kernel wakes a
// process waiting for an flock the moment it is let go. The writer
// goroutine alone uses it.
type writeLock struct {
	path  string
	f     *os.File // nil: the file could not be opened; SQLite's lock alone then
	held  *os.File // the file description that holds the lock, nil when none
	stuck chan struct{}
}

// writeLockSuffix names the lock file: the database's path and this.
const writeLockSuffix = ".writelock"

func openWriteLock(dbPath string) *writeLock {
	l := &writeLock{path: dbPath + writeLockSuffix}
	if f, err := openLockFile(dbPath, l.path); err == nil {
		l.f = f
	}
	return l
}

// acquire takes the lock, waiting for it up to timeout. Past that, or when
// an earlier wait given up on is still waiting, the write goes on without
// it and SQLite's busy timeout decides, as for a writer that does not use
// this file (the sqlite3 shell).
func (l *writeLock) acquire(timeout time.Duration) {
	if l.f == nil {
		return
	}
	if l.stuck != nil {
		select {
		case <-l.stuck:
			l.stuck = nil
		default:
			return
		}
	}
	switch err := flock(l.f, syscall.LOCK_EX|syscall.LOCK_NB); {
	case err == nil:
		l.held = l.f
		return
	case !errors.Is(err, syscall.EWOULDBLOCK):
		// A file system without flock (some network ones): SQLite's
		// lock alone, from now on.
		l.f.Close()
		l.f = nil
		return
	}
	// Wait in the kernel, on a file description of its own, which a wait
	// given up on closes once it has the lock: closing lets the lock go.
	f, err := os.OpenFile(l.path, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return
	}
	got, abandon, done := make(chan error), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		err := flock(f, syscall.LOCK_EX)
		select {
		case got <- err:
		case <-abandon:
			f.Close()
		}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-got:
		if err != nil {
			f.Close()
			return
		}
		l.held = f
	case <-t.C:
		close(abandon)
		l.stuck = done
	}
}

// release lets the lock go, if acquire took it.
func (l *writeLock) release() {
	switch {
	case l.held == nil:
	case l.held == l.f:
		flock(l.f, syscall.LOCK_UN)
	default:
		l.held.Close()
	}
	l.held = nil
}

func (l *writeLock) close() error {
	l.release()
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}

// flock applies how to f's open file description: the lock belongs to it,
// not to the process, so two open files of one process exclude each other.
func flock(f *os.File, how int) error {
	fd := int(f.Fd())
	for {
		err := syscall.Flock(fd, how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// ownLockFile says whether f is a file that is the lock file alone: a
// regular one, with one name. A hard link to another file, put in its
// place, would have that file written and, by root, given away.
func ownLockFile(f *os.File) bool {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && sys.Nlink == 1
}

// openLockFile opens the lock file at path beside the database at dbPath,
// made private if it is not there. One made or opened by root is given to
// the database file's owner, as SQLite gives its -wal and -shm files: a
// command run once with sudo must not leave the service's user a lock file
// it cannot open, and a file so left by an earlier release is given back
// the next time root opens the store.
func openLockFile(dbPath, path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, os.ErrPermission) {
		if st, serr := os.Lstat(path); serr == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
				return nil, fmt.Errorf("%w: it belongs to uid %d, not to this process's %d (made by a command run as "+
					"another user?): chown it to the store's owner, or remove it while no ordermail uses the store",
					err, sys.Uid, os.Geteuid())
			}
		}
	}
	if err != nil {
		return nil, err
	}
	if !ownLockFile(f) {
		f.Close()
		return nil, fmt.Errorf("%s is not a lock file of its own (another kind of file, or a hard link to another "+
			"file, which the lock's writes would change): remove it while no ordermail uses the store", path)
	}
	if os.Geteuid() == 0 {
		if st, err := os.Stat(dbPath); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
				if err := f.Chown(int(sys.Uid), int(sys.Gid)); err != nil {
					f.Close()
					return nil, fmt.Errorf("give %s to the store's owner (uid %d): %w", path, sys.Uid, err)
				}
			}
		}
	}
	return f, nil
}
