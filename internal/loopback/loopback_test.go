package loopback_test

import (
	"testing"

	"github.com/ordermail/ordermail/internal/loopback"
	"github.com/stretchr/testify/assert"
)

func TestHost(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{
		"localhost": true, "LOCALHOST.": true, "127.0.0.1": true, "127.9.9.9": true, "::1": true, "[::1]": true,
		"::ffff:127.0.0.1": true, "db1.example.com": false, "10.0.0.5": false, "": false, "localhost.example.com": false,
		"2001:db8::1": false,
	} {
		assert.Equal(t, want, loopback.Host(host), host)
	}
}
