package redact

import (
	"cmp"
	"net/url"
	"slices"
	"strings"
)

// Mask is what a secret is replaced with.
const Mask = "REDACTED"

// secretWords are query parameter names, or parts of them (access_token,
// X-Amz-Signature), whose values are taken to be secret.
var secretWords = []string{
	"key", "token", "secret", "password", "pass", "pwd", "auth",
	"signature", "sig", "apikey", "api_key",
}

// URL returns raw with the userinfo password and the values of query
// parameters whose names look secret replaced by Mask. A string that does not
// parse as a URL has whatever stands between "://" and "@" replaced instead.
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return unparsed(raw)
	}
	_, hasPassword := u.User.Password()
	q := query(u.RawQuery)
	if !hasPassword && q == u.RawQuery {
		return raw // nothing to hide: as given, not re-encoded
	}
	if hasPassword {
		// URL.Redacted writes "xxxxx"; we want the same Mask everywhere.
		u.User = url.UserPassword(u.User.Username(), Mask)
	}
	u.RawQuery = q
	return u.String()
}

// unparsed masks a userinfo-like part; the last "@" so that a password
// holding "@" is masked whole.
func unparsed(raw string) string {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw
	}
	start := i + len("://")
	at := strings.LastIndex(raw[start:], "@")
	if at < 0 {
		return raw
	}
	return raw[:start] + Mask + raw[start+at:]
}

// query masks values in place, keeping the parameters' order and encoding.
func query(raw string) string {
	if raw == "" {
		return raw
	}
	params := strings.Split(raw, "&")
	for i, p := range params {
		name, _, hasValue := strings.Cut(p, "=")
		if !hasValue {
			continue
		}
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if looksSecret(name) {
			params[i] = p[:strings.Index(p, "=")+1] + Mask
		}
	}
	return strings.Join(params, "&")
}

// looksSecret reports whether name, or one of its parts split at
// non-alphanumerics, is a secret word, ignoring case.
func looksSecret(name string) bool {
	name = strings.ToLower(name)
	if slices.Contains(secretWords, name) {
		return true
	}
	parts := strings.FieldsFunc(name, func(r rune) bool {
		return !('a' <= r && r <= 'z' || '0' <= r && r <= '9')
	})
	return slices.ContainsFunc(parts, func(p string) bool { return slices.Contains(secretWords, p) })
}

// String returns s with every occurrence of each non-empty secret replaced by
// Mask. Longer secrets go first, so one that contains another is masked whole.
func String(s string, secrets ...string) string {
	secrets = slices.DeleteFunc(slices.Clone(secrets), func(v string) bool { return v == "" })
	if len(secrets) == 0 {
		return s
	}
	slices.SortFunc(secrets, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	pairs := make([]string, 0, 2*len(secrets))
	for _, v := range secrets {
		pairs = append(pairs, v, Mask)
	}
	return strings.NewReplacer(pairs...).Replace(s)
}
