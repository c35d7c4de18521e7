package couchbase

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/couchbase/gocbcore/v10/connstr"
	"github.com/ordermail/ordermail/internal/loopback"
	"github.com/ordermail/ordermail/internal/redact"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

// Store is the Couchbase store. It is safe for concurrent use.
type Store struct {
	cfg     Config
	creds   *credentials
	cluster *gocb.Cluster
	colls   map[string]*gocb.Collection
	log     *slog.Logger
	scopes  []gocb.ScopeSpec // of the bucket, as Open listed them
	now     func() time.Time
	member  string // this instance among a feed's members
	// groups is this process's view of each feed's members it streams
	// (feed name to *group): Members judges by it what it reads.
	groups sync.Map

	// unmet says, at most once a minute, that writes are made without
	// their durability (writeOnce); undurable counts them.
	unmet     rate.Sometimes
	undurable atomic.Uint64

	counts ttlCache[store.Counts]
	// orderCounts is apart: its count grows with the orders stored.
	orderCounts bgCount
	backlog     ttlCache[store.Backlog]
	reasons     ttlCache[[]store.Tally]

	// Tests tune the feed, hear of ambiguous writes, and lose the answer
	// to a vBucket's claim or handover that was made (the faults' error).
	feedOpts     feedOptions
	onAmbiguous  func(store.Write)
	claimFault   func(vb uint16) error
	releaseFault func(vb uint16) error
	releaseFail  func(vb uint16) error // a handover's write that fails, not made
}

var _ store.Store = (*Store)(nil)

// collections are the ones in Bucket.Scope that ordermail uses.
var collections = []string{order.Inbound, order.Retry, order.DeadLetter, order.Attempts}

// Open connects and checks that the buckets and collections exist.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cluster, creds, err := connect(cfg, log)
	if err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, creds: creds, cluster: cluster, colls: map[string]*gocb.Collection{}, log: log.With("component", "couchbase"), unmet: rate.Sometimes{Interval: time.Minute},
		now: time.Now, counts: newTTLCache[store.Counts](), backlog: newTTLCache[store.Backlog](), reasons: newTTLCache[[]store.Tally](), member: cfg.Member}
	if s.member == "" {
		host, _ := os.Hostname()
		s.member = host + "/" + strconv.Itoa(os.Getpid()) + "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	if err := s.open(ctx); err != nil {
		cluster.Close(nil)
		return nil, err
	}
	return s, nil
}

// silentNodes pings the data service of every node of b, as the SDK
// knows them: the addresses of those that do not answer within timeout,
// and how many do.
func silentNodes(b *gocb.Bucket, timeout time.Duration) (silent []string, answered int) {
	res, err := b.Ping(&gocb.PingOptions{ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeKeyValue}, Timeout: timeout})
	if err != nil {
		return nil, 0
	}
	ok := map[string]bool{}
	for _, e := range res.Services[gocb.ServiceTypeKeyValue] {
		if e.State == gocb.PingStateOk {
			ok[e.Remote] = true
		} else if e.Remote != "" {
			silent = append(silent, e.Remote)
		}
	}
	slices.Sort(silent)
	return slices.Compact(silent), len(ok)
}

// remotePlain is the first host of connStr that is not a loopback one
// when connStr is plain couchbase://; "" otherwise.
func remotePlain(connStr string) string {
	spec, err := connstr.Parse(connStr)
	if err != nil || spec.Scheme != "couchbase" {
		return ""
	}
	for _, a := range spec.Addresses {
		host := strings.Trim(a.Host, "[]")
		if host == "" || strings.HasPrefix(host, "=") || loopback.Host(host) { // "=http": a port's, read as a host of its own
			continue
		}
		return host
	}
	return ""
}

func connect(cfg Config, log *slog.Logger) (*gocb.Cluster, *credentials, error) {
	creds, err := cfg.credentials(log.With("component", "couchbase"))
	if err != nil {
		return nil, nil, err
	}
	if host := remotePlain(cfg.ConnStr); host != "" { // couchbase:// logs in with a password
		// Not refused: a private network may be meant, as for the email
		// service's http:// URL.
		log.Warn("the Couchbase password and every order go over the network unencrypted: give --store a couchbases:// connection string unless that is meant",
			"host", host)
	}
	pool, err := cfg.caPool()
	if err != nil {
		return nil, nil, err
	}
	opts := gocb.ClusterOptions{
		Authenticator: gocbAuth{creds},
		TimeoutsConfig: gocb.TimeoutsConfig{
			ConnectTimeout: 3 * cfg.Timeout, KVTimeout: cfg.Timeout, KVDurableTimeout: cfg.Timeout, QueryTimeout: cfg.Timeout,
			ManagementTimeout: 3 * cfg.Timeout,
		},
		Transcoder: passthrough{},
	}
	if pool != nil {
		opts.SecurityConfig.TLSRootCAs = pool
	}
	cluster, err := gocb.Connect(cfg.ConnStr, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", redact.URL(cfg.ConnStr), err)
	}
	return cluster, creds, nil
}

func (s *Store) open(ctx context.Context) error {
	for _, name := range []string{s.cfg.Bucket, s.cfg.MetadataBucket} {
		b := s.cluster.Bucket(name)
		if err := b.WaitUntilReady(3*s.cfg.Timeout, &gocb.WaitUntilReadyOptions{Context: ctx}); err != nil {
			if terr := s.cfg.reachTrouble(ctx); terr != nil {
				return fmt.Errorf("bucket %s on %s is not reachable: %w (%w)", name, redact.URL(s.cfg.ConnStr), terr, err)
			}
			if ctx.Err() != nil {
				return fmt.Errorf("bucket %s: %w", name, err) // a stop asked for: no node to name
			}
			if silent, answered := silentNodes(b, s.cfg.Timeout); len(silent) > 0 && answered > 0 {
				return fmt.Errorf("bucket %s: node %s does not answer (%d other node(s) of the bucket do): "+
					"ordermail starts once every node answers: bring the node back or fail it over: %w",
					name, strings.Join(silent, ", "), answered, err)
			}
			return fmt.Errorf("bucket %s on %s is not reachable (missing? run ordermail setup; wrong credentials?): %w",
				name, redact.URL(s.cfg.ConnStr), err)
		}
	}
	bucket := s.cluster.Bucket(s.cfg.Bucket)
	scopes, err := bucket.CollectionsV2().GetAllScopes(&gocb.GetAllScopesOptions{Context: ctx})
	if err != nil {
		return fmt.Errorf("list collections of bucket %s: %w", s.cfg.Bucket, err)
	}
	if !slices.ContainsFunc(scopes, func(sc gocb.ScopeSpec) bool { return sc.Name == s.cfg.Scope }) {
		var names []string
		for _, sc := range scopes {
			names = append(names, sc.Name)
		}
		return fmt.Errorf("bucket %s has no scope %s (it has %s): is --cb-scope right? if it is, run ordermail setup",
			s.cfg.Bucket, s.cfg.Scope, strings.Join(names, ", "))
	}
	s.scopes = scopes
	if missing := missingCollections(scopes, s.cfg.Scope); len(missing) > 0 {
		return fmt.Errorf("bucket %s lacks collections %v in scope %s: run ordermail setup", s.cfg.Bucket, missing, s.cfg.Scope)
	}
	for _, c := range collections {
		s.colls[c] = bucket.Scope(s.cfg.Scope).Collection(c)
	}
	s.colls[store.Meta] = s.cluster.Bucket(s.cfg.MetadataBucket).DefaultCollection()
	return s.probeDurability(ctx)
}

// CheckRetention refuses what would expire ordermail's work on its own: a
// retry or dead-letter collection with a maxTTL (its own or, at 0, its
// bucket's), and a metadata collection whose documents expire (the feed's
// checkpoints, the sweep lease, the members). `run` calls it as it starts;
// the tools do not, so that an operator can still look at a store set up
// so. A bucket's settings it may not read (a timeout; a role without them)
// are said in a warning, and not checked.
func (s *Store) CheckRetention(ctx context.Context) error {
	bucketTTL := func() time.Duration { return s.bucketMaxTTL(ctx, s.cfg.Bucket) }
	if err := expiring(s.scopes, s.cfg.Bucket, s.cfg.Scope, bucketTTL); err != nil {
		return err
	}
	meta, err := s.cluster.Bucket(s.cfg.MetadataBucket).CollectionsV2().GetAllScopes(&gocb.GetAllScopesOptions{Context: ctx})
	if err != nil {
		s.log.Warn("cannot list the metadata bucket's collections: whether its documents expire (a maxTTL) is not checked",
			"bucket", s.cfg.MetadataBucket, "error", err)
		return nil
	}
	ttl, own := defaultExpiry(meta)
	if ttl == 0 && !own {
		ttl = s.bucketMaxTTL(ctx, s.cfg.MetadataBucket)
	}
	if ttl > 0 {
		return fmt.Errorf("bucket %s expires its documents after %s (a maxTTL): the feed's checkpoints, the sweep lease and the members "+
			"would expire with them (the feed reading its whole history again); set the bucket's and its default collection's maxTTL to 0",
			s.cfg.MetadataBucket, ttl)
	}
	return nil
}

// defaultExpiry is the maxTTL of the default collection among scopes, and
// whether it is its own (not 0, which inherits the bucket's; -1, never, is
// 0 and its own).
func defaultExpiry(scopes []gocb.ScopeSpec) (ttl time.Duration, own bool) {
	for _, sc := range scopes {
		for _, c := range sc.Collections {
			if sc.Name == "_default" && c.Name == "_default" {
				return max(c.MaxExpiry, 0), c.MaxExpiry != 0
			}
		}
	}
	return 0, false
}

// expiring says which of the collections ordermail keeps work in expires
// its documents on its own (a maxTTL, its own or, at 0, the bucket's,
// which bucketTTL reads only then): a retry document the cluster expires
// leaves its paid order unconfirmed with neither a retry nor a dead
// letter, and nothing tells; a dead letter expired is a failure nobody is
// shown.
func expiring(scopes []gocb.ScopeSpec, bucket, scope string, bucketTTL func() time.Duration) error {
	for _, sc := range scopes {
		if sc.Name != scope {
			continue
		}
		for _, c := range sc.Collections {
			if c.Name != order.Retry && c.Name != order.DeadLetter {
				continue
			}
			switch {
			case c.MaxExpiry > 0:
				return fmt.Errorf("collection %s.%s.%s expires its documents after %s (its maxTTL): a retry document or a dead letter "+
					"that expires drops its order unconfirmed, with nothing to say so; set the collection's maxTTL to 0", bucket, scope, c.Name, c.MaxExpiry)
			case c.MaxExpiry == 0:
				if ttl := bucketTTL(); ttl > 0 {
					return fmt.Errorf("collection %s.%s.%s expires its documents after %s (the maxTTL of bucket %s, which a collection of maxTTL 0 inherits): "+
						"a retry document or a dead letter that expires drops its order unconfirmed, with nothing to say so; "+
						"set the collection's maxTTL to -1, never (Couchbase 7.6 and later), or the bucket's to 0", bucket, scope, c.Name, ttl, bucket)
				}
			}
		}
	}
	return nil
}

// bucketMaxTTL is the maxTTL of bucket name, which its collections of
// maxTTL 0 inherit; 0 when it has none, or when its settings cannot be
// read (said in a warning: it is not checked then).
func (s *Store) bucketMaxTTL(ctx context.Context, name string) time.Duration {
	b, err := s.cluster.Buckets().GetBucket(name, &gocb.GetBucketOptions{Context: ctx})
	if err != nil {
		s.log.Warn("cannot read the bucket's settings: whether its collections inherit a maxTTL (and expire ordermail's documents) is not checked",
			"bucket", name, "error", err)
		return 0
	}
	return b.MaxExpiry
}

// probeKey is the attempts document the durability probe writes.
const probeKey = "ordermail:durability-probe"

// probeDurability makes one durable write (an attempts document that
// expires in a minute, which neither the feed nor a count reads), so that
// a level the cluster cannot meet now (a one-node cluster whose bucket has
// replicas) is said at start, not first at an outcome: a warning, as in a
// failover not yet rebalanced it comes back by itself, and a command that
// reads (retries status, in the middle of an incident) must still run. A
// level the bucket does not have at all fails the start.
func (s *Store) probeDurability(ctx context.Context) error {
	dur := durabilities[s.cfg.Durability]
	if dur == gocb.DurabilityLevelNone {
		return nil
	}
	// Members write a vBucket's change of owner to the metadata bucket
	// with the level too (withDurableMeta): it must have it. A fixed set
	// of vBuckets writes nothing there durably.
	probes := []struct{ coll, bucket string }{{order.Attempts, s.cfg.Bucket}}
	if !s.cfg.static() {
		probes = append(probes, struct{ coll, bucket string }{store.Meta, s.cfg.MetadataBucket})
	}
	for _, b := range probes {
		_, err := s.colls[b.coll].Upsert(probeKey, []byte(`{"probe":"durability"}`),
			&gocb.UpsertOptions{Context: ctx, Expiry: time.Minute, DurabilityLevel: dur})
		switch {
		case errors.Is(err, gocb.ErrDurabilityLevelNotAvailable), errors.Is(err, gocb.ErrFeatureNotAvailable):
			// The bucket does not have the level at all (an ephemeral
			// bucket and a persisting level): no outcome, or no claim of
			// a vBucket, could ever be written.
			return fmt.Errorf("cb-durability %s: bucket %s does not support it: choose another level: %w", s.cfg.Durability, b.bucket, err)
		case errors.Is(err, gocb.ErrDurabilityImpossible):
			s.log.Warn("--cb-durability "+s.cfg.Durability+" cannot be met on bucket "+b.bucket+" now: writes there are made without it until it can, "+
				"on the active copy (a node failed over and not yet rebalanced, or a one-node cluster whose bucket has replicas: "+
				"add nodes, give the bucket no replicas, or choose --cb-durability none)", "error", err)
		case err != nil:
			s.log.Debug("durability probe", "bucket", b.bucket, "error", err) // a user who may only read: the first real write says so
		}
	}
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
func (s *Store) Close() error {
	s.orderCounts.stop()
	return s.cluster.Close(nil)
}

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
	return s.get(ctx, c, coll, key)
}

func (s *Store) get(ctx context.Context, c *gocb.Collection, coll, key string) (store.Doc, error) {
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
	return s.write(ctx, store.Write{Op: store.OpInsert, Collection: coll, Key: key, Value: value})
}

func (s *Store) Replace(ctx context.Context, coll, key string, value []byte, cas uint64) (uint64, error) {
	return s.write(ctx, store.Write{Op: store.OpReplace, Collection: coll, Key: key, Value: value, CAS: cas})
}

func (s *Store) Upsert(ctx context.Context, coll, key string, value []byte) (uint64, error) {
	return s.write(ctx, store.Write{Op: store.OpUpsert, Collection: coll, Key: key, Value: value})
}

func (s *Store) Remove(ctx context.Context, coll, key string, cas uint64) error {
	_, err := s.write(ctx, store.Write{Op: store.OpRemove, Collection: coll, Key: key, CAS: cas})
	return err
}

// write makes one KV write. When the server does not answer in time after
// the write was sent (gocb's ambiguous timeout), or the connection fails
// under it, the write may have been made: write reads the document back to
// tell, and carries on as if it had answered (made: its CAS; not made: the
// write again, guarded as before).
// Without that, a retried insert would fail with "exists" and a retried
// guarded replace or remove with a CAS mismatch after all went well.
func (s *Store) write(ctx context.Context, w store.Write) (uint64, error) {
	c, err := s.coll(w.Collection)
	if err != nil {
		return 0, err
	}
	w = asSent(w)
	const attempts = 3
	for attempt := 1; ; attempt++ {
		cas, err := s.writeOnce(ctx, c, w)
		if attempt > 1 && (errors.Is(err, gocb.ErrDocumentExists) || errors.Is(err, gocb.ErrCasMismatch) ||
			errors.Is(err, gocb.ErrDocumentNotFound)) {
			// Written again after an ambiguous timeout, w's guard fails:
			// the first write may have been made after all, late.
			if out, d, rerr := s.resolveAmbiguous(ctx, c, w); rerr == nil && out == outcomeMade {
				return d.CAS, nil
			}
		}
		// A connection that failed under a sent write leaves it as
		// ambiguous as a timeout does; so does the caller's context ending
		// under it: gocb cancels the request, but one already sent is
		// made all the same.
		canceled := errors.Is(err, gocb.ErrRequestCanceled) && ctx.Err() != nil
		// A durable write whose replication did not finish in time may
		// have been made, as after a timeout.
		ambiguous := errors.Is(err, gocb.ErrAmbiguousTimeout) || errors.Is(err, gocb.ErrDurabilityAmbiguous)
		if !ambiguous && !netFailure(err) && !canceled {
			if err != nil {
				return 0, fmt.Errorf("%s %s/%s: %w", w.Op, w.Collection, w.Key, mapErr(err))
			}
			return cas, nil
		}
		if s.onAmbiguous != nil {
			s.onAmbiguous(w)
		}
		out, d, rerr := s.resolveCut(ctx, c, w, canceled)
		switch {
		case rerr != nil && canceled:
			return 0, fmt.Errorf("%s %s/%s: %w: %w: %w (reading it back to tell: %v)", w.Op, w.Collection, w.Key, store.ErrUnavailable, ErrAmbiguous, err, rerr)
		case rerr != nil:
			return 0, fmt.Errorf("%s %s/%s: %w (reading it back to tell: %v)", w.Op, w.Collection, w.Key, mapErr(err), rerr)
		case out == outcomeMade:
			s.log.Log(ctx, ambiguityLevel(w), "an ambiguous write was made", "op", w.Op.String(), "collection", w.Collection, "key", w.Key)
			return d.CAS, nil
		case out == outcomeGuardFailed:
			return 0, fmt.Errorf("%s %s/%s: %w (after an ambiguous timeout)", w.Op, w.Collection, w.Key, guardErr(w, d))
		case attempt == attempts || canceled: // not made; a caller gone is not written for
			return 0, fmt.Errorf("%s %s/%s: %w", w.Op, w.Collection, w.Key, mapErr(err))
		}
		s.log.Log(ctx, ambiguityLevel(w), "an ambiguous write was not made; writing again", "op", w.Op.String(), "collection", w.Collection, "key", w.Key)
	}
}

// ambiguityLevel is the level w's ambiguity is logged at, once resolved:
// info for an outcome's write; debug for ordermail's own bookkeeping
// (checkpoints, members, leases), whose writes to a node that comes back
// resolve by the hundred at once and whose failures are said apart (the
// feed's checkpoint saves, the membership's heartbeats).
func ambiguityLevel(w store.Write) slog.Level {
	if w.Collection == store.Meta {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// guardErr is the store error of w's guard, failed on document d.
func guardErr(w store.Write, d store.Doc) error {
	switch {
	case w.Op == store.OpInsert:
		return store.ErrExists
	case !d.Found():
		return store.ErrNotFound
	}
	return store.ErrCASMismatch
}

// writeOnce makes w once. Outcomes are written durably
// (Config.Durability); the metadata bucket's documents (checkpoints,
// members, leases), whose loss only replays changes, are not, but for a
// vBucket's change of owner and a --from-now start (withDurableMeta). A level the
// vBucket cannot meet now (too few copies: a node failed over and not yet
// rebalanced, a one-node cluster whose bucket has replicas) is refused at
// once, the write not made: it is made without it, on the active copy,
// counted, and said once a minute. Waiting for the rebalance instead held
// every worker's outcome (each waiting send holds its place among those in
// flight) for hours.
func (s *Store) writeOnce(ctx context.Context, c *gocb.Collection, w store.Write) (uint64, error) {
	dur := gocb.DurabilityLevelNone
	if durableMeta, _ := ctx.Value(durableMetaKey{}).(bool); w.Collection != store.Meta || durableMeta {
		dur = durabilities[s.cfg.Durability]
	}
	cas, err := s.writeAt(ctx, c, w, dur)
	if dur != gocb.DurabilityLevelNone && errors.Is(err, gocb.ErrDurabilityImpossible) {
		s.unmet.Do(func() {
			s.log.Warn("--cb-durability "+s.cfg.Durability+" cannot be met on a vBucket now: writes there are made without it until it can "+
				"(a node failed over and not yet rebalanced, or a one-node cluster whose bucket has replicas); said at most once a minute",
				"collection", w.Collection, "key", w.Key, "error", err)
		})
		cas, err := s.writeAt(ctx, c, w, gocb.DurabilityLevelNone)
		if err == nil {
			s.undurable.Add(1)
		}
		return cas, err
	}
	switch {
	case errors.Is(err, gocb.ErrDurabilityLevelNotAvailable):
		// A level the bucket does not have (a persisting one on an
		// ephemeral bucket), where the probe at start got no answer:
		// waited out, logged, never taken for a failure of the write's
		// own, which would give its outcome up.
		return 0, fmt.Errorf("%w: --cb-durability is a level the bucket does not support: choose another and restart: %w", store.ErrUnavailable, err)
	case errors.Is(err, gocb.ErrFeatureNotAvailable):
		// Durability or preserve TTL, which the cluster lacks (before
		// Server 7.0): as above.
		return 0, fmt.Errorf("%w: the cluster lacks a feature ordermail's writes use (durability or preserve TTL: Server 7.0 or later; or --cb-durability none): %w", store.ErrUnavailable, err)
	}
	return cas, err
}

// WritesWithoutDurability counts the writes made without
// Config.Durability since Open (writeOnce).
func (s *Store) WritesWithoutDurability() uint64 { return s.undurable.Load() }

func (s *Store) writeAt(ctx context.Context, c *gocb.Collection, w store.Write, dur gocb.DurabilityLevel) (uint64, error) {
	var res *gocb.MutationResult
	var err error
	var expiry time.Duration
	if !w.Expiry.IsZero() {
		expiry = max(time.Second, time.Until(w.Expiry)) // 0 would mean never
	}
	switch w.Op {
	case store.OpInsert:
		res, err = c.Insert(w.Key, w.Value, &gocb.InsertOptions{Context: ctx, Expiry: expiry, DurabilityLevel: dur})
	case store.OpReplace:
		if w.Sent != "" {
			return s.replaceMarked(ctx, c, w, expiry, dur)
		}
		// A write that sets no expiry keeps the document's: the order
		// system's TTL on an order marked confirmed (a replace without one
		// would make it live for ever). Server 7.0 and later.
		res, err = c.Replace(w.Key, w.Value, &gocb.ReplaceOptions{Context: ctx, Cas: gocb.Cas(w.CAS), Expiry: expiry, PreserveExpiry: expiry == 0, DurabilityLevel: dur})
	case store.OpUpsert:
		res, err = c.Upsert(w.Key, w.Value, &gocb.UpsertOptions{Context: ctx, Expiry: expiry, DurabilityLevel: dur})
	case store.OpRemove:
		res, err = c.Remove(w.Key, &gocb.RemoveOptions{Context: ctx, Cas: gocb.Cas(w.CAS), DurabilityLevel: dur})
		if err == nil {
			return 0, nil
		}
	default:
		return 0, fmt.Errorf("write %s/%s has no operation", w.Collection, w.Key)
	}
	if err != nil {
		return 0, err
	}
	return uint64(res.Cas()), nil
}

// sentXattr is the extended attribute that keeps, with an order
// document, the idempotency key its confirmation went out under
// (store.Doc.Sent). A user attribute: a full-body write of the document
// (an order system saving a copy it read before the mark) keeps it, and
// the document's deletion drops it (kv_engine docs/ExtendedAttributes.md,
// "XATTR lifetime"; daemon/protocol/mcbp/mutation_context.cc copies the
// existing item's attributes into a SET's), so it speaks of this very
// document, never of an order deleted and created again under its key.
const (
	sentXattr = "ordermail"
	sentPath  = sentXattr + ".sent"
)

// replaceMarked is a replace that keeps w.Sent with the document: one
// sub-document mutation, the attribute and the whole body together,
// guarded by w's CAS, as durable as any outcome write.
func (s *Store) replaceMarked(ctx context.Context, c *gocb.Collection, w store.Write, expiry time.Duration, dur gocb.DurabilityLevel) (uint64, error) {
	res, err := c.MutateIn(w.Key, []gocb.MutateInSpec{
		gocb.UpsertSpec(sentPath, w.Sent, &gocb.UpsertSpecOptions{IsXattr: true, CreatePath: true}),
		gocb.ReplaceSpec("", json.RawMessage(w.Value), nil), // the whole body
	}, &gocb.MutateInOptions{Context: ctx, Cas: gocb.Cas(w.CAS), Expiry: expiry, PreserveExpiry: expiry == 0, DurabilityLevel: dur})
	if errors.Is(err, gocb.ErrDocumentExists) {
		// A mutation's CAS mismatch, as gocb says it (kvprovider_coresubdoc.go,
		// GOCBC-1019): the replace's guard failed.
		return 0, fmt.Errorf("%w (%v)", gocb.ErrCasMismatch, err)
	}
	if err != nil {
		return 0, err
	}
	return uint64(res.Cas()), nil
}

// asSent is w as replaceMarked writes it: gocb sends a sub-document value
// as encoding/json marshals it, compacted (and <, >, & escaped), so that
// reading a write back after an ambiguous timeout compares what was
// really written. The same JSON to any reader.
func asSent(w store.Write) store.Write {
	if w.Op != store.OpReplace || w.Sent == "" {
		return w
	}
	if b, err := json.Marshal(json.RawMessage(w.Value)); err == nil {
		w.Value = b
	}
	return w
}

// getOrder reads an order document with the key its confirmation went
// out under (sentXattr), in one lookup.
func (s *Store) getOrder(ctx context.Context, key string) (store.Doc, error) {
	c, err := s.coll(order.Inbound)
	if err != nil {
		return store.Doc{}, err
	}
	res, err := c.LookupIn(key, []gocb.LookupInSpec{
		gocb.GetSpec(sentPath, &gocb.GetSpecOptions{IsXattr: true}),
		gocb.GetSpec("", nil), // the whole body, whatever it holds
	}, &gocb.LookupInOptions{Context: ctx})
	if err != nil {
		return store.Doc{}, fmt.Errorf("get %s/%s: %w", order.Inbound, key, mapErr(err))
	}
	d := store.Doc{Key: key, CAS: uint64(res.Cas())}
	switch err := res.ContentAt(1, &d.Value); {
	case errors.Is(err, gocb.ErrPathNotFound):
		d.Value = []byte{} // an empty body: kv_engine's whole-document get has no path to give
	case err != nil:
		return store.Doc{}, fmt.Errorf("get %s/%s: %w", order.Inbound, key, err)
	}
	switch err := res.ContentAt(0, &d.Sent); {
	case errors.Is(err, gocb.ErrPathNotFound):
	case err != nil:
		// Written by something else than ordermail: said, not trusted.
		return store.Doc{}, fmt.Errorf("get %s/%s: its extended attribute %s is not ordermail's: %w", order.Inbound, key, sentPath, err)
	}
	return d, nil
}

type outcome int

const (
	outcomeNotMade outcome = iota
	outcomeMade
	outcomeGuardFailed // not made, and it cannot be: the guard fails now
)

// resolveAmbiguous reads the document w wrote, until the server answers
// (or ctx ends), and judges whether w was made.
// resolveCut is resolveAmbiguous, for a write whose caller's context
// ended under it (canceled) on a context of its own: the caller is gone,
// but what it was told must be true. Bounded shortly (cutReadBack): a
// stop in an outage aborts outcome writes by the dozen, and its deadline
// must hold (an outcome not told is replayed, which the idempotency key
// answers).
func (s *Store) resolveCut(ctx context.Context, c *gocb.Collection, w store.Write, canceled bool) (outcome, store.Doc, error) {
	if canceled {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), min(s.cfg.Timeout, cutReadBack))
		defer cancel()
	}
	return s.resolveAmbiguous(ctx, c, w)
}

// cutReadBack bounds resolveCut's read-back.
const cutReadBack = 2 * time.Second

func (s *Store) resolveAmbiguous(ctx context.Context, c *gocb.Collection, w store.Write) (outcome, store.Doc, error) {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		d, err := s.get(ctx, c, w.Collection, w.Key)
		if errors.Is(err, store.ErrNotFound) {
			d, err = store.Doc{}, nil
		}
		if err == nil {
			return judge(w, d), d, nil
		}
		if !errors.Is(err, store.ErrUnavailable) {
			return 0, store.Doc{}, err
		}
		select {
		case <-ctx.Done():
			return 0, store.Doc{}, errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// judge says whether w was made, from the document read after it (zero
// when missing). A value equal to w's after a guarded write counts as w's:
// if another writer wrote the same bytes, the document holds what w meant
// anyway.
func judge(w store.Write, d store.Doc) outcome {
	found, same := d.Found(), bytes.Equal(d.Value, w.Value)
	switch w.Op {
	case store.OpInsert:
		switch {
		case found && same:
			return outcomeMade
		case found:
			return outcomeGuardFailed
		}
	case store.OpUpsert:
		if found && same {
			return outcomeMade
		}
	case store.OpReplace:
		switch {
		case !found:
			return outcomeGuardFailed
		case w.CAS != 0 && d.CAS == w.CAS:
		case same:
			return outcomeMade
		case w.CAS != 0:
			return outcomeGuardFailed
		}
	case store.OpRemove:
		switch {
		case !found:
			return outcomeMade
		case w.CAS != 0 && d.CAS != w.CAS:
			return outcomeGuardFailed
		}
	}
	return outcomeNotMade
}

func (s *Store) keyspace(coll string) string {
	return fmt.Sprintf("`%s`.`%s`.`%s`", s.cfg.Bucket, s.cfg.Scope, coll)
}

// unflagged is unflaggedRetry on the alias r, the term that lets a
// statement read the sweep's partial indexes.
const unflagged = "(r.fireRetry IS MISSING OR r.fireRetry != true)"

// sweepStatement is the sample's UPDATE, for documents whose nextAttemptAt
// has come and, like the sample, for the sample's documents (no
// nextAttemptAt) whose ts is a quantum old. The two branches match the
// indexes ix_retry_due_next and ix_retry_due_ts that setup creates.
// dueUnflagged is the sweep's condition on a retry document r: due, not
// flagged, not the control document.
const dueUnflagged = "META(r).id != $control AND " + unflagged + " AND (" +
	"(r.nextAttemptAt <= $now AND IS_NUMBER(r.nextAttemptAt)) OR " +
	"(r.nextAttemptAt IS MISSING AND r.ts < $cutoff AND IS_NUMBER(r.ts)))"

func sweepStatement(retry string) string {
	return "UPDATE " + retry + " AS r SET r.fireRetry = true WHERE " + dueUnflagged + " LIMIT $limit RETURNING RAW META(r).id"
}

// oldestDueStatements name the unflagged due retries that fell due first,
// with when, one statement per branch of dueUnflagged, each in the order
// of its own index (ix_retry_due_next, ix_retry_due_ts) and read only as far as
// its LIMIT: a probe of an outage's backlog reads a few of them, where one
// statement over both branches sorted every due retry by the time each
// fell due.
func oldestDueStatements(retry string) [2]string {
	const notControl = " AND META(r).id != $control AND " + unflagged
	return [2]string{
		"SELECT RAW [META(r).id, r.nextAttemptAt] FROM " + retry + " AS r WHERE r.nextAttemptAt <= $now AND IS_NUMBER(r.nextAttemptAt)" +
			notControl + " ORDER BY r.nextAttemptAt, META(r).id LIMIT $limit",
		"SELECT RAW [META(r).id, r.ts + $quantum] FROM " + retry + " AS r WHERE r.nextAttemptAt IS MISSING AND r.ts < $cutoff AND IS_NUMBER(r.ts)" +
			notControl + " ORDER BY r.ts, META(r).id LIMIT $limit",
	}
}

// exactSweep is the largest sweep taken exactly in the order its retries
// fell due (the timer's probe takes one): a SELECT in that order, then a
// KV write of each. A larger sweep is one UPDATE … LIMIT, in the order of
// its index scans, oldest first on each index but not across the two.
const exactSweep = 16

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
	if limit <= exactSweep {
		return s.sweepOldest(ctx, now, quantum, limit)
	}
	var res store.SweepResult
	err := s.queryRaw(ctx, sweepStatement(s.keyspace(order.Retry)), sweepParams(now, quantum, limit), func(json.RawMessage) error {
		res.Flagged++
		return nil
	})
	changed := 0
	if err != nil {
		// The UPDATE writes each retry by the CAS it read and goes on past
		// one written or removed meanwhile (a re-paid order, a redrive):
		// the others are flagged, and that one is read again by the next
		// batch or tick. Only other errors fail the sweep.
		n, ok := changedUnder(err)
		if !ok {
			return store.SweepResult{}, fmt.Errorf("sweep retries: %w", mapErr(err))
		}
		changed = n
		s.log.Debug("retries written or removed while the sweep flagged them; the next pass reads them again",
			"changed", n, "flagged", res.Flagged)
	}
	// The LIMIT counts the retries the statement read, flagged or not.
	res.More = res.Flagged+changed >= limit
	return res, nil
}

// changedUnder says whether err only reports documents a DML statement
// read and then found written (CAS mismatch) or removed (not found) when
// it wrote them, and how many: the query service's 12009 errors, which
// come after the results of the documents it did write, with the cause's
// code in their reason (12033, 17014).
func changedUnder(err error) (int, bool) {
	if j, ok := err.(interface{ Unwrap() []error }); ok { // errors.Join of the result's Err and Close
		n := 0
		for _, e := range j.Unwrap() {
			k, ok := changedUnder(e)
			if !ok {
				return 0, false
			}
			n += k
		}
		return n, n > 0
	}
	var qe *gocb.QueryError
	if !errors.As(err, &qe) || len(qe.Errors) == 0 {
		return 0, false
	}
	for _, d := range qe.Errors {
		if d.Code != 12009 {
			return 0, false
		}
		// The cause is in the reason (7.1 and later). Without one the
		// message names CAS mismatch among "possible causes" of any DML
		// failure: not taken for a conflict.
		if code, ok := d.Reason["code"].(float64); !ok || code != 12033 && code != 17014 {
			return 0, false
		}
	}
	return len(qe.Errors), true
}

// sweepOldest flags the limit due retries that fell due first: a
// SELECT names them in that order, then each is flagged by KV under the
// CAS it read, if still due and unflagged.
func (s *Store) sweepOldest(ctx context.Context, now time.Time, quantum time.Duration, limit int) (store.SweepResult, error) {
	ids, err := s.oldestDue(ctx, now, quantum, limit)
	if err != nil {
		return store.SweepResult{}, fmt.Errorf("sweep retries: %w", err)
	}
	res := store.SweepResult{More: len(ids) == limit}
	for _, id := range ids {
		flagged, err := s.flagIfDue(ctx, id, now, quantum)
		if err != nil {
			return res, fmt.Errorf("sweep retries: flag %s: %w", id, err)
		}
		if flagged {
			res.Flagged++
		}
	}
	return res, nil
}

// oldestDue names the limit unflagged due retries that fell due first,
// oldest first: the first of each branch's (oldestDueStatements), merged.
func (s *Store) oldestDue(ctx context.Context, now time.Time, quantum time.Duration, limit int) ([]string, error) {
	params := sweepParams(now, quantum, limit)
	params["quantum"] = quantum.Milliseconds()
	type due struct {
		id string
		at float64 // ms
	}
	var all []due
	for _, stmt := range oldestDueStatements(s.keyspace(order.Retry)) {
		err := s.query(ctx, stmt, params, func(raw json.RawMessage) error {
			var row [2]json.RawMessage
			var d due
			if err := json.Unmarshal(raw, &row); err != nil {
				return err
			}
			if err := json.Unmarshal(row[0], &d.id); err != nil {
				return err
			}
			if err := json.Unmarshal(row[1], &d.at); err != nil {
				return err
			}
			all = append(all, d)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(all, func(a, b due) int { return cmp.Or(cmp.Compare(a.at, b.at), strings.Compare(a.id, b.id)) })
	ids := make([]string, 0, min(limit, len(all)))
	for _, d := range all[:min(limit, len(all))] {
		ids = append(ids, d.id)
	}
	return ids, nil
}

// queryKeys runs a statement that returns document keys (SELECT RAW
// META(x).id ...) and gives them in the order returned.
func (s *Store) queryKeys(ctx context.Context, statement string, params map[string]interface{}) ([]string, error) {
	var keys []string
	err := s.query(ctx, statement, params, func(raw json.RawMessage) error {
		var k string
		if err := json.Unmarshal(raw, &k); err != nil {
			return err
		}
		keys = append(keys, k)
		return nil
	})
	return keys, err
}

// flagIfDue sets fireRetry on the retry document id, the rest of it kept as
// stored, if it is still due and unflagged by the sweep's rule; false when
// it is not, or changed under the write (sent, or flagged by another).
func (s *Store) flagIfDue(ctx context.Context, id string, now time.Time, quantum time.Duration) (bool, error) {
	d, err := s.Get(ctx, order.Retry, id)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if order.AmbiguousNames(d.Value, "fireRetry", "nextAttemptAt", "ts") {
		// {"FireRetry":true} is flagged to Go's decoder and not to the
		// query that named it due: the statement's own rule decides, or
		// it would be every probe's oldest and no probe would go out.
		return s.flagByQuery(ctx, id, now, quantum)
	}
	// The statement's condition (dueUnflagged), in N1QL's terms: a
	// nextAttemptAt that is there but null or not a number is never due.
	var doc struct {
		FireRetry     json.RawMessage `json:"fireRetry"`
		NextAttemptAt json.RawMessage `json:"nextAttemptAt"`
		TS            json.RawMessage `json:"ts"`
	}
	if json.Unmarshal(d.Value, &doc) != nil || string(doc.FireRetry) == "true" {
		return false, nil
	}
	var next, ts *float64
	_ = json.Unmarshal(doc.NextAttemptAt, &next)
	_ = json.Unmarshal(doc.TS, &ts)
	due := len(doc.NextAttemptAt) > 0 && next != nil && *next <= float64(now.UnixMilli()) ||
		len(doc.NextAttemptAt) == 0 && ts != nil && *ts < float64(now.Add(-quantum).UnixMilli())
	if !due {
		return false, nil
	}
	body, err := order.SetFireRetry(d.Value)
	if err != nil {
		// One the query service reads but we do not edit byte for byte (a
		// field twice, bad UTF-8): flagged by the sweep's own statement,
		// as the full sweep would (the watcher dead-letters it). Left
		// unflagged, it would be every probe's oldest, and no probe would
		// go out.
		return s.flagByQuery(ctx, id, now, quantum)
	}
	_, err = s.Replace(ctx, order.Retry, id, body, d.CAS)
	if errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// flagByQuery flags the retry document id with the sweep's UPDATE, if it
// is still due and unflagged. Rare (a document the KV edit refuses), it
// may read the due retries' index range to find it: once, as it leaves
// that range flagged.
func (s *Store) flagByQuery(ctx context.Context, id string, now time.Time, quantum time.Duration) (bool, error) {
	params := sweepParams(now, quantum, 1)
	params["id"] = id
	stmt := "UPDATE " + s.keyspace(order.Retry) + " AS r SET r.fireRetry = true WHERE META(r).id = $id AND " +
		dueUnflagged + " LIMIT $limit RETURNING RAW META(r).id"
	n := 0
	err := s.query(ctx, stmt, params, func(json.RawMessage) error { n++; return nil })
	if _, changed := changedUnder(err); err != nil && changed {
		return false, nil // sent, or flagged by another, meanwhile
	}
	if err != nil {
		return false, mapErr(err)
	}
	return n > 0, nil
}

// State reads the three documents by KV, the order with the key its
// confirmation went out under (getOrder).
func (s *Store) State(ctx context.Context, key string) (store.State, error) {
	var st store.State
	for _, d := range []struct {
		coll string
		to   *store.Doc
	}{{order.Inbound, &st.Order}, {order.Retry, &st.Retry}, {order.DeadLetter, &st.DeadLetter}} {
		get := s.Get
		if d.coll == order.Inbound {
			get = func(ctx context.Context, _, key string) (store.Doc, error) { return s.getOrder(ctx, key) }
		}
		doc, err := get(ctx, d.coll, key)
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
// them loses nothing and sends nothing twice (see watcher/doc.go). A write
// the server did not confirm in time is read back (see write): only when
// even that cannot tell does Apply fail with ErrUnavailable (and
// ErrAmbiguous).
func (s *Store) Apply(ctx context.Context, writes []store.Write) ([]uint64, error) {
	cas := make([]uint64, len(writes))
	for i, w := range writes {
		var err error
		cas[i], err = s.write(ctx, w)
		if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCASMismatch) {
			return cas[:i], &store.WriteError{Write: w, Err: err} // the writes before it stay
		}
		if err != nil {
			return nil, fmt.Errorf("apply: %w", err)
		}
	}
	return cas, nil
}

// The due retries' three kinds, each on its own index, apart: counted
// together, one statement over the three would fetch every due retry to
// tell which branch it matched (an outage's backlog, every few seconds on
// every instance), where each alone is counted on its index.
const (
	flaggedRetries = "META(r).id != $control AND r.fireRetry = true"                                                      // ix_retry_fire
	dueByNext      = "r.nextAttemptAt <= $now AND IS_NUMBER(r.nextAttemptAt) AND META(r).id != $control AND " + unflagged // ix_retry_due_next
	dueByTS        = "r.nextAttemptAt IS MISSING AND r.ts < $cutoff AND IS_NUMBER(r.ts) AND META(r).id != $control AND " + unflagged
)

// flaggedDueAt is when a flagged retry fell due, where its document says:
// a number, or none (one edited by hand into "soon", which MIN would give
// over any number, and which the watcher dead-letters).
const flaggedDueAt = "CASE WHEN IS_NUMBER(r.nextAttemptAt) THEN r.nextAttemptAt " +
	"WHEN r.nextAttemptAt IS MISSING AND IS_NUMBER(r.ts) THEN r.ts + $quantum ELSE NULL END"

// backlogStatement counts the due retries, flagged or not, and finds the
// one due longest: of the unflagged, the first in each index's order (one
// entry read); of the flagged, the least, which reads them (the sweep
// flags a batch at a time, paced to the sends; a bulk redrive flags what
// it brings back).
func backlogStatement(retry string) string {
	from := " FROM " + retry + " AS r WHERE "
	return "SELECT " +
		"(SELECT RAW COUNT(*)" + from + flaggedRetries + ")[0] AS flagged, " +
		"(SELECT RAW COUNT(*)" + from + dueByNext + ")[0] AS dueNext, " +
		"(SELECT RAW COUNT(*)" + from + dueByTS + ")[0] AS dueTS, " +
		"(SELECT RAW MIN(" + flaggedDueAt + ")" + from + flaggedRetries + ")[0] AS oldestFlagged, " +
		"(SELECT RAW r.nextAttemptAt" + from + dueByNext + " ORDER BY r.nextAttemptAt LIMIT 1)[0] AS oldestNext, " +
		"(SELECT RAW r.ts + $quantum" + from + dueByTS + " ORDER BY r.ts LIMIT 1)[0] AS oldestTS"
}

// Backlog reads the due retries by N1QL, or answers from the last reading
// for the same quantum when it is younger than CountsTTL.
func (s *Store) Backlog(ctx context.Context, now time.Time, quantum time.Duration) (store.Backlog, error) {
	return s.backlog.get(ctx, s.now, s.cfg.CountsTTL, quantum.String(), func() (store.Backlog, error) {
		return s.readBacklog(ctx, now, quantum)
	})
}

func (s *Store) readBacklog(ctx context.Context, now time.Time, quantum time.Duration) (store.Backlog, error) {
	var row struct {
		Flagged, DueNext, DueTS int
		// Raw: a value that is no number (a document edited by hand) is
		// passed over, not the backlog's failure.
		OldestFlagged, OldestNext, OldestTS json.RawMessage
	}
	params := sweepParams(now, quantum, 0)
	params["quantum"] = quantum.Milliseconds()
	delete(params, "limit")
	err := s.query(ctx, backlogStatement(s.keyspace(order.Retry)), params, func(raw json.RawMessage) error {
		return json.Unmarshal(raw, &row)
	})
	if err != nil {
		return store.Backlog{}, fmt.Errorf("backlog: %w", err)
	}
	b := store.Backlog{Due: row.Flagged + row.DueNext + row.DueTS}
	for _, raw := range []json.RawMessage{row.OldestFlagged, row.OldestNext, row.OldestTS} {
		var at *float64
		if json.Unmarshal(raw, &at) != nil || at == nil {
			continue
		}
		t := time.UnixMilli(int64(*at))
		if t.After(now) { // flagged by hand before it fell due: due now
			t = now
		}
		if b.OldestDue.IsZero() || t.Before(b.OldestDue) {
			b.OldestDue = t
		}
	}
	return b, nil
}

// deadWhyOf is the expression that names a dead letter's reason with its
// last HTTP status, as the embedded store does: "permanent_error (HTTP
// 400)", or the reason alone when it has none; path is "" or an alias
// and a dot.
func deadWhyOf(path string) string {
	status := path + "lastStatus"
	return path + "reason || CASE WHEN IS_NUMBER(" + status + ") AND " + status + ` > 0 THEN " (HTTP " || TOSTRING(` + status + `) || ")" ELSE "" END`
}

// deadReasonsStatement counts the dead letters of the five most frequent
// reasons, each with its last HTTP status, on the index of that
// expression (ix_deadletter_why), not on their documents.
func deadReasonsStatement(deadletter string) string {
	why := deadWhyOf("d.")
	return "SELECT " + why + " AS reason, COUNT(*) AS count FROM " + deadletter + " AS d WHERE (" + why + ") IS NOT MISSING " +
		"GROUP BY " + why + " ORDER BY COUNT(*) DESC, reason LIMIT 5" // ties as the embedded store breaks them
}

// reasonsStatement counts the retries and the dead letters of the five
// most frequent reasons of each, on the indexes of their reasons.
func reasonsStatement(retry, deadletter string) string {
	return "SELECT (" + retryReasonsStatement(retry) + ") AS retries, (" + deadReasonsStatement(deadletter) + ") AS dead"
}

// Reasons counts the retries and dead letters by reason on the indexes of
// their reasons (ix_retry_why, ix_deadletter_why), whose every entry a
// count reads: only the status and the console ask for them, and a reading
// younger than CountsTTL answers again. They are read not_bounded: shown
// only, they need not wait for the indexer to catch up (a slow one made
// the console's overview an error).
func (s *Store) Reasons(ctx context.Context) ([]store.Tally, error) {
	ctx = store.Browsing(ctx) // only shown: a slow indexer must not turn it into an error
	return s.reasons.get(ctx, s.now, s.cfg.CountsTTL, "", func() ([]store.Tally, error) {
		type reason struct {
			Reason string
			Count  int
		}
		var row struct{ Retries, Dead []reason }
		err := s.query(ctx, reasonsStatement(s.keyspace(order.Retry), s.keyspace(order.DeadLetter)),
			map[string]any{"control": order.ControlKey}, func(raw json.RawMessage) error { return json.Unmarshal(raw, &row) })
		if err != nil {
			return nil, fmt.Errorf("reasons: %w", err)
		}
		var out []store.Tally
		for _, r := range row.Retries {
			out = append(out, store.Tally{Reason: store.RetryTally(r.Reason), Count: r.Count})
		}
		for _, r := range row.Dead {
			out = append(out, store.Tally{Reason: "dead: " + r.Reason, Count: r.Count})
		}
		slices.SortFunc(out, func(x, y store.Tally) int {
			return cmp.Or(cmp.Compare(y.Count, x.Count), cmp.Compare(x.Reason, y.Reason))
		})
		return out[:min(len(out), 5)], nil
	})
}

// paidCountStatement counts the paid orders on ix_inbound_paid.
func paidCountStatement(inbound string) string {
	return "SELECT RAW COUNT(*) FROM " + inbound + " AS o WHERE o.paymentStatus = \"paid\""
}

// FlaggedRetries counts the flagged retries on ix_retry_fire, which
// holds them alone, afresh (Counts may serve an older count).
func (s *Store) FlaggedRetries(ctx context.Context) (int, error) {
	var n int
	err := s.query(ctx, flaggedCountStatement(s.keyspace(order.Retry)), map[string]interface{}{"control": order.ControlKey},
		func(raw json.RawMessage) error { return json.Unmarshal(raw, &n) })
	if err != nil {
		return 0, fmt.Errorf("flagged retries: %w", err)
	}
	return n, nil
}

// flaggedCountStatement counts the flagged retries on ix_retry_fire.
func flaggedCountStatement(retry string) string {
	return "SELECT RAW COUNT(*) FROM " + retry + " AS r WHERE META(r).id != $control AND r.fireRetry = true"
}

// orderCountsStatement counts the paid and the confirmed orders on
// ix_inbound_paid: no document is read, but the index service goes over an
// entry for every paid order.
func orderCountsStatement(inbound string) string {
	return "SELECT " +
		"(" + paidCountStatement(inbound) + ")[0] AS paid, " +
		"(SELECT RAW COUNT(*) FROM " + inbound + " AS o WHERE o.paymentStatus = \"paid\" AND o.confirmationEmailSent = true)[0] AS confirmed"
}

// countsStatement counts the retries and dead letters: the same work
// whatever their number, but for the flagged retries.
func countsStatement(retry, deadletter string) string {
	return "SELECT " +
		// Without a WHERE, the collection's own count: nothing is scanned.
		// readCounts takes the control document away.
		"(SELECT RAW COUNT(*) FROM " + retry + " AS r)[0] AS retryDocs, " +
		"(" + flaggedCountStatement(retry) + ")[0] AS retryFlagged, " +
		"(SELECT RAW COUNT(*) FROM " + deadletter + " AS d)[0] AS deadLetters"
}

// orderCounts is a count of the paid and confirmed orders, and when it was
// taken.
type orderCounts struct {
	Paid, Confirmed int
	at              time.Time
}

// Counts reads the numbers by N1QL, or answers from the last reading when
// it is younger than CountsTTL. The paid and confirmed orders are counted
// apart, at most every OrderCountsTTL: their count goes over an index entry
// for every paid order (ix_inbound_paid; no document is read), the one
// figure here whose cost grows with the orders stored, and the metrics'
// refresh of every instance asks for it every few seconds.
func (s *Store) Counts(ctx context.Context) (store.Counts, error) {
	c, err := s.counts.get(ctx, s.now, s.cfg.CountsTTL, "", func() (store.Counts, error) {
		return s.readCounts(ctx)
	})
	if err != nil {
		return store.Counts{}, err
	}
	o, err := s.orderCounts.get(ctx, s.now, s.cfg.OrderCountsTTL, s.readOrderCounts, s.log)
	if err != nil {
		return store.Counts{}, err
	}
	c.OrdersPaid, c.OrdersConfirmed, c.OrdersCountedAt = o.Paid, o.Confirmed, o.at
	return c, nil
}

// orderCountTimeout bounds a count of the orders, apart from the deadline
// of the caller that asked for it (the metrics' refresh gives 5s): on a
// store of millions of paid orders one count may take longer, and cut off
// at each refresh it would never be made.
const orderCountTimeout = 2 * time.Minute

// bgCount keeps the last count of the orders and makes the next one in the
// background once it is older than its TTL: a caller gets the last count
// at once while the next is made, and waits (within its own deadline)
// only for the first; one count at a time.
type bgCount struct {
	mu      sync.Mutex
	last    orderCounts
	ok      bool
	err     error         // of the last count, when it failed
	running chan struct{} // closed when the count under way ends; nil when none is
	wg      sync.WaitGroup
	cancel  context.CancelFunc // ends the counts under way (stop)
	stopped bool
}

func (b *bgCount) get(ctx context.Context, clock func() time.Time, ttl time.Duration, read func(context.Context) (orderCounts, error), log *slog.Logger) (orderCounts, error) {
	if ttl < 0 {
		return read(ctx)
	}
	b.mu.Lock()
	now := clock()
	if b.ok && now.Sub(b.last.at) < ttl && !now.Before(b.last.at) {
		defer b.mu.Unlock()
		return b.last, nil
	}
	if b.running == nil && !b.stopped {
		done := make(chan struct{})
		b.running = done
		rctx, cancel := context.WithTimeout(withQueryTimeout(context.WithoutCancel(ctx), orderCountTimeout), orderCountTimeout)
		b.cancel = cancel
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			v, err := read(rctx)
			cancel()
			b.mu.Lock()
			if err == nil {
				b.last, b.ok = v, true
			}
			failing, stopped, counted := b.err != nil, b.stopped, b.ok
			b.err, b.running = err, nil
			b.mu.Unlock()
			close(done)
			// Said when counts start failing and when they succeed again,
			// not at each; not for a count that stop ended.
			switch {
			case err != nil && !failing && !stopped && counted:
				log.Warn("the orders cannot be counted; the last count is served until they are", "error", err)
			case err != nil && !failing && !stopped:
				log.Warn("the orders cannot be counted; what needs the count fails until they are", "error", err)
			case err == nil && failing:
				log.Info("the orders are counted again")
			}
		}()
	}
	running, last, ok := b.running, b.last, b.ok
	b.mu.Unlock()
	if ok {
		return last, nil // the last count while the next is made
	}
	if running == nil {
		return orderCounts{}, fmt.Errorf("count orders: %w", store.ErrClosed)
	}
	select {
	case <-running:
	case <-ctx.Done():
		return orderCounts{}, fmt.Errorf("count orders (the count goes on, for the next caller): %w", ctx.Err())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.ok {
		return orderCounts{}, b.err
	}
	return b.last, nil
}

// stop ends the count under way and waits for it.
func (b *bgCount) stop() {
	b.mu.Lock()
	b.stopped = true
	if b.cancel != nil {
		b.cancel()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (s *Store) readOrderCounts(ctx context.Context) (orderCounts, error) {
	at := s.now()
	var o orderCounts
	err := s.query(ctx, orderCountsStatement(s.keyspace(order.Inbound)), nil, func(raw json.RawMessage) error {
		return json.Unmarshal(raw, &o)
	})
	if err != nil {
		return orderCounts{}, fmt.Errorf("count orders: %w", err)
	}
	o.at = at
	return o, nil
}

func (s *Store) readCounts(ctx context.Context) (store.Counts, error) {
	var c store.Counts
	stmt := countsStatement(s.keyspace(order.Retry), s.keyspace(order.DeadLetter))
	err := s.query(ctx, stmt, map[string]interface{}{"control": order.ControlKey}, func(raw json.RawMessage) error {
		return json.Unmarshal(raw, &c)
	})
	if err != nil {
		return store.Counts{}, fmt.Errorf("counts: %w", err)
	}
	switch _, err := s.Get(ctx, order.Retry, order.ControlKey); {
	case err == nil:
		c.RetryDocs = max(0, c.RetryDocs-1) // allow_retrys is no retry
	case !errors.Is(err, store.ErrNotFound):
		return store.Counts{}, fmt.Errorf("counts: %w", err)
	}
	return c, nil
}

func scanStatement(keyspace string) string {
	return "SELECT RAW META(d).id FROM " + keyspace + " AS d WHERE META(d).id > $after ORDER BY META(d).id LIMIT $limit"
}

// Scan pages through the keys from after on by N1QL (the primary index
// that setup creates on each collection) and reads each document by KV, so
// that documents that are not JSON come through too.
func (s *Store) Scan(ctx context.Context, coll, after string, fn func(store.Doc) error) error {
	if !slices.Contains(collections, coll) {
		return fmt.Errorf("scan: %q is not one of %v", coll, collections)
	}
	return s.scanPages(ctx, "scan "+coll, coll, after, fn, scanStatement(s.keyspace(coll)), nil)
}

// ScanDeadLetters pages through the keys of the dead letters of reason on
// the index setup creates on their reason and key (ix_deadletter_reason),
// and reads each by KV.
func (s *Store) ScanDeadLetters(ctx context.Context, reason, after string, fn func(store.Doc) error) error {
	return s.scanPages(ctx, "scan dead letters of "+reason, order.DeadLetter, after, fn,
		deadLettersStatement(s.keyspace(order.DeadLetter)), map[string]any{"reason": reason})
}

// ScanRetries pages through the keys of the retries that wait for why
// (order.RetryDoc.Why) on the index setup creates on that reason and the
// key (ix_retry_why), and reads each by KV: its cost grows with them, not
// with the other retries.
func (s *Store) ScanRetries(ctx context.Context, why, after string, fn func(store.Doc) error) error {
	return s.scanPages(ctx, "scan "+store.RetryTally(why), order.Retry, after, fn,
		retriesStatement(s.keyspace(order.Retry)), map[string]any{"why": why})
}

// whyOf is order.RetryDoc.Why in SQL++, of the retry document at path
// ("r." in a query, "" in the index's key): the index setup creates on it
// and the statements that read it must spell it the same way. A document
// Why cannot decode gets a reason too (lastStatus "503" is "HTTP 503"
// here): callers decode each and check.
func whyOf(path string) string {
	status, lastError, held := path+"lastStatus", path+"lastError", path+"heldBack"
	return "CASE WHEN " + status + ` > 0 THEN "HTTP " || TOSTRING(` + status + ") " +
		"WHEN " + lastError + ` != "" AND NOT (` + lastError + ` LIKE "` + order.NotAttemptedPrefix + `%") THEN "` + order.WhyNoAnswer + `" ` +
		"WHEN " + held + ` != "" OR ` + lastError + ` != "" THEN "` + order.WhyHeldBack + `" ` +
		`ELSE "" END`
}

func retriesStatement(retry string) string {
	return "SELECT RAW META(r).id FROM " + retry + " AS r WHERE (" + whyOf("r.") +
		") = $why AND META(r).id > $after ORDER BY META(r).id LIMIT $limit"
}

// retryReasonsStatement counts the retries of the five most frequent
// reasons on ix_retry_why, not on their documents.
func retryReasonsStatement(retry string) string {
	return "SELECT " + whyOf("r.") + " AS reason, COUNT(*) AS count FROM " + retry + " AS r WHERE (" + whyOf("r.") +
		") IS NOT MISSING AND META(r).id != $control GROUP BY " + whyOf("r.") + " ORDER BY COUNT(*) DESC, reason LIMIT 5"
}

func deadLettersStatement(keyspace string) string {
	return "SELECT RAW META(d).id FROM " + keyspace +
		" AS d WHERE d.reason = $reason AND META(d).id > $after ORDER BY META(d).id LIMIT $limit"
}

// Scan pages: the first is small, for a console page that shows 50 and
// stops, and each next one four times larger, up to the largest, for a
// scan that goes through thousands.
const (
	firstScanPage = 64
	lastScanPage  = 1024
)

// scanPages calls fn for the documents of coll whose keys q reads from
// after on, a page at a time: q takes $after and $limit, and params.
func (s *Store) scanPages(ctx context.Context, what, coll, after string, fn func(store.Doc) error, q string, params map[string]any) error {
	for page := firstScanPage; ; page = min(4*page, lastScanPage) {
		args := map[string]any{"after": after, "limit": page}
		maps.Copy(args, params)
		keys, err := s.queryKeys(ctx, q, args)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		docs, err := s.getPage(ctx, coll, keys)
		if err != nil {
			return err
		}
		for _, d := range docs {
			if d.Key == "" {
				continue // removed since the page was read
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

// scanReads bounds the reads of a scan's page that are in flight at once:
// one after another, each would wait for its own round trip.
const scanReads = 16

// getPage reads the documents of keys, scanReads at a time, in the order
// of keys; a document removed since its key was read is a zero Doc.
func (s *Store) getPage(ctx context.Context, coll string, keys []string) ([]store.Doc, error) {
	docs := make([]store.Doc, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(scanReads)
	for i, k := range keys {
		g.Go(func() error {
			d, err := s.Get(gctx, coll, k)
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			docs[i] = d
			return err
		})
	}
	return docs, g.Wait()
}

// query runs a statement at request_plus consistency, so that it sees every
// write made before it, and calls fn for each row.
func (s *Store) query(ctx context.Context, stmt string, params map[string]interface{}, fn func(json.RawMessage) error) error {
	var fnErr error
	err := s.queryRaw(ctx, stmt, params, func(raw json.RawMessage) error {
		fnErr = fn(raw)
		return fnErr
	})
	if fnErr != nil {
		return fnErr // fn's own, as it is
	}
	return mapErr(err)
}

// durableMetaKey marks, in its context, a write of the metadata bucket
// that is made durably all the same (withDurableMeta).
type durableMetaKey struct{}

// withDurableMeta marks the writes made with ctx as durable although they
// are the metadata bucket's: a vBucket's change of owner, whose loss in a
// failover would leave it named to a member that no longer streams it, or
// a --from-now start, whose loss would lose where the service started.
func withDurableMeta(ctx context.Context) context.Context {
	return context.WithValue(ctx, durableMetaKey{}, true)
}

// queryTimeoutKey carries a query's own timeout, longer than --cb-timeout,
// in its context (withQueryTimeout).
type queryTimeoutKey struct{}

func withQueryTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, queryTimeoutKey{}, d)
}

// queryTimeoutOf is the query's own timeout; 0: --cb-timeout.
func queryTimeoutOf(ctx context.Context) time.Duration {
	d, _ := ctx.Value(queryTimeoutKey{}).(time.Duration)
	return d
}

// queryRaw is query with gocb's errors as they are.
func (s *Store) queryRaw(ctx context.Context, stmt string, params map[string]interface{}, fn func(json.RawMessage) error) error {
	consistency := gocb.QueryScanConsistencyRequestPlus
	if store.IsBrowsing(ctx) {
		consistency = gocb.QueryScanConsistencyNotBounded
	}
	res, err := s.cluster.Query(stmt, &gocb.QueryOptions{
		// gocb prepares a statement unless told it is ad hoc, and the
		// query service cannot prepare an EXPLAIN.
		Adhoc:           strings.HasPrefix(stmt, "EXPLAIN "),
		Context:         ctx,
		NamedParameters: params,
		ScanConsistency: consistency,
		Timeout:         queryTimeoutOf(ctx),
	})
	if err != nil {
		return err
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
	return errors.Join(res.Err(), res.Close())
}

// ttlCache keeps one answer for a while; one caller at a time reads it
// again, the others wait for that reading.
type ttlCache[T any] struct {
	sem chan struct{}
	at  time.Time
	key string
	val T
	ok  bool
}

func newTTLCache[T any]() ttlCache[T] { return ttlCache[T]{sem: make(chan struct{}, 1)} }

// get answers from the last reading when it is younger than ttl at the
// time clock gives once the caller's turn has come: a caller that waited
// for another's reading gets that one, not a second reading right after it.
func (c *ttlCache[T]) get(ctx context.Context, clock func() time.Time, ttl time.Duration, key string, read func() (T, error)) (T, error) {
	if ttl < 0 {
		return read()
	}
	var zero T
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return zero, ctx.Err()
	}
	defer func() { <-c.sem }()
	now := clock()
	if c.ok && c.key == key && now.Sub(c.at) < ttl && !now.Before(c.at) {
		return c.val, nil
	}
	v, err := read()
	if err != nil {
		return zero, err
	}
	c.val, c.key, c.at, c.ok = v, key, now, true
	return v, nil
}
