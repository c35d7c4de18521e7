package console

import (
	"crypto/sha256"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/ordermail/ordermail/internal/watchfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
)

// Login attempts are limited by address, an IPv6 address by its /64 (one
// machine has the whole of it: an address each try gave 50 tries where 5
// were allowed). No limit over all addresses: a few addresses would keep
// it spent, and the operator locked out.
func TestLoginLimitsByAddress(t *testing.T) {
	logins, err := lru.New[string, *rate.Limiter](loginAddresses)
	require.NoError(t, err)
	c := &Console{logins: logins}
	from := func(addr string) *http.Request { return &http.Request{RemoteAddr: addr} }

	assert.Same(t, c.loginLimit(from("[2001:db8::1]:4000")), c.loginLimit(from("[2001:db8::ffff:2]:4001")), "one /64")
	assert.NotSame(t, c.loginLimit(from("[2001:db8::1]:4000")), c.loginLimit(from("[2001:db8:0:1::1]:4000")), "another /64")
	assert.Same(t, c.loginLimit(from("192.0.2.1:1")), c.loginLimit(from("192.0.2.1:2")), "an IPv4 address, whatever its port")
	assert.NotSame(t, c.loginLimit(from("192.0.2.1:1")), c.loginLimit(from("192.0.2.2:1")))
	assert.Same(t, c.loginLimit(from("[::ffff:192.0.2.1]:1")), c.loginLimit(from("[::ffff:192.0.2.1]:2")))
	assert.NotSame(t, c.loginLimit(from("[::ffff:192.0.2.1]:1")), c.loginLimit(from("[::ffff:192.0.2.9]:1")), "IPv4 in IPv6: by address")
}

// Behind a proxy every login came from the proxy's address: one limit for
// every operator and anyone trying tokens, who kept it spent at one try a
// second. Behind a trusted proxy (--admin-trusted-proxies) the limit is
// the client's, as X-Forwarded-For names it past the trusted proxies; the
// addresses a client writes into it itself are not taken, nor the header
// of a connection that is no trusted proxy.
func TestLoginLimitsBehindATrustedProxyByClient(t *testing.T) {
	proxies, err := ParseTrustedProxies("10.0.0.0/8, 192.0.2.7")
	require.NoError(t, err)
	build := func(t *testing.T, cfg Config) *Console {
		c, err := New(cfg, Deps{}, slog.New(slog.DiscardHandler), nil)
		require.NoError(t, err)
		return c
	}
	via := func(remote, forwarded string) *http.Request {
		return &http.Request{RemoteAddr: remote, Header: http.Header{"X-Forwarded-For": {forwarded}}}
	}

	c := build(t, Config{TrustedProxies: proxies})
	assert.NotSame(t, c.loginLimit(via("10.1.2.3:5000", "198.51.100.1")), c.loginLimit(via("10.1.2.3:5001", "198.51.100.2")), "two clients of one proxy")
	assert.Same(t, c.loginLimit(via("10.1.2.3:5000", "198.51.100.1")), c.loginLimit(via("192.0.2.7:80", "198.51.100.1")), "one client by two proxies")
	assert.Same(t, c.loginLimit(via("10.1.2.3:5000", "198.51.100.1")), c.loginLimit(via("10.1.2.3:5000", "203.0.113.9, 198.51.100.1")),
		"an address the client wrote itself, left of what the proxy added, is not taken")
	assert.Same(t, c.loginLimit(via("10.1.2.3:5000", "198.51.100.1")), c.loginLimit(via("10.9.9.9:1", "198.51.100.1, 10.1.2.3")),
		"past a chain of trusted proxies")
	assert.Same(t, c.loginLimit(via("198.51.100.9:1", "198.51.100.1")), c.loginLimit(via("198.51.100.9:2", "198.51.100.2")),
		"a connection from no trusted proxy is limited by its own address, whatever it says")
	assert.Same(t, c.loginLimit(via("10.1.2.3:5000", "")), c.loginLimit(&http.Request{RemoteAddr: "10.1.2.3:1"}),
		"a trusted proxy that names no client is the client")
	assert.Equal(t, "198.51.100.1", c.client(via("[::ffff:10.1.2.3]:5000", "198.51.100.1")), "a trusted proxy's IPv4 address in IPv6 form")

	c = build(t, Config{})
	assert.Same(t, c.loginLimit(via("10.1.2.3:5000", "198.51.100.1")), c.loginLimit(via("10.1.2.3:5000", "198.51.100.2")),
		"no proxy trusted: by the connection's address")
}

func TestParseTrustedProxies(t *testing.T) {
	got, err := ParseTrustedProxies(" 10.0.0.0/8,192.0.2.7 , ::1,2001:db8::/32,,10.1.2.3/8")
	require.NoError(t, err)
	want := []string{"10.0.0.0/8", "192.0.2.7/32", "::1/128", "2001:db8::/32", "10.0.0.0/8"}
	var names []string
	for _, p := range got {
		names = append(names, p.String())
	}
	assert.Equal(t, want, names)
	_, err = ParseTrustedProxies("10.0.0.0/8,proxy.internal")
	assert.EqualError(t, err, `"proxy.internal" is neither an IP address nor a CIDR range (e.g. 10.0.0.0/8)`)
}

// A login that compared its token just before the file changed starts no
// session after the change has ended the others: it would outlive the
// rotation.
func TestALoginRacingARotationStartsNoSession(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin-token")
	require.NoError(t, os.WriteFile(path, []byte("the-old-token-0123456789\n"), 0o600))
	now := time.Now()
	clock := func() time.Time { return now }
	c := &Console{log: slog.New(slog.DiscardHandler), now: clock, sessions: newSessions(time.Hour, clock),
		tokenFile: watchfile.New("admin-token-file", path)}
	h := sha256.Sum256([]byte("the-old-token-0123456789"))
	c.tokenHash.Store(&h)
	_, c.tokenAt, _ = c.tokenFile.Read(now)

	want := c.token() // the login's compare, with the old token
	require.NotNil(t, want)
	require.NoError(t, os.WriteFile(path, []byte("the-new-token-after-a-leak\n"), 0o600))
	now = now.Add(2 * watchfile.ReloadEvery)
	require.NotEqual(t, want, c.token(), "another request sees the new token, and ends every session")
	_, ok := c.startSession(want)
	assert.False(t, ok, "the login with the old token starts no session after that")
	_, ok = c.startSession(c.token())
	assert.True(t, ok)
}
