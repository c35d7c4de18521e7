package cbtest

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// serverLog keeps the lines a Server's Logf writes, so that a test can
// tell why a client got nowhere, not only that it did.
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *serverLog) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// saw waits for a line holding part.
func (l *serverLog) saw(t *testing.T, part, why string) {
	t.Helper()
	has := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, line := range l.lines {
			if strings.Contains(line, part) {
				return true
			}
		}
		return false
	}
	assert.Eventually(t, has, 30*time.Second, 10*time.Millisecond, "%s: the server never logged %q; it logged %v", why, part,
		later.Value(func() any { l.mu.Lock(); defer l.mu.Unlock(); return l.lines }))
}

// tlsClient connects to connStr with couchbases://, trusting the CA of
// pki, logged in as s's user with its password.
func tlsClient(t *testing.T, s *Server, connStr string, pki *testpki.PKI) *gocb.Cluster {
	t.Helper()
	return tlsConnect(t, connStr, pki, gocb.PasswordAuthenticator{Username: s.Username(), Password: s.Password()})
}

// tlsConnect connects to connStr trusting the CA of pki, logged in by auth.
func tlsConnect(t *testing.T, connStr string, pki *testpki.PKI, auth gocb.Authenticator) *gocb.Cluster {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pki.CAPEM))
	c, err := gocb.Connect(connStr, gocb.ClusterOptions{
		Authenticator:  auth,
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
	logs := &serverLog{}
	s := Start(t, Options{Nodes: 2, VBuckets: 16, TLS: pki.ServerTLS(false), Logf: logs.logf})
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
	logs.saw(t, "TLS handshake: tls: unsupported SSLv2 handshake received", "plain memcached on a TLS port (its request magic 0x80 reads as SSLv2)")

	other, err := testpki.New()
	require.NoError(t, err)
	stranger := tlsClient(t, s, s.ConnStr(), other)
	assert.Error(t, stranger.Bucket("orders").WaitUntilReady(time.Second, nil), "a certificate of a CA not trusted")
	logs.saw(t, "remote error: tls: bad certificate", "the client refused the server's certificate")
}

// certClient connects to s over TLS with the client certificate of pki
// and no password, as gocb's CertificateAuthenticator does.
func certClient(t *testing.T, s *Server, pki *testpki.PKI) *gocb.Cluster {
	t.Helper()
	cert := pki.ClientTLS(true).Certificates[0]
	return tlsConnect(t, s.ConnStr(), pki, gocb.CertificateAuthenticator{ClientCertificate: &cert})
}

// Client certificate authentication: a certificate whose subject names
// the user logs in KV (no SASL) and HTTP (the certificate before any basic auth); "mandatory"
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
		logs := &serverLog{}
		s := Start(t, Options{VBuckets: 16, Username: user, TLS: pki.ServerTLS(true), Logf: logs.logf})
		works(t, certClient(t, s, pki))
		pw := tlsClient(t, s, s.ConnStr(), pki)
		assert.Error(t, pw.Bucket("orders").WaitUntilReady(time.Second, nil), "a password without a certificate")
		logs.saw(t, "client didn't provide a certificate", "a password without a certificate")
	})
	t.Run("enable", func(t *testing.T) {
		cfg := pki.ServerTLS(true)
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		s := Start(t, Options{VBuckets: 16, Username: user, TLS: cfg})
		works(t, certClient(t, s, pki))
		works(t, tlsClient(t, s, s.ConnStr(), pki))
	})
	t.Run("a certificate of nobody", func(t *testing.T) {
		logs := &serverLog{}
		s := Start(t, Options{VBuckets: 16, Username: "someone else", TLS: pki.ServerTLS(true), Logf: logs.logf})
		c := certClient(t, s, pki)
		assert.Error(t, c.Bucket("orders").WaitUntilReady(time.Second, nil))
		logs.saw(t, `client certificate of "ordermail test client": no such user`, "a certificate of nobody")
	})
}

// A connection logged in by its certificate answers SASL with
// NOT_SUPPORTED (SDK-RFC 0036: the login is done), and serves requests
// with none: gocbcore never sends SASL then, so the bytes go by hand.
func TestACertificateLoginRefusesSASL(t *testing.T) {
	pki, err := testpki.New()
	require.NoError(t, err)
	s := Start(t, Options{VBuckets: 16, Username: "ordermail test client", TLS: pki.ServerTLS(true)})
	conn, err := tls.Dial("tcp", s.KVAddr(0), pki.ClientTLS(true))
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
	br := bufio.NewReader(conn)
	ask := func(opcode byte, key string) *packet {
		t.Helper()
		req := make([]byte, 24, 24+len(key))
		req[0], req[1] = magicReq, opcode
		binary.BigEndian.PutUint16(req[2:], uint16(len(key)))
		binary.BigEndian.PutUint32(req[8:], uint32(len(key)))
		_, err := conn.Write(append(req, key...))
		require.NoError(t, err)
		p, err := readPacket(br)
		require.NoError(t, err)
		return p
	}
	for _, op := range []byte{opSASLListMechs, opSASLAuth} {
		assert.Equal(t, uint16(statusNotSupported), ask(op, "PLAIN").status, "opcode 0x%02x", op)
	}
	assert.Equal(t, uint16(statusSuccess), ask(opSelectBucket, "orders").status, "logged in: a bucket is selected")
}
