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
		listen string
		bound  net.Addr
		give   string // Host
		want   int
	}{
		{"127.0.0.1:9464", nil, "evil.example", refused},
		{"127.0.0.1:9464", nil, "evil.example:9464", refused},
		{"127.0.0.1:9464", nil, "localhost.evil.example", refused},
		{"127.0.0.1:9464", nil, "127.0.0.1.evil.example:9464", refused},
		{"127.0.0.1:9464", nil, "2130706433:9464", refused},
		{"127.0.0.1:9464", nil, "0.0.0.0:9464", refused},
		{"127.0.0.1:9464", nil, "[fe80::1]:9464", refused},
		{"127.0.0.1:9464", nil, "127.0.0.1:9464", http.StatusOK},
		{"127.0.0.1:9464", nil, "127.0.0.1", http.StatusOK},
		{"127.0.0.1:9464", nil, "127.9.8.7:9464", http.StatusOK},
		{"127.0.0.1:9464", nil, "localhost:9464", http.StatusOK},
		{"127.0.0.1:9464", nil, "LOCALHOST.", http.StatusOK},
		{"127.0.0.1:9464", nil, "[::1]:9464", http.StatusOK},
		{"127.0.0.1:9464", nil, "[::1]", http.StatusOK},
		{"127.0.0.1:9464", nil, "", http.StatusOK}, // no browser sends none
		{"[::1]:9464", nil, "evil.example", refused},
		{"[::1]:9464", nil, "[::1]:9464", http.StatusOK},
		{"localhost:9464", nil, "evil.example:9464", refused},
		{"localhost:9464", nil, "localhost:9464", http.StatusOK},
		{"myhost:9464", myhost, "evil.example:9464", refused},
		{"myhost:9464", myhost, "myhost:9464", http.StatusOK},
		{"myhost:9464", myhost, "MyHost", http.StatusOK},
		{"myhost:9464", myhost, "127.0.0.1:9464", http.StatusOK},
		// Reachable from other machines: the operator's choice.
		{"0.0.0.0:9464", nil, "evil.example", http.StatusOK},
		{"0.0.0.0:9464", anyIP, "evil.example", http.StatusOK},
		{":9464", nil, "evil.example", http.StatusOK},
		{"[::]:9464", nil, "evil.example", http.StatusOK},
		{"192.0.2.10:9464", nil, "evil.example", http.StatusOK},
		{"metrics.internal:9464", nil, "evil.example", http.StatusOK},
	}
	for _, tt := range tests {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Host = tt.give
		rec := httptest.NewRecorder()
		metrics.HostCheck(tt.listen, tt.bound, ok).ServeHTTP(rec, req)
		assert.Equal(t, tt.want, rec.Code, "listen %s (bound %v), Host %q", tt.listen, tt.bound, tt.give)
	}
}
