package couchbase

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// Membership mode of the feed: the instances of a feed share its
// vBuckets by themselves (members.go). Every heartbeat, a member renews its
// entry, computes the assignment over the live members, hands over the
// vBuckets that are no longer its own and claims those that are and are
// free. A handover stops handing out the vBucket's events, waits for those
// in flight to be acknowledged (at most releaseWait), closes the stream,
// and only then writes the checkpoint with no owner: the new owner opens
// its stream after the old one is closed, from that checkpoint. A member
// that dies keeps its vBuckets until its entry expires; then the others
// claim them, each once its own heartbeats have gone through for a TTL
// (trusted). Every checkpoint write is by CAS on the owner's last write,
// so a member that was paused past its TTL finds its writes refused
// (errFenced) and drops those vBuckets.

// ownership is a feed's membership mode.
type ownership struct {
	group *group
	cps   metaCheckpoints
	me    string
	ttl   time.Duration
	beat  time.Duration // heartbeat interval: a fifth of the TTL
	step  *stepper      // nil: never steps aside

	// saves orders the checkpoint writes of the saver, of handovers and
	// of fences on each vBucket: each is by the CAS the other left. One
	// per vBucket, so that writes to a node that hangs hold up only the
	// vBuckets it holds. Made by join, read-only after.
	saves map[uint16]*semaphore.Weighted

	// The heartbeat loop's own: the assignment, computed again only when
	// the live members change; whether a heartbeat of ours ever failed or
	// came late, and since when they have gone through one after the
	// other (zero: the last one failed).
	assignedTo   []string
	owners       []string
	faltered     bool
	healthySince time.Time

	// Guarded by the feed's mu.
	lastBeat time.Time  // when the entry our last heartbeat wrote was stamped
	lastTry  time.Time  // when the last heartbeat set out, written or not
	doc      membersDoc // as the last heartbeat wrote it
	fromNow  bool
}

func newOwnership(s *Store, feed, me string, ttl time.Duration, now func() time.Time) *ownership {
	return &ownership{group: newGroup(s, feed, me, ttl, now), cps: metaCheckpoints{s}, me: me, ttl: ttl, beat: ttl / 5}
}

// lockSaves waits, at most until ctx ends, for vb's checkpoint writes to
// be ours to make; unlock lets the next one go.
func (o *ownership) lockSaves(ctx context.Context, vb uint16) (unlock func(), err error) {
	l := o.saves[vb]
	if err := l.Acquire(ctx, 1); err != nil {
		return nil, fmt.Errorf("wait for the checkpoint writes of vb %d: %w", vb, err)
	}
	return func() { l.Release(1) }, nil
}

// validLocked says whether the heartbeat loop ran recently enough that
// this process cannot have been paused past its TTL (a beat short of it,
// for clock skew and the time a claim takes). A pause ends with every
// goroutine running at once: a stream may hand out an event before the
// next heartbeat finds out what is still ours. A heartbeat that fails
// (the members document is unreachable) does not stop the streams: the
// other members cannot write it either, or, partitioned from us, they
// claim our vBuckets by CAS and our checkpoint writes are refused.
func (o *ownership) validLocked(now time.Time) bool {
	return !o.lastTry.IsZero() && now.Sub(o.lastTry) < o.ttl-o.beat
}

// join is the first heartbeat and the first claims, before the feed's
// goroutines start: the vBuckets claimed now are opened before Subscribe
// returns.
func (f *feed) join(ctx context.Context, fromNow bool) error {
	f.own.fromNow = fromNow
	if fromNow {
		// Every vBucket's start, before any is claimed: one claimed later
		// (its first claim failed, or it is another member's) starts
		// where the service started, not at the end of that later moment.
		// Once, for the feed's first start: a document missing at a later
		// start was lost, and is streamed from the beginning (startOf).
		started, err := f.own.cps.Started(ctx, f.name)
		if err != nil {
			return fmt.Errorf("read whether feed %s started: %w", f.name, err)
		}
		if !started {
			saved, err := f.own.cps.Load(ctx, f.name, f.vbs)
			if err != nil {
				return fmt.Errorf("load checkpoints of %s: %w", f.name, err)
			}
			if err := startFromNow(ctx, f.agent, f.vbs, saved, f.opts, func(ctx context.Context, vb uint16, p position) error {
				return f.own.cps.Begin(ctx, f.name, vb, p, true)
			}); err != nil {
				return fmt.Errorf("feed %s from now: %w", f.name, err)
			}
			if err := f.own.cps.MarkStarted(ctx, f.name, true); err != nil {
				return fmt.Errorf("feed %s from now: %w", f.name, err)
			}
		}
	}
	f.own.saves = make(map[uint16]*semaphore.Weighted, len(f.vbs))
	for _, vb := range f.vbs {
		f.state[vb] = &vbState{phase: phaseUnowned, settled: true}
		f.own.saves[vb] = semaphore.NewWeighted(1)
	}
	claimed, err := f.rebalance(ctx)
	if err != nil {
		return fmt.Errorf("join the members of %s: %w", f.name, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, vb := range claimed {
		if st := f.state[vb]; st.held {
			st.settled = false
			f.unsettled++
		}
	}
	return nil
}

// memberLoop heartbeats and rebalances until the feed ends.
func (f *feed) memberLoop() {
	f.every(f.own.beat, func() {
		if _, err := f.rebalance(f.ctx); err != nil && f.ctx.Err() == nil {
			f.beats.Fail(f.ctx, "beat", "membership heartbeat", "error", err)
		} else if err == nil {
			f.beats.Mended(f.ctx, "beat")
		}
	})
}

// rebalance heartbeats, then hands over what is no longer ours and claims
// what is ours and free. It returns the vBuckets it claimed.
func (f *feed) rebalance(ctx context.Context) ([]uint16, error) {
	o := f.own
	sent := f.opts.now()
	f.mu.Lock()
	owned := f.stats.VBuckets
	prev := o.lastTry
	late := !prev.IsZero() && !o.validLocked(sent)
	if late {
		// Nothing more is handed out until fence has checked what is
		// still ours: lastTry moves now, and the streams would hand out
		// again before that.
		for vb, st := range f.state {
			if st.held { // being handed over too: see handOut
				f.voidLocked(vb)
			}
		}
	}
	o.lastTry = sent
	prevDoc := o.doc
	f.mu.Unlock()
	if late {
		f.log.Warn("the heartbeat loop ran late: this process was paused or starved", "late_by", sent.Sub(prev))
	}
	bctx, cancel := context.WithTimeout(ctx, min(f.opts.opTimeout, o.ttl/2))
	var held, aside bool
	if o.step != nil {
		held, aside = o.step.next(sent, prevDoc, o.me)
	}
	doc, stamped, err := o.group.beat(bctx, owned, held, aside)
	cancel()
	if err != nil {
		o.healthySince, o.faltered = time.Time{}, true
		return nil, err
	}
	// From our previous entry's stamp to the end of this heartbeat: if
	// that is near the TTL, the others may have taken us for dead
	// meanwhile (they count an entry's TTL from no earlier than its
	// stamp). Measured on this process's clock readings (monotonic), not
	// on the times in the document, so that a wall clock stepped back does
	// not hold trust back. From the stamp, not from when the heartbeat set
	// out: a slow members-document node (a read and a write of half a
	// TTL's fifth each) counted every heartbeat away, and every one fenced
	// and reopened every stream.
	wrote := time.UnixMilli(doc.Members[o.me].BeatAt)
	if o.healthySince.IsZero() || late {
		o.healthySince = f.opts.now()
	}
	// A member whose first heartbeat finds the others' entries expired
	// together may have started during an outage of the members document:
	// it takes over from no one until it has heartbeat for a TTL, as those
	// whose heartbeats failed do, so that the others renew first.
	first := o.lastBeat.IsZero()
	o.faltered = o.faltered || late || first && doc.outage(o.me, wrote)
	f.mu.Lock()
	away := late || (!o.lastBeat.IsZero() && f.opts.now().Sub(o.lastBeat) >= o.ttl-o.beat)
	unsure := map[uint16]bool{}
	for vb, st := range f.state {
		if st.held && st.suspect && !st.releasing { // voided by a stream, or not yet found ours
			unsure[vb] = true
		}
	}
	f.mu.Unlock()
	switch {
	case away:
		// Our entry may have expired meanwhile: the others may have taken
		// vBuckets of ours. Keep those our checkpoint writes still hold.
		f.fence(ctx, sent, nil)
	case len(unsure) > 0:
		// Nothing new since the last fence: only what it could not
		// confirm (or a stream voided) is checked again, and the streams
		// it kept go on.
		f.fence(ctx, sent, unsure)
	default:
		f.rechecks.Mended(ctx, "recheck") // nothing left in doubt, however it was settled
	}
	now := f.opts.now()
	live := doc.assignable(now)
	if !o.trusted(now) {
		live = o.stillAssigned(live, doc, now)
	}

	var claims, releases, disowns []uint16
	if !slices.Equal(live, o.assignedTo) {
		o.assignedTo, o.owners = live, assignment(live, len(f.vbs))
	}
	owners := o.owners
	f.mu.Lock()
	o.lastBeat = stamped
	o.doc = doc
	for vb, st := range f.state {
		mine := owners[vb] == o.me
		switch {
		case st.releasing || st.claiming || st.disowning:
		case st.held && !mine:
			st.releasing = true
			releases = append(releases, vb)
		case st.held && st.phase == phaseUnowned && !st.suspect:
			// A handover that could not write its checkpoint, and vb is
			// ours again: stream it again.
			st.phase, st.at, st.closeFirst = phaseWaiting, now, true
			f.stats.Reopens++
			f.handoffs.Mended(ctx, vb) // no longer to hand over
		case !st.held && mine:
			st.claiming = true
			claims = append(claims, vb)
		case !st.held && st.unsure:
			st.disowning = true
			disowns = append(disowns, vb)
		}
	}
	f.mu.Unlock()
	for _, vb := range releases {
		f.wg.Go(func() { f.release(vb) })
	}
	for _, vb := range disowns {
		f.wg.Go(func() { f.disown(vb) })
	}
	// Within a heartbeat: the loop must come round again in time (the
	// claims left are made at the next one).
	cctx, cancel := context.WithTimeout(ctx, o.beat)
	claimed := f.claimAll(cctx, claims, o.liveness(cctx, doc, now))
	cancel()
	if len(claimed) > 0 || len(releases) > 0 {
		f.log.Info("rebalanced", "members", len(live), "claimed", len(claimed), "handing_over", len(releases))
		f.poke()
	}
	return claimed, nil
}

// trusted says whether an entry that expired can be taken for a member
// that stopped: none of our heartbeats failed or came late since we
// started, or they have gone through one after the other for a TTL since
// one did, time enough for every live member to renew its entry. Before
// that, an entry that expired while ours failed or came late may have done
// so for the same reason (the members document out of reach, the machine
// starved), and its member may still stream. A member that just started
// and heartbeats at once is trusted: a restart after a crash takes over
// from the member that crashed as soon as its entry expires.
func (o *ownership) trusted(now time.Time) bool {
	return !o.faltered || !o.healthySince.IsZero() && now.Sub(o.healthySince) >= o.ttl
}

// stillAssigned is live and the members of our last assignment that doc
// does not show as gone (leaving) or aside. Until we are trusted, the
// vBuckets are assigned over these: they stay where they are, instead of
// moving to the members whose heartbeats went through first and back again
// a heartbeat later.
func (o *ownership) stillAssigned(live []string, doc membersDoc, now time.Time) []string {
	out := slices.Clone(live)
	mixed := doc.mixed(now)
	for _, name := range o.assignedTo {
		if e := doc.Members[name]; !e.Leaving && (!e.Aside || mixed) && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// liveness says whether an owner named in a checkpoint is live, for a
// claim: live if doc, our heartbeat's reading at now, says so. An owner
// it does not show live may have joined after that reading (or been
// forgotten long ago), or renewed its entry since, late: the members
// document is read again, once, to tell. Such a member must not lose its
// vBuckets to a claim made on an older reading: both would stream them
// until its next checkpoint write was refused. Unsure (the read fails),
// the owner counts as live. Until we are trusted, only a member that left
// counts as not live: one whose entry expired, or was forgotten, may still
// stream.
func (o *ownership) liveness(ctx context.Context, doc membersDoc, now time.Time) func(string) bool {
	trusted := o.trusted(now)
	var once sync.Once
	var fresh membersDoc
	var err error
	return func(owner string) bool {
		if live, _ := doc.isLive(owner, now); live {
			return true
		}
		once.Do(func() {
			if fresh, _, err = o.group.read(ctx); err == nil {
				fresh = o.group.judged(fresh, o.group.now())
			}
		})
		if err != nil {
			return true
		}
		live, _ := fresh.isLive(owner, o.group.now())
		return live || (!trusted && !fresh.Members[owner].Leaving)
	}
}

// claimAll claims vbs, many at once, and readies the streams of those it
// got.
func (f *feed) claimAll(ctx context.Context, vbs []uint16, live func(string) bool) []uint16 {
	var mu sync.Mutex
	var got []uint16
	from := map[string]int{} // vBuckets taken over, by the member that had them
	errs := parallel(ctx, vbs, func(ctx context.Context, vb uint16) error {
		ctx, cancel := context.WithTimeout(ctx, f.opts.opTimeout)
		defer cancel()
		p, c, prev, err := f.own.cps.Claim(ctx, f.name, vb, f.own.me, live, func(ctx context.Context) (position, error) {
			return f.startOf(ctx, vb)
		})
		f.mu.Lock()
		defer f.mu.Unlock()
		st := f.state[vb]
		st.claiming = false
		if err != nil && !errors.Is(err, errTaken) {
			st.unsure = true
		}
		if err != nil || f.closed {
			return err
		}
		st.unsure = false
		if prev != "" && prev != f.own.me {
			mu.Lock()
			from[prev]++
			mu.Unlock()
		}
		st.held, st.claim, st.suspect = true, c, false
		st.phase, st.at = phaseWaiting, f.opts.now()
		st.gen++
		st.uuid, st.base, st.snaps, st.rollbackTo = p.UUID, p, nil, nil
		st.high = max(st.high, p.Seq)
		f.saved[vb] = p
		f.restartLocked(vb, st, p.Seq)
		f.stats.VBuckets++
		f.stats.Claimed++
		f.handoffs.Mended(ctx, vb) // ours: a disown that failed is over
		mu.Lock()
		got = append(got, vb)
		mu.Unlock()
		return nil
	})
	var failed int
	var first error
	for _, err := range errs {
		if !errors.Is(err, errTaken) {
			failed++
			first = err
		}
	}
	if failed > 0 && ctx.Err() == nil {
		f.claims.Fail(ctx, "claims", "claim vBuckets", "failed", failed, "error", first)
	} else if failed == 0 {
		f.claims.Mended(ctx, "claims")
	}
	for prev, n := range from {
		f.log.Warn("took over the vBuckets of a member that stopped heartbeating", "member", prev, "vbuckets", n)
	}
	return got
}

// startOf is where a vBucket that has no checkpoint document starts: its
// beginning. With --from-now, the feed's first join wrote every vBucket's
// start, so a document missing now was lost (a failover that lost its writes, made
// without durability, or a hand's delete): its end now would skip what was
// written since the service started; its beginning sends what the operator
// chose to skip, paid orders not confirmed, which is said.
func (f *feed) startOf(_ context.Context, vb uint16) (position, error) {
	if f.own.fromNow {
		f.log.Warn("a vBucket's checkpoint document is gone although --from-now wrote it at start: streamed from its beginning "+
			"(paid orders written before the start and not confirmed are sent)", "vbucket", vb)
	}
	return position{}, nil
}

// release hands vb over: nothing more is read, the events in flight are
// acknowledged (or, after releaseWait, given up: those not yet handed out
// are dropped, and the new owner delivers them again; the sends of those
// in hand repeat under their keys), the stream is closed, and the
// checkpoint is written with no owner.
func (f *feed) release(vb uint16) {
	if !f.readyToRelease(vb) {
		return // still ours, streamed: the next heartbeat tries again
	}
	f.mu.Lock()
	st := f.state[vb]
	var abandon func()
	if st.phase == phaseOpening {
		abandon, st.cancel = st.cancel, nil
	}
	st.gen++
	st.phase = phaseUnowned
	// Not ours to wait for: its first stream request, still out (a slow
	// node at start), will never be answered to us.
	f.settleLocked(st)
	f.mu.Unlock()
	if abandon != nil {
		abandon()
	}

	if n := f.awaitAcks([]uint16{vb}, f.opts.releaseWait); n > 0 && f.ctx.Err() == nil {
		f.log.Warn("handing a vBucket over with events in flight; the new owner delivers them again", "vb", vb, "in_flight", n)
	}
	// What is still on its way to Next is the new owner's to deliver.
	f.mu.Lock()
	st.void = st.gen
	f.mu.Unlock()

	// Not f.ctx, which Close ends first: Close waits for this write, which
	// frees vb at once for the member it is assigned to, until its own
	// context ends.
	ctx, cancel := context.WithTimeout(f.handovers, f.opts.opTimeout)
	defer cancel()
	later := func(what string, err error) { // still ours: the next heartbeat tries again
		f.handoffs.Fail(ctx, vb, what+"; trying again at the next heartbeat", "vb", vb, "error", err)
		f.mu.Lock()
		st.releasing = false
		f.mu.Unlock()
	}
	st.op.Lock()
	err := f.agent.CloseStream(ctx, vb)
	st.op.Unlock()
	if err != nil {
		// The server may still stream vb to us: not free for another
		// member yet.
		later("close a stream to hand it over", err)
		return
	}
	unlock, err := f.own.lockSaves(ctx, vb)
	if err != nil {
		later("hand a vBucket over", err)
		return
	}
	defer unlock()
	f.mu.Lock()
	p := f.positionAt(vb, f.acks.Checkpoint(vb))
	c := st.claim
	f.mu.Unlock()
	err = f.own.cps.Release(ctx, f.name, vb, f.own.me, p, c)
	f.mu.Lock()
	defer f.mu.Unlock()
	st.releasing = false
	switch {
	case err == nil:
		f.saved[vb] = p
		st.held, st.suspect = false, false
		f.stats.VBuckets--
		f.stats.Released++
		f.handoffs.Mended(ctx, vb)
	case errors.Is(err, errFenced):
		if st.held { // not counted out already (lostLocked, by a save)
			f.stats.VBuckets--
			f.stats.Fenced++
		}
		st.held, st.suspect = false, false
		f.handoffs.Mended(ctx, vb)
	default:
		// Unknown: the write may have been made (its answer lost, and the
		// read back failed), and another member may have claimed vb since.
		// The next heartbeat tries again; should vb be ours again by then,
		// it is streamed only once a checkpoint write by CAS (fence) finds
		// it still ours, never on the strength of this member's memory.
		st.suspect = true
		f.handoffs.Fail(ctx, vb, "hand a vBucket over; trying again at the next heartbeat", "vb", vb, "error", err)
	}
}

// readyToRelease writes vb's checkpoint as it stands, by our claim, before
// a handover stops its stream, and says whether it was made. A handover
// whose checkpoint write cannot be made (its document's node hung) left vb
// streamed by no one until the node answered, since the member it goes to
// cannot claim it either: vb stays ours, and streamed, until it can be.
// Bounded by a heartbeat, as a claim is.
func (f *feed) readyToRelease(vb uint16) bool {
	ctx, cancel := context.WithTimeout(f.handovers, min(f.opts.opTimeout, f.own.beat))
	defer cancel()
	f.mu.Lock()
	st := f.state[vb]
	f.mu.Unlock()
	unlock, err := f.own.lockSaves(ctx, vb)
	if err != nil {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.notReadyLocked(ctx, st, vb, err)
	}
	defer unlock()
	f.mu.Lock()
	p, was := f.positionAt(vb, f.acks.Checkpoint(vb)), st.claim
	f.mu.Unlock()
	c, err := f.own.cps.SaveOwned(ctx, f.name, vb, f.own.me, p, was)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case errors.Is(err, errFenced):
		if st.held && st.claim == was {
			f.lostLocked([]uint16{vb}, "its checkpoint write was refused: another member claimed it")
		}
		st.releasing = false
		return false
	case err != nil:
		return f.notReadyLocked(ctx, st, vb, err)
	}
	f.saved[vb] = p
	if st.claim == was {
		st.claim = c
	}
	return true
}

// notReadyLocked is readyToRelease's answer when vb's checkpoint could not
// be written: vb stays ours, and the failure is said once an episode. Not
// the saves' episode: a save pass takes a vBucket being handed over for not
// ours to save, and would end it at every heartbeat.
func (f *feed) notReadyLocked(ctx context.Context, st *vbState, vb uint16, err error) bool {
	st.releasing = false
	if f.ctx.Err() == nil {
		f.handoffs.Fail(ctx, vb, "write a checkpoint to hand its vBucket over: it stays ours, streamed, until the write can be made",
			"vb", vb, "error", err)
	}
	return false
}

// disown hands vb on when its checkpoint names us though we do not stream
// it: a claim of ours failed after it may have been made, and vb is now
// another member's, which would find it taken for as long as we live.
func (f *feed) disown(vb uint16) {
	ctx, cancel := context.WithTimeout(f.ctx, f.opts.opTimeout)
	defer cancel()
	done, err := func() (bool, error) {
		unlock, err := f.own.lockSaves(ctx, vb)
		if err != nil {
			return false, err
		}
		defer unlock()
		return f.own.cps.Disown(ctx, f.name, vb, f.own.me)
	}()
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.state[vb]
	st.disowning = false
	if err != nil {
		f.handoffs.Fail(ctx, vb, "check a vBucket whose claim failed; trying again at the next heartbeat", "vb", vb, "error", err)
		return
	}
	f.handoffs.Mended(ctx, vb)
	st.unsure = false
	if done {
		f.log.Warn("a claim that seemed to fail had been made: the vBucket is handed on", "vb", vb)
	}
}

// awaitAcks waits, at most for wait, until the events of vbs handed out
// are acknowledged, and returns how many are still out.
func (f *feed) awaitAcks(vbs []uint16, wait time.Duration) int {
	out := func() (n int) {
		for _, vb := range vbs {
			n += f.inFlight(vb)
		}
		return n
	}
	deadline := f.opts.now().Add(wait)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for out() > 0 && f.opts.now().Before(deadline) && f.ctx.Err() == nil {
		select {
		case <-t.C:
		case <-f.ctx.Done():
		}
	}
	return out()
}

// fence runs after a heartbeat that came a TTL or more after the last
// one (only nil): this member may have been taken for dead. Nothing is
// handed out meanwhile; each vBucket we held is ours still if our
// checkpoint write goes through by our last CAS, and lost otherwise. With
// only, it checks those vBuckets alone (voided already): those a fence
// before could not confirm.
func (f *feed) fence(ctx context.Context, at time.Time, only map[uint16]bool) {
	f.mu.Lock()
	fenced := f.stats.Fenced
	held := only
	if held == nil {
		held = map[uint16]bool{}
		for vb, st := range f.state {
			if st.held {
				f.voidLocked(vb) // being handed over too: see handOut
			}
			if st.held && !st.releasing {
				held[vb] = true
			}
		}
	}
	f.mu.Unlock()
	// The events handed out before the void are being sent: what is
	// acknowledged within half a heartbeat is saved, not delivered again.
	// The writes get another half: those not made by then (their node
	// hangs) leave their vBuckets unstreamed until a heartbeat finds them
	// ours, and the loop comes round in time.
	f.awaitAcks(slices.Collect(maps.Keys(held)), f.own.beat/2)
	sctx, cancel := context.WithTimeout(ctx, f.own.beat/2)
	saved, err := f.save(sctx, held)
	cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.opts.now()
	kept, handing := 0, 0
	for _, vb := range saved {
		st := f.state[vb]
		if !st.held || st.releasing {
			continue
		}
		st.suspect = false
		// Ours, but assigned to another member (a handover that failed):
		// not streamed again, only handed over, which this heartbeat does.
		if owners := f.own.owners; owners != nil && owners[vb] != f.own.me {
			handing++
			continue
		}
		st.phase, st.at, st.closeFirst = phaseWaiting, now, true
		f.handoffs.Mended(ctx, vb) // ours, confirmed: nothing to hand over
		kept++
	}
	f.stats.Reopens += uint64(kept)
	// The rest stay unstreamed until a heartbeat finds them ours.
	lost := int(f.stats.Fenced - fenced)
	unknown := len(held) - kept - handing - lost
	if only == nil {
		f.log.Warn("heartbeat came late: this member may have been taken for dead", "late_by", at.Sub(f.own.lastBeat),
			"kept", kept, "handing_over", handing, "lost", lost, "unknown", unknown, "error", err)
	} else if unknown > 0 {
		// Checked again every heartbeat while their checkpoints cannot be
		// written (a node that hangs): said once, and when it ends.
		f.rechecks.Fail(ctx, "recheck", "vBuckets not yet found ours checked again", "kept", kept, "handing_over", handing,
			"lost", lost, "unknown", unknown, "error", err)
	} else {
		f.rechecks.Mended(ctx, "recheck")
	}
	f.poke()
}

// voidLocked stops vb's stream from handing anything out: its callbacks
// are ignored from now on, what it read that Next has not handed out yet
// is dropped there, and it is not reopened until a heartbeat says vb is
// still ours.
func (f *feed) voidLocked(vb uint16) {
	st := f.state[vb]
	if st.phase == phaseOpening && st.cancel != nil {
		f.wg.Go(st.cancel) // outside f.mu: it may call the callback at once
	}
	st.cancel = nil
	st.gen++
	st.void = st.gen
	st.phase = phaseUnowned
	st.closeFirst = true
	st.suspect = true
}

// lostLocked drops vBuckets another member owns now: their streams are
// closed, and our checkpoint writes for them were refused.
func (f *feed) lostLocked(vbs []uint16, why string) {
	f.dropLocked(vbs)
	f.log.Warn("lost vBuckets to another member", "vbuckets", len(vbs), "why", why)
}

// dropLocked is lostLocked unsaid, for a caller that says it once for many.
func (f *feed) dropLocked(vbs []uint16) {
	for _, vb := range vbs {
		st := f.state[vb]
		if !st.held {
			continue
		}
		f.voidLocked(vb)
		f.settleLocked(st)           // never opened to us again
		f.handoffs.Mended(f.ctx, vb) // nothing of ours left to hand over
		st.held, st.suspect = false, false
		st.closeFirst = false
		f.stats.VBuckets--
		f.stats.Fenced++
		f.wg.Go(func() {
			ctx, cancel := context.WithTimeout(f.ctx, f.opts.opTimeout)
			defer cancel()
			st.op.Lock()
			defer st.op.Unlock()
			if err := f.agent.CloseStream(ctx, vb); err != nil {
				f.log.Debug("close the stream of a lost vBucket", "vb", vb, "error", err)
			}
		})
	}
}

// heldVbuckets lists the vBuckets this member owns.
func (f *feed) heldVbuckets() []uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint16
	for vb, st := range f.state {
		if st.held {
			out = append(out, vb)
		}
	}
	return out
}

// handOverAll, at Close after the last checkpoints are saved, closes every
// stream and writes every vBucket's checkpoint with no owner: the others
// claim them at their next heartbeat. A stream that could not be closed
// keeps its owner until Close has dropped the connection and leave has
// marked this member as gone.
func (f *feed) handOverAll(ctx context.Context) error {
	vbs := f.heldVbuckets()
	cps := f.acks.Checkpoints()
	errs := parallel(ctx, vbs, func(ctx context.Context, vb uint16) error {
		ctx, cancel := context.WithTimeout(ctx, f.opts.opTimeout)
		defer cancel()
		unlock, err := f.own.lockSaves(ctx, vb)
		if err != nil {
			return err
		}
		defer unlock()
		if err := f.agent.CloseStream(ctx, vb); err != nil {
			return fmt.Errorf("close the stream of vb %d: %w", vb, err)
		}
		f.mu.Lock()
		st := f.state[vb]
		p, c := f.positionAt(vb, cps[vb]), st.claim
		f.mu.Unlock()
		err = f.own.cps.Release(ctx, f.name, vb, f.own.me, p, c)
		if errors.Is(err, errFenced) {
			return nil // not ours any more
		}
		return err
	})
	if err := joinErrs(errs, len(vbs)); err != nil {
		return fmt.Errorf("hand over vBuckets: %w", err)
	}
	return nil
}

// leave marks this member as gone, after Close dropped its connections:
// the others take what it still owns at their next heartbeat.
func (f *feed) leave(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, f.opts.opTimeout)
	defer cancel()
	return f.own.group.leave(ctx)
}
