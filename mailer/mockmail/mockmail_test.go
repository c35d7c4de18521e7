package mockmail_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clock is a pinned clock that the test moves.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func post(t *testing.T, url, key string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+mockmail.SendPath, strings.NewReader(`{"email":"a@example.com"}`))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func TestTimingsAndReset(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Unix(1000, 0)}
	m, err := mockmail.New(mockmail.Config{Now: c.now, Script: func(key string, n int) mockmail.Reply {
		if key == "a" && n <= 2 {
			return mockmail.Reply{Status: http.StatusServiceUnavailable}
		}
		return mockmail.Reply{Status: http.StatusOK}
	}})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()

	start := c.t.UnixNano()
	assert.Equal(t, 503, post(t, srv.URL, "a"))
	c.t = c.t.Add(100 * time.Millisecond)
	assert.Equal(t, 503, post(t, srv.URL, "a"))
	c.t = c.t.Add(300 * time.Millisecond)
	assert.Equal(t, 200, post(t, srv.URL, "a"))
	delivered := c.t.UnixNano()
	assert.Equal(t, 200, post(t, srv.URL, "a"), "a duplicate request")
	assert.Equal(t, 200, post(t, srv.URL, "b"))
	assert.Equal(t, 200, post(t, srv.URL, ""), "unkeyed")

	ctx := context.Background()
	tm, err := mockmail.FetchTimings(ctx, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, map[string][2]int64{"a": {start, delivered}, "b": {delivered, delivered}}, tm.Keys)
	assert.Equal(t, mockmail.GapSummary{Count: 2, MinMs: 100, MeanMs: 200, P99Ms: 300, MaxMs: 300}, tm.RetryGaps)
	assert.Equal(t, tm, m.Timings())
	assert.Equal(t, map[string]int{"a": 4, "b": 1, "": 1}, m.Requests())
	assert.Equal(t, map[string]int{"a": 2, "b": 1}, m.Delivered())
	st, err := mockmail.FetchStats(ctx, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, mockmail.Stats{Requests: 6, Deliveries: 3, Failures: 2, DuplicateRequests: 1, UnkeyedRequests: 1}, st)

	require.NoError(t, mockmail.ResetRemote(ctx, srv.URL))
	st, err = mockmail.FetchStats(ctx, srv.URL)
	require.NoError(t, err)
	assert.Zero(t, st)
	tm, err = mockmail.FetchTimings(ctx, srv.URL)
	require.NoError(t, err)
	assert.Empty(t, tm.Keys)
	assert.Zero(t, tm.RetryGaps)
	assert.Equal(t, 200, post(t, srv.URL, "b"), "forgotten: delivered anew")
	assert.Equal(t, 1, m.Stats().Deliveries)
}

// A request that set out before the failure was answered (two sends of one
// key at once) is no reaction to it and makes no gap.
func TestGapOnlyAfterTheFailure(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Unix(1000, 0)}
	m, err := mockmail.New(mockmail.Config{Now: c.now, FailRate: 1})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	assert.Equal(t, 503, post(t, srv.URL, "a"))
	c.t = c.t.Add(-time.Millisecond) // the next one arrived earlier
	assert.Equal(t, 503, post(t, srv.URL, "a"))
	assert.Zero(t, m.Timings().RetryGaps.Count)
	c.t = c.t.Add(6 * time.Millisecond)
	assert.Equal(t, 503, post(t, srv.URL, "a"))
	// From the last failure answer, the early request's.
	assert.Equal(t, mockmail.GapSummary{Count: 1, MinMs: 6, MeanMs: 6, P99Ms: 6, MaxMs: 6}, m.Timings().RetryGaps)
}

func TestTimingsServesManyKeys(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	for i := range 3000 {
		post(t, srv.URL, "k\"\\"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Duration(i).String())
	}
	tm, err := mockmail.FetchTimings(context.Background(), srv.URL)
	require.NoError(t, err)
	assert.Len(t, tm.Keys, len(m.Delivered()))
	for k, v := range tm.Keys {
		assert.Positive(t, v[1], k)
	}
}
