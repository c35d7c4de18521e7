package store

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// modelAcks is the tracker as it was first written, an entry an event: the
// reference the runs must agree with.
type modelAcks struct {
	done  uint64
	queue []uint64
	acked map[uint64]bool
}

func (m *modelAcks) ack(seq uint64) {
	m.acked[seq] = true
	for len(m.queue) > 0 && m.acked[m.queue[0]] {
		delete(m.acked, m.queue[0])
		m.done = max(m.done, m.queue[0])
		m.queue = m.queue[1:]
	}
}

// The tracker agrees with the reference through random deliveries, skips
// and acknowledgements in any order.
func TestAckTrackerAgreesWithOneEntryAnEvent(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		tr := NewAckTracker(map[uint16]uint64{0: 5})
		m := &modelAcks{done: 5, acked: map[uint64]bool{}}
		var acks []func()
		var seqs []uint64
		seq := uint64(5)
		for step := range 2000 {
			switch r := rng.IntN(10); {
			case r < 4:
				seq += 1 + uint64(rng.IntN(3))
				acks, seqs = append(acks, tr.Deliver(0, seq)), append(seqs, seq)
				m.queue = append(m.queue, seq)
			case r < 6:
				seq += 1 + uint64(rng.IntN(3))
				tr.Skip(0, seq)
				m.queue = append(m.queue, seq)
				m.ack(seq)
			case len(acks) > 0:
				i := rng.IntN(len(acks))
				acks[i]()
				acks[i]() // a second call does nothing
				m.ack(seqs[i])
				acks, seqs = append(acks[:i], acks[i+1:]...), append(seqs[:i], seqs[i+1:]...)
			}
			require.Equal(t, m.done, tr.Checkpoint(0), "seed %d step %d", seed, step)
			require.Equal(t, len(m.queue)-len(m.acked), tr.Outstanding(0), "seed %d step %d", seed, step)
		}
	}
}

// Behind one event that stays unacknowledged, what is read and acknowledged
// since takes one entry, not one each: a million took 43MB, kept after.
func TestAckTrackerBehindAStuckEventStaysSmall(t *testing.T) {
	tr := NewAckTracker(nil)
	stuck := tr.Deliver(0, 1)
	for seq := uint64(2); seq < 1_000_000; seq++ {
		if seq%3 == 0 {
			tr.Skip(0, seq)
		} else {
			tr.Deliver(0, seq)()
		}
	}
	assert.Len(t, tr.parts[0].queue, 2, "the stuck event and one run")
	assert.Equal(t, 1, tr.Outstanding(0))
	assert.Zero(t, tr.Checkpoint(0))
	stuck()
	assert.Equal(t, uint64(999_999), tr.Checkpoint(0))
	assert.Empty(t, tr.parts[0].queue)
}
