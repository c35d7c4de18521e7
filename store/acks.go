package store

import (
	"cmp"
	"slices"
	"sync"
)

// AckTracker turns acknowledgements that arrive in any order into a
// checkpoint per partition that only moves past a sequence number once every
// event delivered up to it has been acknowledged. Feed implementations call
// Deliver before handing an event out and use the returned func as its Ack.
type AckTracker struct {
	mu    sync.Mutex
	parts map[uint16]*partAcks
}

type partAcks struct {
	done uint64 // every delivered seq <= done is acknowledged
	// queue is what was delivered above done, in delivery (= seq) order:
	// each event not acknowledged yet, and between them the runs of those
	// acknowledged, one entry a run. Behind one event that stays
	// unacknowledged (a key the store cannot reach, a poison event waited
	// out), the million read since take one entry, not a million.
	queue   []ackRun
	pending int // the entries of queue not acknowledged
}

// ackRun is one event delivered and not acknowledged (hi its seq), or a run
// of events acknowledged, the highest hi.
type ackRun struct {
	hi    uint64
	acked bool
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
		pa = &partAcks{}
		t.parts[p] = pa
	}
	return pa
}

// Deliver records seq as handed out on partition p and returns its Ack.
// Sequence numbers of one partition must be delivered in increasing order.
func (t *AckTracker) Deliver(p uint16, seq uint64) func() {
	t.mu.Lock()
	pa := t.part(p)
	pa.queue = append(pa.queue, ackRun{hi: seq})
	pa.pending++
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
	if n := len(pa.queue); n > 0 && pa.queue[n-1].acked {
		pa.queue[n-1].hi = seq // the run grows
		return
	}
	if len(pa.queue) == 0 {
		pa.done = max(pa.done, seq)
		return
	}
	pa.queue = append(pa.queue, ackRun{hi: seq, acked: true})
}

// Reset forgets what was delivered on p and restarts it at seq, for a
// rollback or a reopened stream.
func (t *AckTracker) Reset(p uint16, seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.parts[p] = &partAcks{done: seq}
}

// ack marks the event seq acknowledged, merges it into the runs beside it,
// and moves done past the front's run.
func (pa *partAcks) ack(seq uint64) {
	q := pa.queue
	i, found := slices.BinarySearchFunc(q, seq, func(r ackRun, seq uint64) int { return cmp.Compare(r.hi, seq) })
	if !found || q[i].acked {
		return
	}
	pa.pending--
	q[i].acked = true
	if i+1 < len(q) && q[i+1].acked { // the run after: this one's end moves to it
		q[i].hi = q[i+1].hi
		q = slices.Delete(q, i+1, i+2)
	}
	if i > 0 && q[i-1].acked { // the run before takes this one
		q[i-1].hi = q[i].hi
		q = slices.Delete(q, i, i+1)
	}
	if len(q) > 0 && q[0].acked {
		pa.done = max(pa.done, q[0].hi)
		q = q[1:]
	}
	if len(q) == 0 {
		q = nil // the array behind a long stall goes with it
	}
	pa.queue = q
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

// Ends are, in increasing order, the sequence numbers p's checkpoint may
// still come to rest on before any change read after now: where it is,
// and the end of each event or run kept above it (acknowledgements merge
// runs, whose ends are among these).
func (t *AckTracker) Ends(p uint16) []uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	pa, ok := t.parts[p]
	if !ok {
		return []uint64{0}
	}
	ends := make([]uint64, 0, 1+len(pa.queue))
	ends = append(ends, pa.done)
	for _, r := range pa.queue {
		ends = append(ends, r.hi)
	}
	return ends
}

// Outstanding is how many events delivered on p are not acknowledged yet
// (those acknowledged out of order, waiting on an older one, are not).
func (t *AckTracker) Outstanding(p uint16) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if pa, ok := t.parts[p]; ok {
		return pa.pending
	}
	return 0
}
