package console

import (
	"net/http"
	"testing"

	lru "github.com/hashicorp/golang-lru/v2"
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
