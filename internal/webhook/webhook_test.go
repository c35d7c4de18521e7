package webhook_test

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/webhook"
	"github.com/stretchr/testify/require"
)

func mustParse(t *testing.T, lines ...string) *webhook.Secrets {
	t.Helper()
	s, err := webhook.ParseSecrets([]byte(strings.Join(lines, "\n")))
	require.NoError(t, err)
	return s
}

func signed(s *webhook.Secrets, id string, ts time.Time, body []byte) http.Header {
	h := http.Header{}
	s.SetHeaders(h, id, ts, body)
	return h
}

func TestWebhookRoundtrip(t *testing.T) {
	t.Parallel()
	s := mustParse(t, "# the secret of the mock", "", webhook.NewSecret())
	require.Equal(t, 1, s.Len())
	body := []byte(`{"email":"a@example.com"}`)
	h := signed(s, "order-1", time.Now(), body)
	require.Equal(t, "order-1", h.Get("webhook-id"))
	require.True(t, strings.HasPrefix(h.Get("webhook-signature"), "v1,"))
	require.NoError(t, s.Verify(body, h))
}

// While a secret is rotated the sender signs with both; a receiver that
// knows only one of them verifies.
func TestWebhookTwoSecrets(t *testing.T) {
	t.Parallel()
	newer, older := webhook.NewSecret(), webhook.NewSecret()
	sender := mustParse(t, newer, older)
	require.Equal(t, 2, sender.Len())
	body := []byte(`{}`)
	h := signed(sender, "k", time.Now(), body)
	require.Len(t, strings.Fields(h.Get("webhook-signature")), 2)

	require.NoError(t, mustParse(t, older).Verify(body, h))
	require.NoError(t, mustParse(t, newer).Verify(body, h))
	require.ErrorIs(t, mustParse(t, webhook.NewSecret()).Verify(body, h), webhook.ErrNoMatch)

	// And the other way: a receiver with both accepts a sender with one.
	receiver := mustParse(t, webhook.NewSecret(), older)
	require.NoError(t, receiver.Verify(body, signed(mustParse(t, older), "k", time.Now(), body)))
}

func TestWebhookRefuses(t *testing.T) {
	t.Parallel()
	s := mustParse(t, webhook.NewSecret())
	body := []byte(`{"email":"a@example.com"}`)
	now := time.Now()
	for _, tt := range []struct {
		name string
		give func() ([]byte, http.Header)
		want error
	}{
		{"forged body", func() ([]byte, http.Header) {
			return []byte(`{"email":"b@example.com"}`), signed(s, "k", now, body)
		}, webhook.ErrNoMatch},
		{"other id", func() ([]byte, http.Header) {
			h := signed(s, "k", now, body)
			h.Set("webhook-id", "k2")
			return body, h
		}, webhook.ErrNoMatch},
		{"stale", func() ([]byte, http.Header) { return body, signed(s, "k", now.Add(-6*time.Minute), body) }, webhook.ErrTooOld},
		{"ahead", func() ([]byte, http.Header) { return body, signed(s, "k", now.Add(6*time.Minute), body) }, webhook.ErrTooNew},
		{"no signature", func() ([]byte, http.Header) {
			h := signed(s, "k", now, body)
			h.Del("webhook-signature")
			return body, h
		}, webhook.ErrMissingHeaders},
		{"bad timestamp", func() ([]byte, http.Header) {
			h := signed(s, "k", now, body)
			h.Set("webhook-timestamp", "yesterday")
			return body, h
		}, webhook.ErrBadTimestamp},
		{"other version", func() ([]byte, http.Header) {
			h := signed(s, "k", now, body)
			h.Set("webhook-signature", strings.Replace(h.Get("webhook-signature"), "v1,", "v2,", 1))
			return body, h
		}, webhook.ErrNoMatch},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, h := tt.give()
			require.ErrorIs(t, s.Verify(b, h), tt.want)
		})
	}
}

func TestWebhookParseErrors(t *testing.T) {
	t.Parallel()
	key := func(n int) string { return base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", n))) }
	for _, tt := range []struct {
		name, give, secret, want string
	}{
		{"bad prefix", "# c\nwhsec_" + key(32) + "\nwhsex_" + key(32), key(32), "line 3: secret does not start with whsec_"},
		{"bad base64", "whsec_" + key(32) + "!", key(32), "line 1: secret after whsec_ is not standard base64"},
		{"too short", "\n\nwhsec_" + key(23), key(23), "line 3: secret is 23 bytes, not 24 to 64"},
		{"too long", "whsec_" + key(65), key(65), "line 1: secret is 65 bytes, not 24 to 64"},
		{"empty", "\n# only a comment\n  \n", "", "no secret"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := webhook.ParseSecrets([]byte(tt.give))
			require.ErrorContains(t, err, tt.want)
			if tt.secret != "" {
				require.NotContains(t, err.Error(), tt.secret)
				require.NotContains(t, err.Error(), tt.secret[:8])
			}
		})
	}
	// The bounds themselves are fine, and so are CRLF line ends.
	s, err := webhook.ParseSecrets([]byte("whsec_" + key(24) + "\r\nwhsec_" + key(64) + "\r\n"))
	require.NoError(t, err)
	require.Equal(t, 2, s.Len())
}
