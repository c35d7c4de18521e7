package order_test

import (
	"testing"
	"unicode/utf8"

	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
)

// TestShortenKeepsWholeCharacters: an error text cut to its length in a
// document is cut between characters, never inside one.
func TestShortenKeepsWholeCharacters(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "short", order.Shorten("short", 10))
	assert.Equal(t, "ab...", order.Shorten("abcdef", 2))
	got := order.Shorten("a\u00e9", 2) // é is two bytes: cut before it, not in it
	assert.Equal(t, "a...", got)
	assert.True(t, utf8.ValidString(got))
}
