package mailer

import (
	"bytes"
	"log/slog"

	"context"
	"errors"
	"fmt"
	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Path is where confirmations are posted, under the base URL.
const Path = "/sendConfirmation"

// DefaultRetryStatuses are the answers worth trying again: Eventarc's
// transient codes plus 425 Too Early.
var DefaultRetryStatuses = []int{408, 409, 425, 429, 500, 502, 503, 504}

// Config of the client.
type Config struct {
	// URL is the email service's base URL, e.g. http://localhost:9080. Required.
	URL string
	// Timeout bounds one send, connection and answer included. Default 10s.
	Timeout time.Duration
	// RetryStatuses are the HTTP statuses that are transient; others are
	// permanent. Nil: DefaultRetryStatuses.
	RetryStatuses []int
	// RetryAllFailures makes every failure transient, as in the sample.
	RetryAllFailures bool
	// SendRate limits sends per second; 0: no limit. SendBurst sends may go
	// at once (default: one second's worth).
	SendRate  float64
	SendBurst int
	// BreakerFailures consecutive transient failures open the circuit; 0: no
	// breaker. While open, sends are not made for BreakerCooldown (default
	// 30s), then one probe decides whether it closes.
	BreakerFailures int
	BreakerCooldown time.Duration
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
	switch {
	case c.Timeout < 0:
		return fmt.Errorf("mail-timeout: %s is negative", c.Timeout)
	case c.SendRate < 0:
		return fmt.Errorf("send-rate: %v is negative", c.SendRate)
	case c.SendBurst < 0:
		return fmt.Errorf("send-burst: %d is negative", c.SendBurst)
	case c.BreakerFailures < 0:
		return fmt.Errorf("breaker-failures: %d is negative", c.BreakerFailures)
	case c.BreakerCooldown < 0:
		return fmt.Errorf("breaker-cooldown: %s is negative", c.BreakerCooldown)
	}
	for _, code := range c.RetryStatuses {
		if code < 100 || code > 599 || code == http.StatusOK {
			return fmt.Errorf("retry-statuses: %d is not an HTTP status other than 200", code)
		}
	}
	return nil
}

// Class of a failed send.
type Class int

const (
	Transient Class = iota // worth trying again later
	Permanent              // the service refused it; trying again won't help
)

func (c Class) String() string { return [...]string{"transient", "permanent"}[c] }

// halfOpenRetry is when a send held back while a probe runs is tried again.
const halfOpenRetry = time.Second

// ErrCircuitOpen is the cause of a send held back by the open circuit.
var ErrCircuitOpen = errors.New("circuit breaker open: email service not called")

// SendError is every failed send, classified.
type SendError struct {
	Class        Class
	Status       int           // HTTP status; 0 when there was no answer
	RetryAfter   time.Duration // the service's Retry-After, or the breaker's cooldown
	NotAttempted bool          // held back by the circuit breaker
	Err          error         // the cause, for a failure without an answer
	Body         string        // the start of the answer, for the log
}

func (e *SendError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("%s failure: %v", e.Class, e.Err)
	}
	msg := fmt.Sprintf("%s failure: email service answered %d %s", e.Class, e.Status, http.StatusText(e.Status))
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

func (e *SendError) Unwrap() error { return e.Err }

// Client sends confirmations. It is safe for concurrent use.
type Client struct {
	cfg       Config
	endpoint  string
	http      *http.Client
	retryable map[int]bool
	limiter   *rate.Limiter
	breaker   *gobreaker.CircuitBreaker[struct{}]
	log       *slog.Logger
	now       func() time.Time
}

// New returns a client for cfg.
func New(cfg Config, log *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.RetryStatuses == nil {
		cfg.RetryStatuses = DefaultRetryStatuses
	}
	if cfg.BreakerCooldown == 0 {
		cfg.BreakerCooldown = 30 * time.Second
	}
	c := &Client{
		cfg:       cfg,
		endpoint:  strings.TrimRight(cfg.URL, "/") + Path,
		http:      &http.Client{Timeout: cfg.Timeout},
		retryable: map[int]bool{},
		log:       log.With("component", "mailer"),
		now:       time.Now,
	}
	for _, code := range cfg.RetryStatuses {
		c.retryable[code] = true
	}
	if cfg.SendRate > 0 {
		burst := cfg.SendBurst
		if burst == 0 {
			burst = max(1, int(cfg.SendRate))
		}
		c.limiter = rate.NewLimiter(rate.Limit(cfg.SendRate), burst)
	}
	if cfg.BreakerFailures > 0 {
		c.breaker = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
			Name:    "email service",
			Timeout: cfg.BreakerCooldown,
			ReadyToTrip: func(counts gobreaker.Counts) bool {
				return counts.ConsecutiveFailures >= uint32(cfg.BreakerFailures)
			},
			// A permanent answer means the service is up and answering.
			IsSuccessful: func(err error) bool {
				var se *SendError
				return err == nil || (errors.As(err, &se) && se.Class == Permanent)
			},
			// Our own shutdown says nothing about the service.
			IsExcluded: func(err error) bool {
				return errors.Is(err, context.Canceled)
			},
			OnStateChange: func(_ string, from, to gobreaker.State) {
				c.log.Warn("circuit breaker "+to.String(), "from", from.String(), "cooldown", cfg.BreakerCooldown)
			},
		})
	}
	return c, nil
}

// BreakerState is "closed", "open" or "half-open" ("closed" without a breaker).
func (c *Client) BreakerState() string {
	if c.breaker == nil {
		return gobreaker.StateClosed.String()
	}
	return c.breaker.State().String()
}

// Send posts one confirmation. It returns nil only for a 200 answer, a
// *SendError for a failure, and ctx's error when ctx ended.
func (c *Client) Send(ctx context.Context, idempotencyKey string, order []byte) error {
	if c.breaker == nil {
		return c.limitedPost(ctx, idempotencyKey, order)
	}
	_, err := c.breaker.Execute(func() (struct{}, error) {
		return struct{}{}, c.limitedPost(ctx, idempotencyKey, order)
	})
	switch {
	case errors.Is(err, gobreaker.ErrOpenState):
		return &SendError{Class: Transient, NotAttempted: true, RetryAfter: c.cfg.BreakerCooldown, Err: ErrCircuitOpen}
	case errors.Is(err, gobreaker.ErrTooManyRequests):
		// Half-open: a probe is deciding right now; ask again soon.
		return &SendError{Class: Transient, NotAttempted: true, RetryAfter: halfOpenRetry, Err: ErrCircuitOpen}
	}
	return err
}

func (c *Client) limitedPost(ctx context.Context, idempotencyKey string, order []byte) error {
	if c.limiter != nil {
		if err := c.limiter.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return &SendError{Class: Transient, NotAttempted: true, Err: err}
		}
	}
	return c.post(ctx, idempotencyKey, order)
}

func (c *Client) post(ctx context.Context, idempotencyKey string, order []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(order))
	if err != nil {
		return &SendError{Class: Permanent, Err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", idempotencyKey)
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &SendError{Class: Transient, Err: err} // no answer: refused, reset, timed out
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	class := Permanent
	if c.cfg.RetryAllFailures || c.retryable[resp.StatusCode] {
		class = Transient
	}
	return &SendError{
		Class:      class,
		Status:     resp.StatusCode,
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
