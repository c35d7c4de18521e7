// Package webhook signs and verifies requests the Standard Webhooks way
// (https://www.standardwebhooks.com/): webhook-id, webhook-timestamp and
// webhook-signature headers, HMAC-SHA256 over "id.timestamp.body". A
// secrets file holds several secrets so that one can be rotated in: the
// sender signs with all of them, a receiver accepts any.
package webhook

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The headers of a signed request.
const (
	HeaderID        = standardwebhooks.HeaderWebhookID
	HeaderTimestamp = standardwebhooks.HeaderWebhookTimestamp
	HeaderSignature = standardwebhooks.HeaderWebhookSignature
)

// secretPrefix starts every secret as written in a file.
const secretPrefix = "whsec_"

// The key length bounds of the spec: shorter is guessable, longer is
// hashed down by HMAC anyway.
const (
	minKeyLen = 24
	maxKeyLen = 64
)

// Why Verify refused a request.
var (
	ErrMissingHeaders = errors.New("missing webhook-id, webhook-timestamp or webhook-signature header")
	ErrBadTimestamp   = errors.New("webhook-timestamp is not unix seconds")
	ErrTooOld         = errors.New("webhook-timestamp is more than 5 minutes old")
	ErrTooNew         = errors.New("webhook-timestamp is more than 5 minutes ahead")
	ErrNoMatch        = errors.New("no webhook-signature matches")
)

// Secrets are the signing secrets of a secrets file, the first one newest.
// They do not change once parsed, so one value may serve many goroutines.
type Secrets struct {
	hooks []*standardwebhooks.Webhook
}

// ParseSecrets reads a secrets file's content: one whsec_<base64> secret a
// line; blank lines and lines starting with # are ignored. Errors name the
// line, never its text: a line that fails to parse may still be a secret.
func ParseSecrets(data []byte) (*Secrets, error) {
	s := &Secrets{}
	for i, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		key, err := parseSecret(string(line))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		// NewWebhookRaw cannot fail: it only keeps the key.
		wh, _ := standardwebhooks.NewWebhookRaw(key)
		s.hooks = append(s.hooks, wh)
	}
	if len(s.hooks) == 0 {
		return nil, errors.New("no secret: every line is blank or a comment")
	}
	return s, nil
}

func parseSecret(line string) ([]byte, error) {
	encoded, ok := strings.CutPrefix(line, secretPrefix)
	if !ok {
		return nil, fmt.Errorf("secret does not start with %s", secretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		// The error says at which byte, not what is there.
		return nil, fmt.Errorf("secret after %s is not standard base64: %w", secretPrefix, err)
	}
	if len(key) < minKeyLen || len(key) > maxKeyLen {
		return nil, fmt.Errorf("secret is %d bytes, not %d to %d", len(key), minKeyLen, maxKeyLen)
	}
	return key, nil
}

// NewSecret returns a fresh random secret of 32 bytes, written as in a
// secrets file.
func NewSecret() string {
	key := make([]byte, 32)
	rand.Read(key) // never fails: it crashes the program instead
	return secretPrefix + base64.StdEncoding.EncodeToString(key)
}

// Len is the number of secrets.
func (s *Secrets) Len() int {
	if s == nil {
		return 0
	}
	return len(s.hooks)
}

// Sign returns the webhook-signature header value: one "v1,<sig>" per
// secret, space-separated, in file order, so that a receiver that knows
// only an older or only a newer secret still verifies.
func (s *Secrets) Sign(id string, ts time.Time, body []byte) string {
	sigs := make([]string, len(s.hooks))
	for i, wh := range s.hooks {
		sigs[i], _ = wh.Sign(id, ts, body) // HMAC cannot fail
	}
	return strings.Join(sigs, " ")
}

// SetHeaders sets the three headers of a signed request on h.
func (s *Secrets) SetHeaders(h http.Header, id string, ts time.Time, body []byte) {
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, s.Sign(id, ts, body))
}

// Verify checks that h carries a valid signature of body by any of the
// secrets, with a timestamp within 5 minutes of now: the library's
// tolerance, which bounds how long a captured request can be replayed.
// The library compares signatures in constant time.
func (s *Secrets) Verify(body []byte, h http.Header) error {
	for _, wh := range s.hooks {
		err := wh.Verify(body, h)
		if err == nil {
			return nil
		}
		// Only the signature depends on the secret; any other error
		// would be the same with the next one.
		if !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
			return verifyError(err, h)
		}
	}
	return ErrNoMatch
}

// verifyError turns the library's error into one of ours, which says what
// was wrong with which header.
func verifyError(err error, h http.Header) error {
	switch {
	case errors.Is(err, standardwebhooks.ErrRequiredHeaders):
		return ErrMissingHeaders
	case errors.Is(err, standardwebhooks.ErrInvalidHeaders):
		return fmt.Errorf("%w: %.40q", ErrBadTimestamp, h.Get(HeaderTimestamp))
	case errors.Is(err, standardwebhooks.ErrMessageTooOld):
		return fmt.Errorf("%w: %s", ErrTooOld, h.Get(HeaderTimestamp))
	case errors.Is(err, standardwebhooks.ErrMessageTooNew):
		return fmt.Errorf("%w: %s", ErrTooNew, h.Get(HeaderTimestamp))
	}
	return fmt.Errorf("verify webhook signature: %w", err)
}
