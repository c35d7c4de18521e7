package metrics

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/ordermail/ordermail/internal/loopback"
)

// HostCheck guards an endpoint that answers anyone who reaches it (the
// metrics, the console's pages) against DNS rebinding. While listen, the
// address the server was told to listen on, is a loopback one, a request
// is served only when its Host is a loopback IP (127.0.0.0/8, ::1),
// localhost or listen's own host, with or without a port; others are
// answered 421 Misdirected Request. A web page in the operator's browser
// that points its own name at 127.0.0.1 can reach the endpoint, but its
// requests carry its name in Host.
//
// An address other machines can reach (0.0.0.0:9464, :9464, a host name)
// is the operator's choice: any Host is served there, as Prometheus and
// browsers name the machine as they know it, unless allowed names the
// hosts to serve (loopback names are always served): a container listens
// on every address of its own, published on the host's loopback only, and
// is reached as localhost. bound, when known, is the address actually
// listened on, and decides instead of listen: a host name that resolved to
// a loopback address counts as loopback.
func HostCheck(listen string, allowed []string, bound net.Addr, next http.Handler) http.Handler {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = listen
	}
	host = hostName(host)
	if !listensOnLoopback(host, bound) && len(allowed) == 0 {
		return next
	}
	names := map[string]bool{host: true}
	for _, a := range allowed {
		names[hostName(a)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// No Host at all is no browser's request (HTTP/1.0 by hand).
		if h := requestHost(r.Host); h == "" || names[h] || loopback.Host(h) {
			next.ServeHTTP(w, r)
			return
		}
		http.Error(w, "misdirected request: this endpoint answers requests to 127.0.0.1, [::1], localhost"+
			" or the names --allowed-hosts gives only", http.StatusMisdirectedRequest)
	})
}

// CheckAllowedHosts says what is wrong with a list of allowed host names:
// a name with a port, a scheme or a path is none.
func CheckAllowedHosts(allowed []string) error {
	for _, a := range allowed {
		if a == "" || strings.ContainsAny(a, ":/ ") && !isIPv6(a) {
			return fmt.Errorf("allowed-hosts: %q is not a host name or an IP address (give no port, scheme or path)", a)
		}
	}
	return nil
}

func isIPv6(s string) bool {
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	return err == nil && ip.Is6()
}

func listensOnLoopback(host string, bound net.Addr) bool {
	if a, ok := bound.(*net.TCPAddr); ok && a != nil {
		return a.IP.IsLoopback()
	}
	return loopback.Host(host)
}

// requestHost is the host of a request's Host header, without its port.
func requestHost(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return hostName(h)
	}
	return hostName(hostport) // no port: "localhost", "[::1]", "::1"
}

// hostName is host as compared: without brackets, its final dot or case.
func hostName(host string) string {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// LoopbackHost says whether a request's Host header names this machine's
// loopback (localhost, 127.0.0.0/8, ::1), with or without a port.
func LoopbackHost(hostport string) bool { return loopback.Host(requestHost(hostport)) }

// ListensOnLoopback says whether listen, the address a server was told to
// listen on, is a loopback one; bound, when known, decides instead.
func ListensOnLoopback(listen string, bound net.Addr) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = listen
	}
	return listensOnLoopback(hostName(host), bound)
}
