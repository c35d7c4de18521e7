package redact

import (
	"cmp"
	"net/url"
	"slices"
	"strings"
)

// Mask is what a secret is replaced with.
const Mask = "REDACTED"

// URL returns raw with the userinfo password (or a user name given
// alone, which is then the whole credential: an API key as a Basic-auth
// user, sent as "key:"), every query parameter's value, every bare query
// token and the fragment replaced by Mask: a query is where services put
// their keys, under names no list foresees (Azure Functions' ?code=, a
// signed URL's parts), and its names are enough to tell one URL from
// another. A string that does not parse as a URL (a port mistyped, a
// carriage return from an env file) is masked the same way, part by part.
func URL(raw string) string {
	raw = schemeless(raw)
	u, err := url.Parse(raw)
	if err != nil {
		return unparsed(raw)
	}
	_, hasPassword := u.User.Password()
	q := query(u.RawQuery)
	if u.User == nil && q == u.RawQuery && u.Fragment == "" {
		return raw // nothing to hide: as given, not re-encoded
	}
	switch {
	case hasPassword:
		// URL.Redacted writes "xxxxx"; we want the same Mask everywhere.
		u.User = url.UserPassword(u.User.Username(), Mask)
	case u.User != nil:
		u.User = url.User(Mask)
	}
	u.RawQuery = q
	if u.Fragment != "" {
		u.Fragment, u.RawFragment = Mask, ""
	}
	return u.String()
}

// schemeless masks the credentials of a URL given without "://"
// ("key:secret@host/v1", which url.Parse takes for an opaque URL of scheme
// "key"; "https//u:pw@host", which it fails on): everything before the
// last "@" ahead of the query and fragment (a path's "@" masks more than
// needed, never less). raw with "://" ahead of them is returned as it is.
func schemeless(raw string) string {
	end := len(raw)
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		end = i
	}
	if strings.Contains(raw[:end], "://") {
		return raw
	}
	if at := strings.LastIndex(raw[:end], "@"); at >= 0 {
		return Mask + raw[at:]
	}
	return raw
}

// unparsed masks what stands between "://" and the last "@" (a password
// holding "@" is masked whole), the query's values and the fragment. An
// "@" that was in the query or the fragment (an address as a parameter)
// leaves everything after it masked as the query's or the fragment's
// rest: more than needed, never less.
func unparsed(raw string) string {
	head, rest := "", raw
	if i := strings.Index(raw, "://"); i >= 0 {
		head, rest = raw[:i+len("://")], raw[i+len("://"):]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			before := rest[:at]
			head, rest = head+Mask, rest[at:]
			switch {
			case strings.Contains(before, "#"):
				return head + "@" + Mask
			case strings.Contains(before, "?"):
				return head + "@" + query(rest[1:])
			}
		}
	}
	rest, _, hasFragment := strings.Cut(rest, "#")
	rest, q, hasQuery := strings.Cut(rest, "?")
	if hasQuery {
		rest += "?" + query(q)
	}
	if hasFragment {
		rest += "#" + Mask
	}
	return head + rest
}

// MailURL is URL for an email service's URL, whose path may carry a key
// too (a webhook service's token, an API that takes its key in the path):
// the path's segments that look like keys are masked as well (keyLike).
// The path is found in what URL gives, so that one given without a scheme
// ("host:8443/hook/KEY", which url.Parse takes for an opaque URL) is
// masked as well as one with.
func MailURL(raw string) string {
	s := URL(raw)
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + len("://")
	}
	slash := strings.IndexByte(s[start:], '/')
	if slash < 0 {
		return s
	}
	start += slash
	end := len(s)
	if i := strings.IndexAny(s[start:], "?#"); i >= 0 {
		end = start + i
	}
	return s[:start] + path(s[start:end]) + s[end:]
}

// path masks the segments of an escaped path that look like keys.
func path(p string) string {
	segs := strings.Split(p, "/")
	masked := false
	for i, s := range segs {
		if keyLike(s) {
			segs[i], masked = Mask, true
		}
	}
	if !masked {
		return p
	}
	return strings.Join(segs, "/")
}

// keyLike says whether a path segment looks like a key: 16 characters or
// more with letters and digits both, or 32 or more of anything; but not a
// name (letters, and at most two digits at its end: sendConfirmationV2), a
// date or a time (digits, '-', ':', '.', 'T' and 'Z'), so that a wrong
// path can still be told from a log.
func keyLike(seg string) bool {
	if s, err := url.PathUnescape(seg); err == nil {
		seg = s
	}
	seg = strings.TrimRight(seg, "\r\n\t ") // a line's end from an env file
	if len(seg) >= 32 {
		return true
	}
	if len(seg) < 16 || !strings.ContainsAny(seg, "0123456789") || !strings.ContainsFunc(seg, isLetter) {
		return false
	}
	name := strings.TrimRight(seg, "0123456789")
	if len(seg)-len(name) <= 2 && !strings.ContainsFunc(name, func(r rune) bool { return !isLetter(r) }) {
		return false
	}
	return strings.Trim(seg, "0123456789-:.TZ") != ""
}

func isLetter(r rune) bool { return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' }

// query masks values in place, keeping the parameters' order and encoding.
func query(raw string) string {
	if raw == "" {
		return raw
	}
	params := strings.Split(raw, "&")
	for i, p := range params {
		name, _, hasValue := strings.Cut(p, "=")
		switch {
		case hasValue:
			params[i] = name + "=" + Mask
		case p != "":
			params[i] = Mask // a bare token (?9f8e7d...) may be the key itself
		}
	}
	return strings.Join(params, "&")
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
