package ops_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func TestReadStatus(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	put := func(coll, key, v string) {
		_, err := st.Upsert(ctx, coll, key, []byte(v))
		require.NoError(t, err)
	}
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	put(order.Inbound, "a", `{"email":"a@x","paymentStatus":"paid"}`)
	put(order.Inbound, "b", `{"email":"b@x","paymentStatus":"paid","confirmationEmailSent":true}`)
	put(order.Retry, "due1", fmt.Sprintf(`{"docId":"a","attempt":2,"ts":%d,"nextAttemptAt":%d,"lastStatus":503}`, ms(-time.Minute), ms(-30*time.Second)))
	put(order.Retry, "due2", fmt.Sprintf(`{"docId":"a","attempt":1,"ts":%d,"lastStatus":503}`, ms(-time.Hour))) // the sample's: ts + quantum
	put(order.Retry, "later", fmt.Sprintf(`{"docId":"a","attempt":1,"ts":%d,"nextAttemptAt":%d,"lastError":"connection refused"}`, ms(0), ms(time.Minute)))
	put(order.Retry, "held", fmt.Sprintf(`{"docId":"a","attempt":0,"ts":%d,"nextAttemptAt":%d,"heldBack":"circuit breaker open: email service not called"}`, ms(0), ms(time.Minute)))
	put(order.DeadLetter, "d1", `{"docId":"d1","reason":"permanent_error","lastStatus":400}`)
	put(order.DeadLetter, "d2", `{"docId":"d2","reason":"permanent_error","lastStatus":400}`)
	put(order.DeadLetter, "d3", `garbage`)

	s, err := ops.ReadStatus(ctx, st, now, 15*time.Second)
	require.NoError(t, err)
	assert.True(t, s.Paused)
	assert.False(t, s.TimerArmed)
	assert.Equal(t, 4, s.RetryDocs)
	assert.Equal(t, 2, s.DueNow)
	require.NotNil(t, s.OldestDueAt)
	assert.Equal(t, now.Add(-time.Hour+15*time.Second), s.OldestDueAt.UTC(), "due2 has waited longest")
	assert.Equal(t, 3, s.DeadLetters)
	assert.Equal(t, 2, s.OrdersPaid)
	assert.Equal(t, 1, s.OrdersUnconfirmed)
	assert.Equal(t, []ops.ReasonCount{
		{Reason: "dead: permanent_error (HTTP 400)", Count: 2},
		{Reason: "retrying: HTTP 503", Count: 2},
		{Reason: "dead: unreadable dead letter", Count: 1},
		{Reason: "retrying: held back", Count: 1},
		{Reason: "retrying: no answer", Count: 1},
	}, s.TopFailures)

	// allow_retrys' own quantum decides for the sample's documents.
	put(order.Retry, order.ControlKey, `{"quantum":"2h"}`)
	s, err = ops.ReadStatus(ctx, st, now, 15*time.Second)
	require.NoError(t, err)
	assert.False(t, s.Paused)
	assert.Equal(t, 1, s.DueNow)

	var dls []ops.DeadLetter
	require.NoError(t, ops.EachDeadLetter(ctx, st, "", func(d ops.DeadLetter) error {
		dls = append(dls, d)
		return nil
	}))
	require.Len(t, dls, 3)
	assert.Equal(t, "unreadable", dls[2].Reason)
}

// metaDown is a store whose writes to ordermail's own collection fail.
type metaDown struct{ store.Store }

func (s metaDown) Upsert(ctx context.Context, coll, key string, v []byte) (uint64, error) {
	if coll == store.Meta {
		return 0, errors.New("meta down")
	}
	return s.Store.Upsert(ctx, coll, key, v)
}

// TestAPauseKeepsItsSettingsForTheResume: the settings deleted with
// allow_retrys are kept in the store until a resume, wherever it runs,
// gives them back once; a pause that cannot keep them deletes nothing.
func TestAPauseKeepsItsSettingsForTheResume(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	set := order.Control{Interval: 30 * time.Second, Quantum: time.Minute}
	_, _, err = ops.StartRetries(ctx, st, set)
	require.NoError(t, err)

	_, _, err = ops.StopRetries(ctx, metaDown{st})
	require.ErrorContains(t, err, "keep the settings of allow_retrys: meta down")
	_, err = st.Get(ctx, order.Retry, order.ControlKey)
	require.NoError(t, err, "a pause that could not keep the settings deleted nothing")

	stopped, was, err := ops.StopRetries(ctx, st)
	require.NoError(t, err)
	require.True(t, stopped)
	assert.Equal(t, set, was)
	s, err := ops.ReadStatus(ctx, st, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "interval 30s, quantum 1m0s", s.ResumeWith)

	started, got, err := ops.ResumeRetries(ctx, st, order.Control{})
	require.NoError(t, err)
	require.True(t, started)
	assert.Equal(t, set, got)
	d, err := st.Get(ctx, order.Retry, order.ControlKey)
	require.NoError(t, err)
	assert.JSONEq(t, `{"interval":"30s","quantum":"1m0s"}`, string(d.Value))

	// Given back once.
	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	started, got, err = ops.ResumeRetries(ctx, st, order.Control{})
	require.NoError(t, err)
	require.True(t, started)
	assert.Zero(t, got)
	s, err = ops.ReadStatus(ctx, st, now, 15*time.Second)
	require.NoError(t, err)
	assert.Empty(t, s.ResumeWith)

	// A kept document edited into nonsense holds up no resume.
	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	_, err = st.Upsert(ctx, store.Meta, ops.PausedKey, []byte(`{"interval":"soon"}`))
	require.NoError(t, err)
	started, got, err = ops.ResumeRetries(ctx, st, order.Control{})
	require.NoError(t, err)
	assert.True(t, started)
	assert.Zero(t, got)
	_, err = st.Get(ctx, store.Meta, ops.PausedKey)
	assert.ErrorIs(t, err, store.ErrNotFound, "dropped by the resume")
}
