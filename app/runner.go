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
		return err
	}
	r.mu.Lock()
	r.started = true
	r.mu.Unlock()
	r.watchLock()
	return nil
}

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
	t := time.NewTicker(2 * time.Second)
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
