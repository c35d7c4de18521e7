package embedded

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// batchSize is how many changes one feed read takes, and scanWindow how
// many positions it looks at, at most: with SkipSettled a long run of
// changes left out (a history of confirmed orders) is passed over a window
// at a time.
const (
	batchSize  = 256
	scanWindow = 4096
)

// purgeBatch bounds the tombstones, and the expired documents, one
// transaction removes; a flush that finds a batch full goes on in further
// transactions, up to flushRounds of them, so that removals keep up with
// writes (a settled order's attempt record expires in turn: at 1,000 a
// second, ten thousand orders a second grew the records for good) and the
// writer's other work goes between them.
const (
	purgeBatch  = 1000
	flushRounds = 16
)

type subscription struct {
	s           *Store
	name        string
	colls       []string
	skipSettled bool // FeedOptions.SkipSettled
	wake        chan struct{}
	acks        *store.AckTracker
	lastRead    uint64  // highest seq read
	saved       uint64  // checkpoint last written
	buf         []entry // read, not yet handed out
	flushed     time.Time
	expired     time.Time     // expired documents last deleted
	tidyFailed  time.Time     // the purges last failed: tried again an ExpireInterval after
	idle        time.Duration // the next wait for other processes' writes
	closed      bool
}

// entry is a change read from the feed; skip marks one of a collection
// nobody subscribed to, or one FeedOptions.SkipSettled leaves out,
// which only moves the checkpoint.
type entry struct {
	ev   store.Event
	skip bool
}

// flushEvery bounds how much a busy feed replays after a crash.
const flushEvery = time.Second

// Subscribe opens the feed over collections after the checkpoint saved under
// name. The embedded store has one partition, 0. A subscription is saved
// before Subscribe returns, with whether it wants deletions (not with
// SkipSettled: see txn.tombstones) and, the first time, its start: the
// feed's beginning, or with FromNow its current end, so that a crash
// before its first acknowledgement cannot skip what came after that
// position.
func (s *Store) Subscribe(ctx context.Context, name string, collections []string, opts store.FeedOptions) (store.Subscription, error) {
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	var start uint64
	err := s.submit(ctx, func(t *txn) error {
		from := uint64(0)
		if opts.FromNow {
			from = t.seq
		}
		t.tombs = 0 // read again by the next removal
		return s.stmts.register.QueryRow(t.ctx, name, from, !opts.SkipSettled).Scan(&start)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	sub := &subscription{
		s: s, name: name, colls: slices.Clone(collections), skipSettled: opts.SkipSettled,
		wake:     make(chan struct{}, 1),
		acks:     store.NewAckTracker(map[uint16]uint64{0: start}),
		lastRead: start, saved: start, flushed: time.Now(), idle: s.cfg.PollInterval,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("subscribe %s: %w", name, store.ErrClosed)
	}
	s.subs[sub.wake] = struct{}{}
	return sub, nil
}

func (sub *subscription) Next(ctx context.Context) (store.Event, error) {
	if sub.closed {
		return store.Event{}, store.ErrClosed
	}
	if time.Since(sub.flushed) >= flushEvery {
		if err := sub.flush(ctx); err != nil {
			return store.Event{}, err
		}
	}
	var poll *time.Timer
	for {
		// Nothing read ahead is handed out once the store is lost or
		// closed: its outcome could not be written.
		if err := sub.s.check(); err != nil {
			sub.buf = nil
			return store.Event{}, err
		}
		for len(sub.buf) > 0 {
			e := sub.buf[0]
			sub.buf = sub.buf[1:]
			if e.skip {
				sub.acks.Skip(0, e.ev.Seq)
				continue
			}
			e.ev.Ack = sub.acks.Deliver(0, e.ev.Seq)
			return e.ev, nil
		}
		if err := sub.fill(ctx); err != nil {
			return store.Event{}, err
		}
		if len(sub.buf) > 0 {
			sub.idle = sub.s.cfg.PollInterval
			continue
		}
		// Idle: a good moment to save what was acknowledged meanwhile, at
		// most once a flushEvery: a save is a commit, and waiting for one
		// each time the reader catches up would pace the reader.
		if time.Since(sub.flushed) >= flushEvery {
			if err := sub.flush(ctx); err != nil && ctx.Err() == nil {
				return store.Event{}, err
			}
		}
		// Idle: look again after PollInterval, doubling while nothing comes
		// up to idlePoll, so that an idle service costs next to nothing and
		// a busy one sees other processes' writes at once.
		if poll == nil {
			poll = time.NewTimer(sub.idle)
			defer poll.Stop()
		} else {
			poll.Reset(sub.idle)
		}
		select {
		case <-ctx.Done():
			return store.Event{}, ctx.Err()
		case _, ok := <-sub.wake:
			if !ok {
				return store.Event{}, store.ErrClosed
			}
			sub.idle = sub.s.cfg.PollInterval
		case <-poll.C:
			sub.idle = min(2*sub.idle, max(idlePoll, sub.s.cfg.PollInterval))
		}
	}
}

// idlePoll is the longest wait for other processes' writes of a feed that
// has seen nothing for a while.
const idlePoll = 80 * time.Millisecond

// fill reads the next changes by position, in every collection: the read
// is a range scan of docs_by_seq whatever the history, and the changes of
// collections not subscribed to, or left out by SkipSettled, move the
// checkpoint too.
func (sub *subscription) fill(ctx context.Context) error {
	// One read transaction: the position and the rows of one snapshot, each
	// row with the state of its key (three or four primary-key lookups), so
	// that the watcher need not read it again. The state's time is taken
	// before it begins: whatever was written before that time is in it.
	at := time.Now()
	tx, err := sub.s.read.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("feed %s: %w", sub.name, mapErr(err))
	}
	defer tx.Rollback()
	var snapshot uint64
	if err := tx.StmtContext(ctx, sub.s.reads.seq).QueryRowContext(ctx).Scan(&snapshot); err != nil {
		return fmt.Errorf("feed %s: %w", sub.name, mapErr(err))
	}
	upTo := min(snapshot, sub.lastRead+scanWindow)
	rows, err := tx.StmtContext(ctx, sub.s.reads.feed).QueryContext(ctx, sub.skipSettled, sub.lastRead, batchSize,
		upTo, time.Now().Add(order.FarFuture).UnixMilli(), unreadableRetry)
	if err != nil {
		return fmt.Errorf("feed %s: %w", sub.name, mapErr(err))
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var ev store.Event
		var value sql.NullString
		var docs [4]stateCols
		n++
		if err := rows.Scan(&ev.Collection, &ev.Key, &value, &ev.Seq, &ev.Incarnation,
			&docs[0].value, &docs[0].seq, &docs[0].created, &docs[1].value, &docs[1].seq, &docs[1].created,
			&docs[2].value, &docs[2].seq, &docs[2].created, &docs[3].value, &docs[3].seq, &docs[3].created); err != nil {
			return fmt.Errorf("feed %s: %w", sub.name, mapErr(err))
		}
		sub.lastRead = ev.Seq
		if !slices.Contains(sub.colls, ev.Collection) {
			sub.buf = append(sub.buf, entry{ev: ev, skip: true})
			continue
		}
		ev.CAS = ev.Seq
		ev.Deleted = !value.Valid
		if value.Valid {
			ev.Value = []byte(value.String)
		}
		// An order's or retry document's own change is that row, shared:
		// it was not looked up.
		ord, retry := docs[0].doc(ev.Key), docs[1].doc(ev.Key)
		row := store.Doc{Key: ev.Key, Value: ev.Value, CAS: ev.Seq, Incarnation: ev.Incarnation}
		switch {
		case ev.Deleted:
		case ev.Collection == order.Inbound:
			ord = row
		case ev.Collection == order.Retry:
			retry = row
		}
		ev.State = &store.State{Order: ord, Retry: retry, DeadLetter: docs[2].doc(ev.Key), Attempts: docs[3].doc(ev.Key)}
		ev.Snapshot, ev.StateAt = snapshot, at
		sub.buf = append(sub.buf, entry{ev: ev})
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("feed %s: %w", sub.name, mapErr(err))
	}
	if n < batchSize && upTo > sub.lastRead {
		// Every position up to upTo was looked at: what is not in buf was
		// left out, and the checkpoint may pass it.
		sub.buf = append(sub.buf, entry{ev: store.Event{Seq: upTo}, skip: true})
		sub.lastRead = upTo
	}
	return nil
}

// stateCols is one document of a key's state as the feed query reads it.
type stateCols struct {
	value        sql.NullString
	seq, created sql.NullInt64
}

func (c stateCols) doc(key string) store.Doc {
	if !c.value.Valid {
		return store.Doc{} // absent, or a tombstone
	}
	return store.Doc{Key: key, Value: []byte(c.value.String), CAS: uint64(c.seq.Int64), Incarnation: uint64(c.created.Int64)}
}

// flush saves the checkpoint if it moved, and purges a bounded number of
// tombstones that every saved checkpoint has passed (no feed can need them)
// and of expired documents; those too, at most once an ExpireInterval,
// while the checkpoint does not move, so that an idle store's expired
// documents go as well. The purges are the store's housekeeping: when they
// fail (an index damaged, say) the checkpoint is saved all the same, the
// error is returned once, for the reader to say, and they are tried again
// an ExpireInterval later, so that the feed goes on meanwhile.
// maxPutOff is the longest an expired attempt record held back is put off
// at a time (see postponeQuery).
const maxPutOff = 24 * time.Hour

func (sub *subscription) flush(ctx context.Context) error {
	cp := sub.acks.Checkpoints()[0]
	moved := cp != sub.saved
	tidy := time.Since(sub.tidyFailed) >= sub.s.cfg.ExpireInterval
	if !moved && (!tidy || time.Since(sub.expired) < sub.s.cfg.ExpireInterval) {
		sub.flushed = time.Now()
		return nil
	}
	st := sub.s.stmts
	if moved {
		if err := sub.s.submit(ctx, func(t *txn) error { return st.saveCheckpoint.Exec(t.ctx, sub.name, cp) }); err != nil {
			return fmt.Errorf("save feed %s's checkpoint %d: %w", sub.name, cp, err)
		}
		sub.saved = cp
	}
	if !tidy {
		sub.flushed = time.Now()
		return nil
	}
	purging, expiring := moved, true
	for round := 0; round < flushRounds && (purging || expiring); round++ {
		// The job may run again (a batch rolled back): it sets only what
		// it found, from what the round began with.
		var purged, expired int64
		err := sub.s.submit(ctx, func(t *txn) error {
			purged, expired = 0, 0
			// The lowest checkpoint, each round: a subscription registered
			// meanwhile may have lowered it. With none saved (none read
			// yet), every change is still to be delivered.
			var low sql.NullInt64
			if err := st.minCkpt.QueryRow(t.ctx).Scan(&low); err != nil {
				return err
			}
			var err error
			if purging && low.Valid {
				if purged, err = st.purge.ExecN(t.ctx, low.Int64, purgeBatch); err != nil {
					return err
				}
			}
			if expiring {
				now := time.Now()
				if expired, err = st.expire.ExecN(t.ctx, now.UnixMilli(), low.Int64, purgeBatch, order.Inbound); err != nil {
					return err
				}
				var later int64
				later, err = st.postpone.ExecN(t.ctx, now.UnixMilli(), low.Int64, purgeBatch, order.Inbound,
					sub.s.cfg.ExpireInterval.Milliseconds(), maxPutOff.Milliseconds())
				expired += later // read: the next round reads those after them
			}
			return err
		})
		if err != nil && ctx.Err() != nil {
			return err // the reader's wait ended: no failure of the purges, tried again at its next flush
		}
		if err != nil {
			sub.tidyFailed = time.Now()
			sub.flushed = sub.tidyFailed
			return fmt.Errorf("feed %s: purging tombstones and expired documents failed (the feed goes on; tried again in %s): %w",
				sub.name, sub.s.cfg.ExpireInterval, err)
		}
		// A whole batch: more may be left. (The expiry's two statements
		// read a batch each, the second past what the first deleted: a
		// batch or more between them.)
		purging, expiring = purged == purgeBatch, expiring && expired >= purgeBatch
	}
	sub.flushed = time.Now()
	if !expiring { // still a whole batch: more may have expired, deleted at the next flush
		sub.expired = sub.flushed
	}
	return nil
}

// Close saves the checkpoint of everything acknowledged so far. Events
// handed out but not acknowledged will be delivered again.
func (sub *subscription) Close(ctx context.Context) error {
	if sub.closed {
		return nil
	}
	sub.closed = true
	sub.s.mu.Lock()
	delete(sub.s.subs, sub.wake)
	sub.s.mu.Unlock()
	if err := sub.s.check(); err != nil {
		return err
	}
	return sub.flush(ctx)
}
