package embedded

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The counts kept with every write (the stats row, the tallies and the
// due minutes): after every kind of write, from many goroutines at once so
// that they share transactions, with jobs that fail half-way and roll back
// alone, they agree with a recount of the documents.
func TestCountsAgreeWithARecountAfterEveryKindOfWrite(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	// Half of the removals leave tombstones: a subscription wants them.
	sub, err := s.Subscribe(ctx, "deletions", []string{order.Retry}, store.FeedOptions{})
	require.NoError(t, err)
	require.NoError(t, sub.Close(ctx))
	now := time.Now()
	const n = 200
	var wg sync.WaitGroup
	var half sync.Once
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < n; i += 8 {
				if i >= n/2 {
					half.Do(func() { // ... and then none does: the rows go
						sub, err := s.Subscribe(ctx, "deletions", []string{order.Retry}, store.FeedOptions{SkipSettled: true})
						if assert.NoError(t, err) {
							assert.NoError(t, sub.Close(ctx))
						}
					})
				}
				k := fmt.Sprintf("o%03d", i)
				// Due over several minutes, some by ts alone.
				retry := fmt.Appendf(nil, `{"docId":%q,"attempt":1,"ts":1,"nextAttemptAt":%d,"lastStatus":503}`, k, now.Add(-time.Duration(i%5)*time.Minute).UnixMilli())
				if i%8 == 7 {
					retry = fmt.Appendf(nil, `{"docId":%q,"attempt":1,"ts":%d,"lastStatus":503}`, k, now.Add(-time.Duration(i%3)*time.Minute).UnixMilli())
				}
				cas, err := s.Apply(ctx, []store.Write{
					{Op: store.OpInsert, Collection: order.Inbound, Key: k, Value: []byte(`{"email":"a@b.c","paymentStatus":"paid"}`)},
					{Op: store.OpInsert, Collection: order.Retry, Key: k, Value: retry},
				})
				if !assert.NoError(t, err) {
					return
				}
				// Half-way, then a guard fails: the job rolls back alone.
				_, err = s.Apply(ctx, []store.Write{
					{Op: store.OpReplace, Collection: order.Inbound, Key: k, Value: []byte(`{"email":"a@b.c","paymentStatus":"paid","confirmationEmailSent":true}`), CAS: cas[0]},
					{Op: store.OpReplace, Collection: order.Inbound, Key: k, Value: []byte(`{}`), CAS: cas[0]},
				})
				assert.ErrorIs(t, err, store.ErrCASMismatch)
				err = nil
				switch i % 4 { // 3: left as it is
				case 0: // confirmed: the order marked, the retry removed
					_, err = s.Apply(ctx, []store.Write{
						{Op: store.OpReplace, Collection: order.Inbound, Key: k, Value: []byte(`{"email":"a@b.c","paymentStatus":"paid","confirmationEmailSent":true}`), CAS: cas[0]},
						{Op: store.OpRemove, Collection: order.Retry, Key: k, CAS: cas[1]},
					})
				case 1: // dead-lettered
					_, err = s.Apply(ctx, []store.Write{
						{Op: store.OpRemove, Collection: order.Retry, Key: k, CAS: cas[1]},
						{Op: store.OpInsert, Collection: order.DeadLetter, Key: k, Value: []byte(`{"docId":"x","reason":"max_attempts","lastStatus":503}`)},
					})
				case 2: // the order no longer paid; its retry re-armed for later
					_, err = s.Apply(ctx, []store.Write{
						{Op: store.OpUpsert, Collection: order.Inbound, Key: k, Value: []byte(`{"email":"a@b.c","paymentStatus":"refunded"}`)},
						{Op: store.OpReplace, Collection: order.Retry, Key: k, CAS: cas[1],
							Value: fmt.Appendf(nil, `{"docId":%q,"attempt":2,"ts":1,"nextAttemptAt":%d,"lastStatus":503}`, k, now.Add(time.Hour).UnixMilli())},
					})
				}
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	res, err := s.SweepRetries(ctx, time.Now(), time.Second, 30) // flags some of the retries left
	require.NoError(t, err)
	require.Equal(t, 30, res.Flagged)

	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, recount(t, s), c)
	assert.Equal(t, recountMinutes(t, s), dueMinutes(t, s))
	at := time.Now()
	b, err := s.Backlog(ctx, at, time.Second)
	require.NoError(t, err)
	var due int
	require.NoError(t, s.read.QueryRow(`SELECT count(*) FROM docs WHERE fire OR next_at <= ? OR ts_at < ?`,
		at.UnixMilli(), at.Add(-time.Second).UnixMilli()).Scan(&due))
	assert.Equal(t, due, b.Due, "the backlog's due count against a recount")
	assert.Greater(t, due, 30, "some due are left unflagged")
	assert.Equal(t, store.Counts{OrdersPaid: 150, OrdersConfirmed: 50, RetryDocs: 100, RetryFlagged: 30, DeadLetters: 50}, c)
	tallies, err := s.Reasons(ctx)
	require.NoError(t, err)
	assert.Equal(t, []store.Tally{{Reason: "retrying: HTTP 503", Count: 100}, {Reason: "dead: max_attempts (HTTP 503)", Count: 50}}, tallies)
}
