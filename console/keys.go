package console

import (
	"encoding/base64"
	"strings"
	"unicode"
	"unicode/utf8"
)

// keyMark begins a key a form carries encoded (formKey).
const keyMark = "~b64:"

// formKey is key as a form carries it: as it is, or, when a browser would
// change it on its way back (a NUL, CR or LF, other control characters,
// bytes that are not UTF-8: html/template, the HTML parser and form
// encoding each rewrite some), base64url after keyMark, which keyOf
// undoes. A key that begins with keyMark itself is encoded too.
func formKey(key string) string {
	if utf8.ValidString(key) && !strings.HasPrefix(key, keyMark) && strings.IndexFunc(key, unicode.IsControl) < 0 {
		return key
	}
	return keyMark + base64.RawURLEncoding.EncodeToString([]byte(key))
}

// keyOf is the key a form's value v names (formKey's inverse); v as it is
// when it is not one formKey encoded.
func keyOf(v string) string {
	if rest, ok := strings.CutPrefix(v, keyMark); ok {
		if b, err := base64.RawURLEncoding.DecodeString(rest); err == nil {
			return string(b)
		}
	}
	return v
}
