package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Config of the embedded store.
type Config struct {
	// Path of the database file; its directory is created. Default ./data/ordermail.db.
	Path string
	// BusyTimeout is how long a write waits for another process holding the
	// file's write lock before failing with store.ErrUnavailable. Default 5s.
	BusyTimeout time.Duration
	// PollInterval is how often an idle feed looks for writes made by other
	// processes. Default 200ms.
	PollInterval time.Duration
}

// DefaultPath is where the store lives when no path is given.
const DefaultPath = "data/ordermail.db"

func (c Config) withDefaults() Config {
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if c.BusyTimeout == 0 {
		c.BusyTimeout = 5 * time.Second
	}
	if c.PollInterval == 0 {
		c.PollInterval = 200 * time.Millisecond
	}
	return c
}

// Store is the embedded store. It is safe for concurrent use.
type Store struct {
	cfg    Config
	write  *sql.DB // one connection: SQLite has one writer at a time anyway
	read   *sql.DB
	mu     sync.Mutex
	subs   map[chan struct{}]struct{} // in-process feeds to wake after a write
	closed bool
}

var _ store.Store = (*Store)(nil)

const schema = `
CREATE TABLE IF NOT EXISTS docs (
	coll    TEXT NOT NULL,
	key     TEXT NOT NULL,
	value   TEXT,              -- JSON; NULL for a deletion (tombstone)
	seq     INTEGER NOT NULL,  -- feed position and CAS
	PRIMARY KEY (coll, key)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS docs_by_seq ON docs (seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('seq', 0);
CREATE TABLE IF NOT EXISTS checkpoints (
	name      TEXT NOT NULL,
	partition INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	PRIMARY KEY (name, partition)
);
`

// Open opens, creating if needed, the database file.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o755); err != nil {
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, err)
	}
	dsn := func(extra string) string {
		q := url.Values{}
		q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", cfg.BusyTimeout.Milliseconds()))
		q.Add("_pragma", "journal_mode(WAL)")
		// NORMAL in WAL mode survives a process crash; a power loss can only
		// roll back a suffix of commits, never a checkpoint without the
		// outcome written before it.
		q.Add("_pragma", "synchronous(NORMAL)")
		return "file:" + cfg.Path + "?" + q.Encode() + extra
	}
	write, err := sql.Open("sqlite", dsn("&_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, err)
	}
	write.SetMaxOpenConns(1)
	read, err := sql.Open("sqlite", dsn("&_pragma=query_only(1)"))
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, err)
	}
	s := &Store{cfg: cfg, write: write, read: read, subs: map[chan struct{}]struct{}{}}
	// The schema statements write (a counter row), so a read-only file fails here.
	if _, err := write.ExecContext(ctx, schema); err != nil {
		s.Close()
		var se *sqlite.Error
		if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_READONLY {
			return nil, fmt.Errorf("embedded store %s is read-only (file mode, an immutable file or a read-only mount): %w", cfg.Path, err)
		}
		return nil, fmt.Errorf("embedded store %s: create schema: %w", cfg.Path, mapErr(err))
	}
	return s, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.cfg.Path }

// Close closes the database. Open subscriptions end with store.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	for ch := range s.subs {
		close(ch)
	}
	s.subs = map[chan struct{}]struct{}{}
	s.mu.Unlock()
	return errors.Join(s.write.Close(), s.read.Close())
}

func (s *Store) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	var value sql.NullString
	var seq uint64
	err := s.read.QueryRowContext(ctx, `SELECT value, seq FROM docs WHERE coll = ? AND key = ?`, coll, key).Scan(&value, &seq)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !value.Valid) {
		return store.Doc{}, fmt.Errorf("get %s/%s: %w", coll, key, store.ErrNotFound)
	}
	if err != nil {
		return store.Doc{}, fmt.Errorf("get %s/%s: %w", coll, key, mapErr(err))
	}
	return store.Doc{Key: key, Value: []byte(value.String), CAS: seq}, nil
}

func (s *Store) Insert(ctx context.Context, coll, key string, value []byte) (uint64, error) {
	var cas uint64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		cur, err := currentSeq(ctx, tx, coll, key)
		if err != nil {
			return err
		}
		if cur != 0 {
			return store.ErrExists
		}
		cas, err = put(ctx, tx, coll, key, value)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("insert %s/%s: %w", coll, key, err)
	}
	return cas, nil
}

func (s *Store) Replace(ctx context.Context, coll, key string, value []byte, cas uint64) (uint64, error) {
	var next uint64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := checkCAS(ctx, tx, coll, key, cas); err != nil {
			return err
		}
		var err error
		next, err = put(ctx, tx, coll, key, value)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("replace %s/%s: %w", coll, key, err)
	}
	return next, nil
}

func (s *Store) Upsert(ctx context.Context, coll, key string, value []byte) (uint64, error) {
	var cas uint64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		cas, err = put(ctx, tx, coll, key, value)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("upsert %s/%s: %w", coll, key, err)
	}
	return cas, nil
}

func (s *Store) Remove(ctx context.Context, coll, key string, cas uint64) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := checkCAS(ctx, tx, coll, key, cas); err != nil {
			return err
		}
		_, err := put(ctx, tx, coll, key, nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("remove %s/%s: %w", coll, key, err)
	}
	return nil
}

// SweepRetries flags due retry documents in one transaction. Documents that
// are not JSON, or without a numeric nextAttemptAt or ts, are left alone: the
// watcher dead-lettered them when they were written.
func (s *Store) SweepRetries(ctx context.Context, now time.Time, quantum time.Duration) (store.SweepResult, error) {
	var res store.SweepResult
	err := s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `
			SELECT key FROM docs
			WHERE coll = ? AND key != ? AND value IS NOT NULL
			  AND CASE WHEN json_valid(value) AND json_type(value) = 'object' THEN
			        json_extract(value, '$.fireRetry') IS NOT 1 AND
			        CASE WHEN json_type(value, '$.nextAttemptAt') IN ('integer', 'real')
			               THEN json_extract(value, '$.nextAttemptAt') <= ?
			             WHEN json_type(value, '$.ts') IN ('integer', 'real')
			               THEN json_extract(value, '$.ts') < ?
			             ELSE 0 END
			      ELSE 0 END
			ORDER BY seq`, order.Retry, order.ControlKey, now.UnixMilli(), now.Add(-quantum).UnixMilli())
		if err != nil {
			return err
		}
		var keys []string
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				rows.Close()
				return err
			}
			keys = append(keys, k)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for _, k := range keys {
			seq, err := nextSeq(ctx, tx)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx,
				`UPDATE docs SET value = json_set(value, '$.fireRetry', json('true')), seq = ? WHERE coll = ? AND key = ?`,
				seq, order.Retry, k); err != nil {
				return err
			}
		}
		res.Flagged = len(keys)
		return nil
	})
	if err != nil {
		return store.SweepResult{}, fmt.Errorf("sweep retries: %w", err)
	}
	return res, nil
}

// Scan pages through a collection by key, so that no read transaction stays
// open while fn runs.
func (s *Store) Scan(ctx context.Context, coll string, fn func(store.Doc) error) error {
	after := ""
	for {
		rows, err := s.read.QueryContext(ctx,
			`SELECT key, value, seq FROM docs WHERE coll = ? AND key > ? AND value IS NOT NULL ORDER BY key LIMIT 500`, coll, after)
		if err != nil {
			return fmt.Errorf("scan %s: %w", coll, mapErr(err))
		}
		var page []store.Doc
		for rows.Next() {
			var d store.Doc
			var v string
			if err := rows.Scan(&d.Key, &v, &d.CAS); err != nil {
				rows.Close()
				return fmt.Errorf("scan %s: %w", coll, mapErr(err))
			}
			d.Value = []byte(v)
			page = append(page, d)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return fmt.Errorf("scan %s: %w", coll, mapErr(err))
		}
		for _, d := range page {
			if err := fn(d); err != nil {
				return err
			}
		}
		if len(page) < 500 {
			return nil
		}
		after = page[len(page)-1].Key
	}
}

// field reads a top-level field of value, NULL when value is not JSON.
func field(name string) string {
	return fmt.Sprintf(`(CASE WHEN json_valid(value) AND json_type(value) = 'object' THEN json_extract(value, '$.%s') END)`, name)
}

func (s *Store) Counts(ctx context.Context) (store.Counts, error) {
	var c store.Counts
	paid := field("paymentStatus") + ` = 'paid'`
	err := s.read.QueryRowContext(ctx, `
		SELECT
		  coalesce(sum(coll = ?1 AND `+paid+`), 0),
		  coalesce(sum(coll = ?1 AND `+paid+` AND `+field("confirmationEmailSent")+` IS 1), 0),
		  coalesce(sum(coll = ?2 AND key != ?3), 0),
		  coalesce(sum(coll = ?2 AND key != ?3 AND `+field("fireRetry")+` IS 1), 0),
		  coalesce(sum(coll = ?4), 0)
		FROM docs WHERE value IS NOT NULL AND coll IN (?1, ?2, ?4)`,
		order.Inbound, order.Retry, order.ControlKey, order.DeadLetter,
	).Scan(&c.OrdersPaid, &c.OrdersConfirmed, &c.RetryDocs, &c.RetryFlagged, &c.DeadLetters)
	if err != nil {
		return store.Counts{}, fmt.Errorf("counts: %w", mapErr(err))
	}
	return c, nil
}

// tx runs fn in one write transaction and wakes the feeds after a commit.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return mapErr(err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return mapErr(err)
	}
	if err := tx.Commit(); err != nil {
		return mapErr(err)
	}
	s.wake()
	return nil
}

func (s *Store) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func currentSeq(ctx context.Context, tx *sql.Tx, coll, key string) (uint64, error) {
	var seq uint64
	err := tx.QueryRowContext(ctx, `SELECT seq FROM docs WHERE coll = ? AND key = ? AND value IS NOT NULL`, coll, key).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return seq, err
}

func checkCAS(ctx context.Context, tx *sql.Tx, coll, key string, cas uint64) error {
	cur, err := currentSeq(ctx, tx, coll, key)
	switch {
	case err != nil:
		return err
	case cur == 0:
		return store.ErrNotFound
	case cas != 0 && cas != cur:
		return store.ErrCASMismatch
	}
	return nil
}

func nextSeq(ctx context.Context, tx *sql.Tx) (uint64, error) {
	var seq uint64
	err := tx.QueryRowContext(ctx, `UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value`).Scan(&seq)
	return seq, err
}

// put writes value (nil: a tombstone) under the next sequence number.
func put(ctx context.Context, tx *sql.Tx, coll, key string, value []byte) (uint64, error) {
	seq, err := nextSeq(ctx, tx)
	if err != nil {
		return 0, err
	}
	var v any
	if value != nil {
		v = string(value)
	}
	_, err = tx.ExecContext(ctx, `
		INSERT INTO docs (coll, key, value, seq) VALUES (?, ?, ?, ?)
		ON CONFLICT (coll, key) DO UPDATE SET value = excluded.value, seq = excluded.seq`,
		coll, key, v, seq)
	return seq, err
}

// mapErr turns SQLite's may-clear-by-itself failures into store.ErrUnavailable.
func mapErr(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY,
			sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL:
			return fmt.Errorf("%w: %s", store.ErrUnavailable, strings.TrimSpace(se.Error()))
		}
	}
	return err
}
