package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Config of the embedded store.
type Config struct {
	// Path of the database file; its directory is created private (0700)
	// and the file too (0600). Default ./data/ordermail.db.
	Path string
	// BusyTimeout is how long a write waits for another process holding the
	// file's write lock before failing with store.ErrUnavailable. Default 5s.
	BusyTimeout time.Duration
	// PollInterval is how often an idle feed looks for writes made by other
	// processes (writes of its own wake it at once). A look is one index
	// seek. Default 10ms.
	PollInterval time.Duration
	// ReadConns bounds the connections that read. Default 4.
	ReadConns int
	// MaxBatch bounds how many outcomes one commit carries. Default 128.
	MaxBatch int
	// CommitDelay is how long the writer, while writes marked
	// store.WithSharedCommit keep coming, waits for more of them before it
	// commits: a commit's cost is mostly its own, not its writes'. A write
	// after a quiet spell, or one not so marked, commits at once. Default
	// 2ms; negative: never wait.
	CommitDelay time.Duration
	// CheckInterval is how often the store checks that its file is still
	// the one it opened. Default 2s.
	CheckInterval time.Duration
	// ExpireInterval is how often a feed that does not move deletes the
	// documents whose expiry has passed (a moving one does at each save of
	// its checkpoint), in bounded batches. Default 1m.
	ExpireInterval time.Duration
	// ReadOnly opens the file for reading only, for a command that only
	// reads a store it cannot write (a read-only mount, a file not its
	// user's): as it is, with no writer, no upgrade and no change to the
	// file; every write fails with ErrReadOnly. Its schema must be this
	// version's. Open without it fails with ErrReadOnly on such a file.
	ReadOnly bool
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
		c.PollInterval = 10 * time.Millisecond
	}
	if c.ReadConns == 0 {
		c.ReadConns = 4
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 128
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = 2 * time.Second
	}
	if c.ExpireInterval == 0 {
		c.ExpireInterval = time.Minute
	}
	if c.CommitDelay == 0 {
		c.CommitDelay = 2 * time.Millisecond
	}
	return c
}

// ErrFileLost says the database file was deleted or replaced under the
// running store: its writes would go to a file nobody reads.
var ErrFileLost = errors.New("database file deleted or replaced")

// ErrBusy says another process's write held the store's lock past the busy
// timeout (a long transaction, a backup): it clears when that write ends.
// Errors that wrap it wrap store.ErrUnavailable too.
var ErrBusy = errors.New("busy with another process's write")

// ErrReadOnly says the store's file cannot be written here: Open fails with
// it on a file that only Config.ReadOnly can read, and a store so opened
// fails every write with it.
var ErrReadOnly = errors.New("read-only")

// Store is the embedded store. It is safe for concurrent use.
type Store struct {
	cfg   Config
	write *sql.Conn  // the one writer connection, owned by the writer goroutine
	wlock *writeLock // the writer goroutine's too
	wdb   *sql.DB
	read  *sql.DB
	stmts writeStmts
	reads readStmts

	jobs       chan *job
	stop       chan struct{}
	writerDone chan struct{}
	checkDone  chan struct{}
	ckptKick   chan struct{} // a commit asks checkpointLoop for a checkpoint
	ckptDone   chan struct{}
	ckpt       *sql.DB       // checkpointLoop's connection
	release    func()        // lets the upgrade lock go: the file is not open here any more (see upgrade)
	lost       chan struct{} // closed when the file is lost
	lostErr    error
	commits    atomic.Uint64 // transactions committed by the writer
	begun      atomic.Uint64 // transactions the writer tried to begin

	mu     sync.RWMutex
	subs   map[chan struct{}]struct{} // in-process feeds to wake after a write
	closed bool

	readOnly bool // Config.ReadOnly: read alone, no writer and no goroutine
}

var _ store.Store = (*Store)(nil)

type readStmts struct {
	get, getAttempts, state, stats, tallies, seq, feed *sql.Stmt
}

// openFailure says why the store file at path could not be opened for
// writing (openErr), from what a stat of it then said (statErr).
func openFailure(path string, openErr, statErr error) error {
	dir := filepath.Dir(path)
	switch {
	case errors.Is(openErr, syscall.EROFS):
		return fmt.Errorf("embedded store %s is %w (a read-only mount): %w", path, ErrReadOnly, openErr)
	case !errors.Is(openErr, os.ErrPermission):
		return fmt.Errorf("embedded store %s: %w", path, openErr)
	case errors.Is(statErr, fs.ErrNotExist):
		return fmt.Errorf("embedded store %s: cannot create it in %s: %w", path, dir, openErr)
	case statErr != nil:
		// Not even looked at: the directory is not this user's to enter
		// (it said "read-only" of a file that did not exist).
		return fmt.Errorf("embedded store %s: this user may not enter %s: %w", path, dir, statErr)
	default:
		// There, but not writable by this user. Said now: SQLite would
		// make its -wal and -shm files with the file's read-only mode,
		// and the store could not be written even once the file is.
		return fmt.Errorf("embedded store %s is %w (its file mode, or an immutable file): %w", path, ErrReadOnly, openErr)
	}
}

// Open opens, creating and upgrading if needed, the database file.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	cfg.Path = RealPath(cfg.Path)
	if cfg.ReadOnly {
		return openReadOnly(ctx, cfg)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("embedded store %s: this user may not enter, or create, a directory on its path: %w", cfg.Path, err)
		}
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, err)
	}
	// Created private before SQLite opens it; SQLite gives its -wal and -shm
	// files the database file's mode.
	if f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_CREATE, 0o600); err == nil {
		f.Close()
	} else {
		_, statErr := os.Stat(cfg.Path)
		return nil, openFailure(cfg.Path, err, statErr)
	}
	// Another program's file is refused before anything changes it, its
	// mode included.
	if err := refuseForeign(ctx, cfg.Path); err != nil {
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, err)
	}
	if err := makePrivate(cfg.Path); err != nil {
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, err)
	}
	ino, err := inode(cfg.Path)
	if err != nil {
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
		// The journal a statement or a job's savepoint keeps, to undo it,
		// in memory: SQLite moves it to a temporary file past 64KB, and a
		// job whose writes fall on scattered pages of a large store passes
		// that (a write call per page saved, 11% of the service's CPU
		// draining a million due retries).
		q.Add("_pragma", "temp_store(MEMORY)")
		return "file:" + cfg.Path + "?" + q.Encode() + extra
	}
	// The writer's own checkpoints are a backstop: checkpointLoop makes
	// them, off its path.
	wdb, err := sql.Open("sqlite", dsn("&_pragma=wal_autocheckpoint("+strconv.Itoa(writerCheckpointPages)+")"))
	if err != nil {
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, err)
	}
	wdb.SetMaxOpenConns(1)
	failOpen := func(err error) (*Store, error) {
		wdb.Close()
		var se *sqlite.Error
		if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_READONLY {
			return nil, fmt.Errorf("embedded store %s is %w (file mode, an immutable file or a read-only mount): %w", cfg.Path, ErrReadOnly, err)
		}
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, mapErr(err))
	}
	fail := failOpen
	release, err := upgrade(ctx, cfg.Path, dsn("&_txlock=immediate"), cfg.BusyTimeout)
	if err != nil {
		return fail(err)
	}
	fail = func(err error) (*Store, error) {
		release()
		return failOpen(err)
	}
	// A write now, so that a file that cannot be written fails here, with
	// a clear message, and not at the first outcome.
	if _, err := wdb.ExecContext(ctx, `UPDATE counters SET value = value WHERE name = 'seq'`); err != nil {
		return fail(err)
	}
	conn, err := wdb.Conn(ctx)
	if err != nil {
		return fail(err)
	}
	read, err := sql.Open("sqlite", dsn("&_pragma=query_only(1)"))
	if err != nil {
		conn.Close()
		return fail(err)
	}
	read.SetMaxOpenConns(cfg.ReadConns)
	read.SetMaxIdleConns(cfg.ReadConns)
	ckpt, err := sql.Open("sqlite", dsn(""))
	if err != nil {
		conn.Close()
		read.Close()
		return fail(err)
	}
	ckpt.SetMaxOpenConns(1)
	// Connected now, while the file is the store's: a connection made
	// later, after the file was deleted, would create an empty one.
	if err := ckpt.PingContext(ctx); err != nil {
		conn.Close()
		read.Close()
		ckpt.Close()
		return fail(err)
	}
	s := &Store{
		cfg: cfg, write: conn, wlock: openWriteLock(cfg.Path), wdb: wdb, read: read, subs: map[chan struct{}]struct{}{},
		jobs: make(chan *job, 1024), stop: make(chan struct{}), writerDone: make(chan struct{}),
		checkDone: make(chan struct{}), lost: make(chan struct{}),
		ckptKick: make(chan struct{}, 1), ckptDone: make(chan struct{}), ckpt: ckpt, release: release,
	}
	if err := s.prepare(ctx); err != nil {
		s.wlock.close()
		conn.Close()
		read.Close()
		ckpt.Close()
		return fail(err)
	}
	go s.writeLoop()
	go s.checkFile(ino)
	go s.checkpointLoop(ckpt)
	return s, nil
}

// openReadOnly opens cfg.Path for reading alone (Config.ReadOnly). SQLite
// reads a file in write-ahead-log mode read-only through its -shm file, or,
// where it cannot make one (a read-only mount, the store closed cleanly),
// as immutable: then a -wal file with commits in it would go unread, so it
// must have none.
func openReadOnly(ctx context.Context, cfg Config) (*Store, error) {
	if _, err := os.Stat(cfg.Path); err != nil {
		return nil, fmt.Errorf("embedded store %s: %w", cfg.Path, err)
	}
	fail := func(err error) (*Store, error) {
		return nil, fmt.Errorf("embedded store %s, read-only: %w", cfg.Path, err)
	}
	open := func(mode string) (*sql.DB, error) {
		q := url.Values{}
		q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", cfg.BusyTimeout.Milliseconds()))
		q.Add("_pragma", "query_only(1)")
		db, err := sql.Open("sqlite", "file:"+cfg.Path+"?"+mode+"&"+q.Encode())
		if err != nil {
			return nil, err
		}
		db.SetMaxOpenConns(cfg.ReadConns)
		db.SetMaxIdleConns(cfg.ReadConns)
		if err := schemaIsCurrent(ctx, db); err != nil {
			db.Close()
			return nil, err
		}
		return db, nil
	}
	// With no -wal and no -shm file (the store closed cleanly, nothing
	// runs on it), immutable: mode=ro would make them, beside a file
	// this user cannot write, with its mode.
	_, walErr := os.Stat(cfg.Path + "-wal")
	_, shmErr := os.Stat(cfg.Path + "-shm")
	var read *sql.DB
	var err error
	if errors.Is(walErr, fs.ErrNotExist) && errors.Is(shmErr, fs.ErrNotExist) {
		read, err = open("immutable=1")
	} else {
		read, err = open("mode=ro")
		var se *sqlite.Error
		if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CANTOPEN {
			if fi, statErr := os.Stat(cfg.Path + "-wal"); statErr == nil && fi.Size() > 0 {
				return fail(fmt.Errorf("its write-ahead log %s-wal, which holds commits, cannot be read here (no -shm file can be made beside it): copy the database and its -wal file somewhere writable, or read it where it was written", cfg.Path))
			}
			read, err = open("immutable=1")
		}
	}
	if err != nil {
		return fail(mapErr(err))
	}
	s := &Store{cfg: cfg, read: read, readOnly: true, subs: map[chan struct{}]struct{}{}, lost: make(chan struct{})}
	if err := s.prepareReads(ctx); err != nil {
		read.Close()
		return fail(err)
	}
	return s, nil
}

// schemaIsCurrent fails unless db is an ordermail store of this version's
// schema: one that reads alone can upgrade nothing.
func schemaIsCurrent(ctx context.Context, db *sql.DB) error {
	var version, docs int
	if err := db.QueryRowContext(ctx, `SELECT (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_schema WHERE name = 'docs')`).Scan(&version, &docs); err != nil {
		return err
	}
	switch {
	case docs == 0:
		return errors.New("not an ordermail store (no docs table); nothing was changed")
	case version > SchemaVersion:
		return fmt.Errorf("schema version %d is newer than this ordermail's %d: upgrade ordermail", version, SchemaVersion)
	case version < SchemaVersion:
		return fmt.Errorf("schema version %d, older than this ordermail's %d, which it cannot upgrade without writing: "+
			"open it once where it can be written (any command upgrades it), or read it with the ordermail that wrote it", version, SchemaVersion)
	}
	return nil
}

func (s *Store) prepare(ctx context.Context) error {
	if err := s.prepareReads(ctx); err != nil {
		return err
	}
	return s.prepareWrites(ctx)
}

func (s *Store) prepareReads(ctx context.Context) error {
	var err error
	r := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var st *sql.Stmt
		st, err = s.read.PrepareContext(ctx, q)
		return st
	}
	s.reads = readStmts{
		get:         r(`SELECT value, seq, created FROM docs WHERE coll = ? AND key = ?`),
		getAttempts: r(`SELECT value, rev, 0 FROM attempts WHERE key = ?`),
		state: r(`SELECT coll, value, seq, created FROM docs WHERE coll IN (?, ?, ?) AND key = ?
			UNION ALL SELECT 'attempts', value, rev, 0 FROM attempts WHERE key = ?`),
		stats:   r(`SELECT paid, confirmed, retry, fire, dead FROM stats`),
		tallies: r(`SELECT name, n FROM tallies WHERE n > 0 ORDER BY n DESC, name LIMIT 5`),
		seq:     r(`SELECT value FROM counters WHERE name = 'seq'`),
		feed:    r(feedQuery),
	}
	return err
}

// feedQuery reads the feed by position, whatever the history: a range scan
// of docs_by_seq (TestQueryPlans pins the plan). Positions ?2 (exclusive)
// to ?4, at most ?3 changes, each with its key's state: the order and the
// retry document (neither looked up for its own change, which is that row:
// a NULL key skips the search), the dead letter and the attempt record. With ?1 (FeedOptions.SkipSettled)
// the changes the watcher ignores unread are left out, before any state is
// read for them; ?5 is order.FarFuture from now (ms): a retry due later is
// delivered, and so is one the watcher cannot read (its tally is ?6,
// unreadableRetry).
const feedQuery = `SELECT d.coll, d.key, d.value, d.seq, d.created,
		o.value, o.seq, o.created, r.value, r.seq, r.created, l.value, l.seq, l.created,
		a.value, a.rev, 0
	FROM docs AS d INDEXED BY docs_by_seq
	LEFT JOIN docs AS o ON o.coll = 'inbound' AND o.key = (CASE WHEN d.coll = 'inbound' THEN NULL ELSE d.key END)
	LEFT JOIN docs AS r ON r.coll = 'retry' AND r.key = (CASE WHEN d.coll = 'retry' THEN NULL ELSE d.key END)
	LEFT JOIN docs AS l ON l.coll = 'deadletter' AND l.key = d.key
	LEFT JOIN attempts AS a ON a.key = d.key
	WHERE d.seq > ?2 AND d.seq <= ?4
		AND NOT (?1 AND (d.value IS NULL OR (d.coll = 'inbound' AND d.confirmed)
			OR (d.retry AND NOT d.fire AND d.tally IS NOT ?6
				AND (d.next_at < ?5 OR (d.next_at IS NULL AND d.ts_at IS NOT NULL)))))
	ORDER BY d.seq LIMIT ?3`

// Path is the database file.
func (s *Store) Path() string { return s.cfg.Path }

// Lost is closed when the database file is deleted or replaced under the
// store; every operation then fails with ErrFileLost.
func (s *Store) Lost() <-chan struct{} { return s.lost }

// Close finishes the writes under way and closes the database. Open
// subscriptions end with store.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for ch := range s.subs {
		close(ch)
	}
	s.subs = map[chan struct{}]struct{}{}
	s.mu.Unlock()
	if s.readOnly {
		return s.read.Close()
	}
	close(s.stop)
	<-s.writerDone
	<-s.checkDone
	<-s.ckptDone
	stmtsErr := s.write.Raw(func(any) error { return s.stmts.close() })
	err := errors.Join(stmtsErr, s.wlock.close(), s.write.Close(), s.wdb.Close(), s.read.Close(), s.ckpt.Close())
	s.release()
	return err
}

// checkFile notices the file being deleted or replaced (another inode at
// the path), which SQLite does not: it would keep writing to the unlinked
// file.
func (s *Store) checkFile(ino uint64) {
	defer close(s.checkDone)
	t := time.NewTicker(s.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		now, err := inode(s.cfg.Path)
		if err == nil && now == ino {
			continue
		}
		s.mu.Lock()
		if err != nil {
			s.lostErr = fmt.Errorf("embedded store %s: %w: %v", s.cfg.Path, ErrFileLost, err)
		} else {
			s.lostErr = fmt.Errorf("embedded store %s: %w (another file is at the path now)", s.cfg.Path, ErrFileLost)
		}
		s.mu.Unlock()
		close(s.lost)
		s.wake()
		return
	}
}

// inode identifies the file at path.
// makePrivate takes away the group's and others' access to the store's
// file and its -wal and -shm files, where they are there and have it: a
// file made by an earlier release (0644), or by another tool first. path
// is the real one (RealPath): a link the operator made to the store is
// resolved before.
func makePrivate(path string) error {
	for i, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if i > 0 && !fi.Mode().IsRegular() {
			// SQLite's own files, never links: one planted by another user
			// who may write to the directory would have SQLite write the
			// store's pages, or its chmod change, wherever it points.
			return fmt.Errorf("%s is not a regular file (%s): remove it (SQLite makes its own)", p, fi.Mode().Type())
		}
		perm := fi.Mode().Perm()
		if perm&0o077 == 0 {
			continue
		}
		err = os.Chmod(p, perm&^0o077)
		switch {
		case err == nil:
		case !errors.Is(err, fs.ErrPermission):
			return err
		case perm&0o007 != 0:
			// Another user's file that anyone may read: the store would
			// write customer data where every account can read it.
			return fmt.Errorf("%s is another user's file that every user may read (mode %#o), and only its owner can make it private: chmod o-rwx it, or give a store of this user", p, perm)
		default:
			// Another user's file shared with a group, on purpose: left
			// as it is (if this user cannot write it, the read-only check
			// below says so).
		}
	}
	return nil
}

// refuseForeign says when the file at path is another program's SQLite
// database: tables, and not the store's. It reads it without the store's
// settings (which would turn on write-ahead logging: a write), before
// anything else touches it. A file it cannot read is left to the checks
// that follow.
func refuseForeign(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return nil
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	if se, ok := errors.AsType[*sqlite.Error](err); ok && se.Code()&0xff == sqlite3.SQLITE_NOTADB {
		return errors.New("not an ordermail store: the file is not a SQLite database; nothing was changed")
	}
	if err != nil {
		return nil // one it cannot read, for one: the store's own open says so
	}
	defer rows.Close()
	var names []string
	ours := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil
		}
		names = append(names, name)
		ours[name] = name == "docs" || name == "counters"
	}
	if rows.Err() != nil || len(names) == 0 || (ours["docs"] && ours["counters"]) {
		return nil
	}
	if len(names) > 5 {
		names = append(names[:5], "...")
	}
	return fmt.Errorf("not an ordermail store: a SQLite database with tables %s and none of the store's (docs, counters); nothing was changed", strings.Join(names, ", "))
}

func inode(path string) (uint64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, nil
	}
	return st.Ino ^ uint64(st.Dev)<<48, nil
}

// check returns the error every operation fails with once the store is
// closed or its file lost.
func (s *Store) check() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.lostErr != nil {
		return s.lostErr
	}
	if s.closed {
		return store.ErrClosed
	}
	return nil
}

func (s *Store) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if err := s.check(); err != nil {
		return store.Doc{}, err
	}
	var value sql.NullString
	var d store.Doc
	var row *sql.Row
	if coll == order.Attempts {
		row = s.reads.getAttempts.QueryRowContext(ctx, key)
	} else {
		row = s.reads.get.QueryRowContext(ctx, coll, key)
	}
	err := row.Scan(&value, &d.CAS, &d.Incarnation)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !value.Valid) {
		return store.Doc{}, fmt.Errorf("get %s/%s: %w", coll, key, store.ErrNotFound)
	}
	if err != nil {
		return store.Doc{}, fmt.Errorf("get %s/%s: %w", coll, key, mapErr(err))
	}
	d.Key, d.Value = key, []byte(value.String)
	return d, nil
}

// State reads the order, its retry document, its dead letter and its attempt
// record in one query: four primary-key lookups.
func (s *Store) State(ctx context.Context, key string) (store.State, error) {
	if err := s.check(); err != nil {
		return store.State{}, err
	}
	var st store.State
	rows, err := s.reads.state.QueryContext(ctx, order.Inbound, order.Retry, order.DeadLetter, key, key)
	if err != nil {
		return store.State{}, fmt.Errorf("state of %s: %w", key, mapErr(err))
	}
	defer rows.Close()
	for rows.Next() {
		var coll string
		var value sql.NullString
		d := store.Doc{Key: key}
		if err := rows.Scan(&coll, &value, &d.CAS, &d.Incarnation); err != nil {
			return store.State{}, fmt.Errorf("state of %s: %w", key, mapErr(err))
		}
		if !value.Valid {
			continue // a tombstone
		}
		d.Value = []byte(value.String)
		switch coll {
		case order.Inbound:
			st.Order = d
		case order.Retry:
			st.Retry = d
		case order.DeadLetter:
			st.DeadLetter = d
		case order.Attempts:
			st.Attempts = d
		}
	}
	if err := rows.Err(); err != nil {
		return store.State{}, fmt.Errorf("state of %s: %w", key, mapErr(err))
	}
	return st, nil
}

func (s *Store) Insert(ctx context.Context, coll, key string, value []byte) (uint64, error) {
	return s.one(ctx, store.Write{Op: store.OpInsert, Collection: coll, Key: key, Value: value})
}

func (s *Store) Replace(ctx context.Context, coll, key string, value []byte, cas uint64) (uint64, error) {
	return s.one(ctx, store.Write{Op: store.OpReplace, Collection: coll, Key: key, Value: value, CAS: cas})
}

func (s *Store) Upsert(ctx context.Context, coll, key string, value []byte) (uint64, error) {
	return s.one(ctx, store.Write{Op: store.OpUpsert, Collection: coll, Key: key, Value: value})
}

func (s *Store) Remove(ctx context.Context, coll, key string, cas uint64) error {
	_, err := s.one(ctx, store.Write{Op: store.OpRemove, Collection: coll, Key: key, CAS: cas})
	return err
}

func (s *Store) one(ctx context.Context, w store.Write) (uint64, error) {
	cas, err := s.Apply(ctx, []store.Write{w})
	if err != nil {
		var we *store.WriteError
		if errors.As(err, &we) {
			err = we.Err // the single-write calls name the document themselves
		}
		return 0, fmt.Errorf("%s %s/%s: %w", w.Op, w.Collection, w.Key, err)
	}
	return cas[0], nil
}

// AtomicApply says that Apply's writes are one transaction: no reader
// ever sees part of them (a redrive's retry without its dead letter
// removed), so callers need not look for one half made.
func (s *Store) AtomicApply() bool { return true }

// Apply writes all of writes in one transaction, or none of them. Apply
// calls of many goroutines share commits (group commit): each is one
// savepoint of a transaction that carries up to MaxBatch of them.
func (s *Store) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	for _, w := range writes {
		if w.Op < store.OpInsert || w.Op > store.OpRemove {
			return nil, fmt.Errorf("apply: write %s/%s has no operation", w.Collection, w.Key)
		}
	}
	// Read here, on the caller's goroutine: the writer's time is everyone's.
	cols := make([]columns, len(writes))
	for i, w := range writes {
		if w.Op != store.OpRemove && w.Collection != order.Attempts {
			cols[i] = classify(w.Collection, w.Key, w.Value)
		}
	}
	cas := make([]uint64, len(writes))
	j := &job{ctx: ctx, done: make(chan struct{})}
	if distinctDocs(writes) {
		// Every guard first, then every write: a failed guard leaves
		// nothing to undo, so the job needs no savepoint. A first write
		// that is a guarded replace (an outcome's order) is made with its
		// guard in one statement, after the others' guards and before
		// their writes: its failure too leaves nothing to undo.
		fold := len(writes) > 0 && guardedReplace(writes[0])
		j.fn = func(t *txn) error {
			for i, w := range writes {
				if i == 0 && fold {
					continue
				}
				if err := t.check(w); err != nil {
					return err
				}
			}
			for i, w := range writes {
				var err error
				if i == 0 && fold {
					cas[i], err = t.replace(w, cols[i])
				} else {
					cas[i], err = t.write(w, cols[i])
				}
				if err != nil {
					return err
				}
			}
			return nil
		}
	} else {
		j.partial = true
		j.fn = func(t *txn) error {
			for i, w := range writes {
				var err error
				if cas[i], err = t.apply(w, cols[i]); err != nil {
					return err
				}
			}
			return nil
		}
	}
	err := s.submitJob(ctx, j)
	if err != nil {
		return nil, err
	}
	return cas, nil
}

// distinctDocs says whether no two writes touch the same document.
func distinctDocs(writes []store.Write) bool {
	for i := range writes {
		for k := range i {
			if writes[k].Collection == writes[i].Collection && writes[k].Key == writes[i].Key {
				return false
			}
		}
	}
	return len(writes) <= 16 // beyond, a map would be due; a savepoint is cheaper to reason about
}

// Counts reads counts that triggers keep with every write: O(1).
func (s *Store) Counts(ctx context.Context) (store.Counts, error) {
	if err := s.check(); err != nil {
		return store.Counts{}, err
	}
	var c store.Counts
	err := s.reads.stats.QueryRowContext(ctx).Scan(&c.OrdersPaid, &c.OrdersConfirmed, &c.RetryDocs, &c.RetryFlagged, &c.DeadLetters)
	if err != nil {
		return store.Counts{}, fmt.Errorf("counts: %w", mapErr(err))
	}
	return c, nil
}

// FlaggedRetries reads the flagged retries' count, which triggers keep
// with every write: O(1).
func (s *Store) FlaggedRetries(ctx context.Context) (int, error) {
	c, err := s.Counts(ctx)
	if err != nil {
		return 0, fmt.Errorf("flagged retries: %w", err)
	}
	return c.RetryFlagged, nil
}

// Reasons returns the five most common reasons retries and dead letters
// are there, with their numbers, from counts kept by triggers.
func (s *Store) Reasons(ctx context.Context) ([]store.Tally, error) {
	rows, err := s.reads.tallies.QueryContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("tallies: %w", mapErr(err))
	}
	defer rows.Close()
	var out []store.Tally
	for rows.Next() {
		var t store.Tally
		if err := rows.Scan(&t.Reason, &t.Count); err != nil {
			return nil, fmt.Errorf("tallies: %w", mapErr(err))
		}
		out = append(out, t)
	}
	return out, mapErr(rows.Err())
}

// Scan pages through a collection by key, from after on, so that no read
// transaction stays open while fn runs.
func (s *Store) Scan(ctx context.Context, coll, after string, fn func(store.Doc) error) error {
	if coll == order.Attempts {
		return fmt.Errorf("scan %s: attempt records are read by key", coll)
	}
	return s.scanPages(ctx, "scan "+coll, after, fn,
		`SELECT key, value, seq, created FROM docs WHERE coll = ? AND key > ? AND value IS NOT NULL ORDER BY key LIMIT ?`, coll)
}

// ScanDeadLetters reads the dead letters of reason on the index of their
// reason and key (TestQueryPlans): its cost grows with them, not with the
// other dead letters.
func (s *Store) ScanDeadLetters(ctx context.Context, reason, after string, fn func(store.Doc) error) error {
	return s.scanPages(ctx, "scan dead letters of "+reason, after, fn, deadLettersQuery, reason)
}

// ScanRetries reads the retries that wait for why (order.RetryDoc.Why;
// "": no failure recorded) on the index of their tally and key
// (TestQueryPlans): its cost grows with them, not with the other retries.
func (s *Store) ScanRetries(ctx context.Context, why, after string, fn func(store.Doc) error) error {
	tally := store.RetryTally(why)
	return s.scanPages(ctx, "scan retries "+tally, after, fn, retriesQuery, tally)
}

const retriesQuery = `SELECT key, value, seq, created FROM docs INDEXED BY retry_tally WHERE retry = 1 AND tally = ? AND key > ? ORDER BY key LIMIT ?`

const deadLettersQuery = `SELECT key, value, seq, created FROM docs INDEXED BY dead_reason WHERE reason = ? AND key > ? ORDER BY key LIMIT ?`

// scanPage is how many documents a scan reads at a time.
const scanPage = 500

// scanPages calls fn for the documents q reads from after on, a page at a
// time: q takes arg, the key to start after and the page's size, and
// reads key, value, seq and created in key order.
func (s *Store) scanPages(ctx context.Context, what, after string, fn func(store.Doc) error, q string, arg any) error {
	for {
		if err := s.check(); err != nil {
			return err
		}
		rows, err := s.read.QueryContext(ctx, q, arg, after, scanPage)
		if err != nil {
			return fmt.Errorf("%s: %w", what, mapErr(err))
		}
		var page []store.Doc
		for rows.Next() {
			var d store.Doc
			var v string
			if err := rows.Scan(&d.Key, &v, &d.CAS, &d.Incarnation); err != nil {
				rows.Close()
				return fmt.Errorf("%s: %w", what, mapErr(err))
			}
			d.Value = []byte(v)
			page = append(page, d)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return fmt.Errorf("%s: %w", what, mapErr(err))
		}
		for _, d := range page {
			if err := fn(d); err != nil {
				return err
			}
		}
		if len(page) < scanPage {
			return nil
		}
		after = page[len(page)-1].Key
	}
}

func (s *Store) wake() {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// mapErr turns SQLite's may-clear-by-itself failures into store.ErrUnavailable.
func mapErr(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("%w: %w: %w: %s", store.ErrUnavailable, store.ErrUnreachable, ErrBusy, strings.TrimSpace(se.Error()))
		case sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY,
			sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL:
			// The whole file's, as every failure of one file is.
			return fmt.Errorf("%w: %w: %s", store.ErrUnavailable, store.ErrUnreachable, strings.TrimSpace(se.Error()))
		}
	}
	return err
}

// RealPath is path with its symbolic links resolved, the file SQLite
// opens: its -wal and -shm files, and the lock files, go beside that one,
// whichever link names it (two services that name one store by two paths
// share one lock). A path not there yet resolves its directory; one that
// cannot be resolved is returned as it is.
func RealPath(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		return real
	}
	if dir, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
		return filepath.Join(dir, filepath.Base(path))
	}
	return path
}
