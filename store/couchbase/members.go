package couchbase

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/ordermail/ordermail/store"
)

// Membership: the instances that stream one feed share its vBuckets
// without a fixed split. Each instance (a member) renews its entry in one
// members document of the metadata bucket every beat, by CAS; an entry not
// renewed within its TTL is dead. Every member computes the same
// assignment of the vBuckets over the live members (rendezvous hashing),
// and ownership itself is in each vBucket's checkpoint document: the owner
// and an epoch, both changed only by CAS (checkpoints.go). Members compare
// heartbeat times from their own clocks, as the sweep lease does: keep the
// TTL well above their skew.

// memberEntry is one member in the members document.
type memberEntry struct {
	BeatAt   int64 `json:"beatAt"` // ms, the member's clock
	TTLMs    int64 `json:"ttlMs"`
	Started  int64 `json:"started"` // ms
	VBuckets int   `json:"vbuckets"`
	// Leaving: the member stopped cleanly; it no longer counts as live.
	Leaving bool `json:"leaving,omitempty"`
	// Held: its sends were all held back at this beat. Aside: it has
	// stepped aside (aside.go); the assignment leaves it out.
	Held  bool `json:"held,omitempty"`
	Aside bool `json:"aside,omitempty"`
	// Proto is the members protocol its writer follows (membersProto);
	// absent (0): a build from before it, which knows neither Held nor
	// Aside (see mixed).
	Proto int `json:"proto,omitempty"`

	// rest is what the entry holds that this build does not know (a
	// newer build's fields): kept when another member's entry is
	// written back, as an older build's rewrite dropped Held and Aside.
	rest map[string]json.RawMessage
}

// membersProto is the members protocol this build follows: 1, entries
// say Held and Aside, and the assignment leaves members aside out.
const membersProto = 1

// entryFields are memberEntry's names in JSON.
var entryFields = []string{"beatAt", "ttlMs", "started", "vbuckets", "leaving", "held", "aside", "proto"}

func (e *memberEntry) UnmarshalJSON(b []byte) error {
	type plain memberEntry
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for _, name := range entryFields {
		delete(all, name)
	}
	*e = memberEntry(p)
	if len(all) > 0 {
		e.rest = all
	}
	return nil
}

func (e memberEntry) MarshalJSON() ([]byte, error) {
	type plain memberEntry
	b, err := json.Marshal(plain(e))
	if err != nil || len(e.rest) == 0 {
		return b, err
	}
	all := make(map[string]json.RawMessage, len(e.rest)+len(entryFields))
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	for name, v := range e.rest {
		if _, known := all[name]; !known {
			all[name] = v
		}
	}
	return json.Marshal(all)
}

func (e memberEntry) expiresAt() time.Time {
	return time.UnixMilli(e.BeatAt + e.TTLMs)
}

type membersDoc struct {
	Members map[string]memberEntry `json:"members"`
}

// membersKey names a feed's members document.
func membersKey(feed string) string { return "members:" + feed }

// group is one member's view of a feed's members.
type group struct {
	s    *Store
	key  string
	me   string
	ttl  time.Duration
	now  func() time.Time
	born time.Time

	mu   sync.Mutex
	seen map[string]beatSeen // the others' heartbeats as this member saw them
}

// beatSeen is another member's heartbeat as this member first read it.
type beatSeen struct {
	beatAt  int64     // its BeatAt
	at      time.Time // when read (time.Now: monotonic)
	skew    int64     // our clock minus its BeatAt then, ms
	changed bool      // read as a change from an earlier one, not at first sight
}

func newGroup(s *Store, feed, me string, ttl time.Duration, now func() time.Time) *group {
	return &group{s: s, key: membersKey(feed), me: me, ttl: ttl, now: now, born: now(), seen: map[string]beatSeen{}}
}

// maxMembers bounds the members document: entries are dropped when a
// member has seen them unchanged for a while (forgettable), which no
// member does when none lives that long (every instance crash-looping,
// each under a new name), and the document would grow by one a restart.
const maxMembers = 256

// capMembers drops the entries beyond maxMembers whose times are the
// oldest, never me's.
func capMembers(d membersDoc, me string) {
	if len(d.Members) <= maxMembers {
		return
	}
	names := make([]string, 0, len(d.Members))
	for name := range d.Members {
		if name != me {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(d.Members[a].BeatAt, d.Members[b].BeatAt) })
	for _, name := range names[:len(d.Members)-maxMembers] {
		delete(d.Members, name)
	}
}

// forgettable says whether another member's entry e has stayed the same,
// as this member read it, for forgetAfter TTLs past its TTL, on the
// monotonic clock: the entry's time, on its writer's clock, may be any
// distance from ours, and an entry dropped by its time alone would be
// dropped at every heartbeat of a member whose clock is far ahead, and
// with it what judged saw of it. One never read is kept until it has been.
func (g *group) forgettable(name string, e memberEntry) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.seen[name]
	return ok && b.beatAt == e.BeatAt &&
		time.Since(b.at) >= time.Duration(forgetAfter+1)*time.Duration(e.TTLMs)*time.Millisecond
}

// judged is d as this member judges it at now: the others' heartbeat
// times moved where what it saw of them, on its monotonic clock, belies
// their clocks against its own (NTP, a restored VM). An entry that stayed
// the same for its TTL since first read is expired, whatever its time says
// (a dead member's clock ahead, or ours gone back); an entry read as
// changed is live for at least a TTL from when it was read, however far
// its clock is behind ours (a live member's clock behind, or ours gone
// ahead): by its time alone, one 8s behind with a TTL of 10s was live for
// 2s, and a heartbeat a second late gave its vBuckets to another member
// while it streamed them. At first sight the times stand, as on clocks in
// step. The copy is for judging only, never written.
func (g *group) judged(d membersDoc, now time.Time) membersDoc {
	out := membersDoc{Members: make(map[string]memberEntry, len(d.Members))}
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, e := range d.Members {
		if name == g.me {
			out.Members[name] = e
			continue
		}
		b, ok := g.seen[name]
		if !ok || b.beatAt != e.BeatAt {
			b = beatSeen{beatAt: e.BeatAt, at: time.Now(), skew: now.UnixMilli() - e.BeatAt, changed: ok}
			g.seen[name] = b
		}
		since := time.Since(b.at)
		switch {
		case since >= time.Duration(e.TTLMs)*time.Millisecond && e.expiresAt().After(now):
			e.BeatAt = now.UnixMilli() - e.TTLMs - 1
		case b.changed:
			e.BeatAt = max(e.BeatAt, now.UnixMilli()-since.Milliseconds())
		}
		out.Members[name] = e
	}
	for name := range g.seen {
		if _, ok := d.Members[name]; !ok {
			delete(g.seen, name) // forgotten
		}
	}
	return out
}

// forgetAfter is how long past its expiry an entry stays in the document,
// so that operators see a member that stopped heartbeating before it goes.
const forgetAfter = 10

// beat renews this member's entry, saying it owns vbuckets, whether its
// sends are held and whether it stands aside, and returns the document as
// written, as this member judges it (judged), and when the entry written
// was stamped (its BeatAt, on this process's clock reading). Entries
// expired for forgetAfter TTLs are dropped on the way (forgettable).
func (g *group) beat(ctx context.Context, vbuckets int, held, aside bool) (membersDoc, time.Time, error) {
	var stamped time.Time // of the write that went through: the last try's
	d, err := g.update(ctx, func(d *membersDoc, now time.Time) {
		stamped = now
		d.Members[g.me] = memberEntry{BeatAt: now.UnixMilli(), TTLMs: g.ttl.Milliseconds(),
			Started: g.born.UnixMilli(), VBuckets: vbuckets, Held: held, Aside: aside, Proto: membersProto}
	})
	if err != nil {
		return membersDoc{}, time.Time{}, err
	}
	return g.judged(d, g.now()), stamped, nil
}

// leave marks this member as gone, so that the others take its vBuckets
// at once instead of after its TTL.
func (g *group) leave(ctx context.Context) error {
	_, err := g.update(ctx, func(d *membersDoc, _ time.Time) {
		if e, ok := d.Members[g.me]; ok {
			e.Leaving, e.VBuckets = true, 0
			d.Members[g.me] = e
		}
	})
	return err
}

// update reads the members document, changes it with fn and writes it back
// by CAS, again from a fresh read when another member wrote in between.
// The document expires when no member has renewed it for forgetAfter
// TTLs: a cluster whose instances are all gone keeps nothing of them.
func (g *group) update(ctx context.Context, fn func(d *membersDoc, now time.Time)) (membersDoc, error) {
	for attempt := 0; ; attempt++ {
		d, cas, err := g.read(ctx)
		if err != nil {
			return membersDoc{}, err
		}
		found := cas != 0
		now := g.now()
		for name, e := range d.Members {
			if name != g.me && g.forgettable(name, e) {
				delete(d.Members, name)
			}
		}
		capMembers(d, g.me)
		fn(&d, now)
		b, err := json.Marshal(d)
		if err != nil {
			return membersDoc{}, err
		}
		// The expiry is a time from now on the store's clock (time.Now),
		// not on g.now, which the heartbeats' times come from.
		w := store.Write{Op: store.OpInsert, Collection: store.Meta, Key: g.key, Value: b,
			Expiry: time.Now().Add(forgetAfter * g.ttl)}
		if found {
			w.Op, w.CAS = store.OpReplace, cas
		}
		_, err = g.s.write(ctx, w) // with its expiry
		if err == nil {
			return d, nil
		}
		raced := errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrNotFound)
		if !raced || attempt == 20 {
			return membersDoc{}, fmt.Errorf("write %s: %w", g.key, err)
		}
	}
}

// read reads the members document and its CAS (0: there is none).
func (g *group) read(ctx context.Context) (membersDoc, uint64, error) {
	d := membersDoc{Members: map[string]memberEntry{}}
	cur, err := g.s.Get(ctx, store.Meta, g.key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return d, 0, nil
	case err != nil:
		return d, 0, fmt.Errorf("read %s: %w", g.key, err)
	}
	if err := json.Unmarshal(cur.Value, &d); err != nil {
		return d, 0, fmt.Errorf("%s is not a members document: %w", g.key, err)
	}
	if d.Members == nil {
		d.Members = map[string]memberEntry{}
	}
	return d, cur.CAS, nil
}

// isLive says whether name's entry in d is live at now; ok is false when
// d has no entry for it.
func (d membersDoc) isLive(name string, now time.Time) (live, ok bool) {
	e, ok := d.Members[name]
	return ok && !e.Leaving && e.expiresAt().After(now), ok
}

// outage says whether the document, as a member's first heartbeat finds
// it, looks as after an outage of the document itself: two entries or
// more of other members, not leaving, expired together. Their members may
// still be streaming, their heartbeats failing as ours did not yet exist.
// One expired entry is a member that crashed (often our own last run).
func (d membersDoc) outage(me string, now time.Time) bool {
	n := 0
	for name, e := range d.Members {
		if name != me && !e.Leaving && !e.expiresAt().After(now) {
			n++
		}
	}
	return n >= 2
}

// mixed says whether a live member at now follows an older members
// protocol than this build's: a build from before Held and Aside, which
// shares the vBuckets over every live member, aside or not, and whose
// entry never says its sends are held. While one lives, nobody steps aside
// and the assignment leaves nobody out, as that build's: the vBuckets it
// gave a member aside were streamed by nobody, and every other member,
// seeing it "send" through an outage, stepped aside.
func (d membersDoc) mixed(now time.Time) bool {
	for name, e := range d.Members {
		if live, _ := d.isLive(name, now); live && e.Proto < membersProto {
			return true
		}
	}
	return false
}

// live is the sorted names of the members whose entries have not expired
// at now and who are not leaving.
func (d membersDoc) live(now time.Time) []string {
	var out []string
	for name := range d.Members {
		if live, _ := d.isLive(name, now); live {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// assignment gives each of n vBuckets an owner among members (sorted,
// not empty): rendezvous hashing with bounded loads. Each vBucket ranks
// the members by a hash of (member, vBucket) and goes to the first that
// has fewer than n/len(members) already, or exactly that while some of the
// remainder n%len(members) are left to hand out. Every member computes the
// same answer from the same list; the loads differ by at most one; and
// when a member joins or goes, few vBuckets move besides those it takes or
// leaves (TestAssignmentIsBalancedAndMovesLittle measures it).
func assignment(members []string, n int) []string {
	out := make([]string, n)
	if len(members) == 0 {
		return out
	}
	floor, extra := n/len(members), n%len(members)
	load := make([]int, len(members))
	score := make([]uint64, len(members))
	order := make([]int, len(members))
	var buf [2]byte
	for vb := range n {
		binary.BigEndian.PutUint16(buf[:], uint16(vb))
		for i, m := range members {
			h := fnv.New64a()
			h.Write([]byte(m))
			h.Write(buf[:])
			score[i], order[i] = mix(h.Sum64()), i
		}
		slices.SortFunc(order, func(a, b int) int {
			switch {
			case score[a] > score[b]:
				return -1
			case score[a] < score[b]:
				return 1
			}
			return 0
		})
		for _, i := range order {
			if load[i] < floor || (load[i] == floor && extra > 0) {
				if load[i] == floor {
					extra--
				}
				load[i]++
				out[vb] = members[i]
				break
			}
		}
	}
	return out
}

// mix is splitmix64's finalizer: FNV of similar names is not spread
// evenly enough on its own.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// Member is one instance of a feed, as the members document shows it.
type Member struct {
	Name         string
	HeartbeatAge time.Duration // since its last renewal, by the reader's clock
	VBuckets     int           // how many it said it owns at its last renewal
	Live         bool          // renewed within its TTL and not leaving
	Leaving      bool          // stopped cleanly
	Held, Aside  bool          // its sends held back; stepped aside (aside.go)
}

// store is m in the store's terms.
func (m Member) store() store.Member {
	return store.Member{Name: m.Name, HeartbeatAge: m.HeartbeatAge, Partitions: m.VBuckets, Live: m.Live,
		Leaving: m.Leaving, Held: m.Held, Aside: m.Aside}
}

// members lists d's entries as seen at now, sorted by name.
func (d membersDoc) members(now time.Time) []Member {
	out := make([]Member, 0, len(d.Members))
	for name, e := range d.Members {
		out = append(out, Member{Name: name, HeartbeatAge: max(0, now.Sub(time.UnixMilli(e.BeatAt))),
			VBuckets: e.VBuckets, Live: !e.Leaving && e.expiresAt().After(now), Leaving: e.Leaving, Held: e.Held, Aside: e.Aside})
	}
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// forget ends g's part in its store's Members, as its feed closes.
func (g *group) forget(feed string) {
	if g.s != nil {
		g.s.groups.CompareAndDelete(feed, g)
	}
}

// Members reads feed's members document: every member that heartbeated
// lately, live or not, with its heartbeat age. A process that streams feed
// as a member (the service, whose console asks) judges them as its
// heartbeats do (judged): by what it saw of them where their clocks and
// its own disagree. Another (the CLI) has seen nothing of them: their
// times stand, on this process's clock.
func (s *Store) Members(ctx context.Context, feed string) ([]store.Member, error) {
	d, err := s.Get(ctx, store.Meta, membersKey(feed))
	if errors.Is(err, store.ErrNotFound) {
		return []store.Member{}, nil
	}
	if err != nil {
		return nil, err
	}
	var doc membersDoc
	if err := json.Unmarshal(d.Value, &doc); err != nil {
		return nil, fmt.Errorf("%s is not a members document: %w", membersKey(feed), err)
	}
	if doc.Members == nil {
		doc.Members = map[string]memberEntry{}
	}
	now := s.now()
	if v, ok := s.groups.Load(feed); ok {
		g := v.(*group)
		now = g.now()
		doc = g.judged(doc, now)
	}
	out := []store.Member{}
	for _, m := range doc.members(now) {
		out = append(out, m.store())
	}
	return out, nil
}

var _ store.MemberLister = (*Store)(nil)
