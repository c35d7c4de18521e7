package watcher_test

// Tests a mutation audit (2026-12-07) called for: each fails on a change to
// the watcher that the other tests let through.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// handledAtLeast waits until w has handled n events.
func handledAtLeast(t *testing.T, w *watcher.Watcher, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return w.Stats().Handled >= n }, 30*time.Second, 5*time.Millisecond,
		"handled %v events, want %d", later.Value(func() any { return w.Stats().Handled }), n)
}

// A change is dead-lettered after exactly MaxEventFailures failed tries:
// not one more (nor one less).
func TestAPoisonEventIsTriedExactlyMaxEventFailuresTimes(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "poison", paidOrder)
	const always = 1 << 30
	st := &flakyGets{Store: e.store, key: "poison"} // every read of its state fails
	st.fails.Store(always)
	reads := func() int32 { return always - st.fails.Load() }
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 3, PoisonAfter: time.Nanosecond})
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, 30*time.Second, 5*time.Millisecond,
		"never dead-lettered; reads %v", later.Value(func() any { return reads() }))
	handledAtLeast(t, w, 1)
	assert.Equal(t, int32(3), reads(), "tries before the dead letter")
	assert.Equal(t, order.ReasonPoisonEvent, mustDeadLetter(t, e.store, "poison").Reason)
}

// countedRefusal refuses every outcome that marks key confirmed, counting
// the refusals.
type countedRefusal struct {
	store.Store
	key     string
	refused atomic.Int32
}

func (r *countedRefusal) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	for _, w := range ws {
		if w.Collection == order.Inbound && w.Key == r.key && w.Op == store.OpReplace {
			r.refused.Add(1)
			return nil, errors.New("refused")
		}
	}
	return r.Store.Apply(ctx, ws)
}

// A send's outcome the store refuses is given up on after exactly
// MaxEventFailures refusals.
func TestARefusedOutcomeIsTriedExactlyMaxEventFailuresTimes(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	st := &countedRefusal{Store: e.store, key: "bad"}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 3, PoisonAfter: time.Nanosecond})
	put(t, e.store, order.Inbound, "bad", paidOrder)
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, 30*time.Second, 5*time.Millisecond,
		"never dead-lettered; refusals %v", later.Value(func() any { return st.refused.Load() }))
	handledAtLeast(t, w, 1)
	assert.Equal(t, int32(3), st.refused.Load(), "outcome writes before the dead letter")
	assert.Equal(t, order.ReasonPoisonEvent, mustDeadLetter(t, e.store, "bad").Reason)
}

// lineFeed is a store for a key's two events in one line: the first of
// key's events (handed out without its state) has its first state read
// wait until the reader has handed out a later change of key whose value
// holds mark (it then waits in the key's line), and reads of key's state
// fail as fail says.
type lineFeed struct {
	store.Store
	key, mark string
	// keepLater: the later events keep the state the feed read with them.
	keepLater bool
	reading   chan struct{} // closed when the first read of key's state begins
	added     chan struct{} // closed once the marked change is in the key's line
	addedOnce sync.Once
	reads     atomic.Int32
	fail      func(ctx context.Context, n int32) error // read n of key's state (from 1); nil: read it
}

func newLineFeed(st store.Store, key, mark string) *lineFeed {
	return &lineFeed{Store: st, key: key, mark: mark, reading: make(chan struct{}), added: make(chan struct{})}
}

func (l *lineFeed) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	sub, err := l.Store.Subscribe(ctx, name, colls, opts)
	if err != nil {
		return nil, err
	}
	return &lineSub{Subscription: sub, l: l}, nil
}

func (l *lineFeed) State(ctx context.Context, key string) (store.State, error) {
	if key != l.key {
		return l.Store.State(ctx, key)
	}
	n := l.reads.Add(1)
	if n == 1 {
		close(l.reading)
		select {
		case <-l.added:
		case <-ctx.Done():
			return store.State{}, ctx.Err()
		}
	}
	if l.fail != nil {
		if err := l.fail(ctx, n); err != nil {
			return store.State{}, err
		}
	}
	return l.Store.State(ctx, key)
}

type lineSub struct {
	store.Subscription
	l      *lineFeed
	handed bool // the marked change was handed out (the reader's alone)
	seen   bool // key had an event
}

func (s *lineSub) Next(ctx context.Context) (store.Event, error) {
	if s.handed {
		// The reader is back: it has put the marked change in its line.
		s.l.addedOnce.Do(func() { close(s.l.added) })
	}
	ev, err := s.Subscription.Next(ctx)
	if err != nil || ev.Key != s.l.key {
		ev.State = nil
		return ev, err
	}
	if !s.seen || !s.l.keepLater {
		ev.State = nil
	}
	s.seen = true
	if strings.Contains(string(ev.Value), s.l.mark) {
		s.handed = true
	}
	return ev, err
}

const editedOrder = `{"email":"ann@example.com","paymentStatus":"paid","note":"gift","confirmationEmailSent":false,"items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`

// After a change is dead-lettered as poison, the next change of its key,
// read (with its state) before the dead letter was written, decides on the
// state read again: the dead letter holds the order back, and nothing is
// sent (decided on its snapshot, it was mailed). Its own failures are
// counted afresh: one is no poison.
func TestTheChangeAfterAPoisonDeadLetterSeesIt(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "p", paidOrder)
	st := newLineFeed(e.store, "p", `"note":"gift"`)
	st.keepLater = true
	st.fail = func(_ context.Context, n int32) error {
		if n <= 3 { // the order's change's two tries, and the edit's first
			return errors.New("no such thing as this key's state")
		}
		return nil
	}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond,
		SnapshotAge: time.Hour})
	// The edit is put once the order's change is being handled (before,
	// the feed may hand out the edit alone), and read with its state
	// before that change is tried at all.
	recvWithin(t, st.reading, "the order's change was never handled")
	put(t, e.store, order.Inbound, "p", editedOrder)
	recvWithin(t, st.added, "the edit never reached the key's line")
	handledAtLeast(t, w, 2) // the poisoned change, the edit
	assert.Equal(t, int64(1), w.Stats().DeadLettered, "the edit's one failure was taken for the poisoned change's third")
	assert.GreaterOrEqual(t, st.reads.Load(), int32(4), "the edit was tried again after its failure")
	assert.Equal(t, order.ReasonPoisonEvent, mustDeadLetter(t, e.store, "p").Reason)
	assert.Zero(t, e.mock.Stats().Requests, "the edit was decided on a state without the poison dead letter")
	assert.Zero(t, w.Stats().Sends)
}

var retryIn = regexp.MustCompile(`retry_in=(\S+)`)

// waits reads the retry_in of each line of logs that holds every part.
func waits(t *testing.T, logs *syncBuffer, parts ...string) []time.Duration {
	t.Helper()
	var out []time.Duration
	for _, line := range logs.Lines(parts...) {
		m := retryIn.FindStringSubmatch(line)
		require.NotNil(t, m, "no retry_in in %q", line)
		d, err := time.ParseDuration(m[1])
		require.NoError(t, err)
		out = append(out, d)
	}
	return out
}

// growing says whether each wait is longer than the one before.
func growing(ds []time.Duration) bool {
	for i := 1; i < len(ds); i++ {
		if ds[i] <= ds[i-1] {
			return false
		}
	}
	return true
}

// A change that keeps failing waits longer before each try: its backoff
// advances (50ms, 100ms, 200ms..., a tenth of jitter), whether the store
// fails or is unavailable.
func TestAFailingChangeWaitsLongerEachTry(t *testing.T) {
	for name, fail := range map[string]struct {
		err  error
		line string
	}{
		"failed":      {errors.New("an error it seldom gives"), "change not done; trying again"},
		"unavailable": {fmt.Errorf("%w: failing over", store.ErrUnavailable), "change not done: the store is unavailable"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, mockmail.Config{})
			put(t, e.store, order.Inbound, "o", paidOrder)
			st := &scriptedGets{Store: e.store, key: "o", errs: []error{fail.err, fail.err, fail.err, fail.err}}
			w, logs := runLogged(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 10, PoisonAfter: time.Hour})
			handledAtLeast(t, w, 1)
			o, _ := get(t, e.store, order.Inbound, "o")
			assert.Contains(t, o, `"confirmationEmailSent":true`)
			ds := waits(t, logs, fail.line)
			require.Len(t, ds, 4, "%s", logs.String())
			assert.True(t, growing(ds), "the waits between tries: %v", ds)
			assert.Greater(t, ds[3], 5*ds[0], "doubled three times: %v", ds)
		})
	}
}

// A change that failed, then succeeded, leaves no failures to its key's
// next change: that one fails once and is tried again, not dead-lettered
// as if its failure were the first one's second.
func TestAChangeThatSucceededLeavesNoFailuresToTheNext(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "p", paidOrder)
	st := newLineFeed(e.store, "p", `"note":"gift"`)
	st.fail = func(_ context.Context, n int32) error {
		if n == 1 || n == 3 { // the first tries of the order's change and of the edit's
			return errors.New("an error it seldom gives")
		}
		return nil
	}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond})
	recvWithin(t, st.reading, "the order's change was never handled")
	put(t, e.store, order.Inbound, "p", editedOrder)
	recvWithin(t, st.added, "the edit never reached the key's line")
	// The order's change, the edit, the confirmation written.
	handledAtLeast(t, w, 3)
	assert.GreaterOrEqual(t, st.reads.Load(), int32(4), "the edit's first try failed, its second read the state")
	assert.Zero(t, w.Stats().DeadLettered)
	_, dead := get(t, e.store, order.DeadLetter, "p")
	assert.False(t, dead)
	assert.Equal(t, 1, e.mock.Stats().Deliveries)
	o, _ := get(t, e.store, order.Inbound, "p")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
}

// An outcome the store keeps refusing is tried again after longer and
// longer waits.
func TestARefusedOutcomeWaitsLongerEachTry(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	refused := errors.New("refused")
	st := &scriptedOutcome{Store: e.store, key: "o", errs: []error{refused, refused, refused, refused}}
	w, logs := runLogged(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 10, PoisonAfter: time.Hour})
	put(t, e.store, order.Inbound, "o", paidOrder)
	handledAtLeast(t, w, 1)
	ds := waits(t, logs, "write the outcome of a send; trying again")
	require.Len(t, ds, 4, "%s", logs.String())
	assert.True(t, growing(ds), "the waits between tries: %v", ds)
	assert.Zero(t, w.Stats().DeadLettered)
}

// settleScript answers the writes that mark key confirmed with applyErrs
// in turn, and, once one of them was refused, the reads of key's state
// with stateErrs in turn.
type settleScript struct {
	store.Store
	key                 string
	mu                  sync.Mutex
	armed               bool
	applyErrs, stateErr []error
}

func (s *settleScript) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	for _, w := range ws {
		if w.Collection == order.Inbound && w.Key == s.key && w.Op == store.OpReplace {
			s.mu.Lock()
			var err error
			if len(s.applyErrs) > 0 {
				err, s.applyErrs = s.applyErrs[0], s.applyErrs[1:]
				s.armed = true
			}
			s.mu.Unlock()
			if err != nil {
				return nil, err
			}
		}
	}
	return s.Store.Apply(ctx, ws)
}

func (s *settleScript) State(ctx context.Context, key string) (store.State, error) {
	s.mu.Lock()
	var err error
	if key == s.key && s.armed && len(s.stateErr) > 0 {
		err, s.stateErr = s.stateErr[0], s.stateErr[1:]
	}
	s.mu.Unlock()
	if err != nil {
		return store.State{}, err
	}
	return s.Store.State(ctx, key)
}

// left says whether every scripted answer was given.
func (s *settleScript) left() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.applyErrs) + len(s.stateErr)
}

// conflict is a guard that failed on key's order.
func conflict(key string) error {
	return &store.WriteError{Write: store.Write{Op: store.OpReplace, Collection: order.Inbound, Key: key}, Err: store.ErrCASMismatch}
}

// A send's outcome refused, then written over a conflict (someone wrote
// the order), then refused again is not refused twice in a row: the
// conflict between starts the count again.
func TestAConflictBetweenAnOutcomesRefusalsStartsTheirCountAgain(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	refused := errors.New("refused")
	st := &settleScript{Store: e.store, key: "o", applyErrs: []error{refused, conflict("o"), refused}}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond})
	put(t, e.store, order.Inbound, "o", paidOrder)
	confirmedOnce(t, e, w, "o")
	assert.Zero(t, st.left(), "every answer given")
}

// A send's outcome refused, then the state unavailable when it is read
// again, then the outcome refused again: the outage on the read between
// starts the count again, as one on the write does.
func TestAnOutageReadingBetweenAnOutcomesRefusalsStartsTheirCountAgain(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	refused := errors.New("refused")
	st := &settleScript{Store: e.store, key: "o", applyErrs: []error{refused, refused},
		stateErr: []error{fmt.Errorf("%w: failing over", store.ErrUnavailable)}}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond,
		SnapshotAge: time.Hour})
	put(t, e.store, order.Inbound, "o", paidOrder)
	confirmedOnce(t, e, w, "o")
	assert.Zero(t, st.left(), "every answer given")
}

// Conflicts are counted in a row too: a refusal between two runs of them
// starts their count again, and neither run, shorter than maxStale (10),
// waits.
func TestARefusalBetweenAnOutcomesConflictsStartsTheirCountAgain(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	var errs []error
	for range 6 {
		errs = append(errs, conflict("o"))
	}
	errs = append(errs, errors.New("refused"))
	for range 6 {
		errs = append(errs, conflict("o"))
	}
	st := &settleScript{Store: e.store, key: "o", applyErrs: errs}
	w, logs := runLogged(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter})
	put(t, e.store, order.Inbound, "o", paidOrder)
	handledAtLeast(t, w, 1)
	assert.Zero(t, st.left(), "every answer given")
	o, _ := get(t, e.store, order.Inbound, "o")
	assert.Contains(t, o, `"confirmationEmailSent":true`)
	assert.Empty(t, logs.Lines("keep changing; trying again"), "%s", logs.String())
	assert.Len(t, logs.Lines("write the outcome of a send; trying again"), 1)
}

// heldLocus puts the keys of locus on locus 1 (their events are handled
// with the state read through the store) and answers every read of hung's
// state unreachable. The first write of marked's order (its send's
// outcome) waits for outcome to close. The change of marked whose value
// holds mark is acknowledged through acked, after heldAtAck is set to how
// many loci w holds back then.
type heldLocus struct {
	store.Store
	locus        map[string]bool
	hung         string
	marked, mark string
	outcome      chan struct{}
	writes       atomic.Int32
	added, acked chan struct{} // the marked change is in its key's line; acknowledged
	addOnce      sync.Once
	w            atomic.Pointer[watcher.Watcher]
	heldAtAck    atomic.Int64
}

func (h *heldLocus) State(ctx context.Context, key string) (store.State, error) {
	if key != h.hung {
		return h.Store.State(ctx, key)
	}
	return store.State{}, fmt.Errorf("%w: %w: its node does not answer", store.ErrUnavailable, store.ErrUnreachable)
}

func (h *heldLocus) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	if ws[0].Collection == order.Inbound && ws[0].Key == h.marked && h.writes.Add(1) == 1 {
		select {
		case <-h.outcome:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.Store.Apply(ctx, ws)
}

func (h *heldLocus) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	sub, err := h.Store.Subscribe(ctx, name, colls, opts)
	if err != nil {
		return nil, err
	}
	return &heldSub{Subscription: sub, h: h}, nil
}

type heldSub struct {
	store.Subscription
	h      *heldLocus
	handed bool
}

func (s *heldSub) Next(ctx context.Context) (store.Event, error) {
	if s.handed {
		s.h.addOnce.Do(func() { close(s.h.added) })
	}
	ev, err := s.Subscription.Next(ctx)
	if err != nil {
		return ev, err
	}
	ev.State = nil
	if s.h.locus[ev.Key] {
		ev.Partition, ev.Locus = 1, 1
	}
	if ev.Key == s.h.marked && strings.Contains(string(ev.Value), s.h.mark) && !s.handed {
		s.handed = true
		ack, h := ev.Ack, s.h
		ev.Ack = func() {
			// The one worker is here: no other event is being handled.
			h.heldAtAck.Store(h.w.Load().Stats().Unreachable)
			close(h.acked)
			ack()
		}
	}
	return ev, err
}

// An event that asks the store nothing (an order no longer paid), handled
// in the line of one of its key's that did ask it, says nothing of the
// store either: its node, held back meanwhile, stays held back. (The
// line's flag of the earlier event's read let it end the hold.)
func TestAnEventAfterOneThatAskedTheStoreProbesNothing(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	h := &heldLocus{Store: e.store, locus: map[string]bool{"k": true, "hung": true}, hung: "hung",
		marked: "k", mark: `"cancelled"`, outcome: make(chan struct{}), added: make(chan struct{}), acked: make(chan struct{})}
	send := &holdFirst{Sender: e.mail, holding: make(chan struct{}), release: make(chan struct{})}
	put(t, e.store, order.Inbound, "k", paidOrder)
	w := runWith(t, h, send, watcher.Config{Workers: 1, Policy: noJitter})
	h.w.Store(w)
	var once sync.Once
	unblock := func() { once.Do(func() { close(h.outcome) }) }
	t.Cleanup(unblock) // before the watcher stops
	recvWithin(t, send.holding, "k's send, after its state was read")

	// k's cancellation waits in its line behind the send, then for the
	// send's outcome; the one worker meanwhile finds the node down.
	put(t, e.store, order.Inbound, "k", strings.Replace(paidOrder, `"paid"`, `"cancelled"`, 1))
	recvWithin(t, h.added, "k's cancellation never reached its line")
	put(t, e.store, order.Inbound, "hung", paidOrder)
	close(send.release)
	require.Eventually(t, func() bool { return w.Stats().Unreachable == 1 }, 30*time.Second, 5*time.Millisecond, "the node never held back")

	unblock()
	recvWithin(t, h.acked, "k's cancellation was never handled")
	assert.Equal(t, int64(1), h.heldAtAck.Load(), "the node was no longer held back once k's cancellation was handled")
	assert.Equal(t, 1, e.mock.Stats().Deliveries)
}

// After a send's outcome refused for good is dead-lettered as poison, the
// next change of its key, read (with its state) before the dead letter was
// written, decides on the state read again: the dead letter holds the
// order back, and it is not mailed a second time.
func TestTheChangeAfterARefusedOutcomesDeadLetterSeesIt(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	put(t, e.store, order.Inbound, "p", paidOrder)
	lf := newLineFeed(e.store, "p", `"note":"gift"`)
	lf.keepLater = true
	st := &refusesOutcome{Store: lf, key: "p"}
	w := runWith(t, st, e.mail, watcher.Config{Workers: 1, Policy: noJitter, MaxEventFailures: 2, PoisonAfter: time.Nanosecond,
		SnapshotAge: time.Hour})
	recvWithin(t, lf.reading, "the order's change was never handled")
	put(t, e.store, order.Inbound, "p", editedOrder)
	recvWithin(t, lf.added, "the edit never reached the key's line")
	handledAtLeast(t, w, 2) // the order's change (its outcome given up on), the edit
	assert.Equal(t, int64(1), w.Stats().DeadLettered)
	d := mustDeadLetter(t, e.store, "p")
	assert.Equal(t, order.ReasonPoisonEvent, d.Reason)
	assert.Equal(t, 1, e.mock.Stats().Requests, "the edit was decided on a state without the dead letter: mailed again")
	assert.Equal(t, int64(1), w.Stats().Sends)
}

// outageStore answers every outcome write unavailable while down is set:
// a store that is out for everyone (a full disk, a locked file).
type outageStore struct {
	store.Store
	down    atomic.Bool
	refused atomic.Int64
}

func (s *outageStore) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	if s.down.Load() {
		s.refused.Add(1)
		return nil, fmt.Errorf("%w: disk full", store.ErrUnavailable)
	}
	return s.Store.Apply(ctx, ws)
}

// An outage of the store is said once, not once an order: with 20 sends'
// outcomes waiting it wrote 20 warnings (101 a minute on a full disk),
// and nothing when it ended. Now one warning, the waits at debug level,
// and one line when the store answers again.
func TestAStoreOutageIsSaidOnceForEveryOrder(t *testing.T) {
	e := newEnv(t, mockmail.Config{})
	st := &outageStore{Store: e.store}
	st.down.Store(true)
	w, logs := runLogged(t, st, e.mail, watcher.Config{Workers: 8, Policy: noJitter})
	const orders = 20
	for i := range orders {
		put(t, e.store, order.Inbound, fmt.Sprintf("o%d", i), paidOrder)
	}
	require.Eventually(t, func() bool { return e.mock.Stats().Deliveries == orders && st.refused.Load() >= 2*orders },
		30*time.Second, 5*time.Millisecond, "every order sent and its outcome refused twice: %v deliveries, %v refusals",
		later.Value(func() any { return e.mock.Stats().Deliveries }), later.Value(func() any { return st.refused.Load() }))
	st.down.Store(false)
	handledAtLeast(t, w, orders)
	require.Eventually(t, func() bool { return len(logs.Lines("store calls work again")) == 1 }, 30*time.Second, 5*time.Millisecond,
		"the end of the outage is said; log:\n%v", later.Value(func() any { return logs.String() }))
	assert.Len(t, logs.Lines("level=WARN"), 1, "one warning for the outage; log:\n%s", logs.String())
	assert.Greater(t, len(logs.Lines("level=DEBUG", "write the outcome of a send; trying again")), orders, "the waits at debug level")
	assert.Contains(t, logs.Lines("store calls work again")[0], "level=INFO")
	for i := range orders {
		o, _ := get(t, e.store, order.Inbound, fmt.Sprintf("o%d", i))
		assert.Contains(t, o, `"confirmationEmailSent":true`)
	}
}
