package embedded

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ordermail/ordermail/order"
)

// The schema is versioned with SQLite's user_version: migrations[i] takes a
// file from version i to i+1, each in its own transaction. A file made by
// the first release (no user_version, the docs table without typed columns)
// counts as version 1.
var migrations = []func(ctx context.Context, tx *sql.Tx) error{
	migrateV1,
	migrateV2,
	migrateV3,
	migrateV4,
	migrateV5,
	migrateV6,
	migrateV7,
	migrateV8,
	migrateV9,
	migrateV10,
}

// SchemaVersion is the version Open brings every file to.
var SchemaVersion = len(migrations)

// schemaV1 is the first release's schema, kept as it was so that a new file
// goes through the same upgrade as an old one.
const schemaV1 = `
CREATE TABLE IF NOT EXISTS docs (
	coll    TEXT NOT NULL,
	key     TEXT NOT NULL,
	value   TEXT,
	seq     INTEGER NOT NULL,
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

func migrateV1(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, schemaV1)
	return err
}

// schemaV2 adds what the sweep, the counts and the status read, as typed
// columns written with each document (see classify), their indexes, and
// counts kept by triggers, so that none of them parses documents or grows
// with the number of documents.
const schemaV2 = `
CREATE TABLE docs2 (` + docsColumns + `,
	PRIMARY KEY (coll, key)
) WITHOUT ROWID;
CREATE TABLE stats (
	id        INTEGER PRIMARY KEY CHECK (id = 1),
	paid      INTEGER NOT NULL,
	confirmed INTEGER NOT NULL,
	retry     INTEGER NOT NULL,
	fire      INTEGER NOT NULL,
	dead      INTEGER NOT NULL
);
CREATE TABLE tallies (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
`

// docsColumns are docs' columns since version 2 (migrateV6 adds its row id).
const docsColumns = `
	coll      TEXT NOT NULL,
	key       TEXT NOT NULL,
	value     TEXT,                        -- JSON; NULL for a deletion (tombstone)
	seq       INTEGER NOT NULL,            -- feed position and CAS
	created   INTEGER NOT NULL DEFAULT 0,  -- seq of the write that created the key: the incarnation
	paid      INTEGER NOT NULL DEFAULT 0,  -- an order with paymentStatus "paid"
	confirmed INTEGER NOT NULL DEFAULT 0,  -- ... and confirmationEmailSent
	retry     INTEGER NOT NULL DEFAULT 0,  -- a retry document, the control document aside
	fire      INTEGER NOT NULL DEFAULT 0,  -- ... flagged fireRetry
	next_at   INTEGER,                     -- ... not flagged: its nextAttemptAt (ms)
	ts_at     INTEGER,                     -- ... not flagged, without nextAttemptAt: its ts (ms)
	dead      INTEGER NOT NULL DEFAULT 0,  -- a dead letter
	tally     TEXT                         -- why a retry or dead letter is there, for the status
`

// indexesV2 is what version 2 built on the typed table: its indexes, the
// counts of what it held, and the triggers that keep them.
const indexesV2 = docsIndexes + `
INSERT INTO stats (id, paid, confirmed, retry, fire, dead)
	SELECT 1, coalesce(sum(paid), 0), coalesce(sum(confirmed), 0), coalesce(sum(retry), 0),
	       coalesce(sum(fire), 0), coalesce(sum(dead), 0) FROM docs;
INSERT INTO tallies (name, n) SELECT tally, count(*) FROM docs WHERE tally IS NOT NULL GROUP BY tally;
` + docsTriggers

// docsIndexes are docs' indexes since version 2 (migrateV6 adds the key's).
const docsIndexes = `
CREATE UNIQUE INDEX docs_by_seq ON docs (seq);
CREATE INDEX retry_next ON docs (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX retry_ts ON docs (ts_at) WHERE ts_at IS NOT NULL;
CREATE INDEX tombstones ON docs (seq) WHERE value IS NULL;
`

// docsTriggers keep stats and tallies as docs changes.
const docsTriggers = `
-- OR FAIL, as the writer's statements say: no statement journal (writer.go).
-- A statement that fires a trigger and names a conflict clause overrides it.
CREATE TRIGGER docs_insert AFTER INSERT ON docs BEGIN
	UPDATE OR FAIL stats SET paid = paid + NEW.paid, confirmed = confirmed + NEW.confirmed, retry = retry + NEW.retry,
		fire = fire + NEW.fire, dead = dead + NEW.dead;
	INSERT OR FAIL INTO tallies (name, n) SELECT NEW.tally, 0 WHERE NEW.tally IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tallies WHERE name = NEW.tally);
	UPDATE OR FAIL tallies SET n = n + 1 WHERE name = NEW.tally;
END;
CREATE TRIGGER docs_update AFTER UPDATE ON docs BEGIN
	UPDATE OR FAIL stats SET paid = paid + NEW.paid - OLD.paid, confirmed = confirmed + NEW.confirmed - OLD.confirmed,
		retry = retry + NEW.retry - OLD.retry, fire = fire + NEW.fire - OLD.fire, dead = dead + NEW.dead - OLD.dead;
END;
CREATE TRIGGER docs_update_tally AFTER UPDATE ON docs WHEN OLD.tally IS NOT NEW.tally BEGIN
	UPDATE OR FAIL tallies SET n = n - 1 WHERE name = OLD.tally;
	INSERT OR FAIL INTO tallies (name, n) SELECT NEW.tally, 0 WHERE NEW.tally IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tallies WHERE name = NEW.tally);
	UPDATE OR FAIL tallies SET n = n + 1 WHERE name = NEW.tally;
END;
CREATE TRIGGER docs_delete AFTER DELETE ON docs BEGIN
	UPDATE OR FAIL stats SET paid = paid - OLD.paid, confirmed = confirmed - OLD.confirmed, retry = retry - OLD.retry,
		fire = fire - OLD.fire, dead = dead - OLD.dead;
	UPDATE OR FAIL tallies SET n = n - 1 WHERE name = OLD.tally;
END;
`

// migrateV2 copies every document into the typed table, classifying each
// once, in key order and in pages, so that memory stays bounded.
func migrateV2(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, schemaV2); err != nil {
		return err
	}
	ins, err := tx.PrepareContext(ctx, `INSERT INTO docs2 (coll, key, value, seq, created,
		paid, confirmed, retry, fire, next_at, ts_at, dead, tally) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	lastColl, lastKey := "", ""
	for {
		rows, err := tx.QueryContext(ctx, `SELECT coll, key, value, seq FROM docs
			WHERE (coll, key) > (?, ?) ORDER BY coll, key LIMIT 1000`, lastColl, lastKey)
		if err != nil {
			return err
		}
		type row struct {
			coll, key string
			value     sql.NullString
			seq       int64
		}
		var page []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.coll, &r.key, &r.value, &r.seq); err != nil {
				rows.Close()
				return err
			}
			page = append(page, r)
		}
		// A read that failed ends the rows as the last page would: the
		// rest would be dropped with the old table.
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		for _, r := range page {
			var value []byte
			var created int64
			stored := r.value
			if r.value.Valid {
				value, created = []byte(r.value.String), r.seq // the first release kept no creation
				if v, ok := withLegacyKey(r.coll, r.key, value); ok {
					value, stored = v, sql.NullString{String: string(v), Valid: true}
				}
			}
			c := classify(r.coll, r.key, value)
			if _, err := ins.ExecContext(ctx, append([]any{r.coll, r.key, stored, r.seq, created}, c.args()...)...); err != nil {
				return err
			}
		}
		if len(page) < 1000 {
			break
		}
		lastColl, lastKey = page[len(page)-1].coll, page[len(page)-1].key
	}
	for _, stmt := range []string{`DROP TABLE docs`, `ALTER TABLE docs2 RENAME TO docs`, indexesV2} {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}

// withLegacyKey is a retry document or dead letter of the first release,
// which kept no idempotency key and sent "confirmation:<key>" on every
// attempt, with that key written in: the attempts after the upgrade carry
// the key of those before it, not the order's incarnation, which an email
// service would take for a new confirmation. ok is false for a document
// that has a key, is not a JSON object, or is the control document.
func withLegacyKey(coll, key string, value []byte) ([]byte, bool) {
	switch {
	case coll == order.Retry && key != order.ControlKey:
		if _, err := order.DecodeRetryDoc(value); err != nil {
			return nil, false // left for the watcher to dead-letter as it is
		}
	case coll == order.DeadLetter:
		if _, err := order.DecodeDeadLetter(value); err != nil {
			return nil, false
		}
	default:
		return nil, false
	}
	var doc map[string]json.RawMessage
	if json.Unmarshal(value, &doc) != nil || doc == nil {
		return nil, false
	}
	if _, has := doc["idempotencyKey"]; has {
		return nil, false
	}
	k, err := json.Marshal(order.IdempotencyKey(key, 0))
	if err != nil {
		return nil, false
	}
	doc["idempotencyKey"] = k
	out, err := json.Marshal(doc)
	return out, err == nil
}

// migrateV3 adds the attempt records' table. They are off the feed, count
// for nothing and expire: a table of their own spares each record a
// sequence number, the feed's index, the counting triggers and the typed
// columns, which the documents of docs need and they do not. Their CAS is a
// revision of the row.
func migrateV3(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `
		CREATE TABLE attempts (
			key        TEXT PRIMARY KEY,
			value      TEXT NOT NULL,
			rev        INTEGER NOT NULL,  -- the CAS: 1 at its creation, one more at each write
			expires_at INTEGER            -- ms; NULL: never
		) WITHOUT ROWID;
		CREATE INDEX attempts_expiring ON attempts (expires_at) WHERE expires_at IS NOT NULL;`)
	return err
}

// migrateV4 records whether each saved subscription wants deletions (see
// txn.tombstones). One saved before is taken to want them until it is
// opened again, which says.
func migrateV4(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `ALTER TABLE checkpoints ADD COLUMN deletions INTEGER NOT NULL DEFAULT 1`)
	return err
}

// migrateV5 counts the retry documents not yet flagged by the minute they
// fall due, in due_minutes, kept by triggers as the stats are, so that the
// backlog's due count (Backlog) sums the minutes already past and counts
// on the index only the current minute's: its cost follows the minutes a
// backlog spans, not its documents (a million due retries counted one by
// one took 90ms). Kind 0 counts by next_at, kind 1 by ts_at; a minute is
// the column over 60,000, and a minute whose count falls to zero is
// deleted, so the table holds only minutes with retries waiting.
func migrateV5(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `
		CREATE TABLE due_minutes (
			kind   INTEGER NOT NULL,  -- 0: by next_at, 1: by ts_at
			minute INTEGER NOT NULL,  -- the column / 60000
			n      INTEGER NOT NULL,  -- above zero
			PRIMARY KEY (kind, minute)
		) WITHOUT ROWID;
		INSERT INTO due_minutes (kind, minute, n)
			SELECT 0, next_at / 60000, count(*) FROM docs INDEXED BY retry_next WHERE next_at IS NOT NULL GROUP BY 2;
		INSERT INTO due_minutes (kind, minute, n)
			SELECT 1, ts_at / 60000, count(*) FROM docs INDEXED BY retry_ts WHERE ts_at IS NOT NULL GROUP BY 2;`+dueTriggers(0, "next_at")+dueTriggers(1, "ts_at"))
	return err
}

// dueTriggers keeps due_minutes for one column of docs (kind 0: next_at,
// 1: ts_at). An update's old minute and its new one are triggers of their
// own: a flag (the column to NULL) runs two statements, not three.
func dueTriggers(kind int, col string) string {
	return strings.NewReplacer("KIND", strconv.Itoa(kind), "COL", col).Replace(`
		CREATE TRIGGER due_insert_COL AFTER INSERT ON docs WHEN NEW.COL IS NOT NULL BEGIN
			UPDATE OR FAIL due_minutes SET n = n + 1 WHERE kind = KIND AND minute = NEW.COL / 60000;
			INSERT OR FAIL INTO due_minutes (kind, minute, n) SELECT KIND, NEW.COL / 60000, 1
				WHERE NOT EXISTS (SELECT 1 FROM due_minutes WHERE kind = KIND AND minute = NEW.COL / 60000);
		END;
		CREATE TRIGGER due_update_COL_old AFTER UPDATE OF COL ON docs
		WHEN OLD.COL IS NOT NULL AND OLD.COL IS NOT NEW.COL BEGIN
			UPDATE OR FAIL due_minutes SET n = n - 1 WHERE kind = KIND AND minute = OLD.COL / 60000;
			DELETE FROM due_minutes WHERE kind = KIND AND minute = OLD.COL / 60000 AND n = 0;
		END;
		CREATE TRIGGER due_update_COL_new AFTER UPDATE OF COL ON docs
		WHEN NEW.COL IS NOT NULL AND OLD.COL IS NOT NEW.COL BEGIN
			UPDATE OR FAIL due_minutes SET n = n + 1 WHERE kind = KIND AND minute = NEW.COL / 60000;
			INSERT OR FAIL INTO due_minutes (kind, minute, n) SELECT KIND, NEW.COL / 60000, 1
				WHERE NOT EXISTS (SELECT 1 FROM due_minutes WHERE kind = KIND AND minute = NEW.COL / 60000);
		END;
		CREATE TRIGGER due_delete_COL AFTER DELETE ON docs WHEN OLD.COL IS NOT NULL BEGIN
			UPDATE OR FAIL due_minutes SET n = n - 1 WHERE kind = KIND AND minute = OLD.COL / 60000;
			DELETE FROM due_minutes WHERE kind = KIND AND minute = OLD.COL / 60000 AND n = 0;
		END;`)
}

// migrateV6 keeps documents and attempt records in rowid tables, their
// rows in the order they were written, found by key through an index of
// their own. Keyed by their key (WITHOUT ROWID), a row sat where its key
// sorts: with keys in no order (random identifiers), the retries that fall
// due together, their orders and their attempt records were scattered
// over the file, and every flag and outcome wrote a page of its own, where
// in write order they share pages. An index entry is a key and a row id,
// many to a page, so the pages a scattered key still touches are few.
// docs' rows are copied in feed order, so that a backlog written before the
// upgrade has that order too.
func migrateV6(ctx context.Context, tx *sql.Tx) error {
	if err := moveEarlyAttempts(ctx, tx); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `
		CREATE TABLE docs6 (
			id INTEGER PRIMARY KEY,  -- the row's place: the order written`+docsColumns+`);
		INSERT INTO docs6 (coll, key, value, seq, created, paid, confirmed, retry, fire, next_at, ts_at, dead, tally)
			SELECT coll, key, value, seq, created, paid, confirmed, retry, fire, next_at, ts_at, dead, tally
			FROM docs INDEXED BY docs_by_seq ORDER BY seq;
		DROP TABLE docs;
		ALTER TABLE docs6 RENAME TO docs;
		CREATE UNIQUE INDEX docs_by_key ON docs (coll, key);`+docsIndexes+docsTriggers+dueTriggers(0, "next_at")+dueTriggers(1, "ts_at")+`
		CREATE TABLE attempts6 (
			id         INTEGER PRIMARY KEY,  -- the row's place: the order written
			key        TEXT NOT NULL,
			value      TEXT NOT NULL,
			rev        INTEGER NOT NULL,     -- the CAS: 1 at its creation, one more at each write
			expires_at INTEGER               -- ms; NULL: never
		);
		INSERT INTO attempts6 (key, value, rev, expires_at) SELECT key, value, rev, expires_at FROM attempts;
		DROP TABLE attempts;
		ALTER TABLE attempts6 RENAME TO attempts;
		CREATE UNIQUE INDEX attempts_by_key ON attempts (key);
		CREATE INDEX attempts_expiring ON attempts (expires_at) WHERE expires_at IS NOT NULL;`)
	return err
}

// moveEarlyAttempts brings a file made by three commits of 2026-12-02
// (eaee1d8, c5748fd, cb22961) up to version 3 as it is now: their version 3
// kept attempt records in docs (coll 'attempts', with docs.expires_at) and
// made no attempts table, so migrateV6, which copies that table, failed on
// it for good. The records move to the table; in docs they counted for
// nothing (their typed columns are zero), so removing them changes no
// count. A file with the table is left as it is.
func moveEarlyAttempts(ctx context.Context, tx *sql.Tx) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'attempts'`).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	if err := migrateV3(ctx, tx); err != nil {
		return err
	}
	var hasExpiry int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM pragma_table_info('docs') WHERE name = 'expires_at'`).Scan(&hasExpiry); err != nil {
		return err
	}
	expiry := "NULL"
	if hasExpiry > 0 {
		expiry = "expires_at"
	}
	_, err := tx.ExecContext(ctx, `
		INSERT INTO attempts (key, value, rev, expires_at) SELECT key, value, 1, `+expiry+` FROM docs WHERE coll = 'attempts' AND value IS NOT NULL;
		DELETE FROM docs WHERE coll = 'attempts';`)
	return err
}

// migrateV7 makes the triggers' statements OR FAIL (docsTriggers,
// dueTriggers): made again from their definitions.
func migrateV7(ctx context.Context, tx *sql.Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'docs'`)
	if err != nil {
		return err
	}
	var drops strings.Builder
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		fmt.Fprintf(&drops, "DROP TRIGGER %q;\n", name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, drops.String()+docsTriggers+dueTriggers(0, "next_at")+dueTriggers(1, "ts_at"))
	return err
}

// migrateV8 keeps when a flagged retry document fell due, in fire_at with
// an index of its own, so that the oldest due counts the flagged ones too
// (backlogQuery): the sweep flags ahead of the sends, and a large backlog
// waits flagged. The flagged documents there are given it as classify
// does (classifyRetry), by SQLite's JSON functions: a numeric nextAttemptAt,
// or without one a numeric ts.
func migrateV8(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `
		ALTER TABLE docs ADD COLUMN fire_at INTEGER; -- a retry document flagged: when it fell due (ms)
		UPDATE docs SET fire_at = CASE
			WHEN json_type(value, '$.nextAttemptAt') IN ('integer', 'real') THEN CAST(json_extract(value, '$.nextAttemptAt') AS INTEGER)
			WHEN json_type(value, '$.nextAttemptAt') IN ('null') OR json_type(value, '$.nextAttemptAt') IS NULL THEN
				CASE WHEN json_type(value, '$.ts') IN ('integer', 'real') THEN CAST(json_extract(value, '$.ts') AS INTEGER) END
			END
		WHERE fire = 1 AND json_valid(value);
		CREATE INDEX retry_fired ON docs (fire_at) WHERE fire_at IS NOT NULL;`)
	return err
}

// migrateV9 counts the retry documents that a held-back send wrote (the
// circuit breaker open, the rate limit) as held back, where they counted
// as getting no answer: their lastError begins "not attempted: " and they
// have no lastStatus (order.RetryDoc.Why). Only those rows are written;
// the count triggers move them in tallies.
func migrateV9(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `
		UPDATE docs SET tally = 'retrying: `+order.WhyHeldBack+`'
		WHERE retry = 1 AND tally = 'retrying: `+order.WhyNoAnswer+`'
		  AND CASE WHEN json_valid(value) THEN substr(json_extract(value, '$.lastError'), 1, ?) = ? END`,
		len(order.NotAttemptedPrefix), order.NotAttemptedPrefix)
	return err
}

// migrateV10 keeps each readable dead letter's reason in a column of its
// own, indexed with the key, so that the dead letters of one reason are
// listed, redriven and purged without reading the others
// (Store.ScanDeadLetters), and indexes the retries' tally with the key, so
// that the retries of one reason are listed the same way (ScanRetries). The dead letters there are given it as classify
// does, decoded in Go a page at a time: SQLite's JSON functions read some
// documents differently from order.DecodeDeadLetter.
func migrateV10(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `ALTER TABLE docs ADD COLUMN reason TEXT; -- a readable dead letter's reason`); err != nil {
		return err
	}
	set, err := tx.PrepareContext(ctx, `UPDATE docs SET reason = ? WHERE id = ?`)
	if err != nil {
		return err
	}
	defer set.Close()
	const page = 1000
	for last := int64(0); ; {
		rows, err := tx.QueryContext(ctx, `SELECT id, value FROM docs WHERE id > ? AND dead = 1 ORDER BY id LIMIT ?`, last, page)
		if err != nil {
			return err
		}
		type row struct {
			id    int64
			value []byte
		}
		var got []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.id, &r.value); err != nil {
				rows.Close()
				return err
			}
			got = append(got, r)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		for _, r := range got {
			if c := classify(order.DeadLetter, "", r.value); c.reason != nil {
				if _, err := set.ExecContext(ctx, *c.reason, r.id); err != nil {
					return err
				}
			}
		}
		if len(got) < page {
			break
		}
		last = got[len(got)-1].id
	}
	_, err = tx.ExecContext(ctx, `
		CREATE INDEX dead_reason ON docs (reason, key) WHERE reason IS NOT NULL;
		CREATE INDEX retry_tally ON docs (tally, key) WHERE retry = 1;`)
	return err
}

// migrate brings the file to SchemaVersion.
func migrate(ctx context.Context, db *sql.DB) error { return migrateTo(ctx, db, SchemaVersion) }

// ErrUpgradeWhileRunning refuses to upgrade a file that an ordermail of an
// older version has open: its writes, made by statements of its own
// version, would not keep the new version's columns (dead letters without
// their reason, retries without their due time), for good.
var ErrUpgradeWhileRunning = errors.New("an ordermail of an older version has it open (a service, a standby or a command): stop it, then start this version, which upgrades the file")

// upgrade brings the file at path to SchemaVersion, through dsn (whose
// transactions take the write lock as they begin: see migrateTo), and
// returns with a shared lock on path.open that the store keeps while it is
// open: release lets it go.
//
// Every process that has the file open for writing holds path.open
// shared; an upgrade needs it exclusively, so a file is upgraded only
// while no process of an older version has it open (a service, a standby
// waiting to take over, a command): the upgrade waits up to grace for them
// to let it go, then refuses. Processes of releases that took no such lock
// are seen only while they run the feed (the process lock). One process at
// a time looks at the version, holding path.upgrade exclusively for the
// look alone, as releases before path.open did: two processes of this
// version opening the file at once upgrade it once (the second finds it
// done), the look is never made while another process makes the file (the
// second's connection met the first's schema half made, SQLITE_BUSY at
// once under the race detector), and an older release opening the file
// meanwhile waits a moment, never for as long as this store is open.
func upgrade(ctx context.Context, path, dsn string, grace time.Duration) (release func(), err error) {
	openPath := RealPath(path) + ".open"
	open, err := openLockFile(RealPath(path), openPath)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", openPath, err)
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		open.Close()
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var olderSince time.Time // when the file was first seen older, held open by others
	for {
		version, err := look(ctx, db, path, open)
		switch {
		case err != nil:
			open.Close() // lets the lock go
			return nil, err
		case version == SchemaVersion:
			return func() { open.Close() }, nil
		case version > SchemaVersion:
			open.Close()
			return nil, fmt.Errorf("schema version %d is newer than this ordermail's %d: upgrade ordermail", version, SchemaVersion)
		case olderSince.IsZero():
			olderSince = time.Now()
		case time.Since(olderSince) > grace:
			open.Close()
			return nil, fmt.Errorf("schema version %d is older than this ordermail's %d, and %w (waited %s for it to let %s go)",
				version, SchemaVersion, ErrUpgradeWhileRunning, grace, openPath)
		}
		select {
		case <-ctx.Done():
			open.Close()
			return nil, fmt.Errorf("wait for the processes of an older ordermail to let the file go (%s): %w", openPath, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// look takes the upgrade lock, and with it the open lock: exclusively
// when it can, to upgrade the file, then shared; shared when others have
// the file open. It returns the file's version with the open lock held
// shared when that is SchemaVersion, and with no lock held when the file
// stays older (others have it open) or is newer.
func look(ctx context.Context, db *sql.DB, path string, open *os.File) (int, error) {
	unlock, err := lockUpgrade(ctx, RealPath(path), RealPath(path)+".upgrade")
	if err != nil {
		return 0, err
	}
	defer unlock()
	if err := tryFlock(open, syscall.LOCK_EX); err == nil {
		if err := upgradeHeld(ctx, db, path); err != nil {
			return 0, err
		}
	} else if !errors.Is(err, syscall.EWOULDBLOCK) {
		return 0, fmt.Errorf("open lock %s: %w", open.Name(), err)
	}
	// Shared now, or beside the others. No process takes it exclusively
	// without the upgrade lock, which this one holds: nothing waits.
	if err := flock(open, syscall.LOCK_SH); err != nil {
		return 0, fmt.Errorf("open lock %s: %w", open.Name(), err)
	}
	version, err := fileVersion(ctx, db)
	if err != nil || version != SchemaVersion {
		flock(open, syscall.LOCK_UN)
	}
	return version, err
}

// upgradeHeld upgrades the file with the upgrade and open locks held
// exclusively. A
// file of an older version is upgraded only while no service of a release
// that held no upgrade lock runs on it (the process lock is free; it is
// let go again after).
func upgradeHeld(ctx context.Context, db *sql.DB, path string) error {
	version, err := fileVersion(ctx, db)
	if err != nil {
		return err
	}
	if version > 0 && version < SchemaVersion {
		// No lock file: no service has run here since it was deleted (one
		// that still runs notices within seconds and stops); none is made
		// for a standby to take for its own.
		l := NewProcessLock(path)
		if _, err := os.Stat(l.Path()); err == nil {
			ok, err := l.TryLock()
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("schema version %d is older than this ordermail's %d, and %w (it runs the feed: lock file %s)", version, SchemaVersion, ErrUpgradeWhileRunning, l.Path())
			}
			defer l.Unlock()
		}
	}
	return migrate(ctx, db)
}

// lockUpgrade takes the upgrade lock at path, waiting for another process
// that holds it until ctx ends. Every release holds it only for its look
// at the file (and its upgrade).
func lockUpgrade(ctx context.Context, dbPath, path string) (unlock func(), err error) {
	f, err := openLockFile(dbPath, path)
	if err != nil {
		return nil, fmt.Errorf("upgrade lock %s: %w", path, err)
	}
	for {
		err := tryFlock(f, syscall.LOCK_EX)
		if err == nil {
			return func() { flock(f, syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("upgrade lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another process upgrading the file (%s): %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tryFlock takes the lock how on f without waiting: EWOULDBLOCK when
// another process holds it.
func tryFlock(f *os.File, how int) error { return flock(f, how|syscall.LOCK_NB) }

// querier reads: a *sql.DB, a *sql.Conn or a *sql.Tx.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// fileVersion is the file's schema version: 0 for a file without the
// store's tables, 1 for one of the first release (which set none).
func fileVersion(ctx context.Context, q querier) (int, error) {
	var version int
	if err := q.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		return 0, err
	}
	if version == 0 {
		var n int
		if err := q.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE name = 'docs'`).Scan(&n); err != nil {
			return 0, err
		}
		if n > 0 {
			version = 1 // the first release set no user_version
		}
	}
	return version, nil
}

// migrateTo brings the file to version target, or says it is newer. Each
// step reads the version again in its own transaction: on a db whose
// transactions take the write lock as they begin (Open's: _txlock
// immediate), two processes opening an older file, or a new one, at once
// do not both make a step (the second failed on "duplicate column", or
// made a step twice).
func migrateTo(ctx context.Context, db *sql.DB, target int) error {
	version, err := fileVersion(ctx, db)
	if err != nil {
		return err
	}
	if version > SchemaVersion {
		return fmt.Errorf("schema version %d is newer than this ordermail's %d: upgrade ordermail", version, SchemaVersion)
	}
	if version >= target {
		return nil
	}
	// A migration that rebuilds a table sorts its indexes' entries: in
	// temporary files, not in memory (the store's temp_store), so that its
	// memory does not grow with the documents.
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `PRAGMA temp_store = FILE`); err != nil {
		return err
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `PRAGMA temp_store = MEMORY`)
	for {
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		v, err := fileVersion(ctx, tx)
		if err == nil && v > SchemaVersion {
			err = fmt.Errorf("schema version %d is newer than this ordermail's %d: upgrade ordermail", v, SchemaVersion)
		}
		if err != nil || v >= target {
			tx.Rollback()
			return err // made meanwhile by another process, or an error
		}
		if err := migrations[v](ctx, tx); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate schema to version %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, v+1)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate schema to version %d: %w", v+1, err)
		}
	}
}
