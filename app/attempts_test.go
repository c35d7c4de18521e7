package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/tracing"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// failFirst answers 503 to the first n requests of every key.
func failFirst(n int) mockmail.Config {
	return mockmail.Config{Script: func(_ string, i int) mockmail.Reply {
		if i <= n {
			return mockmail.Reply{Status: http.StatusServiceUnavailable}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}}
}

// waitStory waits until key's story says the order is confirmed.
func waitStory(t *testing.T, st store.Store, key string) ops.Story {
	t.Helper()
	var story ops.Story
	var err error
	if !assert.Eventually(t, func() bool {
		story, err = ops.OrderStory(context.Background(), st, key, time.Now(), 15*time.Second)
		return err == nil && story.Confirmed && story.Result == "sent"
	}, 60*time.Second, 10*time.Millisecond) {
		// Read afresh: the condition's last run may still be writing story.
		now, err := ops.OrderStory(context.Background(), st, key, time.Now(), 15*time.Second)
		t.Fatalf("order %s not confirmed with its record; now: %+v, %v", key, now, err)
	}
	return story
}

// armRetries creates the timer's control document.
func armRetries(t *testing.T, st store.Store) {
	t.Helper()
	_, err := st.Upsert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
}

// TestEveryAttemptIsRecorded: an order that fails three times and then goes
// out shows four attempts, each with its outcome, on every store.
func TestEveryAttemptIsRecorded(t *testing.T) {
	for _, b := range backends[:2] {
		t.Run(b.name, func(t *testing.T) {
			r := newRunOn(t, b, failFirst(3))
			r.cfg.Watcher.Instance = "test-instance"
			a, st := r.start(t)
			defer stop(t, a)
			key := r.prefix + "o"
			armRetries(t, st)
			placeOne(t, st, key)
			story := waitStory(t, st, key)
			require.Len(t, story.Attempts, 4, "%+v", story.Attempts)
			assert.Equal(t, 4, story.AttemptsTotal)
			for i, at := range story.Attempts {
				assert.Equal(t, i+1, at.N)
				assert.Equal(t, "test-instance", at.Instance)
				assert.NotZero(t, at.At)
				if i < 3 {
					assert.Equal(t, "transient", at.Class)
					assert.Equal(t, http.StatusServiceUnavailable, at.Status)
					assert.Equal(t, "retry", at.Outcome)
					assert.Contains(t, at.Reason, "503")
				} else {
					assert.Equal(t, "sent", at.Class)
					assert.Equal(t, "sent", at.Outcome)
				}
			}
			assert.NotContains(t, string(mustJSON(t, story)), "ann@example.com", "no customer data")
			assert.NotContains(t, string(mustJSON(t, story)), "4111111111111111", "no customer data")
		})
	}
}

// TestTheAttemptHistoryIsBounded keeps the latest N attempts and counts them all.
func TestTheAttemptHistoryIsBounded(t *testing.T) {
	r := newScriptedRun(t, failFirst(6))
	r.cfg.Watcher.AttemptHistory = 3
	a, st := r.start(t)
	defer stop(t, a)
	armRetries(t, st)
	placeOne(t, st, "o")
	story := waitStory(t, st, "o")
	assert.Equal(t, 7, story.AttemptsTotal)
	require.Len(t, story.Attempts, 3)
	assert.Equal(t, []int{5, 6, 7}, []int{story.Attempts[0].N, story.Attempts[1].N, story.Attempts[2].N})
	assert.Equal(t, "sent", story.Attempts[2].Outcome)
}

// TestAnOrderCreatedAgainHasAnAttemptRecordOfItsOwn: an order deleted
// and created again under its key is another order (the embedded store
// tells them apart): its story shows its own attempts, not the deleted
// one's, counted from 1.
func TestAnOrderCreatedAgainHasAnAttemptRecordOfItsOwn(t *testing.T) {
	r := newScriptedRun(t, failFirst(1))
	a, st := r.start(t)
	defer stop(t, a)
	armRetries(t, st)
	placeOne(t, st, "o")
	first := waitStory(t, st, "o")
	require.Equal(t, 2, first.AttemptsTotal, "%+v", first.Attempts)

	require.NoError(t, st.Remove(context.Background(), order.Inbound, "o", 0))
	placeOne(t, st, "o")
	again := waitStory(t, st, "o")
	require.NotEqual(t, first.IdempotencyKey, again.IdempotencyKey, "another order, another key")
	assert.Contains(t, again.IdempotencyKey, "@", "the embedded store's incarnation")
	assert.Equal(t, 2, again.AttemptsTotal, "this order's attempts only: %+v", again.Attempts)
	require.Len(t, again.Attempts, 2)
	assert.Equal(t, []int{1, 2}, []int{again.Attempts[0].N, again.Attempts[1].N})
}

// TestTheAttemptRecordGoesAfterItsRetention: once its order is settled an
// attempt record is kept --attempt-retention and no longer, on a store
// whose feed then has nothing more to read.
func TestTheAttemptRecordGoesAfterItsRetention(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{})
	r.cfg.Watcher.AttemptRetention = 500 * time.Millisecond
	r.cfg.Store.Embedded.ExpireInterval = 50 * time.Millisecond
	a, st := r.start(t)
	defer stop(t, a)
	placeOne(t, st, "o")
	waitStory(t, st, "o")
	gone := func() bool {
		_, err := st.Get(context.Background(), order.Attempts, "o")
		return errors.Is(err, store.ErrNotFound)
	}
	if !assert.Eventually(t, gone, 60*time.Second, 20*time.Millisecond) {
		doc, err := st.Get(context.Background(), order.Attempts, "o")
		t.Fatalf("the attempt record of a confirmed order is still there past its retention: %s, %v", doc.Value, err)
	}
	story, err := ops.OrderStory(context.Background(), st, "o", time.Now(), 15*time.Second)
	require.NoError(t, err)
	assert.True(t, story.Confirmed, "the order stays confirmed")
	assert.Zero(t, story.AttemptsTotal, "no attempt shown")
}

// TestAnUnsettledAttemptRecordGoesAfterItsRetention: a record whose order
// is not settled goes --attempt-retention after its last attempt: a retry
// dropped without a send (its order refunded, dropped by an operator), or
// dead-lettered so and purged, left its record for ever, one more for
// every such order in the store's history (the embedded store's review).
// The retry itself stays.
func TestAnUnsettledAttemptRecordGoesAfterItsRetention(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{Script: func(string, int) mockmail.Reply { return mockmail.Reply{Status: http.StatusServiceUnavailable} }})
	r.cfg.Watcher.AttemptRetention = 500 * time.Millisecond
	r.cfg.Store.Embedded.ExpireInterval = 50 * time.Millisecond
	a, st := r.start(t)
	defer stop(t, a)
	placeOne(t, st, "o")
	require.Eventually(t, func() bool {
		_, err := st.Get(context.Background(), order.Retry, "o")
		return err == nil
	}, 60*time.Second, 10*time.Millisecond, "the failed send's retry")
	gone := func() bool {
		_, err := st.Get(context.Background(), order.Attempts, "o")
		return errors.Is(err, store.ErrNotFound)
	}
	if !assert.Eventually(t, gone, 60*time.Second, 20*time.Millisecond) {
		doc, err := st.Get(context.Background(), order.Attempts, "o")
		t.Fatalf("the attempt record of an unsettled order is still there past its retention: %s, %v", doc.Value, err)
	}
	_, err := st.Get(context.Background(), order.Retry, "o")
	assert.NoError(t, err, "the retry stays (retries are not armed: it waits)")
}

// TestSpansFollowAConfirmation: handle -> send -> apply outcome, one trace,
// whose context the email service received.
func TestSpansFollowAConfirmation(t *testing.T) {
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	tracing.Install(tp)
	t.Cleanup(func() { tp.Shutdown(context.Background()) })

	r := newScriptedRun(t, mockmail.Config{})
	a, st := r.start(t)
	defer stop(t, a)
	placeOne(t, st, "o")
	waitStory(t, st, "o")
	var spans tracetest.SpanStubs
	require.Eventually(t, func() bool {
		spans = exporter.GetSpans()
		return len(spans) >= 3
	}, 30*time.Second, 10*time.Millisecond, "at least 3 spans exported; exported (names): %v", later.Value(func() any {
		var names []string
		for _, s := range exporter.GetSpans() {
			names = append(names, s.Name)
		}
		return names
	}))
	byName := map[string]tracetest.SpanStub{}
	for _, s := range spans {
		byName[s.Name] = s
	}
	root, send, apply := byName["confirm order"], byName["send confirmation"], byName["apply outcome"]
	require.True(t, root.SpanContext.IsValid(), "spans: %v", spans)
	require.True(t, send.SpanContext.IsValid(), "spans: %v", spans)
	require.True(t, apply.SpanContext.IsValid(), "spans: %v", spans)
	assert.Equal(t, root.SpanContext.TraceID(), send.SpanContext.TraceID())
	assert.Equal(t, root.SpanContext.SpanID(), send.Parent.SpanID(), "the send is the confirmation's child")
	assert.Equal(t, root.SpanContext.SpanID(), apply.Parent.SpanID(), "so is the outcome's write")
	assert.Equal(t, 1, r.mock.Stats().Traced, "the request carried the trace context")
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}
