package cbtest

import (
	"crypto/tls"
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

// certClient connects to s over TLS with the client certificate of pki
// and no password, as gocb's CertificateAuthenticator does.
func certClient(t *testing.T, s *Server, pki *testpki.PKI) *gocb.Cluster {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pki.CAPEM))
	cert := pki.ClientTLS(true).Certificates[0]
	c, err := gocb.Connect(s.ConnStr(), gocb.ClusterOptions{
		Authenticator:  gocb.CertificateAuthenticator{ClientCertificate: &cert},
		SecurityConfig: gocb.SecurityConfig{TLSRootCAs: pool},
		TimeoutsConfig: gocb.TimeoutsConfig{
			ConnectTimeout: 10 * time.Second, KVTimeout: 5 * time.Second, ManagementTimeout: 10 * time.Second,
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(nil) })
	return c
}

// Client certificate authentication: a certificate whose subject names
// the user logs in KV (no SASL) and HTTP (no basic auth); "mandatory"
// refuses a password alone, "enable" takes either; a certificate naming
// nobody the cluster knows is refused.
func TestClientCertificateLogsIn(t *testing.T) {
	pki, err := testpki.New()
	require.NoError(t, err)
	const user = "ordermail test client" // the subject of testpki's client certificate
	works := func(t *testing.T, c *gocb.Cluster) {
		t.Helper()
		coll := readyBucket(t, c, "orders").DefaultCollection()
		_, err := coll.Upsert("k", map[string]int{"n": 1}, nil)
		require.NoError(t, err)
		_, err = c.Buckets().GetAllBuckets(nil)
		require.NoError(t, err, "the management service, with the certificate")
	}
	t.Run("mandatory", func(t *testing.T) {
		s := Start(t, Options{VBuckets: 16, Username: user, TLS: pki.ServerTLS(true)})
		works(t, certClient(t, s, pki))
		pw := tlsClient(t, s, s.ConnStr(), pki)
		assert.Error(t, pw.Bucket("orders").WaitUntilReady(time.Second, nil), "a password without a certificate")
	})
	t.Run("enable", func(t *testing.T) {
		cfg := pki.ServerTLS(true)
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		s := Start(t, Options{VBuckets: 16, Username: user, TLS: cfg})
		works(t, certClient(t, s, pki))
		works(t, tlsClient(t, s, s.ConnStr(), pki))
	})
	t.Run("a certificate of nobody", func(t *testing.T) {
		s := Start(t, Options{VBuckets: 16, Username: "someone else", TLS: pki.ServerTLS(true)})
		c := certClient(t, s, pki)
		assert.Error(t, c.Bucket("orders").WaitUntilReady(time.Second, nil))
	})
}
