package console

import (
	"fmt"
	"net/http"
	"testing"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
)

// Login attempts are limited by address, an IPv6 address by its /64 (one
// machine has the whole of it: an address each try gave 50 tries where 5
// were allowed), and over all addresses.
func TestLoginLimitsByAddressAndOverall(t *testing.T) {
	logins, err := lru.New[string, *rate.Limiter](loginAddresses)
	require.NoError(t, err)
	c := &Console{logins: logins, allLogins: rate.NewLimiter(10, 100)}
	from := func(addr string) *http.Request { return &http.Request{RemoteAddr: addr} }

	assert.Same(t, c.loginLimit(from("[2001:db8::1]:4000")), c.loginLimit(from("[2001:db8::ffff:2]:4001")), "one /64")
	assert.NotSame(t, c.loginLimit(from("[2001:db8::1]:4000")), c.loginLimit(from("[2001:db8:0:1::1]:4000")), "another /64")
	assert.Same(t, c.loginLimit(from("192.0.2.1:1")), c.loginLimit(from("192.0.2.1:2")), "an IPv4 address, whatever its port")
	assert.NotSame(t, c.loginLimit(from("192.0.2.1:1")), c.loginLimit(from("192.0.2.2:1")))
	assert.Same(t, c.loginLimit(from("[::ffff:192.0.2.1]:1")), c.loginLimit(from("[::ffff:192.0.2.1]:2")))
	assert.NotSame(t, c.loginLimit(from("[::ffff:192.0.2.1]:1")), c.loginLimit(from("[::ffff:192.0.2.9]:1")), "IPv4 in IPv6: by address")

	// Over all addresses: five tries each from 64 /64s, against an
	// overall allowance of 100 (no refill here: the count is exact).
	c.allLogins = rate.NewLimiter(0, 100)
	allowed := 0
	for i := range 64 {
		for j := range 5 {
			if c.loginsAllowed(from(fmt.Sprintf("[2001:db8:%x::%x]:1", i+1, j+1))) {
				allowed++
			}
		}
	}
	assert.Equal(t, 100, allowed)
	assert.False(t, c.loginsAllowed(from("[2001:db8:ffff::1]:1")), "a new address too, once the overall allowance is spent")
}
