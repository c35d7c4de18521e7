package ops_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// inFlight counts the store calls in progress and the most there were at
// once, and how many documents its scans had read when the first write
// began.
type inFlight struct {
	store.Store
	now, most       atomic.Int64
	scanned         atomic.Int64
	scannedAtFirstW atomic.Int64
	written         atomic.Bool
}

func (s *inFlight) Scan(ctx context.Context, coll, after string, fn func(store.Doc) error) error {
	return s.Store.Scan(ctx, coll, after, func(d store.Doc) error {
		s.scanned.Add(1)
		return fn(d)
	})
}

func (s *inFlight) write() func() {
	if !s.written.Swap(true) {
		s.scannedAtFirstW.Store(s.scanned.Load())
	}
	return s.enter()
}

func (s *inFlight) enter() func() {
	n := s.now.Add(1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	return func() { s.now.Add(-1) }
}

func (s *inFlight) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	defer s.enter()()
	return s.Store.Get(ctx, coll, key)
}

func (s *inFlight) Apply(ctx context.Context, w []store.Write) ([]uint64, error) {
	defer s.write()()
	return s.Store.Apply(ctx, w)
}

func (s *inFlight) Remove(ctx context.Context, coll, key string, cas uint64) error {
	defer s.write()()
	return s.Store.Remove(ctx, coll, key, cas)
}

// seedDeadLetters writes n dead letters keyed prefix0000000..., a thousand
// to a transaction.
func seedDeadLetters(tb testing.TB, st store.Store, prefix string, n int) {
	tb.Helper()
	var ws []store.Write
	for i := range n {
		key := fmt.Sprintf("%s%07d", prefix, i)
		ws = append(ws, store.Write{Op: store.OpInsert, Collection: order.DeadLetter, Key: key,
			Value: order.DeadLetterDoc{DocID: key, Reason: order.ReasonPermanent, LastStatus: 400, Attempts: 1}.Encode()})
		if len(ws) == 1000 || i == n-1 {
			_, err := st.Apply(context.Background(), ws)
			require.NoError(tb, err)
			ws = ws[:0]
		}
	}
}

// TestRedriveAndPurgeAllWorkAFewAtATime: redriving or purging every dead
// letter of a backlog handles them as they are read, a bounded number at
// once (16), several at a time so that their writes share commits: never
// the whole backlog read first and held, never one commit after another.
func TestRedriveAndPurgeAllWorkAFewAtATime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 1200 // more than two of the store's scan pages
	for _, action := range []string{"redrive", "purge"} {
		t.Run(action, func(t *testing.T) {
			t.Parallel()
			st := &inFlight{Store: openStore(t)}
			seedDeadLetters(t, st.Store, "k", n)
			var done int
			var err error
			if action == "redrive" {
				done, err = ops.Redrive(ctx, st, time.Now(), nil, true)
			} else {
				done, err = ops.Purge(ctx, st, nil, true, time.Now())
			}
			require.NoError(t, err)
			assert.Equal(t, n, done)
			c, err := st.Counts(ctx)
			require.NoError(t, err)
			assert.Zero(t, c.DeadLetters, "every dead letter %sd", action)
			if action == "redrive" {
				assert.Equal(t, n, c.RetryDocs, "a retry document for each")
			}
			assert.LessOrEqual(t, st.most.Load(), int64(16), "dead letters handled at once")
			assert.Greater(t, st.most.Load(), int64(1), "dead letters handled one after another")
			assert.Less(t, st.scannedAtFirstW.Load(), int64(n/2), "dead letters read before the first was handled")
		})
	}
}

// BenchmarkRedriveAll: the cost of redriving a backlog of dead letters (a
// retry document written and the dead letter removed, for each), per dead
// letter.
func BenchmarkRedriveAll(b *testing.B) {
	const n = 5000
	ctx := context.Background()
	st := openStore(b)
	for i := range b.N {
		b.StopTimer()
		seedDeadLetters(b, st, fmt.Sprintf("r%d-", i), n)
		b.StartTimer()
		done, err := ops.Redrive(ctx, st, time.Now(), nil, true)
		require.NoError(b, err)
		require.Equal(b, n, done)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/deadletter")
}

// oneByOne makes an outcome's writes one at a time, as Couchbase does, and
// removes a dead letter just before the redrive's own removal, as a
// service that confirmed the redriven order at once does.
type oneByOne struct{ store.Store }

func (s oneByOne) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	var made []uint64
	for _, w := range writes {
		if w.Op == store.OpRemove && w.Collection == order.DeadLetter {
			if err := s.Store.Remove(ctx, order.DeadLetter, w.Key, 0); err != nil {
				return made, err
			}
		}
		cas, err := s.Store.Apply(ctx, []store.Write{w})
		if err != nil {
			return made, err
		}
		made = append(made, cas...)
	}
	return made, nil
}

// TestRedriveCountsARetryWrittenWhoseDeadLetterWentMeanwhile: where an
// outcome's writes are made one by one (Couchbase), the service may
// confirm a redriven order, and remove its dead letter, before the redrive
// does; the redrive's removal then fails, but the order was redriven.
func TestRedriveCountsARetryWrittenWhoseDeadLetterWentMeanwhile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	seedDeadLetters(t, st, "k", 50)
	n, err := ops.Redrive(ctx, oneByOne{st}, time.Now(), nil, true)
	require.NoError(t, err)
	assert.Equal(t, 50, n)
	c, err := st.Counts(ctx)
	require.NoError(t, err)
	assert.Zero(t, c.DeadLetters)
	assert.Equal(t, 50, c.RetryDocs)
}

// apart is a store whose outcomes' writes are not said to be one
// transaction (Couchbase), whatever the store under it.
type apart struct{ store.Store }

// purgedBetween makes an outcome's writes one at a time, as Couchbase
// does, and runs a purge of the dead letter between a redrive's two: its
// retry document written, the dead letter not yet removed.
type purgedBetween struct {
	store.Store
	purged func(n int, err error)
}

func (s purgedBetween) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	var made []uint64
	for _, w := range writes {
		if w.Op == store.OpRemove && w.Collection == order.DeadLetter && len(made) > 0 {
			s.purged(ops.Purge(ctx, apart{s.Store}, []string{w.Key}, false, time.Now()))
		}
		cas, err := s.Store.Apply(ctx, []store.Write{w})
		if err != nil {
			return made, err
		}
		made = append(made, cas...)
	}
	return made, nil
}

// TestAPurgeBetweenARedrivesTwoWritesIsNotCountedTwice: on Couchbase a
// purge that removes a dead letter between a redrive's two writes found
// its removal made and counted the dead letter purged, and the redrive
// counted it redriven: its retry stands and the order goes out, and an
// operator was told it was purged (a reviewer: 3,712 purged and 1,642
// redriven of 3,740).
func TestAPurgeBetweenARedrivesTwoWritesIsNotCountedTwice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	for i := range 5 {
		key := fmt.Sprintf("k%d", i)
		put(t, st, order.DeadLetter, key, order.DeadLetterDoc{DocID: key, Reason: order.ReasonPermanent, LastStatus: 400, Attempts: 1,
			DeadAt: time.Now().Add(-time.Minute).UnixMilli()}.Encode())
	}
	var purged atomic.Int64
	var said []error
	var mu sync.Mutex
	n, err := ops.Redrive(ctx, purgedBetween{Store: st, purged: func(n int, err error) {
		purged.Add(int64(n))
		mu.Lock()
		defer mu.Unlock()
		said = append(said, err)
	}}, time.Now(), nil, true)
	require.NoError(t, err)
	assert.Equal(t, 5, n, "redriven: their retries stand")
	assert.Zero(t, purged.Load(), "none of them purged")
	require.Len(t, said, 5)
	for _, err := range said {
		assert.ErrorIs(t, err, ops.ErrRedrivenMeanwhile)
	}
	assert.ErrorContains(t, said[0], "purge: 1 redriven meanwhile, not purged: their retry documents stand, and their orders go out: k")
	c, err := st.Counts(ctx)
	require.NoError(t, err)
	assert.Zero(t, c.DeadLetters)
	assert.Equal(t, 5, c.RetryDocs)
}

// failingRetryReads fails every read of a retry document.
type failingRetryReads struct{ store.Store }

func (s failingRetryReads) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if coll == order.Retry {
		return store.Doc{}, store.ErrUnavailable
	}
	return s.Store.Get(ctx, coll, key)
}

// A purge whose look for a redrive alongside fails counts what it removed
// as purged, says it, and goes on: it failed, and left the dead letters
// after it uncounted and said "as they were" (the review of the check).
func TestAPurgeWhoseLookForARedriveFailsCountsWhatItRemoved(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	for i := range 30 {
		key := fmt.Sprintf("k%02d", i)
		put(t, st, order.DeadLetter, key, order.DeadLetterDoc{DocID: key, Reason: order.ReasonPermanent, LastStatus: 400, Attempts: 1,
			DeadAt: time.Now().Add(-time.Minute).UnixMilli()}.Encode())
	}
	n, err := ops.Purge(ctx, failingRetryReads{st}, nil, true, time.Now())
	require.ErrorIs(t, err, ops.ErrMaybeRedriven)
	assert.ErrorContains(t, err, "purge: 30 removed and counted purged, but whether a redrive alongside made a retry of them is unknown")
	assert.Equal(t, 30, n)
	c, err := st.Counts(ctx)
	require.NoError(t, err)
	assert.Zero(t, c.DeadLetters)
}

// changesFirst changes each document an action is about to write, as
// another writer would between the action's read and its write: the
// retry document before a redrive's outcome, the dead letter before a
// purge's removal.
type changesFirst struct{ store.Store }

func (s changesFirst) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	for _, w := range writes {
		if w.Collection == order.Retry {
			if _, err := s.Store.Upsert(ctx, order.Retry, w.Key, []byte(`{"type":"confirmation","docId":"`+w.Key+`","attempt":1,"ts":1}`)); err != nil {
				return nil, err
			}
		}
	}
	return s.Store.Apply(ctx, writes)
}

func (s changesFirst) Remove(ctx context.Context, coll, key string, cas uint64) error {
	if coll == order.DeadLetter {
		d, err := s.Store.Get(ctx, coll, key)
		if err != nil {
			return err
		}
		if _, err := s.Store.Replace(ctx, coll, key, d.Value, d.CAS); err != nil {
			return err
		}
	}
	return s.Store.Remove(ctx, coll, key, cas)
}

// TestRedriveAndPurgeSayWhatChangedMeanwhile: a dead letter left because
// it, or its order's retry document, changed between the action's read
// and its write is named in the error, not passed over in silence.
func TestRedriveAndPurgeSayWhatChangedMeanwhile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	seedDeadLetters(t, st, "k", 12)

	n, err := ops.Redrive(ctx, changesFirst{st}, time.Now(), nil, true)
	assert.Zero(t, n)
	require.ErrorIs(t, err, ops.ErrChanged)
	assert.Contains(t, err.Error(), "redrive: 12 left, changed since it was read; look again: k")
	assert.Contains(t, err.Error(), " and 2 more")

	n, err = ops.Purge(ctx, changesFirst{st}, []string{"k0000003"}, false, time.Now())
	assert.Zero(t, n)
	require.ErrorIs(t, err, ops.ErrChanged)
	assert.Contains(t, err.Error(), "purge: 1 left, changed since it was read; look again: k0000003")
	c, err := st.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, 12, c.DeadLetters, "every dead letter is left")
}

// redrivenAlongside plays a redrive that ran alongside, on a store whose
// writes are made one by one: once the dead letter has been listed, and
// before the retry document is read, it writes the retry document, removes
// the dead letter, and the service tries the retry once.
type redrivenAlongside struct {
	oneByOne
	t    *testing.T
	once sync.Once
}

func (s *redrivenAlongside) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if coll == order.Retry {
		s.once.Do(func() {
			n, err := ops.Redrive(ctx, s.oneByOne, time.Now(), []string{key}, false)
			assert.Equal(s.t, 1, n, "the redrive alongside")
			assert.NoError(s.t, err)
			tried := order.RetryDoc{Type: order.TypeConfirmation, DocID: key, Attempt: 1, TS: 5, NextAttemptAt: 9e12, RedriveCount: 1, IdempotencyKey: "confirmation:k@1"}
			_, err = s.oneByOne.Upsert(ctx, order.Retry, key, tried.Encode())
			assert.NoError(s.t, err)
		})
	}
	return s.oneByOne.Get(ctx, coll, key)
}

// TestARedrivenDeadLetterIsNotRedrivenAgain: on Couchbase a redrive writes
// the retry document, then removes the dead letter. A second redrive that
// listed the dead letter before the first removed it, and read the retry
// document after the service had tried it once, replaced it: its attempts
// reset and sent at once, the dead letter redriven twice. The dead letter
// is read again after the retry document: gone, the retry is left.
func TestARedrivenDeadLetterIsNotRedrivenAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	dl := order.DeadLetterDoc{DocID: "k", Reason: order.ReasonExhausted, Attempts: 10, IdempotencyKey: "confirmation:k@1"}
	put(t, st, order.DeadLetter, "k", dl.Encode())

	n, err := ops.Redrive(ctx, &redrivenAlongside{oneByOne: oneByOne{st}, t: t}, time.Now(), []string{"k"}, false)
	assert.Zero(t, n)
	// Redriven by the other: done, and no error (it said "1 left,
	// changed", and exit 1, of a dead letter nobody needs to look at).
	require.NoError(t, err)
	got, err := st.Get(ctx, order.Retry, "k")
	require.NoError(t, err)
	r, err := order.DecodeRetryDoc(got.Value)
	require.NoError(t, err)
	assert.Equal(t, 1, r.Attempt, "the retry document is as the service left it: %s", got.Value)
	assert.False(t, r.FireRetry)
}

// TestARedriveHalfMadeIsNotMadeAgain: on Couchbase a redrive that wrote
// the retry document and has not removed the dead letter yet (or was cut
// short between the two: Ctrl-C, a store error) leaves both; the service
// may have tried the retry meanwhile. A redrive of the dead letter then
// leaves the retry document that was made of it, and finishes the other's
// work: the dead letter goes (a reviewer: each run again exited 1, "left,
// changed", until the service had settled those retries).
func TestARedriveHalfMadeIsNotMadeAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	dl := order.DeadLetterDoc{DocID: "k", Reason: order.ReasonExhausted, Attempts: 10, DeadAt: 1234, IdempotencyKey: "confirmation:k@1"}
	put(t, st, order.DeadLetter, "k", dl.Encode())
	tried := order.Redriven(dl, time.Now())
	tried.Attempt, tried.FireRetry, tried.NextAttemptAt = 1, false, 9e12
	put(t, st, order.Retry, "k", tried.Encode())

	n, err := ops.Redrive(ctx, st, time.Now(), []string{"k"}, false)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "the half-made redrive finished")
	got, err := st.Get(ctx, order.Retry, "k")
	require.NoError(t, err)
	assert.JSONEq(t, string(tried.Encode()), string(got.Value), "the retry document is as the service left it")
	_, err = st.Get(ctx, order.DeadLetter, "k")
	require.ErrorIs(t, err, store.ErrNotFound, "the dead letter went, as the half-made redrive would have removed it")

	// The dead letter changed since it was listed (dead-lettered again):
	// left, and said.
	put(t, st, order.DeadLetter, "k", dl.Encode())
	n, err = ops.Redrive(ctx, deadLetteredAgain{st}, time.Now(), []string{"k"}, false)
	assert.Zero(t, n)
	require.ErrorIs(t, err, ops.ErrChanged)
	got, err = st.Get(ctx, order.Retry, "k")
	require.NoError(t, err)
	assert.JSONEq(t, string(tried.Encode()), string(got.Value), "the retry document is as the service left it")
}

// deadLetteredAgain writes each dead letter a write removes again, of a
// later time, just before the write: the service dead-lettered the order
// again while an operator's action ran.
type deadLetteredAgain struct{ store.Store }

func (s deadLetteredAgain) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	for _, w := range writes {
		if w.Op == store.OpRemove && w.Collection == order.DeadLetter {
			again := order.DeadLetterDoc{DocID: w.Key, Reason: order.ReasonExhausted, DeadAt: time.Now().UnixMilli()}
			if _, err := s.Store.Upsert(ctx, order.DeadLetter, w.Key, again.Encode()); err != nil {
				return nil, err
			}
		}
	}
	return s.Store.Apply(ctx, writes)
}

// TestADeadLetterBesideAnOlderRedrivesRetryIsRedriven: a poison event's
// dead letter counts no redrive, beside a retry document that counts one
// (of an earlier redrive); it is redriven all the same.
func TestADeadLetterBesideAnOlderRedrivesRetryIsRedriven(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	poison := order.DeadLetterDoc{DocID: "k", Reason: order.ReasonPoisonEvent, LastError: "boom", DeadAt: 999}
	put(t, st, order.DeadLetter, "k", poison.Encode())
	put(t, st, order.Retry, "k", order.RetryDoc{Type: order.TypeConfirmation, DocID: "k", Attempt: 2, TS: 5, RedriveCount: 1,
		RedrivenFrom: 500, IdempotencyKey: "confirmation:k@1"}.Encode())
	for _, s := range []store.Store{st, oneByOne{st}} {
		n, err := ops.Redrive(ctx, s, time.Now(), []string{"k"}, false)
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		poison.DeadAt++ // another dead letter of the key, of another time
		put(t, st, order.DeadLetter, "k", poison.Encode())
	}
}

// TestRedriveKeepsTheAttemptsKey: a redrive sends under the key its dead
// letter's attempts carried, since one of them may have got through (under
// another key, on Couchbase, where no incarnation rebuilds it, the email
// service would deliver it again); a poison event's dead letter records
// none (nor does an unreadable one), and the retry document it stood
// beside does: the redriven retry keeps that one; without a retry, the
// order's attempt record keeps the latest send's (where it is key's).
func TestRedriveKeepsTheAttemptsKey(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		dead     order.DeadLetterDoc
		retry    *order.RetryDoc    // beside the dead letter; nil: none
		attempts *order.AttemptsDoc // the attempt record; nil: none
		want     string
	}{
		{"the dead letter's", order.DeadLetterDoc{DocID: "k", Reason: order.ReasonExhausted, Attempts: 10, IdempotencyKey: "confirmation:k@99"}, nil,
			&order.AttemptsDoc{DocID: "k", IdempotencyKey: "confirmation:k@6", Total: 3}, "confirmation:k@99"},
		{"the retry's, where the dead letter has none", order.DeadLetterDoc{DocID: "k", Reason: order.ReasonPoisonEvent, LastError: "boom"},
			&order.RetryDoc{Type: order.TypeConfirmation, DocID: "k", Attempt: 3, TS: 5, IdempotencyKey: "confirmation:k@7"},
			&order.AttemptsDoc{DocID: "k", IdempotencyKey: "confirmation:k@6", Total: 3}, "confirmation:k@7"},
		{"the attempt record's, where neither has one", order.DeadLetterDoc{DocID: "k", Reason: order.ReasonPoisonEvent, LastError: "boom"},
			nil, &order.AttemptsDoc{DocID: "k", IdempotencyKey: "confirmation:k@6", Total: 3}, "confirmation:k@6"},
		{"none where the attempt record's is another order's", order.DeadLetterDoc{DocID: "k", Reason: order.ReasonPoisonEvent, LastError: "boom"},
			nil, &order.AttemptsDoc{DocID: "k", IdempotencyKey: "confirmation:k2@6", Total: 3}, ""},
		{"none where the attempt record says sent (a deleted order's, maybe)", order.DeadLetterDoc{DocID: "k", Reason: order.ReasonPoisonEvent, LastError: "boom"},
			nil, &order.AttemptsDoc{DocID: "k", IdempotencyKey: "confirmation:k@6", Total: 1, Result: "sent", SettledAt: 5}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t)
			put(t, st, order.DeadLetter, "k", c.dead.Encode())
			if c.retry != nil {
				put(t, st, order.Retry, "k", c.retry.Encode())
			}
			if c.attempts != nil {
				put(t, st, order.Attempts, "k", c.attempts.Encode())
			}
			n, err := ops.Redrive(ctx, st, time.Now(), []string{"k"}, false)
			require.NoError(t, err)
			assert.Equal(t, 1, n)
			got, err := st.Get(ctx, order.Retry, "k")
			require.NoError(t, err)
			r, err := order.DecodeRetryDoc(got.Value)
			require.NoError(t, err)
			assert.Equal(t, c.want, r.IdempotencyKey)
			assert.Equal(t, 1, r.RedriveCount)
			assert.True(t, r.FireRetry)
		})
	}
}

func put(t *testing.T, st store.Store, coll, key string, value []byte) {
	t.Helper()
	_, err := st.Upsert(context.Background(), coll, key, value)
	require.NoError(t, err)
}

// TestPurgeAllLeavesWhatWasDeadLetteredSince: a purge of every dead letter
// (or of a reason's) purges what was dead-lettered by the time the operator
// looked; one written while it runs, or after the confirmation was asked,
// is one nobody has seen, and stays; so is one named, and that is said.
func TestPurgeAllLeavesWhatWasDeadLetteredSince(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	asOf := time.Now()
	seedDeadLetters(t, st, "k", 5) // deadAt 0: before any look
	for i, key := range []string{"seen", "later"} {
		at := asOf.Add(time.Duration(i) * time.Minute) // "later": a minute after the look
		_, err := st.Apply(ctx, []store.Write{{Op: store.OpInsert, Collection: order.DeadLetter, Key: key,
			Value: order.DeadLetterDoc{DocID: key, Reason: order.ReasonPermanent, Attempts: 1, DeadAt: at.UnixMilli()}.Encode()}})
		require.NoError(t, err)
	}
	n, err := ops.PurgeByReason(ctx, st, order.ReasonPermanent, asOf)
	require.NoError(t, err)
	assert.Equal(t, 6, n)
	_, err = st.Get(ctx, order.DeadLetter, "later")
	require.NoError(t, err, "dead-lettered after the look: left")
	n, err = ops.Purge(ctx, st, nil, true, asOf)
	require.NoError(t, err)
	assert.Zero(t, n, "still later than the look")
	n, err = ops.Purge(ctx, st, []string{"later"}, false, asOf)
	require.ErrorIs(t, err, ops.ErrChanged, "named, but dead-lettered (again) after the look: left and said")
	assert.Zero(t, n)
	n, err = ops.Purge(ctx, st, []string{"later", "later"}, false, asOf.Add(time.Hour))
	require.NoError(t, err, "named twice: purged once, and not missing the second time")
	assert.Equal(t, 1, n, "named and seen: purged")
}

// A selection of many ids that name no dead letter (a list shown before
// another operator redrove them) is said in one short message: the first
// few, sorted, and how many more, not a line for each.
func TestRedriveAndPurgeOfManyMissingSayItShortly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	seedDeadLetters(t, st, "k", 2)
	ids := []string{"k0000000", "k0000001"}
	for i := range 25 {
		ids = append(ids, fmt.Sprintf("gone%02d", i))
	}
	done, err := ops.Redrive(ctx, st, time.Now(), ids, false)
	assert.Equal(t, 2, done)
	require.ErrorIs(t, err, ops.ErrNoSuchDeadLetter)
	assert.Regexp(t, `^no such dead letter: (gone\d\d, ){9}gone\d\d and 15 more$`, err.Error())

	_, err = ops.Purge(ctx, st, ids[2:], false, time.Now())
	require.ErrorIs(t, err, ops.ErrNoSuchDeadLetter)
	assert.Equal(t, 1, strings.Count(err.Error(), "no such dead letter"), err.Error())
}

// failingAfter fails every Apply after the first few with an unavailable
// store: a backup holding SQLite's lock past the busy timeout, say.
type failingAfter struct {
	store.Store
	ok    int32
	calls atomic.Int32
}

func (s *failingAfter) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	if s.calls.Add(1) > s.ok {
		return nil, fmt.Errorf("busy: %w", store.ErrUnavailable)
	}
	return s.Store.Apply(ctx, writes)
}

// A bulk redrive or purge that an error of the store ends says it stopped,
// and that the same action again goes on: it said "redrove 3220 dead
// letters" and named one key, as if one had failed and the rest were done.
func TestABulkActionStoppedByTheStoreSaysSo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t)
	for i := range 30 {
		key := fmt.Sprint("k", i)
		put(t, st, order.DeadLetter, key, order.DeadLetterDoc{DocID: key, Reason: order.ReasonExhausted, Attempts: 3}.Encode())
	}
	n, err := ops.Redrive(ctx, &failingAfter{Store: st, ok: 5}, time.Now(), nil, true)
	require.ErrorIs(t, err, ops.ErrStopped)
	require.ErrorIs(t, err, store.ErrUnavailable)
	c, cerr := st.Counts(ctx)
	require.NoError(t, cerr)
	// At least what it says it did (writes under way when it stopped may
	// have been made too, and it says "perhaps a few more").
	assert.LessOrEqual(t, c.DeadLetters, 30-n)
	assert.Positive(t, c.DeadLetters, "it stopped before the end")

	n, err = ops.Redrive(ctx, st, time.Now(), nil, true)
	require.NoError(t, err, "the same action again goes on")
	// The rest: fewer when a write under way at the stop, its caller gone,
	// was committed after the count (seen under load).
	assert.LessOrEqual(t, n, c.DeadLetters)
	assert.Positive(t, n)
	c, cerr = st.Counts(ctx)
	require.NoError(t, cerr)
	assert.Zero(t, c.DeadLetters)
}

// Keys an action names in its errors are shown, not obeyed: a key may hold
// any byte (a dead letter of an invalid key), and a newline in one would
// forge a line of the command's output.
func TestTheKeysAnActionNamesAreShown(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	_, err := ops.Purge(context.Background(), st, []string{"a\nordermail: all purged", "plain"}, false, time.Now())
	require.ErrorIs(t, err, ops.ErrNoSuchDeadLetter)
	assert.Contains(t, err.Error(), `"a\nordermail: all purged"`)
	assert.Contains(t, err.Error(), "plain")
	assert.NotContains(t, err.Error(), "\nordermail: all purged")
}
