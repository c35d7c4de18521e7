package watcher

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/ordermail/ordermail/store"
)

// The reader hands events to the workers through one queue, in feed order,
// one event of a key at a time: an event whose key has an event being
// handled waits in that key's line, and the worker of the line handles it
// next. So a key's events keep their order and one order is never handled
// by two workers at once, while a send that hangs holds up its own key
// only. (A queue per worker, by a hash of the key, let a hung send's queue
// fill, and then the reader, and so every worker, waited for it.)
//
// A document's newer event supersedes its older one waiting in the line:
// decisions are made on the document's current state, so the older one
// would add nothing, and a key rewritten again and again while its send
// hangs would otherwise take every slot, and so hold up every key. A line
// holds at most one waiting event per collection.

// keyLine is a key's events from the one being handled to the last read.
type keyLine struct {
	key     string
	waiting []store.Event // read after the one being handled, in feed order; under dispatcher.mu
	// last is the key's last write known to the line's worker, which alone
	// reads and sets it: the next event waits for it, and reads the state
	// again unless its snapshot includes it. Nil: none since the snapshot.
	last *written
	// failing is how the event being handled has failed, while it does;
	// nil once handled. The line's worker (or, parked, its timer) alone
	// uses it.
	failing *failing
	// touched says the store was asked for the event being handled (its
	// state read, or a write made): only then does its outcome say
	// whether the store answers.
	touched bool
	// aside says the event being handled holds a slot of held, not of
	// slots: it waits for a locus the store does not answer for. The
	// line's worker (or, parked, its timer) alone uses it.
	aside bool
}

// dispatched is an event on the queue with the line it opened.
type dispatched struct {
	ev   store.Event
	line *keyLine
	// again: ev was handled before, and waited for an unavailable store.
	again bool
}

type dispatcher struct {
	queue chan dispatched
	// slots holds one token per event read and not yet handled, queued or
	// waiting in a line: the bound of what the reader takes from the feed.
	slots chan struct{}
	// held holds the tokens of events waiting apart for a locus the store
	// does not answer for (a Couchbase node that hangs, until it is failed
	// over): in slots, enough of them stopped the reader, and with it the
	// keys of every node that answers. A store that streams its loci apart
	// hands out no more of a held one (store.FeedOptions.LocusHeld), so
	// what comes here is what it had read ahead; once held is full, they
	// keep their slots.
	held chan struct{}

	mu    sync.Mutex
	lines map[string]*keyLine
	// recent keeps the last writes of keys that have no line, for their
	// next events, until the snapshots of the events read since include
	// them (they only move forward); pruned once it holds keep of them.
	recent map[string]*written
	keep   int
	// superseded is called, outside mu, with each event a newer one of
	// its document replaced in its line; it acknowledges it.
	superseded func(store.Event)
}

// minHeld is the least room of dispatcher.held: more than a Couchbase
// feed reads ahead (256 events), so that a node held back with a full
// read-ahead takes no slot of the others at any number of workers.
const minHeld = 1024

func newDispatcher(workers, keep int, superseded func(store.Event)) *dispatcher {
	return &dispatcher{
		queue:      make(chan dispatched, 4*workers),
		slots:      make(chan struct{}, 64*workers),
		held:       make(chan struct{}, max(64*workers, minHeld)),
		lines:      map[string]*keyLine{},
		recent:     map[string]*written{},
		keep:       keep,
		superseded: superseded,
	}
}

// add hands ev to the workers: into its key's line when one is open, else
// onto the queue in a line of its own. It waits while every slot is taken
// or the queue is full, and returns false if ctx ends first (ev is then not
// handled, and comes back after a restart).
func (d *dispatcher) add(ctx context.Context, ev store.Event) bool {
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	d.mu.Lock()
	if ln, ok := d.lines[ev.Key]; ok {
		old, replaced := ln.wait(ev)
		d.mu.Unlock()
		if replaced {
			<-d.slots // ev took old's place
			d.superseded(old)
		}
		return true
	}
	if len(d.recent) >= d.keep {
		prune(d.recent, ev.Snapshot, ev.StateAt)
	}
	ln := &keyLine{key: ev.Key, last: d.recent[ev.Key]}
	delete(d.recent, ev.Key) // the line carries it now
	d.lines[ev.Key] = ln
	d.mu.Unlock()
	select {
	case d.queue <- dispatched{ev: ev, line: ln}:
		return true
	case <-ctx.Done():
		return false
	}
}

// wait adds ev at the end of the line. An event of the same document
// waiting there is taken out and returned: ev supersedes it. The events
// left keep their feed order.
func (ln *keyLine) wait(ev store.Event) (old store.Event, replaced bool) {
	for i, w := range ln.waiting {
		if w.Collection == ev.Collection {
			old = w
			copy(ln.waiting[i:], ln.waiting[i+1:])
			ln.waiting[len(ln.waiting)-1] = ev
			return old, true
		}
	}
	ln.waiting = append(ln.waiting, ev)
	return store.Event{}, false
}

// done ends the handling of ln's current event. It returns the line's next
// event if one waits; otherwise it closes the line, keeping its last write
// for the key's later events.
func (d *dispatcher) done(ln *keyLine) (store.Event, bool) {
	if ln.aside {
		ln.aside = false
		<-d.held
	} else {
		<-d.slots
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(ln.waiting) > 0 {
		ev := ln.waiting[0]
		ln.waiting[0] = store.Event{}
		ln.waiting = ln.waiting[1:]
		return ev, true
	}
	delete(d.lines, ln.key)
	if ln.last != nil {
		d.recent[ln.key] = ln.last
	}
	return store.Event{}, false
}

// setAside moves the slot of ln's event, which waits for a locus held
// back, to held, where there is room: the reader goes on with the other
// loci's events. ln's worker (or its timer) calls it.
func (d *dispatcher) setAside(ln *keyLine) {
	if ln.aside {
		return
	}
	select {
	case d.held <- struct{}{}:
		<-d.slots
		ln.aside = true
	default: // held is full: it keeps its slot
	}
}

// prune forgets the writes every later event's snapshot includes: those at
// or below its position, and those of unknown position (a dead letter
// written for a poisoned change, an outcome not written) done before its
// state was read, which would otherwise stay for the life of the process.
func prune(recent map[string]*written, snapshot uint64, stateAt time.Time) {
	for k, wr := range recent {
		select {
		case <-wr.done:
			unknown := wr.seq == math.MaxUint64 && !wr.at.IsZero()
			if snapshot == 0 || wr.seq <= snapshot || (unknown && !stateAt.IsZero() && stateAt.After(wr.at)) {
				delete(recent, k)
			}
		default:
		}
	}
}
