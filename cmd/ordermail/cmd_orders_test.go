package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seedOrderStory stores a paid order whose three sends, a minute apart from
// at, failed, keeping the latest two attempts and a retry an hour after at;
// its last try was held back by the circuit breaker; it returns the store's
// URL and the order's idempotency key.
func seedOrderStory(t *testing.T, at time.Time) (storeURL, key string) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(ctx, embedded.Config{Path: path})
	require.NoError(t, err)
	defer st.Close()
	_, err = st.Insert(ctx, order.Inbound, "order_7", []byte(`{"email":"ann@example.com","paymentStatus":"paid"}`))
	require.NoError(t, err)
	state, err := st.State(ctx, "order_7")
	require.NoError(t, err)
	key = order.IdempotencyKey("order_7", state.Order.Incarnation)
	rec := order.AttemptsDoc{DocID: "order_7", IdempotencyKey: key}
	for i := range 3 {
		a := order.Attempt{At: at.Add(time.Duration(i) * time.Minute).UnixMilli(), DurationMs: 1500, Status: 503,
			Class: "transient", Reason: "HTTP 503", Outcome: "retry", Instance: "host-a"}
		rec = rec.Add(a, 2, at)
	}
	retry := order.RetryDoc{Type: order.TypeConfirmation, DocID: "order_7", Attempt: 3, TS: at.Add(2 * time.Minute).UnixMilli(),
		NextAttemptAt: at.Add(time.Hour).UnixMilli(), LastStatus: 503, LastError: "transient failure: HTTP 503",
		HeldBack: "circuit breaker open: email service not called", IdempotencyKey: key}
	for coll, doc := range map[string][]byte{
		order.Retry:    retry.Encode(),
		order.Attempts: rec.Encode(),
	} {
		_, err := st.Insert(ctx, coll, "order_7", doc)
		require.NoError(t, err)
	}
	return "file:" + path, key
}

func TestOrdersShow(t *testing.T) {
	// The command reads the clock: the retry must be ahead of it.
	at := time.Now().UTC().Truncate(time.Second).Add(250 * time.Millisecond)
	storeURL, key := seedOrderStory(t, at)
	stamp := func(d time.Duration) string { return at.Add(d).Format("2006-01-02T15:04:05.000Z") }

	out, _, err := cli(t, "orders", "show", "--store", storeURL, "order_7")
	require.NoError(t, err)
	assert.Contains(t, out, "state:            retry scheduled\n")
	assert.Contains(t, out, "idempotency key:  "+key+"\n")
	// No allow_retrys: retries are paused, and the retry waits for their start.
	assert.Contains(t, out, "next retry:       at "+stamp(time.Hour)+" once retries start (they are paused: `ordermail retries start`); "+
		"3 attempts in this budget, 0 redrives, last failure HTTP 503: transient failure: HTTP 503\n")
	assert.Contains(t, out, "held back:        circuit breaker open: email service not called (the last try made no request)\n")
	assert.Regexp(t, `N\s+AT\s+DURATION\s+STATUS\s+CLASS\s+OUTCOME\s+INSTANCE\s+REASON`, out)
	assert.Regexp(t, `\n2\s+`+stamp(time.Minute)+`\s+1.5s\s+503\s+transient\s+retry\s+host-a\s+HTTP 503\n`, out)
	assert.Regexp(t, `\n3\s+`+stamp(2*time.Minute)+`\s+`, out)
	assert.Contains(t, out, "(showing the latest 2 of 3 attempts)\n")
	assert.NotContains(t, out, "ann@example.com")

	out, _, err = cli(t, "orders", "show", "--store", storeURL, "--json", "order_7")
	require.NoError(t, err)
	var s ops.Story
	require.NoError(t, json.Unmarshal([]byte(out), &s), out)
	assert.Equal(t, "order_7", s.Key)
	assert.Equal(t, ops.StateRetryScheduled, s.State)
	assert.Equal(t, 3, s.AttemptsTotal)
	require.Len(t, s.Attempts, 2)
	assert.Equal(t, 2, s.Attempts[0].N)
	require.NotNil(t, s.Retry)
	assert.Equal(t, 3, s.Retry.Attempt)
	assert.Equal(t, "circuit breaker open: email service not called", s.Retry.HeldBack)
	assert.True(t, s.RetriesPaused)
	assert.NotContains(t, out, "ann@example.com")

	st := openStore(t, storeURL)
	_, err = st.Insert(t.Context(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	out, _, err = cli(t, "orders", "show", "--store", storeURL, "order_7")
	require.NoError(t, err)
	assert.Contains(t, out, "next retry:       at "+stamp(time.Hour)+"; 3 attempts in this budget, 0 redrives, last failure HTTP 503: transient failure: HTTP 503\n",
		"retries started")

	// Held back from its first try: no failure to show.
	_, err = st.Insert(t.Context(), order.Retry, "order_8", order.RetryDoc{Type: order.TypeConfirmation, DocID: "order_8",
		TS: at.UnixMilli(), NextAttemptAt: at.Add(time.Hour).UnixMilli(), HeldBack: "circuit breaker open: email service not called"}.Encode())
	require.NoError(t, err)
	out, _, err = cli(t, "orders", "show", "--store", storeURL, "order_8")
	require.NoError(t, err)
	assert.Contains(t, out, "0 attempts in this budget, 0 redrives, last failure none: no request made yet\n")

	// Its retry removed (a purged dead letter likewise): given up, and
	// said why, not "pending first send".
	r, err := st.Get(t.Context(), order.Retry, "order_7")
	require.NoError(t, err)
	require.NoError(t, st.Remove(t.Context(), order.Retry, "order_7", r.CAS))
	out, _, err = cli(t, "orders", "show", "--store", storeURL, "order_7")
	require.NoError(t, err)
	assert.Contains(t, out, "state:            given up\n                  (attempted, and no retry or dead letter is left")

	// Paid, nothing else stored: pending, or given up before any attempt
	// was recorded; said so.
	_, err = st.Insert(t.Context(), order.Inbound, "order_9", []byte(`{"email":"x@example.com","paymentStatus":"paid"}`))
	require.NoError(t, err)
	out, _, err = cli(t, "orders", "show", "--store", storeURL, "order_9")
	require.NoError(t, err)
	assert.Contains(t, out, "state:            pending first send\n                  (paid, and nothing else is stored for it")
}

func TestOrdersShowBadInvocations(t *testing.T) {
	storeURL, _ := seedOrderStory(t, time.Now())
	tests := []struct {
		give []string
		want string
	}{
		{[]string{}, "orders show: give exactly one order key, got 0"},
		{[]string{"order_7", "order_8"}, "orders show: give exactly one order key, got 2"},
		{[]string{"order_8"}, `no order, retry, dead letter or attempt record under key "order_8"`},
	}
	for _, tt := range tests {
		_, _, err := cli(t, append([]string{"orders", "show", "--store", storeURL}, tt.give...)...)
		require.EqualError(t, err, tt.want)
	}
}

// Where the store keeps the key an order's confirmation went out under
// with the order (Couchbase), the story says the order was sent under it.
func TestOrdersShowSaysTheKeyKeptWithTheOrder(t *testing.T) {
	var b strings.Builder
	require.NoError(t, printStory(&b, ops.Story{Key: "o", Found: true, State: ops.StatePendingFirstSend, PaymentStatus: "paid",
		IdempotencyKey: "confirmation:o@7", SentUnder: "confirmation:o@7"}))
	assert.Contains(t, b.String(), "idempotency key:  confirmation:o@7\nsent under it:    yes")
	b.Reset()
	require.NoError(t, printStory(&b, ops.Story{Key: "o", Found: true, State: ops.StatePendingFirstSend, PaymentStatus: "paid",
		IdempotencyKey: "confirmation:o@7"}))
	assert.NotContains(t, b.String(), "sent under it")
}
