package couchbase

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ordermail/ordermail/internal/redact"
	"log/slog"
	"slices"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// Store is the Couchbase store. It is safe for concurrent use.
type Store struct {
	cfg     Config
	pw      string
	cluster *gocb.Cluster
	colls   map[string]*gocb.Collection
	log     *slog.Logger
}

var _ store.Store = (*Store)(nil)

// collections are the ones in Bucket.Scope that ordermail uses.
var collections = []string{order.Inbound, order.Retry, order.DeadLetter}

// Open connects and checks that the buckets and collections exist.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cluster, pw, err := connect(cfg)
	if err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, pw: pw, cluster: cluster, colls: map[string]*gocb.Collection{}, log: log.With("component", "couchbase")}
	if err := s.open(ctx); err != nil {
		cluster.Close(nil)
		return nil, err
	}
	return s, nil
}

func connect(cfg Config) (*gocb.Cluster, string, error) {
	pw, err := cfg.password()
	if err != nil {
		return nil, "", err
	}
	pool, err := cfg.caPool()
	if err != nil {
		return nil, "", err
	}
	opts := gocb.ClusterOptions{
		Authenticator: gocb.PasswordAuthenticator{Username: cfg.Username, Password: pw},
		TimeoutsConfig: gocb.TimeoutsConfig{
			ConnectTimeout: 3 * cfg.Timeout, KVTimeout: cfg.Timeout, QueryTimeout: cfg.Timeout,
			ManagementTimeout: 3 * cfg.Timeout,
		},
		Transcoder: passthrough{},
	}
	if pool != nil {
		opts.SecurityConfig.TLSRootCAs = pool
	}
	cluster, err := gocb.Connect(cfg.ConnStr, opts)
	if err != nil {
		return nil, "", fmt.Errorf("connect to %s: %w", redact.URL(cfg.ConnStr), err)
	}
	return cluster, pw, nil
}

func (s *Store) open(ctx context.Context) error {
	for _, name := range []string{s.cfg.Bucket, s.cfg.MetadataBucket} {
		b := s.cluster.Bucket(name)
		if err := b.WaitUntilReady(3*s.cfg.Timeout, &gocb.WaitUntilReadyOptions{Context: ctx}); err != nil {
			return fmt.Errorf("bucket %s on %s is not reachable (missing? run ordermail setup; wrong credentials?): %w",
				name, redact.URL(s.cfg.ConnStr), err)
		}
	}
	bucket := s.cluster.Bucket(s.cfg.Bucket)
	scopes, err := bucket.CollectionsV2().GetAllScopes(&gocb.GetAllScopesOptions{Context: ctx})
	if err != nil {
		return fmt.Errorf("list collections of bucket %s: %w", s.cfg.Bucket, err)
	}
	if missing := missingCollections(scopes, s.cfg.Scope); len(missing) > 0 {
		return fmt.Errorf("bucket %s lacks collections %v in scope %s: run ordermail setup", s.cfg.Bucket, missing, s.cfg.Scope)
	}
	for _, c := range collections {
		s.colls[c] = bucket.Scope(s.cfg.Scope).Collection(c)
	}
	s.colls[store.Meta] = s.cluster.Bucket(s.cfg.MetadataBucket).DefaultCollection()
	return nil
}

func missingCollections(scopes []gocb.ScopeSpec, scope string) []string {
	have := map[string]bool{}
	for _, sc := range scopes {
		if sc.Name == scope {
			for _, c := range sc.Collections {
				have[c.Name] = true
			}
		}
	}
	var missing []string
	for _, c := range collections {
		if !have[c] {
			missing = append(missing, c)
		}
	}
	return missing
}

// Close disconnects.
func (s *Store) Close() error { return s.cluster.Close(nil) }

func (s *Store) coll(name string) (*gocb.Collection, error) {
	c, ok := s.colls[name]
	if !ok {
		return nil, fmt.Errorf("collection %q is not one of ordermail's %v", name, append(slices.Clone(collections), store.Meta))
	}
	return c, nil
}

func (s *Store) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	c, err := s.coll(coll)
	if err != nil {
		return store.Doc{}, err
	}
	res, err := c.Get(key, &gocb.GetOptions{Context: ctx})
	if err != nil {
		return store.Doc{}, fmt.Errorf("get %s/%s: %w", coll, key, mapErr(err))
	}
	var value []byte
	if err := res.Content(&value); err != nil {
		return store.Doc{}, fmt.Errorf("get %s/%s: %w", coll, key, err)
	}
	return store.Doc{Key: key, Value: value, CAS: uint64(res.Cas())}, nil
}

func (s *Store) Insert(ctx context.Context, coll, key string, value []byte) (uint64, error) {
	c, err := s.coll(coll)
	if err != nil {
		return 0, err
	}
	res, err := c.Insert(key, value, &gocb.InsertOptions{Context: ctx})
	if err != nil {
		return 0, fmt.Errorf("insert %s/%s: %w", coll, key, mapErr(err))
	}
	return uint64(res.Cas()), nil
}

func (s *Store) Replace(ctx context.Context, coll, key string, value []byte, cas uint64) (uint64, error) {
	c, err := s.coll(coll)
	if err != nil {
		return 0, err
	}
	res, err := c.Replace(key, value, &gocb.ReplaceOptions{Context: ctx, Cas: gocb.Cas(cas)})
	if err != nil {
		return 0, fmt.Errorf("replace %s/%s: %w", coll, key, mapErr(err))
	}
	return uint64(res.Cas()), nil
}

func (s *Store) Upsert(ctx context.Context, coll, key string, value []byte) (uint64, error) {
	c, err := s.coll(coll)
	if err != nil {
		return 0, err
	}
	res, err := c.Upsert(key, value, &gocb.UpsertOptions{Context: ctx})
	if err != nil {
		return 0, fmt.Errorf("upsert %s/%s: %w", coll, key, mapErr(err))
	}
	return uint64(res.Cas()), nil
}

func (s *Store) Remove(ctx context.Context, coll, key string, cas uint64) error {
	c, err := s.coll(coll)
	if err != nil {
		return err
	}
	if _, err := c.Remove(key, &gocb.RemoveOptions{Context: ctx, Cas: gocb.Cas(cas)}); err != nil {
		return fmt.Errorf("remove %s/%s: %w", coll, key, mapErr(err))
	}
	return nil
}

func (s *Store) keyspace(coll string) string {
	return fmt.Sprintf("`%s`.`%s`.`%s`", s.cfg.Bucket, s.cfg.Scope, coll)
}

// sweepStatement is the sample's UPDATE, for documents whose nextAttemptAt
// has come and, like the sample, for the sample's documents (no
// nextAttemptAt) whose ts is a quantum old. The two branches match the
// indexes ix_retry_next and ix_retry_ts that setup creates.
func sweepStatement(retry string) string {
	return "UPDATE " + retry + " AS r SET r.fireRetry = true " +
		"WHERE META(r).id != $control AND (r.fireRetry IS MISSING OR r.fireRetry != true) AND (" +
		"(r.nextAttemptAt <= $now AND IS_NUMBER(r.nextAttemptAt)) OR " +
		"(r.nextAttemptAt IS MISSING AND r.ts < $cutoff AND IS_NUMBER(r.ts))) " +
		"LIMIT $limit RETURNING RAW META(r).id"
}

func sweepParams(now time.Time, quantum time.Duration, limit int) map[string]interface{} {
	return map[string]interface{}{
		"control": order.ControlKey,
		"now":     now.UnixMilli(),
		"cutoff":  now.Add(-quantum).UnixMilli(),
		"limit":   limit,
	}
}

// SweepRetries flags at most limit due documents with one statement, so
// that no statement runs longer than its batch.
func (s *Store) SweepRetries(ctx context.Context, now time.Time, quantum time.Duration, limit int) (store.SweepResult, error) {
	if limit <= 0 {
		return store.SweepResult{}, fmt.Errorf("sweep retries: limit %d is not positive", limit)
	}
	var res store.SweepResult
	err := s.query(ctx, sweepStatement(s.keyspace(order.Retry)), sweepParams(now, quantum, limit), func(json.RawMessage) error {
		res.Flagged++
		return nil
	})
	if err != nil {
		return store.SweepResult{}, fmt.Errorf("sweep retries: %w", err)
	}
	res.More = res.Flagged == limit
	return res, nil
}

// State reads the three documents by KV.
func (s *Store) State(ctx context.Context, key string) (store.State, error) {
	var st store.State
	for _, d := range []struct {
		coll string
		to   *store.Doc
	}{{order.Inbound, &st.Order}, {order.Retry, &st.Retry}, {order.DeadLetter, &st.DeadLetter}} {
		doc, err := s.Get(ctx, d.coll, key)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return store.State{}, err
		default:
			*d.to = doc
		}
	}
	return st, nil
}

// Apply makes the writes one by one, in order, each guarded by its CAS, and
// stops at the first that fails: Couchbase has no transaction here, so the
// caller orders an outcome's writes so that a crash after any prefix of
// them loses nothing and sends nothing twice (see watcher/outcome.go).
func (s *Store) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	cas := make([]uint64, len(writes))
	for i, w := range writes {
		var err error
		switch w.Op {
		case store.OpInsert:
			cas[i], err = s.Insert(ctx, w.Collection, w.Key, w.Value)
		case store.OpReplace:
			cas[i], err = s.Replace(ctx, w.Collection, w.Key, w.Value, w.CAS)
		case store.OpUpsert:
			cas[i], err = s.Upsert(ctx, w.Collection, w.Key, w.Value)
		case store.OpRemove:
			err = s.Remove(ctx, w.Collection, w.Key, w.CAS)
		default:
			err = fmt.Errorf("apply: write %s/%s has no operation", w.Collection, w.Key)
		}
		if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCASMismatch) {
			return nil, &store.WriteError{Write: w, Err: err}
		}
		if err != nil {
			return nil, err
		}
	}
	return cas, nil
}

func backlogStatement(retry, deadletter string) string {
	due := "META(r).id != $control AND (r.fireRetry = true OR " +
		"(r.nextAttemptAt <= $now AND IS_NUMBER(r.nextAttemptAt)) OR " +
		"(r.nextAttemptAt IS MISSING AND r.ts < $cutoff AND IS_NUMBER(r.ts)))"
	return "SELECT " +
		"(SELECT RAW COUNT(*) FROM " + retry + " AS r WHERE " + due + ")[0] AS due, " +
		"(SELECT RAW MIN(IFMISSING(r.nextAttemptAt, r.ts + $quantum)) FROM " + retry + " AS r WHERE " + due + " AND r.fireRetry != true)[0] AS oldest, " +
		"(SELECT d.reason AS reason, COUNT(*) AS count FROM " + deadletter + " AS d GROUP BY d.reason ORDER BY COUNT(*) DESC LIMIT 5) AS reasons"
}

// Backlog reads the due retries and the dead letters' reasons by N1QL.
func (s *Store) Backlog(ctx context.Context, now time.Time, quantum time.Duration) (store.Backlog, error) {
	var row struct {
		Due     int
		Oldest  *int64
		Reasons []struct {
			Reason string
			Count  int
		}
	}
	params := sweepParams(now, quantum, 0)
	params["quantum"] = quantum.Milliseconds()
	delete(params, "limit")
	err := s.query(ctx, backlogStatement(s.keyspace(order.Retry), s.keyspace(order.DeadLetter)), params, func(raw json.RawMessage) error {
		return json.Unmarshal(raw, &row)
	})
	if err != nil {
		return store.Backlog{}, fmt.Errorf("backlog: %w", err)
	}
	b := store.Backlog{Due: row.Due}
	if row.Oldest != nil {
		b.OldestDue = time.UnixMilli(*row.Oldest)
	}
	for _, r := range row.Reasons {
		b.Reasons = append(b.Reasons, store.Tally{Reason: "dead: " + r.Reason, Count: r.Count})
	}
	return b, nil
}

func countsStatement(inbound, retry, deadletter string) string {
	return "SELECT " +
		"(SELECT RAW COUNT(*) FROM " + inbound + " AS o WHERE o.paymentStatus = \"paid\")[0] AS ordersPaid, " +
		"(SELECT RAW COUNT(*) FROM " + inbound + " AS o WHERE o.paymentStatus = \"paid\" AND o.confirmationEmailSent = true)[0] AS ordersConfirmed, " +
		"(SELECT RAW COUNT(*) FROM " + retry + " AS r WHERE META(r).id != $control)[0] AS retryDocs, " +
		"(SELECT RAW COUNT(*) FROM " + retry + " AS r WHERE META(r).id != $control AND r.fireRetry = true)[0] AS retryFlagged, " +
		"(SELECT RAW COUNT(*) FROM " + deadletter + " AS d)[0] AS deadLetters"
}

func (s *Store) Counts(ctx context.Context) (store.Counts, error) {
	var row struct {
		OrdersPaid, OrdersConfirmed, RetryDocs, RetryFlagged, DeadLetters int
	}
	stmt := countsStatement(s.keyspace(order.Inbound), s.keyspace(order.Retry), s.keyspace(order.DeadLetter))
	err := s.query(ctx, stmt, map[string]interface{}{"control": order.ControlKey}, func(raw json.RawMessage) error {
		return json.Unmarshal(raw, &row)
	})
	if err != nil {
		return store.Counts{}, fmt.Errorf("counts: %w", err)
	}
	return store.Counts(row), nil
}

func scanStatement(keyspace string) string {
	return "SELECT RAW META(d).id FROM " + keyspace + " AS d WHERE META(d).id > $after ORDER BY META(d).id LIMIT $limit"
}

// Scan pages through the keys by N1QL (the primary index) and reads each
// document by KV, so that documents that are not JSON come through too.
func (s *Store) Scan(ctx context.Context, coll string, fn func(store.Doc) error) error {
	if !slices.Contains(collections, coll) {
		return fmt.Errorf("scan: %q is not one of %v", coll, collections)
	}
	const page = 500
	after := ""
	for {
		var keys []string
		err := s.query(ctx, scanStatement(s.keyspace(coll)), map[string]interface{}{"after": after, "limit": page}, func(raw json.RawMessage) error {
			var k string
			if err := json.Unmarshal(raw, &k); err != nil {
				return err
			}
			keys = append(keys, k)
			return nil
		})
		if err != nil {
			return fmt.Errorf("scan %s: %w", coll, err)
		}
		for _, k := range keys {
			d, err := s.Get(ctx, coll, k)
			if errors.Is(err, store.ErrNotFound) {
				continue // removed since the page was read
			}
			if err != nil {
				return err
			}
			if err := fn(d); err != nil {
				return err
			}
		}
		if len(keys) < page {
			return nil
		}
		after = keys[len(keys)-1]
	}
}

// query runs a statement at request_plus consistency, so that it sees every
// write made before it, and calls fn for each row.
func (s *Store) query(ctx context.Context, stmt string, params map[string]interface{}, fn func(json.RawMessage) error) error {
	res, err := s.cluster.Query(stmt, &gocb.QueryOptions{
		Context:         ctx,
		NamedParameters: params,
		ScanConsistency: gocb.QueryScanConsistencyRequestPlus,
	})
	if err != nil {
		return mapErr(err)
	}
	for res.Next() {
		var raw json.RawMessage
		if err := res.Row(&raw); err != nil {
			res.Close()
			return err
		}
		if err := fn(raw); err != nil {
			res.Close()
			return err
		}
	}
	return mapErr(errors.Join(res.Err(), res.Close()))
}
