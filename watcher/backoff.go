package watcher

import (
	"context"
	"time"
)

// backoff waits 50ms, doubling to 5s, between tries of a store operation.
type backoff struct{ next time.Duration }

func newBackoff() *backoff { return &backoff{next: 50 * time.Millisecond} }

func (b *backoff) peek() time.Duration { return b.next }

func (b *backoff) reset() { b.next = 50 * time.Millisecond }

// wait sleeps the current delay unless ctx ends first; false when it ended.
func (b *backoff) wait(ctx context.Context) bool { return b.waitUnless(ctx, nil) }

// waitUnless is wait that also gives up when stop closes.
func (b *backoff) waitUnless(ctx context.Context, stop <-chan struct{}) bool {
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, 5*time.Second)
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}
