package couchbase

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/internal/redact"
)

// SetupOptions size the buckets setup creates.
type SetupOptions struct {
	BucketRAMMB, MetadataRAMMB uint64 // defaults 256 and 128
	Replicas                   uint32 // default 0: a one-node cluster
	IndexReplicas              int    // replicas of each index, on other index nodes; default 0
	// IndexWait bounds the wait for the indexes to be built (default 1h):
	// past it, setup fails naming those still building, which the
	// cluster goes on building.
	IndexWait time.Duration

	// lookedTooSoon (tests): each bucket's look says it is not there, as
	// a look made just before another setup created it would.
	lookedTooSoon bool
}

// setupIndex is an index setup creates: a collection's primary index
// ("#primary"), or a named one on what follows the keyspace (its keys and
// WHERE).
type setupIndex struct{ coll, name, on string }

// setupIndexes are the indexes ordermail's queries use.
func setupIndexes() []setupIndex {
	return []setupIndex{
		// The sample's, used by its own UPDATE, and Scan's on every
		// collection (without one, a scan of inbound would need 7.6's
		// sequential scans and the role that allows them).
		{"retry", "#primary", ""},
		{"deadletter", "#primary", ""},
		{"inbound", "#primary", ""},
		// Attempt records, read by key; the index lets an operator query them.
		{"attempts", "#primary", ""},
		// One per branch of the sweep, so that it reads only due documents,
		// and of those only the unflagged: the flagged wait for a worker,
		// and every statement of the sweep would read them again.
		{"retry", "ix_retry_due_next", "(nextAttemptAt) WHERE " + unflaggedRetry},
		{"retry", "ix_retry_due_ts", "(ts) WHERE nextAttemptAt IS MISSING AND " + unflaggedRetry},
		// The flagged retries, for the counts and the backlog, whose due
		// retries are these and those of the two above.
		{"retry", "ix_retry_fire", "(fireRetry) WHERE fireRetry = true"},
		// The retries of one reason (order.RetryDoc.Why, made of three
		// fields), in key order (ScanRetries), and their counts by reason.
		{"retry", "ix_retry_why", "((" + whyOf("") + "), META().id)"},
		// The dead letters of one reason, in key order (ScanDeadLetters).
		{"deadletter", "ix_deadletter_reason", "(reason, META().id)"},
		// The dead letters' counts by reason and last HTTP status.
		{"deadletter", "ix_deadletter_why", "((" + deadWhyOf("") + "))"},
		// Counts of paid and confirmed orders.
		{"inbound", "ix_inbound_paid", "(paymentStatus, confirmationEmailSent)"},
	}
}

// replacedIndexes are forerunners of setupIndexes (releases before them),
// which held the flagged retries too: nothing reads them once the sweep's
// two are there, and setup drops them.
var replacedIndexes = []setupIndex{{"retry", "ix_retry_next", ""}, {"retry", "ix_retry_ts", ""}}

// create is the statement that creates ix, if it is missing (IF NOT
// EXISTS, Couchbase 7.1+, makes setup safe to run twice), deferred: setup
// builds its indexes together (one pass over each collection's documents)
// and waits for them itself, as a CREATE that builds waits past any
// timeout on a collection of millions, and a cluster may defer every new
// index anyway (7.6.2's setting).
func (ix setupIndex) create(ks func(string) string, replicas int) string {
	with := ` WITH {"defer_build":true}`
	if replicas > 0 { // Enterprise Edition's: said only when asked for
		with = fmt.Sprintf(` WITH {"defer_build":true,"num_replica":%d}`, replicas)
	}
	if ix.name == "#primary" {
		return "CREATE PRIMARY INDEX IF NOT EXISTS ON " + ks(ix.coll) + with
	}
	return "CREATE INDEX IF NOT EXISTS " + ix.name + " ON " + ks(ix.coll) + ix.on + with
}

// unflaggedRetry is the condition of the sweep's partial indexes, and a
// term, word for word, of every statement that reads them (with the
// statement's alias): the query service reads a partial index for a
// statement whose WHERE implies the index's, which it finds term by term.
const unflaggedRetry = "(fireRetry IS MISSING OR fireRetry != true)"

// What setup does, for errRights to name the role it lacks.
type setupStep int

const (
	stepConnect setupStep = iota
	stepBuckets
	stepCollections
	stepIndexes
)

// Editions, as /pools/default reports them in each node's version.
const (
	editionUnknown    = ""
	editionEnterprise = "enterprise"
	editionCommunity  = "community"
)

// neededRoles names the roles a step needs on an edition: Community
// Edition has only Full Admin, Read-Only Admin and Application Access.
func neededRoles(cfg Config, edition string, step setupStep) string {
	ee := map[setupStep]string{
		stepConnect: "any role (" + cfg.loginQuestion() + ")",
		stepBuckets: "Cluster Admin (cluster_admin) or Full Admin (admin) to create buckets",
		stepCollections: fmt.Sprintf("Cluster Admin (cluster_admin), Bucket Admin (bucket_admin[%s]) or Manage Scopes "+
			"(scope_admin[%s]) to create scopes and collections", cfg.Bucket, cfg.Bucket),
		stepIndexes: fmt.Sprintf("Query Manage Index (query_manage_index[%s]) to create indexes (Cluster Admin does not "+
			"include it)", cfg.Bucket),
	}[step]
	ce := map[setupStep]string{
		stepConnect:     "any role (" + cfg.loginQuestion() + ")",
		stepBuckets:     "Full Admin (admin), the only Community Edition role that creates buckets",
		stepCollections: "Full Admin (admin), the only Community Edition role that creates scopes and collections",
		stepIndexes:     fmt.Sprintf("Application Access (bucket_full_access[%s]) or Full Admin (admin) to create indexes", cfg.Bucket),
	}[step]
	all := fmt.Sprintf("setup as a whole needs Cluster Admin plus Query Manage Index on %s on Enterprise Edition, "+
		"Full Admin on Community Edition", cfg.Bucket)
	switch edition {
	case editionEnterprise:
		return "on Enterprise Edition this needs " + ee + "; " + all
	case editionCommunity:
		return "on Community Edition this needs " + ce + "; " + all
	}
	return "this needs, on Enterprise Edition, " + ee + "; on Community Edition, " + ce + "; " + all
}

// who names the user setup runs as: the one named, or the one the
// client certificate maps to.
func (c Config) who() string {
	if c.CertFile != "" {
		return "the user " + c.CertFile + " (--cb-cert-file) maps to"
	}
	return fmt.Sprintf("user %q", c.Username)
}

// loginQuestion asks about what logs in.
func (c Config) loginQuestion() string {
	if c.CertFile != "" {
		return "does the cluster map " + c.CertFile + " (--cb-cert-file) to one of its users?"
	}
	return fmt.Sprintf("are the username (%q) and the password right?", c.Username)
}

// refused says whether the cluster refused err's request for lack of
// rights (or of valid credentials).
func refused(err error) bool {
	msg := strings.ToLower(err.Error())
	return errors.Is(err, gocb.ErrAuthenticationFailure) || strings.Contains(msg, "forbidden") ||
		strings.Contains(msg, "permission") || strings.Contains(msg, "does not have credentials") ||
		strings.Contains(msg, "13014")
}

// errRights explains a refusal of the cluster, naming the role missing
// for step on the cluster's edition.
func errRights(cfg Config, edition string, step setupStep, what string, err error) error {
	if refused(err) {
		return fmt.Errorf("%s: %s lacks the rights: %s: %w", what, cfg.who(), neededRoles(cfg, edition, step), err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// clusterEdition reads the edition from the nodes' versions
// ("7.6.2-3721-enterprise"); unknown when the cluster does not say.
func clusterEdition(ctx context.Context, cluster *gocb.Cluster) string {
	nodes, err := cluster.Internal().GetNodesMetadata(&gocb.GetNodesMetadataOptions{Context: ctx})
	if err != nil || len(nodes) == 0 {
		return editionUnknown
	}
	switch v := strings.ToLower(nodes[0].Version); {
	case strings.HasSuffix(v, "-enterprise"):
		return editionEnterprise
	case strings.HasSuffix(v, "-community"):
		return editionCommunity
	}
	return editionUnknown
}

// Setup creates, if they are missing, the buckets, the collections and the
// indexes. It is safe to run again.
func Setup(ctx context.Context, cfg Config, so SetupOptions, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	if so.BucketRAMMB == 0 {
		so.BucketRAMMB = 256
	}
	if so.MetadataRAMMB == 0 {
		so.MetadataRAMMB = 128
	}
	cluster, err := connectReady(ctx, cfg, log)
	if err != nil {
		if terr := cfg.reachTrouble(ctx); terr != nil {
			return fmt.Errorf("reach the cluster at %s: %w (%w)", redact.URL(cfg.ConnStr), terr, err)
		}
	}
	if errors.Is(err, gocb.ErrTimeout) {
		// The SDK retries a refused login as a connection failure until it
		// times out: the timeout is all setup gets to see of it.
		return fmt.Errorf("reach the cluster at %s: no answer from its management and query services within %s: "+
			"%s, and does the cluster run the query service? %w",
			redact.URL(cfg.ConnStr), 3*cfg.Timeout, strings.TrimSuffix(cfg.loginQuestion(), "?"), err)
	}
	if err != nil {
		return errRights(cfg, editionUnknown, stepConnect, "reach the cluster at "+redact.URL(cfg.ConnStr), err)
	}
	defer cluster.Close(nil)
	edition := clusterEdition(ctx, cluster)
	if so.IndexReplicas > 0 && edition == editionCommunity {
		return fmt.Errorf("--cb-index-replicas %d: Community Edition has no index replicas", so.IndexReplicas)
	}
	for _, b := range []struct {
		name string
		ram  uint64
	}{{cfg.Bucket, so.BucketRAMMB}, {cfg.MetadataBucket, so.MetadataRAMMB}} {
		// A bucket there is left as it is. Asked to create it again, the
		// cluster answers every field that is wrong at once (the name taken,
		// and on a cluster with no RAM left, the quota), and gocb keeps one
		// of them at random: "exists" or "invalid argument".
		var err error
		if !so.lookedTooSoon && bucketExists(ctx, cluster, b.name) {
			err = gocb.ErrBucketExists
		} else {
			err = cluster.Buckets().CreateBucket(gocb.CreateBucketSettings{BucketSettings: gocb.BucketSettings{
				Name: b.name, RAMQuotaMB: b.ram, NumReplicas: so.Replicas, BucketType: gocb.CouchbaseBucketType,
			}}, &gocb.CreateBucketOptions{Context: ctx})
		}
		switch {
		case err == nil:
			log.Info("created bucket", "bucket", b.name, "ram_mb", b.ram)
		case errors.Is(err, gocb.ErrBucketExists):
			log.Info("bucket exists", "bucket", b.name)
		case bucketExists(ctx, cluster, b.name):
			// Created by an administrator (this user need not be able
			// to), or by another setup between the look and the create
			// (two replicas' init containers): the cluster then answers
			// the quota too large as well, and gocb may keep that.
			log.Info("bucket exists", "bucket", b.name)
		default:
			return errRights(cfg, edition, stepBuckets, "create bucket "+b.name, err)
		}
		if err := cluster.Bucket(b.name).WaitUntilReady(3*cfg.Timeout, &gocb.WaitUntilReadyOptions{Context: ctx}); err != nil {
			return fmt.Errorf("bucket %s is not ready: %w", b.name, err)
		}
	}
	cm := cluster.Bucket(cfg.Bucket).CollectionsV2()
	// Made by an administrator, they need no right to make them: the
	// cluster checks the right before it looks whether they are there.
	there := func(coll string) bool {
		scopes, err := cm.GetAllScopes(&gocb.GetAllScopesOptions{Context: ctx})
		if err != nil {
			return false
		}
		for _, sc := range scopes {
			if sc.Name == cfg.Scope {
				return coll == "" || slices.ContainsFunc(sc.Collections, func(c gocb.CollectionSpec) bool { return c.Name == coll })
			}
		}
		return false
	}
	if cfg.Scope != "_default" {
		if err := cm.CreateScope(cfg.Scope, &gocb.CreateScopeOptions{Context: ctx}); err != nil &&
			!errors.Is(err, gocb.ErrScopeExists) && !(refused(err) && there("")) {
			return errRights(cfg, edition, stepCollections, "create scope "+cfg.Scope, err)
		}
	}
	for _, c := range collections {
		err := cm.CreateCollection(cfg.Scope, c, nil, &gocb.CreateCollectionOptions{Context: ctx})
		switch {
		case err == nil:
			log.Info("created collection", "collection", cfg.Bucket+"."+cfg.Scope+"."+c)
		case errors.Is(err, gocb.ErrCollectionExists):
		case refused(err) && there(c):
		default:
			return errRights(cfg, edition, stepCollections, "create collection "+c, err)
		}
	}
	if err := setUpIndexes(ctx, &Store{cfg: cfg, cluster: cluster}, edition, so, log); err != nil {
		return err
	}
	log.Info("setup complete", "bucket", cfg.Bucket, "metadata_bucket", cfg.MetadataBucket)
	return nil
}

// connectReady connects and waits for the management and query services,
// connecting again (within three timeouts in all) when they stay "not
// ready": gocbcore's cluster-level agent misses a config that arrives
// before it watches for configs, and then waits for the next revision.
func connectReady(ctx context.Context, cfg Config, log *slog.Logger) (*gocb.Cluster, error) {
	deadline := time.Now().Add(3 * cfg.Timeout)
	for {
		cluster, _, err := connect(cfg, log)
		if err != nil {
			return nil, err
		}
		err = cluster.WaitUntilReady(min(cfg.Timeout, time.Until(deadline)), &gocb.WaitUntilReadyOptions{Context: ctx,
			ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeManagement, gocb.ServiceTypeQuery}})
		if err == nil {
			return cluster, nil
		}
		cluster.Close(nil)
		if !errors.Is(err, gocb.ErrTimeout) || time.Until(deadline) <= 0 || ctx.Err() != nil {
			return nil, err
		}
	}
}

// setUpIndexes creates the indexes that are missing, drops those they
// replace, builds them, and waits until they are online; then it warns of
// any its statements do not read (IF NOT EXISTS goes by the name: one an
// operator made under it with another definition, or one the query
// service passes over for another). A release that changes an index's
// definition names it anew and lists the old name in replacedIndexes.
func setUpIndexes(ctx context.Context, s *Store, edition string, so SetupOptions, log *slog.Logger) error {
	if so.IndexWait <= 0 {
		so.IndexWait = time.Hour
	}
	for _, ix := range setupIndexes() {
		if err := runIndexStatement(ctx, s.cluster, s.cfg, edition, ix.create(s.keyspace, so.IndexReplicas)); err != nil {
			return err
		}
	}
	for _, ix := range replacedIndexes {
		if err := runIndexStatement(ctx, s.cluster, s.cfg, edition, "DROP INDEX "+ix.name+" IF EXISTS ON "+s.keyspace(ix.coll)); err != nil {
			return err
		}
	}
	if err := buildIndexes(ctx, s, edition, so.IndexWait, log); err != nil {
		return err
	}
	missing, err := s.missingIndexes(ctx)
	if err != nil {
		return fmt.Errorf("check the indexes: %w", err)
	}
	for _, m := range missing {
		log.Warn("online, yet not read by the statement it is for: an index of that name with another "+
			"definition (drop it and run setup again), or another index the query service prefers", "index", m.say)
	}
	return nil
}

// buildIndexes builds the deferred indexes setup makes, those of a
// collection together (one pass over its documents), and waits until all
// of them are online, saying which are still building every 15s; past
// wait, or when ctx ends, it fails naming them as last seen. A look at
// their states builds what is deferred then (another setup's, an index
// made deferred meanwhile), at most every 15s a collection, as the
// indexer may answer a BUILD "in progress" and build it later itself; a
// look that fails for a moment is tried again.
func buildIndexes(ctx context.Context, s *Store, edition string, wait time.Duration, log *slog.Logger) error {
	deadline := time.Now().Add(wait)
	ours := map[string][]string{} // index names by collection
	for _, ix := range setupIndexes() {
		ours[ix.coll] = append(ours[ix.coll], ix.name)
	}
	colls := slices.Sorted(maps.Keys(ours))
	built := map[string]time.Time{} // a collection's last BUILD
	// look reads the states of the collection's indexes and builds those
	// deferred; what it returns is what is not online yet, and whether it
	// built any (a build may be over at once: the next look need not wait).
	look := func(coll string) (_ []string, building bool, _ error) {
		all, err := s.cluster.Bucket(s.cfg.Bucket).Scope(s.cfg.Scope).Collection(coll).QueryIndexes().GetAllIndexes(
			&gocb.GetAllQueryIndexesOptions{Context: ctx})
		if err != nil {
			return nil, false, errRights(s.cfg, edition, stepIndexes, "read the indexes of "+coll, err)
		}
		state := map[string]string{}
		for _, ix := range all {
			state[ix.Name] = ix.State
		}
		var pending, deferred []string
		for _, n := range ours[coll] {
			switch st := state[n]; st {
			case "online":
				continue
			case "deferred": // built below
				deferred = append(deferred, "`"+n+"`")
				pending = append(pending, fmt.Sprintf("%s on %s (building)", n, coll))
			default:
				pending = append(pending, fmt.Sprintf("%s on %s (%s)", n, coll, cmp.Or(st, "missing")))
			}
		}
		if len(deferred) > 0 && time.Since(built[coll]) >= 15*time.Second {
			built[coll] = time.Now()
			stmt := "BUILD INDEX ON " + s.keyspace(coll) + "(" + strings.Join(deferred, ", ") + ")"
			switch err := runIndexStatement(ctx, s.cluster, s.cfg, edition, stmt); {
			case err == nil:
				log.Info("building indexes", "collection", coll, "indexes", strings.Join(deferred, ", "))
				building = true
			case !strings.Contains(strings.ToLower(err.Error()), "already"):
				return nil, false, err
			}
			// "Already": another setup's BUILD, or the indexer's own
			// retry in the background; a later look sees it.
		}
		return pending, building, nil
	}
	said := time.Now()
	seen := map[string][]string{} // each collection's indexes not online, as last seen
	for {
		var pending []string
		var lookErr error
		anyBuilt := false
		for _, coll := range colls {
			if ctx.Err() == nil {
				p, b, err := look(coll)
				switch {
				case err == nil:
					seen[coll], anyBuilt = p, anyBuilt || b
				case ctx.Err() != nil:
				case errors.Is(err, gocb.ErrTimeout) || errors.Is(err, gocb.ErrServiceNotAvailable):
					lookErr = err
				default:
					return err
				}
			}
			if p, ok := seen[coll]; ok {
				pending = append(pending, p...)
				continue
			}
			for _, n := range ours[coll] { // never seen: a look failed from the first
				pending = append(pending, n+" on "+coll+" (not known)")
			}
		}
		if len(pending) == 0 {
			return nil
		}
		stop := ""
		switch {
		case ctx.Err() != nil:
			stop = "stopped waiting for"
		case time.Now().After(deadline):
			stop = fmt.Sprintf("not built within %s (--cb-index-wait):", wait)
		}
		if stop != "" {
			if lookErr != nil {
				stop = fmt.Sprintf("%s (the last look at their states: %v)", stop, lookErr)
			}
			return fmt.Errorf("indexes %s %s; the cluster goes on building them: run setup again to wait for them "+
				"(meanwhile ordermail run warns of each its statements do not get)", stop, strings.Join(pending, ", "))
		}
		if anyBuilt {
			continue // look again at once: a small collection's build is over already
		}
		if time.Since(said) >= 15*time.Second {
			log.Info("waiting for the indexes to be built", "pending", strings.Join(pending, ", "))
			said = time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// runIndexStatement runs one of setup's index statements (CREATE, BUILD,
// DROP), trying again while the query service does not know a collection
// created a moment ago.
func runIndexStatement(ctx context.Context, cluster *gocb.Cluster, cfg Config, edition, stmt string) error {
	deadline := time.Now().Add(6 * cfg.Timeout)
	for {
		res, err := cluster.Query(stmt, &gocb.QueryOptions{Context: ctx, Adhoc: true}) // run once: nothing to prepare
		if err == nil {
			return res.Close()
		}
		if errors.Is(err, gocb.ErrIndexExists) {
			return nil
		}
		notYet := errors.Is(err, gocb.ErrCollectionNotFound) || errors.Is(err, gocb.ErrIndexFailure) ||
			strings.Contains(strings.ToLower(err.Error()), "keyspace not found")
		if !notYet || time.Now().After(deadline) {
			return errRights(cfg, edition, stepIndexes, "index statement "+stmt, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// bucketExists says whether the cluster has bucket name, as far as this
// user may see.
func bucketExists(ctx context.Context, cluster *gocb.Cluster, name string) bool {
	_, err := cluster.Buckets().GetBucket(name, &gocb.GetBucketOptions{Context: ctx})
	return err == nil
}
