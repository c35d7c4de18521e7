package order_test

import (
	"testing"

	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// FuzzDecode feeds any bytes to every decoder of documents that reach the
// service from outside. Seeds: the hostile corpus. Run longer with
// go test -fuzz='^FuzzDecode$' ./order/ (or scripts/fuzz.sh).
func FuzzDecode(f *testing.F) {
	order.AddHostileSeeds(f)
	f.Add([]byte(`{"email":"a@example.com","paymentStatus":"paid","confirmationEmailSent":false}`))
	f.Add([]byte(`{"type":"confirmation","docId":"o","attempt":3,"ts":1,"fireRetry":true,"nextAttemptAt":5}`))

	f.Fuzz(func(t *testing.T, raw []byte) {
		o, err := order.DecodeOrder(raw)
		if err != nil {
			assert.ErrorIs(t, err, order.ErrMalformed)
		} else {
			// Whatever decodes can be marked, and stays the same order.
			marked, err := order.MarkConfirmed(raw)
			require.NoError(t, err)
			assert.Equal(t, marked, order.MarkDecodedConfirmed(raw), "without the checks DecodeOrder made, the same bytes")
			again, err := order.DecodeOrder(marked)
			require.NoError(t, err, "%q", marked)
			assert.True(t, again.ConfirmationEmailSent)
			assert.Equal(t, o.Email, again.Email)
			assert.Equal(t, o.PaymentStatus, again.PaymentStatus)
		}

		r, err := order.DecodeRetryDoc(raw)
		if err != nil {
			assert.ErrorIs(t, err, order.ErrMalformed)
		} else {
			back, err := order.DecodeRetryDoc(r.Encode())
			require.NoError(t, err)
			assert.Equal(t, r, back, "a retry document survives its own encoding")
		}

		if _, err := order.DecodeControl(raw); err != nil {
			assert.ErrorIs(t, err, order.ErrMalformed)
		}
		if _, err := order.DecodeDeadLetter(raw); err != nil {
			assert.ErrorIs(t, err, order.ErrMalformed)
		}
	})
}
