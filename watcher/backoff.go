package watcher

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// retryWait is the wait between tries of a store operation: 50ms, doubling
// to 5s, with a little jitter so that workers held up together do not come
// back together. peek says the next wait before it is taken, for the log
// line that announces it.
type retryWait struct {
	exp backoff.ExponentialBackOff
	cur time.Duration
}

func newBackoff() *retryWait {
	b := &retryWait{exp: backoff.ExponentialBackOff{
		InitialInterval: 50 * time.Millisecond, RandomizationFactor: 0.1, Multiplier: 2, MaxInterval: 5 * time.Second,
	}}
	b.reset()
	return b
}

func (b *retryWait) peek() time.Duration { return b.cur }

func (b *retryWait) reset() {
	b.exp.Reset()
	b.cur = b.draw()
}

// wait sleeps the current delay unless ctx ends first; false when it ended.
func (b *retryWait) wait(ctx context.Context) bool { return b.waitUnless(ctx, nil) }

// waitUnless is wait that also gives up when stop closes.
func (b *retryWait) waitUnless(ctx context.Context, stop <-chan struct{}) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur = b.draw()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

// next returns the current wait and takes the next one, without sleeping:
// its sleeper is elsewhere (park, a node's probe).
func (b *retryWait) next() time.Duration {
	d := b.cur
	b.cur = b.draw()
	return d
}

// draw takes the next wait, in whole milliseconds, as logs say it.
func (b *retryWait) draw() time.Duration { return b.exp.NextBackOff().Round(time.Millisecond) }
