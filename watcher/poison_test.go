package watcher_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startPoisoned starts a watcher on st whose reads of key's state all fail
// (the event's snapshot dropped), giving up on a change after two tries.
func startPoisoned(t *testing.T, e *env, key string) *watcher.Watcher {
	t.Helper()
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond}, &poisonState{e.store, key}, e.mail, quiet,
		func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	return w
}

// incarnationKey is the idempotency key of the order stored under key.
func incarnationKey(t *testing.T, st store.Store, key string) string {
	t.Helper()
	d, err := st.Get(context.Background(), order.Inbound, key)
	require.NoError(t, err)
	require.NotZero(t, d.Incarnation)
	return order.IdempotencyKey(key, d.Incarnation)
}

func waitDelivered(t *testing.T, m *mockmail.Server, key string) {
	t.Helper()
	require.Eventually(t, func() bool { return m.Delivered()[key] > 0 }, 30*time.Second, 5*time.Millisecond,
		"no delivery under %s; deliveries: %v", key, later.Value(func() any { return m.Delivered() }))
}

// A flagged retry whose change keeps failing was dead-lettered with the
// retry left flagged: no sweep flags a flagged retry, its event was behind
// the checkpoint, and once the dead letter was purged the order was never
// sent. The dead letter now takes the retry's place in the same writes,
// with its key and attempts, and a redrive sends it under the key of the
// attempts before.
func TestAPoisonedRetryIsReplacedByItsDeadLetter(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "p", paidOrder)
	key := incarnationKey(t, e.store, "p")
	put(t, e.store, order.Retry, "p", `{"type":"confirmation","docId":"p","attempt":2,"ts":1,"fireRetry":true,"lastStatus":503,"idempotencyKey":"`+key+`"}`)
	w := startPoisoned(t, e, "p")
	waitHandled(t, w, 2) // the order's change and the retry's
	require.NoError(t, w.Stop(context.Background()))

	_, found := get(t, e.store, order.Retry, "p")
	assert.False(t, found, "the retry went with its dead letter")
	d := mustDeadLetter(t, e.store, "p")
	assert.Equal(t, order.ReasonPoisonEvent, d.Reason)
	assert.Equal(t, key, d.IdempotencyKey)
	assert.Equal(t, 2, d.Attempts)
	assert.Equal(t, 503, d.LastStatus)
	assert.Contains(t, d.LastError, "no such thing")

	n, err := ops.Redrive(context.Background(), e.store, time.Now(), []string{"p"}, false)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	startWatcher(t, e.store, e.mail, &syncBuffer{})
	waitDelivered(t, e.mock, key)
	assert.Len(t, e.mock.Delivered(), 1, "one key: the earlier attempts'")
}

// A poison dead letter of an order's change keeps the order's key: it holds
// up that order until a redrive, not one deleted and created again under
// its key, which is a new confirmation.
func TestAPoisonDeadLetterHoldsUpItsOrderNotOneCreatedAnew(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "p", paidOrder)
	old := incarnationKey(t, e.store, "p")
	w := startPoisoned(t, e, "p")
	waitHandled(t, w, 1)
	require.NoError(t, w.Stop(context.Background()))
	assert.Equal(t, old, mustDeadLetter(t, e.store, "p").IdempotencyKey)

	renewed := recreate(t, e.store, "p")
	require.NotEqual(t, old, renewed)
	startWatcher(t, e.store, e.mail, &syncBuffer{})
	waitDelivered(t, e.mock, renewed)
}

// A retry of the sample's (no key) whose order was missing was
// dead-lettered with no key, and held up for good an order created under
// that key afterwards. A dead letter about a missing order is cleared by
// the order's existing.
func TestAnOrderCreatedAfterItsRetryFoundItMissingIsSent(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Retry, "p", `{"type":"confirmation","docId":"p","attempt":1,"ts":1,"fireRetry":true}`)
	w := startWatcher(t, e.store, e.mail, &syncBuffer{})
	require.Eventually(t, func() bool { _, ok := get(t, e.store, order.DeadLetter, "p"); return ok }, 30*time.Second, 5*time.Millisecond,
		"the retry without its order was never dead-lettered; handled %v", later.Value(func() any { return w.Stats().Handled }))
	assert.Equal(t, order.ReasonOrderMissing, mustDeadLetter(t, e.store, "p").Reason)
	put(t, e.store, order.Inbound, "p", paidOrder)
	waitDelivered(t, e.mock, incarnationKey(t, e.store, "p"))
}

// A flagged retry whose flag went unhandled (here: the watcher started
// after it, from now) waits for nothing: no sweep flags a flagged retry.
// Run now writes it again, a change of its own, and it is sent.
func TestRunNowBringsBackAFlagWhoseChangeWentUnhandled(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "p", paidOrder)
	key := incarnationKey(t, e.store, "p")
	put(t, e.store, order.Retry, "p", `{"type":"confirmation","docId":"p","attempt":1,"ts":1,"fireRetry":true,"idempotencyKey":"`+key+`"}`)
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, FromNow: true}, e.store, e.mail, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(context.Background()))
	t.Cleanup(func() { assert.NoError(t, w.Stop(context.Background())) })

	flagged, err := ops.RunRetryNow(context.Background(), e.store, "p")
	require.NoError(t, err)
	assert.False(t, flagged, "flagged already")
	waitDelivered(t, e.mock, key)
	var o string
	require.Eventually(t, func() bool {
		o, _ = get(t, e.store, order.Inbound, "p")
		return strings.Contains(o, `"confirmationEmailSent":true`)
	},
		30*time.Second, 5*time.Millisecond, "delivered, never marked confirmed: %v", later.Value(func() any { return o }))
}

// noIncarnations makes the embedded store look like Couchbase KV, which
// keeps no incarnations; the state reads of poison fail.
type noIncarnations struct {
	store.Store
	poison string
}

func (s *noIncarnations) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	d, err := s.Store.Get(ctx, coll, key)
	d.Incarnation = 0
	return d, err
}

func (s *noIncarnations) State(ctx context.Context, key string) (store.State, error) {
	if key == s.poison {
		return store.State{}, errors.New("no such thing as this key's state")
	}
	st, err := s.Store.State(ctx, key)
	st.Order.Incarnation, st.Retry.Incarnation, st.DeadLetter.Incarnation = 0, 0, 0
	return st, err
}

func (s *noIncarnations) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	sub, err := s.Store.Subscribe(ctx, name, colls, opts)
	if err != nil {
		return nil, err
	}
	return noIncarnationEvents{sub}, nil
}

type noIncarnationEvents struct{ store.Subscription }

func (n noIncarnationEvents) Next(ctx context.Context) (store.Event, error) {
	ev, err := n.Subscription.Next(ctx)
	ev.State, ev.Incarnation = nil, 0
	return ev, err
}

// On Couchbase (no incarnations: the order's CAS stands in), an order whose
// retry waits is edited, and the edit's change keeps failing. Its dead
// letter took the edited order's key, and a redrive sent under it: a new
// confirmation to the email service after attempts under the first key.
// The dead letter takes the retry's key (the retry is left: a claimed one
// may be out), and a redrive sends under it.
func TestAPoisonedOrderChangeKeepsItsRetrysKey(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "p", paidOrder)
	d, err := e.store.Get(ctx, order.Inbound, "p")
	require.NoError(t, err)
	first := order.IdempotencyKey("p", d.CAS) // the CAS when the first send was planned
	put(t, e.store, order.Retry, "p", `{"type":"confirmation","docId":"p","attempt":1,"ts":1,"lastStatus":503,"nextAttemptAt":`+
		strconv.FormatInt(pinned.Add(time.Hour).UnixMilli(), 10)+`,"idempotencyKey":"`+first+`"}`)

	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond, FromNow: true},
		&noIncarnations{Store: e.store, poison: "p"}, e.mail, quiet, func() time.Time { return pinned })
	require.NoError(t, err)
	require.NoError(t, w.Start(ctx))
	_, err = e.store.Replace(ctx, order.Inbound, "p", []byte(strings.Replace(paidOrder, `"email"`, `"note":"gift","email"`, 1)), d.CAS)
	require.NoError(t, err)
	waitHandled(t, w, 1)
	require.NoError(t, w.Stop(ctx))
	dl := mustDeadLetter(t, e.store, "p")
	assert.Equal(t, order.ReasonPoisonEvent, dl.Reason)
	assert.Equal(t, first, dl.IdempotencyKey)
	assert.Equal(t, 1, dl.Attempts)
	_, found := get(t, e.store, order.Retry, "p")
	assert.True(t, found, "the retry left in place: the change was the order's (one claimed may be out)")

	n, err := ops.Redrive(ctx, e.store, time.Now(), []string{"p"}, false)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	startWatcher(t, &noIncarnations{Store: e.store}, e.mail, &syncBuffer{})
	waitDelivered(t, e.mock, first)
	assert.Len(t, e.mock.Delivered(), 1, "under the first attempt's key alone")
}

// A poison dead letter written over a deleted order's dead letter kept the
// deleted order's key and attempts: it then held up no order (its key was
// another incarnation's) and showed the deleted order's story. It keeps
// them only for the same order.
func TestAPoisonDeadLetterOfANewOrderForgetsTheDeletedOnes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "p", paidOrder)
	old := incarnationKey(t, e.store, "p")
	put(t, e.store, order.DeadLetter, "p", string(order.DeadLetterDoc{Type: order.TypeConfirmation, DocID: "p",
		Reason: order.ReasonExhausted, Attempts: 5, LastStatus: 503, IdempotencyKey: old}.Encode()))
	renewed := recreate(t, e.store, "p")

	w := startPoisoned(t, e, "p")
	waitHandled(t, w, 1)
	require.NoError(t, w.Stop(ctx))
	dl := mustDeadLetter(t, e.store, "p")
	assert.Equal(t, order.ReasonPoisonEvent, dl.Reason)
	assert.Equal(t, renewed, dl.IdempotencyKey, "the new order's: it holds that one up")
	assert.Zero(t, dl.Attempts, "none of the deleted order's")
}

// recreate deletes the paid order key and creates it again, paid, as an
// order system reusing a key does; it returns the new incarnation's key.
func recreate(t *testing.T, st store.Store, key string) string {
	t.Helper()
	ctx := context.Background()
	d, err := st.Get(ctx, order.Inbound, key)
	require.NoError(t, err)
	require.NoError(t, st.Remove(ctx, order.Inbound, key, d.CAS))
	_, err = st.Insert(ctx, order.Inbound, key, []byte(paidOrder))
	require.NoError(t, err)
	return incarnationKey(t, st, key)
}
