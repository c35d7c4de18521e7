package metrics_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/ordermail/ordermail/metrics"
)

func TestHostCheck(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	const refused = http.StatusMisdirectedRequest
	myhost := &net.TCPAddr{IP: net.IPv4(127, 0, 1, 1), Port: 9464} // Debian's /etc/hosts
	anyIP := &net.TCPAddr{IP: net.IPv4zero, Port: 9464}
	tests := []struct {
		listen  string
		allowed []string
		bound   net.Addr
		give    string // Host
		want    int
	}{
		{"127.0.0.1:9464", nil, nil, "evil.example", refused},
		{"127.0.0.1:9464", nil, nil, "evil.example:9464", refused},
		{"127.0.0.1:9464", nil, nil, "localhost.evil.example", refused},
		{"127.0.0.1:9464", nil, nil, "127.0.0.1.evil.example:9464", refused},
		{"127.0.0.1:9464", nil, nil, "2130706433:9464", refused},
		{"127.0.0.1:9464", nil, nil, "0.0.0.0:9464", refused},
		{"127.0.0.1:9464", nil, nil, "[fe80::1]:9464", refused},
		{"127.0.0.1:9464", nil, nil, "127.0.0.1:9464", http.StatusOK},
		{"127.0.0.1:9464", nil, nil, "127.0.0.1", http.StatusOK},
		{"127.0.0.1:9464", nil, nil, "127.9.8.7:9464", http.StatusOK},
		{"127.0.0.1:9464", nil, nil, "localhost:9464", http.StatusOK},
		{"127.0.0.1:9464", nil, nil, "LOCALHOST.", http.StatusOK},
		{"127.0.0.1:9464", nil, nil, "[::1]:9464", http.StatusOK},
		{"127.0.0.1:9464", nil, nil, "[::1]", http.StatusOK},
		{"127.0.0.1:9464", nil, nil, "", http.StatusOK}, // no browser sends none
		{"[::1]:9464", nil, nil, "evil.example", refused},
		{"[::1]:9464", nil, nil, "[::1]:9464", http.StatusOK},
		{"localhost:9464", nil, nil, "evil.example:9464", refused},
		{"localhost:9464", nil, nil, "localhost:9464", http.StatusOK},
		{"myhost:9464", nil, myhost, "evil.example:9464", refused},
		{"myhost:9464", nil, myhost, "myhost:9464", http.StatusOK},
		{"myhost:9464", nil, myhost, "MyHost", http.StatusOK},
		{"myhost:9464", nil, myhost, "127.0.0.1:9464", http.StatusOK},
		// Reachable from other machines: the operator's choice.
		{"0.0.0.0:9464", nil, nil, "evil.example", http.StatusOK},
		{"0.0.0.0:9464", nil, anyIP, "evil.example", http.StatusOK},
		{":9464", nil, nil, "evil.example", http.StatusOK},
		{"[::]:9464", nil, nil, "evil.example", http.StatusOK},
		{"192.0.2.10:9464", nil, nil, "evil.example", http.StatusOK},
		{"metrics.internal:9464", nil, nil, "evil.example", http.StatusOK},
		// Unless the hosts to serve are named (a container's every
		// address, published on the host's loopback).
		{"0.0.0.0:9464", []string{"localhost"}, anyIP, "evil.example:9464", refused},
		{"0.0.0.0:9464", []string{"localhost"}, anyIP, "localhost:9464", http.StatusOK},
		{"0.0.0.0:9464", []string{"localhost"}, anyIP, "127.0.0.1:9464", http.StatusOK},
		{":9464", []string{"ops.example.com", "[2001:db8::1]"}, nil, "OPS.example.com.:9464", http.StatusOK},
		{":9464", []string{"ops.example.com", "[2001:db8::1]"}, nil, "[2001:db8::1]:9464", http.StatusOK},
		{":9464", []string{"ops.example.com"}, nil, "ops.example.com.evil.example", refused},
		{"127.0.0.1:9464", []string{"ops.example.com"}, nil, "ops.example.com", http.StatusOK},
	}
	for _, tt := range tests {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Host = tt.give
		rec := httptest.NewRecorder()
		metrics.HostCheck(tt.listen, tt.allowed, tt.bound, ok).ServeHTTP(rec, req)
		assert.Equal(t, tt.want, rec.Code, "listen %s (allowed %q, bound %v), Host %q", tt.listen, tt.allowed, tt.bound, tt.give)
	}
}

func TestCheckAllowedHosts(t *testing.T) {
	t.Parallel()
	assert.NoError(t, metrics.CheckAllowedHosts([]string{"localhost", "ops.example.com", "192.0.2.1", "::1", "[2001:db8::1]"}))
	for _, bad := range []string{"localhost:9464", "http://ops.example.com", "ops.example.com/x", ""} {
		assert.ErrorContains(t, metrics.CheckAllowedHosts([]string{bad}), "allowed-hosts: ", bad)
	}
}
