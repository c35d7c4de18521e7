package mailer_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newMock(t *testing.T, cfg mockmail.Config) (*mockmail.Server, *mailer.Client) {
	t.Helper()
	m, err := mockmail.New(cfg)
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: srv.URL, Timeout: 5 * time.Second})
	require.NoError(t, err)
	return m, c
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
	m, c := newMock(t, mockmail.Config{FailRate: 1})
	err := c.Send(context.Background(), "k", []byte(`{}`))
	var se *mailer.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusNotAcceptable, se.Code)
	assert.Contains(t, err.Error(), "406")
	assert.Equal(t, mockmail.Stats{Requests: 1, Failures: 1}, m.Stats())
}

func TestSendNotJSONIsRejectedByMock(t *testing.T) {
	t.Parallel()
	_, c := newMock(t, mockmail.Config{})
	var se *mailer.StatusError
	require.ErrorAs(t, c.Send(context.Background(), "k", []byte(`nope`)), &se)
	assert.Equal(t, http.StatusBadRequest, se.Code)
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	_, c := newMock(t, mockmail.Config{Script: func(string, int) mockmail.Reply {
		return mockmail.Reply{Status: http.StatusTooManyRequests, RetryAfter: "7"}
	}})
	var se *mailer.StatusError
	require.ErrorAs(t, c.Send(context.Background(), "k", []byte(`{}`)), &se)
	assert.Equal(t, 7*time.Second, se.RetryAfter)
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
	c, err := mailer.New(mailer.Config{URL: srv.URL, Timeout: 100 * time.Millisecond})
	require.NoError(t, err)
	err = c.Send(context.Background(), "k", []byte(`{}`))
	require.Error(t, err)
	var se *mailer.StatusError
	assert.False(t, errors.As(err, &se), "a timeout is not an answer")
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
	c, err := mailer.New(mailer.Config{URL: srv.URL})
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "k", []byte(`{}`)))
	st, err := mockmail.FetchStats(context.Background(), srv.URL)
	require.NoError(t, err)
	assert.Equal(t, mockmail.Stats{Requests: 1, Deliveries: 1}, st)
}
