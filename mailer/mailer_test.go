package mailer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	_, c := newMock(t, mockmail.Config{Script: func(string, int) mockmail.Reply {
		return mockmail.Reply{Status: http.StatusTooManyRequests, RetryAfter: "7"}
	}})
	se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
	assert.Equal(t, 7*time.Second, se.RetryAfter)
	assert.Equal(t, mailer.Transient, se.Class)
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
		{give: mailer.Config{URL: "http://x", Timeout: -1}, want: "mail-timeout"},
		{give: mailer.Config{URL: "http://x", RetryStatuses: []int{200}}, want: "retry-statuses: 200"},
		{give: mailer.Config{URL: "http://x", RetryStatuses: []int{99}}, want: "retry-statuses: 99"},
		{give: mailer.Config{URL: "http://x", SendRate: -1}, want: "send-rate"},
		{give: mailer.Config{URL: "http://x", BreakerFailures: -1}, want: "breaker-failures"},
		{give: mailer.Config{URL: "http://localhost:9080"}},
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

func TestMockConfigValidate(t *testing.T) {
	t.Parallel()
	assert.ErrorContains(t, mockmail.Config{FailRate: 1.5}.Validate(), "fail-rate")
	assert.ErrorContains(t, mockmail.Config{FailStatus: 200}.Validate(), "fail-status")
	assert.ErrorContains(t, mockmail.Config{Latency: -time.Second}.Validate(), "latency")
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
		{400, false, nil, mailer.Permanent}, {404, false, nil, mailer.Permanent}, {406, false, nil, mailer.Permanent},
		{501, false, nil, mailer.Permanent},
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
	m, c := newMock(t, mockmail.Config{Script: func(string, int) mockmail.Reply {
		if down.Load() {
			return mockmail.Reply{Status: http.StatusServiceUnavailable}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}}, func(c *mailer.Config) { c.BreakerFailures = 3; c.BreakerCooldown = 50 * time.Millisecond })

	held := 0
	for i := range 20 {
		se := sendErr(t, c.Send(context.Background(), fmt.Sprint("k", i), []byte(`{}`)))
		if se.NotAttempted {
			held++
			assert.ErrorIs(t, se, mailer.ErrCircuitOpen)
			assert.Equal(t, 50*time.Millisecond, se.RetryAfter)
		}
	}
	assert.Equal(t, "open", c.BreakerState())
	assert.Equal(t, 3, m.Stats().Requests, "after 3 failures the service is left alone")
	assert.Equal(t, 17, held)

	// A 400 while half-open counts as the service being up.
	down.Store(false)
	require.Eventually(t, func() bool { return c.Send(context.Background(), "after", []byte(`{}`)) == nil },
		10*time.Second, 10*time.Millisecond)
	assert.Equal(t, "closed", c.BreakerState())
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
