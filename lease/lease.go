package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/ordermail/ordermail/store"
)

// Lease is one named lease, seen from one would-be holder. Instances compare
// expiry times from their own clocks: keep the TTL well above their skew.
// A holder's lease that stays the same (its CAS) for a TTL on this
// process's monotonic clock is expired too, whatever its expiry says: a
// clock stepped back (NTP, a restored VM), here or on the holder's host,
// would otherwise make a dead holder's lease last as much longer.
type Lease struct {
	st    store.Store
	key   string
	owner string
	ttl   time.Duration
	now   func() time.Time

	mu     sync.Mutex
	seen   uint64    // the CAS of another holder's lease as last read
	seenAt time.Time // when it was first read with that CAS (monotonic)
}

type doc struct {
	Owner     string `json:"owner"`
	ExpiresAt int64  `json:"expiresAt"`       // ms
	TTLMs     int64  `json:"ttlMs,omitempty"` // the holder's TTL: it renews within it
	// Given up (Owner ""): the last holder, when (ms) and why, for the
	// operator; anyone may take the lease.
	Left   string `json:"left,omitempty"`
	LeftAt int64  `json:"leftAt,omitempty"`
	Why    string `json:"why,omitempty"`
}

// New returns the lease name for owner; now may be nil for time.Now.
func New(st store.Store, name, owner string, ttl time.Duration, now func() time.Time) *Lease {
	if now == nil {
		now = time.Now
	}
	return &Lease{st: st, key: "lease:" + name, owner: owner, ttl: ttl, now: now}
}

// Owner names this process among instances: Process and a start time.
func Owner() string {
	return Process() + "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// Process names this process as Owner does, without its start time: an
// owner that begins with it and a "/" is this process's.
func Process() string {
	host, _ := os.Hostname()
	return host + "/" + strconv.Itoa(os.Getpid())
}

// ErrHeld says another owner holds the lease.
var ErrHeld = errors.New("lease held by another instance")

// Acquire takes the lease, or renews it when we hold it, for one TTL. It
// returns ErrHeld (wrapped, naming the holder) when someone else holds it.
func (l *Lease) Acquire(ctx context.Context) error {
	now := l.now()
	mine, err := json.Marshal(doc{Owner: l.owner, ExpiresAt: now.Add(l.ttl).UnixMilli(), TTLMs: l.ttl.Milliseconds()})
	if err != nil {
		return err
	}
	cur, err := l.st.Get(ctx, store.Meta, l.key)
	if errors.Is(err, store.ErrNotFound) {
		_, err = l.st.Insert(ctx, store.Meta, l.key, mine)
		if errors.Is(err, store.ErrExists) {
			return fmt.Errorf("%w: %s was just taken", ErrHeld, l.key)
		}
		return err
	}
	if err != nil {
		return err
	}
	var d doc
	if json.Unmarshal(cur.Value, &d) == nil && d.Owner != l.owner && d.ExpiresAt > now.UnixMilli() &&
		!l.unchanged(cur.CAS, max(l.ttl, time.Duration(d.TTLMs)*time.Millisecond)) {
		return fmt.Errorf("%w: %s is held by %s until %s", ErrHeld, l.key, d.Owner,
			time.UnixMilli(d.ExpiresAt).UTC().Format(time.RFC3339Nano))
	}
	_, err = l.st.Replace(ctx, store.Meta, l.key, mine, cur.CAS)
	if errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s changed hands", ErrHeld, l.key)
	}
	return err
}

// unchanged says whether another holder's lease has had CAS for ttl (the
// longer of ours and the holder's: one with a longer interval renews less
// often), on the monotonic clock, since this process first read it so.
func (l *Lease) unchanged(cas uint64, ttl time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cas != l.seen {
		l.seen, l.seenAt = cas, time.Now()
		return false
	}
	return time.Since(l.seenAt) >= ttl
}

// Release gives the lease up, if we hold it, so that another instance can
// take it at once instead of after the TTL. The lease then says who gave it
// up, when, and why (Holding.Left), until another takes it.
func (l *Lease) Release(ctx context.Context, why string) error {
	cur, err := l.st.Get(ctx, store.Meta, l.key)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var d doc
	if json.Unmarshal(cur.Value, &d) != nil || d.Owner != l.owner {
		return nil
	}
	left, err := json.Marshal(doc{Left: l.owner, LeftAt: l.now().UnixMilli(), Why: why})
	if err != nil {
		return err
	}
	_, err = l.st.Replace(ctx, store.Meta, l.key, left, cur.CAS)
	if errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// Holding is who holds a lease and until when, as the store has it.
type Holding struct {
	Owner     string        // "" when nobody does: never taken, or released
	ExpiresAt time.Time     // an expired lease still names its last holder
	TTL       time.Duration // the holder's; 0 when its release did not record it
	// Nobody holds it (Owner ""): who gave it up last, when and why; ""
	// when it was never taken.
	Left   string
	LeftAt time.Time
	Why    string
}

// RenewedAt is when the holder last renewed the lease, on its clock:
// ExpiresAt less its TTL, or less fallback when the lease does not say.
func (h Holding) RenewedAt(fallback time.Duration) time.Time {
	if h.TTL > 0 {
		fallback = h.TTL
	}
	return h.ExpiresAt.Add(-fallback)
}

// Expired says whether the holder stopped renewing it by now: anyone may
// take it.
func (h Holding) Expired(now time.Time) bool { return h.Owner == "" || !now.Before(h.ExpiresAt) }

// Holder reads who holds the lease, without taking it; an unreadable
// document reads as nobody's.
func (l *Lease) Holder(ctx context.Context) (Holding, error) {
	cur, err := l.st.Get(ctx, store.Meta, l.key)
	if errors.Is(err, store.ErrNotFound) {
		return Holding{}, nil
	}
	if err != nil {
		return Holding{}, err
	}
	var d doc
	if json.Unmarshal(cur.Value, &d) != nil {
		return Holding{}, nil
	}
	if d.Owner == "" {
		if d.Left == "" {
			return Holding{}, nil
		}
		return Holding{Left: d.Left, LeftAt: time.UnixMilli(d.LeftAt), Why: d.Why}, nil
	}
	return Holding{Owner: d.Owner, ExpiresAt: time.UnixMilli(d.ExpiresAt), TTL: time.Duration(d.TTLMs) * time.Millisecond}, nil
}

// Owner is who this Lease takes it for.
func (l *Lease) Owner() string { return l.owner }

// TTL is how long one Acquire holds it: a holder renews it at every tick, so
// ExpiresAt minus TTL is when it last did (on the holder's clock).
func (l *Lease) TTL() time.Duration { return l.ttl }
