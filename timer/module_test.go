package timer

import (
	"testing"

	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
)

type breakerState struct{ held, probing bool }

func (b breakerState) HeldBack() (bool, bool) { return b.held, b.probing }

type feedState struct {
	st store.FeedStats
	ok bool
}

func (f feedState) FeedStats() (store.FeedStats, bool) { return f.st, f.ok }

// An instance that stepped aside does not sweep on its breaker's probe:
// the retry it flagged would go to another's vBuckets, its own breaker
// would never close, and it would flag one retry a tick for everyone.
func TestAnInstanceAsideSweepsNoProbe(t *testing.T) {
	aside := feedState{store.FeedStats{Aside: true}, true}
	sharing := feedState{store.FeedStats{Partitions: 32}, true}
	for _, c := range []struct {
		name          string
		mail          breakerState
		feed          feedState
		held, probing bool
	}{
		{"closed, aside", breakerState{}, aside, false, false},
		{"open, aside", breakerState{held: true}, aside, true, false},
		{"probing, aside", breakerState{probing: true}, aside, true, false},
		{"probing, sharing", breakerState{probing: true}, sharing, false, true},
		{"probing, no feed stats (embedded)", breakerState{probing: true}, feedState{}, false, true},
	} {
		held, probing := sendGate{c.mail, c.feed}.HeldBack()
		assert.Equal(t, c.held, held, c.name)
		assert.Equal(t, c.probing, probing, c.name)
	}
}
