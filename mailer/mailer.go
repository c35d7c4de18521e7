package mailer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0" // otelhttp's
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
	"golang.org/x/time/rate"

	"github.com/ordermail/ordermail/internal/loopback"
	"github.com/ordermail/ordermail/internal/redact"
	"github.com/ordermail/ordermail/internal/watchfile"
	"github.com/ordermail/ordermail/internal/webhook"
)

// Path is where confirmations are posted, under the base URL.
const Path = "/sendConfirmation"

// Resends says whether a send answered status is tried again, as the
// client so configured classes an answer of no particular order: one of
// RetryStatuses (nil: defaultResends), or any failure but a refusal
// of the credentials (401, 403) with RetryAllFailures.
func (c Config) Resends(status int) bool {
	if c.RetryAllFailures {
		return !success(status) && status != http.StatusUnauthorized && status != http.StatusForbidden
	}
	if c.RetryStatuses == nil {
		return defaultResends(status)
	}
	return slices.Contains(c.RetryStatuses, status)
}

// DefaultRetryStatuses are the answers worth trying again that the
// console's filter offers: Eventarc's transient codes plus 425 Too Early.
// Every other 5xx but 501 and 505 is tried again as well (defaultResends).
var DefaultRetryStatuses = []int{408, 409, 425, 429, 500, 502, 503, 504}

// defaultResends says whether status is tried again when --retry-statuses
// is not given: one of DefaultRetryStatuses, or any 5xx but 501 Not
// Implemented and 505 HTTP Version Not Supported, which every request gets
// alike. A gateway's or a CDN's 5xx (507, 520-524, 529, 598, 599...) is an
// outage between ordermail and the service, not the order's fault:
// dead-lettered at once, a CDN's outage would fill the dead letters.
func defaultResends(status int) bool {
	return slices.Contains(DefaultRetryStatuses, status) ||
		status >= 500 && status <= 599 && status != http.StatusNotImplemented && status != http.StatusHTTPVersionNotSupported
}

// maxAnswer bounds what is read of an answer. Reading it to the end lets the
// connection be reused; a longer answer costs a new connection instead.
const maxAnswer = 64 << 10

// Config of the client.
type Config struct {
	// URL is the email service's base URL, e.g. http://localhost:9080. Required.
	// It may carry credentials: print it only through RedactedURL.
	URL string
	// Timeout bounds one send, connection and answer included. Default 10s.
	Timeout time.Duration
	// RetryStatuses are the HTTP statuses (3xx, 4xx, 5xx) that are transient;
	// others are permanent. Nil: DefaultRetryStatuses and every 5xx but 501
	// and 505 (defaultResends).
	RetryStatuses []int
	// RetryAllFailures makes every failure transient, as in the sample;
	// Invalid stays Invalid.
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
	// Conns bounds the connections open to the service at once; they are
	// kept alive for reuse. A send waits for a free one (within Timeout).
	// Default 64.
	Conns int

	// AuthFile holds the value of the AuthHeader header (default
	// Authorization) every request carries, e.g. "Bearer abc": a file, so
	// that the secret is in no flag (ps shows those), and read again when
	// it changes, so that a rotated key takes effect without a restart.
	AuthHeader, AuthFile string
	// CAFile is a PEM bundle that replaces the system roots for the
	// service's certificate; CertFile and KeyFile are a client certificate
	// for mutual TLS. Read again when they change.
	CAFile, CertFile, KeyFile string
	// SigningSecretFile, when set, holds Standard Webhooks secrets
	// (whsec_..., one a line): every request is signed with each of them.
	SigningSecretFile string
}

// RedactedURL is URL with its password and query values masked, for
// errors and logs.
func (c Config) RedactedURL() string { return redact.MailURL(c.URL) }

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if c.URL == "" {
		return errors.New("mail-url: required (the email service's base URL, e.g. http://localhost:9080)")
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fmt.Errorf("mail-url: %q is not an http(s) URL with a host", c.RedactedURL())
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("mail-url: %q: port %s is not between 1 and 65535", c.RedactedURL(), p)
		}
	}
	switch {
	case c.Timeout < 0:
		return fmt.Errorf("mail-timeout: %s is negative", c.Timeout)
	case math.IsNaN(c.SendRate) || math.IsInf(c.SendRate, 0):
		// NaN passes every comparison below; +Inf is no rate.
		return fmt.Errorf("send-rate: %v is not a number of sends per second", c.SendRate)
	case c.SendRate < 0:
		return fmt.Errorf("send-rate: %v is negative", c.SendRate)
	case c.SendBurst < 0:
		return fmt.Errorf("send-burst: %d is negative", c.SendBurst)
	case c.BreakerFailures < 0:
		return fmt.Errorf("breaker-failures: %d is negative", c.BreakerFailures)
	case c.BreakerCooldown < 0:
		return fmt.Errorf("breaker-cooldown: %s is negative", c.BreakerCooldown)
	case c.Conns < 0:
		return fmt.Errorf("mail-conns: %d is negative", c.Conns)
	case (c.CertFile == "") != (c.KeyFile == ""):
		return errFileSettings
	case c.AuthHeader != "" && !httpguts.ValidHeaderFieldName(c.AuthHeader):
		return fmt.Errorf("mail-auth-header: %q is not a header name", c.AuthHeader)
	case c.AuthHeader != "" && c.AuthFile == "":
		return errors.New("mail-auth-header: needs mail-auth-file, the file holding the header's value")
	}
	for _, code := range c.RetryStatuses {
		if code < 100 || code > 599 || success(code) {
			return fmt.Errorf("retry-statuses: %d is not an HTTP status outside 2xx", code)
		}
	}
	return nil
}

func success(status int) bool { return status >= 200 && status <= 299 }

// Class of a failed send.
type Class int

const (
	Transient Class = iota // worth trying again later
	Permanent              // the service refused the order; trying again won't help
	Invalid                // the request cannot be made for this order; no request was made
	// Configuration: the service refuses ordermail's configuration (401, 403, an
	// untrusted certificate, a client certificate refused), the URL names no
	// endpoint (endpointRefusals orders answered so in a row) or speaks no
	// TLS, the service refuses every order alike (permanentRefusals orders
	// answered the same permanent status in a row), or a settings file
	// cannot be read. It is nobody's order's fault: no attempt is
	// counted, and sends are held until a probe succeeds.
	Configuration
)

func (c Class) String() string { return [...]string{"transient", "permanent", "invalid", "config"}[c] }

// refusedKeys bounds the orders whose last refusal (401, 403) the client
// remembers.
const refusedKeys = 4096

// halfOpenRetry is when a send held back while a probe runs is tried again.
const halfOpenRetry = time.Second

// ErrCircuitOpen is the cause of a send held back by the open circuit.
var ErrCircuitOpen = errors.New("circuit breaker open: email service not called")

// errCertDropped marks a connection the service dropped after it asked for
// a client certificate: with TLS 1.3 the service checks it after the client
// has finished its handshake, so its refusal may reach the client as a
// reset or a broken pipe rather than as its alert.
var errCertDropped = errors.New("tls: the service dropped the connection after asking for a client certificate (mail-cert-file, mail-key-file)")

// ErrMisconfigured is the cause of a send held back because the service
// refused ordermail's configuration; Client.Misconfigured says why.
var ErrMisconfigured = errors.New("sends held: the email service refuses ordermail's configuration")

// ErrHeaderValue is the cause of an Invalid send: the idempotency key holds a
// byte a header value cannot carry.
var ErrHeaderValue = errors.New("not a valid header value (holds CR, LF, NUL, DEL or another control byte)")

// CheckHeaderValue returns ErrHeaderValue when v cannot be sent as a header
// value; Go's HTTP client would refuse it. Callers use it to set aside an
// order whose idempotency key can never be sent.
func CheckHeaderValue(v string) error {
	if !httpguts.ValidHeaderFieldValue(v) {
		return ErrHeaderValue
	}
	return nil
}

// SendError is every failed send, classified. Neither Error nor Reason
// quotes the answer's body, the order or the URL: they may carry customer
// data or credentials.
type SendError struct {
	Class        Class
	Status       int           // HTTP status; 0 when there was no answer
	ContentType  string        // the answer's media type, without parameters
	BodyBytes    int           // bytes of the answer read, at most 64 KiB
	Code         string        // the answer's top-level JSON "code" or "error" when it looks like an identifier
	RetryAfter   time.Duration // the service's Retry-After, or the breaker's cooldown
	NotAttempted bool          // held back by the circuit breaker or the rate limit
	Err          error         // the cause of a failure without an answer, without the URL
	// RedirectTo is a redirect's target, its scheme and host only (its
	// path and query may carry a signed URL's credentials).
	RedirectTo string
}

func (e *SendError) Error() string { return fmt.Sprintf("%s failure: %s", e.Class, e.Reason()) }

func (e *SendError) Unwrap() error { return e.Err }

// Held says what held a send back without a request: "breaker" (the
// circuit breaker, open or probing), "config" (the service refuses the
// configuration, or a settings file cannot be read), "rate" (the rate
// limit); "" when a request was made or could not be (Invalid).
func (e *SendError) Held() string {
	switch {
	case !e.NotAttempted:
		return ""
	case errors.Is(e.Err, ErrCircuitOpen):
		return "breaker"
	case e.Class == Configuration:
		return "config"
	}
	return "rate"
}

// Cause names, for a failure without an answer, what kind it was: "timeout",
// "connection refused", "connection reset", "connection closed", "dns",
// "tls", "settings file" (a file of the mailer's settings), "other"; "" when
// the service answered or no request was made.
func (e *SendError) Cause() string {
	if e.Status != 0 || e.NotAttempted && e.Class != Configuration || e.Class == Invalid || e.Err == nil {
		return ""
	}
	why, config := describe(e.Err)
	switch {
	case e.NotAttempted: // a settings file the mailer could not use
		return "settings file"
	case config || strings.HasPrefix(why, "tls"):
		return "tls"
	case why == "timeout", why == "connection refused", why == "connection reset":
		return why
	case why == "connection closed before the answer":
		return "connection closed"
	case strings.HasPrefix(why, "dns"):
		return "dns"
	}
	return "other"
}

// Reason is a short description free of customer data, to be stored with the
// order (a retry document's lastError).
func (e *SendError) Reason() string {
	if e.Status != 0 {
		msg := "answered " + strconv.Itoa(e.Status)
		if text := http.StatusText(e.Status); text != "" {
			msg += " " + text
		}
		var details []string
		if e.ContentType != "" {
			details = append(details, e.ContentType)
		}
		details = append(details, fmt.Sprintf("%d bytes", e.BodyBytes))
		if e.Code != "" {
			details = append(details, "code "+e.Code)
		}
		msg += " (" + strings.Join(details, ", ") + ")"
		if e.RedirectTo != "" {
			msg += " to " + e.RedirectTo
		}
		return msg
	}
	why, config := describe(e.Err)
	switch {
	case e.Class == Invalid:
		return "invalid: " + why
	case e.NotAttempted:
		return "not attempted: " + why
	case config:
		return why
	}
	return "no answer: " + why
}

// describe names the cause of a failure without an answer, and whether it is
// a configuration error (untrusted certificate) rather than a service down.
func describe(err error) (why string, config bool) {
	if errors.Is(err, errCertDropped) {
		return errCertDropped.Error(), true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return "tls: certificate signed by unknown authority", true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return "tls: certificate is not valid for the service's host", true
	}
	if ierr, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		if ierr.Reason == x509.Expired {
			return "tls: certificate has expired or is not yet valid", true
		}
		return "tls: certificate is not valid", true
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return "tls: certificate verification failed", true
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok || err != nil && strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		// An https:// --mail-url on a port that speaks plain HTTP (which
		// net/http says in those words, an error of no type): every
		// order's send would fail so, none by its own fault.
		return "tls: the service does not speak TLS on that port (an https:// URL for a plain-HTTP port?)", true
	}
	if nerr, ok := errors.AsType[net.Error](err); ok && nerr.Timeout() {
		return "timeout", false
	}
	switch {
	case err == nil:
		return "unknown cause", false
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", false
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset", false
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before the answer", false
	}
	if derr, ok := errors.AsType[*net.DNSError](err); ok {
		if derr.IsNotFound {
			return "dns: host not found", false
		}
		return "dns: lookup failed", false
	}
	if operr, ok := errors.AsType[*net.OpError](err); ok && operr.Err != nil {
		if alert, ok := strings.CutPrefix(operr.Err.Error(), "tls: "); ok && operr.Op == "remote error" {
			if refusalAlerts[alert] {
				// The service's TLS alert: it refused our certificate, or
				// none, or what we offered.
				return "the service refused the TLS handshake: " + operr.Err.Error(), true
			}
			// Its own trouble (an internal error, a terminator reloading):
			// this handshake's, not our configuration's.
			return "the service ended the TLS handshake: " + operr.Err.Error(), false
		}
		return operr.Op + ": " + operr.Err.Error(), false // without the addresses
	}
	return withoutURL(err).Error(), false
}

// refusalAlerts are the TLS alerts (as crypto/tls names them) by which a
// service refuses what ordermail offered: its certificate or none, its
// versions, ciphers, server name or protocols. Any other alert (internal
// error, user canceled, a decode error) is the handshake's own failure.
var refusalAlerts = map[string]bool{
	"handshake failure": true, "bad certificate": true, "unsupported certificate": true,
	"revoked certificate": true, "expired certificate": true, "unknown certificate": true,
	"unknown certificate authority": true, "access denied": true, "protocol version not supported": true,
	"insufficient security level": true, "unrecognized name": true, "certificate required": true,
	"no application protocol": true,
}

// dropped says whether the service closed the connection under the request.
func dropped(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		// The transport's own reader saw the refusal and closed the
		// connection under the request.
		errors.Is(err, net.ErrClosed)
}

// withoutURL drops the URL a *url.Error quotes: it may hold a query secret.
func withoutURL(err error) error {
	if uerr, ok := errors.AsType[*url.Error](err); ok {
		return uerr.Err
	}
	return err
}

// Client sends confirmations. It is safe for concurrent use.
type Client struct {
	cfg          Config
	endpoint     string
	endpointPath string // the endpoint's path, for messages: never its query, which may hold a key
	tls          bool   // the endpoint is https
	retryable    map[int]bool
	limiter      *rate.Limiter
	breaker      *gobreaker.CircuitBreaker[struct{}]
	// gate holds every send while the service refuses the configuration;
	// a new one, closed, when the configuration changes (replaced).
	gate atomic.Pointer[gobreaker.CircuitBreaker[struct{}]]
	// creds counts the changes of the credential, the signing secrets and
	// the TLS files: a refusal of a send made before the latest says
	// nothing of what they hold now.
	creds atomic.Uint64
	// resumed is set when a change of the configuration let held sends go
	// out again: the first accepted says so, as a probe closing the gate
	// does.
	resumed   atomic.Bool
	misconfig atomic.Pointer[string] // the latest configuration failure's reason
	// lastFailure is the reason of the latest send that failed for the
	// service (the circuit breaker's), for its log lines; openedAt is
	// when the breaker last opened, and probeLog paces the lines of the
	// probes that fail while it stays open.
	lastFailure atomic.Pointer[string]
	openedAt    atomic.Int64 // unix nanoseconds
	probeLog    rate.Sometimes
	// refused is when sends were last refused as a configuration is, by key, and
	// lastAccepted when the latest accepted send started: see
	// refusedAgain. Both on the monotonic clock, as nanoseconds since
	// epoch (mono), so that a wall clock stepped forward and back does not
	// leave lastAccepted ahead of every refusal to come.
	refused *lru.Cache[string, refusal]
	// refusedOnce holds the orders answered a permanent status before:
	// answered so again (a redrive of an order still wrong, a held one
	// probed), an order is refused for itself, and does not count towards
	// permanentRefusals.
	refusedOnce  *lru.Cache[string, struct{}]
	lastAccepted atomic.Int64
	epoch        time.Time
	// missing and refusedAlike are the runs of orders refused alike, with
	// no send accepted between, that make a refusal the service's rather
	// than each order's (endpointRefusals, permanentRefusals); denied
	// counts the sends answered 401 or 403 since one was accepted
	// (deniedRefusals).
	missing, refusedAlike refusalRun
	denied                atomic.Int64
	log                   *slog.Logger
	now                   func() time.Time

	auth    *watchfile.File
	tlsf    tlsFiles
	signing *watchfile.File

	mu       sync.Mutex
	http     *http.Client // the current one: rebuilt when a TLS file changes
	traced   *http.Client // the same transport, with a span per request
	httpAt   time.Time    // when the TLS files were last read into a client
	httpErr  error        // why they made none then
	httpBad  badSpell
	authGood string // the auth file's last good value
	authBad  badSpell
	secrets  *webhook.Secrets // the signing file's last good secrets
	secretAt time.Time
	secErr   error
	secBad   badSpell
}

// New returns a client for cfg.
func New(cfg Config, log *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.BreakerCooldown == 0 {
		cfg.BreakerCooldown = 30 * time.Second
	}
	if cfg.Conns == 0 {
		cfg.Conns = 64
	}
	if cfg.AuthFile != "" && cfg.AuthHeader == "" {
		cfg.AuthHeader = "Authorization"
	}
	base, _ := url.Parse(cfg.URL)            // validated
	endpoint := base.JoinPath(Path).String() // keeps a query such as ?key=
	if strings.HasSuffix(strings.TrimSuffix(base.Path, "/"), Path) {
		log.Warn("--mail-url ends in "+Path+", which ordermail adds to it: the requests go to "+shownPath(endpoint)+"; give the service's base URL",
			"component", "mailer")
	}
	c := &Client{
		cfg:          cfg,
		endpoint:     endpoint,
		endpointPath: shownPath(endpoint),
		tls:          base.Scheme == "https",
		retryable:    map[int]bool{},
		log:          log.With("component", "mailer"),
		now:          time.Now,
		epoch:        time.Now(),
		auth:         watchfile.New("mail-auth-file", cfg.AuthFile),
		tlsf: tlsFiles{ca: watchfile.New("mail-ca-file", cfg.CAFile),
			cert: watchfile.New("mail-cert-file", cfg.CertFile), key: watchfile.New("mail-key-file", cfg.KeyFile)},
		signing: watchfile.New("mail-signing-secret-file", cfg.SigningSecretFile),
	}
	c.refused, _ = lru.New[string, refusal](refusedKeys) // errs only for a size <= 0
	c.refusedOnce, _ = lru.New[string, struct{}](refusedKeys)
	// Every file must be right at the start: a typo is the operator's to
	// fix now. Later, a file gone bad holds the sends (see gate).
	now := c.now()
	if c.auth != nil {
		if _, _, err := c.credential(now); err != nil {
			return nil, err
		}
	}
	if _, err := c.client(now); err != nil {
		return nil, err
	}
	if _, err := c.signer(now); err != nil {
		return nil, err
	}
	// Credentials: the auth file's, or in the URL itself (a password, or
	// a key in the query: any query may hold one, as redact assumes).
	inURL := base.User != nil || base.RawQuery != ""
	if base.Scheme == "http" && !loopback.Host(base.Hostname()) {
		// Not refused: a sidecar or a trusted network may be meant.
		what := "orders, with their customers' data,"
		if cfg.AuthFile != "" || inURL {
			what = "the email service's credentials and " + what
		}
		c.log.Warn(what+" go over the network unencrypted: give --mail-url an https:// URL unless that is meant",
			"mail_url", cfg.RedactedURL())
	}
	for _, code := range cfg.RetryStatuses {
		c.retryable[code] = true
	}
	if cfg.RetryStatuses == nil {
		for code := 300; code <= 599; code++ {
			c.retryable[code] = defaultResends(code)
		}
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
			// A permanent answer means the service is up and answering; a
			// permanent failure without an answer, or with a 5xx (the
			// service's or a gateway's failure, whatever --retry-statuses
			// makes of it), does not.
			IsSuccessful: func(err error) bool {
				se, ok := errors.AsType[*SendError](err)
				return err == nil || (ok && se.Class == Permanent && se.Status != 0 && se.Status < 500)
			},
			// Our own shutdown, a request we could not make, one the rate
			// limit held back (no request made) and a refused
			// configuration (the gate's) say nothing about availability.
			IsExcluded: func(err error) bool {
				se, ok := errors.AsType[*SendError](err)
				return errors.Is(err, context.Canceled) || (ok && (se.Class == Invalid || se.Class == Configuration || se.NotAttempted))
			},
			// One line when the service is given up on and one when it is
			// back; the probes between are the breaker's own business.
			OnStateChange: func(_ string, from, to gobreaker.State) {
				last := ""
				if r := c.lastFailure.Load(); r != nil {
					last = *r
				}
				switch {
				case from == gobreaker.StateClosed:
					c.openedAt.Store(c.now().UnixNano())
					c.probeLog = rate.Sometimes{Interval: 5 * time.Minute}
					c.probeLog.Do(func() {}) // the line below is the first
					c.log.Warn("circuit breaker open: sends held back, one probe per cooldown",
						"consecutive_failures", cfg.BreakerFailures, "last_failure", last, "cooldown", cfg.BreakerCooldown.String())
				case to == gobreaker.StateClosed:
					c.log.Info("circuit breaker closed: sending resumed",
						"held_for", c.now().Sub(time.Unix(0, c.openedAt.Load())).Round(time.Second).String())
				case to == gobreaker.StateOpen: // a probe failed
					c.probeLog.Do(func() {
						c.log.Warn("circuit breaker still open: the probes fail (said at most every 5 minutes)", "last_failure", last,
							"open_for", c.now().Sub(time.Unix(0, c.openedAt.Load())).Round(time.Second).String())
					})
				default:
					c.log.Debug("circuit breaker "+to.String(), "from", from.String(), "cooldown", cfg.BreakerCooldown.String())
				}
			},
		})
	}
	c.gate.Store(c.newGate())
	return c, nil
}

// newGate is a configuration gate, closed.
func (c *Client) newGate() *gobreaker.CircuitBreaker[struct{}] {
	cfg := c.cfg
	var g *gobreaker.CircuitBreaker[struct{}]
	g = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "configuration",
		Timeout:     cfg.BreakerCooldown,
		ReadyToTrip: func(counts gobreaker.Counts) bool { return counts.ConsecutiveFailures >= 1 },
		IsSuccessful: func(err error) bool {
			se, ok := errors.AsType[*SendError](err)
			return !ok || se.Class != Configuration
		},
		// What was not sent says nothing about the configuration.
		IsExcluded: func(err error) bool {
			se, ok := errors.AsType[*SendError](err)
			return errors.Is(err, context.Canceled) || (ok && (se.Class == Invalid || se.NotAttempted && se.Class != Configuration))
		},
		// Called with the gate's lock held: it must not ask the gate.
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if c.gate.Load() != g {
				return // replaced: a send made before the change ended
			}
			switch {
			case from == gobreaker.StateClosed:
				c.resumed.Store(false) // refused again: a probe's success will say it
				var reason string
				if r := c.misconfig.Load(); r != nil {
					reason = *r
				}
				c.log.Error("the email service refuses ordermail's configuration: sends held until a probe succeeds",
					"reason", reason, "probe_every", cfg.BreakerCooldown.String())
			case to == gobreaker.StateClosed:
				c.log.Info("the email service accepts ordermail's configuration again: sending resumed")
			}
		},
	})
	return g
}

// replaced notes that the credential, the signing secrets or the TLS files
// changed (a key rotated): refusals of sends made before say nothing of
// them now. The gate is a new one, closed: sends held for such refusals go
// out again at once, to try them, rather than wait out a cooldown, and the
// sends in flight answer to the old gate, which says nothing any more. c.mu
// is held.
func (c *Client) replaced() {
	c.creds.Add(1)
	c.denied.Store(0)
	old := c.gate.Load()
	if old == nil {
		return // New's first reads
	}
	c.gate.Store(c.newGate())
	if old.State() != gobreaker.StateClosed {
		c.resumed.Store(true)
		c.log.Info("ordermail's email-service configuration changed: sends go out again to try it")
	}
}

// Misconfigured is why sends are held because the service refuses
// ordermail's configuration, or "" when they are not.
func (c *Client) Misconfigured() string {
	if c.gate.Load().State() == gobreaker.StateClosed {
		return ""
	}
	if r := c.misconfig.Load(); r != nil {
		return *r
	}
	return "configuration refused"
}

// client is the HTTP client for the TLS files as they are now: built again
// when one of them changed, the old one's idle connections closed. While
// the files do not make a configuration (see reloadGrace), the last one
// they made is used.
func (c *Client) client(now time.Time) (*http.Client, error) {
	if !c.tlsf.any() && c.http != nil {
		return c.http, nil // built by New, never rebuilt: no lock per send
	}
	changed := c.tlsf.changed(now)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.http == nil || !changed.Equal(c.httpAt) {
		c.httpAt, c.httpErr = changed, c.rebuild(now)
	}
	if err := c.excuse(&c.httpBad, c.httpErr, c.http != nil, now); err != nil {
		return nil, err
	}
	return c.http, nil
}

// rebuild makes c.http from the TLS files as they are now, or returns why
// they make no configuration, leaving c.http as it was. c.mu is held.
func (c *Client) rebuild(now time.Time) error {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = c.cfg.Conns
	transport.MaxIdleConnsPerHost = c.cfg.Conns
	// Also a cap: without it, a send that dials while another connection
	// turns idle leaves one connection more than sends in flight.
	transport.MaxConnsPerHost = c.cfg.Conns
	transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	// HTTP/1.1 only: one kept-alive connection per send in flight, as
	// Conns says, and a failed handshake keeps its cause (HTTP/2's client
	// reports "could not be established" instead).
	transport.ForceAttemptHTTP2 = false
	transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	if c.tlsf.any() {
		var err error
		if transport.TLSClientConfig, err = c.tlsf.config(now); err != nil {
			return err
		}
	}
	certs := transport.TLSClientConfig.Certificates
	transport.TLSClientConfig.Certificates = nil
	transport.TLSClientConfig.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if len(certs) > 0 {
			return &certs[0], nil
		}
		// None to give: the service decides, and a refusal of it may come
		// as the connection dropped (see handshake). With a certificate
		// given, a drop is taken for the service's failure: a service
		// that requires and accepts it may drop a new connection for
		// other reasons (a crash, a restart), and holding every send for
		// it would be wrong; its refusal comes as its alert but at times
		// (about 2% under TLS 1.3), counted against the order once.
		if h, ok := cri.Context().Value(handshakeKey{}).(*handshake); ok {
			h.asked.Store(true)
		}
		return &tls.Certificate{}, nil
	}
	old := c.http
	c.http = &http.Client{
		Transport: transport,
		Timeout:   c.cfg.Timeout,
		// A redirect is an answer: following it would post the order
		// again, maybe elsewhere, maybe as a GET.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	// otelhttp starts the send's span and puts its traceparent on the
	// request, for sends whose trace is recorded.
	traced := *c.http
	traced.Transport = otelhttp.NewTransport(redactedSpanURL{next: transport, full: spanURL(c.endpoint)},
		otelhttp.WithSpanNameFormatter(func(string, *http.Request) string { return "send confirmation" }))
	c.traced = &traced
	if old != nil {
		old.CloseIdleConnections()
		c.log.Info("TLS files changed: new connections use them")
		c.replaced()
	}
	return nil
}

// handshake is what one send saw of its connection: whether a TLS
// handshake made for it was asked for a client certificate it had none to
// give, and whether the send went on a connection used before. A new
// connection that the service asked for a certificate and then dropped
// before any answer refused the lack of one: with TLS 1.3 the service
// checks it after the client has finished its handshake, so its refusal
// may reach the client as a reset or a broken pipe rather than as its
// alert. A connection used before, dropped, is the service's restart or a
// proxy's reset: the order's transient failure.
type handshake struct{ asked, reused atomic.Bool }

type handshakeKey struct{}

// watch returns ctx for a send whose connection h is to see. The
// transport dials with the values of the request's context.
func (h *handshake) watch(ctx context.Context) context.Context {
	ctx = context.WithValue(ctx, handshakeKey{}, h)
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { h.reused.Store(info.Reused) },
	})
}

// refusedCertificate says whether err is the service dropping a new
// connection after asking for a client certificate.
func (h *handshake) refusedCertificate(err error) bool {
	return h.asked.Load() && !h.reused.Load() && dropped(err)
}

// redactedSpanURL replaces the url.full otelhttp gave the send's span, before
// the request goes: otelhttp drops the URL's password but keeps its query,
// where the service's key may be (?api_key=), and spans go to a tracing
// backend. The span gets the URL as the logs have it: full, every send's
// (they all go to the endpoint), masked once.
type redactedSpanURL struct {
	next http.RoundTripper
	full string
}

func (t redactedSpanURL) RoundTrip(req *http.Request) (*http.Response, error) {
	if span := trace.SpanFromContext(req.Context()); span.IsRecording() {
		span.SetAttributes(semconv.URLFull(t.full))
	}
	return t.next.RoundTrip(req)
}

// spanURL is endpoint as a span shows it: as otelhttp, without even the
// user name, and masked as the logs mask it.
func spanURL(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return redact.MailURL(endpoint)
	}
	u.User = nil
	return redact.MailURL(u.String())
}

// clientFor is the client of a send in ctx: otelhttp's, which makes a span
// of the request and puts its trace context on it, unless the send's trace
// is not recorded; then the trace context goes on the request as it is,
// without a span that nobody would see (the watcher's sends: a fifth of
// their cost in a benchmark).
func (c *Client) clientFor(ctx context.Context, hc *http.Client, h http.Header) *http.Client {
	span := trace.SpanFromContext(ctx)
	if span.SpanContext().IsValid() && !span.IsRecording() {
		otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(h))
		return hc
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.http == hc {
		return c.traced
	}
	// Rebuilt meanwhile: rare, and this send goes without a span, but with
	// the trace context.
	otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(h))
	return hc
}

// signer is the signing secrets as they are now; nil when requests are not
// signed. While the file holds no secrets (see reloadGrace), the last it
// held are used.
func (c *Client) signer(now time.Time) (*webhook.Secrets, error) {
	if c.signing == nil {
		return nil, nil
	}
	b, changed, err := c.signing.Read(now)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && (c.secretAt.IsZero() || !changed.Equal(c.secretAt)) {
		c.secretAt = changed
		s, perr := webhook.ParseSecrets(b)
		if perr != nil {
			c.secErr = fmt.Errorf("%s: %s: %w", c.signing.Flag(), c.signing.Path(), perr)
		} else {
			if c.secrets != nil {
				c.replaced()
			}
			c.secrets, c.secErr = s, nil
		}
	}
	if err == nil {
		err = c.secErr
	}
	if err := c.excuse(&c.secBad, err, c.secrets != nil, now); err != nil {
		return nil, err
	}
	return c.secrets, nil
}

// lookAgain reads the credential, TLS and signing files as they are now,
// for changes (replaced); what they make is for the sends to use.
func (c *Client) lookAgain(now time.Time) {
	if c.auth != nil {
		_, _, _ = c.credential(now)
	}
	_, _ = c.client(now)
	_, _ = c.signer(now)
}

// credential is the authentication header's value as of now, with the
// configuration's generation (creds) it belongs to. While the file holds
// none (see reloadGrace), the last it held is used.
func (c *Client) credential(now time.Time) (string, uint64, error) {
	v, err := credential(c.auth, now)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		if c.authGood != "" && v != c.authGood {
			c.replaced()
		}
		c.authGood = v
	}
	if err := c.excuse(&c.authBad, err, c.authGood != "", now); err != nil {
		return "", 0, err
	}
	return c.authGood, c.creds.Load(), nil
}

// BreakerState is "closed", "open" or "half-open" ("closed" without a breaker).
func (c *Client) BreakerState() string {
	if c.breaker == nil {
		return gobreaker.StateClosed.String()
	}
	return c.breaker.State().String()
}

// HeldBack says whether every send is held back now (held: the circuit
// breaker or the configuration gate is open), or the next one goes out as
// the probe that decides whether they close (probing: a cooldown is over).
// The timer asks it before each sweep (timer.Gate).
func (c *Client) HeldBack() (held, probing bool) {
	if c.gate.Load().State() != gobreaker.StateClosed {
		// Asked while no send reads the files: a credential replaced
		// meanwhile is looked for here too (each file at most once a
		// second), so that a quiet instance tries it at once.
		c.lookAgain(c.now())
	}
	for _, b := range []*gobreaker.CircuitBreaker[struct{}]{c.breaker, c.gate.Load()} {
		if b == nil {
			continue
		}
		switch b.State() {
		case gobreaker.StateOpen:
			return true, false
		case gobreaker.StateHalfOpen:
			probing = true
		}
	}
	return false, probing
}

// CloseIdleConnections closes the kept-alive connections. Sends still work,
// on new connections.
func (c *Client) CloseIdleConnections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.http.CloseIdleConnections()
}

// Send posts one confirmation. It returns nil only for a 2xx answer, a
// *SendError for a failure, and ctx's error when ctx ended.
func (c *Client) Send(ctx context.Context, idempotencyKey string, order []byte) error {
	if err := CheckHeaderValue(idempotencyKey); err != nil {
		return &SendError{Class: Invalid, Err: fmt.Errorf("idempotency key: %w", err)}
	}
	gate := c.gate.Load()
	if gate.State() != gobreaker.StateClosed {
		// Held: the files are read by no send, so a credential replaced
		// meanwhile is looked for here (each file at most once a second).
		c.lookAgain(c.now())
		gate = c.gate.Load()
	}
	_, err := gate.Execute(func() (struct{}, error) {
		err := c.breakerSend(ctx, idempotencyKey, order)
		if se, ok := errors.AsType[*SendError](err); ok && se.Class == Configuration {
			reason := se.Reason()
			if endpointMissing(se.Status) {
				// The likeliest cause, said where the operator looks (the
				// log, /readyz, the console): the path only, never a
				// query that may hold a key.
				reason += fmt.Sprintf(" to POST %s: --mail-url is the service's base URL, and ordermail adds %s to it", c.endpointPath, Path)
			}
			c.misconfig.Store(&reason) // before the gate's state changes and logs it
			se.RetryAfter = c.cfg.BreakerCooldown
		}
		return struct{}{}, err
	})
	return c.held(err, Configuration, ErrMisconfigured)
}

func (c *Client) breakerSend(ctx context.Context, idempotencyKey string, order []byte) error {
	if c.breaker == nil {
		return c.limitedPost(ctx, idempotencyKey, order)
	}
	_, err := c.breaker.Execute(func() (struct{}, error) {
		err := c.limitedPost(ctx, idempotencyKey, order)
		if se, ok := errors.AsType[*SendError](err); ok && (se.Class == Transient || se.Status == 0) && !se.NotAttempted {
			reason := se.Reason() // before the breaker's state changes and logs it
			c.lastFailure.Store(&reason)
		}
		return struct{}{}, err
	})
	return c.held(err, Transient, ErrCircuitOpen)
}

// held turns a breaker's refusal (the gate's or the circuit breaker's) into
// a send held back, of class and cause; any other err is returned as it is.
func (c *Client) held(err error, class Class, cause error) error {
	switch {
	case errors.Is(err, gobreaker.ErrOpenState):
		return &SendError{Class: class, NotAttempted: true, RetryAfter: c.cfg.BreakerCooldown, Err: cause}
	case errors.Is(err, gobreaker.ErrTooManyRequests):
		// Half-open: a probe is deciding right now; ask again soon.
		return &SendError{Class: class, NotAttempted: true, RetryAfter: halfOpenRetry, Err: cause}
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
	now := c.now()
	hc, err := c.client(now)
	if err != nil {
		return &SendError{Class: Configuration, NotAttempted: true, Err: err}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(order))
	if err != nil {
		return &SendError{Class: Permanent, Err: fmt.Errorf("malformed request: %w", withoutURL(err))}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", idempotencyKey)
	secrets, err := c.signer(now)
	if err != nil {
		return &SendError{Class: Configuration, NotAttempted: true, Err: err}
	}
	// creds is the configuration this send carries: read with the
	// credential, last, so that a change it made itself is its own.
	creds := c.creds.Load()
	if c.auth != nil {
		v, gen, err := c.credential(now)
		if err != nil {
			return &SendError{Class: Configuration, NotAttempted: true, Err: err}
		}
		req.Header.Set(c.cfg.AuthHeader, v)
		creds = gen
	}
	if secrets != nil {
		// webhook-id is the idempotency key: the same for every attempt
		// at one confirmation, as the receiver's deduplication expects.
		secrets.SetHeaders(req.Header, idempotencyKey, now, order)
	}
	var conn handshake
	if c.tls {
		req = req.WithContext(conn.watch(ctx))
	}
	resp, err := c.clientFor(ctx, hc, req.Header).Do(req)
	// A refusal is noted as of when it came: a send started before then
	// and accepted after it says nothing of the configuration it refused
	// (refusedAgain).
	answered := c.now()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		err = withoutURL(err)
		if conn.refusedCertificate(err) {
			err = fmt.Errorf("%w: %w", errCertDropped, err)
		}
		class := Transient // no answer: refused, reset, timed out
		if _, config := describe(err); config {
			class = Configuration
			if errors.Is(err, errCertDropped) && c.refusedAgain(idempotencyKey, answered) {
				class = Transient // this order's: a proxy dropping its body, say
			}
		}
		return &SendError{Class: class, Err: err}
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer)) // to the end, so the connection is reused
	resp.Body.Close()
	if success(resp.StatusCode) {
		c.accepted(now)
		return nil
	}
	class := Permanent
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		// Our credentials or signature once a second send is refused so
		// with no send accepted between. The first may be the order's own
		// (a firewall refusing its body): holding every order's sends for
		// it would let each such order stall them all a cooldown; it is
		// retried as a transient failure is. The order's own, known
		// (refusedAgain): counted, retried, dead-lettered in the end.
		class = Transient
		if c.creds.Load() != creds {
			break // of a credential (or signature) replaced since: says nothing of the new
		}
		if own := c.refusedAgain(idempotencyKey, answered); !own && c.denied.Add(1) >= deniedRefusals {
			class = Configuration
		}
	case endpointMissing(resp.StatusCode),
		redirect(resp.StatusCode) && !c.cfg.RetryAllFailures && !c.retryable[resp.StatusCode]:
		// Maybe the order's (a service that answers 404 for a recipient it
		// does not know): tried again, dead-lettered when its attempts run
		// out; never at once, as it may be the URL's. So is a redirect,
		// never followed (it would post the order again, maybe elsewhere,
		// maybe as a GET): an API moved, or an http:// URL a provider
		// sends to https://, answers every order so.
		class = Transient
		// Answered so before, and another accepted since: the order's own,
		// which says nothing of the URL and does not count.
		if own := c.refusedAgain(idempotencyKey, answered); !own && c.missing.note(idempotencyKey, 0, endpointRefusals) >= endpointRefusals {
			class = Configuration // --mail-url names no endpoint: nobody's order's fault
		}
	case c.cfg.RetryAllFailures || c.retryable[resp.StatusCode]:
		class = Transient
	}
	if class == Permanent {
		if again, _ := c.refusedOnce.ContainsOrAdd(idempotencyKey, struct{}{}); !again &&
			c.refusedAlike.note(idempotencyKey, resp.StatusCode, permanentRefusals) >= permanentRefusals {
			// Every order refused alike: an API changed under the URL,
			// not each order wrong; dead-lettering them all would empty
			// the backlog into the dead letters at full speed. The order
			// held is its own once refused again (its probe, say), as a
			// redriven order still wrong is: bad orders in a row hold the
			// sends for a cooldown at most.
			class = Configuration
		}
	}
	se := &SendError{
		Class:       class,
		Status:      resp.StatusCode,
		ContentType: mediaType(resp.Header.Get("Content-Type")),
		BodyBytes:   len(body),
		Code:        answerCode(body, order),
		RetryAfter:  parseRetryAfter(resp.Header.Get("Retry-After"), c.now()),
	}
	if redirect(resp.StatusCode) {
		if to, err := resp.Location(); err == nil {
			se.RedirectTo = to.Scheme + "://" + to.Host
		}
	}
	return se
}

// redirect says whether status sends the request elsewhere.
func redirect(status int) bool { return status >= 300 && status < 400 }

// endpointMissing says whether status says that the URL names no endpoint
// that takes the request: a path mistyped or moved (404), a method the
// endpoint does not take (405), an API version retired (410).
func endpointMissing(status int) bool {
	return status == http.StatusNotFound || status == http.StatusMethodNotAllowed || status == http.StatusGone
}

// deniedRefusals is how many sends answered 401 or 403 in a row (an
// order's own refusals aside), with no send accepted between, make the
// credentials (or the signature) refused rather than an order: the first
// is retried alone; the second, of this order or another, holds the sends.
const deniedRefusals = 2

// endpointRefusals is how many orders answered endpointMissing (or a
// redirect) in a row, with no send accepted between, make the URL wrong rather than an order:
// one may be the order's own (retried alone, it stays one); a typo in
// --mail-url answers every order so, and dead-lettering them all would
// leave the service "ready" while it confirms nothing.
const endpointRefusals = 3

// permanentRefusals is how many orders answered the same permanent status
// in a row, with no send accepted between, make it the service's refusal
// of every request rather than each order's: the ones before are
// dead-lettered as their own (a redrive by reason sends them again), the
// ones after held as a configuration failure is, until a probe is
// accepted.
const permanentRefusals = 10

// refusalRun is the distinct orders answered one status (or one kind of
// answer: status 0) in a row, with no send accepted between, counted up to
// a bound.
type refusalRun struct {
	n      atomic.Int64 // len(keys), read without mu by every accepted send
	mu     sync.Mutex
	status int
	keys   map[string]struct{}
}

// note counts the order key answered status, a run of another status
// starting afresh, and returns the run's length, at most bound.
func (r *refusalRun) note(key string, status, bound int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keys == nil || r.status != status {
		r.keys, r.status = make(map[string]struct{}, bound), status
	}
	if len(r.keys) < bound {
		r.keys[key] = struct{}{}
	}
	r.n.Store(int64(len(r.keys)))
	return len(r.keys)
}

// clear ends the run: a send was accepted.
func (r *refusalRun) clear() {
	if r.n.Load() == 0 { // read first: every send writing it would share its cache line
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = nil
	r.n.Store(0)
}

// accepted notes that a send started at now was accepted.
func (c *Client) accepted(now time.Time) {
	if c.resumed.Load() && c.resumed.CompareAndSwap(true, false) {
		c.log.Info("the email service accepts ordermail's configuration again: sending resumed")
	}
	if c.denied.Load() != 0 { // read first, as refusalRun.clear does
		c.denied.Store(0)
	}
	c.missing.clear()
	c.refusedAlike.clear()
	for {
		last, at := c.lastAccepted.Load(), c.mono(now)
		if at <= last || c.lastAccepted.CompareAndSwap(last, at) {
			return
		}
	}
}

// refusedAgain notes that the send under key was refused at now as a
// configuration is (answered 401 or 403, 404, 405 or 410, a redirect, or its new
// connection dropped after a certificate request), and says whether its
// previous send was too although a send started after that refusal came
// was accepted since, or was known to be the order's own already: then the
// service refuses this order, not ordermail's configuration (a firewall
// refusing its body, a recipient the service will not mail), and holding
// every order's sends for it again would let one order stall them all, a
// cooldown at a time.
func (c *Client) refusedAgain(key string, now time.Time) bool {
	prev, ok := c.refused.Get(key)
	// Once the order's own, always: retried in a quiet hour, with no send
	// accepted since its last refusal, it is still its own.
	own := ok && (prev.own || c.lastAccepted.Load() > prev.at)
	c.refused.Add(key, refusal{at: c.mono(now), own: own})
	return own
}

// refusal is an order's last refusal as a configuration is refused: when,
// and whether it is known to be the order's own (refusedAgain).
type refusal struct {
	at  int64 // mono
	own bool
}

// mono is t on the monotonic clock, in nanoseconds since the client was
// made (the wall clock's where t carries no monotonic reading).
func (c *Client) mono(t time.Time) int64 { return int64(t.Sub(c.epoch)) }

// mediaType is the media type of a Content-Type, or "" when it is malformed
// or too long to be one.
func mediaType(v string) string {
	mt, _, err := mime.ParseMediaType(v)
	if err != nil || len(mt) > 64 {
		return ""
	}
	return mt
}

// codePattern is what an error code looks like: a letter, then letters,
// digits, '_', ':' or '-'. Free text (which may quote the order) does not
// match it, nor does a name or an address with a dot in it ("jane.doe"),
// nor a number (see longNumber).
var codePattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_:-]{0,63}$`)

// longNumber is a run of digits longer than a code's: a card, phone or
// order number echoed back.
var longNumber = regexp.MustCompile(`[0-9]{4}`)

// answerCode is the answer's top-level JSON "code", else "error", string
// when it matches codePattern and echoes nothing of the order (echoes): a
// provider's "unknown_jdoe" for the order's jdoe@... is customer data, not
// a code. A real code that happens to share a word with the order (its
// "paid", say) is dropped too: a reason less precise, never data kept.
func answerCode(body, order []byte) string {
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		return ""
	}
	for _, name := range []string{"code", "error"} {
		var s string
		if json.Unmarshal(fields[name], &s) == nil && codePattern.MatchString(s) && !longNumber.MatchString(s) {
			if echoes(s, order) {
				return ""
			}
			return s
		}
	}
	return ""
}

// echoes says whether code repeats a word of the order's string values
// (runs of letters and digits, whatever the case, accents taken off as a
// provider's ASCII code would: "Zoë" is zoe): one of four characters or
// more anywhere in it, its separators ('_', ':', '-') and case aside
// ("recipient_annsmith", "JOHNunknown"); one of three as a word of it
// (codeWords: "unknown_ann", "ANNunknown", not "incomplete" for the
// order's ".com"). Names shorter than that, and letters no accent taken
// off makes ASCII ("ß", "ø"), are not told from codes.
func echoes(code string, order []byte) bool {
	joined := strings.ToLower(strings.NewReplacer("_", "", ":", "", "-", "").Replace(code))
	short := codeWords(code)
	found := false
	for _, v := range orderStrings(order) {
		v = unaccent(v)
		for _, w := range strings.FieldsFunc(strings.ToLower(v), func(r rune) bool {
			return !unicode.IsLetter(r) && !unicode.IsDigit(r)
		}) {
			switch {
			case len(w) >= 4 && strings.Contains(joined, w), len(w) == 3 && hasLetter(w) && slices.Contains(short, w):
				found = true
			}
		}
	}
	return found
}

// orderStrings are the string values of the order's JSON, at any depth;
// the whole order when it is not JSON (the service was sent it all the
// same).
func orderStrings(order []byte) []string {
	var doc any
	if json.Unmarshal(order, &doc) != nil {
		return []string{string(order)}
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			out = append(out, v)
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	return out
}

// unaccent takes the accents off letters: "Zoë" is "Zoe". A chain keeps
// buffers of its own: one per call, as sends fail at once on many
// goroutines.
func unaccent(s string) string {
	out, _, err := transform.String(transform.Chain(norm.NFD, runes.Remove(runes.In(unicode.Mn)), norm.NFC), s)
	if err != nil {
		return s
	}
	return out
}

// shownPath is endpoint's path as messages may show it: the segments that
// look like keys masked (redact.MailURL), never the query.
func shownPath(endpoint string) string {
	u, err := url.Parse(redact.MailURL(endpoint))
	if err != nil {
		return Path
	}
	return u.EscapedPath()
}

// hasLetter says whether w has a letter: a three-digit word of the order
// (a house number) is no name, and a code's E550 repeats none.
func hasLetter(w string) bool { return strings.IndexFunc(w, unicode.IsLetter) >= 0 }

// codeWords are the lower-cased three-character pieces of a code that
// start and end where a word of it may: at its ends, at its separators,
// and where case changes or letters meet digits ("unknown_ann",
// "ANNunknown", "unknownAnn" each give ann; "incomplete" gives none).
func codeWords(code string) []string {
	kind := func(b byte) int {
		switch {
		case b >= 'a' && b <= 'z':
			return 0
		case b >= 'A' && b <= 'Z':
			return 1
		}
		return 2
	}
	var chars []byte
	var edge []bool // edge[i]: a word may start or end before chars[i]
	sep := true
	for i := 0; i < len(code); i++ {
		b := code[i]
		if b == '_' || b == ':' || b == '-' {
			sep = true
			continue
		}
		edge = append(edge, sep || len(chars) > 0 && kind(chars[len(chars)-1]) != kind(b))
		chars = append(chars, b)
		sep = false
	}
	edge = append(edge, true)
	var words []string
	for i := 0; i+3 <= len(chars); i++ {
		if edge[i] && edge[i+3] {
			words = append(words, strings.ToLower(string(chars[i:i+3])))
		}
	}
	return words
}

// parseRetryAfter reads delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	secs, err := strconv.Atoi(v)
	if errors.Is(err, strconv.ErrRange) && secs > 0 {
		err = nil // past an int: Atoi gives the largest, which the cap below brings down
	}
	if err == nil && secs > 0 {
		// Past what a Duration holds, multiplying would wrap around: the
		// longest one asks for more than any policy waits anyway.
		return time.Duration(min(secs, int(math.MaxInt64/int64(time.Second)))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
