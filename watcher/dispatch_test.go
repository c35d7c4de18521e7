package watcher

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// workLines runs workers that take lines from d and call handle on each
// event, as Watcher.work does, until stop closes.
func workLines(d *dispatcher, workers int, stop <-chan struct{}, handle func(worker int, ev store.Event, ln *keyLine)) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var next dispatched
				select {
				case <-stop:
					return
				case next = <-d.queue:
				}
				ev, ln := next.ev, next.line
				for more := true; more; ev, more = d.done(ln) {
					handle(i, ev, ln)
				}
			}
		}()
	}
	return &wg
}

// The events of a key are handled in feed order and never two at once;
// every event once.
func TestDispatchKeepsEachKeysOrderAndOneAtATime(t *testing.T) {
	const keys, perKey, workers = 7, 300, 5
	d := newDispatcher(workers, 16)
	var mu sync.Mutex
	busy := map[string]bool{}
	last := map[string]uint64{}
	var handled atomic.Int64
	var problems []string
	stop := make(chan struct{})
	wg := workLines(d, workers, stop, func(_ int, ev store.Event, _ *keyLine) {
		mu.Lock()
		if busy[ev.Key] {
			problems = append(problems, fmt.Sprintf("%s seq %d: handled while another of its events was", ev.Key, ev.Seq))
		}
		if ev.Seq <= last[ev.Key] {
			problems = append(problems, fmt.Sprintf("%s seq %d: after seq %d", ev.Key, ev.Seq, last[ev.Key]))
		}
		busy[ev.Key], last[ev.Key] = true, ev.Seq
		mu.Unlock()
		runtime.Gosched() // let the others in while this one is busy
		mu.Lock()
		busy[ev.Key] = false
		mu.Unlock()
		handled.Add(1)
	})
	defer wg.Wait()
	defer close(stop)

	for seq := uint64(1); seq <= keys*perKey; seq++ {
		require.True(t, d.add(context.Background(), store.Event{Key: fmt.Sprint("k", seq%keys), Seq: seq}))
	}
	if !assert.Eventually(t, func() bool { return handled.Load() == keys*perKey }, 60*time.Second, time.Millisecond) {
		t.Fatalf("handled %d of %d events", handled.Load(), keys*perKey)
	}
	assert.Eventually(t, func() bool { d.mu.Lock(); defer d.mu.Unlock(); return len(d.lines) == 0 }, 60*time.Second, time.Millisecond,
		"every line closed")
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, problems)
}

// A worker held on one event holds up that key's later events only: the
// other workers handle every other key's meanwhile, and the held key's
// events follow in order on its worker once it goes on.
func TestDispatchAHeldEventHoldsUpItsKeyOnly(t *testing.T) {
	const workers = 4
	d := newDispatcher(workers, 16)
	release := make(chan struct{})
	var mu sync.Mutex
	var heldBy = -1
	var heldSeqs []uint64
	var others atomic.Int64
	stop := make(chan struct{})
	wg := workLines(d, workers, stop, func(worker int, ev store.Event, _ *keyLine) {
		if ev.Key != "held" {
			others.Add(1)
			return
		}
		mu.Lock()
		if heldBy == -1 {
			heldBy = worker
		}
		heldSeqs = append(heldSeqs, ev.Seq)
		first := len(heldSeqs) == 1
		sameWorker := heldBy == worker
		mu.Unlock()
		assert.True(t, sameWorker, "the held key's events stay with its worker")
		if first {
			<-release
		}
	})
	defer wg.Wait()
	defer close(stop)

	// More events than the queue and every worker's former queue of 64
	// hold, a few of them the held key's.
	n := 64*workers*2 + 7
	heldAt := map[uint64]bool{1: true, 100: true, 300: true, uint64(n): true}
	for seq := uint64(1); seq <= uint64(n); seq++ {
		key := fmt.Sprint("k", seq)
		if heldAt[seq] {
			key = "held"
		}
		require.True(t, d.add(context.Background(), store.Event{Key: key, Seq: seq}))
	}
	if !assert.Eventually(t, func() bool { return others.Load() == int64(n-len(heldAt)) }, 60*time.Second, time.Millisecond) {
		t.Fatalf("with one event held: %d of the other %d handled", others.Load(), n-len(heldAt))
	}
	d.mu.Lock()
	waiting := len(d.lines["held"].waiting)
	d.mu.Unlock()
	assert.Equal(t, len(heldAt)-1, waiting, "the held key's later events wait in its line")

	close(release)
	if !assert.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(heldSeqs) == len(heldAt) }, 60*time.Second, time.Millisecond) {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("after the release: the held key's events handled: seqs %v", heldSeqs)
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []uint64{1, 100, 300, uint64(n)}, heldSeqs)
}

// A closed line's last write goes to the key's next line, until the
// snapshot of an event read later includes it.
func TestDispatchHandsALinesLastWriteToTheKeysNextLine(t *testing.T) {
	d := newDispatcher(1, 1)
	ctx := context.Background()
	require.True(t, d.add(ctx, store.Event{Key: "a", Seq: 1, Snapshot: 1}))
	first := <-d.queue
	first.line.last = &written{done: closed, seq: 5}
	_, more := d.done(first.line)
	require.False(t, more)

	require.True(t, d.add(ctx, store.Event{Key: "a", Seq: 2, Snapshot: 4}))
	second := <-d.queue
	require.NotNil(t, second.line.last, "a snapshot at 4 does not include the write at 5")
	assert.Equal(t, uint64(5), second.line.last.seq)
	_, more = d.done(second.line)
	require.False(t, more)

	require.True(t, d.add(ctx, store.Event{Key: "b", Seq: 6, Snapshot: 6})) // prunes: keep is 1
	<-d.queue
	assert.NotContains(t, d.recent, "a", "a snapshot at 6 includes the write at 5")
}
