package watcher

import (
	"sync"
	"sync/atomic"
	"time"
)

// unreachable holds back the events of the loci (store.Event.Locus) the
// store answered unavailable for (on Couchbase, a node that hangs or is
// down until it is failed over; on the embedded store, the whole store,
// busy with another process's write). A try there costs a worker the
// store's whole timeout (10s by default): events parked and tried again
// each in turn kept every worker waiting on the node, and the keys of the
// nodes that answer waited behind them. Once a locus failed, its events
// wait apart without a try, and one event of it at a time probes it, its
// wait doubling; at most cap(probes) workers probe at once, whatever the
// number of loci down, so the others handle the loci that answer. A probe
// that succeeds, or any event of the locus handled meanwhile, brings it
// back.
type unreachable struct {
	n      atomic.Int64 // len(parts): read without mu by every event
	mu     sync.Mutex
	parts  map[int]*downPart
	probes chan struct{}
	now    func() time.Time
}

// downPart is a locus the store answered unavailable for.
type downPart struct {
	wait    *retryWait // between its probes
	next    time.Time  // no probe before
	probing bool
}

func newUnreachable(workers int, now func() time.Time) *unreachable {
	return &unreachable{parts: map[int]*downPart{}, probes: make(chan struct{}, max(1, workers/4)), now: now}
}

// admit says whether an event of locus p is tried now. Not, it says
// how long it waits apart before it asks again. A probe (probe, the hold
// it probes) must be followed by done.
func (u *unreachable) admit(p int) (ok bool, probe *downPart, wait time.Duration) {
	if u.n.Load() == 0 {
		return true, nil, 0
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	d := u.parts[p]
	if d == nil {
		return true, nil, 0
	}
	now := u.now()
	if d.probing { // its events come back once the probe may have ended, not every minWait
		return false, nil, max(d.wait.peek(), minWait)
	}
	if now.Before(d.next) {
		return false, nil, max(d.next.Sub(now), minWait)
	}
	select {
	case u.probes <- struct{}{}:
	default:
		return false, nil, minWait // every probe slot taken: the other loci's probes
	}
	d.probing = true
	return true, d, 0
}

// minWait is the shortest wait of an event held back: no loop as fast as
// the queue turns.
const minWait = 50 * time.Millisecond

// done reports how an event of locus p went: whether it asked the store
// anything (touched), and whether the store did not answer. An event that
// asked nothing says nothing of the store: its probe goes to another. A
// probe speaks for the hold it probed only (probe), not for one made
// since (the hold ended by another event, and made again).
func (u *unreachable) done(p int, probe *downPart, touched, unavailable bool) {
	if probe == nil && !unavailable && u.n.Load() == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if probe != nil {
		<-u.probes
		probe.probing = false
	}
	d := u.parts[p]
	switch {
	case !touched:
	case !unavailable:
		if d != nil {
			delete(u.parts, p)
			u.n.Store(int64(len(u.parts)))
		}
	case d == nil:
		d = &downPart{wait: newBackoff()}
		u.parts[p] = d
		u.n.Store(int64(len(u.parts)))
		d.next = u.now().Add(d.wait.next())
	case probe == d:
		// Its wait doubles at each probe that fails, not at each event
		// under way when the locus failed.
		d.next = u.now().Add(d.wait.next())
	}
}

// held says whether locus p is held back.
func (u *unreachable) held(p int) bool {
	if u.n.Load() == 0 {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.parts[p] != nil
}

// count is how many loci are held back.
func (u *unreachable) count() int { return int(u.n.Load()) }
