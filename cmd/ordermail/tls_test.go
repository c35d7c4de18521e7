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
// queries, the members' heartbeats), logged in with a password or, on a
// cluster that requires one, with a client certificate (--cb-cert-file
// and --cb-key-file, no user, no password).
func TestSetupAndRunOverTLS(t *testing.T) {
	for _, clientCert := range []bool{false, true} {
		t.Run(map[bool]string{false: "password", true: "client certificate"}[clientCert], func(t *testing.T) {
			pki, err := testpki.New()
			require.NoError(t, err)
			files, err := pki.WriteFiles(t.TempDir())
			require.NoError(t, err)
			opts := cbtest.Options{VBuckets: 64, TLS: pki.ServerTLS(clientCert), Buckets: []cbtest.BucketSpec{}}
			cfg := couchbase.Config{CACertFile: files.CA, Timeout: 10 * time.Second, CountsTTL: -1}
			if clientCert {
				opts.Username = "ordermail test client" // the subject of its certificate
				cfg.CertFile, cfg.KeyFile = files.ClientCert, files.ClientKey
			}
			srv := cbtest.Start(t, opts)
			cb := []string{"--cb-ca-cert", files.CA, "--cb-timeout", "10s"}
			if clientCert {
				cb = append(cb, "--cb-cert-file", files.ClientCert, "--cb-key-file", files.ClientKey)
			} else {
				cfg.Username, cfg.Password = srv.Username(), srv.Password()
				cb = append(cb, "--cb-username", srv.Username(), "--cb-password", srv.Password())
			}

			out, _, err := cli(t, append([]string{"setup", "--store", srv.ConnStr()}, cb...)...)
			require.NoError(t, err, out)

			st := openStoreConfig(t, app.StoreConfig{URL: srv.ConnStr(), Couchbase: cfg})
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
		})
	}
}
