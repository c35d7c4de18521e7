package app

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/watcher"
)

// runner starts the watcher once this process may consume the feed: at once
// on Couchbase, where instances split the vBuckets, and on the embedded store
// once it holds the file's process lock. A second `ordermail run` on the same
// file waits as a standby and takes over when the first one ends, however it
// ends; the two never consume the feed at the same time.
type runner struct {
	w    *watcher.Watcher
	lock *embedded.ProcessLock // nil: no lock needed
	poll time.Duration
	log  *slog.Logger
	// lost is called when the lock file is deleted or replaced while this
	// instance runs the feed: a second instance could take the new file.
	lost func()
	// takeoverWait is how long a standby that took the lock on a file it
	// created waits before it runs the feed: the lock file was deleted,
	// and the instance that held the old one may still run the feed until
	// its check (lockCheck) notices and its stop ends.
	takeoverWait time.Duration

	mu       sync.Mutex
	started  bool
	cancel   context.CancelFunc // ends the standby wait and the lock check
	standing sync.WaitGroup
}

func (r *runner) start(ctx context.Context) error {
	if r.lock != nil {
		ok, err := r.lock.TryLock()
		if err != nil {
			return err
		}
		if !ok {
			// A state of the service, not a fault: two instances on one file
			// is how a standby is run.
			r.log.Info("standby: another ordermail runs the feed of this store; waiting to take over", "lock", r.lock.Path())
			wait, cancel := context.WithCancel(context.Background())
			r.cancel = cancel
			r.standing.Add(1)
			go r.standby(wait)
			return nil
		}
	}
	if err := r.w.Start(ctx); err != nil {
		if r.lock != nil {
			r.lock.Unlock() // fx runs no stop hook for a start that failed
		}
		return err
	}
	r.mu.Lock()
	r.started = true
	r.mu.Unlock()
	r.watchLock()
	return nil
}

// lockCheck is how often the instance that runs the feed checks that the
// lock file is still the one it locked.
const lockCheck = 2 * time.Second

// watchLock checks, until stop, that the lock file is still ours.
func (r *runner) watchLock() {
	if r.lock == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.standing.Add(1)
	go func() {
		defer r.standing.Done()
		r.checkLock(ctx)
	}()
}

func (r *runner) checkLock(ctx context.Context) {
	t := time.NewTicker(lockCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.lock.Check(); err != nil {
			r.log.Error("stopping: another instance could now run the feed too", "error", err)
			r.lost()
			return
		}
	}
}

func (r *runner) standby(ctx context.Context) {
	defer r.standing.Done()
	t := time.NewTicker(r.poll)
	defer t.Stop()
	failing := "" // logged once, not at every poll
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := r.lock.TryLock()
		if err != nil {
			if err.Error() != failing {
				r.log.Warn("standby: cannot check the store's lock", "error", err)
				failing = err.Error()
			}
			continue
		}
		failing = ""
		if !ok {
			continue
		}
		if r.lock.Created() && !r.waitOutFormerHolder(ctx) {
			return
		}
		if err := r.w.Start(ctx); err != nil {
			r.log.Error("take over the feed", "error", err)
			r.lock.Unlock()
			continue
		}
		r.mu.Lock()
		r.started = true
		r.mu.Unlock()
		r.log.Info("took over: this instance runs the feed now", "lock", r.lock.Path())
		r.checkLock(ctx)
		return
	}
}

// waitOutFormerHolder waits takeoverWait after the standby took the lock
// on a file it created: the lock file it waited on was deleted, and the
// instance that held it may still run the feed until it notices. It
// returns false when ctx ends first (the lock is let go).
func (r *runner) waitOutFormerHolder(ctx context.Context) bool {
	r.log.Warn("standby: the lock file was deleted; waiting for the instance that held it to stop before taking over",
		"lock", r.lock.Path(), "wait", r.takeoverWait)
	t := time.NewTimer(r.takeoverWait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		r.lock.Unlock()
		return false
	case <-t.C:
		return true
	}
}

func (r *runner) stop(ctx context.Context) error {
	if r.cancel != nil {
		r.cancel()
		r.standing.Wait()
	}
	r.mu.Lock()
	started := r.started
	r.mu.Unlock()
	var err error
	if started {
		err = r.w.Stop(ctx)
	}
	if r.lock != nil {
		err = errors.Join(err, r.lock.Unlock())
	}
	return err
}
