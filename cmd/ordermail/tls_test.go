package main

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store/couchbase"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// couchbases:// from the command line, on a cluster with no plain port:
// `setup --cb-ca-cert` makes the buckets, collections and indexes, and
// `run --cb-ca-cert` confirms every paid order over TLS (KV, the feed,
// queries, the members' heartbeats).
func TestSetupAndRunOverTLS(t *testing.T) {
	pki, err := testpki.New()
	require.NoError(t, err)
	files, err := pki.WriteFiles(t.TempDir())
	require.NoError(t, err)
	srv := cbtest.Start(t, cbtest.Options{VBuckets: 64, TLS: pki.ServerTLS(false), Buckets: []cbtest.BucketSpec{}})
	cb := []string{"--cb-username", srv.Username(), "--cb-password", srv.Password(), "--cb-ca-cert", files.CA,
		"--cb-timeout", "10s"}

	out, _, err := cli(t, append([]string{"setup", "--store", srv.ConnStr()}, cb...)...)
	require.NoError(t, err, out)

	st := openStoreConfig(t, app.StoreConfig{URL: srv.ConnStr(), Couchbase: couchbase.Config{
		Username: srv.Username(), Password: srv.Password(), CACertFile: files.CA, Timeout: 10 * time.Second, CountsTTL: -1}})
	_, err = st.Upsert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	const orders = 40
	placeOrders(t, st, fixtures.Generate(orders, 7))
	mock := startMock(t, "--fail-rate", "0.2", "--fail-status", "503", "--seed", "5")
	p := startProc(t, runArgs(srv.ConnStr(), mock, cb...)...)
	require.Eventually(t, func() bool { return settled(t, st, orders) }, 2*time.Minute, 50*time.Millisecond,
		"not settled; logs:\n%v", later.Value(func() any { return p.logs.String() }))
	err, _ = p.stop(t, syscall.SIGTERM)
	require.NoError(t, err)
	assert.Equal(t, orders, mockStats(t, mock).Deliveries, "one delivery an order")
}
