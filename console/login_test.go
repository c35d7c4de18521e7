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
