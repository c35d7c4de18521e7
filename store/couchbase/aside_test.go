package couchbase

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// docOf is a members document of live entries at now.
func docOf(now time.Time, entries map[string]memberEntry) membersDoc {
	d := membersDoc{Members: map[string]memberEntry{}}
	for name, e := range entries {
		e.BeatAt, e.TTLMs, e.Proto = now.UnixMilli(), 10_000, membersProto
		d.Members[name] = e
	}
	return d
}

// breaker is a circuit breaker's state for a stepper: closed, open or
// half-open (probing).
type breaker struct{ state atomic.Value }

func newBreaker(state string) *breaker {
	b := &breaker{}
	b.state.Store(state)
	return b
}

func (b *breaker) set(state string) { b.state.Store(state) }

func (b *breaker) heldBack() (held, probing bool) {
	s := b.state.Load().(string)
	return s == "open", s == "half-open"
}

// A member steps aside when its sends have been held for StepAsideAfter
// while another's go out, not when every member's are held; it comes back
// to try at growing intervals, steps aside again as soon as its probe
// fails, and takes its share for good once its sends go out again.
func TestAMemberStepsAsideOnlyWhileAnotherSends(t *testing.T) {
	const after = time.Minute
	br := newBreaker("open")
	s := newStepper(after, br.heldBack, quietLog)
	t0 := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	sending := func(now time.Time) membersDoc {
		return docOf(now, map[string]memberEntry{"a": {Held: true}, "b": {}})
	}
	allHeld := func(now time.Time) membersDoc {
		return docOf(now, map[string]memberEntry{"a": {Held: true}, "b": {Held: true}})
	}

	h, aside := s.next(at(0), sending(at(0)), "a")
	assert.True(t, h)
	assert.False(t, aside, "held only now")
	br.set("half-open") // probing counts as held: nothing has gone out
	_, aside = s.next(at(after-time.Second), sending(at(after-time.Second)), "a")
	assert.False(t, aside, "held less than StepAsideAfter")
	_, aside = s.next(at(after), allHeld(at(after)), "a")
	assert.False(t, aside, "every member's sends are held: the email service is down, moving helps nobody")
	_, aside = s.next(at(after+time.Second), sending(at(after+time.Second)), "a")
	require.True(t, aside, "held a minute while b sends")
	firstUntil := s.until.Sub(at(after + time.Second))
	assert.InDelta(t, after.Seconds(), firstUntil.Seconds(), 0.11*after.Seconds(), "the first trial a StepAsideAfter later")

	// Aside until the trial; then its share back until the probe has
	// failed, or for a whole StepAsideAfter without a probe.
	trial := at(after + time.Second + firstUntil)
	_, aside = s.next(trial.Add(-time.Second), sending(trial), "a")
	assert.True(t, aside, "aside until the trial")
	_, aside = s.next(trial, sending(trial), "a")
	assert.False(t, aside, "the trial: its breaker's probe decides")
	_, aside = s.next(trial.Add(after-time.Second), sending(trial.Add(after-time.Second)), "a")
	assert.False(t, aside, "no order came to probe with: a whole StepAsideAfter")
	_, aside = s.next(trial.Add(after), sending(trial.Add(after)), "a")
	require.True(t, aside, "still held after the trial")
	second := trial.Add(after)
	assert.InDelta(t, (2 * after).Seconds(), s.until.Sub(second).Seconds(), 0.21*after.Seconds(),
		"the next trial twice as far")

	trial = s.until
	s.next(trial, sending(trial), "a")
	_, aside = s.next(trial.Add(2*time.Second), sending(trial.Add(2*time.Second)), "a")
	assert.False(t, aside, "probing")
	br.set("open") // the probe failed
	_, aside = s.next(trial.Add(4*time.Second), sending(trial.Add(4*time.Second)), "a")
	require.True(t, aside, "the probe failed: aside again at once, not a StepAsideAfter later")
	assert.InDelta(t, (4 * after).Seconds(), s.until.Sub(trial.Add(4*time.Second)).Seconds(), 0.41*after.Seconds())

	// Its sends go out (a probe got through): it keeps its share, and the
	// next outage starts from the first interval.
	trial = s.until
	br.set("half-open")
	s.next(trial, sending(trial), "a")
	br.set("closed")
	h, aside = s.next(trial.Add(2*time.Second), sending(trial.Add(2*time.Second)), "a")
	assert.False(t, h)
	assert.False(t, aside)
	br.set("open")
	later := trial.Add(time.Hour)
	s.next(later, sending(later), "a")
	_, aside = s.next(later.Add(after), sending(later.Add(after)), "a")
	require.True(t, aside)
	assert.InDelta(t, after.Seconds(), s.until.Sub(later.Add(after)).Seconds(), 0.11*after.Seconds(), "intervals start over")

	never := newStepper(-1, br.heldBack, quietLog)
	never.next(t0, sending(t0), "a")
	_, aside = never.next(t0.Add(time.Hour), sending(t0.Add(time.Hour)), "a")
	assert.False(t, aside, "a negative StepAsideAfter: never")
}

// The vBuckets are shared among the members not aside, or among all when
// every one is; a member aside is still live.
func TestTheAssignmentLeavesOutMembersAside(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	d := docOf(now, map[string]memberEntry{"a": {Held: true, Aside: true}, "b": {}, "c": {Held: true}})
	assert.Equal(t, []string{"b", "c"}, d.assignable(now))
	assert.Equal(t, []string{"a", "b", "c"}, d.live(now))
	assert.Equal(t, "b", d.sendingPeer(now, "a"), "c's sends are held")
	assert.Equal(t, "", d.sendingPeer(now, "b"), "b's only peers are held or aside")
	gone := docOf(now, map[string]memberEntry{"a": {Held: true}, "b": {Leaving: true}, "c": {}})
	gone.Members["c"] = memberEntry{BeatAt: now.Add(-time.Minute).UnixMilli(), TTLMs: 10_000}
	assert.Equal(t, "", gone.sendingPeer(now, "a"), "one left, one's heartbeat expired: neither sends")
	all := docOf(now, map[string]memberEntry{"a": {Aside: true}, "b": {Aside: true}})
	assert.Equal(t, []string{"a", "b"}, all.assignable(now))
}

// Two members on one feed, a's sends held back (its own way to the email
// service broken) and b's going out: a steps aside, b streams every
// vBucket, nothing is lost or delivered twice; a comes back to try, and
// once its sends go out again they share the vBuckets again.
func TestAMemberWhoseSendsAreHeldHandsItsVBucketsOver(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 2})
	cfg.StepAsideAfter = time.Second
	c := &consumer{seen: map[string][]string{}}
	writer := openStore(t, cfg)
	var keys []string
	putAll := func(prefix string) {
		for vb := range uint16(testVBuckets) {
			k := keyOn(srv, prefix, vb)
			keys = append(keys, k)
			put(t, writer, order.Inbound, k)
		}
	}
	aBreaker := newBreaker("closed")
	open := func(name string, held func() (bool, bool)) store.Subscription {
		s := openStore(t, cfg, func(s *Store) { s.member = name })
		sub, err := s.Subscribe(ctxFor(t, 30*time.Second), "feed", watched, store.FeedOptions{SendsHeld: held})
		require.NoError(t, err)
		t.Cleanup(func() { sub.Close(ctxFor(t, 30*time.Second)) })
		consume(t, name, sub, c)
		return sub
	}
	subA := open("a", aBreaker.heldBack)
	subB := open("b", newBreaker("closed").heldBack)
	var sa, sb FeedStats // as the last check read them, for a failure's message
	shared := func() bool {
		sa, sb = feedStats(subA), feedStats(subB)
		return sa.VBuckets > 0 && sb.VBuckets > 0 && sa.StreamsOpen == sa.VBuckets && sb.StreamsOpen == sb.VBuckets &&
			sa.VBuckets+sb.VBuckets == testVBuckets
	}
	require.Eventually(t, shared, 30*time.Second, 20*time.Millisecond, "a %+v, b %+v", &sa, &sb)
	putAll("shared-")

	aBreaker.set("open")
	// Aside for a StepAsideAfter at a time, between trials: both read in
	// one condition, not one after the other across a trial.
	var a Member
	require.Eventually(t, func() bool {
		sb = feedStats(subB)
		for _, m := range sb.Members {
			if m.Name == "a" {
				a = m
			}
		}
		return sb.StreamsOpen == testVBuckets && a.Live && a.Held && a.Aside
	}, 30*time.Second, 20*time.Millisecond,
		"b streams every vBucket while a, live and held, stands aside; a %+v (as b read it), b %+v", &a, &sb)
	putAll("aside-")

	// a comes back to try a StepAsideAfter later (its breaker would probe
	// with its share), then steps aside again.
	claimed := feedStats(subA).Claimed
	require.Eventually(t, func() bool { return feedStats(subA).Claimed > claimed }, 30*time.Second, 20*time.Millisecond,
		"a's trial: it claims vBuckets again")

	// Its sends go out again: its share for good.
	aBreaker.set("closed")
	require.Eventually(t, shared, 30*time.Second, 20*time.Millisecond, "a %+v, b %+v", &sa, &sb)
	putAll("back-")

	var missing []string
	require.Eventually(t, func() bool { missing, _ = c.report(keys); return len(missing) == 0 }, 30*time.Second, 20*time.Millisecond,
		"never delivered: %v", &missing)
	_, twice := c.report(keys)
	assert.Empty(t, twice, "delivered twice")
	assert.Empty(t, srv.StreamOverlaps("orders"), "a vBucket streamed by two members at once")
}

// While a member of a build from before the members protocol (an entry
// without proto, which knows neither held nor aside, and shares the
// vBuckets over every live member) lives beside this build's, nobody
// steps aside and the assignment leaves nobody out: a rolling upgrade, or
// a rollback of one instance, during an outage. Its entry never says held:
// every other member took it for one that sends and stepped aside, and
// the vBuckets it gave them were streamed by nobody (682 of 1,024 with two
// of this build aside, a review counted).
func TestAMemberOfAnOlderBuildKeepsEveryoneIn(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	mixedAt := func(at time.Time) membersDoc {
		d := docOf(at, map[string]memberEntry{"a": {Held: true, Aside: true}, "b": {Held: true}, "old": {}})
		old := d.Members["old"]
		old.Proto = 0
		d.Members["old"] = old
		return d
	}
	d := mixedAt(now)
	assert.True(t, d.mixed(now))
	assert.Equal(t, []string{"a", "b", "old"}, d.assignable(now), "the older build's assignment: every live member")
	o := &ownership{assignedTo: []string{"a", "b", "old"}}
	assert.Equal(t, []string{"a", "b", "old"}, o.stillAssigned([]string{"b", "old"}, d, now), "a aside is kept in")

	const after = time.Minute
	s := newStepper(after, newBreaker("open").heldBack, quietLog)
	_, aside := s.next(now, d, "b")
	assert.False(t, aside)
	_, aside = s.next(now.Add(2*after), mixedAt(now.Add(2*after)), "b")
	assert.False(t, aside, "held for long while the old member 'sends': b stays")

	// One aside before the older build came takes its share back.
	ours := func(at time.Time) membersDoc { return docOf(at, map[string]memberEntry{"a": {Held: true}, "b": {}}) }
	s = newStepper(after, newBreaker("open").heldBack, quietLog)
	s.next(now, ours(now), "a")
	_, aside = s.next(now.Add(after), ours(now.Add(after)), "a")
	require.True(t, aside)
	_, aside = s.next(now.Add(after+time.Second), ours(now.Add(after+time.Second)), "a")
	require.True(t, aside, "aside it stays")
	_, aside = s.next(now.Add(after+2*time.Second), mixedAt(now.Add(after+2*time.Second)), "a")
	assert.False(t, aside, "an older build's member came")

	gone := docOf(now, map[string]memberEntry{"a": {Held: true, Aside: true}, "b": {}})
	gone.Members["old"] = memberEntry{BeatAt: now.Add(-time.Minute).UnixMilli(), TTLMs: 10_000}
	assert.False(t, gone.mixed(now), "its entry expired: members aside are left out again")
	assert.Equal(t, []string{"b"}, gone.assignable(now))
}

// A member's heartbeat writes the whole members document back: the fields
// of other members' entries this build does not know (a newer build's)
// are kept, as this build's held and aside were dropped by an older one.
// Its own entry says the protocol it follows.
func TestAHeartbeatKeepsWhatItDoesNotKnowOfOthers(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := ctxFor(t, 10*time.Second)
	now := time.Now()
	newer := fmt.Sprintf(`{"members":{"n":{"beatAt":%d,"ttlMs":10000,"started":1,"vbuckets":0,"proto":2,"drain":{"by":"x"}}}}`, now.UnixMilli())
	_, err := s.Insert(ctx, store.Meta, membersKey("feed"), []byte(newer))
	require.NoError(t, err)
	g := newGroup(s, "feed", "me", 10*time.Second, time.Now)
	doc, _, err := g.beat(ctx, 4, true, false)
	require.NoError(t, err)
	assert.Equal(t, []string{"me", "n"}, doc.live(time.Now()))
	v, _, _, ok := srv.Doc("metadata", "_default", "_default", membersKey("feed"))
	require.True(t, ok)
	var written struct {
		Members map[string]map[string]json.RawMessage `json:"members"`
	}
	require.NoError(t, json.Unmarshal(v, &written), "%s", v)
	assert.JSONEq(t, `{"by":"x"}`, string(written.Members["n"]["drain"]), "the newer build's field is kept: %s", v)
	assert.Equal(t, "2", string(written.Members["n"]["proto"]))
	assert.Equal(t, "1", string(written.Members["me"]["proto"]), "%s", v)
	assert.Equal(t, "true", string(written.Members["me"]["held"]))
}
