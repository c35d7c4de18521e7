package couchbase

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// consumer reads a subscription and acknowledges every event at once,
// counting who saw which key.
type consumer struct {
	mu    sync.Mutex
	seen  map[string][]string // key -> the members that delivered it
	how   map[string][]string // key -> each delivery's member, vBucket, seq and CAS, for the report
	done  chan struct{}
	pause time.Duration // each event is held this long before it is acknowledged, as a send holds it
}

// consume hands sub's events to c, each acknowledged once recorded, until
// the test ends or the returned stop is called, which waits for the last
// one's acknowledgement: as the service stops taking events before it
// closes its subscription.
func consume(t *testing.T, name string, sub store.Subscription, c *consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		for {
			ev, err := sub.Next(ctx)
			if err != nil {
				return
			}
			c.mu.Lock()
			c.seen[ev.Key] = append(c.seen[ev.Key], name)
			if c.how == nil {
				c.how = map[string][]string{}
			}
			c.how[ev.Key] = append(c.how[ev.Key], fmt.Sprintf("%s@vb%d/seq%d/cas%d", name, ev.Partition, ev.Seq, ev.CAS))
			c.mu.Unlock()
			time.Sleep(c.pause)
			ev.Ack()
		}
	}()
	stop = func() { cancel(); <-exited }
	t.Cleanup(stop)
	return stop
}

func (c *consumer) report(keys []string) (missing, twice []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		switch n := len(c.seen[k]); {
		case n == 0:
			missing = append(missing, k)
		case n > 1:
			twice = append(twice, fmt.Sprintf("%s by %v", k, c.how[k]))
		}
	}
	return missing, twice
}

func feedStats(sub store.Subscription) FeedStats { return sub.(interface{ Stats() FeedStats }).Stats() }

// Issue 11: members share the vBuckets without a fixed split. A second
// member takes about half from the first, the first leaving hands the rest
// over, and no vBucket is ever streamed by both at once (the server says
// so); every change is delivered once.
func TestMembersShareTheVBucketsAndHandThemOver(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 2})
	c := &consumer{seen: map[string][]string{}}
	writer := openStore(t, cfg) // the test's own writes
	var keys []string
	putAll := func(prefix string) {
		for vb := range uint16(testVBuckets) {
			k := keyOn(srv, prefix, vb)
			keys = append(keys, k)
			put(t, writer, order.Inbound, k)
		}
	}

	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	subA, err := a.Subscribe(ctxFor(t, 30*time.Second), "feed", watched, store.FeedOptions{})
	require.NoError(t, err)
	stopA := consume(t, "a", subA, c)
	assert.Equal(t, testVBuckets, feedStats(subA).VBuckets, "alone, a member streams every vBucket")
	putAll("first-")

	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	subB := subscribe(t, b, "feed", watched, false)
	consume(t, "b", subB, c)
	putAll("joining-")
	require.Eventually(t, func() bool {
		sa, sb := feedStats(subA), feedStats(subB)
		return sa.VBuckets+sb.VBuckets == testVBuckets && sa.VBuckets > 0 && sb.VBuckets > 0 &&
			sa.StreamsOpen == sa.VBuckets && sb.StreamsOpen == sb.VBuckets
	}, 30*time.Second, 20*time.Millisecond, "a %v, b %v", later.Value(func() any { return fmt.Sprintf("%+v", feedStats(subA)) }), later.Value(func() any { return fmt.Sprintf("%+v", feedStats(subB)) }))
	sa, sb := feedStats(subA), feedStats(subB)
	t.Logf("a streams %d vBuckets, b %d; a handed %d over", sa.VBuckets, sb.VBuckets, sa.Released)
	assert.Equal(t, uint64(sb.VBuckets), sa.Released, "what b streams, a handed over")
	assert.InDelta(t, sa.VBuckets, sb.VBuckets, 1, "half each")
	assert.Len(t, sb.Members, 2)
	putAll("shared-")

	// a stops cleanly, as the service does (it takes no more events, then
	// closes): b takes the rest at its next heartbeat, not a TTL later.
	left := time.Now()
	stopA()
	require.NoError(t, subA.Close(ctxFor(t, 30*time.Second)))
	require.Eventually(t, func() bool { return feedStats(subB).StreamsOpen == testVBuckets }, 30*time.Second, 20*time.Millisecond,
		"b %v", later.Value(func() any { return fmt.Sprintf("%+v", feedStats(subB)) }))
	t.Logf("b streams every vBucket %v after a left (TTL %v)", time.Since(left).Round(time.Millisecond), cfg.MemberTTL)
	putAll("alone-")

	require.Eventually(t, func() bool { missing, _ := c.report(keys); return len(missing) == 0 }, 30*time.Second, 20*time.Millisecond,
		"never delivered: %v", later.Value(func() any { m, _ := c.report(keys); return m }))
	_, twice := c.report(keys)
	assert.Empty(t, twice, "delivered twice")
	assert.Empty(t, srv.StreamOverlaps("orders"), "a vBucket streamed by two members at once")
	assert.Equal(t, 1, srv.MaxStreamsPerVBucket("orders"))
}

// Issue 11: a member that is taken for dead (here: it stops heartbeating,
// as a paused process does) loses its vBuckets to the others, and when it
// comes back its checkpoint writes for them are refused: it drops them.
func TestAMemberTakenForDeadIsFencedOff(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	subA := subscribe(t, a, "feed", watched, false)
	fa := subA.(*feed)
	c := &consumer{seen: map[string][]string{}}
	consume(t, "a", subA, c)

	// a stops (its feed's lock is held: its heartbeats, streams and saves
	// all wait, as a paused process's would): b takes every vBucket after
	// a's TTL.
	fa.mu.Lock()
	staleClaim := fa.state[0].claim
	pausedAt := time.Now()
	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	subB := subscribe(t, b, "feed", watched, false)
	consume(t, "b", subB, c)
	require.Eventually(t, func() bool { return feedStats(subB).VBuckets == testVBuckets }, 30*time.Second, 20*time.Millisecond,
		"b %v", later.Value(func() any { return fmt.Sprintf("%+v", feedStats(subB)) }))
	t.Logf("b took every vBucket %v after a stopped heartbeating (TTL %v)", time.Since(pausedAt).Round(time.Millisecond), cfg.MemberTTL)
	owners, err := metaCheckpoints{b}.Owners(ctxFor(t, 10*time.Second), "feed", allVBuckets())
	require.NoError(t, err)
	for vb, o := range owners {
		assert.Equal(t, "b", o.Owner, "vb %d", vb)
		assert.GreaterOrEqual(t, o.Epoch, uint64(2), "vb %d: claimed from a, so a new epoch", vb)
	}

	// a's stale write is refused.
	p := position{Seq: 1}
	_, err = metaCheckpoints{a}.SaveOwned(ctxFor(t, 10*time.Second), "feed", 0, "a", p, staleClaim)
	assert.True(t, errors.Is(err, errFenced), "a's checkpoint write with its old claim: %v", err)

	// a wakes: it finds out at its next heartbeat, drops everything and
	// rebalances: the two share again, never streaming a vBucket together.
	fa.mu.Unlock()
	waitFor(t, func() (bool, string) {
		sa, sb := feedStats(subA), feedStats(subB)
		return sa.Fenced > 0 && sa.VBuckets > 0 && sa.VBuckets+sb.VBuckets == testVBuckets, fmt.Sprintf("a %+v, b %+v", sa, sb)
	})
	var keys []string
	for vb := range uint16(testVBuckets) {
		k := keyOn(srv, "after-", vb)
		keys = append(keys, k)
		put(t, b, order.Inbound, k)
	}
	require.Eventually(t, func() bool { missing, _ := c.report(keys); return len(missing) == 0 }, 30*time.Second, 20*time.Millisecond,
		"never delivered: %v", later.Value(func() any { m, _ := c.report(keys); return m }))
	_, twice := c.report(keys)
	assert.Empty(t, twice, "delivered twice")
}

// waitFor waits for cond, and fails with what it said last.
func waitFor(t *testing.T, cond func() (bool, string)) {
	t.Helper()
	waitForWithin(t, 30*time.Second, cond)
}

// waitForWithin is waitFor for as long as d.
func waitForWithin(t *testing.T, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	var last string
	if !assert.Eventually(t, func() bool { ok, s := cond(); last = s; return ok }, d, 20*time.Millisecond) {
		t.Fatalf("last seen: %s", last)
	}
}

func allVBuckets() []uint16 {
	vbs := make([]uint16, testVBuckets)
	for i := range vbs {
		vbs[i] = uint16(i)
	}
	return vbs
}

// --instance i/n: a fixed split, no members document, no owners in the
// checkpoints.
func TestStaticSplitStreamsItsShare(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 2})
	c := &consumer{seen: map[string][]string{}}
	for i := range 2 {
		cfg := cfg
		cfg.Instance, cfg.Instances = i, 2
		s := openStore(t, cfg)
		sub := subscribe(t, s, "feed", watched, false)
		st := feedStats(sub)
		assert.Equal(t, testVBuckets/2, st.VBuckets)
		assert.Empty(t, st.Member)
		consume(t, fmt.Sprint(i), sub, c)
	}
	writer := openStore(t, cfg)
	var keys []string
	for vb := range uint16(testVBuckets) {
		k := keyOn(srv, "k-", vb)
		keys = append(keys, k)
		put(t, writer, order.Inbound, k)
	}
	waitFor(t, func() (bool, string) {
		missing, _ := c.report(keys)
		return len(missing) == 0, fmt.Sprintf("never delivered: %v", missing)
	})
	c.mu.Lock()
	for vb, k := range keys {
		assert.Equal(t, []string{fmt.Sprint(vb % 2)}, c.seen[k], "vb %d goes to instance %d only", vb, vb%2)
	}
	c.mu.Unlock()
	_, err := writer.Get(ctxFor(t, 10*time.Second), store.Meta, membersKey("feed"))
	assert.ErrorIs(t, err, store.ErrNotFound, "no members document in static mode")
}

// Issue 11: a handover waits for the events in flight: the old owner hands
// a vBucket over only once what it handed out is acknowledged, and the new
// owner starts after them, so nothing is delivered twice.
func TestHandoverWaitsForEventsInFlight(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	subA := subscribe(t, a, "feed", watched, false)
	var keys []string
	for vb := range uint16(testVBuckets) {
		k := keyOn(srv, "held-", vb)
		keys = append(keys, k)
		put(t, a, order.Inbound, k)
	}
	// a reads every event and holds them all, unacknowledged.
	var held []store.Event
	ctx := ctxFor(t, 20*time.Second)
	for len(held) < len(keys) {
		ev, err := subA.Next(ctx)
		require.NoError(t, err)
		held = append(held, ev)
	}

	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	subB := subscribe(t, b, "feed", watched, false)
	c := &consumer{seen: map[string][]string{}}
	consume(t, "b", subB, c)
	// b's share is assigned to it, but a still has events of it in
	// flight: a hands nothing over meanwhile.
	waitFor(t, func() (bool, string) {
		st := feedStats(subB)
		return len(st.Members) == 2, fmt.Sprintf("b %+v", st)
	})
	// Two more of a's heartbeats: room to hand over too early.
	fa := subA.(*feed)
	lastTry := func() time.Time { fa.mu.Lock(); defer fa.mu.Unlock(); return fa.own.lastTry }
	t0 := lastTry()
	waitFor(t, func() (bool, string) {
		return lastTry().Sub(t0) > fa.own.beat, fmt.Sprintf("a's heartbeat loop last ran %v", lastTry())
	})
	assert.Equal(t, testVBuckets, feedStats(subA).VBuckets, "a handed over with events in flight")
	assert.Zero(t, feedStats(subB).VBuckets)

	for _, ev := range held {
		ev.Ack()
	}
	waitFor(t, func() (bool, string) {
		sa, sb := feedStats(subA), feedStats(subB)
		return sb.VBuckets > 0 && sa.VBuckets+sb.VBuckets == testVBuckets && sb.StreamsOpen == sb.VBuckets,
			fmt.Sprintf("a %+v, b %+v", sa, sb)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	assert.Empty(t, c.seen, "b delivered again what a had handed out and acknowledged")
	assert.Empty(t, srv.StreamOverlaps("orders"))
}

// A watched collection dropped and created again while two members share
// the vBuckets: each opens its own vBuckets' streams again on the new
// collection, and none of the other's (every member streamed every vBucket,
// and delivered every change, until it restarted).
func TestARecreatedCollectionKeepsEachMembersOwnVBuckets(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	c := &consumer{seen: map[string][]string{}}
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	subA := subscribe(t, a, "feed", watched, false)
	consume(t, "a", subA, c)
	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	subB := subscribe(t, b, "feed", watched, false)
	consume(t, "b", subB, c)
	stats := []FeedStats{{}, {}} // the last seen, for the failure message
	require.Eventually(t, func() bool {
		stats[0], stats[1] = feedStats(subA), feedStats(subB)
		sa, sb := stats[0], stats[1]
		return sa.VBuckets+sb.VBuckets == testVBuckets && sa.VBuckets > 0 && sb.VBuckets > 0 &&
			sa.StreamsOpen == sa.VBuckets && sb.StreamsOpen == sb.VBuckets
	}, 30*time.Second, 20*time.Millisecond, "a %+v, b %+v", stats)
	srv.ResetStreamOverlaps()

	require.NoError(t, srv.DropCollection("orders", "_default", "retry"))
	require.NoError(t, srv.CreateCollection("orders", "_default", "retry"))
	var keys []string
	for vb := range uint16(testVBuckets) {
		k := keyOn(srv, "after-", vb)
		keys = append(keys, k)
		put(t, a, order.Inbound, k)
	}
	missing := [][]string{nil}
	require.Eventually(t, func() bool {
		missing[0], _ = c.report(keys)
		return len(missing[0]) == 0
	}, 30*time.Second, 20*time.Millisecond, "never delivered: %v", missing)
	_, twice := c.report(keys)
	assert.Empty(t, twice, "delivered by both members")
	assert.Equal(t, 1, srv.MaxStreamsPerVBucket("orders"))
	for name, sub := range map[string]store.Subscription{"a": subA, "b": subB} {
		st := feedStats(sub)
		assert.LessOrEqual(t, st.StreamsOpen, st.VBuckets, "%s streams only its own vBuckets: %+v", name, st)
	}
}

// Issue 11: a checkpoint write that timed out, and could not be read back
// either, may still be made when its node answers again. The member's next
// write, by the CAS it had before, was then refused, and it took that for
// another member's claim: alone in its group, it dropped the vBucket
// (counted as fenced, "an instance was taken for dead"), claimed it back
// from itself and streamed it again from the late write's position,
// delivering again what it had delivered since. A document that still
// names it at its epoch holds its own late write: the next write goes on
// from it.
func TestALateCheckpointWriteOfItsOwnDoesNotFenceAMember(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	cfg.Timeout = time.Second // a checkpoint write to the hung node gives up soon
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	sub := subscribe(t, a, "feed", watched, false)
	c := &consumer{seen: map[string][]string{}}
	consume(t, "a", sub, c)

	// x is streamed from one node, its checkpoint document is on another,
	// which hangs, and the members document on the third: only x's
	// checkpoint writes are held up.
	membersNode := srv.NodeOf(srv.VBucketOf(membersKey("feed")))
	x, hung := -1, -1
	for vb := range uint16(testVBuckets) {
		cp := srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb)))
		if cp != membersNode && cp != srv.NodeOf(vb) && srv.NodeOf(vb) != membersNode {
			x, hung = int(vb), cp
			break
		}
	}
	require.NotEqual(t, -1, x, "no vBucket whose stream, checkpoint and members document are on three nodes")
	vb := uint16(x)
	// Every stream open and its first checkpoint (with its vBucket UUID)
	// saved.
	waitFor(t, func() (bool, string) {
		st := feedStats(sub)
		for vb := range uint16(testVBuckets) {
			if p, _ := savedCheckpoint(srv, "feed", vb); p.UUID == 0 {
				return false, fmt.Sprintf("vb %d has no checkpoint with a UUID; a %+v", vb, st)
			}
		}
		return st.StreamsOpen == testVBuckets, fmt.Sprintf("a %+v", st)
	})

	var keys []string
	putOnX := func(prefix string) {
		for i := range 3 {
			k := keyOn(srv, fmt.Sprintf("%s%d-", prefix, i), vb)
			keys = append(keys, k)
			put(t, a, order.Inbound, k)
		}
	}
	srv.HangNode(hung)
	t.Cleanup(func() { srv.ResumeNode(hung) })
	putOnX("during-")
	// The write of x's checkpoint timed out and was not read back: a
	// failure, though the write stays queued on the hung node.
	waitFor(t, func() (bool, string) {
		st := feedStats(sub)
		return st.CheckpointSaveFailures > 0, fmt.Sprintf("a %+v", st)
	})
	srv.ResumeNode(hung) // the late write is made now
	putOnX("after-")
	waitFor(t, func() (bool, string) {
		missing, _ := c.report(keys)
		p, _ := savedCheckpoint(srv, "feed", vb)
		high := srv.HighSeqno("orders", vb)
		return len(missing) == 0 && p.Seq == high, fmt.Sprintf("never delivered: %v; checkpoint of vb %d at %d of %d", missing, vb, p.Seq, high)
	})

	st := feedStats(sub)
	assert.Zero(t, st.Fenced, "a fenced itself off, alone in its group: %+v", st)
	assert.Equal(t, testVBuckets, st.VBuckets, "%+v", st)
	_, twice := c.report(keys)
	assert.Empty(t, twice, "delivered twice")
	owners, err := metaCheckpoints{a}.Owners(ctxFor(t, 10*time.Second), "feed", []uint16{vb})
	require.NoError(t, err)
	assert.Equal(t, ownedCheckpoint{position: owners[vb].position, Owner: "a", Epoch: 1}, owners[vb],
		"x's checkpoint is still a's first claim")
}

// Issue 11: which CAS mismatches of a checkpoint write are a fence. The
// document was written behind a's back: by a itself (a write that timed
// out and was made late), or by another member's claim.
func TestACheckpointWriteIsFencedOnlyWhenTheVBucketChangedHands(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	cps := metaCheckpoints{s}
	start := func(context.Context) (position, error) { return position{}, nil }
	notLive := func(string) bool { return false }
	tests := []struct {
		name string
		give func(t *testing.T, vb uint16, c claim) // writes behind a's back
		want error
	}{
		{"a's own late save", func(t *testing.T, vb uint16, c claim) {
			_, err := cps.SaveOwned(ctxFor(t, 10*time.Second), "feed", vb, "a", position{Seq: 5}, c)
			require.NoError(t, err)
		}, nil},
		{"a's own late handover", func(t *testing.T, vb uint16, c claim) {
			require.NoError(t, cps.Release(ctxFor(t, 10*time.Second), "feed", vb, "a", position{Seq: 5}, c))
		}, nil},
		{"claimed by b", func(t *testing.T, vb uint16, _ claim) {
			_, _, _, err := cps.Claim(ctxFor(t, 10*time.Second), "feed", vb, "b", notLive, start)
			require.NoError(t, err)
		}, errFenced},
		{"claimed by b, handed over", func(t *testing.T, vb uint16, _ claim) {
			_, c, _, err := cps.Claim(ctxFor(t, 10*time.Second), "feed", vb, "b", notLive, start)
			require.NoError(t, err)
			require.NoError(t, cps.Release(ctxFor(t, 10*time.Second), "feed", vb, "b", position{Seq: 5}, c))
		}, errFenced},
		{"claimed by b, then by a again", func(t *testing.T, vb uint16, _ claim) {
			_, _, _, err := cps.Claim(ctxFor(t, 10*time.Second), "feed", vb, "b", notLive, start)
			require.NoError(t, err)
			_, _, _, err = cps.Claim(ctxFor(t, 10*time.Second), "feed", vb, "a", notLive, start)
			require.NoError(t, err)
		}, errFenced},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vb := uint16(i)
			_, c, _, err := cps.Claim(ctxFor(t, 10*time.Second), "feed", vb, "a", notLive, start)
			require.NoError(t, err)
			tt.give(t, vb, c)
			p := position{Seq: 9}
			_, err = cps.SaveOwned(ctxFor(t, 10*time.Second), "feed", vb, "a", p, c)
			if tt.want != nil {
				assert.ErrorIs(t, err, tt.want)
				return
			}
			require.NoError(t, err)
			owners, err := cps.Owners(ctxFor(t, 10*time.Second), "feed", []uint16{vb})
			require.NoError(t, err)
			assert.Equal(t, ownedCheckpoint{position: p, Owner: "a", Epoch: c.epoch}, owners[vb], "saved over the late write")
		})
	}
}

// Issue 11: the node of the members document stops answering for longer
// than the TTL: no member can heartbeat, but none is dead, and each keeps
// streaming its vBuckets. The first member whose heartbeat went through
// again read every other entry as expired and took their vBuckets by CAS
// while their owners still streamed them, until the owners' next
// checkpoint writes were refused; and as the others came back, vBuckets
// were handed to them and back. Until its own heartbeats have gone through
// for a TTL (by then every live member has renewed its entry), a member
// takes nothing from another and keeps the assignment it had.
func TestAMembersDocumentOutageMovesNoVBucket(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	cfg.Timeout = 10 * time.Second // only the heartbeats (bounded by half the TTL) give up on the hung node
	// Slower than the writes: the streams read ahead, and events are in
	// hand when the members fence their streams.
	c := &consumer{seen: map[string][]string{}, pause: 3 * time.Millisecond}
	names := []string{"a", "b", "c"}
	var feeds []*feed
	for _, n := range names {
		s := openStore(t, cfg, func(s *Store) { s.member = n })
		sub := subscribe(t, s, "feed", watched, false)
		consume(t, n, sub, c)
		feeds = append(feeds, sub.(*feed))
	}
	all := func() []FeedStats {
		var out []FeedStats
		for _, f := range feeds {
			out = append(out, f.Stats())
		}
		return out
	}
	// Every member streams its share (they differ by one at most): under
	// load the joins' claims take a few heartbeats, and a share still
	// growing is no baseline.
	shared := func() (bool, string) {
		total := 0
		for _, st := range all() {
			if st.VBuckets < testVBuckets/len(names) || st.StreamsOpen != st.VBuckets {
				return false, fmt.Sprintf("%+v", all())
			}
			total += st.VBuckets
		}
		return total == testVBuckets, fmt.Sprintf("%+v", all())
	}
	waitFor(t, shared)
	srv.ResetStreamOverlaps()
	before := all()

	hung := srv.NodeOf(srv.VBucketOf(membersKey("feed")))
	writer := openStore(t, cfg)
	var keys []string
	putAll := func(prefix string) { // on every vBucket the hung node does not hold
		for vb := range uint16(testVBuckets) {
			if srv.NodeOf(vb) != hung {
				k := keyOn(srv, prefix, vb)
				keys = append(keys, k)
				put(t, writer, order.Inbound, k)
			}
		}
	}
	lastBeats := func() []time.Time {
		var out []time.Time
		for _, f := range feeds {
			f.mu.Lock()
			out = append(out, f.own.lastBeat)
			f.mu.Unlock()
		}
		return out
	}
	putAll("before-")
	srv.HangNode(hung)
	t.Cleanup(func() { srv.ResumeNode(hung) })
	putAll("during-")
	// Every member's entry expires, none renewed.
	waitFor(t, func() (bool, string) {
		beats := lastBeats()
		for _, b := range beats {
			if time.Since(b) <= cfg.MemberTTL {
				return false, fmt.Sprintf("last heartbeats %v", beats)
			}
		}
		return true, ""
	})
	putAll("expired-")
	resumed := time.Now()
	srv.ResumeNode(hung)
	putAll("after-")
	// Every member's heartbeats have gone through for more than a TTL
	// since, and a heartbeat after that has claimed what it would.
	waitFor(t, func() (bool, string) {
		beats := lastBeats()
		for _, b := range beats {
			if b.Sub(resumed) <= cfg.MemberTTL+2*cfg.MemberTTL/5 {
				return false, fmt.Sprintf("last heartbeats %v, resumed at %v", beats, resumed)
			}
		}
		return true, ""
	})
	putAll("later-")
	waitFor(t, shared)
	waitFor(t, func() (bool, string) {
		missing, _ := c.report(keys)
		return len(missing) == 0, fmt.Sprintf("never delivered: %v", missing)
	})

	assert.Empty(t, srv.StreamOverlaps("orders"), "a vBucket streamed by two members at once")
	_, twice := c.report(keys)
	assert.Empty(t, twice, "delivered twice")
	for i, st := range all() {
		b := before[i]
		// Each member's first heartbeat after the outage came more than a
		// TTL after its last: it fenced its streams, restarted them from
		// their checkpoints, and kept every vBucket. What the streams had
		// read ahead was dropped, not delivered, and what was in hand was
		// acknowledged before the checkpoints were saved: nothing came
		// twice (it did under load, "expired-* by [b b]", before either).
		t.Logf("%s: %d vBuckets; since the outage claimed %d, handed over %d, lost %d, reopened %d streams, rolled back %d, checkpoint saves failed %d",
			names[i], st.VBuckets, st.Claimed-b.Claimed, st.Released-b.Released, st.Fenced-b.Fenced,
			st.Reopens-b.Reopens, st.Rollbacks-b.Rollbacks, st.CheckpointSaveFailures-b.CheckpointSaveFailures)
		assert.Equal(t, b.Fenced, st.Fenced, "%s lost vBuckets to another member", names[i])
		assert.Equal(t, b.Claimed, st.Claimed, "%s claimed vBuckets", names[i])
		assert.Equal(t, b.Released, st.Released, "%s handed vBuckets over", names[i])
		assert.GreaterOrEqual(t, st.Reopens-b.Reopens, uint64(st.VBuckets), "%s restarted every stream after the fence", names[i])
	}
}

// A process paused past its TTL (a long GC, SIGSTOP) may have lost its
// vBuckets meanwhile. When it wakes, a worker may ask for the next event
// before the heartbeat loop runs: what the streams read ahead before the
// pause is not handed out, and the streams wait for the heartbeat.
func TestAProcessPausedPastItsTTLHandsOutNothingItReadAhead(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	sub := subscribe(t, a, "feed", watched, false)
	f := sub.(*feed)
	for vb := range uint16(4) {
		put(t, a, order.Inbound, keyOn(srv, "paused-", vb))
	}
	waitFor(t, func() (bool, string) {
		return len(f.events) >= 4, fmt.Sprintf("%d events read ahead", len(f.events))
	})
	f.mu.Lock()
	f.own.lastTry = f.own.lastTry.Add(-3 * cfg.MemberTTL) // the pause, as the process sees it when it wakes
	f.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Next hands out what it holds before it looks at ctx
	ev, err := f.Next(ctx)
	require.ErrorIs(t, err, context.Canceled, "handed out %s of vb %d after the pause", ev.Key, ev.Partition)

	// The next heartbeat finds every vBucket still ours (nobody claimed
	// them) and streams them again from the checkpoints.
	var keys []string
	for vb := range uint16(4) {
		keys = append(keys, keyOn(srv, "paused-", vb))
	}
	c := &consumer{seen: map[string][]string{}}
	consume(t, "a", sub, c)
	waitFor(t, func() (bool, string) {
		missing, _ := c.report(keys)
		return len(missing) == 0, fmt.Sprintf("never delivered: %v", missing)
	})
	_, twice := c.report(keys)
	assert.Empty(t, twice)
}

// A handover that gives up waiting for its events (releaseWait) leaves
// those it had read ahead and not handed out to the new owner: they are
// not handed out here as well once the vBucket is the other member's.
func TestAHandoverThatGivesUpLeavesWhatItReadAheadToTheNewOwner(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	a := openStore(t, cfg, func(s *Store) { s.member = "a"; s.feedOpts.releaseWait = 100 * time.Millisecond })
	subA := subscribe(t, a, "feed", watched, false)
	fa := subA.(*feed)
	var keys []string
	for vb := range uint16(testVBuckets) {
		k := keyOn(srv, "ahead-", vb)
		keys = append(keys, k)
		put(t, a, order.Inbound, k)
	}
	waitFor(t, func() (bool, string) {
		return len(fa.events) >= testVBuckets, fmt.Sprintf("%d events read ahead", len(fa.events))
	})
	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	subB := subscribe(t, b, "feed", watched, false)
	c := &consumer{seen: map[string][]string{}}
	consume(t, "b", subB, c)
	waitFor(t, func() (bool, string) {
		sa, sb := feedStats(subA), feedStats(subB)
		return sb.VBuckets > 0 && sa.VBuckets+sb.VBuckets == testVBuckets && sa.Released == uint64(sb.VBuckets),
			fmt.Sprintf("a %+v, b %+v", sa, sb)
	})
	consume(t, "a", subA, c) // a's worker comes back only now
	waitFor(t, func() (bool, string) {
		missing, _ := c.report(keys)
		return len(missing) == 0, fmt.Sprintf("never delivered: %v", missing)
	})
	_, twice := c.report(keys)
	assert.Empty(t, twice, "delivered by both members")
}

// Checkpoint writes to a node that hangs hold up only the vBuckets whose
// checkpoints it holds. A fence (a heartbeat came late) while the saver
// waits on that node confirms the other vBuckets at once and streams them
// again (it waited for the saver's whole batch, up to the write timeout,
// and the member fenced itself again at each heartbeat meanwhile); the
// heartbeats after it check only the vBuckets it could not confirm, and
// leave the streams it restarted alone.
func TestAHungCheckpointNodeHoldsUpOnlyItsVBuckets(t *testing.T) {
	// Enough vBuckets that a third of their checkpoints, on the hung node,
	// are more than a bound of writes at once would let through (32: at
	// 256 vBuckets, 31 of 140 restarted in 30s).
	const vbuckets = 256
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3, VBuckets: vbuckets})
	cfg.Timeout = 10 * time.Minute // nor does the client give up on it
	a := openStore(t, cfg, func(s *Store) {
		s.member = "a"
		s.feedOpts.opTimeout = 10 * time.Minute // a write to the hung node waits until it resumes, past every wait below
		// Stream requests to the hung node are not sent again while it
		// hangs: the reopens counted are the fence's alone, however slow
		// the machine.
		s.feedOpts.openTimeout = 10 * time.Minute
	})
	sub := subscribe(t, a, "feed", watched, false)
	f := sub.(*feed)
	c := &consumer{seen: map[string][]string{}}
	consume(t, "a", sub, c)

	// A node that does not hold the members document, and vBuckets whose
	// data is elsewhere and whose checkpoint documents it holds.
	membersNode := srv.NodeOf(srv.VBucketOf(membersKey("feed")))
	stuck := map[int][]uint16{}
	for vb := range uint16(vbuckets) {
		if n := srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))); n != membersNode && srv.NodeOf(vb) != n {
			stuck[n] = append(stuck[n], vb)
		}
	}
	hung := -1
	for n, vbs := range stuck {
		if hung < 0 || len(vbs) > len(stuck[hung]) {
			hung = n
		}
	}
	require.GreaterOrEqual(t, hung, 0, "no node holds checkpoints of vBuckets it does not hold")
	// A fence can confirm only the vBuckets whose checkpoints are on the
	// other nodes, and streams again those whose data is too.
	confirmable, streamable := 0, 0
	for vb := range uint16(vbuckets) {
		if srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))) != hung {
			confirmable++
			if srv.NodeOf(vb) != hung {
				streamable++
			}
		}
	}
	unsure := len(stuck[hung])
	waiting := func() (n int) { // the saver's writes to the hung node under way
		for _, vb := range stuck[hung] {
			if f.own.saves[vb].TryAcquire(1) {
				f.own.saves[vb].Release(1)
			} else {
				n++
			}
		}
		return n
	}
	put(t, a, order.Inbound, "warm") // the collection's ID, asked of the first node, is known before it hangs
	waitStreaming(t, sub, vbuckets)
	srv.HangNode(hung)
	t.Cleanup(func() { srv.ResumeNode(hung) })
	var keys []string
	for _, vb := range stuck[hung] {
		k := keyOn(srv, "stuck-", vb)
		keys = append(keys, k)
		put(t, a, order.Inbound, k)
	}
	// The saver has taken the writes of those vBuckets, and waits.
	waitForWithin(t, 2*time.Minute, func() (bool, string) { // both cores may be busy, under -race
		n := waiting()
		return n > 0, fmt.Sprintf("%d of %d checkpoint writes under way", n, unsure)
	})

	before := feedStats(sub)
	f.mu.Lock()
	f.own.lastTry = f.own.lastTry.Add(-3 * cfg.MemberTTL) // a pause, as the heartbeat loop sees it
	f.mu.Unlock()
	waitForWithin(t, 2*time.Minute, func() (bool, string) { // both cores may be busy, under -race
		st := feedStats(sub)
		return st.Reopens-before.Reopens >= uint64(confirmable) && st.StreamsOpen == streamable,
			fmt.Sprintf("restarted %d of the %d vBuckets it can confirm, %d streams open of %d: %+v",
				st.Reopens-before.Reopens, confirmable, st.StreamsOpen, streamable, st)
	})
	fenced := feedStats(sub)
	assert.Positive(t, waiting(), "the saver's writes to the hung node are still waiting")
	// Two heartbeats later, the streams restarted are left alone.
	f.mu.Lock()
	since := f.own.lastTry
	f.mu.Unlock()
	waitForWithin(t, 2*time.Minute, func() (bool, string) { // both cores may be busy, under -race
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.own.lastTry.Sub(since) >= 2*f.own.beat, fmt.Sprintf("heartbeat loop last ran at %v", f.own.lastTry)
	})
	assert.Equal(t, fenced.Reopens, feedStats(sub).Reopens, "streams restarted again while the hung node's vBuckets are in doubt")

	srv.ResumeNode(hung)
	waitForWithin(t, 2*time.Minute, func() (bool, string) { // both cores may be busy, under -race
		st := feedStats(sub)
		return st.StreamsOpen == vbuckets && st.VBuckets == vbuckets, fmt.Sprintf("%+v", st)
	})
	waitForWithin(t, 2*time.Minute, func() (bool, string) { // both cores may be busy, under -race
		missing, _ := c.report(keys)
		return len(missing) == 0, fmt.Sprintf("never delivered: %v", missing)
	})
	assert.Equal(t, before.Fenced, feedStats(sub).Fenced, "nobody else claimed anything")
}

// An instance that starts while the members document is out of reach
// joins once it is back, and may heartbeat before the members that were
// there all along have renewed: their entries, expired together, still
// stream. It takes over from no one until it has heartbeat for a TTL (a
// lone crashed member's entry, one expired, it takes over at once: the
// test below).
func TestAMemberJoiningAfterAnOutageTakesOverFromNoOneAtOnce(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	ctx := ctxFor(t, 30*time.Second)
	seed := openStore(t, cfg)
	// x and y own the vBuckets; their entries expired together (their
	// heartbeats failed with the document out of reach).
	for i, name := range []string{"x", "y"} {
		g := newGroup(seed, "feed", name, cfg.MemberTTL, func() time.Time { return time.Now().Add(-3 * cfg.MemberTTL) })
		_, _, err := g.beat(ctx, testVBuckets/2, false, false)
		require.NoError(t, err)
		for vb := uint16(i); vb < testVBuckets; vb += 2 {
			_, _, _, err := metaCheckpoints{seed}.Claim(ctx, "feed", vb, name, func(string) bool { return false },
				func(context.Context) (position, error) { return position{}, nil })
			require.NoError(t, err)
		}
	}
	c := openStore(t, cfg, func(s *Store) { s.member = "c" })
	joined := time.Now()
	sub := subscribe(t, c, "feed", watched, false)
	assert.Zero(t, feedStats(sub).VBuckets, "c took vBuckets over from members whose entries expired together")
	waitFor(t, func() (bool, string) {
		st := feedStats(sub)
		return st.VBuckets == testVBuckets, fmt.Sprintf("%+v", st)
	})
	assert.GreaterOrEqual(t, time.Since(joined), cfg.MemberTTL, "c took over before it had heartbeat for a TTL")
}

// A claim whose write was made though its answer, and the read back, were
// lost (a node hanging in between) leaves the checkpoint naming a member
// that does not stream the vBucket. Once the vBucket is assigned to another
// member, which finds it taken, the first hands it on.
func TestAClaimMadeThoughItSeemedToFailIsHandedOn(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	owners := assignment([]string{"b", "c"}, testVBuckets)
	x := uint16(slices.Index(owners, "c"))
	var lose atomic.Bool // b's claims of x are made, and seem to fail
	lose.Store(true)
	b := openStore(t, cfg, func(s *Store) {
		s.member = "b"
		s.claimFault = func(vb uint16) error {
			if vb == x && lose.Load() {
				return fmt.Errorf("claim vb %d: the answer was lost: %w", vb, store.ErrUnavailable)
			}
			return nil
		}
	})
	subB := subscribe(t, b, "feed", watched, false)
	require.Equal(t, testVBuckets-1, feedStats(subB).VBuckets, "b streams every vBucket but x")
	owner := func() string {
		v, _, _, _ := srv.Doc("metadata", "_default", "_default", checkpointKey("feed", x))
		var cp ownedCheckpoint
		_ = json.Unmarshal(v, &cp)
		return cp.Owner
	}
	require.Equal(t, "b", owner(), "b's claim of x was made")

	c := openStore(t, cfg, func(s *Store) { s.member = "c" })
	subC := subscribe(t, c, "feed", watched, false)
	lose.Store(false)
	fc := subC.(*feed)
	waitFor(t, func() (bool, string) {
		fc.mu.Lock()
		held := fc.state[x].held
		fc.mu.Unlock()
		return held, fmt.Sprintf("x (vb %d) is %q's; b %+v, c %+v", x, owner(), feedStats(subB), feedStats(subC))
	})
	waitFor(t, func() (bool, string) {
		sb, sc := feedStats(subB), feedStats(subC)
		return sb.VBuckets+sc.VBuckets == testVBuckets && sb.StreamsOpen == sb.VBuckets && sc.StreamsOpen == sc.VBuckets,
			fmt.Sprintf("b %+v, c %+v", sb, sc)
	})
}

// A lone instance restarted after a crash takes the vBuckets over from the
// one that crashed at its first heartbeat once that one's entry has
// expired: a member whose own heartbeats never failed trusts an expired
// entry (the members document was in reach all along), and only one whose
// heartbeats failed waits a TTL of its own.
func TestARestartAfterACrashTakesOverAtItsFirstHeartbeat(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	subA := subscribe(t, a, "feed", watched, false)
	require.Equal(t, testVBuckets, feedStats(subA).VBuckets)
	fa := subA.(*feed)
	fa.mu.Lock() // a crashes: no heartbeat, no handover
	t.Cleanup(fa.mu.Unlock)

	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	g := newGroup(b, "feed", "watch", cfg.MemberTTL, time.Now)
	var doc membersDoc
	var err error
	expired := func() bool {
		doc, _, err = g.read(ctxFor(t, 10*time.Second))
		live, ok := doc.isLive("a", time.Now())
		return err == nil && ok && !live
	}
	if !assert.Eventually(t, expired, time.Minute, 20*time.Millisecond) {
		t.Fatalf("a's entry never expired: %+v, %v", doc, err)
	}
	subB := subscribe(t, b, "feed", watched, false)
	assert.Equal(t, testVBuckets, feedStats(subB).VBuckets, "b took every vBucket over when it joined: %+v", feedStats(subB))
}

// A member whose clock was an hour ahead (NTP about to step it back, a
// restored VM) dies: its entry says it is live for another hour. The
// others see it unchanged for a TTL on their own monotonic clocks, and
// take its vBuckets over then, not an hour later.
func TestADeadMemberWhoseClockWasAheadIsTakenOverAfterItsTTL(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	ctx := ctxFor(t, 30*time.Second)
	seed := openStore(t, cfg)
	g := newGroup(seed, "feed", "x", cfg.MemberTTL, func() time.Time { return time.Now().Add(time.Hour) })
	_, _, err := g.beat(ctx, testVBuckets, false, false)
	require.NoError(t, err)
	for vb := range uint16(testVBuckets) {
		_, _, _, err := metaCheckpoints{seed}.Claim(ctx, "feed", vb, "x", func(string) bool { return false },
			func(context.Context) (position, error) { return position{}, nil })
		require.NoError(t, err)
	}
	c := openStore(t, cfg, func(s *Store) { s.member = "c" })
	joined := time.Now()
	sub := subscribe(t, c, "feed", watched, false)
	waitFor(t, func() (bool, string) {
		st := feedStats(sub)
		return st.VBuckets == testVBuckets, fmt.Sprintf("%+v", st)
	})
	t.Logf("c took every vBucket %v after it joined (TTL %v)", time.Since(joined).Round(time.Millisecond), cfg.MemberTTL)
	assert.GreaterOrEqual(t, time.Since(joined), cfg.MemberTTL, "x's entry is live at first sight, and for a TTL")

	// The console asks the service's own store, which judges x as its
	// heartbeats do; a process that streams nothing (the CLI) has seen
	// nothing of x, and x's time stands.
	liveIn := func(s *Store) bool {
		ms, err := s.Members(ctx, "feed")
		require.NoError(t, err)
		for _, m := range ms {
			if m.Name == "x" {
				return m.Live
			}
		}
		t.Fatalf("x is not among the members: %+v", ms)
		return false
	}
	assert.False(t, liveIn(c), "c judges x dead, as its heartbeats did")
	assert.True(t, liveIn(seed), "by its time, x is live for an hour")
	require.NoError(t, sub.Close(ctx))
	assert.True(t, liveIn(c), "c, no longer streaming, judges by the times")
}

// A member measures its own heartbeats (whether it came back late, since
// when it is healthy) on this process's clock readings, which are
// monotonic, not on the times in the members document: a wall clock
// stepped back an hour held a member that had faltered untrusted, taking
// over from no one, for that hour. (A test cannot step the wall clock
// alone; it pins the readings as monotonic ones.)
func TestAMembersOwnHeartbeatTimesAreMonotonicReadings(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	c := openStore(t, cfg, func(s *Store) { s.member = "c" })
	sub := subscribe(t, c, "feed", watched, false)
	f := sub.(*feed)
	f.mu.Lock()
	last := f.own.lastBeat
	f.mu.Unlock()
	require.False(t, last.IsZero())
	assert.NotEqual(t, last.Round(0), last, "lastBeat carries a monotonic reading: %v", last)
	// healthySince is the heartbeat loop's own, written again only by a
	// heartbeat that fails or comes late.
	since := f.own.healthySince
	require.False(t, since.IsZero())
	assert.NotEqual(t, since.Round(0), since, "healthySince carries a monotonic reading: %v", since)
}

// A feed closed with events queued, read from the streams but not handed
// out, hands none of them out after: Close has saved the checkpoints and
// handed the vBuckets over, so an acknowledgement would come too late, and
// their next reader has them again. Next handed them out, one member
// delivering what the next one delivered again.
func TestAClosedFeedHandsOutNothingQueued(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg, func(s *Store) { s.member = "a" })
	sub := subscribe(t, s, "feed", watched, false)
	f := sub.(*feed)
	for vb := range uint16(testVBuckets) {
		put(t, s, order.Inbound, keyOn(srv, "queued-", vb))
	}
	waitFor(t, func() (bool, string) { n := len(f.events); return n >= 2, fmt.Sprintf("%d queued", n) })
	require.NoError(t, sub.Close(ctxFor(t, 30*time.Second)))
	ev, err := sub.Next(ctxFor(t, 10*time.Second))
	assert.ErrorIs(t, err, store.ErrClosed, "handed out %s after Close", ev.Key)
}

// TestAVBucketHandedOverBeforeItsStreamIsAnsweredIsNotWaitedFor: a member
// starting while a node is slow to answer its first stream requests, and
// handing some of those vBuckets to a member that joins meanwhile, does
// not wait for answers that will never come to it: its Subscribe returns
// (the service's start has no deadline: it would hang while its heartbeats
// kept its share from the others).
func TestAVBucketHandedOverBeforeItsStreamIsAnsweredIsNotWaitedFor(t *testing.T) {
	t.Parallel()
	cfg, srv := fakeCluster(t, cbtest.Options{})
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	for vb := range uint16(testVBuckets) {
		srv.IgnoreStreamRequests("orders", vb, 1)
	}
	type result struct {
		sub store.Subscription
		err error
	}
	done := make(chan result, 1)
	go func() {
		// A bound of the test's own: the service's has none.
		sub, err := a.Subscribe(ctxFor(t, time.Minute), "feed", watched, store.FeedOptions{})
		done <- result{sub, err}
	}()
	waitFor(t, func() (bool, string) {
		m, err := a.Members(context.Background(), "feed")
		return len(m) == 1, fmt.Sprintf("members %v, %v", m, err)
	})
	subB := subscribe(t, b, "feed", watched, false)
	r := <-done
	require.NoError(t, r.err, "a's Subscribe waited for the streams it had handed over")
	t.Cleanup(func() { r.sub.Close(context.Background()) })
	waitFor(t, func() (bool, string) {
		sa, sb := feedStats(r.sub), feedStats(subB)
		return sa.VBuckets+sb.VBuckets == testVBuckets && sa.StreamsOpen+sb.StreamsOpen == testVBuckets,
			fmt.Sprintf("a %+v, b %+v", sa, sb)
	})
}

// TestAVBucketLostWhileHandedOverIsCountedOutOnce: a save that finds a
// vBucket another member's while its handover is under way counts it out,
// and the handover's refused release must not again: the owned count (the
// metric, the members document) would stay one short.
func TestAVBucketLostWhileHandedOverIsCountedOutOnce(t *testing.T) {
	t.Parallel()
	cfg, _ := fakeCluster(t, cbtest.Options{})
	a := openStore(t, cfg, func(s *Store) { s.member = "a" })
	sub := subscribe(t, a, "feed", watched, false)
	f := sub.(*feed)
	require.Equal(t, testVBuckets, feedStats(sub).VBuckets)
	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	_, _, _, err := metaCheckpoints{b}.Claim(ctxFor(t, 10*time.Second), "feed", 0, "b", func(string) bool { return false }, nil)
	require.NoError(t, err)
	// a's heartbeat has started handing vb 0 over when a save finds it lost.
	f.mu.Lock()
	f.state[0].releasing = true
	f.lostLocked([]uint16{0}, "test")
	f.mu.Unlock()
	f.release(0)
	s := feedStats(sub)
	assert.Equal(t, len(f.heldVbuckets()), s.VBuckets, "vBuckets owned: %+v", s)
	assert.EqualValues(t, 1, s.Fenced, "lost once: %+v", s)
}

// A handover made though it seemed to fail (its answer and the read back
// lost) while another member claimed the vBucket: assigned back to the
// member that handed it over before it knew, it is streamed again only
// once a checkpoint write by CAS finds it its own. Here the other member's
// claim stands: the write is refused, and the vBucket is claimed anew,
// never streamed on this member's memory of a claim that ended.
func TestAHandoverMadeThoughItSeemedToFailIsClaimedAgainBeforeItIsStreamed(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	const x = 3
	var claimed atomic.Uint64            // the other member's epoch, once it claimed x
	var released, reclaimed atomic.Int64 // x's stream requests when a handed it over, and when a claimed it again
	reclaimed.Store(-1)
	var b *Store
	a := openStore(t, cfg, func(s *Store) {
		s.member = "a"
		s.claimFault = func(vb uint16) error {
			if vb == x && claimed.Load() != 0 {
				reclaimed.CompareAndSwap(-1, int64(len(srv.StreamRequests("orders", x))))
			}
			return nil
		}
		s.releaseFault = func(vb uint16) error {
			if vb != x || claimed.Load() != 0 {
				return nil
			}
			_, c, _, err := metaCheckpoints{b}.Claim(ctxFor(t, 10*time.Second), "feed", x, "b", func(string) bool { return false }, nil)
			if err != nil {
				return fmt.Errorf("b's claim: %w", err)
			}
			claimed.Store(c.epoch)
			return fmt.Errorf("hand vb %d over: the answer was lost: %w", vb, store.ErrUnavailable)
		}
	})
	b = openStore(t, cfg, func(s *Store) { s.member = "b" })
	sub := subscribe(t, a, "feed", watched, false)
	f := sub.(*feed)
	require.Equal(t, testVBuckets, feedStats(sub).VBuckets)

	f.mu.Lock()
	f.state[x].releasing = true // as a heartbeat that found x another's
	f.mu.Unlock()
	f.release(x)
	require.NotZero(t, claimed.Load(), "b claimed x while a handed it over")
	released.Store(int64(len(srv.StreamRequests("orders", x))))

	// a is alone in the members document: x is a's again at its next
	// heartbeat, and b, which never heartbeat, is not live.
	doc := func() ownedCheckpoint {
		v, _, _, _ := srv.Doc("metadata", "_default", "_default", checkpointKey("feed", x))
		var cp ownedCheckpoint
		_ = json.Unmarshal(v, &cp)
		return cp
	}
	// The claim writes the document, then calls claimFault: both seen.
	waitFor(t, func() (bool, string) {
		cp := doc()
		return cp.Owner == "a" && cp.Epoch > claimed.Load() && reclaimed.Load() != -1,
			fmt.Sprintf("x's checkpoint %+v (b claimed epoch %d; a's claim seen %v); a %+v", cp, claimed.Load(), reclaimed.Load() != -1, feedStats(sub))
	})
	assert.EqualValues(t, 1, feedStats(sub).Fenced, "a's write for its old claim was refused: %+v", feedStats(sub))
	assert.Equal(t, released.Load(), reclaimed.Load(), "x streamed to a again before a claimed it: %d stream requests at the handover, %d at the claim",
		released.Load(), reclaimed.Load())
}

// A handover whose write failed, not made, leaves the vBucket this
// member's, unsure: the next heartbeat's checkpoint write finds it so, and
// as it is assigned to another member it is handed over again, not
// streamed again in between (which read events only to drop them).
func TestAFailedHandoverIsHandedOverAgainNotStreamedAgain(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	owners := assignment([]string{"a", "b"}, testVBuckets)
	x := uint16(slices.Index(owners, "b"))
	var fail atomic.Int32
	fail.Store(1)
	a := openStore(t, cfg, func(s *Store) {
		s.member = "a"
		s.releaseFail = func(vb uint16) error {
			if vb == x && fail.Add(-1) >= 0 {
				return fmt.Errorf("hand vb %d over: %w", vb, store.ErrUnavailable)
			}
			return nil
		}
	})
	subA := subscribe(t, a, "feed", watched, false)
	b := openStore(t, cfg, func(s *Store) { s.member = "b" })
	subB := subscribe(t, b, "feed", watched, false)
	fb := subB.(*feed)
	waitFor(t, func() (bool, string) {
		fb.mu.Lock()
		held := fb.state[x].held
		fb.mu.Unlock()
		sa, sb := feedStats(subA), feedStats(subB)
		return held && sa.VBuckets+sb.VBuckets == testVBuckets, fmt.Sprintf("b holds x (vb %d): %v; a %+v, b %+v", x, held, sa, sb)
	})
	require.Less(t, fail.Load(), int32(0), "a's first handover of x failed")
	assert.Zero(t, feedStats(subA).Reopens, "x streamed again by a while assigned to b")
}

// TestACloseDuringAHandoverKeepsToItsTime: a member handing vBuckets over
// to one that joined, whose checkpoint documents are on a hung node, is
// closed: the handover's writes, which wait for the node (a client
// timeout of ten minutes), end with Close's context; Close waited for
// them, past its context.
func TestACloseDuringAHandoverKeepsToItsTime(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	slow := cfg
	slow.Timeout = 10 * time.Minute // nor does the client give up on it
	a := openStore(t, slow, func(s *Store) {
		s.member = "a"
		s.feedOpts.opTimeout = 10 * time.Minute
	})
	subA := subscribe(t, a, "feed", watched, false)
	f := subA.(*feed)
	consume(t, "a", subA, &consumer{seen: map[string][]string{}})
	waitFor(t, func() (bool, string) {
		st := feedStats(subA)
		return st.StreamsOpen == testVBuckets, fmt.Sprintf("a %+v", st)
	})
	other := openStore(t, cfg)
	membersNode := srv.NodeOf(srv.VBucketOf(membersKey("feed")))
	hung := (membersNode + 1) % srv.Nodes()
	srv.HangNode(hung)
	t.Cleanup(func() { srv.ResumeNode(hung) })
	// b joins (its heartbeat, on a node that answers): a hands half over.
	b := newGroup(other, "feed", "b", cfg.MemberTTL, time.Now)
	_, _, err := b.beat(ctxFor(t, 30*time.Second), 0, false, false)
	require.NoError(t, err)
	// releasing counts the handovers under way that wait for the hung
	// node: the vBucket's stream or its checkpoint document is there.
	releasing := func() (n int) {
		f.mu.Lock()
		defer f.mu.Unlock()
		for vb, st := range f.state {
			if st.releasing && (srv.NodeOf(vb) == hung || srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))) == hung) {
				n++
			}
		}
		return n
	}
	waitForWithin(t, 2*time.Minute, func() (bool, string) { // both cores may be busy, under -race
		n := releasing()
		return n > 0, fmt.Sprintf("%d handovers wait for the hung node; a %+v", n, feedStats(subA))
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- subA.Close(ctx) }()
	select {
	case err := <-closed:
		assert.Error(t, err, "what could not be handed over is said")
	case <-time.After(2 * time.Minute):
		t.Fatalf("Close with a second to go still waits 2 minutes later; %d vBuckets being handed over", releasing())
	}
}

// A members-document node that answers slowly (each request of the
// metadata bucket 22% of the TTL: a heartbeat's read and write take 44% of
// it, back to back) does not
// make every heartbeat look away: the TTL counts from our entry's stamp,
// before which the others cannot expire it. Counted from when each
// heartbeat set out, every one fenced, reopening every stream and saying
// "heartbeat came late".
func TestASlowMembersNodeDoesNotFenceEveryHeartbeat(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	cfg.MemberTTL = 5 * time.Second
	s, logs := openLogged(t, cfg)
	sub := subscribe(t, s, "feed", watched, false)
	waitStreaming(t, sub, testVBuckets)
	beatAt := func() int64 {
		d, err := s.Get(context.Background(), store.Meta, membersKey("feed"))
		if err != nil {
			t.Logf("read the members: %v", err)
			return 0
		}
		var doc membersDoc
		if err := json.Unmarshal(d.Value, &doc); err != nil {
			t.Logf("read the members: %v", err)
			return 0
		}
		e, ok := doc.Members[s.member]
		if !ok {
			t.Logf("%s not among the members: %s", s.member, d.Value)
		}
		return e.BeatAt
	}
	reopens := stats(sub).Reopens
	meta := cfg.withDefaults().MetadataBucket
	srv.SlowBucket(meta, cfg.MemberTTL*22/100)
	t.Cleanup(func() { srv.SlowBucket(meta, 0) })
	slowFrom := time.Now().UnixMilli()
	var last atomic.Int64
	require.Eventually(t, func() bool { last.Store(beatAt()); return last.Load() >= slowFrom+3*cfg.MemberTTL.Milliseconds()/2 },
		2*time.Minute, 100*time.Millisecond, "no three heartbeats through the slow node: last stamped %v ms after it slowed",
		later.Value(func() any { return last.Load() - slowFrom }))
	assert.Empty(t, logs.Lines("heartbeat came late"), "no heartbeat taken for away")
	assert.Equal(t, reopens, stats(sub).Reopens, "no stream reopened")
}

// A member joins while a node that keeps checkpoint documents hangs: the
// vBuckets that move to it and whose checkpoints are on that node (their
// data on nodes that answer) stay streamed by the member handing over
// until their checkpoints can be written. The handover closed their
// streams first and then could not write: streamed by no one, since the
// new member cannot claim them without their checkpoints either.
func TestAHandoverWhoseCheckpointCannotBeWrittenKeepsStreaming(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{Nodes: 3})
	cfg.Timeout = time.Second
	a, logs := openLogged(t, cfg)
	sub := subscribe(t, a, "feed", watched, false)
	waitStreaming(t, sub, testVBuckets)
	hung := (srv.NodeOf(srv.VBucketOf(membersKey("feed"))) + 1) % 3 // not the members document's
	owners := assignment([]string{a.member, "z"}, testVBuckets)
	var kept []uint16
	released := 0 // those that can be: neither their checkpoint nor their data on the hung node
	for vb := range uint16(testVBuckets) {
		if owners[vb] != "z" || srv.NodeOf(vb) == hung {
			continue
		}
		if srv.NodeOf(srv.VBucketOf(checkpointKey("feed", vb))) == hung {
			kept = append(kept, vb)
		} else {
			released++
		}
	}
	require.NotEmpty(t, kept, "no vBucket moving to z keeps its checkpoint on node %d", hung)

	z := newGroup(openStore(t, cfg), "feed", "z", cfg.MemberTTL, time.Now) // a member that never claims
	srv.HangNode(hung)
	t.Cleanup(func() { srv.ResumeNode(hung) })
	ctx := ctxFor(t, 3*time.Minute)
	go func() {
		for ctx.Err() == nil {
			bctx, cancel := context.WithTimeout(ctx, time.Second)
			z.beat(bctx, 0, false, false)
			cancel()
			time.Sleep(cfg.MemberTTL / 5)
		}
	}()
	waitForWithin(t, 2*time.Minute, func() (bool, string) {
		n := stats(sub).Released
		tried := len(logs.Lines("write a checkpoint to hand its vBucket over"))
		return n >= uint64(released) && tried > 0, fmt.Sprintf("%d of %d vBuckets handed over; the others tried: %v", n, released, tried > 0)
	})
	for _, vb := range kept {
		assert.True(t, heldOpen(sub, vb), "vb %d, whose checkpoint the hung node keeps, is streamed", vb)
	}
	// Tried again at every heartbeat, said once: 163 warnings in 20s when
	// each try of each vBucket warned.
	waitForWithin(t, 2*time.Minute, func() (bool, string) {
		n := len(logs.Lines("level=DEBUG", "hand its vBucket over"))
		return n >= 3*len(kept), fmt.Sprintf("%d tries at debug level", n)
	})
	// Each kind of failure said once: the handovers' (the checkpoint
	// writes of the vBuckets above, the closes of the streams of those
	// whose data the node keeps), and the checkpoint saves of the vBuckets
	// kept, which a handover's try must not end and start again.
	assert.Len(t, logs.Lines("level=WARN", "hand"), 1, "one warning for the handovers: %v", logs.Lines("level=WARN"))
	assert.LessOrEqual(t, len(logs.Lines("level=WARN", "save a checkpoint")), 1, "one warning at most for the saves: %v", logs.Lines("level=WARN"))
}

// A handover whose write failed, its outcome unknown, and whose vBucket is
// then assigned back (the member it was to go to left): the recheck finds
// it ours and streams it, and the failure is over, said so, not kept open
// for the next one to be taken for its reminder.
func TestAHandoverThatFailedEndsWhenItsVBucketStaysOurs(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	owners := assignment([]string{"a", "z"}, testVBuckets)
	x := uint16(slices.Index(owners, "z"))
	var tried atomic.Int32
	a := openStore(t, cfg, func(s *Store) {
		s.member = "a"
		s.releaseFail = func(vb uint16) error { // every handover of x fails
			if vb == x {
				tried.Add(1)
				return fmt.Errorf("hand vb %d over: %w", vb, store.ErrUnavailable)
			}
			return nil
		}
	})
	sub := subscribe(t, a, "feed", watched, false)
	waitStreaming(t, sub, testVBuckets)
	f := sub.(*feed)
	z := newGroup(openStore(t, cfg), "feed", "z", cfg.MemberTTL, time.Now) // a member that never claims, and stops
	_, _, err := z.beat(ctxFor(t, 30*time.Second), 0, false, false)
	require.NoError(t, err)
	waitFor(t, func() (bool, string) {
		return tried.Load() > 0 && f.handoffs.Failing() > 0, "a's handover of x not yet tried"
	})
	// z heartbeats no more: x is a's again once z's entry expires.
	waitForWithin(t, 2*time.Minute, func() (bool, string) {
		return heldOpen(sub, x) && f.handoffs.Failing() == 0,
			fmt.Sprintf("x (vb %d) streamed by a: %v; handovers failing: %d", x, heldOpen(sub, x), f.handoffs.Failing())
	})
}
