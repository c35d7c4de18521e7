// Package watchfile reads a setting's file (a key, a password, a
// certificate) again when it changes, so that a rotated secret takes
// effect without a restart.
package watchfile

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// ReloadEvery is how often a file is looked at again: a rotated secret
// takes effect within it.
const ReloadEvery = time.Second

// Settle is how long a changed file must have been left alone before its
// content is taken: one written in more than one write is not taken
// half-written (a key cut short would be refused, and hold every send
// back).
const Settle = 500 * time.Millisecond

// File is a file whose content is read again when it changes (its size,
// modification time or inode: a Kubernetes secret is swapped by a
// symlink). It is looked at no more than once per ReloadEvery. A change
// is taken at the look that sees it, unless the file was modified less
// than Settle before: then the content as it was is kept until a look
// finds the file left alone (Settle old, or unchanged since the look
// before), whether it was rewritten in place or replaced (a new file
// written in several writes is no more whole). A file gone is taken at
// once.
type File struct {
	flag, path string

	mu        sync.Mutex
	checked   time.Time
	stamp     stamp
	pending   stamp // a change seen just made at the last look, taken if the next sees it still
	content   []byte
	err       error
	changedAt time.Time // when the content last changed, for the caller's caches
}

type stamp struct {
	size, mtime int64
	ino         uint64
}

// New watches path, the file of the setting flag (which errors name); nil
// when path is empty.
func New(flag, path string) *File {
	if path == "" {
		return nil
	}
	return &File{flag: flag, path: path}
}

// Flag and Path name the file, for messages.
func (f *File) Flag() string { return f.flag }
func (f *File) Path() string { return f.path }

// Read returns the content as of now, and when it last changed. An empty
// file is an error. Errors name the setting and the path, never the
// content.
func (f *File) Read(now time.Time) ([]byte, time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.checked.IsZero() && now.Sub(f.checked) < ReloadEvery {
		return f.content, f.changedAt, f.err
	}
	f.checked = now
	fi, statErr := os.Stat(f.path)
	st := stamp{size: -1} // missing, or not to be looked at
	if statErr == nil {
		st = stamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			st.ino = sys.Ino
		}
	}
	if f.err == nil && f.content != nil {
		if st == f.stamp {
			return f.content, f.changedAt, nil
		}
		if statErr == nil && now.Sub(time.Unix(0, st.mtime)) < Settle && st != f.pending {
			f.pending = st // being written, maybe: the content as it was meanwhile
			return f.content, f.changedAt, nil
		}
	}
	f.pending = stamp{}
	if statErr != nil {
		f.set(nil, stamp{}, fmt.Errorf("%s: %w", f.flag, statErr), now)
		return f.content, f.changedAt, f.err
	}
	b, err := os.ReadFile(f.path)
	switch {
	case err != nil:
		f.set(nil, stamp{}, fmt.Errorf("%s: %w", f.flag, err), now)
	case len(bytes.TrimSpace(b)) == 0:
		f.set(nil, stamp{}, fmt.Errorf("%s: %s is empty", f.flag, f.path), now)
	default:
		f.set(b, st, nil, now)
	}
	return f.content, f.changedAt, f.err
}

func (f *File) set(b []byte, st stamp, err error, now time.Time) {
	if !bytes.Equal(b, f.content) || (err == nil) != (f.err == nil) {
		f.changedAt = now
	}
	f.content, f.stamp, f.err = b, st, err
}
