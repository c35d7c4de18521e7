package watcher

import (
	"cmp"
	"crypto/tls"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	now    = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	limits = Limits{MaxOrderBytes: 200, ClaimTTL: time.Minute, Policy: order.Policy{
		Backoff: order.BackoffExponential, MinDelay: time.Second, MaxDelay: time.Minute, MaxAttempts: 5, Quantum: 15 * time.Second}}
)

const (
	paid      = `{"email":"a@b.c","paymentStatus":"paid"}`
	flagged   = `{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":true}`
	notDue    = `{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":false}`
	deadPerm  = `{"type":"confirmation","docId":"o","reason":"permanent_error","redriveCount":0}`
	deadEmail = `{"type":"confirmation","docId":"o","reason":"no_email"}`
)

func doc(v string, cas uint64) store.Doc {
	if v == "" {
		return store.Doc{}
	}
	return store.Doc{Key: "o", Value: []byte(v), CAS: cas, Incarnation: 7}
}

func state(o, r, d string) store.State {
	return store.State{Order: doc(o, 10), Retry: doc(r, 20), DeadLetter: doc(d, 30)}
}

// summary reads writes as "op coll/key[ reason]" lines, guards checked apart.
func summary(ws []store.Write) []string {
	var out []string
	for _, w := range ws {
		line := w.Op.String() + " " + w.Collection + "/" + w.Key
		if w.Collection == order.DeadLetter && w.Op != store.OpRemove {
			d, _ := order.DecodeDeadLetter(w.Value)
			line += " " + d.Reason
		}
		out = append(out, line)
	}
	return out
}

// TestDecide: every kind of change, on the current state of its key. The
// numbered cases are the findings of the issue "Every paid order confirmed
// once": each failed on the decision of the first release.
func TestDecide(t *testing.T) {
	t.Parallel()
	in := func(key string) Change { return Change{Collection: order.Inbound, Key: key} }
	re := func(key string) Change { return Change{Collection: order.Retry, Key: key} }
	far := now.AddDate(300, 0, 0).UnixMilli()
	tests := []struct {
		name       string
		change     Change
		state      store.State
		wantAction Action
		wantWhy    string   // in the reason and detail
		wantWrites []string // summary of the writes
		wantWarn   string
	}{
		{"paid unconfirmed order", in("o"), state(paid, "", ""), Send, "", nil, ""},
		{"already confirmed", in("o"), state(`{"email":"a@b.c","paymentStatus":"paid","confirmationEmailSent":true}`, "", ""), Ignore, "already confirmed", nil, ""},
		{"13: confirmed order with a leftover retry and dead letter", in("o"), state(`{"paymentStatus":"paid","confirmationEmailSent":true}`, notDue, deadPerm),
			Write, "already confirmed", []string{"remove retry/o", "remove deadletter/o"}, ""},
		{"not paid", in("o"), state(`{"email":"a@b.c","paymentStatus":"initiated"}`, "", ""), Ignore, "not paid", nil, ""},
		{"8: unknown payment state PAID is warned about", in("o"), state(`{"email":"a@b.c","paymentStatus":"PAID"}`, "", ""), Ignore, "not paid", nil, `unknown payment state "PAID"`},
		{"8: unknown payment state ' paid'", in("o"), state(`{"email":"a@b.c","paymentStatus":" paid"}`, "", ""), Ignore, "not paid", nil, "unknown payment state"},
		{"order deleted since the change", in("o"), state("", "", ""), Ignore, "no longer exists", nil, ""},
		{"change is a deletion", Change{Collection: order.Inbound, Key: "o", Deleted: true}, state(paid, "", ""), Ignore, "deleted", nil, ""},
		{"order not JSON", in("o"), state(`{{{`, "", ""), Write, "malformed_order", []string{"insert deadletter/o malformed_order"}, ""},
		{"8: duplicate keys are malformed", in("o"), state(`{"email":"a@b.c","paymentStatus":"paid","paymentStatus":"initiated"}`, "", ""),
			Write, "paymentStatus appears more than once", []string{"insert deadletter/o malformed_order"}, ""},
		{"8: blank email is no email", in("o"), state(`{"email":"   ","paymentStatus":"paid"}`, "", ""), Write, "no_email", []string{"insert deadletter/o no_email"}, ""},
		{"too large", in("o"), state(`{"email":"a@b.c","paymentStatus":"paid","note":"`+strings.Repeat("x", 200)+`"}`, "", ""),
			Write, "more than the 200", []string{"insert deadletter/o order_too_large"}, ""},
		{"the largest order sent: its bytes the limit", in("o"), state(`{"email":"a@b.c","paymentStatus":"paid","note":"`+strings.Repeat("x", 200-50)+`"}`, "", ""),
			Send, "", nil, ""},
		{"2: an order keyed allow_retrys never touches the control document", in(order.ControlKey),
			store.State{Order: doc(paid, 10), Retry: doc(`{"interval":"1s"}`, 20)},
			Write, "reserved_key", []string{"insert deadletter/allow_retrys reserved_key"}, ""},
		{"3: a key with CR LF is dead-lettered, not sent", in("o\r\nX-Evil: 1"), state(paid, "", ""),
			Write, "invalid_key", []string{"insert deadletter/o\r\nX-Evil: 1 invalid_key"}, ""},
		{"3: a key with NUL", in("o\x00"), state(paid, "", ""), Write, "invalid_key", []string{"insert deadletter/o\x00 invalid_key"}, ""},
		{"3: a key with DEL", in("o\x7f"), state(paid, "", ""), Write, "invalid_key", []string{"insert deadletter/o\x7f invalid_key"}, ""},
		{"3: a key not UTF-8, which its retry's docId could not hold", in("caf\xe9"), state(paid, "", ""), Write, "not valid UTF-8",
			[]string{"insert deadletter/caf\xe9 invalid_key"}, ""},
		{"a retry document owns it", in("o"), state(paid, notDue, ""), Ignore, "retry document owns", nil, ""},
		{"dead-lettered for sending: needs a redrive", in("o"), state(paid, "", deadPerm), Ignore, "redrive to send", nil, ""},
		{"dead-lettered for content, order fixed: sent", in("o"), state(paid, "", deadEmail), Send, "", nil, ""},
		{"dead-lettered for content, still bad: left", in("o"), state(`{"paymentStatus":"paid"}`, "", deadEmail), Ignore, "already (no_email)", nil, ""},
		{"dead-lettered for content, now another problem", in("o"), state(`[1]`, "", deadEmail), Write, "malformed_order", []string{"replace deadletter/o malformed_order"}, ""},

		{"flagged retry: claim, then send", re("o"), state(paid, flagged, ""), Send, "", []string{"replace retry/o"}, ""},
		{"retry not flagged", re("o"), state(paid, notDue, ""), Ignore, "not due", nil, ""},
		{"8: a retry due in the year 2326 is warned about", re("o"), state(paid, `{"docId":"o","attempt":1,"ts":1,"nextAttemptAt":`+itoa(far)+`}`, ""),
			Ignore, "not due", nil, "more than a year away"},
		{"control document", re(order.ControlKey), store.State{Retry: doc(`{}`, 20)}, Ignore, "control document", nil, ""},
		{"retry gone since the change", re("o"), state(paid, "", ""), Ignore, "no longer exists", nil, ""},
		{"malformed retry", re("o"), state(paid, `{"attempt":1,"fireRetry":true}`, ""), Write, "docId is missing",
			[]string{"insert deadletter/o malformed_retry_document", "remove retry/o"}, ""},
		{"retry for another order's key", re("o"), state(paid, `{"docId":"p","attempt":1,"fireRetry":true}`, ""), Write, `docId "p" is not`,
			[]string{"insert deadletter/o malformed_retry_document", "remove retry/o"}, ""},
		{"12: a stale malformed event with a valid current retry", re("o"), state(paid, notDue, ""), Ignore, "not due", nil, ""},
		{"retry for a missing order", re("o"), state("", flagged, ""), Write, "order_missing",
			[]string{"insert deadletter/o order_missing", "remove retry/o"}, ""},
		{"retry for a confirmed order", re("o"), state(`{"paymentStatus":"paid","confirmationEmailSent":true}`, flagged, ""), Write, "already confirmed",
			[]string{"remove retry/o"}, ""},
		{"retry for an order no longer paid", re("o"), state(`{"paymentStatus":"refunded"}`, flagged, ""), Write, "no longer paid",
			[]string{"remove retry/o"}, "no longer paid"},
		{"4: the size limit holds on a retry", re("o"), state(`{"email":"a@b.c","paymentStatus":"paid","note":"`+strings.Repeat("x", 200)+`"}`, flagged, ""),
			Write, "order_too_large", []string{"insert deadletter/o order_too_large", "remove retry/o"}, ""},
		{"13: a dead letter newer than the retry wins", re("o"), state(paid, flagged, deadPerm), Write, "supersedes", []string{"remove retry/o"}, ""},
		{"single consumer: a flagged retry is sent without a claim", re("o"), state(paid, flagged, ""), Send, "", nil, ""},
		{"a redrive's retry wins over its dead letter", re("o"), state(paid, `{"docId":"o","attempt":0,"ts":1,"fireRetry":true,"redriveCount":1}`, deadPerm),
			Send, "", []string{"replace retry/o"}, ""},
		{"other collection", Change{Collection: order.DeadLetter, Key: "o"}, state(paid, "", ""), Ignore, "not watched", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lim := limits
			lim.SingleConsumer = strings.HasPrefix(tt.name, "single consumer")
			got := Decide(tt.change, tt.state, now, lim)
			// Settled, on the change as the current document, agrees.
			c := tt.change
			if tt.change.Collection == order.Inbound {
				c.Value = tt.state.Order.Value
			} else {
				c.Value = tt.state.Retry.Value
			}
			atomic := limits
			atomic.AtomicOutcomes = !strings.Contains(tt.name, "13:") // the crash windows are Couchbase's
			if quick, ok := Settled(c, now, atomic); ok && c.Value != nil {
				assert.Equal(t, Ignore, got.Action, "Settled ignored what Decide would do: %s", quick.Reason)
				assert.Equal(t, got.Warn, quick.Warn)
			}
			assert.Equal(t, tt.wantAction, got.Action, "%s: %s", got.Reason, got.Detail)
			assert.Contains(t, got.Reason+" "+got.Detail, tt.wantWhy)
			assert.Equal(t, tt.wantWrites, summary(got.Writes))
			assert.Contains(t, got.Warn, tt.wantWarn)
			if tt.wantWarn == "" {
				assert.Empty(t, got.Warn)
			}
			for _, w := range got.Writes {
				assert.False(t, w.Collection == order.Retry && w.Key == order.ControlKey, "a decision wrote the control document")
				if w.Op == store.OpRemove || w.Op == store.OpReplace {
					assert.NotZero(t, w.CAS, "%s %s/%s is unguarded", w.Op, w.Collection, w.Key)
				}
			}
		})
	}
}

func itoa(n int64) string   { return strconv.FormatInt(n, 10) }
func fmtInt(n int64) string { return strconv.FormatInt(n, 10) }

// TestIdempotencyKeys (finding 9): one key for every attempt at one
// order, another for an order created again under a deleted one's key.
func TestIdempotencyKeys(t *testing.T) {
	t.Parallel()
	first := Decide(Change{Collection: order.Inbound, Key: "o"}, state(paid, "", ""), now, limits)
	require.Equal(t, Send, first.Action)
	again := Decide(Change{Collection: order.Inbound, Key: "o"}, state(paid, "", ""), now, limits)
	assert.Equal(t, first.IdempotencyKey, again.IdempotencyKey, "a replay sends the same key")

	out := Settle(first, state(paid, "", ""), &mailer.SendError{Class: mailer.Transient, Status: 503}, now, limits, 0.5)
	require.Equal(t, "retry", out.Result)
	assert.Equal(t, first.IdempotencyKey, out.Retry.IdempotencyKey, "the retry keeps the key")
	st := state(paid, string(out.Retry.Encode()), "")
	st.Retry.Value = []byte(strings.Replace(string(st.Retry.Value), `"fireRetry":false`, `"fireRetry":true`, 1))
	st.Order.CAS = 99 // an edit of the order meanwhile (a re-creation is another incarnation: incarnation_test.go)
	retry := Decide(Change{Collection: order.Retry, Key: "o"}, st, now, limits)
	require.Equal(t, Send, retry.Action)
	assert.Equal(t, first.IdempotencyKey, retry.IdempotencyKey, "every attempt sends the first one's key")

	recreated := state(paid, "", "")
	recreated.Order.Incarnation = 8
	anew := Decide(Change{Collection: order.Inbound, Key: "o"}, recreated, now, limits)
	assert.NotEqual(t, first.IdempotencyKey, anew.IdempotencyKey, "a new order under an old key is a new confirmation")

	// Where the store cannot tell incarnations (Couchbase), the CAS the
	// first send was planned on stands in.
	cb := state(paid, "", "")
	cb.Order.Incarnation = 0
	p1 := Decide(Change{Collection: order.Inbound, Key: "o"}, cb, now, limits)
	assert.Equal(t, "confirmation:o@10", p1.IdempotencyKey)
	cb.Order.CAS = 77 // deleted and created again
	p2 := Decide(Change{Collection: order.Inbound, Key: "o"}, cb, now, limits)
	assert.NotEqual(t, p1.IdempotencyKey, p2.IdempotencyKey)

	// A retry without a key (the sample's, the first release's, which sent
	// "confirmation:<key>" on every attempt): on Couchbase that key; where
	// incarnations are kept, the order's (the embedded store wrote the
	// first release's key into its documents as it upgraded them).
	keyless := `{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":true}`
	cb = state(paid, keyless, "")
	cb.Order.Incarnation = 0
	assert.Equal(t, "confirmation:o", Decide(Change{Collection: order.Retry, Key: "o"}, cb, now, limits).IdempotencyKey)
	assert.Equal(t, "confirmation:o@7", Decide(Change{Collection: order.Retry, Key: "o"}, state(paid, keyless, ""), now, limits).IdempotencyKey)
}

func TestSettle(t *testing.T) {
	t.Parallel()
	first := Decide(Change{Collection: order.Inbound, Key: "o"}, state(paid, "", ""), now, limits)
	claimedSt := state(paid, flagged, "")
	retry := Decide(Change{Collection: order.Retry, Key: "o"}, claimedSt, now, limits)
	claimedSt.Retry = doc(string(retry.Retry.Encode()), 21)
	transient := &mailer.SendError{Class: mailer.Transient, Status: 503, ContentType: "application/json", BodyBytes: 40}
	huge := `{"type":"confirmation","docId":"o","attempt":` + fmtInt(math.MaxInt64) + `,"ts":1,"fireRetry":false}`
	tests := []struct {
		name       string
		plan       Plan
		state      store.State
		sendErr    error
		lim        Limits
		wantResult string
		wantWrites []string
		check      func(t *testing.T, out Outcome)
	}{
		{"first send accepted", first, state(paid, "", ""), nil, limits, "sent", []string{"replace inbound/o"}, func(t *testing.T, out Outcome) {
			assert.Contains(t, string(out.Writes[0].Value), `"confirmationEmailSent":true`)
			assert.Equal(t, uint64(10), out.Writes[0].CAS)
			assert.Equal(t, first.IdempotencyKey, out.Writes[0].Sent, "the mark keeps the key the confirmation went out under")
		}},
		{"13: a retry accepted: order, retry and dead letter in one outcome", retry, store.State{Order: doc(paid, 10), Retry: claimedSt.Retry, DeadLetter: doc(deadPerm, 30)}, nil, limits, "sent",
			[]string{"replace inbound/o", "remove retry/o", "remove deadletter/o"}, nil},
		{"accepted, the order changed under the send: still marked", first, state(`{"email":"a@b.c","paymentStatus":"paid","note":"edited"}`, "", ""), nil, limits, "sent",
			[]string{"replace inbound/o"}, func(t *testing.T, out Outcome) { assert.Contains(t, string(out.Writes[0].Value), `"note":"edited"`) }},
		{"first send failed: a retry document with the key and no body", first, state(paid, "", ""), transient, limits, "retry", []string{"insert retry/o"},
			func(t *testing.T, out Outcome) {
				assert.Equal(t, 1, out.Retry.Attempt)
				assert.Equal(t, "answered 503 Service Unavailable (application/json, 40 bytes)", out.Retry.LastError)
				assert.Equal(t, first.IdempotencyKey, out.Retry.IdempotencyKey)
				assert.Equal(t, now.Add(time.Second).UnixMilli(), out.Retry.NextAttemptAt)
			}},
		{"retry failed: the attempt counts", retry, claimedSt, transient, limits, "retry", []string{"replace retry/o"},
			func(t *testing.T, out Outcome) { assert.Equal(t, 2, out.Retry.Attempt) }},
		{"11: the claim ran out and the document changed: the failure still counts", retry,
			store.State{Order: doc(paid, 10), Retry: doc(`{"type":"confirmation","docId":"o","attempt":3,"ts":1,"fireRetry":false}`, 25)},
			transient, limits, "retry", []string{"replace retry/o"}, func(t *testing.T, out Outcome) {
				assert.Equal(t, 4, out.Retry.Attempt)
				assert.Equal(t, uint64(25), out.Writes[0].CAS)
			}},
		{"redriven during the send: the new budget is left alone", retry,
			store.State{Order: doc(paid, 10), Retry: doc(`{"type":"confirmation","docId":"o","attempt":0,"ts":1,"fireRetry":true,"redriveCount":1}`, 26)},
			transient, limits, "retry", nil, nil},
		{"dropped during the send: nothing written again", retry, state(paid, "", ""), transient, limits, "retry", nil, nil},
		{"dropped during the send, then refused: no dead letter either", retry, state(paid, "", ""), &mailer.SendError{Class: mailer.Permanent, Status: 400},
			limits, "retry", nil, nil},
		{"dropped during the send, yet delivered: the order is marked", retry, state(paid, "", ""), nil, limits, "sent", []string{"replace inbound/o"}, nil},
		{"permanent: dead letter, retry removed", retry, claimedSt, &mailer.SendError{Class: mailer.Permanent, Status: 400}, limits, "dead_letter",
			[]string{"insert deadletter/o permanent_error", "remove retry/o"}, nil},
		{"3: invalid: dead letter at once", first, state(paid, "", ""), &mailer.SendError{Class: mailer.Invalid, Err: mailer.ErrHeaderValue}, limits, "dead_letter",
			[]string{"insert deadletter/o invalid_key"}, nil},
		{"budget spent", retry, store.State{Order: doc(paid, 10), Retry: doc(`{"type":"confirmation","docId":"o","attempt":4,"ts":1}`, 21)}, transient, limits, "dead_letter",
			[]string{"insert deadletter/o attempts_exhausted", "remove retry/o"}, nil},
		{"7: a huge attempt count saturates instead of going negative", retry, store.State{Order: doc(paid, 10), Retry: doc(huge, 21)}, transient,
			Limits{MaxOrderBytes: 200, ClaimTTL: time.Minute, Policy: order.Policy{Backoff: order.BackoffFixed, Quantum: time.Second}}, "retry", []string{"replace retry/o"},
			func(t *testing.T, out Outcome) {
				assert.Equal(t, math.MaxInt, out.Retry.Attempt)
				_, err := order.DecodeRetryDoc(out.Writes[0].Value)
				assert.NoError(t, err, "the service can read what it wrote")
			}},
		{"held back by the breaker: no attempt spent", retry, claimedSt, &mailer.SendError{Class: mailer.Transient, NotAttempted: true, RetryAfter: 30 * time.Second, Err: mailer.ErrCircuitOpen},
			limits, "retry", []string{"replace retry/o"}, func(t *testing.T, out Outcome) { assert.Equal(t, 1, out.Retry.Attempt) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := Settle(tt.plan, tt.state, tt.sendErr, now, tt.lim, 0.5)
			assert.Equal(t, tt.wantResult, out.Result)
			assert.Equal(t, tt.wantWrites, summary(out.Writes))
			for _, w := range out.Writes {
				if w.Op == store.OpRemove || w.Op == store.OpReplace {
					assert.NotZero(t, w.CAS, "%s %s/%s is unguarded", w.Op, w.Collection, w.Key)
				}
			}
			if tt.check != nil {
				tt.check(t, out)
			}
		})
	}
}

// A send held back without a request (the circuit breaker open) keeps what
// the last request got, and says in heldBack why none was made: during an
// outage the backlog counts the email service's answer (HTTP 503), not "no
// answer", and orders never tried count as held back. A request clears it.
func TestSettleHeldBack(t *testing.T) {
	t.Parallel()
	held := &mailer.SendError{Class: mailer.Transient, NotAttempted: true, RetryAfter: 30 * time.Second, Err: mailer.ErrCircuitOpen}
	settle := func(t *testing.T, retryDoc string, sendErr error) order.RetryDoc {
		t.Helper()
		st := state(paid, "", "")
		ch := Change{Collection: order.Inbound, Key: "o"}
		if retryDoc != "" {
			st = state(paid, retryDoc, "")
			ch.Collection = order.Retry
		}
		p := Decide(ch, st, now, limits)
		require.Equal(t, Send, p.Action)
		out := Settle(p, st, sendErr, now, limits, 0.5)
		require.Equal(t, "retry", out.Result)
		// Held back, or refused as the configuration is, the order spends
		// no attempt: the probes of a configuration outage would dead-letter
		// it as exhausted.
		before := 0
		if st.Retry.Found() {
			r, err := order.DecodeRetryDoc(st.Retry.Value)
			require.NoError(t, err)
			before = r.Attempt
		}
		if se, ok := errors.AsType[*mailer.SendError](sendErr); ok && (se.NotAttempted || se.Class == mailer.Configuration) {
			assert.Equal(t, before, out.Retry.Attempt, "attempts")
		}
		return out.Retry
	}
	for _, tt := range []struct {
		name                string
		retryDoc            string
		sendErr             error
		wantStatus          int
		wantError, wantHeld string
		wantWhy             string
	}{
		{"a first send held back: nothing failed yet", "", held,
			0, "", "circuit breaker open: email service not called", order.WhyHeldBack},
		{"held back after a 503: the 503 stays", `{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":true,"lastStatus":503,"lastError":"answered 503 Service Unavailable"}`, held,
			503, "answered 503 Service Unavailable", "circuit breaker open: email service not called", "HTTP 503"},
		{"held back after a timeout: no answer stays", `{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":true,"lastError":"no answer: timeout"}`, held,
			0, "no answer: timeout", "circuit breaker open: email service not called", order.WhyNoAnswer},
		{"a hold written before heldBack moves there", `{"type":"confirmation","docId":"o","attempt":0,"ts":1,"fireRetry":true,"lastError":"not attempted: circuit breaker open: email service not called"}`, held,
			0, "", "circuit breaker open: email service not called", order.WhyHeldBack},
		{"a request after a hold clears it", `{"type":"confirmation","docId":"o","attempt":0,"ts":1,"fireRetry":true,"heldBack":"circuit breaker open: email service not called"}`,
			&mailer.SendError{Class: mailer.Transient, Status: 502, BodyBytes: 0},
			502, "answered 502 Bad Gateway (0 bytes)", "", "HTTP 502"},
		{"a refused configuration was answered: not a hold", "", &mailer.SendError{Class: mailer.Configuration, Status: 401, BodyBytes: 0},
			401, "answered 401 Unauthorized (0 bytes)", "", "HTTP 401"},
		{"a certificate refused: a request that failed, not a hold", "", &mailer.SendError{Class: mailer.Configuration, Err: &tls.CertificateVerificationError{Err: errors.New("x509")}},
			0, "tls: certificate verification failed", "", order.WhyNoAnswer},
		{"a settings file unreadable: held", "", &mailer.SendError{Class: mailer.Configuration, NotAttempted: true, Err: errors.New("read mail-auth-file: permission denied")},
			0, "", "read mail-auth-file: permission denied", order.WhyHeldBack},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := settle(t, tt.retryDoc, tt.sendErr)
			assert.Equal(t, tt.wantStatus, r.LastStatus, "lastStatus")
			assert.Equal(t, tt.wantError, r.LastError, "lastError")
			assert.Equal(t, tt.wantHeld, r.HeldBack, "heldBack")
			assert.Equal(t, tt.wantWhy, r.Why())
		})
	}
}

// On Couchbase, where the order's CAS stands for its incarnation, an order
// whose retry was dead-lettered for its content (its address blanked while
// the retry waited) and then mended is sent under the key its attempts
// had: one of them may have got through, its answer lost, and an edit
// changes the CAS. An order missing is not: a new order under the same key
// has a confirmation of its own.
func TestAMendedOrderIsSentUnderTheKeyItsDeadLetteredRetriesHad(t *testing.T) {
	cb := func(st store.State, cas uint64) store.State {
		st.Order.Incarnation, st.Retry.Incarnation, st.DeadLetter.Incarnation = 0, 0, 0
		if st.Order.Found() {
			st.Order.CAS = cas
		}
		return st
	}
	first := Decide(Change{Collection: order.Inbound, Key: "o"}, cb(state(paid, "", ""), 10), now, limits)
	require.Equal(t, Send, first.Action)
	require.Equal(t, "confirmation:o@10", first.IdempotencyKey)
	out := Settle(first, cb(state(paid, "", ""), 10), &mailer.SendError{Class: mailer.Transient}, now, limits, 0.5)
	require.Equal(t, "retry", out.Result)
	r := out.Retry
	r.FireRetry = true

	keyless := r
	keyless.IdempotencyKey = "" // the sample's, or the first release's: sent as confirmation:o
	for _, tt := range []struct {
		name, blanked string
		retry         order.RetryDoc
		wantKey       string
	}{
		{"address blanked", `{"email":"","paymentStatus":"paid"}`, r, "confirmation:o@10"},
		{"address blanked, a retry without a key", `{"email":"","paymentStatus":"paid"}`, keyless, "confirmation:o"},
		{"order deleted", "", r, "confirmation:o@12"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dl := Decide(Change{Collection: order.Retry, Key: "o"}, cb(state(tt.blanked, string(tt.retry.Encode()), ""), 11), now, limits)
			require.Equal(t, Write, dl.Action, dl.Reason)
			d, err := order.DecodeDeadLetter(dl.Writes[0].Value)
			require.NoError(t, err)
			if tt.retry.IdempotencyKey != "" {
				require.Equal(t, tt.retry.IdempotencyKey, d.IdempotencyKey, "%s: the dead letter keeps the retries' key", d.Reason)
			}
			again := Decide(Change{Collection: order.Inbound, Key: "o"}, cb(state(paid, "", string(dl.Writes[0].Value)), 12), now, limits)
			require.Equal(t, Send, again.Action, again.Reason)
			assert.Equal(t, tt.wantKey, again.IdempotencyKey, "dead-lettered %s", d.Reason)
		})
	}
}

// A retry document made malformed by hand (a field of the wrong type) is
// dead-lettered with what can be read of it: its attempts, and its key,
// under which an attempt may have got through, for a redrive to send
// under. A key that is not one of the order's is not taken.
func TestAMalformedRetryKeepsWhatCanBeRead(t *testing.T) {
	for _, c := range []struct {
		name, retry, key string
		attempts         int
		order            string // its key; "o" when none
	}{
		{"an order key ending like an incarnation, its key without one", `{"docId":"o@5","attempt":2,"nextAttemptAt":"soon","fireRetry":true,"idempotencyKey":"confirmation:o@5"}`,
			"confirmation:o@5", 2, "o@5"},
		{"a field of the wrong type", `{"docId":"o","attempt":3,"firstAttemptAt":5,"nextAttemptAt":"soon","fireRetry":true,"idempotencyKey":"confirmation:o@100"}`,
			"confirmation:o@100", 3, ""},
		{"another order's key", `{"docId":"o","attempt":2,"nextAttemptAt":"soon","fireRetry":true,"idempotencyKey":"confirmation:o1@100"}`,
			order.IdempotencyKey("o", 7), 2, ""},
		{"the key of order o@x", `{"docId":"o","attempt":2,"nextAttemptAt":"soon","fireRetry":true,"idempotencyKey":"confirmation:o@x@5"}`,
			order.IdempotencyKey("o", 7), 2, ""},
		{"the sample's key, without an incarnation", `{"docId":"o","attempt":2,"nextAttemptAt":"soon","fireRetry":true,"idempotencyKey":"confirmation:o"}`,
			"confirmation:o", 2, ""},
		{"another order's document", `{"docId":"p","attempt":4,"fireRetry":true,"idempotencyKey":"confirmation:p@3"}`,
			order.IdempotencyKey("o", 7), 4, ""},
		{"not JSON", `{"docId":"o",`, order.IdempotencyKey("o", 7), 0, ""},
		// Well-formed otherwise: sent under another order's key, it would
		// be answered as that one's replay, and this order marked
		// confirmed unmailed.
		{"well-formed, with another order's key", `{"docId":"o","attempt":2,"fireRetry":true,"idempotencyKey":"confirmation:victim@3"}`,
			order.IdempotencyKey("o", 7), 2, ""},
		{"well-formed, with a key of no order", `{"docId":"o","attempt":1,"fireRetry":true,"idempotencyKey":"k-1"}`,
			order.IdempotencyKey("o", 7), 1, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			key := cmp.Or(c.order, "o")
			st := state(paid, c.retry, "")
			st.Order.Key, st.Retry.Key = key, key
			p := Decide(Change{Collection: order.Retry, Key: key}, st, now, limits)
			require.Equal(t, Write, p.Action)
			require.Equal(t, []string{"insert deadletter/" + key + " malformed_retry_document", "remove retry/" + key}, summary(p.Writes))
			d, err := order.DecodeDeadLetter(p.Writes[0].Value)
			require.NoError(t, err)
			assert.Equal(t, c.key, d.IdempotencyKey)
			assert.Equal(t, c.attempts, d.Attempts)
		})
	}
}

// A flagged retry is claimed before it is sent: unflagged and due again a
// claim's time from now, so that the sweep flags it again only if this
// send's outcome is never written (a crash), and no other instance sends
// it meanwhile.
func TestAClaimHoldsTheRetryForItsTTL(t *testing.T) {
	p := Decide(Change{Collection: order.Retry, Key: "o"}, state(paid, flagged, ""), now, limits)
	require.Equal(t, Send, p.Action)
	require.Equal(t, []string{"replace retry/o"}, summary(p.Writes))
	claimed, err := order.DecodeRetryDoc(p.Writes[0].Value)
	require.NoError(t, err)
	assert.False(t, claimed.FireRetry, "unflagged")
	assert.Equal(t, now.Add(limits.ClaimTTL).UnixMilli(), claimed.NextAttemptAt, "due again a claim's time from now")
	assert.Equal(t, claimed, p.Retry, "sent as claimed")
}

// A hostile order's decode error (a field name of megabytes, twice) is cut
// short in its dead letter and its log line.
func TestAHostileOrdersDetailIsBounded(t *testing.T) {
	long := strings.Repeat("f", 1<<20)
	value := `{"email":"a@b.c","paymentStatus":"paid","` + long + `":1,"` + long + `":2}`
	p := Decide(Change{Collection: order.Inbound, Key: "o"}, state(value, "", ""), now, limits)
	require.Equal(t, Write, p.Action)
	require.Equal(t, order.ReasonMalformedOrder, p.Reason)
	assert.LessOrEqual(t, len(p.Detail), maxDetail+3)
	d, err := order.DecodeDeadLetter(p.Writes[0].Value)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(d.LastError), maxDetail+3)
	assert.Contains(t, d.LastError, "fff", "still names what was wrong")
}

// Where the store keeps the key a confirmation went out under with the
// order document (Couchbase, whose incarnations are not known), an order
// written back paid without its mark is marked again with that key, not
// mailed again under a new one; a document without it is a first send.
func TestAnOrderWhoseDocumentKeepsItsSentKeyIsMarkedAgain(t *testing.T) {
	t.Parallel()
	cb := state(paid, "", "")
	cb.Order.Incarnation = 0
	cb.Order.CAS = 55 // written back: another CAS than the send's
	require.Equal(t, Send, Decide(Change{Collection: order.Inbound, Key: "o"}, cb, now, limits).Action, "no key kept: a first send")

	cb.Order.Sent = "confirmation:o@10"
	p := Decide(Change{Collection: order.Inbound, Key: "o"}, cb, now, limits)
	require.Equal(t, Write, p.Action, p.Reason)
	assert.Equal(t, "sent before: marked again", p.Reason)
	assert.Contains(t, p.Warn, "confirmation:o@10")
	require.Equal(t, []string{"replace inbound/o"}, summary(p.Writes))
	assert.Contains(t, string(p.Writes[0].Value), `"confirmationEmailSent":true`)
	assert.Equal(t, uint64(55), p.Writes[0].CAS)
	assert.Equal(t, "confirmation:o@10", p.Writes[0].Sent)

	// What a crash between the writes of its outcome left (a retry, a dead
	// letter), or what the copy lacks, holds nothing back: it went.
	sent := func(o, r, d string) store.State {
		st := state(o, r, d)
		st.Order.Incarnation, st.Order.Sent = 0, "confirmation:o@10"
		return st
	}
	for _, tt := range []struct {
		name   string
		change Change
		state  store.State
		want   []string
	}{
		{"a retry left", Change{Collection: order.Inbound, Key: "o"}, sent(paid, notDue, ""), []string{"replace inbound/o", "remove retry/o"}},
		{"a dead letter left", Change{Collection: order.Inbound, Key: "o"}, sent(paid, "", deadPerm), []string{"replace inbound/o", "remove deadletter/o"}},
		{"a copy without its email", Change{Collection: order.Inbound, Key: "o"}, sent(`{"paymentStatus":"paid"}`, "", ""), []string{"replace inbound/o"}},
		{"its retry fires", Change{Collection: order.Retry, Key: "o"}, sent(paid, flagged, ""), []string{"replace inbound/o", "remove retry/o"}},
	} {
		p := Decide(tt.change, tt.state, now, limits)
		assert.Equal(t, "sent before: marked again", p.Reason, tt.name)
		assert.Equal(t, tt.want, summary(p.Writes), tt.name)
	}
}
