// Package loopback tells a host name or address of this machine's loopback
// from one other machines reach: where a secret may go unencrypted, and
// where it may not.
package loopback

import (
	"net/netip"
	"strings"
)

// Host says whether host (a name or an address, bracketed or not, without
// a port) is localhost or a loopback address (127.0.0.0/8, ::1, and
// ::ffff:127.0.0.1), whatever its case or a final dot.
func Host(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), "."))
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
