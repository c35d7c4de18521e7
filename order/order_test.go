package order_test

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMarkConfirmedKeepsOtherFields(t *testing.T) {
	t.Parallel()
	got, err := order.MarkConfirmed([]byte(`{"email":"a@example.com","paymentStatus":"paid","extra":{"x":[1,2]},"confirmationEmailSent":false}`))
	require.NoError(t, err)
	assert.JSONEq(t, `{"email":"a@example.com","paymentStatus":"paid","extra":{"x":[1,2]},"confirmationEmailSent":true}`, string(got))
	_, err = order.MarkConfirmed([]byte(`[]`))
	assert.ErrorIs(t, err, order.ErrMalformed)
}

func TestRetryDocLifecycle(t *testing.T) {
	t.Parallel()
	t0 := time.UnixMilli(1632775908319)
	r := order.RetryDoc{Type: order.TypeConfirmation, DocID: "order_140"}.Failed(t0)
	assert.JSONEq(t, `{"type":"confirmation","docId":"order_140","attempt":1,"ts":1632775908319,"fireRetry":false,"firstAttemptAt":1632775908319}`, string(r.Encode()))
	r.FireRetry = true
	r2 := r.Failed(t0.Add(time.Second))
	assert.Equal(t, order.RetryDoc{Type: "confirmation", DocID: "order_140", Attempt: 2, TS: 1632775909319, FirstAttemptAt: 1632775908319}, r2)

	back, err := order.DecodeRetryDoc(r2.Encode())
	require.NoError(t, err)
	assert.Equal(t, r2, back)
}

func TestDecodeErrorsSayWhatIsWrong(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		want string
	}{
		{``, "not a JSON object"},
		{`"paid"`, "not a JSON object"},
		{`{"paymentStatus":true}`, "field paymentStatus is a JSON bool, want string"},
		{`{"email":1}`, "field email is a JSON number, want string"},
	}
	for _, tt := range tests {
		_, err := order.DecodeOrder([]byte(tt.give))
		assert.ErrorIs(t, err, order.ErrMalformed, tt.give)
		assert.ErrorContains(t, err, tt.want, tt.give)
	}
	_, err := order.DecodeRetryDoc([]byte(`{"docId":"o","attempt":-1}`))
	assert.ErrorContains(t, err, "attempt -1 is negative")
	_, err = order.DecodeRetryDoc([]byte(`{"docId":"o","attempt":1e40}`))
	assert.ErrorContains(t, err, "field attempt")

	// No sweep would find these due: on Couchbase a null nextAttemptAt is
	// neither a time nor absent.
	_, err = order.DecodeRetryDoc([]byte(`{"docId":"o","attempt":1,"ts":1,"nextAttemptAt":null}`))
	assert.ErrorContains(t, err, "nextAttemptAt is null")
	_, err = order.DecodeRetryDoc([]byte(`{"docId":"o","attempt":1,"ts":null}`))
	assert.ErrorContains(t, err, "neither nextAttemptAt nor ts says when the retry is due")
	_, err = order.DecodeRetryDoc([]byte(`{"docId":"o","attempt":1}`))
	assert.ErrorContains(t, err, "neither nextAttemptAt nor ts says when the retry is due")
	// Nor this one on Couchbase, whose sweep takes null for neither
	// missing nor false; with a nextAttemptAt or without.
	for _, doc := range []string{`{"docId":"o","attempt":1,"ts":1,"nextAttemptAt":5,"fireRetry":null}`, `{"docId":"o","attempt":1,"ts":1,"fireRetry":null}`} {
		_, err = order.DecodeRetryDoc([]byte(doc))
		assert.ErrorContains(t, err, "fireRetry is null", doc)
	}
	for _, ok := range []string{
		`{"docId":"o","attempt":1,"fireRetry":true}`, // flagged: due now
		`{"docId":"o","attempt":1,"ts":null,"nextAttemptAt":5}`,
		`{"docId":"o","attempt":1,"ts":0}`,
		`{"docId":"o","attempt":1,"ts":1,"nextAttemptAt":5,"lastError":"null"}`, // a null in a text
	} {
		_, err = order.DecodeRetryDoc([]byte(ok))
		assert.NoError(t, err, ok)
	}
}

func TestIdempotencyKeyIsStablePerOrder(t *testing.T) {
	t.Parallel()
	assert.Equal(t, order.IdempotencyKey("order_1", 7), order.IdempotencyKey("order_1", 7))
	assert.NotEqual(t, order.IdempotencyKey("order_1", 7), order.IdempotencyKey("order_2", 7))
	assert.NotEqual(t, order.IdempotencyKey("order_1", 7), order.IdempotencyKey("order_1", 8), "an order created again")
	assert.Equal(t, "confirmation:order_1", order.IdempotencyKey("order_1", 0), "the store cannot tell incarnations")
	for _, k := range []string{"order_1", "a@b", "x@12@3", "@", ""} {
		assert.Equal(t, k, order.OrderKeyOf(order.IdempotencyKey(k, 42)), k)
	}
	assert.Equal(t, "a@b", order.OrderKeyOf(order.IdempotencyKey("a@b", 0)))
}

func TestIsKeyOf(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"order_1", "a@b", "x@12@3", "o@5", "@", ""} {
		for _, inc := range []uint64{0, 7, 1 << 63} {
			assert.True(t, order.IsKeyOf(order.IdempotencyKey(k, inc), k), "%s@%d", k, inc)
		}
	}
	assert.True(t, order.IsKeyOf("confirmation:o@5", "o"), "order o's, incarnation 5")
	assert.True(t, order.IsKeyOf("confirmation:o@5", "o@5"), "order o@5's, no incarnation")
	for _, k := range []string{"confirmation:o@x@5", "confirmation:o1@5", "confirmation:o@", "confirmation:o@0",
		"confirmation:o@05", "confirmation:o@+5", "confirmation:o@5x", "o@5", "confirmation:", "k-1"} {
		assert.False(t, order.IsKeyOf(k, "o"), k)
	}
}

func TestCountersSaturate(t *testing.T) {
	t.Parallel()
	assert.Equal(t, math.MaxInt, order.Incr(math.MaxInt))
	assert.Equal(t, 2, order.Incr(1))
	r := order.RetryDoc{DocID: "o", Attempt: math.MaxInt}.Failed(time.Now())
	assert.Equal(t, math.MaxInt, r.Attempt)
}

// Go's decoders match a field's name in any case, the sample's JavaScript
// and N1QL in its own: a known field in another case is malformed, alone
// (paid to one reader and not to the others) or beside its own spelling
// (which of the two decides?). Other names in any case are no field of ours.
func TestKnownFieldsInAnotherCaseAreMalformed(t *testing.T) {
	t.Parallel()
	for give, want := range map[string]string{
		`{"email":"a@b.c","paymentStatus":"pending","PAYMENTSTATUS":"paid"}`:                                  "field PAYMENTSTATUS is paymentStatus in another case",
		`{"email":"a@b.c","PaymentStatus":"paid"}`:                                                            "field PaymentStatus is paymentStatus in another case",
		`{"Email":"a@b.c","paymentStatus":"paid"}`:                                                            "field Email is email in another case",
		`{"email":"a@b.c","paymentStatus":"paid","confirmationEmailSent":false,"ConfirmationEmailSent":true}`: "ConfirmationEmailSent",
		`{"\u0045mail":"a@b.c","paymentStatus":"paid"}`:                                                       "field Email is email",
	} {
		_, err := order.DecodeOrder([]byte(give))
		assert.ErrorIs(t, err, order.ErrMalformed, give)
		assert.ErrorContains(t, err, want, give)
	}
	o, err := order.DecodeOrder([]byte(`{"email":"a@b.c","paymentStatus":"paid","id":1,"ID":2,"Items":[]}`))
	require.NoError(t, err)
	assert.Equal(t, order.StatusPaid, o.PaymentStatus)
}

func TestDuplicateNamesAreMalformed(t *testing.T) {
	t.Parallel()
	for _, give := range []string{
		`{"paymentStatus":"paid","paymentStatus":"initiated"}`,
		`{"a":{"x":[1,{"y":2}]},"email":"a@b","email":"c@d"}`,
		`{"email":"a@b","\u0065mail":"c@d"}`,
		`{"a":"x\"y,\"email\":","email":1,"email":2}`,
		// Beyond the few names compared as they stand, and an escaped one
		// first: both kinds of lookup.
		`{"n1":1,"n2":2,"n3":3,"n4":4,"n5":5,"n6":6,"n7":7,"n8":8,"n9":9,"n10":10,"n11":11,"n12":12,"n13":13,"n14":14,"n15":15,"n16":16,"n17":17,"n3":3}`,
		`{"\u0065mail":"c@d","email":"a@b"}`,
	} {
		_, err := order.DecodeOrder([]byte(give))
		assert.ErrorIs(t, err, order.ErrMalformed, give)
		assert.ErrorContains(t, err, "appears more than once", give)
	}
	_, err := order.DecodeOrder([]byte(`{"n1":1,"n2":2,"n3":3,"n4":4,"n5":5,"n6":6,"n7":7,"n8":8,"n9":9,"n10":10,"n11":11,"n12":12,"n13":13,"n14":14,"n15":15,"n16":16,"n3":3}`))
	assert.ErrorContains(t, err, "field n3 appears more than once")
	for _, give := range []string{
		`{"a":{"x":1},"b":{"x":2},"email":"e"}`,
		`{"a":[{"email":1},{"email":2}],"email":"e"}`,
		`{"a":"\"email\":","email":"e"}`,
	} {
		_, err := order.DecodeOrder([]byte(give))
		assert.NoError(t, err, "the same name elsewhere is fine: %s", give)
	}
}

// TestSetFieldEditsInPlace: marking an order confirmed edits its bytes and
// means what decoding, setting and encoding it again would, for every
// sample, generated and hostile document; anything else is kept byte for
// byte.
func TestSetFieldEditsInPlace(t *testing.T) {
	t.Parallel()
	docs := [][]byte{
		[]byte(`{}`), []byte(` { } `), []byte(`{"confirmationEmailSent":false}`),
		[]byte(`{"a":1, "confirmationEmailSent" : false , "b":[{"confirmationEmailSent":false}]}`),
		[]byte(`{"note":"\"confirmationEmailSent\":false","x":{"y":"}"}}`),
		[]byte(`{"confirmation\u0045mailSent":null,"z":"\\"}`),
		[]byte("{\n  \"email\": \"a@b\",\n  \"paymentStatus\": \"paid\"\n}\n"),
		[]byte(`{"confirmationEmailSent":{"nested":[1,2,"]"]},"after":true}`),
		[]byte(`{"n":1e999,"confirmationEmailSent":false}`),
	}
	for _, d := range fixtures.Generate(200, 3) {
		docs = append(docs, d.Value)
	}
	hostile, err := fixtures.Hostile()
	require.NoError(t, err)
	for _, c := range hostile {
		docs = append(docs, c.Value)
	}
	for _, raw := range docs {
		got, err := order.MarkConfirmed(raw)
		var want map[string]json.RawMessage
		wantErr := json.Unmarshal(raw, &want)
		_, derr := order.DecodeOrder(raw)
		if derr != nil && err != nil {
			continue // refused, as the decoder refuses it
		}
		if !assert.NoError(t, err, "%q", raw) || !assert.NoError(t, wantErr, "%q", raw) {
			continue
		}
		want["confirmationEmailSent"] = json.RawMessage(`true`)
		var gotMap map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(got, &gotMap), "%q -> %q", raw, got)
		assert.Equal(t, len(want), len(gotMap), "%q -> %q", raw, got)
		for k, v := range want {
			var a, b bytes.Buffer
			require.NoError(t, json.Compact(&a, v))
			require.NoError(t, json.Compact(&b, gotMap[k]), "%s in %q -> %q", k, raw, got)
			assert.Equal(t, a.String(), b.String(), "%s in %q -> %q", k, raw, got)
		}
		assert.True(t, json.Valid(got))
		if derr == nil {
			o, err := order.DecodeOrder(got)
			require.NoError(t, err, "%q", got)
			assert.True(t, o.ConfirmationEmailSent)
		}
	}
}

// TestRetryDue: what shows a retry as due to a person uses the sweeps'
// rule (store/embedded/sweep.go, store/couchbase's dueUnflagged):
// nextAttemptAt <= now, or without one ts < now - quantum; neither, never.
func TestRetryDue(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	q := 15 * time.Second
	tests := []struct {
		give order.RetryDoc
		want bool
	}{
		{order.RetryDoc{NextAttemptAt: now.UnixMilli()}, true},
		{order.RetryDoc{NextAttemptAt: now.UnixMilli() + 1, TS: 1}, false},
		{order.RetryDoc{TS: now.Add(-q).UnixMilli()}, false},
		{order.RetryDoc{TS: now.Add(-q).UnixMilli() - 1}, true},
		{order.RetryDoc{TS: 1}, true},
		{order.RetryDoc{}, false}, // neither ts nor nextAttemptAt: no sweep flags it
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tt.give.Due(now, q), "%+v", tt.give)
	}
	assert.Equal(t, now.Add(q), order.RetryDoc{TS: now.UnixMilli()}.DueAt(q))
	assert.Equal(t, now, order.RetryDoc{NextAttemptAt: now.UnixMilli(), TS: 5}.DueAt(q))
}
