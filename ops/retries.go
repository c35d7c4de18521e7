package ops

import (
	"context"
	"errors"
	"fmt"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// ErrNoSuchRetry names a key that has no pending retry.
var ErrNoSuchRetry = errors.New("no such retry")

// ErrChanged says a document changed between its reading and the write
// guarded by what was read: look at it again.
var ErrChanged = errors.New("changed since it was read; look again")

// RunRetryNow flags the pending retry of key (fireRetry: true), guarded by
// the CAS it read, so that the feed brings it back and it is sent at once,
// whether retries are paused or not: the operator asked for it. flagged is
// false when it was flagged already: it is then written again as it is, a
// change of its own, which the feed brings back even when the flag's change
// went unhandled (a watcher that was down, an event given up on); one
// being sent meanwhile is sent once, its outcome guarded by the CAS. The
// document is otherwise kept as stored, fields ordermail does not know
// included.
func RunRetryNow(ctx context.Context, st store.Store, key string) (flagged bool, err error) {
	d, err := getRetry(ctx, st, key)
	if err != nil {
		return false, err
	}
	r, err := order.DecodeRetryDoc(d.Value)
	if err != nil {
		return false, fmt.Errorf("run retry %s now: %w", key, err)
	}
	body := d.Value
	if !r.FireRetry {
		if body, err = order.SetFireRetry(d.Value); err != nil {
			return false, fmt.Errorf("run retry %s now: %w", key, err)
		}
	}
	if _, err := st.Replace(ctx, order.Retry, key, body, d.CAS); err != nil {
		return false, fmt.Errorf("run retry %s now: %w", key, guardErr(err))
	}
	return !r.FireRetry, nil
}

// DropRetry removes the pending retry of key, guarded by the CAS it read.
// Nothing sends the order's confirmation after that: it stays unconfirmed
// (and counted so) until the order itself changes.
//
// cas, when not 0, is the version the operator was shown: one changed
// since (a new order's retry under the key, another's redrive) is left,
// and ErrChanged said.
func DropRetry(ctx context.Context, st store.Store, key string, cas uint64) error {
	d, err := getRetry(ctx, st, key)
	if err != nil {
		return err
	}
	if cas == 0 {
		cas = d.CAS
	}
	if err := st.Remove(ctx, order.Retry, key, cas); err != nil {
		return fmt.Errorf("drop retry %s: %w", key, guardErr(err))
	}
	return nil
}

// RetryVersion is the version (CAS) of key's pending retry as it is now:
// what an operator is shown, for DropRetry to act on that one only.
func RetryVersion(ctx context.Context, st store.Store, key string) (uint64, error) {
	d, err := getRetry(ctx, st, key)
	return d.CAS, err
}

func getRetry(ctx context.Context, st store.Store, key string) (store.Doc, error) {
	if key == order.ControlKey {
		return store.Doc{}, fmt.Errorf("%s: %w", key, ErrReservedKey)
	}
	d, err := st.Get(ctx, order.Retry, key)
	if errors.Is(err, store.ErrNotFound) {
		return store.Doc{}, fmt.Errorf("%w: %s", ErrNoSuchRetry, key)
	}
	return d, err
}

// guardErr says what a failed guard means to an operator.
func guardErr(err error) error {
	switch {
	case errors.Is(err, store.ErrCASMismatch):
		return fmt.Errorf("%w (%w)", ErrChanged, err)
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%w (%w)", ErrNoSuchRetry, err)
	}
	return err
}
