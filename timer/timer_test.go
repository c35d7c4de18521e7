package timer_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	pinned = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	quiet  = slog.New(slog.NewTextHandler(io.Discard, nil))
)

func openStore(t *testing.T) *embedded.Store {
	t.Helper()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

func retryDoc(t *testing.T, st store.Store, key string, age time.Duration) {
	t.Helper()
	r := order.RetryDoc{Type: order.TypeConfirmation, DocID: key}.Failed(pinned.Add(-age))
	_, err := st.Upsert(context.Background(), order.Retry, key, r.Encode())
	require.NoError(t, err)
}

func fired(t *testing.T, st store.Store, key string) bool {
	t.Helper()
	d, err := st.Get(context.Background(), order.Retry, key)
	require.NoError(t, err)
	r, err := order.DecodeRetryDoc(d.Value)
	require.NoError(t, err)
	return r.FireRetry
}

func TestSweepFlagsOnlyAgedDocsWhileArmed(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, quiet, nil)
	require.NoError(t, err)

	retryDoc(t, st, "aged", 16*time.Second)
	retryDoc(t, st, "young", 14*time.Second)

	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: false}, res, "no allow_retrys: not armed")
	assert.False(t, fired(t, st, "aged"))

	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	res, err = tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
	assert.True(t, fired(t, st, "aged"))
	assert.False(t, fired(t, st, "young"))

	// Two seconds later the young one has aged too; the aged one is not
	// flagged twice.
	res, err = tm.Sweep(ctx, pinned.Add(2*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
	assert.True(t, fired(t, st, "young"))

	require.NoError(t, st.Remove(ctx, order.Retry, order.ControlKey, 0))
	retryDoc(t, st, "later", time.Hour)
	res, err = tm.Sweep(ctx, pinned.Add(4*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: false}, res, "deleting allow_retrys stops retries")
	assert.False(t, fired(t, st, "later"))
}

// flakyStore fails the sweep once, to show the schedule survives it.
type flakyStore struct {
	store.Store
	calls atomic.Int32
}

func (f *flakyStore) SweepRetries(ctx context.Context, now time.Time, quantum time.Duration, limit int) (store.SweepResult, error) {
	if f.calls.Add(1) == 1 {
		return store.SweepResult{}, store.ErrUnavailable
	}
	return f.Store.SweepRetries(ctx, now, quantum, limit)
}

func TestScheduleKeepsFiringAfterAFailedSweep(t *testing.T) {
	st := openStore(t)
	flaky := &flakyStore{Store: st}
	_, err := st.Insert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	retryDoc(t, st, "due", time.Minute)

	// The real clock: cron runs on it.
	tm, err := timer.New(timer.Config{Interval: 20 * time.Millisecond, Quantum: time.Millisecond}, flaky, quiet, nil)
	require.NoError(t, err)
	tm.Start()
	defer func() { assert.NoError(t, tm.Stop(context.Background())) }()

	require.Eventually(t, func() bool { return flaky.calls.Load() >= 2 }, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return fired(t, st, "due") }, 10*time.Second, 5*time.Millisecond)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	assert.ErrorContains(t, timer.Config{Interval: time.Millisecond}.Validate(), "timer-interval")
	assert.ErrorContains(t, timer.Config{Quantum: -time.Second}.Validate(), "retry-quantum")
	assert.NoError(t, timer.Config{}.Validate())
}

func TestControlDocumentSetsIntervalAndQuantum(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, quiet, nil)
	require.NoError(t, err)
	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"10s","quantum":"1h"}`))
	require.NoError(t, err)
	retryDoc(t, st, "a", time.Minute) // older than 15s, younger than 1h

	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 0, Batches: 1}, res, "the document's quantum of 1h applies")
	res, err = tm.Sweep(ctx, pinned.Add(5*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true}, res, "within the document's 10s interval: no sweep")

	// A change takes effect at the next tick, without a restart.
	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":1,"quantum":"30s"}`))
	require.NoError(t, err)
	res, err = tm.Sweep(ctx, pinned.Add(6*time.Second))
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
}

func TestNonsenseControlDocumentFallsBackToSettings(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	tm, err := timer.New(timer.Config{Interval: time.Second, Quantum: 15 * time.Second}, st, log, nil)
	require.NoError(t, err)
	_, err = st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{"interval":"-5 parsecs"}`))
	require.NoError(t, err)
	retryDoc(t, st, "a", time.Minute)

	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res, "still armed, with the settings")
	_, err = tm.Sweep(ctx, pinned.Add(time.Second))
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(logs.String(), "ignoring the settings in allow_retrys"), "reported once: %s", logs.String())
	assert.Contains(t, logs.String(), `interval: \"-5 parsecs\" is not a duration`)
}

func TestOneSweeperAmongInstances(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	now := pinned
	clock := func() time.Time { return now }
	a, err := timer.New(timer.Config{Interval: time.Second, Owner: "a"}, st, quiet, clock)
	require.NoError(t, err)
	b, err := timer.New(timer.Config{Interval: time.Second, Owner: "b"}, st, quiet, clock)
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	retryDoc(t, st, "x", time.Minute)

	res, err := a.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 1, Batches: 1}, res)
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Standby: true}, res, "b waits while a holds the lease")

	now = now.Add(10 * time.Second) // a died: its 3s lease ran out
	res, err = b.Sweep(ctx, now)
	require.NoError(t, err)
	assert.True(t, res.Swept, "b took over")
	res, err = a.Sweep(ctx, now)
	require.NoError(t, err)
	assert.True(t, res.Standby)
}

// TestSweepFlagsABacklogInBatches: a backlog larger than a batch is
// flagged batch by batch, each its own transaction, until none is left;
// with no budget left, the rest waits for the next tick.
func TestSweepFlagsABacklogInBatches(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	for i := range 25 {
		retryDoc(t, st, "r"+strings.Repeat("x", i), time.Minute)
	}
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)

	tm, err := timer.New(timer.Config{Interval: time.Second, SweepBatch: 10, Owner: "me"}, st, quiet, nil)
	require.NoError(t, err)
	res, err := tm.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 25, Batches: 3}, res)

	for i := range 25 {
		retryDoc(t, st, "s"+strings.Repeat("x", i), time.Minute)
	}
	// A budget spent after the first batch (the smallest there is).
	tight, err := timer.New(timer.Config{Interval: time.Second, SweepBatch: 10, SweepBudget: time.Nanosecond, Owner: "me"}, st, quiet, nil)
	require.NoError(t, err)
	res, err = tight.Sweep(ctx, pinned)
	require.NoError(t, err)
	assert.Equal(t, timer.Result{Armed: true, Swept: true, Flagged: 10, Batches: 1, More: true}, res)
}
