package couchbase

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func names(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("host-%d/%d/x%d", i, 1000+i, 7*i))
	}
	return out
}

// Issue 11: the assignment of 1024 vBuckets is balanced (loads differ by
// at most one) and moves few vBuckets when a member joins or goes: within
// 30% of the least possible (the vBuckets the newcomer takes, or those the
// leaver had).
func TestAssignmentIsBalancedAndMovesLittle(t *testing.T) {
	const n = 1024
	for m := 1; m <= 8; m++ {
		members := names(m)
		a := assignment(members, n)
		load := map[string]int{}
		for _, o := range a {
			load[o]++
		}
		lo, hi := n, 0
		for _, name := range members {
			lo, hi = min(lo, load[name]), max(hi, load[name])
		}
		assert.LessOrEqual(t, hi-lo, 1, "%d members: loads %v", m, load)
		assert.Equal(t, a, assignment(members, n), "the same list, the same answer")

		// One more member joins.
		joined := assignment(names(m+1), n)
		moved := 0
		for vb := range a {
			if a[vb] != joined[vb] {
				moved++
			}
		}
		least := n / (m + 1)
		t.Logf("%d -> %d members: %d vBuckets move (least possible %d)", m, m+1, moved, least)
		assert.LessOrEqual(t, moved, least*13/10, "%d -> %d members", m, m+1)

		// The first one goes.
		if m > 1 {
			gone := assignment(members[1:], n)
			moved := 0
			for vb := range a {
				if a[vb] != gone[vb] {
					moved++
				}
			}
			t.Logf("%d -> %d members (one goes): %d vBuckets move (least possible %d)", m, m-1, moved, load[members[0]])
			assert.LessOrEqual(t, moved, load[members[0]]*13/10, "%d -> %d members", m, m-1)
		}
	}
}

// Issue 11: the members document is written by CAS with an expiry: each
// member's entry lives its TTL, and the document itself goes when no
// member has renewed it for forgetAfter TTLs.
func TestMembersDocumentExpires(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	cfg, srv := fakeCluster(t, cbtest.Options{Clock: clock})
	s := openStore(t, cfg, func(s *Store) { s.now = clock })
	ctx := ctxFor(t, 10*time.Second)
	const ttl = 2 * time.Second
	a := newGroup(s, "feed", "a", ttl, clock)
	b := newGroup(s, "feed", "b", ttl, clock)
	_, _, err := a.beat(ctx, 3, false, false)
	require.NoError(t, err)
	doc, _, err := b.beat(ctx, 5, false, false)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, doc.live(clock()))

	advance(ttl + time.Millisecond) // a stops; b renews
	doc, _, err = b.beat(ctx, 8, false, false)
	require.NoError(t, err)
	assert.Equal(t, []string{"b"}, doc.live(clock()), "a's entry expired")
	ms, err := s.Members(ctx, "feed")
	require.NoError(t, err)
	require.Len(t, ms, 2, "a is still listed, as stale")
	assert.False(t, ms[0].Live)
	assert.Equal(t, 3, ms[0].Partitions)
	assert.True(t, ms[1].Live)

	require.NoError(t, b.leave(ctx))
	ms, err = s.Members(ctx, "feed")
	require.NoError(t, err)
	assert.True(t, ms[1].Leaving)
	_, _, _, ok := srv.Doc("metadata", "_default", "_default", membersKey("feed"))
	assert.True(t, ok)
	advance(forgetAfter*ttl + time.Second)
	_, _, _, ok = srv.Doc("metadata", "_default", "_default", membersKey("feed"))
	assert.False(t, ok, "nobody renewed it: the document expired")
}

// Issue 11 (found under load): a member's claims use the members it read
// at its heartbeat. A member that joined after that reading and claimed a
// vBucket is not in it, and must not be taken for dead: both would stream
// the vBucket until the newcomer's next checkpoint write was refused.
func TestAClaimDoesNotTakeFromAMemberThatJoinedSinceItsReading(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := ctxFor(t, 10*time.Second)
	const ttl = 2 * time.Second
	cps := metaCheckpoints{s}
	start := func(context.Context) (position, error) { return position{}, nil }

	c := newOwnership(s, "feed", "c", ttl, time.Now)
	// c's heartbeats have gone through for a TTL.
	c.healthySince = time.Now().Add(-ttl)
	reading, _, err := c.group.beat(ctx, 0, false, false) // c's heartbeat: only c
	require.NoError(t, err)
	d := newOwnership(s, "feed", "d", ttl, time.Now)
	_, _, err = d.group.beat(ctx, 0, false, false) // d joins after it
	require.NoError(t, err)
	_, _, _, err = cps.Claim(ctx, "feed", 7, "d", func(string) bool { return true }, start)
	require.NoError(t, err, "d claims vb 7")

	_, _, owner, err := cps.Claim(ctx, "feed", 7, "c", c.liveness(ctx, reading, time.Now()), start)
	assert.ErrorIs(t, err, errTaken, "c took vb 7 from d, which joined after c's reading")
	assert.Equal(t, "d", owner)

	// A member that is in no reading at all (gone and forgotten) is fair
	// game.
	_, _, _, err = cps.Claim(ctx, "feed", 8, "gone", func(string) bool { return true }, start)
	require.NoError(t, err)
	_, _, owner, err = cps.Claim(ctx, "feed", 8, "c", c.liveness(ctx, reading, time.Now()), start)
	assert.NoError(t, err, "the vBucket of a member nobody lists")
	assert.Equal(t, "gone", owner)
}

// Issue 11: a member whose entry had expired at another's heartbeat, and
// that renewed it before that member's claim, is live: the claim must not
// take its vBuckets on the older reading (both would stream them until its
// next checkpoint write was refused).
func TestAClaimDoesNotTakeFromAMemberThatRenewedSinceItsReading(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := ctxFor(t, 10*time.Second)
	const ttl = 2 * time.Second
	cps := metaCheckpoints{s}
	start := func(context.Context) (position, error) { return position{}, nil }

	late := newGroup(s, "feed", "d", ttl, func() time.Time { return time.Now().Add(-2 * ttl) })
	_, _, err := late.beat(ctx, 1, false, false) // d's last heartbeat, two TTLs ago
	require.NoError(t, err)
	_, _, _, err = cps.Claim(ctx, "feed", 7, "d", func(string) bool { return true }, start)
	require.NoError(t, err, "d owns vb 7")
	c := newOwnership(s, "feed", "c", ttl, time.Now)
	// c's heartbeats have gone through for a TTL.
	c.healthySince = time.Now().Add(-ttl)
	reading, _, err := c.group.beat(ctx, 0, false, false)
	require.NoError(t, err)
	live, _ := reading.isLive("d", time.Now())
	require.False(t, live, "d's entry expired in c's reading")

	d := newGroup(s, "feed", "d", ttl, time.Now)
	_, _, err = d.beat(ctx, 1, false, false) // d renews
	require.NoError(t, err)
	_, _, owner, err := cps.Claim(ctx, "feed", 7, "c", c.liveness(ctx, reading, time.Now()), start)
	assert.ErrorIs(t, err, errTaken, "c took vb 7 from d, which renewed its entry since c's reading")
	assert.Equal(t, "d", owner)
}

// TestMembersAreJudgedByWhatWasSeenOfThemWhateverTheClocks: a member
// judges the others by their heartbeats' times where clocks agree, and by
// what it saw of them on its monotonic clock where they do not (NTP, a
// restored VM): a dead member whose time is an hour ahead expires a TTL
// after it was last seen to change; a live one whose time is an hour behind
// is live while it is seen to change.
func TestMembersAreJudgedByWhatWasSeenOfThemWhateverTheClocks(t *testing.T) {
	const ttl = time.Second
	now := time.Now()
	g := newGroup(nil, "f", "me", ttl, func() time.Time { return now })
	doc := func(entries map[string]int64) membersDoc {
		d := membersDoc{Members: map[string]memberEntry{}}
		for name, beat := range entries {
			d.Members[name] = memberEntry{BeatAt: beat, TTLMs: ttl.Milliseconds()}
		}
		return d
	}
	live := func(d membersDoc, name string) bool {
		l, _ := g.judged(d, now).isLive(name, now)
		return l
	}
	ahead, behind, inStep := now.Add(time.Hour).UnixMilli(), now.Add(-time.Hour).UnixMilli(), now.UnixMilli()

	d := doc(map[string]int64{"ahead": ahead, "behind": behind, "instep": inStep})
	assert.True(t, live(d, "ahead"), "at first sight its time stands")
	assert.False(t, live(d, "behind"), "at first sight its time stands: it may have died an hour ago")
	assert.True(t, live(d, "instep"))

	// "behind" beats (its entry changes): live, though its time is an hour old.
	d = doc(map[string]int64{"ahead": ahead, "behind": behind + 50, "instep": inStep})
	assert.True(t, live(d, "behind"), "seen to change")
	assert.True(t, live(d, "ahead"))

	// Nobody beats for a TTL, on the monotonic clock.
	require.Eventually(t, func() bool { return !live(d, "ahead") && !live(d, "behind") }, 30*time.Second, 5*time.Millisecond,
		"a TTL unchanged: ahead %v, behind %v", later.Value(func() any { return live(d, "ahead") }),
		later.Value(func() any { return live(d, "behind") }))
	assert.False(t, live(d, "instep"), "nor one in step that stopped")

	// Our own entry is ours to judge by our clock; the others' are kept
	// as they are in the document itself.
	d = doc(map[string]int64{"me": behind})
	assert.False(t, live(d, "me"))
	assert.Equal(t, behind, d.Members["me"].BeatAt)
}

// A member whose clock is behind ours by less than its TTL, seen to beat,
// is live for a TTL from then, as one far behind is: by its time it was
// live for the TTL less the skew, and taken for dead at a heartbeat a
// little late while it streamed its vBuckets.
func TestAMemberBehindByLessThanItsTTLIsLiveForATTLFromItsBeat(t *testing.T) {
	const ttl = 10 * time.Second
	for _, skew := range []time.Duration{0, 3 * time.Second, 8 * time.Second, 9500 * time.Millisecond, 10500 * time.Millisecond, time.Hour} {
		now := time.Now()
		g := newGroup(nil, "f", "me", ttl, func() time.Time { return now })
		doc := func(beat time.Time) membersDoc {
			return membersDoc{Members: map[string]memberEntry{"p": {BeatAt: beat.UnixMilli(), TTLMs: ttl.Milliseconds()}}}
		}
		g.judged(doc(now.Add(-skew-2*time.Second)), now) // first sight
		d := doc(now.Add(-skew))
		g.judged(d, now) // seen to beat
		// Its next heartbeat is late by a few seconds: still live.
		at := now.Add(3 * time.Second)
		live, _ := g.judged(d, at).isLive("p", at)
		assert.True(t, live, "clock %v behind, a heartbeat 3s late with a TTL of 10s", skew)
	}
}

// A member whose clock is an hour behind, beating: a member on the right
// clock keeps its entry in the document (it dropped it at every heartbeat,
// by its time, and never saw it change), sees it change, and judges it
// live; once it stops, its entry is dropped forgetAfter TTLs after it
// expired, as this member saw it.
func TestAMemberFarBehindIsKeptAndJudgedLive(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := ctxFor(t, 30*time.Second)
	const ttl = 500 * time.Millisecond // the document lives ten, renewed by r's heartbeats
	x := newGroup(s, "feed", "x", ttl, func() time.Time { return time.Now().Add(-time.Hour) })
	r := newGroup(s, "feed", "r", ttl, time.Now)
	_, _, err := x.beat(ctx, 1, false, false)
	require.NoError(t, err)
	d, _, err := r.beat(ctx, 1, false, false)
	require.NoError(t, err)
	require.Contains(t, d.Members, "x", "kept")
	// x's next heartbeat in another millisecond, so that its entry changes.
	for last := d.Members["x"].BeatAt; time.Now().Add(-time.Hour).UnixMilli() <= last; {
		time.Sleep(time.Millisecond)
	}
	_, _, err = x.beat(ctx, 1, false, false)
	require.NoError(t, err)
	d, _, err = r.beat(ctx, 1, false, false)
	require.NoError(t, err)
	live, ok := d.isLive("x", time.Now())
	assert.True(t, ok, "still in the document")
	assert.True(t, live, "seen to change")

	// x stops: dropped once unchanged for forgetAfter+1 TTLs (the
	// document itself, which r renews, stays).
	stopped := time.Now()
	waitFor(t, func() (bool, string) {
		d, _, err := r.beat(ctx, 1, false, false)
		if err != nil {
			return false, err.Error()
		}
		_, ok := d.Members["x"]
		return !ok, fmt.Sprintf("%+v", d.Members)
	})
	assert.GreaterOrEqual(t, time.Since(stopped), (forgetAfter+1)*ttl-100*time.Millisecond, "dropped too soon")
}

// The members document keeps at most maxMembers entries, dropping those
// whose times are the oldest (never the writer's own), however they came
// to be there.
func TestTheMembersDocumentIsBounded(t *testing.T) {
	d := membersDoc{Members: map[string]memberEntry{"me": {BeatAt: 1}}}
	for i := range maxMembers + 10 {
		d.Members[fmt.Sprintf("m%03d", i)] = memberEntry{BeatAt: int64(100 + i)}
	}
	capMembers(d, "me")
	assert.Len(t, d.Members, maxMembers)
	assert.Contains(t, d.Members, "me", "its own entry, though the oldest")
	for i := range 11 {
		assert.NotContains(t, d.Members, fmt.Sprintf("m%03d", i), "among the oldest")
	}
	assert.Contains(t, d.Members, "m011")
}
