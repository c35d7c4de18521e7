package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ordermail/ordermail/store"
)

const batchSize = 256

type subscription struct {
	s        *Store
	name     string
	colls    []string
	wake     chan struct{}
	acks     *store.AckTracker
	lastRead uint64        // highest seq handed out
	saved    uint64        // checkpoint last written
	buf      []store.Event // read, not yet handed out
	flushed  time.Time     // when the checkpoint was last saved
	closed   bool
}

// flushEvery bounds how much a busy feed replays after a crash.
const flushEvery = time.Second

// Subscribe opens the feed over collections after the checkpoint saved under
// name. The embedded store has one partition, 0.
func (s *Store) Subscribe(ctx context.Context, name string, collections []string, opts store.FeedOptions) (store.Subscription, error) {
	var start uint64
	err := s.read.QueryRowContext(ctx, `SELECT seq FROM checkpoints WHERE name = ? AND partition = 0`, name).Scan(&start)
	switch {
	case errors.Is(err, sql.ErrNoRows) && opts.FromNow:
		if err := s.read.QueryRowContext(ctx, `SELECT value FROM counters WHERE name = 'seq'`).Scan(&start); err != nil {
			return nil, fmt.Errorf("subscribe %s: %w", name, mapErr(err))
		}
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("subscribe %s: %w", name, mapErr(err))
	}
	sub := &subscription{
		s: s, name: name, colls: collections,
		wake:     make(chan struct{}, 1),
		acks:     store.NewAckTracker(map[uint16]uint64{0: start}),
		lastRead: start, saved: start,
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
	var poll *time.Ticker
	for len(sub.buf) == 0 {
		if err := sub.fill(ctx); err != nil {
			return store.Event{}, err
		}
		if len(sub.buf) > 0 {
			break
		}
		// Idle: a good moment to save what was acknowledged meanwhile.
		if err := sub.flush(ctx); err != nil && ctx.Err() == nil {
			return store.Event{}, err
		}
		if poll == nil {
			poll = time.NewTicker(sub.s.cfg.PollInterval)
			defer poll.Stop()
		}
		select {
		case <-ctx.Done():
			return store.Event{}, ctx.Err()
		case _, ok := <-sub.wake:
			if !ok {
				return store.Event{}, store.ErrClosed
			}
		case <-poll.C:
		}
	}
	ev := sub.buf[0]
	sub.buf = sub.buf[1:]
	ev.Ack = sub.acks.Deliver(0, ev.Seq)
	return ev, nil
}

func (sub *subscription) fill(ctx context.Context) error {
	args := []any{sub.lastRead}
	marks := make([]string, len(sub.colls))
	for i, c := range sub.colls {
		marks[i] = "?"
		args = append(args, c)
	}
	rows, err := sub.s.read.QueryContext(ctx, `
		SELECT coll, key, value, seq FROM docs
		WHERE seq > ? AND coll IN (`+strings.Join(marks, ",")+`)
		ORDER BY seq LIMIT `+fmt.Sprint(batchSize), args...)
	if err != nil {
		return fmt.Errorf("feed %s: %w", sub.name, mapErr(err))
	}
	defer rows.Close()
	for rows.Next() {
		var ev store.Event
		var value sql.NullString
		if err := rows.Scan(&ev.Collection, &ev.Key, &value, &ev.Seq); err != nil {
			return fmt.Errorf("feed %s: %w", sub.name, mapErr(err))
		}
		ev.CAS = ev.Seq
		ev.Deleted = !value.Valid
		if value.Valid {
			ev.Value = []byte(value.String)
		}
		sub.buf = append(sub.buf, ev)
		sub.lastRead = ev.Seq
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("feed %s: %w", sub.name, mapErr(err))
	}
	return nil
}

// flush saves the checkpoint if it moved.
func (sub *subscription) flush(ctx context.Context) error {
	cp := sub.acks.Checkpoints()[0]
	if cp == sub.saved {
		sub.flushed = time.Now()
		return nil
	}
	err := sub.s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
			INSERT INTO checkpoints (name, partition, seq) VALUES (?, 0, ?)
			ON CONFLICT (name, partition) DO UPDATE SET seq = excluded.seq`, sub.name, cp)
		return err
	})
	if err != nil {
		return fmt.Errorf("save checkpoint %s at %d: %w", sub.name, cp, err)
	}
	sub.saved = cp
	sub.flushed = time.Now()
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
	return sub.flush(ctx)
}
