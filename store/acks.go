package store

import "sync"

// AckTracker turns acknowledgements that arrive in any order into a
// checkpoint per partition that only moves past a sequence number once every
// event delivered up to it has been acknowledged. Feed implementations call
// Deliver before handing an event out and use the returned func as its Ack.
type AckTracker struct {
	mu    sync.Mutex
	parts map[uint16]*partAcks
}

type partAcks struct {
	done  uint64          // every delivered seq <= done is acknowledged
	queue []uint64        // delivered above done, in delivery (= seq) order
	acked map[uint64]bool // members of queue already acknowledged
}

// NewAckTracker starts each partition at its saved checkpoint.
func NewAckTracker(start map[uint16]uint64) *AckTracker {
	t := &AckTracker{parts: make(map[uint16]*partAcks)}
	for p, seq := range start {
		t.Reset(p, seq)
	}
	return t
}

func (t *AckTracker) part(p uint16) *partAcks {
	pa, ok := t.parts[p]
	if !ok {
		pa = &partAcks{acked: map[uint64]bool{}}
		t.parts[p] = pa
	}
	return pa
}

// Deliver records seq as handed out on partition p and returns its Ack.
// Sequence numbers of one partition must be delivered in increasing order.
func (t *AckTracker) Deliver(p uint16, seq uint64) func() {
	t.mu.Lock()
	pa := t.part(p)
	pa.queue = append(pa.queue, seq)
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			pa.ack(seq) // after a Reset, pa is no longer in t.parts: harmless
		})
	}
}

// Skip moves partition p past seq, a change the feed read but filtered out.
func (t *AckTracker) Skip(p uint16, seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pa := t.part(p)
	pa.queue = append(pa.queue, seq)
	pa.ack(seq)
}

// Reset forgets what was delivered on p and restarts it at seq, for a
// rollback or a reopened stream.
func (t *AckTracker) Reset(p uint16, seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.parts[p] = &partAcks{done: seq, acked: map[uint64]bool{}}
}

func (pa *partAcks) ack(seq uint64) {
	pa.acked[seq] = true
	for len(pa.queue) > 0 && pa.acked[pa.queue[0]] {
		delete(pa.acked, pa.queue[0])
		pa.done = max(pa.done, pa.queue[0])
		pa.queue = pa.queue[1:]
	}
}

// Checkpoints returns, per partition, the highest seq such that every event
// delivered at or below it has been acknowledged.
func (t *AckTracker) Checkpoints() map[uint16]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[uint16]uint64, len(t.parts))
	for p, pa := range t.parts {
		out[p] = pa.done
	}
	return out
}

// Checkpoint is Checkpoints' figure for partition p alone.
func (t *AckTracker) Checkpoint(p uint16) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if pa, ok := t.parts[p]; ok {
		return pa.done
	}
	return 0
}

// Outstanding is how many events delivered on p are not acknowledged yet
// (those acknowledged out of order, waiting on an older one, are not).
func (t *AckTracker) Outstanding(p uint16) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if pa, ok := t.parts[p]; ok {
		return len(pa.queue) - len(pa.acked)
	}
	return 0
}
