package timer

import "time"

// The sweep flags no further ahead of the sends than they take in about
// aheadFor: a flagged retry goes out whatever allow_retrys says, so what is
// flagged and not yet taken is what a pause cannot stop, and on Couchbase
// what each sweep statement reads again on its way to the unflagged. An
// unbounded sweep flagged 52,000 of 100,000 due retries in one tick.
const aheadFor = time.Second

// leastWindow is the least window once the sends' pace is measured (or
// the sweep batch, when smaller): the first sweep flags one batch, and
// sends slower than a batch a second (an email service struggling, the
// very time retries are paused) then keep a window of their own second,
// not of a batch (1,000 at 20 sends a second is 50 s that a pause cannot
// stop).
const leastWindow = 16

// pace keeps the sweep's window: how many retries may be flagged and not
// yet taken, from how many the sends took between two sweeps. While the
// window holds a backlog back the timer tops it up every topUp (Timer.
// polling), so the window covers aheadFor and one top-up.
type pace struct {
	floor  int           // the first window: one sweep batch
	window int           // 0: none yet (floor)
	after  int           // flagged after the last sweep, as counted then plus its flags; -1: not measured
	at     time.Duration // when that count was read, on the monotonic clock
	// limited: the last sweep stopped at the window with due retries
	// left; the sends then taking all of it says their pace is higher
	// than measured.
	limited bool
	// lastTaken is when the count was last seen to fall (or first read).
	// When nobody takes a flagged retry for stuckAfter, the flagged then
	// are set aside (pile): retries flagged whose change never reached a
	// watcher (lost events, a restored bucket) are never taken, and would
	// otherwise fill the window for good. The pile only shrinks after,
	// as far as the flagged count falls below it.
	lastTaken time.Duration
	pile      int
	stuck     bool // said once per episode
	// behindAt is when the feed was last seen behind: flagged retries
	// that nobody takes while it is, or for stuckAfter since, may only be
	// waiting behind its backlog (a flash sale's first sends ahead of
	// them), and are not set aside for lost.
	behindAt time.Duration
}

func newPace(floor int) pace { return pace{floor: floor, after: -1} }

// room says how many more retries the sweep may flag now, at, when
// flagged are flagged and not yet taken; topUp is the period of the
// top-ups, stuckAfter how long flagged retries that nobody takes hold the
// sweep back before they are set aside, behind whether the feed is behind
// now. stuck reports that they just were.
func (p *pace) room(flagged int, at, topUp, stuckAfter time.Duration, behind bool) (room int, stuck bool) {
	if p.window == 0 {
		p.window = p.floor
	}
	if behind {
		p.behindAt = at
	}
	p.pile = min(p.pile, flagged)
	if p.after < 0 {
		p.lastTaken = at
	} else if taken := p.after - flagged; taken > 0 {
		p.lastTaken, p.stuck = at, false
		dt := max(at-p.at, time.Millisecond)
		w := int(float64(taken) * float64(aheadFor+topUp) / float64(dt))
		if flagged == p.pile && p.limited {
			w = max(w, 4*p.window) // ran dry: the sends take more than was measured
		}
		p.window = max(min(p.floor, leastWindow), w)
	}
	p.after, p.at = flagged, at
	room = max(0, p.window-(flagged-p.pile))
	if room == 0 && at-p.lastTaken >= stuckAfter && at-p.behindAt >= stuckAfter {
		// Nothing taken for stuckAfter: what is flagged is set aside, and
		// one batch goes out past it; the window grows again as the sends
		// take.
		p.lastTaken, p.pile, p.window = at, flagged, p.floor
		stuck, p.stuck = !p.stuck, true
		room = p.window
	}
	return room, stuck
}

// movedWithin says whether the sends took a flagged retry within d of at.
func (p *pace) movedWithin(at, d time.Duration) bool { return at-p.lastTaken < d }

// swept records a sweep that flagged n more, limited when it stopped at
// the window with due retries left.
func (p *pace) swept(n int, limited bool) {
	p.after += n
	p.limited = limited
}

// forget drops the measure and the window (a probe, a sweep that failed,
// a role given up): the next sweep flags one batch and measures afresh
// from its count, whatever an earlier stint's sends took. The pile stays:
// it is the store's, and shrinks by itself.
func (p *pace) forget() { p.after, p.window, p.limited = -1, 0, false }
