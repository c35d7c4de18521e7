package ops_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func openStore(t testing.TB) store.Store {
	t.Helper()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

func insert(t *testing.T, st store.Store, coll, key string, v []byte) {
	t.Helper()
	_, err := st.Insert(context.Background(), coll, key, v)
	require.NoError(t, err)
}

// record is the attempt record after outcomes, one attempt each, a second
// apart from an hour ago, keeping at most limit.
func record(t *testing.T, st store.Store, key string, limit int, outcomes ...string) []byte {
	d := order.AttemptsDoc{DocID: key, IdempotencyKey: thisOrdersKey(t, st, key)}
	for i, out := range outcomes {
		at := now.Add(-time.Hour + time.Duration(i)*time.Second)
		a := order.Attempt{At: at.UnixMilli(), DurationMs: 120, Status: 503, Class: "transient", Reason: "HTTP 503", Outcome: out, Instance: "i-1"}
		if out == "sent" {
			a.Status, a.Class, a.Reason = 200, "sent", ""
		}
		d = d.Add(a, limit, at)
	}
	return d.Encode()
}

func TestStoryConfirmedAfterRetries(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	insert(t, st, order.Inbound, "o1", []byte(`{"email":"alice@example.com","paymentStatus":"paid","confirmationEmailSent":true,"items":["secret"]}`))
	insert(t, st, order.Attempts, "o1", record(t, st, "o1", 20, "retry", "retry", "retry", "sent"))

	s, err := ops.OrderStory(context.Background(), st, "o1", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, ops.StateConfirmed, s.State)
	assert.True(t, s.Found)
	assert.True(t, s.Confirmed)
	assert.Equal(t, "paid", s.PaymentStatus)
	assert.Equal(t, thisOrdersKey(t, st, "o1"), s.IdempotencyKey, "the record's: the attempts sent it")
	require.Len(t, s.Attempts, 4)
	assert.Equal(t, 4, s.AttemptsTotal)
	for i, a := range s.Attempts {
		assert.Equal(t, i+1, a.N)
	}
	assert.Equal(t, "transient", s.Attempts[2].Class)
	assert.Equal(t, "sent", s.Attempts[3].Outcome)
	assert.Equal(t, "sent", s.Result)
	assert.Equal(t, now.Add(-time.Hour+3*time.Second), s.SettledAt)
	assert.Nil(t, s.Retry)
	assert.Nil(t, s.DeadLetter)

	b, err := json.Marshal(s)
	require.NoError(t, err)
	assert.NotContains(t, string(b), "alice@example.com")
	assert.NotContains(t, string(b), "secret")
	assert.Contains(t, string(b), `"settledAt":"2026-11-21T11:00:03Z"`)
}

func TestStoryRetry(t *testing.T) {
	t.Parallel()
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	tests := []struct {
		name string
		give order.RetryDoc
		want string
	}{
		{"due by nextAttemptAt", order.RetryDoc{Attempt: 2, TS: ms(-time.Minute), NextAttemptAt: ms(-time.Second), LastStatus: 503}, ops.StateRetryDue},
		{"flagged", order.RetryDoc{Attempt: 2, TS: ms(-time.Minute), NextAttemptAt: ms(time.Minute), FireRetry: true}, ops.StateRetryDue},
		{"later", order.RetryDoc{Attempt: 2, TS: ms(-time.Minute), NextAttemptAt: ms(time.Minute)}, ops.StateRetryScheduled},
		{"the sample's, a quantum old", order.RetryDoc{Attempt: 1, TS: ms(-time.Minute)}, ops.StateRetryDue},
		{"the sample's, not a quantum old yet", order.RetryDoc{Attempt: 1, TS: ms(-5 * time.Second)}, ops.StateRetryScheduled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := openStore(t)
			insert(t, st, order.Inbound, "o2", []byte(`{"email":"b@x","paymentStatus":"paid"}`))
			tt.give.Type, tt.give.DocID, tt.give.IdempotencyKey = order.TypeConfirmation, "o2", "confirmation:o2@1"
			insert(t, st, order.Retry, "o2", tt.give.Encode())

			s, err := ops.OrderStory(context.Background(), st, "o2", now, 15*time.Second)
			require.NoError(t, err)
			assert.Equal(t, tt.want, s.State)
			require.NotNil(t, s.Retry)
			assert.Equal(t, tt.give.Attempt, s.Retry.Attempt)
			assert.Equal(t, tt.give.FireRetry, s.Retry.FireRetry)
			assert.Equal(t, tt.give.NextAttemptAt == 0, s.Retry.NextAttemptAt.IsZero())
			assert.Equal(t, "confirmation:o2@1", s.IdempotencyKey)
			assert.Empty(t, s.Attempts)
			assert.NotNil(t, s.Attempts, "an empty list in JSON, not null")
		})
	}
}

func TestStoryDeadLettered(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	insert(t, st, order.Inbound, "o3", []byte(`{"email":"c@x","paymentStatus":"paid"}`))
	key := thisOrdersKey(t, st, "o3")
	dl := order.DeadLetterDoc{Type: order.TypeConfirmation, DocID: "o3", Reason: order.ReasonPermanent, LastStatus: 400,
		LastError: "HTTP 400", Attempts: 1, DeadAt: now.Add(-time.Minute).UnixMilli(), RedriveCount: 1, IdempotencyKey: key}
	insert(t, st, order.DeadLetter, "o3", dl.Encode())
	insert(t, st, order.Attempts, "o3", record(t, st, "o3", 20, "dead_letter"))

	s, err := ops.OrderStory(context.Background(), st, "o3", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, ops.StateDeadLettered, s.State)
	assert.Equal(t, &ops.DeadLetterInfo{Reason: order.ReasonPermanent, LastStatus: 400, LastError: "HTTP 400", Attempts: 1,
		DeadSince: now.Add(-time.Minute), Redrives: 1}, s.DeadLetter)
	assert.Equal(t, key, s.IdempotencyKey)
	assert.Equal(t, "dead_letter", s.Result)
	require.Len(t, s.Attempts, 1)

	// The order deleted and created again under its key: the dead letter
	// is the deleted one's, and the new order is sent (the watcher's rule).
	require.NoError(t, st.Remove(context.Background(), order.Inbound, "o3", 0))
	insert(t, st, order.Inbound, "o3", []byte(`{"email":"c@x","paymentStatus":"paid"}`))
	require.NotEqual(t, key, thisOrdersKey(t, st, "o3"))
	s, err = ops.OrderStory(context.Background(), st, "o3", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, ops.StatePendingFirstSend, s.State, "the dead letter and the attempts are the deleted order's")
	assert.Empty(t, s.Attempts, "the deleted order's attempts")
	assert.Zero(t, s.AttemptsTotal)
	assert.Empty(t, s.Result)
}

// thisOrdersKey is the idempotency key of the order stored under key now
// (of its incarnation, where the store keeps one).
func thisOrdersKey(t *testing.T, st store.Store, key string) string {
	t.Helper()
	state, err := st.State(context.Background(), key)
	require.NoError(t, err)
	return order.IdempotencyKey(key, state.Order.Incarnation)
}

func TestStoryStates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give map[string]string // collection -> document
		want string
		// wantUnreadable is the collection of the unreadable document.
		wantUnreadable string
	}{
		{name: "not paid", give: map[string]string{order.Inbound: `{"email":"d@x","paymentStatus":"pending"}`}, want: ops.StateNotPaid},
		{name: "pending first send", give: map[string]string{order.Inbound: `{"email":"d@x","paymentStatus":"paid"}`}, want: ops.StatePendingFirstSend},
		// Its dead letter purged: it said "pending first send", and
		// nothing was ever going to send it.
		{
			name: "dead letter purged",
			give: map[string]string{order.Inbound: `{"email":"d@x","paymentStatus":"paid"}`,
				order.Attempts: `{"type":"attempts","docId":"k","total":3,"settledAt":5,"result":"dead_letter","attempts":[{"n":3,"at":4,"outcome":"dead_letter"}]}`},
			want: ops.StateGivenUp,
		},
		{
			name: "retry removed",
			give: map[string]string{order.Inbound: `{"email":"d@x","paymentStatus":"paid"}`,
				order.Attempts: `{"type":"attempts","docId":"k","total":1,"attempts":[{"n":1,"at":4,"outcome":"retry"}]}`},
			want: ops.StateGivenUp,
		},
		{
			name: "sent, then written back unconfirmed",
			give: map[string]string{order.Inbound: `{"email":"d@x","paymentStatus":"paid"}`,
				order.Attempts: `{"type":"attempts","docId":"k","total":1,"settledAt":5,"result":"sent","attempts":[{"n":1,"at":4,"outcome":"sent"}]}`},
			want: ops.StatePendingFirstSend,
		},
		{name: "unknown order", give: map[string]string{order.DeadLetter: `{"docId":"k","reason":"order_missing"}`}, want: ops.StateUnknownOrder},
		{name: "unreadable order", give: map[string]string{order.Inbound: `{"paymentStatus":`}, want: ops.StateUnreadableOrder, wantUnreadable: order.Inbound},
		{
			name: "unreadable retry",
			give: map[string]string{order.Inbound: `{"email":"d@x","paymentStatus":"paid"}`, order.Retry: `{"docId":"k","attempt":"two"}`},
			want: ops.StateUnreadableRetry, wantUnreadable: order.Retry,
		},
		{
			name: "unreadable attempt record",
			give: map[string]string{order.Inbound: `{"email":"d@x","paymentStatus":"paid"}`, order.Attempts: `[]`},
			want: ops.StatePendingFirstSend, wantUnreadable: order.Attempts,
		},
		{
			name: "dead letter after the retry",
			give: map[string]string{
				order.Inbound:    `{"email":"d@x","paymentStatus":"paid"}`,
				order.Retry:      `{"docId":"k","attempt":3,"fireRetry":true,"redriveCount":1}`,
				order.DeadLetter: `{"docId":"k","reason":"attempts_exhausted","redriveCount":1}`,
			},
			want: ops.StateDeadLettered,
		},
		{
			name: "retry of an order no longer paid: dropped",
			give: map[string]string{
				order.Inbound: `{"email":"d@x","paymentStatus":"refunded"}`,
				order.Retry:   `{"docId":"k","attempt":3,"fireRetry":true}`,
			},
			want: ops.StateNotPaid,
		},
		{
			name: "retry of an order no longer paid, a dead letter after it: the dead letter stands",
			give: map[string]string{
				order.Inbound:    `{"email":"d@x","paymentStatus":"refunded"}`,
				order.Retry:      `{"docId":"k","attempt":3,"fireRetry":true}`,
				order.DeadLetter: `{"docId":"k","reason":"attempts_exhausted"}`,
			},
			want: ops.StateDeadLettered,
		},
		{
			name: "unreadable dead letter after the retry",
			give: map[string]string{
				order.Inbound:    `{"email":"d@x","paymentStatus":"paid"}`,
				order.Retry:      `{"docId":"k","attempt":3,"fireRetry":true}`,
				order.DeadLetter: `{"docId":"k","reason":7}`,
			},
			want: ops.StateUnreadableDeadLetter, wantUnreadable: order.DeadLetter,
		},
		{
			name: "a dead letter an edit of the order mends, beside a retry",
			give: map[string]string{
				order.Inbound:    `{"email":"d@x","paymentStatus":"paid"}`,
				order.Retry:      `{"docId":"k","attempt":3,"fireRetry":true}`,
				order.DeadLetter: `{"docId":"k","reason":"no_email"}`,
			},
			want: ops.StateRetryDue,
		},
		{
			name: "redriven, dead letter not yet removed",
			give: map[string]string{
				order.Inbound:    `{"email":"d@x","paymentStatus":"paid"}`,
				order.Retry:      `{"docId":"k","attempt":0,"fireRetry":true,"redriveCount":2}`,
				order.DeadLetter: `{"docId":"k","reason":"attempts_exhausted","redriveCount":1}`,
			},
			want: ops.StateRetryDue,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := openStore(t)
			for coll, doc := range tt.give {
				insert(t, st, coll, "k", []byte(doc))
			}
			s, err := ops.OrderStory(context.Background(), st, "k", now, 15*time.Second)
			require.NoError(t, err)
			assert.Equal(t, tt.want, s.State)
			if tt.wantUnreadable == "" {
				assert.Empty(t, s.Unreadable)
				return
			}
			require.Len(t, s.Unreadable, 1)
			assert.Equal(t, tt.wantUnreadable, s.Unreadable[0].Collection)
			assert.Contains(t, s.Unreadable[0].Error, "malformed document")
		})
	}
}

func TestStoryUnknownKey(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	_, err := ops.OrderStory(context.Background(), st, "nope", now, 15*time.Second)
	require.ErrorIs(t, err, ops.ErrNothingStored)
	assert.EqualError(t, err, `no order, retry, dead letter or attempt record under key "nope"`)
}

func TestStoryKeepsTheLatestAttempts(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	insert(t, st, order.Inbound, "o5", []byte(`{"email":"e@x","paymentStatus":"paid"}`))
	insert(t, st, order.Attempts, "o5", record(t, st, "o5", 3, "retry", "retry", "retry", "retry", "retry"))

	s, err := ops.OrderStory(context.Background(), st, "o5", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 5, s.AttemptsTotal)
	require.Len(t, s.Attempts, 3)
	assert.Equal(t, []int{3, 4, 5}, []int{s.Attempts[0].N, s.Attempts[1].N, s.Attempts[2].N})
	assert.True(t, s.SettledAt.IsZero())
	assert.Empty(t, s.Result)
}

// A retry without nextAttemptAt (the sample's, or --backoff fixed) is due a
// quantum after its last attempt: the service's, or allow_retrys'. The
// story says so, as retries status counts it.
func TestStoryTellsAQuantumRetryDue(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	insert(t, st, order.Inbound, "q1", []byte(`{"email":"e@x","paymentStatus":"paid"}`))
	ts := now.Add(-time.Minute).UnixMilli()
	insert(t, st, order.Retry, "q1", []byte(`{"type":"confirmation","docId":"q1","attempt":1,"ts":`+strconv.FormatInt(ts, 10)+`}`))

	s, err := ops.OrderStory(context.Background(), st, "q1", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, ops.StateRetryDue, s.State, "a minute old, due after 15s")
	s, err = ops.OrderStory(context.Background(), st, "q1", now, 2*time.Minute)
	require.NoError(t, err)
	assert.Equal(t, ops.StateRetryScheduled, s.State, "a minute old, due after 2m")

	insert(t, st, order.Retry, order.ControlKey, []byte(`{"quantum":"2m"}`))
	s, err = ops.OrderStory(context.Background(), st, "q1", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, ops.StateRetryScheduled, s.State, "allow_retrys' quantum wins")
}

// TestAnUnreadableDocumentIsSaidShortly: a decode error names a
// document's fields, which a broken or hostile one may make any length; the
// tools say at most ops.MaxDetail of it, as the service's dead letters do
// (a reviewer: 400KB from `orders show` for one order).
func TestAnUnreadableDocumentIsSaidShortly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	big := strings.Repeat("x", 200_000)
	put(t, st, order.Inbound, "k", []byte(`{"email":"ann@example.com","paymentStatus":"paid","`+big+`":1,"`+big+`":2}`))
	put(t, st, order.DeadLetter, "k", []byte(`{"docId":"k","reason":"permanent_error","`+big+`":1,"`+big+`":2}`))

	s, err := ops.OrderStory(ctx, st, "k", time.Now(), time.Second)
	require.NoError(t, err)
	require.Len(t, s.Unreadable, 2)
	for _, u := range s.Unreadable {
		assert.LessOrEqual(t, len(u.Error), ops.MaxDetail+len("..."), u.Collection)
		assert.Contains(t, u.Error, "xxx", "the error still names the field")
	}
	var seen int
	require.NoError(t, ops.EachDeadLetter(ctx, st, "", func(d ops.DeadLetter) error {
		seen++
		assert.Equal(t, ops.ReasonUnreadable, d.Reason)
		assert.LessOrEqual(t, len(d.LastError), ops.MaxDetail+len("..."))
		return nil
	}))
	assert.Equal(t, 1, seen)
}

// sentKept is a store that keeps with the order the key its confirmation
// went out under, as Couchbase does (store.Doc.Sent).
type sentKept struct {
	store.Store
	sent string
}

func (s sentKept) State(ctx context.Context, key string) (store.State, error) {
	st, err := s.Store.State(ctx, key)
	st.Order.Sent = s.sent
	return st, err
}

// The key kept with the order is the one its confirmation went out under:
// the story says so, over a retry's left behind.
func TestStoryTellsTheKeyKeptWithTheOrder(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	insert(t, st, order.Inbound, "k", []byte(`{"email":"d@x","paymentStatus":"paid"}`))
	insert(t, st, order.Retry, "k", []byte(`{"docId":"k","attempt":1,"ts":1,"idempotencyKey":"confirmation:k@1"}`))
	s, err := ops.OrderStory(context.Background(), sentKept{st, "confirmation:k@9"}, "k", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "confirmation:k@9", s.SentUnder)
	assert.Equal(t, "confirmation:k@9", s.IdempotencyKey)
	s, err = ops.OrderStory(context.Background(), st, "k", now, 15*time.Second)
	require.NoError(t, err)
	assert.Empty(t, s.SentUnder)
	assert.Equal(t, "confirmation:k@1", s.IdempotencyKey, "the retry's")
}

// outcomeMeanwhile is a store on which a failed first send's outcome is
// written, as on Couchbase (the retry, then the attempt record), just
// after each State read.
type outcomeMeanwhile struct {
	store.Store
	t *testing.T
}

func (s outcomeMeanwhile) State(ctx context.Context, key string) (store.State, error) {
	st, err := s.Store.State(ctx, key)
	if _, rerr := s.Get(ctx, order.Retry, key); errors.Is(rerr, store.ErrNotFound) {
		idem := thisOrdersKey(s.t, s.Store, key)
		retry := order.RetryDoc{Type: order.TypeConfirmation, DocID: key, Attempt: 1, TS: now.UnixMilli(), IdempotencyKey: idem}
		insert(s.t, s.Store, order.Retry, key, retry.Encode())
		rec := order.AttemptsDoc{DocID: key, IdempotencyKey: idem}.Add(order.Attempt{At: now.UnixMilli(), Class: "transient", Outcome: "retry"}, 20, now)
		insert(s.t, s.Store, order.Attempts, key, rec.Encode())
	}
	return st, err
}

// A story read while a first send's failure is written is never "given
// up": the attempt record it reads comes with the retry it names.
func TestAStoryReadAsAnOutcomeIsWrittenDoesNotGiveUp(t *testing.T) {
	t.Parallel()
	st := outcomeMeanwhile{Store: openStore(t), t: t}
	insert(t, st, order.Inbound, "o", []byte(`{"email":"e@x","paymentStatus":"paid"}`))
	s, err := ops.OrderStory(context.Background(), st, "o", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, ops.StatePendingFirstSend, s.State, "read before the outcome")
	s, err = ops.OrderStory(context.Background(), st, "o", now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, ops.StateRetryScheduled, s.State, "read after it")
	assert.Equal(t, 1, s.AttemptsTotal)
}
