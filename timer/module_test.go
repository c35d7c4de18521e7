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

// An instance whose breaker would let a probe through does not sweep
// while another member sends: the retry it flagged would go to whichever
// instance owns its vBucket, not through its own breaker, and it would
// flag one retry a tick for everyone. An instance that stepped aside is
// one such (no vBuckets, its breaker half-open for ever). With every
// member held, or alone, it sweeps its probe.
func TestAProbingInstanceLeavesTheSweepToOneThatSends(t *testing.T) {
	members := func(others ...store.Member) []store.Member {
		return append([]store.Member{{Name: "me", Live: true, Held: true}}, others...)
	}
	aside := feedState{store.FeedStats{Member: "me", Aside: true, Members: members(store.Member{Name: "b", Live: true})}, true}
	trial := feedState{store.FeedStats{Member: "me", Partitions: 32, Members: members(store.Member{Name: "b", Live: true})}, true}
	allHeld := feedState{store.FeedStats{Member: "me", Partitions: 32, Members: members(
		store.Member{Name: "b", Live: true, Held: true}, store.Member{Name: "c", Live: true, Held: true, Aside: true},
		store.Member{Name: "d", Leaving: true})}, true}
	alone := feedState{store.FeedStats{Member: "me", Partitions: 64, Members: members()}, true}
	for _, c := range []struct {
		name          string
		mail          breakerState
		feed          feedState
		held, probing bool
	}{
		{"closed, aside", breakerState{}, aside, false, false},
		{"open, aside", breakerState{held: true}, aside, true, false},
		{"probing, aside", breakerState{probing: true}, aside, true, false},
		{"probing, back to try while b sends", breakerState{probing: true}, trial, true, false},
		{"probing, every other member held, aside or gone", breakerState{probing: true}, allHeld, false, true},
		{"probing, alone", breakerState{probing: true}, alone, false, true},
		{"probing, no feed stats (embedded)", breakerState{probing: true}, feedState{}, false, true},
	} {
		held, probing := sendGate{c.mail, c.feed}.HeldBack()
		assert.Equal(t, c.held, held, c.name)
		assert.Equal(t, c.probing, probing, c.name)
	}
}

// standbyFeed is a watcher that does not run the feed: a standby.
type standbyFeed struct{ feedState }

func (standbyFeed) Running() bool { return false }

// An instance whose feed does not run (a standby on an embedded store)
// sends nothing: held, whatever its unused breaker says.
func TestAStandbyLeavesTheSweepToTheInstanceThatSends(t *testing.T) {
	for _, mail := range []breakerState{{}, {probing: true}, {held: true}} {
		held, probing := sendGate{mail, standbyFeed{}}.HeldBack()
		assert.True(t, held, "%+v", mail)
		assert.False(t, probing, "%+v", mail)
		assert.True(t, sendGate{mail, standbyFeed{}}.Standby(), "a standby, not held")
		assert.False(t, sendGate{mail, feedState{}}.Standby(), "a feed that runs")
	}
}

// laggingFeed is a watcher whose feed says how far its reader is behind.
type laggingFeed struct {
	feedState
	lag   uint64
	known bool
}

func (f laggingFeed) ReadLag() (uint64, bool) { return f.lag, f.known }

// TestTheGateSaysHowFarTheFeedIsBehind: the embedded store's events say it
// as they are read; Couchbase's feed keeps it in its figures; a feed that
// says neither is not taken for behind.
func TestTheGateSaysHowFarTheFeedIsBehind(t *testing.T) {
	lag, ok := sendGate{breakerState{}, laggingFeed{lag: 5000, known: true}}.FeedLag()
	assert.True(t, ok)
	assert.EqualValues(t, 5000, lag)
	lag, ok = sendGate{breakerState{}, laggingFeed{feedState: feedState{st: store.FeedStats{Lag: 7}, ok: true}}}.FeedLag()
	assert.True(t, ok, "Couchbase's figures")
	assert.EqualValues(t, 7, lag)
	_, ok = sendGate{breakerState{}, feedState{}}.FeedLag()
	assert.False(t, ok)
}

// TestAFeedMoreThanABatchBehindIsBehind: the sweep waits for flagged
// retries nobody takes while more changes than a sweep batch are ahead of
// the feed's reader.
func TestAFeedMoreThanABatchBehindIsBehind(t *testing.T) {
	for _, tt := range []struct {
		feed feedReporter
		want bool
	}{
		{laggingFeed{lag: 1001, known: true}, true},
		{laggingFeed{lag: 1000, known: true}, false},
		{laggingFeed{lag: 5000}, false}, // the feed does not tell
	} {
		tm := &Timer{cfg: Config{SweepBatch: 1000}, gate: sendGate{breakerState{}, tt.feed}}
		assert.Equal(t, tt.want, tm.feedBehind(), "%+v", tt.feed)
	}
}

type refused struct{ breakerState }

func (refused) Misconfigured() string { return "answered 401" }

// The lease given up while sends are held says why as the mailer does:
// the gate the app wires passes the mailer's Misconfigured on (a refused
// configuration read as "circuit breaker open" in `retries status`).
func TestTheWiredGateSaysWhySendsAreHeld(t *testing.T) {
	assert.Equal(t, LeftConfigured, heldWhy(sendGate{m: refused{breakerState{held: true}}}))
	assert.Equal(t, LeftBreaker, heldWhy(sendGate{m: breakerState{held: true}}))
}
