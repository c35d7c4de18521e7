package mailer_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"io"
	"log"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newMock(t *testing.T, cfg mockmail.Config, opts ...func(*mailer.Config)) (*mockmail.Server, *mailer.Client) {
	t.Helper()
	m, err := mockmail.New(cfg)
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	mc := mailer.Config{URL: srv.URL, Timeout: 5 * time.Second}
	for _, o := range opts {
		o(&mc)
	}
	c, err := mailer.New(mc, quiet)
	require.NoError(t, err)
	return m, c
}

func sendErr(t *testing.T, err error) *mailer.SendError {
	t.Helper()
	var se *mailer.SendError
	require.ErrorAs(t, err, &se)
	return se
}

func TestSendSuccessAndIdempotentReplay(t *testing.T) {
	t.Parallel()
	m, c := newMock(t, mockmail.Config{})
	ctx := context.Background()
	require.NoError(t, c.Send(ctx, "confirmation:order_1", []byte(`{"email":"a@example.com"}`)))
	require.NoError(t, c.Send(ctx, "confirmation:order_1", []byte(`{"email":"a@example.com"}`)))
	require.NoError(t, c.Send(ctx, "confirmation:order_2", []byte(`{"email":"b@example.com"}`)))
	assert.Equal(t, mockmail.Stats{Requests: 3, Deliveries: 2, DuplicateRequests: 1}, m.Stats())
	assert.Equal(t, map[string]int{"confirmation:order_1": 2, "confirmation:order_2": 1}, m.Delivered())
}

func TestSendFailureCarriesStatus(t *testing.T) {
	t.Parallel()
	m, c := newMock(t, mockmail.Config{FailRate: 1, FailStatus: 406})
	err := c.Send(context.Background(), "k", []byte(`{}`))
	se := sendErr(t, err)
	assert.Equal(t, http.StatusNotAcceptable, se.Status)
	assert.Equal(t, mailer.Permanent, se.Class, "406 is not in the default retryable set")
	assert.Contains(t, err.Error(), "406")
	assert.Equal(t, mockmail.Stats{Requests: 1, Failures: 1}, m.Stats())
}

func TestSendNotJSONIsRejectedByMock(t *testing.T) {
	t.Parallel()
	_, c := newMock(t, mockmail.Config{})
	se := sendErr(t, c.Send(context.Background(), "k", []byte(`nope`)))
	assert.Equal(t, http.StatusBadRequest, se.Status)
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	for give, want := range map[string]time.Duration{
		"7": 7 * time.Second,
		// Past what a Duration holds: the longest one, never a wrap-around
		// to a short or negative wait.
		"10000000000":          time.Duration(math.MaxInt64/int64(time.Second)) * time.Second,
		"18446744074":          time.Duration(math.MaxInt64/int64(time.Second)) * time.Second,
		"99999999999999999999": time.Duration(math.MaxInt64/int64(time.Second)) * time.Second, // past an int
		"-5":                   0,
		// A date gone by: no wait, never a negative one.
		"Wed, 21 Oct 2015 07:28:00 GMT": 0,
	} {
		_, c := newMock(t, mockmail.Config{Script: func(string, int) mockmail.Reply {
			return mockmail.Reply{Status: http.StatusTooManyRequests, RetryAfter: give}
		}})
		se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
		assert.Equal(t, want, se.RetryAfter, "Retry-After: %s", give)
		assert.Equal(t, mailer.Transient, se.Class)
	}
}

func TestHangingServiceIsBoundedByTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c, err := mailer.New(mailer.Config{URL: srv.URL, Timeout: 100 * time.Millisecond}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
	assert.Equal(t, mailer.Transient, se.Class)
	assert.Zero(t, se.Status, "a timeout is not an answer")
	assert.Equal(t, "no answer: timeout", se.Reason())

	// Our own cancellation is not a failure of the service.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = c.Send(ctx, "k", []byte(`{}`))
	assert.ErrorIs(t, err, context.Canceled)
	assert.False(t, errors.As(err, new(*mailer.SendError)))
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give mailer.Config
		want string
	}{
		{give: mailer.Config{}, want: "mail-url: required"},
		{give: mailer.Config{URL: "localhost:9080"}, want: "mail-url"},
		{give: mailer.Config{URL: "ftp://x"}, want: "mail-url"},
		{give: mailer.Config{URL: "https://h:99999"}, want: "port 99999 is not between 1 and 65535"},
		{give: mailer.Config{URL: "http://h:0/"}, want: "port 0 is not between 1 and 65535"},
		{give: mailer.Config{URL: "http://:9080"}, want: "not an http(s) URL with a host"},
		{give: mailer.Config{URL: "http://x", Timeout: -1}, want: "mail-timeout"},
		{give: mailer.Config{URL: "http://x", RetryStatuses: []int{200}}, want: "retry-statuses: 200"},
		{give: mailer.Config{URL: "http://x", RetryStatuses: []int{99}}, want: "retry-statuses: 99"},
		{give: mailer.Config{URL: "http://x", RetryStatuses: []int{202}}, want: "retry-statuses: 202"},
		{give: mailer.Config{URL: "http://x", RetryStatuses: []int{503, 204}}, want: "retry-statuses: 204"},
		{give: mailer.Config{URL: "http://x", RetryStatuses: []int{302, 307, 503}}},
		{give: mailer.Config{URL: "http://x", Conns: -1}, want: "mail-conns: -1"},
		{give: mailer.Config{URL: "http://user:hunter2@/x?token=s3cret"}, want: `mail-url: "http://user:REDACTED@/x?token=REDACTED"`},
		{give: mailer.Config{URL: "http://user:hunter2@host/%zz"}, want: `mail-url: "http://REDACTED@host/%zz"`},
		{give: mailer.Config{URL: "http://x", SendRate: -1}, want: "send-rate"},
		{give: mailer.Config{URL: "http://x", SendRate: math.NaN()}, want: "send-rate: NaN"},
		{give: mailer.Config{URL: "http://x", SendRate: math.Inf(1)}, want: "send-rate: +Inf"},
		{give: mailer.Config{URL: "http://x", SendRate: math.Inf(-1)}, want: "send-rate: -Inf"},
		{give: mailer.Config{URL: "http://x", SendRate: 0.5}},
		{give: mailer.Config{URL: "http://x", BreakerFailures: -1}, want: "breaker-failures"},
		{give: mailer.Config{URL: "http://localhost:9080"}},
	}
	for _, tt := range tests {
		err := tt.give.Validate()
		if tt.want == "" {
			assert.NoError(t, err, "%+v", tt.give)
		} else {
			require.ErrorContains(t, err, tt.want, "%+v", tt.give)
			assert.NotContains(t, err.Error(), "hunter2")
			assert.NotContains(t, err.Error(), "s3cret")
		}
	}
}

func TestMockConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give mockmail.Config
		want string
	}{
		{give: mockmail.Config{FailRate: 1.5}, want: "fail-rate"},
		{give: mockmail.Config{FailRate: -0.1}, want: "fail-rate"},
		{give: mockmail.Config{FailRate: math.NaN()}, want: "fail-rate: NaN"},
		{give: mockmail.Config{FailRate: math.Inf(1)}, want: "fail-rate: +Inf"},
		{give: mockmail.Config{FailRate: math.Inf(-1)}, want: "fail-rate: -Inf"},
		{give: mockmail.Config{FailStatus: 200}, want: "fail-status"},
		{give: mockmail.Config{FailStatus: 204}, want: "fail-status: 204 is not an HTTP status of a failure"},
		{give: mockmail.Config{FailStatus: 103}, want: "fail-status"},
		{give: mockmail.Config{FailStatus: 302}},
		{give: mockmail.Config{Latency: -time.Second}, want: "latency"},
		{give: mockmail.Config{FailRate: 1}},
		{give: mockmail.Config{FailRate: 0.3}},
	}
	for _, tt := range tests {
		err := tt.give.Validate()
		if tt.want == "" {
			assert.NoError(t, err, "%+v", tt.give)
		} else {
			assert.ErrorContains(t, err, tt.want, "%+v", tt.give)
		}
	}
}

func TestMockFailRateIsRoughlyHonoured(t *testing.T) {
	t.Parallel()
	m, c := newMock(t, mockmail.Config{FailRate: 0.5, Seed: 42})
	for i := range 200 {
		_ = c.Send(context.Background(), "k"+string(rune('a'+i%26))+string(rune('a'+i/26)), []byte(`{}`))
	}
	st := m.Stats()
	assert.Equal(t, 200, st.Requests)
	assert.InDelta(t, 100, st.Failures, 30)
	assert.Equal(t, st.Requests, st.Failures+st.Deliveries)
}

func TestFetchStats(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	c, err := mailer.New(mailer.Config{URL: srv.URL}, quiet)
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "k", []byte(`{}`)))
	st, err := mockmail.FetchStats(context.Background(), srv.URL)
	require.NoError(t, err)
	assert.Equal(t, mockmail.Stats{Requests: 1, Deliveries: 1}, st)
}

func TestClassification(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status    int
		retryAll  bool
		statuses  []int
		wantClass mailer.Class
	}{
		{408, false, nil, mailer.Transient}, {409, false, nil, mailer.Transient}, {425, false, nil, mailer.Transient},
		{429, false, nil, mailer.Transient}, {500, false, nil, mailer.Transient}, {502, false, nil, mailer.Transient},
		{503, false, nil, mailer.Transient}, {504, false, nil, mailer.Transient},
		{400, false, nil, mailer.Permanent}, {406, false, nil, mailer.Permanent},
		// One answer saying the URL names no endpoint may be the order's:
		// tried again (several in a row are the URL's: config_test.go).
		{404, false, nil, mailer.Transient}, {405, false, nil, mailer.Transient}, {410, false, nil, mailer.Transient},
		// Not Implemented and HTTP Version Not Supported: every request
		// alike. Every other 5xx is an outage, the service's or a
		// gateway's (a CDN's 520-524, 529, 598, 599): tried again.
		{501, false, nil, mailer.Permanent}, {505, false, nil, mailer.Permanent},
		{507, false, nil, mailer.Transient}, {520, false, nil, mailer.Transient}, {522, false, nil, mailer.Transient},
		{524, false, nil, mailer.Transient}, {529, false, nil, mailer.Transient}, {599, false, nil, mailer.Transient},
		{522, false, []int{503}, mailer.Permanent},
		{406, true, nil, mailer.Transient}, // the sample: every failure is retried
		{406, false, []int{406}, mailer.Transient},
		{503, false, []int{406}, mailer.Permanent},
	}
	for _, tt := range tests {
		_, c := newMock(t, mockmail.Config{FailRate: 1, FailStatus: tt.status}, func(c *mailer.Config) {
			c.RetryAllFailures = tt.retryAll
			c.RetryStatuses = tt.statuses
		})
		se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
		assert.Equal(t, tt.wantClass, se.Class, "%d retryAll=%v statuses=%v", tt.status, tt.retryAll, tt.statuses)
	}
}

func TestConnectionRefusedIsTransient(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c, err := mailer.New(mailer.Config{URL: url}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
	assert.Equal(t, mailer.Transient, se.Class)
	assert.Zero(t, se.Status)
}

func TestBreakerOpensAndCloses(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	down.Store(true)
	script := mockmail.Config{Script: func(string, int) mockmail.Reply {
		if down.Load() {
			return mockmail.Reply{Status: http.StatusServiceUnavailable}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}}
	// A cooldown no loaded machine outlasts while the sends are counted.
	m, c := newMock(t, script, func(c *mailer.Config) { c.BreakerFailures = 3; c.BreakerCooldown = time.Hour })
	held := 0
	for i := range 20 {
		se := sendErr(t, c.Send(context.Background(), fmt.Sprint("k", i), []byte(`{}`)))
		if se.NotAttempted {
			held++
			assert.ErrorIs(t, se, mailer.ErrCircuitOpen)
			assert.Equal(t, time.Hour, se.RetryAfter)
		}
	}
	assert.Equal(t, "open", c.BreakerState())
	assert.Equal(t, 3, m.Stats().Requests, "after 3 failures the service is left alone")
	assert.Equal(t, 17, held)
	// What the timer asks before a sweep: all held.
	isHeld, probing := c.HeldBack()
	assert.True(t, isHeld && !probing, "open: held")

	// A short cooldown, on another client: half-open once it is over,
	// then one probe.
	_, c = newMock(t, script, func(c *mailer.Config) { c.BreakerFailures = 3; c.BreakerCooldown = 50 * time.Millisecond })
	for i := range 3 {
		c.Send(context.Background(), fmt.Sprint("k", i), []byte(`{}`))
	}
	require.Eventually(t, func() bool { isHeld, probing = c.HeldBack(); return !isHeld && probing },
		10*time.Second, 5*time.Millisecond, "half-open after the cooldown; state %v", later.Value(func() any { return c.BreakerState() }))

	// The service is back: the probe goes through, and the breaker closes.
	down.Store(false)
	require.Eventually(t, func() bool { return c.Send(context.Background(), "after", []byte(`{}`)) == nil },
		10*time.Second, 10*time.Millisecond, "a send went through; state %v", later.Value(func() any { return c.BreakerState() }))
	assert.Equal(t, "closed", c.BreakerState())
	isHeld, probing = c.HeldBack()
	assert.False(t, isHeld || probing, "closed: sends go out")
}

func TestPermanentAnswersDoNotOpenTheBreaker(t *testing.T) {
	t.Parallel()
	m, c := newMock(t, mockmail.Config{FailRate: 1, FailStatus: 400}, func(c *mailer.Config) { c.BreakerFailures = 2 })
	for i := range 5 {
		se := sendErr(t, c.Send(context.Background(), fmt.Sprint("k", i), []byte(`{}`)))
		assert.False(t, se.NotAttempted)
	}
	assert.Equal(t, 5, m.Stats().Requests)
	assert.Equal(t, "closed", c.BreakerState())
}

// A 5xx taken as permanent (--retry-statuses leaves it out) still says the
// service, or a gateway before it, is failing: it counts towards opening the
// breaker, which holds the sends rather than dead-letter every order.
func TestA5xxOpensTheBreakerWhateverItsClass(t *testing.T) {
	t.Parallel()
	m, c := newMock(t, mockmail.Config{FailRate: 1, FailStatus: 522}, func(c *mailer.Config) {
		c.BreakerFailures = 2
		c.BreakerCooldown = time.Hour
		c.RetryStatuses = []int{503}
	})
	for i := range 5 {
		c.Send(context.Background(), fmt.Sprint("k", i), []byte(`{}`))
	}
	assert.Equal(t, 2, m.Stats().Requests, "after 2 failures the service is left alone")
	assert.Equal(t, "open", c.BreakerState())
}

func TestRateLimitHoldsSendsBack(t *testing.T) {
	t.Parallel()
	m, c := newMock(t, mockmail.Config{}, func(c *mailer.Config) { c.SendRate = 0.001; c.SendBurst = 2 })
	require.NoError(t, c.Send(context.Background(), "a", []byte(`{}`)))
	require.NoError(t, c.Send(context.Background(), "b", []byte(`{}`)))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := c.Send(ctx, "c", []byte(`{}`))
	require.Error(t, err, "the third send waits for a token it won't get for ~1000s")
	assert.Equal(t, 2, m.Stats().Requests)
}

// serve runs h and counts the requests it gets.
func serve(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		io.Copy(io.Discard, r.Body)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &requests
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give        int
		statuses    []int
		wantClasses []mailer.Class
	}{
		// Each order's may be its own; three in a row are the URL's.
		{give: 301, wantClasses: []mailer.Class{mailer.Transient, mailer.Transient, mailer.Configuration}},
		{give: 302, wantClasses: []mailer.Class{mailer.Transient, mailer.Transient, mailer.Configuration}},
		{give: 303, wantClasses: []mailer.Class{mailer.Transient, mailer.Transient, mailer.Configuration}},
		{give: 307, wantClasses: []mailer.Class{mailer.Transient, mailer.Transient, mailer.Configuration}},
		{give: 308, wantClasses: []mailer.Class{mailer.Transient, mailer.Transient, mailer.Configuration}},
		{give: 307, statuses: []int{307, 503}, wantClasses: []mailer.Class{mailer.Transient, mailer.Transient, mailer.Transient}},
	}
	for _, tt := range tests {
		// A redirect to itself: following it would loop.
		srv, requests := serve(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, mailer.Path+"?sig=s3cret", tt.give)
		})
		c, err := mailer.New(mailer.Config{URL: srv.URL, RetryStatuses: tt.statuses}, quiet)
		require.NoError(t, err)
		var classes []mailer.Class
		for i := range 3 {
			se := sendErr(t, c.Send(context.Background(), fmt.Sprintf("k%d", i), []byte(`{}`)))
			assert.Equal(t, tt.give, se.Status)
			assert.False(t, se.NotAttempted)
			assert.Equal(t, srv.URL, se.RedirectTo, "the target's scheme and host, not its path or query")
			classes = append(classes, se.Class)
		}
		assert.Equal(t, tt.wantClasses, classes, "%d statuses=%v", tt.give, tt.statuses)
		assert.Equal(t, int32(3), requests.Load(), "one post per send for %d", tt.give)
	}
}

func TestAny2xxIsSuccess(t *testing.T) {
	t.Parallel()
	for _, give := range []int{200, 201, 202, 204, 299} {
		srv, requests := serve(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(give) })
		c, err := mailer.New(mailer.Config{URL: srv.URL}, quiet)
		require.NoError(t, err)
		assert.NoError(t, c.Send(context.Background(), "k", []byte(`{}`)), "%d", give)
		assert.Equal(t, int32(1), requests.Load())
	}
}

func TestUntrustedCertificateHoldsSends(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake errors we cause
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: srv.URL, BreakerFailures: 1, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
	// The configuration's fault, not the order's: no attempt is counted.
	assert.Equal(t, mailer.Configuration, se.Class)
	assert.Zero(t, se.Status)
	assert.False(t, se.NotAttempted, "a request was made")
	assert.Equal(t, time.Hour, se.RetryAfter, "held until the next probe")
	assert.Equal(t, "tls: certificate signed by unknown authority", se.Reason())
	assert.Equal(t, "config failure: tls: certificate signed by unknown authority", se.Error())
	_, ok := errors.AsType[x509.UnknownAuthorityError](se)
	assert.True(t, ok, "the cause is kept: %v", se.Err)
	assert.Equal(t, "tls: certificate signed by unknown authority", c.Misconfigured())

	// Held from now on, without a request, until a probe after the cooldown.
	se = sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
	assert.True(t, se.NotAttempted)
	assert.Equal(t, mailer.Configuration, se.Class)
	assert.ErrorIs(t, se, mailer.ErrMisconfigured)
	assert.Equal(t, "closed", c.BreakerState(), "a refused configuration is no outage")
}

// An https:// URL on a port that speaks plain HTTP fails every order's send
// the same way: the configuration's fault, which holds the sends and says
// so, not an outage each order retries until it is dead-lettered.
func TestAnHTTPSURLOnAPlainPortHoldsSends(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: strings.Replace(srv.URL, "http://", "https://", 1), BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class, "%v", se)
	assert.Contains(t, c.Misconfigured(), "does not speak TLS on that port")
}

func TestCheckHeaderValue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		want error
	}{
		{give: "confirmation:order_1"},
		{give: ""},
		{give: "tab\tinside"},
		{give: "café"},
		{give: "a\rb", want: mailer.ErrHeaderValue},
		{give: "a\nb", want: mailer.ErrHeaderValue},
		{give: "a\r\nX-Injected: 1", want: mailer.ErrHeaderValue},
		{give: "a\x00b", want: mailer.ErrHeaderValue},
		{give: "a\x7fb", want: mailer.ErrHeaderValue},
		{give: "a\x1bb", want: mailer.ErrHeaderValue},
	}
	for _, tt := range tests {
		assert.ErrorIs(t, mailer.CheckHeaderValue(tt.give), tt.want, "%q", tt.give)
	}
}

func TestInvalidKeyMakesNoRequestAndSparesTheBreaker(t *testing.T) {
	t.Parallel()
	m, c := newMock(t, mockmail.Config{}, func(c *mailer.Config) { c.BreakerFailures = 3 })
	for i := range 12 {
		key := fmt.Sprintf("confirmation:order_%d%s", i, []string{"\r", "\n", "\x00", "\x7f"}[i%4])
		se := sendErr(t, c.Send(context.Background(), key, []byte(`{"email":"jane@example.com"}`)))
		assert.Equal(t, mailer.Invalid, se.Class)
		assert.ErrorIs(t, se, mailer.ErrHeaderValue)
		assert.True(t, strings.HasPrefix(se.Reason(), "invalid: idempotency key: "), se.Reason())
	}
	assert.Equal(t, 0, m.Stats().Requests)
	assert.Equal(t, "closed", c.BreakerState())
	require.NoError(t, c.Send(context.Background(), "confirmation:order_ok", []byte(`{}`)))
}

func TestCancellationSparesTheBreaker(t *testing.T) {
	t.Parallel()
	m, c := newMock(t, mockmail.Config{}, func(c *mailer.Config) { c.BreakerFailures = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 3 {
		assert.ErrorIs(t, c.Send(ctx, "k", []byte(`{}`)), context.Canceled)
	}
	assert.Equal(t, "closed", c.BreakerState())
	assert.Equal(t, 0, m.Stats().Requests)
}

func TestErrorsCarryNoCustomerData(t *testing.T) {
	t.Parallel()
	const answer = `{"code":"card_declined","error":"card 4111 1111 1111 1111 of jane@example.com declined",` +
		`"order":{"email":"jane@example.com","card":"4111111111111111"}}`
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusUnprocessableEntity)
		io.WriteString(w, answer)
	})
	c, err := mailer.New(mailer.Config{URL: srv.URL}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k", []byte(`{"email":"jane@example.com","card":"4111111111111111"}`)))
	assert.Equal(t, http.StatusUnprocessableEntity, se.Status)
	assert.Equal(t, "application/json", se.ContentType)
	assert.Equal(t, len(answer), se.BodyBytes)
	assert.Equal(t, "card_declined", se.Code)
	assert.Equal(t, fmt.Sprintf("answered 422 Unprocessable Entity (application/json, %d bytes, code card_declined)", len(answer)), se.Reason())
	for _, text := range []string{se.Error(), se.Reason()} {
		assert.NotContains(t, text, "jane")
		assert.NotContains(t, text, "4111")
	}
}

func TestAnswerCode(t *testing.T) {
	t.Parallel()
	// The service answers the cases' requests in turn, each with its
	// answer; every case sends one order (under one key: refusals of many
	// keys alike would be taken for the URL's).
	const order = `{"email":"jdoe@example.com","name":"Ann Smith","items":[{"name":"Swedish Meatballs"}],"gift_to":"Zoë Brontë","address":"550 Main St"}`
	var answers []string
	var next atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := next.Add(1) - 1
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, answers[i])
	}))
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: srv.URL}, quiet)
	require.NoError(t, err)
	tests := []struct {
		give string
		want string
	}{
		{give: `{"code":"overloaded"}`, want: "overloaded"},
		{give: `{"error":"rate_limited"}`, want: "rate_limited"},
		{give: `{"code":"E42","error":"other"}`, want: "E42"},
		{give: `{"code":"has space","error":"mail:quota-12"}`, want: "mail:quota-12"},
		{give: `{"error":"4111111111111111"}`},
		{give: `{"code":"jane.doe"}`},
		{give: `{"error":"recipient:ann.smith"}`},
		{give: `{"code":"order-1234"}`},
		{give: `{"code":"_x"}`},
		{give: `{"error":"Service Unavailable"}`},
		{give: `{"error":"jane@example.com"}`},
		{give: `{"code":12}`},
		{give: `{"Code":"case_matters"}`},
		{give: `{"data":{"code":"nested"}}`},
		{give: `{"code":"` + strings.Repeat("x", 65) + `"}`},
		{give: `["code"]`},
		{give: `not json`},
		// Codes echoing a word of the order's values: customer data.
		{give: `{"code":"unknown_jdoe"}`},
		{give: `{"error":"recipientSmith"}`},
		{give: `{"code":"ANN"}`},
		{give: `{"code":"bad:meatballs","error":"invalid"}`},
		{give: `{"code":"recipient_annsmith"}`},
		{give: `{"code":"SMITHunknown"}`},
		{give: `{"code":"no-jdoeexample"}`},
		{give: `{"code":"ANNunknown"}`},
		{give: `{"code":"unknownANN"}`},
		{give: `{"code":"AnnUnknown"}`},
		{give: `{"code":"zoe_unknown"}`}, // the accents a provider took off
		{give: `{"code":"BRONTEunknown"}`},
		// Words of the order's names, a three-letter word of it inside
		// another, or shorter than three: kept.
		{give: `{"code":"invalid_email"}`, want: "invalid_email"},
		{give: `{"code":"incomplete"}`, want: "incomplete"},
		{give: `{"code":"noZoest"}`, want: "noZoest"},
		{give: `{"code":"E550"}`, want: "E550"}, // the order's house number is no name
		{give: `{"code":"jd"}`, want: "jd"},
	}
	for _, tt := range tests {
		answers = append(answers, tt.give)
	}
	for _, tt := range tests {
		se := sendErr(t, c.Send(context.Background(), "k", []byte(order)))
		assert.Equal(t, tt.want, se.Code, "%s", tt.give)
		assert.Equal(t, len(tt.give), se.BodyBytes)
	}
}

func TestNoAnswerReasonHidesTheURL(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	host := srv.Listener.Addr().String()
	srv.Close()
	c, err := mailer.New(mailer.Config{URL: "http://user:hunter2@" + host + "/?token=s3cret"}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
	assert.Equal(t, mailer.Transient, se.Class)
	assert.Equal(t, "no answer: connection refused", se.Reason())
	assert.ErrorIs(t, se, syscall.ECONNREFUSED)
	for _, text := range []string{se.Error(), se.Reason(), se.Err.Error()} {
		assert.NotContains(t, text, "hunter2")
		assert.NotContains(t, text, "s3cret")
	}
}

func TestBaseURLQueryIsKept(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request) { got.Store(r.URL.String()) })
	c, err := mailer.New(mailer.Config{URL: srv.URL + "/api/?key=abc"}, quiet)
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "k", []byte(`{}`)))
	assert.Equal(t, "/api/sendConfirmation?key=abc", got.Load())
}

func TestRedactedURL(t *testing.T) {
	t.Parallel()
	cfg := mailer.Config{URL: "https://user:hunter2@mail.example.com/v1?api_key=s3cret&region=eu"}
	assert.Equal(t, "https://user:REDACTED@mail.example.com/v1?api_key=REDACTED&region=REDACTED", cfg.RedactedURL())
}

func TestConnectionsAreReused(t *testing.T) {
	t.Parallel()
	var conns, n atomic.Int32
	answer := strings.Repeat("x", 8<<10) // bigger than one read: drained, not abandoned
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if n.Add(1)%2 == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		io.WriteString(w, answer)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: srv.URL, Conns: 16}, quiet)
	require.NoError(t, err)

	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 50 {
				err := c.Send(context.Background(), fmt.Sprint("k", g, "-", i), []byte(`{}`))
				// assert, not require: this is not the test's goroutine.
				if se := (*mailer.SendError)(nil); err != nil && assert.ErrorAs(t, err, &se) {
					assert.Equal(t, http.StatusServiceUnavailable, se.Status)
				}
			}
		})
	}
	wg.Wait()
	assert.Equal(t, int32(800), n.Load())
	assert.LessOrEqual(t, conns.Load(), int32(16))
}

func TestModuleStartsAndStops(t *testing.T) {
	t.Parallel()
	var c *mailer.Client
	app := fxtest.New(t,
		fx.Supply(mailer.Config{URL: "http://localhost:9080"}, quiet),
		mailer.Module,
		fx.Populate(&c),
	)
	app.RequireStart().RequireStop()
	assert.NotNil(t, c)
}

// TestTheBreakersLinesSayWhatFailed: the line of a breaker that opens says
// what the last send got (503 and a refused connection look alike
// otherwise), a probe that fails says so at most every 5 minutes, and the
// line of one that closes says how long sends were held.
func TestTheBreakersLinesSayWhatFailed(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	down.Store(true)
	m, err := mockmail.New(mockmail.Config{Script: func(string, int) mockmail.Reply {
		if down.Load() {
			return mockmail.Reply{Status: http.StatusServiceUnavailable}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	var logs syncbuf.Buffer
	c, err := mailer.New(mailer.Config{URL: srv.URL, BreakerFailures: 2, BreakerCooldown: 20 * time.Millisecond},
		slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	sent := 0
	send := func() error { sent++; return c.Send(context.Background(), fmt.Sprint("k", sent), []byte(`{}`)) }
	send()
	send()
	require.Len(t, logs.Lines("circuit breaker open"), 1, logs.String())
	assert.Contains(t, logs.Lines("circuit breaker open")[0], `last_failure="answered 503 Service Unavailable`)
	// Probes, each failing, for a while: said once, not each time.
	for range 5 {
		require.Eventually(t, func() bool { _, probing := c.HeldBack(); return probing }, 10*time.Second, 5*time.Millisecond)
		send()
	}
	assert.Len(t, logs.Lines("circuit breaker still open"), 0, "within 5 minutes of the opening line: %s", logs.String())
	down.Store(false)
	require.Eventually(t, func() bool { return send() == nil }, 10*time.Second, 5*time.Millisecond)
	assert.Len(t, logs.Lines("circuit breaker closed", "held_for="), 1, logs.String())
}

// Resends is the client's classing of an answer of no particular order.
func TestResendsIsHowTheClientClassesAnAnswer(t *testing.T) {
	var def mailer.Config
	assert.True(t, def.Resends(503))
	assert.False(t, def.Resends(406))
	assert.True(t, def.Resends(522), "a CDN's 5xx")
	assert.False(t, def.Resends(501))
	assert.True(t, mailer.Config{RetryStatuses: []int{406}}.Resends(406))
	assert.False(t, mailer.Config{RetryStatuses: []int{406}}.Resends(503))
	all := mailer.Config{RetryAllFailures: true}
	assert.True(t, all.Resends(406))
	assert.False(t, all.Resends(401), "a refusal of the credentials is the configuration's")
	assert.False(t, all.Resends(403), "so is a refusal of the signature")
	assert.False(t, all.Resends(200))
}
