package order

import "unicode/utf8"

// Shorten is s cut to at most n bytes, never in the middle of a
// character, and "..." after it when it was cut: a document's text (a
// field name, a status) quoted in an error, a dead letter or a log line
// that a hostile document may make megabytes long.
func Shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n-- // never half a character
	}
	return s[:n] + "..."
}
