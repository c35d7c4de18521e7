package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An order system that saves, after the confirmation went out, a copy of
// an order it read before the mark (paid, without confirmationEmailSent)
// gets the order marked again, not mailed again, on every store: the
// embedded store's attempt record says it was sent under this very
// order's key; Couchbase keeps that key with the order document, in an
// extended attribute that a full-body write keeps. On Couchbase the copy
// was mailed again under a new key (its CAS), a second email. An order
// deleted and created again under the same key is another order, mailed.
func TestAnOrderWrittenBackWithoutItsMarkIsNotMailedAgain(t *testing.T) {
	const n = 20
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			r := newRunOn(t, b, mockmail.Config{})
			a, st := r.start(t)
			keys := r.placeOrders(t, st, n)
			waitConfirmed(t, st, keys)
			require.Equal(t, mockmail.Stats{Requests: n, Deliveries: n}, r.mock.Stats())

			// The copies read before the mark, written back as they were.
			ctx := context.Background()
			copies := make([][]byte, n)
			for i, d := range fixtures.Generate(n, 42) {
				var err error
				copies[i], err = order.SetPaymentStatus(d.Value, order.StatusPaid)
				require.NoError(t, err)
				_, err = st.Upsert(ctx, order.Inbound, keys[i], copies[i])
				require.NoError(t, err)
			}
			waitConfirmed(t, st, keys) // marked again
			assert.Equal(t, mockmail.Stats{Requests: n, Deliveries: n}, r.mock.Stats(), "no order mailed again")

			// Deleted and created again: another order.
			require.NoError(t, st.Remove(ctx, order.Inbound, keys[0], 0))
			_, err := st.Insert(ctx, order.Inbound, keys[0], copies[0])
			require.NoError(t, err)
			require.Eventually(t, func() bool { return r.mock.Stats().Deliveries == n+1 }, 60*time.Second, 10*time.Millisecond,
				"the order created again was not mailed: %v", later.Value(func() any { return r.mock.Stats() }))
			waitConfirmed(t, st, keys)
			stop(t, a)
			assert.Equal(t, mockmail.Stats{Requests: n + 1, Deliveries: n + 1}, r.mock.Stats())
		})
	}
}
