package couchbase

import (
	"context"
	"errors"
	"fmt"
	"github.com/ordermail/ordermail/internal/redact"
	"log/slog"
	"strings"
	"time"

	"github.com/couchbase/gocb/v2"
)

// SetupOptions size the buckets setup creates.
type SetupOptions struct {
	BucketRAMMB, MetadataRAMMB uint64 // defaults 256 and 128
	Replicas                   uint32 // default 0: a one-node cluster
}

// indexStatements are the indexes ordermail's queries use; IF NOT EXISTS
// (Couchbase 7.1+) makes setup safe to run twice.
func indexStatements(ks func(string) string) []string {
	return []string{
		// The sample's, used by its own UPDATE and by Scan.
		"CREATE PRIMARY INDEX IF NOT EXISTS ON " + ks("retry"),
		"CREATE PRIMARY INDEX IF NOT EXISTS ON " + ks("deadletter"),
		// One per branch of the sweep, so that it reads only due documents.
		"CREATE INDEX IF NOT EXISTS ix_retry_next ON " + ks("retry") + "(nextAttemptAt)",
		"CREATE INDEX IF NOT EXISTS ix_retry_ts ON " + ks("retry") + "(ts) WHERE nextAttemptAt IS MISSING",
		// Counts of paid and confirmed orders.
		"CREATE INDEX IF NOT EXISTS ix_inbound_paid ON " + ks("inbound") + "(paymentStatus, confirmationEmailSent)",
	}
}

// errRights explains a refusal of the cluster.
func errRights(cfg Config, what string, err error) error {
	msg := strings.ToLower(err.Error())
	if errors.Is(err, gocb.ErrAuthenticationFailure) || strings.Contains(msg, "forbidden") || strings.Contains(msg, "permission") {
		return fmt.Errorf("%s: user %q lacks the rights (setup needs Cluster Admin, or Bucket Admin on %s and %s plus Query Manage Index): %w",
			what, cfg.Username, cfg.Bucket, cfg.MetadataBucket, err)
	}
	return fmt.Errorf("%s: %w", what, err)
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
	cluster, _, err := connect(cfg)
	if err != nil {
		return err
	}
	defer cluster.Close(nil)
	err = cluster.WaitUntilReady(3*cfg.Timeout, &gocb.WaitUntilReadyOptions{Context: ctx,
		ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeManagement, gocb.ServiceTypeQuery}})
	if err != nil {
		return errRights(cfg, "reach the cluster at "+redact.URL(cfg.ConnStr), err)
	}
	for _, b := range []struct {
		name string
		ram  uint64
	}{{cfg.Bucket, so.BucketRAMMB}, {cfg.MetadataBucket, so.MetadataRAMMB}} {
		err := cluster.Buckets().CreateBucket(gocb.CreateBucketSettings{BucketSettings: gocb.BucketSettings{
			Name: b.name, RAMQuotaMB: b.ram, NumReplicas: so.Replicas, BucketType: gocb.CouchbaseBucketType,
		}}, &gocb.CreateBucketOptions{Context: ctx})
		switch {
		case err == nil:
			log.Info("created bucket", "bucket", b.name, "ram_mb", b.ram)
		case errors.Is(err, gocb.ErrBucketExists):
			log.Info("bucket exists", "bucket", b.name)
		default:
			return errRights(cfg, "create bucket "+b.name, err)
		}
		if err := cluster.Bucket(b.name).WaitUntilReady(3*cfg.Timeout, &gocb.WaitUntilReadyOptions{Context: ctx}); err != nil {
			return fmt.Errorf("bucket %s is not ready: %w", b.name, err)
		}
	}
	cm := cluster.Bucket(cfg.Bucket).CollectionsV2()
	if cfg.Scope != "_default" {
		if err := cm.CreateScope(cfg.Scope, &gocb.CreateScopeOptions{Context: ctx}); err != nil && !errors.Is(err, gocb.ErrScopeExists) {
			return errRights(cfg, "create scope "+cfg.Scope, err)
		}
	}
	for _, c := range collections {
		err := cm.CreateCollection(cfg.Scope, c, nil, &gocb.CreateCollectionOptions{Context: ctx})
		switch {
		case err == nil:
			log.Info("created collection", "collection", cfg.Bucket+"."+cfg.Scope+"."+c)
		case errors.Is(err, gocb.ErrCollectionExists):
		default:
			return errRights(cfg, "create collection "+c, err)
		}
	}
	s := &Store{cfg: cfg}
	for _, stmt := range indexStatements(s.keyspace) {
		if err := createIndex(ctx, cluster, cfg, stmt); err != nil {
			return err
		}
	}
	log.Info("setup complete", "bucket", cfg.Bucket, "metadata_bucket", cfg.MetadataBucket)
	return nil
}

// createIndex retries while the query service does not know a collection
// created a moment ago.
func createIndex(ctx context.Context, cluster *gocb.Cluster, cfg Config, stmt string) error {
	deadline := time.Now().Add(6 * cfg.Timeout)
	for {
		res, err := cluster.Query(stmt, &gocb.QueryOptions{Context: ctx})
		if err == nil {
			return res.Close()
		}
		if errors.Is(err, gocb.ErrIndexExists) {
			return nil
		}
		notYet := errors.Is(err, gocb.ErrCollectionNotFound) || errors.Is(err, gocb.ErrIndexFailure) ||
			strings.Contains(strings.ToLower(err.Error()), "keyspace not found")
		if !notYet || time.Now().After(deadline) {
			return errRights(cfg, "create index ("+stmt+")", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
