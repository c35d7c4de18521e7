package timer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestPaceFollowsWhatTheSendsTake: the window starts at one batch, is
// what the sends took over a second and a top-up, grows fourfold when a
// window held a backlog back and the sends took all of it, and shrinks
// when they slow down.
func TestPaceFollowsWhatTheSendsTake(t *testing.T) {
	const topUp, stuck = 250 * time.Millisecond, 30 * time.Second
	p := newPace(1000)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }

	room, _ := p.room(0, 0, topUp, stuck)
	assert.Equal(t, 1000, room, "first sweep: one batch")
	p.swept(1000, true)

	// 1,000 taken in 250ms, none left: 4,000/s, and the window held a
	// backlog back, so at least four times the window.
	room, _ = p.room(0, ms(250), topUp, stuck)
	assert.Equal(t, 5000, room, "1,000 in 250ms is 5,000 over 1.25s (more than 4x)")
	p.swept(5000, true)

	// 2,000 of them taken in 250ms: 8,000/s, some left: no growth beyond.
	room, _ = p.room(3000, ms(500), topUp, stuck)
	assert.Equal(t, 10000-3000, room, "2,000 in 250ms is 10,000 over 1.25s")
	p.swept(7000, true)

	// The sends slow down: 100 taken in 1s.
	room, _ = p.room(9900, ms(1500), topUp, stuck)
	assert.Equal(t, 0, room, "125 over 1.25s, less than flagged")
	assert.True(t, p.moved, "some were taken")
	p.swept(0, true)
	room, _ = p.room(9900, ms(1750), topUp, stuck)
	assert.Equal(t, 0, room)
	assert.False(t, p.moved, "none taken: no hurry to top up")

	// A role given up and taken again: one batch at first, whatever the
	// last stint's sends took.
	p.window = 50000
	p.forget()
	room, _ = p.room(0, ms(3000), topUp, stuck)
	assert.Equal(t, 1000, room)

	// A window not held back by (no due retries left) does not grow when
	// the sends take it all.
	q := newPace(10)
	room, _ = q.room(0, 0, topUp, stuck)
	q.swept(3, false)
	room, _ = q.room(0, ms(1000), topUp, stuck)
	assert.Equal(t, 10, room, "3 taken a second: the floor")
}

// TestPaceLetsABatchPastRetriesNobodyTakes: flagged retries that are never
// taken (no watcher, or a bug elsewhere) hold the sweep back for a while,
// then let one batch through, once per while, said once.
func TestPaceLetsABatchPastRetriesNobodyTakes(t *testing.T) {
	const topUp, stuck = 250 * time.Millisecond, 30 * time.Second
	p := newPace(10)
	room, said := p.room(0, 0, topUp, stuck)
	assert.Equal(t, 10, room)
	assert.False(t, said)
	p.swept(10, true)

	room, said = p.room(10, 29*time.Second, topUp, stuck)
	assert.Equal(t, 0, room, "not yet stuck")
	assert.False(t, said)
	room, said = p.room(10, 30*time.Second, topUp, stuck)
	assert.Equal(t, 10, room, "stuck: one batch")
	assert.True(t, said)
	p.swept(10, true)
	room, said = p.room(20, 31*time.Second, topUp, stuck)
	assert.Equal(t, 0, room, "then as long again")
	room, said = p.room(20, 60*time.Second, topUp, stuck)
	assert.Equal(t, 10, room, "another batch")
	assert.False(t, said, "said once per episode")
	p.swept(10, true)

	// The sends take again (25 in a second): the episode ends, and the
	// next is said again.
	room, said = p.room(5, 61*time.Second, topUp, stuck)
	assert.Equal(t, 31-5, room, "25 a second is 31 over 1.25s")
	assert.False(t, said)
	p.swept(26, true)
	room, said = p.room(31, 91*time.Second, topUp, stuck)
	assert.Equal(t, 10, room, "nothing taken for 30s again: one batch")
	assert.True(t, said, "a new episode is said")
}
