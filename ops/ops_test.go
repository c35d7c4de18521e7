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

// TestAPauseKeepsItsSettingsForTheResume: the settings deleted with
// allow_retrys are kept in the store until a resume, wherever it runs,
// gives them back once; a pause that cannot keep them deletes nothing.
func TestAPauseKeepsItsSettingsForTheResume(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	set := order.Control{Interval: 30 * time.Second, Quantum: time.Minute}
	control := func() string {
		t.Helper()
		d, err := st.Get(ctx, order.Retry, order.ControlKey)
		require.NoError(t, err)
		return string(d.Value)
	}
	_, _, _, err = ops.StartRetries(ctx, st, set)
	require.NoError(t, err)

	// A pause that cannot keep the settings pauses all the same (it is
	// what stops sends to a struggling email service), and says what it
	// could not keep.
	stopped, was, err := ops.StopRetries(ctx, metaDown{st})
	require.ErrorIs(t, err, ops.ErrKept)
	assert.ErrorContains(t, err, "could not be kept (interval 30s, quantum 1m0s)")
	assert.True(t, stopped)
	assert.Equal(t, set, was)
	_, err = st.Get(ctx, order.Retry, order.ControlKey)
	require.ErrorIs(t, err, store.ErrNotFound)
	// A resume that cannot read what a pause kept arms all the same.
	started, got, err := ops.ResumeRetries(ctx, metaUnreadable{st})
	require.ErrorIs(t, err, ops.ErrKept)
	assert.True(t, started)
	assert.Zero(t, got)
	assert.JSONEq(t, `{}`, control())
	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, set.Encode())
	require.NoError(t, err)

	stopped, was, err = ops.StopRetries(ctx, st)
	require.NoError(t, err)
	require.True(t, stopped)
	assert.Equal(t, set, was)
	s, err := ops.ReadStatus(ctx, st, now, 15*time.Second)
	require.NoError(t, err)
	assert.Equal(t, set, s.ResumeWith)
	assert.Empty(t, s.KeptUnread)
	// What the pause kept out of reach: paused all the same, said, and
	// the rest of the status read.
	s, err = ops.ReadStatus(ctx, keptUnreadable{st}, now, 15*time.Second)
	require.NoError(t, err)
	assert.True(t, s.Paused)
	assert.True(t, s.Known())
	assert.Zero(t, s.ResumeWith)
	assert.NotEmpty(t, s.KeptUnread)

	started, got, err = ops.ResumeRetries(ctx, st)
	require.NoError(t, err)
	require.True(t, started)
	assert.Equal(t, set, got)
	assert.JSONEq(t, `{"interval":"30s","quantum":"1m0s"}`, control())

	// Given back once.
	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	started, got, err = ops.ResumeRetries(ctx, st)
	require.NoError(t, err)
	require.True(t, started)
	assert.Zero(t, got)
	s, err = ops.ReadStatus(ctx, st, now, 15*time.Second)
	require.NoError(t, err)
	assert.Zero(t, s.ResumeWith)

	// A pause under way while a resume finds allow_retrys armed: the
	// resume leaves what the pause keeps.
	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	_, _, _, err = ops.StartRetries(ctx, st, set)
	require.NoError(t, err)
	kept := order.KeptControl{Control: set, PausedAt: time.Now()}.Encode()
	_, err = st.Upsert(ctx, store.Meta, order.KeptControlKey, kept) // the pause has kept them, not yet deleted
	require.NoError(t, err)
	started, _, err = ops.ResumeRetries(ctx, st)
	require.NoError(t, err)
	require.False(t, started)
	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0)) // the pause deletes
	started, got, err = ops.ResumeRetries(ctx, st)
	require.NoError(t, err)
	require.True(t, started)
	assert.Equal(t, set, got, "the pause's settings survived the resume that raced it")

	// Flags stand in for what a pause kept, and say so.
	_, _, err = ops.StopRetries(ctx, st)
	require.NoError(t, err)
	started, got, dropped, err := ops.StartRetries(ctx, st, order.Control{Quantum: 2 * time.Minute})
	require.NoError(t, err)
	require.True(t, started)
	assert.Equal(t, order.Control{Quantum: 2 * time.Minute}, got)
	assert.Equal(t, set, dropped)
	assert.JSONEq(t, `{"quantum":"2m0s"}`, control())
	got, err = ops.PausedSettings(ctx, st)
	require.NoError(t, err)
	assert.Zero(t, got)

	// A kept document edited into nonsense holds up no resume.
	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	_, err = st.Upsert(ctx, store.Meta, order.KeptControlKey, []byte(`{"interval":"soon"}`))
	require.NoError(t, err)
	started, got, err = ops.ResumeRetries(ctx, st)
	require.NoError(t, err)
	assert.True(t, started)
	assert.Zero(t, got)
	_, err = st.Get(ctx, store.Meta, order.KeptControlKey)
	assert.ErrorIs(t, err, store.ErrNotFound, "cleared by the resume")

	// Armed, but the kept settings not cleared: said so, and armed.
	_, _, err = ops.StopRetries(ctx, st)
	require.NoError(t, err)
	_, err = st.Upsert(ctx, store.Meta, order.KeptControlKey, kept)
	require.NoError(t, err)
	started, got, err = ops.ResumeRetries(ctx, metaDown{st})
	assert.ErrorIs(t, err, ops.ErrKept)
	assert.ErrorContains(t, err, "given back but not cleared")
	assert.True(t, started)
	assert.Equal(t, set, got)
	control()
}

// TestAPauseOfADocumentChangingAllTheTimeDeletesNothing: a pause that
// finds allow_retrys changed at every delete says so, and deletes nothing
// unread.
func TestAPauseOfADocumentChangingAllTheTimeDeletesNothing(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"1m"}`))
	require.NoError(t, err)
	stopped, _, err := ops.StopRetries(ctx, changing{st})
	require.ErrorIs(t, err, ops.ErrControlChanging)
	assert.False(t, stopped)
	_, err = st.Get(ctx, order.Retry, order.ControlKey)
	assert.NoError(t, err)
	_, err = st.Get(ctx, store.Meta, order.KeptControlKey)
	assert.ErrorIs(t, err, store.ErrNotFound, "still armed: nothing kept for a resume")
}

// A pause whose delete of allow_retrys was made though its answer was
// lost keeps the settings for the resume, and says it paused.
func TestAPauseWhoseDeleteLostItsAnswerKeepsItsSettings(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	set := order.Control{Interval: 30 * time.Second, Quantum: time.Minute}
	_, _, _, err = ops.StartRetries(ctx, st, set)
	require.NoError(t, err)
	stopped, was, err := ops.StopRetries(ctx, answerLost{st})
	require.NoError(t, err)
	assert.True(t, stopped)
	assert.Equal(t, set, was)
	started, got, err := ops.ResumeRetries(ctx, st)
	require.NoError(t, err)
	assert.True(t, started)
	assert.Equal(t, set, got, "the resume gives back what the pause kept")
}

// answerLost is a store whose deletes of allow_retrys are made, and
// answered as a store out of reach does.
type answerLost struct{ store.Store }

func (s answerLost) Remove(ctx context.Context, coll, key string, cas uint64) error {
	if err := s.Store.Remove(ctx, coll, key, cas); err != nil || key != order.ControlKey {
		return err
	}
	return fmt.Errorf("remove %s: %w", key, store.ErrUnavailable)
}

// metaDown is a store whose writes to ordermail's own collection fail.
type metaDown struct{ store.Store }

func (s metaDown) Upsert(ctx context.Context, coll, key string, v []byte) (uint64, error) {
	if coll == store.Meta {
		return 0, errors.New("meta down")
	}
	return s.Store.Upsert(ctx, coll, key, v)
}

func (s metaDown) Remove(ctx context.Context, coll, key string, cas uint64) error {
	if coll == store.Meta {
		return errors.New("meta down")
	}
	return s.Store.Remove(ctx, coll, key, cas)
}

// metaUnreadable is a store whose reads of ordermail's own collection fail.
type metaUnreadable struct{ store.Store }

func (s metaUnreadable) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if coll == store.Meta {
		return store.Doc{}, errors.New("meta unreadable")
	}
	return s.Store.Get(ctx, coll, key)
}

// keptUnreadable is a store on which the settings a pause kept cannot be
// read (the rest of ordermail's own documents can).
type keptUnreadable struct{ store.Store }

func (s keptUnreadable) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if coll == store.Meta && key == order.KeptControlKey {
		return store.Doc{}, errors.New("kept settings unreadable")
	}
	return s.Store.Get(ctx, coll, key)
}

// changing is a store on which allow_retrys changes before every delete.
type changing struct{ store.Store }

func (s changing) Remove(ctx context.Context, coll, key string, cas uint64) error {
	if coll == order.Retry && key == order.ControlKey {
		if _, err := s.Store.Upsert(ctx, coll, key, []byte(`{"interval":"2m"}`)); err != nil {
			return err
		}
	}
	return s.Store.Remove(ctx, coll, key, cas)
}
