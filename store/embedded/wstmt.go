package embedded

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
)

// wstmt is a statement of the write connection, run on the driver itself.
// The writer is the connection's only user and runs each transaction inside
// the connection's Raw, so database/sql's pool, locks, dependency tracking
// and result objects bring it nothing, and they were a quarter of the
// writer's time besides SQLite's own (profiled: 9-11% of the service's CPU).
type wstmt struct {
	st driver.Stmt
}

// prepareRaw prepares q on the driver connection dc.
func prepareRaw(ctx context.Context, dc any, q string) (*wstmt, error) {
	pc, ok := dc.(driver.ConnPrepareContext)
	if !ok {
		return nil, fmt.Errorf("sqlite driver connection %T cannot prepare with a context", dc)
	}
	st, err := pc.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	return &wstmt{st: st}, nil
}

// named converts args as database/sql would for the types the writer uses.
func named(args []any) ([]driver.NamedValue, error) {
	nv := make([]driver.NamedValue, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case uint64:
			a = int64(v)
		case int:
			a = int64(v)
		case int64, string, []byte, bool, nil:
		default:
			return nil, fmt.Errorf("argument %d: %T is no SQLite value", i+1, a)
		}
		nv[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
	}
	return nv, nil
}

// Exec runs the statement.
func (w *wstmt) Exec(ctx context.Context, args ...any) error {
	_, err := w.ExecN(ctx, args...)
	return err
}

// ExecN runs the statement and returns how many rows it changed.
func (w *wstmt) ExecN(ctx context.Context, args ...any) (int64, error) {
	nv, err := named(args)
	if err != nil {
		return 0, err
	}
	res, err := w.st.(driver.StmtExecContext).ExecContext(ctx, nv)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// rows runs the statement as a query.
func (w *wstmt) rows(ctx context.Context, args []any) (driver.Rows, []driver.Value, error) {
	nv, err := named(args)
	if err != nil {
		return nil, nil, err
	}
	rows, err := w.st.(driver.StmtQueryContext).QueryContext(ctx, nv)
	if err != nil {
		return nil, nil, err
	}
	return rows, make([]driver.Value, len(rows.Columns())), nil
}

// idValue is a row id and a document's value, and a time of it (ms) when
// the statement reads a third column.
type idValue struct {
	id    int64
	value string
	at    int64
}

// IDValues runs the statement and returns the first two columns of every
// row: an integer and a text (a row id and a value), and the third, an
// integer, when there is one.
func (w *wstmt) IDValues(ctx context.Context, args ...any) ([]idValue, error) {
	rows, row, err := w.rows(ctx, args)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []idValue
	for {
		switch err := rows.Next(row); {
		case errors.Is(err, io.EOF):
			return out, nil
		case err != nil:
			return nil, err
		}
		id, ok := row[0].(int64)
		if !ok {
			return nil, fmt.Errorf("%T is not an integer", row[0])
		}
		var value string
		if err := scanValue(row[1], &value); err != nil { // a BLOB too: written by another program
			return nil, err
		}
		var at int64
		if len(row) > 2 {
			if at, ok = row[2].(int64); !ok {
				return nil, fmt.Errorf("%T is not an integer", row[2])
			}
		}
		out = append(out, idValue{id, value, at})
	}
}

// QueryRow runs the statement and keeps its first row for Scan.
func (w *wstmt) QueryRow(ctx context.Context, args ...any) wrow {
	rows, row, err := w.rows(ctx, args)
	if err != nil {
		return wrow{err: err}
	}
	defer rows.Close()
	switch err := rows.Next(row); {
	case errors.Is(err, io.EOF):
		return wrow{err: sql.ErrNoRows}
	case err != nil:
		return wrow{err: err}
	}
	return wrow{vals: row}
}

func (w *wstmt) Close() error { return w.st.Close() }

// wrow is the first row of a query, or its error (sql.ErrNoRows: none).
type wrow struct {
	vals []driver.Value
	err  error
}

// Scan copies the row's values into dest: *uint64, *bool, *sql.NullInt64
// or *string, what the writer reads.
func (r wrow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	if len(dest) != len(r.vals) {
		return fmt.Errorf("scan: %d values into %d destinations", len(r.vals), len(dest))
	}
	for i, v := range r.vals {
		if err := scanValue(v, dest[i]); err != nil {
			return fmt.Errorf("scan column %d: %w", i+1, err)
		}
	}
	return nil
}

func scanValue(v driver.Value, dest any) error {
	if d, ok := dest.(*sql.NullInt64); ok {
		*d = sql.NullInt64{}
		if v == nil {
			return nil
		}
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("%T is not an integer", v)
		}
		*d = sql.NullInt64{Int64: n, Valid: true}
		return nil
	}
	if d, ok := dest.(*string); ok {
		switch s := v.(type) {
		case string:
			*d = s
		case []byte:
			*d = string(s)
		default:
			return fmt.Errorf("%T is not text", v)
		}
		return nil
	}
	n, ok := v.(int64)
	if !ok {
		return fmt.Errorf("%T is not an integer", v)
	}
	switch d := dest.(type) {
	case *uint64:
		*d = uint64(n)
	case *bool:
		*d = n != 0
	default:
		return fmt.Errorf("cannot scan into %T", dest)
	}
	return nil
}
