package embedded

import (
	"errors"

	"modernc.org/sqlite"
)

// SQLite's locks on the database file are Linux open file description
// locks, not POSIX ones: a POSIX lock belongs to the process, and any
// close of any descriptor of the file drops every one it holds there, so
// the process's own os.Open and Close of the database (Open's check that
// the file is private, a ProcessLock's descriptor gone with its lock, a
// second store opened on the same file in one process) would strip
// SQLite's transaction locks and leave the database to other processes.
// Where OFD locks do not exist (other systems, an old kernel, a file
// system that refuses them) SQLite keeps POSIX locks, as before. It must
// be set before the first connection: at the package's start.
func init() {
	if _, err := sqlite.OFDLocking(true); err != nil && !errors.Is(err, sqlite.ErrOFDLockingUnavailable) {
		panic("embedded: " + err.Error()) // a connection opened before this package started: a bug
	}
}
