package store_test

import (
	"testing"

	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
)

func TestAckTrackerOutOfOrder(t *testing.T) {
	t.Parallel()
	tr := store.NewAckTracker(map[uint16]uint64{0: 10})
	a11 := tr.Deliver(0, 11)
	a15 := tr.Deliver(0, 15)
	tr.Skip(0, 16) // filtered out while 11 and 15 are in flight
	a20 := tr.Deliver(0, 20)
	b3 := tr.Deliver(7, 3)

	assert.Equal(t, 3, tr.Outstanding(0), "11, 15 and 20; not the skipped 16")
	a15()
	a20()
	assert.Equal(t, map[uint16]uint64{0: 10, 7: 0}, tr.Checkpoints(), "11 is still in flight")
	assert.Equal(t, 1, tr.Outstanding(0), "only 11 is not acknowledged")

	a11()
	assert.Equal(t, map[uint16]uint64{0: 20, 7: 0}, tr.Checkpoints())
	assert.Equal(t, 0, tr.Outstanding(0))
	a11() // a second ack of the same event changes nothing
	b3()
	assert.Equal(t, map[uint16]uint64{0: 20, 7: 3}, tr.Checkpoints())
}

func TestAckTrackerResetDropsOldAcks(t *testing.T) {
	t.Parallel()
	tr := store.NewAckTracker(nil)
	old := tr.Deliver(1, 5)
	tr.Reset(1, 2) // rollback to 2
	old()
	assert.Equal(t, map[uint16]uint64{1: 2}, tr.Checkpoints())
	tr.Deliver(1, 3)()
	assert.Equal(t, map[uint16]uint64{1: 3}, tr.Checkpoints())
}

func TestAckTrackerSkipWithNothingInFlight(t *testing.T) {
	t.Parallel()
	tr := store.NewAckTracker(nil)
	tr.Skip(0, 9)
	assert.Equal(t, map[uint16]uint64{0: 9}, tr.Checkpoints())
}

// Ends are where the checkpoint is and where it may yet rest: the end of
// each event or run kept above it.
func TestAckTrackerEnds(t *testing.T) {
	tr := store.NewAckTracker(map[uint16]uint64{4: 10})
	acks := []func(){tr.Deliver(4, 11), tr.Deliver(4, 12), tr.Deliver(4, 13)}
	acks[1]()
	assert.Equal(t, []uint64{10, 11, 12, 13}, tr.Ends(4))
	acks[0]()
	assert.Equal(t, []uint64{12, 13}, tr.Ends(4))
	tr.Skip(4, 15)
	assert.Equal(t, []uint64{12, 13, 15}, tr.Ends(4))
	assert.Equal(t, []uint64{0}, tr.Ends(9), "a partition never delivered")
}
