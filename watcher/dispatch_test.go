package watcher

import (
	"context"
	"fmt"
	"math"
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
// every event once, handled or superseded by a newer one of its document.
func TestDispatchKeepsEachKeysOrderAndOneAtATime(t *testing.T) {
	const keys, perKey, workers = 7, 300, 5
	var mu sync.Mutex
	busy := map[string]bool{}
	last := map[string]uint64{}
	seen := map[uint64]int{}
	var handled atomic.Int64
	var problems []string
	d := newDispatcher(workers, 16, func(ev store.Event) {
		mu.Lock()
		seen[ev.Seq]++
		mu.Unlock()
		handled.Add(1)
	})
	stop := make(chan struct{})
	wg := workLines(d, workers, stop, func(_ int, ev store.Event, _ *keyLine) {
		mu.Lock()
		seen[ev.Seq]++
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
		t.Fatalf("handled or superseded %d of %d events", handled.Load(), keys*perKey)
	}
	assert.Eventually(t, func() bool { d.mu.Lock(); defer d.mu.Unlock(); return len(d.lines) == 0 }, 60*time.Second, time.Millisecond,
		"every line closed")
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, problems)
	assert.Len(t, seen, keys*perKey, "events handled or superseded")
	for seq, n := range seen {
		assert.Equal(t, 1, n, "seq %d handled or superseded this often", seq)
	}
}

// A worker held on one event holds up that key's later events only: the
// other workers handle every other key's meanwhile, and the held key's
// events follow in order on its worker once it goes on.
func TestDispatchAHeldEventHoldsUpItsKeyOnly(t *testing.T) {
	const workers = 4
	release := make(chan struct{})
	var mu sync.Mutex
	var heldBy = -1
	var heldSeqs, supersededSeqs []uint64
	d := newDispatcher(workers, 16, func(ev store.Event) {
		mu.Lock()
		defer mu.Unlock()
		supersededSeqs = append(supersededSeqs, ev.Seq)
	})
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
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce() // a failure must not leave the worker held

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
	waiting := d.lines["held"].waiting
	d.mu.Unlock()
	require.Len(t, waiting, 1, "the held key's latest event waits in its line")
	assert.Equal(t, uint64(n), waiting[0].Seq, "the held key's latest event waits in its line")

	releaseOnce()
	if !assert.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(heldSeqs) == 2 }, 60*time.Second, time.Millisecond) {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("after the release: the held key's events handled: seqs %v", heldSeqs)
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []uint64{1, uint64(n)}, heldSeqs)
	assert.Equal(t, []uint64{100, 300}, supersededSeqs, "superseded while they waited")
}

// A document rewritten again and again while its event is held takes no
// more than its line: one waiting event per collection, the latest. The
// reader never waits for a slot, every other key is handled, and each
// superseded event is handed back to be acknowledged.
func TestDispatchAKeyRewrittenWhileHeldHoldsUpNoOtherKey(t *testing.T) {
	const workers = 2
	release := make(chan struct{})
	var mu sync.Mutex
	var heldSeqs []uint64
	var superseded, others atomic.Int64
	d := newDispatcher(workers, 16, func(store.Event) { superseded.Add(1) })
	stop := make(chan struct{})
	wg := workLines(d, workers, stop, func(_ int, ev store.Event, _ *keyLine) {
		if ev.Key != "held" {
			others.Add(1)
			return
		}
		mu.Lock()
		heldSeqs = append(heldSeqs, ev.Seq)
		first := len(heldSeqs) == 1
		mu.Unlock()
		if first {
			<-release
		}
	})
	defer wg.Wait()
	defer close(stop)
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce() // a failure must not leave the worker held

	// Three times the slots in rewrites of the held key, in two
	// collections, each followed by another key's event.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rewrites := 3 * cap(d.slots)
	colls := []string{"inbound", "retry"}
	seq := uint64(0)
	for i := range rewrites {
		seq++
		require.True(t, d.add(ctx, store.Event{Collection: colls[i%2], Key: "held", Seq: seq}), "the reader waited for a slot at event %d", seq)
		seq++
		require.True(t, d.add(ctx, store.Event{Collection: "inbound", Key: fmt.Sprint("k", seq), Seq: seq}), "the reader waited for a slot at event %d", seq)
	}
	if !assert.Eventually(t, func() bool { return others.Load() == int64(rewrites) }, 60*time.Second, time.Millisecond) {
		t.Fatalf("with one key held: %d of the other %d events handled", others.Load(), rewrites)
	}
	d.mu.Lock()
	var waiting []uint64
	for _, ev := range d.lines["held"].waiting {
		waiting = append(waiting, ev.Seq)
	}
	d.mu.Unlock()
	assert.Equal(t, []uint64{seq - 3, seq - 1}, waiting, "the latest event of each collection waits")
	assert.Equal(t, int64(rewrites-3), superseded.Load(), "superseded: all but the first and the two waiting")

	releaseOnce()
	if !assert.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(heldSeqs) == 3 }, 60*time.Second, time.Millisecond) {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("after the release: the held key's events handled: seqs %v", heldSeqs)
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []uint64{1, seq - 3, seq - 1}, heldSeqs, "in feed order")
}

// A closed line's last write goes to the key's next line, until the
// snapshot of an event read later includes it.
func TestDispatchHandsALinesLastWriteToTheKeysNextLine(t *testing.T) {
	d := newDispatcher(1, 1, func(store.Event) {})
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

// TestDispatchForgetsWritesOfUnknownPositionOnceReadPast: a key's last
// write whose position is unknown (a poisoned change's dead letter, an
// outcome given up on) is kept for the key's next event, which reads its
// state again; once a later event's state was read after the write was
// done, every later snapshot shows it, and it is forgotten: kept for good,
// thousands of poisoned keys would be held and scanned at each event.
func TestDispatchForgetsWritesOfUnknownPositionOnceReadPast(t *testing.T) {
	d := newDispatcher(1, 8, func(store.Event) {})
	for i := range 1000 {
		ev := store.Event{Key: fmt.Sprint("k", i), Seq: uint64(i + 1), Snapshot: uint64(i + 10), StateAt: time.Now()}
		require.True(t, d.add(context.Background(), ev))
		next := <-d.queue
		next.line.last = &written{done: closed, seq: math.MaxUint64, at: time.Now()}
		d.done(next.line)
	}
	assert.LessOrEqual(t, len(d.recent), d.keep, "forgotten once read past")

	// A snapshot read before the write was done does not show it: kept.
	wr := &written{done: closed, seq: math.MaxUint64, at: time.Now()}
	recent := map[string]*written{"k": wr}
	prune(recent, 100, wr.at.Add(-time.Millisecond))
	assert.Contains(t, recent, "k", "a state read before the write")
	prune(recent, 100, wr.at.Add(time.Millisecond))
	assert.NotContains(t, recent, "k", "a state read after it")

	// A write of known position stays until a snapshot includes it,
	// whenever the state was read: an event of a batch read before it was
	// made would be decided on a state without it.
	recent = map[string]*written{"k": {done: closed, seq: 5}}
	prune(recent, 4, time.Now())
	assert.Contains(t, recent, "k", "a snapshot (4) from before the write (5)")
	prune(recent, 5, time.Now())
	assert.NotContains(t, recent, "k")
}
