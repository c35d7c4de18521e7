package console

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"
)

// Config of the console.
type Config struct {
	// Listen is the console's address, e.g. 127.0.0.1:9465; empty: no
	// console. An address other machines can reach is logged as a warning;
	// on a loopback one, only requests to a loopback name are answered
	// (metrics.HostCheck).
	Listen string
	// AllowedHosts are the host names requests may name besides loopback
	// ones (metrics.HostCheck); empty: any, unless Listen is a loopback
	// address.
	AllowedHosts []string
	// TokenFile holds the admin token (white space around it trimmed); it
	// wins over Token. Read again when it changes: a token changed ends
	// every session.
	TokenFile string
	// Token is the admin token itself, as the environment variable
	// ORDERMAIL_ADMIN_TOKEN gives it: never a flag, never logged. With
	// neither, the console is read-only.
	Token Secret
	// SessionTTL is how long a login lasts. Default 8h.
	SessionTTL time.Duration
	// PageSize is how many retries or dead letters a page lists. Default 50.
	PageSize int
	// ScanBudget is how many documents a page examines at most, listed or
	// not, before it offers to go on. Default 5000.
	ScanBudget int
	// TrustedProxies are the proxies (addresses or CIDR ranges) in front
	// of the console whose X-Forwarded-For says who the client is: the
	// login limit then counts by that client, not by the proxy, which
	// would share one limit among every operator and anyone who tries
	// tokens. Empty: by the connection's address alone.
	TrustedProxies []netip.Prefix
}

// ParseTrustedProxies reads a comma-separated list of addresses and CIDR
// ranges (an address is its own range), naming the item it cannot read.
func ParseTrustedProxies(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range strings.Split(list, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			a, aerr := netip.ParseAddr(item)
			if aerr != nil {
				return nil, fmt.Errorf("%q is neither an IP address nor a CIDR range (e.g. 10.0.0.0/8)", item)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// MinTokenLen is the shortest admin token accepted: one that can be guessed
// is no lock.
const MinTokenLen = 16

// Secret is a string that prints as [redacted], so that no log line, error
// or %v of a Config shows it.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) GoString() string             { return "[redacted]" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	switch {
	case c.SessionTTL < 0:
		return fmt.Errorf("admin-session-ttl: %s is negative", c.SessionTTL)
	case c.PageSize < 0 || c.PageSize > 1000:
		return fmt.Errorf("admin page size: %d is not between 1 and 1000", c.PageSize)
	case c.ScanBudget < 0:
		return fmt.Errorf("admin scan budget: %d is negative", c.ScanBudget)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.SessionTTL == 0 {
		c.SessionTTL = 8 * time.Hour
	}
	if c.PageSize == 0 {
		c.PageSize = 50
	}
	if c.ScanBudget == 0 {
		c.ScanBudget = 5000
	}
	return c
}

// CheckToken says what is wrong with the admin token, as the console
// would at its start: before the service opens its store, a typo in the
// file's name costs no store file made and no connection waited for.
func (c Config) CheckToken() error {
	_, err := c.token()
	return err
}

// token reads the admin token: the file's, else the environment's; nil
// when there is none (a read-only console).
func (c Config) token() ([]byte, error) {
	tok, from := string(c.Token), "ORDERMAIL_ADMIN_TOKEN"
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("admin-token-file: %w", err)
		}
		tok, from = string(b), "admin-token-file "+c.TokenFile
		if strings.TrimSpace(tok) == "" {
			return nil, fmt.Errorf("%s: the file is empty", from)
		}
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return nil, nil
	}
	if err := checkToken(tok, from); err != nil {
		return nil, err
	}
	return []byte(tok), nil
}

// checkToken says what is wrong with tok, an admin token read from from.
func checkToken(tok, from string) error {
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return fmt.Errorf("%s: the file is empty", from)
	}
	if len(tok) < MinTokenLen {
		return fmt.Errorf("%s: the admin token is shorter than %d characters; use a random one (openssl rand -hex 32)", from, MinTokenLen)
	}
	if distinct(tok) < minTokenDistinct {
		return fmt.Errorf("%s: the admin token has fewer than %d different characters, which a guesser tries first; use a random one (openssl rand -hex 32)", from, minTokenDistinct)
	}
	return nil
}

// minTokenDistinct is the fewest different characters an admin token may
// have: "aaaaaaaaaaaaaaaa" is long enough, and no secret.
const minTokenDistinct = 8

func distinct(s string) int {
	seen := map[rune]bool{}
	for _, r := range s {
		seen[r] = true
	}
	return len(seen)
}
