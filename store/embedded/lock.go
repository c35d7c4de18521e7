package embedded

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ProcessLock is an exclusive lock on a file beside the database, held by
// the one process that runs the service on it. The kernel releases it when
// the process ends, however it ends, so a standby takes over at once after a
// crash, with no lease to expire and no clocks to trust. Other commands
// (load, status) do not take it.
type ProcessLock struct {
	path string
	f    *os.File
}

// NewProcessLock returns the lock for the database at dbPath.
func NewProcessLock(dbPath string) *ProcessLock {
	return &ProcessLock{path: dbPath + ".lock"}
}

// Path is the lock file.
func (l *ProcessLock) Path() string { return l.path }

// TryLock takes the lock if it is free; false when another process holds it.
func (l *ProcessLock) TryLock() (bool, error) {
	if l.f != nil {
		return true, nil
	}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", l.path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("lock %s: %w", l.path, err)
	}
	// For the operator who looks: who holds it.
	f.Truncate(0)
	fmt.Fprintf(f, "pid %d\n", os.Getpid())
	l.f = f
	return true, nil
}

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
	err := errors.Join(syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN), l.f.Close())
	l.f = nil
	return err
}
