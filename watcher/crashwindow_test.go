package watcher_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// oneByOne applies an outcome's writes one at a time, in order, as the
// Couchbase store does, and can die after the first `after` writes of the
// next outcome that has more: the process is gone, nothing more is written,
// the event is never acknowledged.
type oneByOne struct {
	store.Store
	after   int
	armed   atomic.Bool
	crashed chan struct{}
}

func (s *oneByOne) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	crash := len(writes) > s.after && s.armed.CompareAndSwap(true, false)
	cas := make([]uint64, len(writes))
	for i, w := range writes {
		if crash && i == s.after {
			close(s.crashed)
			<-ctx.Done() // dead: the watcher is stopped around us
			return nil, ctx.Err()
		}
		c, err := s.Store.Apply(ctx, []store.Write{w})
		if err != nil {
			return nil, err
		}
		cas[i] = c[0]
	}
	return cas, nil
}

// crashBetweenWrites runs one watcher on a oneByOne store until it dies
// inside an outcome, then a fresh watcher on the same store.
func crashBetweenWrites(t *testing.T, e *env, after int, until func() bool) *watcher.Watcher {
	t.Helper()
	cs := &oneByOne{Store: e.store, after: after, crashed: make(chan struct{})}
	cs.armed.Store(true)
	w, err := watcher.New(watcher.Config{Workers: 2, Policy: noJitter}, cs, e.mail, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	select {
	case <-cs.crashed:
	case <-time.After(30 * time.Second):
		t.Fatal("the outcome to crash in was never written")
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	w.Stop(stopCtx) // its in-flight event is abandoned, unacknowledged
	cancel()

	after2 := startWatcher(t, e.store, e.mail, &syncBuffer{})
	require.Eventually(t, until, 30*time.Second, 5*time.Millisecond, "the restarted watcher did not finish the outcome")
	return after2
}

// TestCrashWindowsOfASentRetry: a redriven retry (so a dead letter is there
// too) is sent; its outcome is three writes: mark the order, remove the
// retry, remove the dead letter. Dying after any prefix of them leaves
// nothing that sends twice or stays behind.
func TestCrashWindowsOfASentRetry(t *testing.T) {
	for after := 1; after <= 2; after++ {
		t.Run(fmt.Sprintf("after %d writes", after), func(t *testing.T) {
			e := newEnv(t, mockmail.Config{})
			put(t, e.store, order.Inbound, "o", paidOrder)
			put(t, e.store, order.DeadLetter, "o", `{"type":"confirmation","docId":"o","reason":"permanent_error","redriveCount":0}`)
			put(t, e.store, order.Retry, "o", `{"type":"confirmation","docId":"o","attempt":0,"ts":1,"fireRetry":true,"redriveCount":1}`)
			crashBetweenWrites(t, e, after, func() bool {
				o, _ := get(t, e.store, order.Inbound, "o")
				_, retry := get(t, e.store, order.Retry, "o")
				_, dead := get(t, e.store, order.DeadLetter, "o")
				return !retry && !dead && o != "" && o != paidOrder
			})
			o, _ := get(t, e.store, order.Inbound, "o")
			assert.Contains(t, o, `"confirmationEmailSent":true`)
			assert.Equal(t, mockmail.Stats{Requests: 1, Deliveries: 1}, e.mock.Stats(), "marked first: never sent again")
		})
	}
}

// TestCrashBeforeAFirstSendsOutcome: a first send is made, and the process
// dies before any write of its outcome: the event was not acknowledged, so
// the restarted watcher decides it again, sends again under the same key
// (the email service answers a replay, no second delivery), and marks the
// order. Acknowledged before its outcome was written, the order stayed
// unconfirmed for good.
func TestCrashBeforeAFirstSendsOutcome(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "o", paidOrder)
	crashBetweenWrites(t, e, 0, func() bool {
		o, _ := get(t, e.store, order.Inbound, "o")
		return o != paidOrder && o != ""
	})
	o, _ := get(t, e.store, order.Inbound, "o")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
	st := e.mock.Stats()
	assert.Equal(t, 1, st.Deliveries, "one email: %+v", st)
	assert.Equal(t, st.Requests-1, st.DuplicateRequests, "every request after the first a replay: %+v", st)
}

// TestCrashWindowOfADeadLettering: the last attempt fails; the outcome
// writes the dead letter, then removes the retry. Dying in between leaves
// both; once the claim runs out and the sweep flags the retry again, the
// retry finds the dead letter newer than itself and goes, unsent.
func TestCrashWindowOfADeadLettering(t *testing.T) {
	e := newEnv(t, mockmail.Config{FailRate: 1, FailStatus: 503})
	put(t, e.store, order.Inbound, "o", paidOrder)
	put(t, e.store, order.Retry, "o", `{"type":"confirmation","docId":"o","attempt":4,"ts":1,"fireRetry":true}`)
	crashBetweenWrites(t, e, 1, func() bool {
		_, dead := get(t, e.store, order.DeadLetter, "o")
		return dead
	})
	_, retry := get(t, e.store, order.Retry, "o")
	require.True(t, retry, "the crash left the retry document")
	res, err := e.store.SweepRetries(context.Background(), pinned.Add(2*time.Minute), time.Second, 10)
	require.NoError(t, err)
	require.Equal(t, 1, res.Flagged, "the claim ran out")
	require.Eventually(t, func() bool {
		_, retry := get(t, e.store, order.Retry, "o")
		return !retry
	}, 30*time.Second, 5*time.Millisecond)
	assert.Equal(t, order.ReasonExhausted, mustDeadLetter(t, e.store, "o").Reason)
	assert.Equal(t, 1, e.mock.Stats().Requests, "the retry went without another send")
}
