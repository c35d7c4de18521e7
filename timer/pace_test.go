package timer

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPaceFollowsWhatTheSendsTake: the window starts at one batch, is
// what the sends took over a second and a top-up, grows fourfold when a
// window held a backlog back and the sends took all of it, and shrinks
// when they slow down.
func TestPaceFollowsWhatTheSendsTake(t *testing.T) {
	const topUp, stuck = 250 * time.Millisecond, 30 * time.Second
	p := newPace(1000)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }

	room, _ := p.room(0, 0, topUp, stuck, false)
	assert.Equal(t, 1000, room, "first sweep: one batch")
	p.swept(1000, true)

	// 1,000 taken in 250ms, none left: 4,000/s, and the window held a
	// backlog back, so at least four times the window.
	room, _ = p.room(0, ms(250), topUp, stuck, false)
	assert.Equal(t, 5000, room, "1,000 in 250ms is 5,000 over 1.25s (more than 4x)")
	p.swept(5000, true)

	// 2,000 of them taken in 250ms: 8,000/s, some left: no growth beyond.
	room, _ = p.room(3000, ms(500), topUp, stuck, false)
	assert.Equal(t, 10000-3000, room, "2,000 in 250ms is 10,000 over 1.25s")
	p.swept(7000, true)

	// The sends slow down: 100 taken in 1s.
	room, _ = p.room(9900, ms(1500), topUp, stuck, false)
	assert.Equal(t, 0, room, "125 over 1.25s, less than flagged")
	assert.True(t, p.movedWithin(ms(1500), time.Millisecond), "some were taken")
	p.swept(0, true)
	room, _ = p.room(9900, ms(1750), topUp, stuck, false)
	assert.Equal(t, 0, room)
	assert.False(t, p.movedWithin(ms(1750), 250*time.Millisecond), "none taken since: no hurry to top up")

	// A role given up and taken again: one batch at first, whatever the
	// last stint's sends took.
	p.window = 50000
	p.forget()
	room, _ = p.room(0, ms(3000), topUp, stuck, false)
	assert.Equal(t, 1000, room)

	// A window not held back by (no due retries left) does not grow when
	// the sends take it all.
	q := newPace(10)
	room, _ = q.room(0, 0, topUp, stuck, false)
	q.swept(3, false)
	room, _ = q.room(0, ms(1000), topUp, stuck, false)
	assert.Equal(t, 10, room, "3 taken a second: the floor")
}

// TestPaceKeepsSlowSendsToTheirSecond: sends slower than a batch a second
// (an email service struggling, when an operator pauses) keep a window of
// their own second and a top-up once the first batch is taken, never less
// than leastWindow: a pause leaves no more to go out; and the sends never
// wait for a flag.
func TestPaceKeepsSlowSendsToTheirSecond(t *testing.T) {
	const topUp, stuck = 250 * time.Millisecond, 30 * time.Second
	for _, perSecond := range []int{4, 20, 200} {
		p := newPace(1000)
		flagged, starved := 0, 0
		for at := time.Duration(0); at <= 5*time.Minute; at += topUp { // past the first batch
			if at > 0 {
				take := perSecond / 4
				if flagged < take {
					starved++
				}
				flagged -= min(flagged, take)
			}
			room, _ := p.room(flagged, at, topUp, stuck, false)
			flagged += room
			p.swept(room, true)
		}
		want := max(leastWindow, perSecond*5/4)
		assert.Equal(t, want, flagged, "%d sends a second: a second and a top-up of theirs", perSecond)
		assert.Zero(t, starved, "%d sends a second: none waited for a flag", perSecond)
	}
}

// TestPaceSetsAsideRetriesNobodyTakes: flagged retries that are never
// taken (their change never reached a watcher: lost events, a restored
// bucket) would fill the window for good. After stuckAfter with none taken
// they are set aside, said once, and the sweep flags past them at the
// sends' pace; the pile shrinks as far as the count falls below it.
func TestPaceSetsAsideRetriesNobodyTakes(t *testing.T) {
	const topUp, stuck = 250 * time.Millisecond, 30 * time.Second
	sec := func(n float64) time.Duration { return time.Duration(n * float64(time.Second)) }
	p := newPace(10)
	room, said := p.room(500, 0, topUp, stuck, false) // 500 dead flags
	assert.Equal(t, 0, room)
	assert.False(t, said)
	p.swept(0, true)
	room, said = p.room(500, sec(29), topUp, stuck, false)
	assert.Equal(t, 0, room, "not yet stuck")
	assert.False(t, said)
	room, said = p.room(500, sec(30), topUp, stuck, false)
	assert.Equal(t, 10, room, "set aside: one batch past them")
	assert.True(t, said)
	p.swept(10, true)

	// The sends take the 10 at once: the window grows as it would with
	// nothing set aside, and room is counted past the pile.
	room, said = p.room(500, sec(30.25), topUp, stuck, false)
	assert.Equal(t, 50, room, "10 in 250ms, 50 over 1.25s, and ran dry")
	assert.False(t, said)
	p.swept(50, true)
	room, _ = p.room(530, sec(30.5), topUp, stuck, false)
	assert.Equal(t, 100-30, room, "20 in 250ms: a window of 100, 30 of it out")
	p.swept(70, true)

	// Nothing taken again for stuckAfter: set aside again, said again.
	room, said = p.room(600, sec(60.5), topUp, stuck, false)
	assert.Equal(t, 10, room, "the window starts over past the new pile")
	assert.True(t, said)
	p.swept(10, true)

	// Some of the pile was taken after all (a watcher came back): it
	// shrinks with the count.
	room, _ = p.room(300, sec(61), topUp, stuck, false)
	assert.Equal(t, 300, p.pile)
	assert.Positive(t, room)
}

// TestAFailedSweepTopsUpNoMore: a sweep that fails while the timer tops a
// window up tries again at the interval, not every poll: three quick
// failures in a row would give the lease up within a second.
func TestAFailedSweepTopsUpNoMore(t *testing.T) {
	tm, err := New(Config{Interval: time.Minute}, nil, slog.New(slog.DiscardHandler), nil)
	require.NoError(t, err)
	tm.role, tm.topping = RoleActive, true
	tm.pace.window, tm.pace.after = 5000, 10
	require.Equal(t, pausedPoll, tm.period())
	err = tm.sweepFailed(context.Background(), time.Now(), errors.New("query service out of reach"))
	require.Error(t, err)
	assert.Equal(t, time.Minute, tm.period())
	assert.Equal(t, -1, tm.pace.after, "the failed sweep's flags went uncounted: measured afresh")
	assert.Zero(t, tm.pace.window, "one batch at first")
}

// TestPaceWaitsForAFeedBehind: flagged retries nobody takes while the feed
// is behind (a flash sale's first sends ahead of their changes) are waiting,
// not lost: none is set aside, and no batch is flagged past them that
// retries stop could not hold back, until the feed has been caught up for
// stuckAfter with still none taken.
func TestPaceWaitsForAFeedBehind(t *testing.T) {
	const topUp, stuck = 250 * time.Millisecond, 30 * time.Second
	p := newPace(1000)
	flagged := 0
	for at := time.Duration(0); at <= 5*time.Minute; at += time.Second {
		room, said := p.room(flagged, at, topUp, stuck, true)
		require.False(t, said, "set aside at %v while the feed was behind", at)
		flagged += room
		p.swept(room, true)
	}
	assert.Equal(t, 1000, flagged, "one window, none past it")

	const lastBehind = 5 * time.Minute // the loop's last look
	room, said := p.room(flagged, lastBehind+stuck-time.Second, topUp, stuck, false)
	assert.Zero(t, room, "caught up, not yet for stuckAfter")
	assert.False(t, said)
	room, said = p.room(flagged, lastBehind+stuck, topUp, stuck, false)
	assert.True(t, said, "caught up for stuckAfter, none taken: lost")
	assert.Equal(t, 1000, room)
}
