package cbtest

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tlsClient connects to s with couchbases:// and trusts the CA of pki.
func tlsClient(t *testing.T, s *Server, connStr string, pki *testpki.PKI) *gocb.Cluster {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pki.CAPEM))
	c, err := gocb.Connect(connStr, gocb.ClusterOptions{
		Authenticator:  gocb.PasswordAuthenticator{Username: s.Username(), Password: s.Password()},
		SecurityConfig: gocb.SecurityConfig{TLSRootCAs: pool},
		TimeoutsConfig: gocb.TimeoutsConfig{
			ConnectTimeout: 10 * time.Second, KVTimeout: 5 * time.Second, ManagementTimeout: 10 * time.Second,
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(nil) })
	return c
}

// With Options.TLS every port is TLS: gocb, told couchbases:// and the
// CA, reaches both nodes' KV and the management service; the same port
// named couchbase:// or a client trusting another CA gets nowhere.
func TestTLSOnEveryPort(t *testing.T) {
	pki, err := testpki.New()
	require.NoError(t, err)
	s := Start(t, Options{Nodes: 2, VBuckets: 16, TLS: pki.ServerTLS(false)})
	require.True(t, strings.HasPrefix(s.ConnStr(), "couchbases://"), s.ConnStr())
	require.True(t, strings.HasPrefix(s.MgmtURL(0), "https://"), s.MgmtURL(0))

	c := tlsClient(t, s, s.ConnStr(), pki)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	nodes := map[int]bool{}
	for i := range 16 { // over every vBucket: both nodes serve some
		key := fmt.Sprintf("order_%02d", i)
		_, err := coll.Upsert(key, map[string]int{"n": i}, nil)
		require.NoError(t, err, key)
		got, err := coll.Get(key, nil)
		require.NoError(t, err, key)
		var doc map[string]int
		require.NoError(t, got.Content(&doc))
		assert.Equal(t, i, doc["n"])
		nodes[s.vbNode(vbOf([]byte(key), s.NumVBuckets()))] = true
	}
	assert.Len(t, nodes, 2, "both nodes answered over TLS")
	buckets, err := c.Buckets().GetAllBuckets(nil)
	require.NoError(t, err, "the management service over https")
	assert.Contains(t, buckets, "orders")

	plain, err := gocb.Connect(strings.Replace(s.ConnStr(), "couchbases://", "couchbase://", 1), gocb.ClusterOptions{
		Authenticator: gocb.PasswordAuthenticator{Username: s.Username(), Password: s.Password()}})
	require.NoError(t, err)
	defer plain.Close(nil)
	assert.Error(t, plain.Bucket("orders").WaitUntilReady(time.Second, nil), "plain memcached on a TLS port")

	other, err := testpki.New()
	require.NoError(t, err)
	stranger := tlsClient(t, s, s.ConnStr(), other)
	assert.Error(t, stranger.Bucket("orders").WaitUntilReady(time.Second, nil), "a certificate of a CA not trusted")
}
