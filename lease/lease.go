package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/ordermail/ordermail/store"
)

// Lease is one named lease, seen from one would-be holder. Instances compare
// expiry times from their own clocks: keep the TTL well above their skew.
type Lease struct {
	st    store.Store
	key   string
	owner string
	ttl   time.Duration
	now   func() time.Time
}

type doc struct {
	Owner     string `json:"owner"`
	ExpiresAt int64  `json:"expiresAt"` // ms
}

// New returns the lease name for owner; now may be nil for time.Now.
func New(st store.Store, name, owner string, ttl time.Duration, now func() time.Time) *Lease {
	if now == nil {
		now = time.Now
	}
	return &Lease{st: st, key: "lease:" + name, owner: owner, ttl: ttl, now: now}
}

// Owner names this process among instances: host, pid and start time.
func Owner() string {
	host, _ := os.Hostname()
	return host + "/" + strconv.Itoa(os.Getpid()) + "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// ErrHeld says another owner holds the lease.
var ErrHeld = errors.New("lease held by another instance")

// Acquire takes the lease, or renews it when we hold it, for one TTL. It
// returns ErrHeld (wrapped, naming the holder) when someone else holds it.
func (l *Lease) Acquire(ctx context.Context) error {
	now := l.now()
	mine, err := json.Marshal(doc{Owner: l.owner, ExpiresAt: now.Add(l.ttl).UnixMilli()})
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
	if json.Unmarshal(cur.Value, &d) == nil && d.Owner != l.owner && d.ExpiresAt > now.UnixMilli() {
		return fmt.Errorf("%w: %s is held by %s until %s", ErrHeld, l.key, d.Owner,
			time.UnixMilli(d.ExpiresAt).UTC().Format(time.RFC3339Nano))
	}
	_, err = l.st.Replace(ctx, store.Meta, l.key, mine, cur.CAS)
	if errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s changed hands", ErrHeld, l.key)
	}
	return err
}

// Release gives the lease up, if we hold it, so that another instance can
// take it at once instead of after the TTL.
func (l *Lease) Release(ctx context.Context) error {
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
	err = l.st.Remove(ctx, store.Meta, l.key, cur.CAS)
	if errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}
