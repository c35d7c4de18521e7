package ops_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// deadLetters stores n dead letters keyed prefix00000..., every tenth
// of reason rare, the others permanent_error.
func deadLetters(t *testing.T, st store.Store, prefix string, n int) {
	t.Helper()
	for i := range n {
		reason := order.ReasonPermanent
		if i%10 == 9 {
			reason = "rare"
		}
		key := fmt.Sprintf("%s%05d", prefix, i)
		insert(t, st, order.DeadLetter, key, order.DeadLetterDoc{DocID: key, Reason: reason, LastStatus: 400, Attempts: 1}.Encode())
	}
}

func ids(dls []ops.DeadLetter) []string {
	out := make([]string, len(dls))
	for i, d := range dls {
		out[i] = d.ID
	}
	return out
}

func TestListDeadLetterPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	deadLetters(t, st, "a", 30)
	deadLetters(t, st, "b", 30)
	insert(t, st, order.DeadLetter, "b00031", []byte(`{"reason":"rare"}`)) // unreadable: no docId

	tests := []struct {
		name     string
		give     ops.ListQuery
		wantIDs  []string
		wantNext string
		wantExam int
		budgeted bool
	}{
		{"first page", ops.ListQuery{Limit: 3}, []string{"a00000", "a00001", "a00002"}, "a00002", 3, false},
		{"next page", ops.ListQuery{Limit: 3, After: "a00002"}, []string{"a00003", "a00004", "a00005"}, "a00005", 3, false},
		// A reason's dead letters are read on its index: the others are
		// not examined.
		{"by reason", ops.ListQuery{Limit: 2, Reason: "rare"}, []string{"a00009", "a00019"}, "a00019", 2, false},
		{"by reason, the next page", ops.ListQuery{Limit: 2, Reason: "rare", After: "a00019"}, []string{"a00029", "b00009"}, "b00009", 2, false},
		{"budget spent", ops.ListQuery{Limit: 5, Budget: 3, Prefix: "a0001"}, []string{"a00010", "a00011", "a00012"}, "a00012", 3, true},
		// An unreadable one is known only by reading each.
		{"unreadable", ops.ListQuery{Reason: ops.ReasonUnreadable}, []string{"b00031"}, "", 61, false},
		{"prefix", ops.ListQuery{Limit: 2, Prefix: "b0002"}, []string{"b00020", "b00021"}, "b00021", 2, false},
		{"prefix to its end", ops.ListQuery{Prefix: "b0002", After: "b00027"}, []string{"b00028", "b00029"}, "", 2, false},
		{"the prefix is a key", ops.ListQuery{Prefix: "b00029"}, []string{"b00029"}, "", 1, false},
		{"prefix and reason", ops.ListQuery{Prefix: "b", Reason: "rare"}, []string{"b00009", "b00019", "b00029"}, "", 3, false},
		{"nothing", ops.ListQuery{Prefix: "c"}, []string{}, "", 0, false},
		{"the end", ops.ListQuery{After: "b00029"}, []string{"b00031"}, "", 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ops.ListDeadLetterPage(ctx, st, tt.give)
			require.NoError(t, err)
			assert.Equal(t, tt.wantIDs, ids(p.Items))
			assert.Equal(t, tt.wantNext, p.Next)
			assert.Equal(t, tt.wantExam, p.Examined)
			assert.Equal(t, tt.budgeted, p.Budgeted)
		})
	}
}

func TestListRetries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	insert(t, st, order.Retry, order.ControlKey, []byte(`{}`))
	insert(t, st, order.Retry, "r1", order.RetryDoc{DocID: "r1", Attempt: 2, LastStatus: 503}.Encode())
	insert(t, st, order.Retry, "r2", order.RetryDoc{DocID: "r2", Attempt: 1, LastError: "connection refused"}.Encode())
	insert(t, st, order.Retry, "r3", []byte(`not json`))
	insert(t, st, order.Retry, "r4", order.RetryDoc{DocID: "r4", HeldBack: "circuit breaker open: email service not called"}.Encode())
	insert(t, st, order.Retry, "r5", order.RetryDoc{DocID: "r5", LastError: "not attempted: circuit breaker open: email service not called"}.Encode())
	insert(t, st, order.Retry, "r6", order.RetryDoc{DocID: "r6", Attempt: 1, LastStatus: 503, HeldBack: "circuit breaker open: email service not called"}.Encode())
	insert(t, st, order.Retry, "r7", order.RetryDoc{DocID: "r7", Attempt: 1}.Encode())

	p, err := ops.ListRetries(ctx, st, ops.ListQuery{})
	require.NoError(t, err)
	require.Len(t, p.Items, 7, "the control document is no retry")
	var reasons []string
	for _, it := range p.Items {
		reasons = append(reasons, it.Reason)
	}
	assert.Equal(t, []string{"HTTP 503", ops.RetryReasonNoAnswer, ops.RetryReasonUnreadable,
		ops.RetryReasonHeldBack, ops.RetryReasonHeldBack, "HTTP 503", ops.RetryReasonNone}, reasons,
		"held back only when no request of the order failed; a hold written before heldBack (r5) too")
	assert.Equal(t, 2, p.Items[0].Attempt)
	assert.NotEmpty(t, p.Items[2].Unreadable)

	// A reason's retries are read on the store's index: the others are
	// not examined.
	for reason, want := range map[string][]string{"HTTP 503": {"r1", "r6"}, ops.RetryReasonHeldBack: {"r4", "r5"},
		ops.RetryReasonNone: {"r7"}, ops.RetryReasonNoAnswer: {"r2"}, ops.RetryReasonUnreadable: {"r3"}} {
		p, err = ops.ListRetries(ctx, st, ops.ListQuery{Reason: reason})
		require.NoError(t, err)
		var got []string
		for _, it := range p.Items {
			got = append(got, it.ID)
		}
		assert.Equal(t, want, got, reason)
		if reason != ops.RetryReasonUnreadable { // known only by reading each
			assert.Equal(t, len(want), p.Examined, reason)
		}
	}
}

func TestRedriveByReason(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	deadLetters(t, st, "a", 1200) // more than one batch

	n, err := ops.RedriveByReason(ctx, st, now, "rare")
	require.NoError(t, err)
	assert.Equal(t, 120, n)
	p, err := ops.ListDeadLetterPage(ctx, st, ops.ListQuery{Reason: "rare"})
	require.NoError(t, err)
	assert.Empty(t, p.Items)
	c, err := st.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1080, c.DeadLetters)
	assert.Equal(t, 120, c.RetryDocs)
	r, err := st.Get(ctx, order.Retry, "a00009")
	require.NoError(t, err)
	doc, err := order.DecodeRetryDoc(r.Value)
	require.NoError(t, err)
	assert.True(t, doc.FireRetry)
	assert.Equal(t, 1, doc.RedriveCount)

	_, err = ops.RedriveByReason(ctx, st, now, "")
	assert.Error(t, err)
}

func TestRunRetryNowAndDropRetry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	insert(t, st, order.Retry, "r1", []byte(`{"type":"confirmation","docId":"r1","attempt":2,"ts":1,"nextAttemptAt":99999999999999,"custom":{"kept":true}}`))

	flagged, err := ops.RunRetryNow(ctx, st, "r1")
	require.NoError(t, err)
	assert.True(t, flagged)
	d, err := st.Get(ctx, order.Retry, "r1")
	require.NoError(t, err)
	r, err := order.DecodeRetryDoc(d.Value)
	require.NoError(t, err)
	assert.True(t, r.FireRetry)
	assert.Contains(t, string(d.Value), `"custom":{"kept":true}`, "fields ordermail does not know are kept")

	flagged, err = ops.RunRetryNow(ctx, st, "r1")
	require.NoError(t, err)
	assert.False(t, flagged, "flagged already")
	again, err := st.Get(ctx, order.Retry, "r1")
	require.NoError(t, err)
	assert.NotEqual(t, d.CAS, again.CAS, "written again: a change the feed brings back, should the flag's have gone unhandled")
	assert.Equal(t, string(d.Value), string(again.Value), "as it was")

	_, err = ops.RunRetryNow(ctx, st, "nope")
	assert.ErrorIs(t, err, ops.ErrNoSuchRetry)
	_, err = ops.RunRetryNow(ctx, st, order.ControlKey)
	assert.ErrorIs(t, err, ops.ErrReservedKey)

	require.NoError(t, ops.DropRetry(ctx, st, "r1", 0))
	_, err = st.Get(ctx, order.Retry, "r1")
	assert.ErrorIs(t, err, store.ErrNotFound)
	assert.ErrorIs(t, ops.DropRetry(ctx, st, "r1", 0), ops.ErrNoSuchRetry)
	assert.ErrorIs(t, ops.DropRetry(ctx, st, order.ControlKey, 0), ops.ErrReservedKey)
}
