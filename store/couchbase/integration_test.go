package couchbase

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/storetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The integration tests run against the cluster ORDERMAIL_TEST_COUCHBASE
// names, and skip without one.

func testCluster(t *testing.T) Config {
	t.Helper()
	conn := os.Getenv("ORDERMAIL_TEST_COUCHBASE")
	if conn == "" {
		t.Skip("no Couchbase cluster: `docker compose up -d couchbase couchbase-init`, then " +
			"ORDERMAIL_TEST_COUCHBASE=couchbase://localhost go test ./store/couchbase/ " +
			"(ORDERMAIL_TEST_COUCHBASE_USERNAME and _PASSWORD default to Administrator and password)")
	}
	cfg := Config{ConnStr: conn, Username: "Administrator", Password: "password"}
	if v := os.Getenv("ORDERMAIL_TEST_COUCHBASE_USERNAME"); v != "" {
		cfg.Username = v
	}
	if v := os.Getenv("ORDERMAIL_TEST_COUCHBASE_PASSWORD"); v != "" {
		cfg.Password = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, Setup(ctx, cfg, SetupOptions{}, quietLog), "setup")
	return cfg
}

func TestIntegrationContract(t *testing.T) {
	cfg := testCluster(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(context.Background(), cfg, quietLog)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestIntegrationSetupTwice(t *testing.T) {
	cfg := testCluster(t) // once
	require.NoError(t, Setup(context.Background(), cfg, SetupOptions{}, quietLog), "and again")
}

func TestIntegrationSweepUsesItsIndexes(t *testing.T) {
	cfg := testCluster(t)
	s, err := Open(context.Background(), cfg, quietLog)
	require.NoError(t, err)
	defer s.Close()
	res, err := s.cluster.Query("EXPLAIN "+sweepStatement(s.keyspace("retry")), &gocb.QueryOptions{
		NamedParameters: sweepParams(time.Now(), 15*time.Second, 1000),
	})
	require.NoError(t, err)
	var plan json.RawMessage
	require.NoError(t, res.One(&plan))
	assert.Contains(t, string(plan), "ix_retry_next")
	assert.Contains(t, string(plan), "ix_retry_ts")
	assert.NotContains(t, string(plan), "PrimaryScan", "the sweep does not read every retry document")
}

func TestIntegrationMissingCollectionIsAClearError(t *testing.T) {
	cfg := testCluster(t)
	cfg.Scope = "no_such_scope"
	_, err := Open(context.Background(), cfg, quietLog)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lacks collections")
	assert.Contains(t, err.Error(), "run ordermail setup")
}

func TestIntegrationWrongPasswordIsAClearError(t *testing.T) {
	cfg := testCluster(t)
	cfg.Password = "definitely-wrong"
	cfg.Timeout = 2 * time.Second
	_, err := Open(context.Background(), cfg, quietLog)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "definitely-wrong", "the password is never in a message")
}
