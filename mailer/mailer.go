package mailer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Path is where confirmations are posted, under the base URL.
const Path = "/sendConfirmation"

// Config of the client.
type Config struct {
	// URL is the email service's base URL, e.g. http://localhost:9080. Required.
	URL string
	// Timeout bounds one send, connection and answer included. Default 10s.
	Timeout time.Duration
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if c.URL == "" {
		return errors.New("mail-url: required (the email service's base URL, e.g. http://localhost:9080)")
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("mail-url: %q is not an http(s) URL with a host", c.URL)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("mail-timeout: %s is negative", c.Timeout)
	}
	return nil
}

// StatusError is an answer other than 200.
type StatusError struct {
	Code int
	// RetryAfter is the service's Retry-After, zero when it sent none.
	RetryAfter time.Duration
	Body       string // the start of the answer, for the log
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("email service answered %d %s", e.Code, http.StatusText(e.Code))
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// Client sends confirmations. It is safe for concurrent use.
type Client struct {
	endpoint string
	http     *http.Client
	now      func() time.Time
}

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Client{
		endpoint: strings.TrimRight(cfg.URL, "/") + Path,
		http:     &http.Client{Timeout: cfg.Timeout},
		now:      time.Now,
	}, nil
}

// Send posts one confirmation. It returns nil only for a 200 answer.
func (c *Client) Send(ctx context.Context, idempotencyKey string, order []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(order))
	if err != nil {
		return fmt.Errorf("send confirmation: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", idempotencyKey)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("send confirmation: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return &StatusError{
		Code:       resp.StatusCode,
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), c.now()),
		Body:       strings.TrimSpace(string(body)),
	}
}

// parseRetryAfter reads delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
