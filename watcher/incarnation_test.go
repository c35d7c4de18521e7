package watcher

import (
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An order deleted and created again under its key is another incarnation
// (the embedded store tells them apart; Couchbase does not, and there each
// incarnation is 0): its own send, under its own idempotency key, never
// confused with the deleted order's retry, dead letter or send.

// withFlag is a retry document's value with fireRetry set, as the sweep
// leaves it.
func withFlag(t *testing.T, v []byte) string {
	t.Helper()
	s := strings.Replace(string(v), `"fireRetry":false`, `"fireRetry":true`, 1)
	require.Contains(t, s, `"fireRetry":true`)
	return s
}

var transient503 = &mailer.SendError{Class: mailer.Transient, Status: 503}

// A retry of a deleted order sends the order created again under its key
// with that order's own key: under the deleted order's, the email service
// answered it as a replay and it was marked confirmed, never mailed.
func TestARetryOfADeletedOrderSendsTheNewOneUnderItsOwnKey(t *testing.T) {
	st := state(paid, "", "")
	first := Decide(Change{Collection: order.Inbound, Key: "o"}, st, now, limits)
	require.Equal(t, Send, first.Action)
	out := Settle(first, st, transient503, now, limits, 0.5)
	require.Equal(t, "retry", out.Result)

	again := store.State{Order: store.Doc{Key: "o", Value: []byte(`{"email":"new@y.z","paymentStatus":"paid"}`), CAS: 50, Incarnation: 45},
		Retry: doc(withFlag(t, out.Retry.Encode()), 20)}
	p := Decide(Change{Collection: order.Retry, Key: "o"}, again, now, limits)
	require.Equal(t, Send, p.Action)
	assert.Equal(t, order.IdempotencyKey("o", 45), p.IdempotencyKey, "the new incarnation's key")
	assert.NotEqual(t, first.IdempotencyKey, p.IdempotencyKey)

	// Failed again, the retry document keeps the key the send carried.
	again.Retry = doc(string(p.Retry.Encode()), 21)
	out = Settle(p, again, transient503, now, limits, 0.5)
	assert.Equal(t, order.IdempotencyKey("o", 45), out.Retry.IdempotencyKey)
}

// A send whose order was deleted and created again meanwhile does not mark
// the new order confirmed: that one was not sent, and once paid it would
// never be.
func TestASendDoesNotMarkTheOrderCreatedAgainMeanwhile(t *testing.T) {
	p := Decide(Change{Collection: order.Inbound, Key: "o"}, state(paid, "", ""), now, limits)
	require.Equal(t, Send, p.Action)
	anew := store.State{Order: store.Doc{Key: "o", Value: []byte(`{"email":"x@y.z","paymentStatus":"initiated"}`), CAS: 50, Incarnation: 45}}
	out := Settle(p, anew, nil, now, limits, 0.5)
	assert.Equal(t, "sent", out.Result)
	assert.Empty(t, summary(out.Writes), "the new order is left as it is")

	// The order sent, edited meanwhile (the same incarnation), is marked.
	edited := state(`{"email":"a@b.c","paymentStatus":"paid","note":"edited"}`, "", "")
	out = Settle(p, edited, nil, now, limits, 0.5)
	assert.Equal(t, []string{"replace inbound/o"}, summary(out.Writes))
}

// A deleted order's dead letter does not hold up the order created again
// under its key, never tried: it is sent, and its retry too; the dead
// letter still holds up its own incarnation.
func TestADeletedOrdersDeadLetterDoesNotHoldUpTheNewOne(t *testing.T) {
	dl := `{"type":"confirmation","docId":"o","reason":"attempts_exhausted","attempts":10,"redriveCount":0,"idempotencyKey":"confirmation:o@7"}`
	st := state(paid, "", dl)
	st.Order.Incarnation = 45
	p := Decide(Change{Collection: order.Inbound, Key: "o"}, st, now, limits)
	require.Equal(t, Send, p.Action, "held up: %q", p.Reason)
	out := Settle(p, st, transient503, now, limits, 0.5)
	st.Retry = doc(withFlag(t, out.Retry.Encode()), 20)
	p = Decide(Change{Collection: order.Retry, Key: "o"}, st, now, limits)
	require.Equal(t, Send, p.Action, "the retry was taken for one the dead letter supersedes: %q", p.Reason)
	assert.Equal(t, "confirmation:o@45", p.IdempotencyKey)

	own := state(paid, "", dl) // incarnation 7
	assert.Equal(t, Ignore, Decide(Change{Collection: order.Inbound, Key: "o"}, own, now, limits).Action)
}

// An order dead-lettered for its content (no email), then fixed: its
// first send failed, so it waits as a retry beside that dead letter. The
// retry is sent: the dead letter was about the content, and does not
// supersede it (the retry was removed unsent, and the order never sent).
func TestAFixedOrdersRetryIsSentPastItsContentDeadLetter(t *testing.T) {
	st := state(paid, "", deadEmail)
	p := Decide(Change{Collection: order.Inbound, Key: "o"}, st, now, limits)
	require.Equal(t, Send, p.Action)
	out := Settle(p, st, transient503, now, limits, 0.5)
	require.Equal(t, "retry", out.Result)
	st = state(paid, withFlag(t, out.Retry.Encode()), deadEmail)
	p = Decide(Change{Collection: order.Retry, Key: "o"}, st, now.Add(time.Minute), limits)
	require.Equal(t, Send, p.Action, "%q", p.Reason)

	// Still without an email, the retry is dead-lettered again, not sent.
	st = state(`{"paymentStatus":"paid"}`, withFlag(t, out.Retry.Encode()), deadEmail)
	p = Decide(Change{Collection: order.Retry, Key: "o"}, st, now.Add(time.Minute), limits)
	assert.NotEqual(t, Send, p.Action)
}

// A confirmed order keyed like the control document (a reserved key) does
// not clean up "its" retry document: that is allow_retrys, and removing it
// paused every retry (outcomes not atomic, as on Couchbase).
func TestAConfirmedOrderKeyedLikeTheControlDocumentLeavesIt(t *testing.T) {
	st := store.State{Order: store.Doc{Key: order.ControlKey, Value: []byte(`{"email":"a@b.c","paymentStatus":"paid","confirmationEmailSent":true}`), CAS: 10},
		Retry: store.Doc{Key: order.ControlKey, Value: []byte(`{"interval":"20s"}`), CAS: 20}}
	c := Change{Collection: order.Inbound, Key: order.ControlKey, Value: st.Order.Value}
	_, settled := Settled(c, now, limits)
	require.False(t, settled)
	p := Decide(c, st, now, limits)
	for _, w := range p.Writes {
		assert.False(t, w.Collection == order.Retry && w.Key == order.ControlKey, "%s %s/%s", w.Op, w.Collection, w.Key)
	}
}
