package mockmail_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/ordermail/ordermail/internal/webhook"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clock is a pinned clock that the test moves.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func post(t *testing.T, url, key string) int {
	t.Helper()
	status, _ := postBody(t, url, key, `{"email":"a@example.com"}`)
	return status
}

// postBody sends body under key and returns the answer's status and body.
func postBody(t *testing.T, url, key, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+mockmail.SendPath, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(answer)
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
	assert.Equal(t, map[string][3]int64{"a": {start, delivered, 2}, "b": {delivered, delivered, 0}}, tm.Keys,
		"a: two 503s before its delivery; its duplicate request was answered 200")
	assert.Equal(t, mockmail.GapSummary{Count: 2, MinMs: 100, MeanMs: 200, P99Ms: 300, MaxMs: 300}, tm.RetryGaps)
	assert.Equal(t, tm, m.Timings())
	assert.Equal(t, map[string]int{"a": 4, "b": 1, "": 1}, m.Requests())
	assert.Equal(t, map[string]int{"a": 2, "b": 1}, m.Delivered())
	st, err := mockmail.FetchStats(ctx, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, mockmail.Stats{Requests: 6, Deliveries: 3, Failures: 2, DuplicateRequests: 1, UnkeyedRequests: 1}, st)

	require.NoError(t, mockmail.ResetRemote(ctx, srv.URL, ""))
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

// send posts body to the mock with headers and returns the status and the
// answer's body.
func send(t *testing.T, c *http.Client, url string, body []byte, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+mockmail.SendPath, bytes.NewReader(body))
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestMockAuth(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{AuthValue: "Bearer abc"})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	body := []byte(`{"email":"a@example.com"}`)

	for _, give := range []string{"", "Bearer abd", "Bearer ab", "Bearer abcd", "bearer abc"} {
		h := http.Header{"Idempotency-Key": {"k"}}
		if give != "" {
			h.Set("Authorization", give)
		}
		req, err := http.NewRequest(http.MethodPost, srv.URL+mockmail.SendPath, bytes.NewReader(body))
		require.NoError(t, err)
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, give)
		require.JSONEq(t, `{"error":"unauthorized"}`, string(b))
		require.Equal(t, `Bearer realm="mockmail"`, resp.Header.Get("WWW-Authenticate"))
	}
	status, _ := send(t, http.DefaultClient, srv.URL, body, http.Header{"Idempotency-Key": {"k"}, "Authorization": {"Bearer abc"}})
	require.Equal(t, http.StatusOK, status)
	// Refusals leave the key alone: its one request is the delivery.
	require.Equal(t, mockmail.Stats{Requests: 6, Deliveries: 1, Unauthorized: 5}, m.Stats())
	require.Equal(t, map[string]int{"k": 1}, m.Requests())
	require.Zero(t, m.Timings().RetryGaps.Count)

	// Rotated while serving.
	m.SetAuthValue("Bearer new")
	status, _ = send(t, http.DefaultClient, srv.URL, body, http.Header{"Idempotency-Key": {"k2"}, "Authorization": {"Bearer abc"}})
	require.Equal(t, http.StatusUnauthorized, status)
	// A reset wants the credentials too: it wipes what tells a duplicate
	// request from a delivery.
	ctx := context.Background()
	require.ErrorContains(t, mockmail.ResetRemote(ctx, srv.URL, ""), "answered 401 Unauthorized")
	require.ErrorContains(t, mockmail.ResetRemote(ctx, srv.URL, "Bearer abc"), "answered 401 Unauthorized")
	require.Equal(t, 1, m.Stats().Deliveries, "not reset")
	require.NoError(t, mockmail.ResetRemote(ctx, srv.URL, "Bearer new"))
	require.Zero(t, m.Stats().Deliveries)

	m.SetAuthValue("")
	status, _ = send(t, http.DefaultClient, srv.URL, body, http.Header{"Idempotency-Key": {"k2"}})
	require.Equal(t, http.StatusOK, status)
}

func TestMockAuthOtherHeader(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{AuthHeader: "X-Api-Key", AuthValue: "abc"})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	status, _ := send(t, http.DefaultClient, srv.URL, []byte(`{}`), http.Header{"Authorization": {"abc"}})
	require.Equal(t, http.StatusUnauthorized, status)
	status, _ = send(t, http.DefaultClient, srv.URL, []byte(`{}`), http.Header{"X-Api-Key": {"abc"}})
	require.Equal(t, http.StatusOK, status)

	_, err = mockmail.New(mockmail.Config{AuthValue: "a\nb"})
	require.ErrorContains(t, err, "auth value")
	require.NotContains(t, err.Error(), "a\nb")
}

func TestMockSignatures(t *testing.T) {
	t.Parallel()
	newer, older := webhook.NewSecret(), webhook.NewSecret()
	parse := func(lines ...string) *webhook.Secrets {
		s, err := webhook.ParseSecrets([]byte(strings.Join(lines, "\n")))
		require.NoError(t, err)
		return s
	}
	m, err := mockmail.New(mockmail.Config{Signing: parse(older), AuthValue: "Bearer abc"})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	body := []byte(`{"email":"a@example.com"}`)
	signed := func(s *webhook.Secrets, id, key string, ts time.Time) http.Header {
		h := http.Header{"Authorization": {"Bearer abc"}, "Idempotency-Key": {key}}
		s.SetHeaders(h, id, ts, body)
		return h
	}
	now := time.Now()

	for _, tt := range []struct {
		name       string
		give       http.Header
		giveBody   []byte
		wantStatus int
		wantBody   string
	}{
		{"unsigned", http.Header{"Authorization": {"Bearer abc"}, "Idempotency-Key": {"k"}}, body, 401, `{"error":"invalid signature"}`},
		{"forged", signed(parse(older), "k", "k", now), []byte(`{"email":"b@example.com"}`), 401, `{"error":"invalid signature"}`},
		{"other secret", signed(parse(newer), "k", "k", now), body, 401, `{"error":"invalid signature"}`},
		{"stale", signed(parse(older), "k", "k", now.Add(-6*time.Minute)), body, 401, `{"error":"invalid signature"}`},
		{"webhook-id is not the key", signed(parse(older), "k2", "k", now), body, 400, `{"error":"webhook-id is not the Idempotency-Key"}`},
		{"signed and unauthorized", func() http.Header {
			h := signed(parse(older), "k", "k", now)
			h.Del("Authorization")
			return h
		}(), body, 401, `{"error":"unauthorized"}`},
		// A sender rotating in a new secret signs with both.
		{"two secrets", signed(parse(newer, older), "k", "k", now), body, 200, `{"status":"sent"}`},
	} {
		status, answer := send(t, http.DefaultClient, srv.URL, tt.giveBody, tt.give)
		require.Equal(t, tt.wantStatus, status, tt.name)
		require.JSONEq(t, tt.wantBody, answer, tt.name)
	}
	require.Equal(t, mockmail.Stats{Requests: 7, Deliveries: 1, Unauthorized: 5, BadSignatures: 4}, m.Stats())
	require.Equal(t, map[string]int{"k": 1}, m.Requests(), "refusals leave the key alone")

	// The mock rotates to the newer secret alone.
	m.SetSigning(parse(newer))
	status, _ := send(t, http.DefaultClient, srv.URL, body, signed(parse(older), "k3", "k3", now))
	require.Equal(t, http.StatusUnauthorized, status)
	status, _ = send(t, http.DefaultClient, srv.URL, body, signed(parse(newer), "k3", "k3", now))
	require.Equal(t, http.StatusOK, status)
}

func TestMockTraced(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{AuthValue: "Bearer abc"})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	valid := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, give := range []string{
		valid,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		"",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // another version
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent id
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // uppercase
		"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",   // short
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", // long
		"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
	} {
		status, _ := send(t, http.DefaultClient, srv.URL, []byte(`{}`), http.Header{
			"Authorization": {"Bearer abc"}, "Idempotency-Key": {"k"}, "Traceparent": {give}})
		require.Equal(t, http.StatusOK, status, give)
	}
	// Refused requests that carry one count too.
	status, _ := send(t, http.DefaultClient, srv.URL, []byte(`{}`), http.Header{"Traceparent": {valid}})
	require.Equal(t, http.StatusUnauthorized, status)
	require.Equal(t, 3, m.Stats().Traced)
}

func TestMockTLSClientCert(t *testing.T) {
	t.Parallel()
	p, err := testpki.New()
	require.NoError(t, err)
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	l, err := m.ListenTLS("127.0.0.1:0", p.ServerTLS(true))
	require.NoError(t, err)
	defer func() { require.NoError(t, l.Close(context.Background())) }()
	require.True(t, strings.HasPrefix(l.URL(), "https://127.0.0.1:"), l.URL())

	client := func(cfg *tls.Config) *http.Client {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		t.Cleanup(c.CloseIdleConnections)
		return c
	}
	req, err := http.NewRequest(http.MethodPost, l.URL()+mockmail.SendPath, strings.NewReader(`{}`))
	require.NoError(t, err)
	_, err = client(p.ClientTLS(false)).Do(req)
	require.Error(t, err, "no client certificate")
	_, err = client(&tls.Config{}).Get(l.URL() + "/stats")
	require.Error(t, err, "a server certificate the client does not trust")

	status, _ := send(t, client(p.ClientTLS(true)), l.URL(), []byte(`{}`), http.Header{"Idempotency-Key": {"k"}})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, 1, m.Stats().Deliveries, "the refused handshakes sent nothing")

	_, err = m.ListenTLS("127.0.0.1:0", &tls.Config{})
	require.ErrorContains(t, err, "no server certificate")
}

// TestFailOnceFailsFirstSendsOnly: with FailOnce a key's first request
// fails at FailRate and its retries are delivered.
func TestFailOnceFailsFirstSendsOnly(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{FailRate: 1, FailOnce: true})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	assert.Equal(t, 503, post(t, srv.URL, "a"))
	assert.Equal(t, 200, post(t, srv.URL, "a"), "a retry is delivered")
	assert.Equal(t, 503, post(t, srv.URL, "b"), "another key's first send fails")
	assert.Equal(t, 200, post(t, srv.URL, "b"))
	assert.Equal(t, 2, m.Stats().Failures)
	assert.Equal(t, 2, m.Stats().Deliveries)
}

// With HoldEvery 2 the first request of every second key gets no answer
// until its sender gives up; that key's next request is answered.
func TestHoldEveryHoldsFirstRequestsOfEveryNthKey(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{HoldEvery: 2})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()

	assert.Equal(t, http.StatusOK, post(t, srv.URL, "a"), "the first key is answered")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+mockmail.SendPath, strings.NewReader(`{"email":"a@example.com"}`))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", "b")
	sent := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		sent <- err
	}()
	require.Eventually(t, func() bool { return m.Stats().Held == 1 }, 30*time.Second, time.Millisecond,
		"the second key's first request is held")
	select {
	case err := <-sent:
		t.Fatalf("the held request was answered: %v", err)
	default:
	}
	cancel() // the sender gives up
	require.ErrorIs(t, <-sent, context.Canceled)
	assert.Equal(t, http.StatusOK, post(t, srv.URL, "b"), "its next request is answered")
	assert.Equal(t, http.StatusOK, post(t, srv.URL, "c"))
	assert.Equal(t, mockmail.Stats{Requests: 4, Deliveries: 3, Held: 1}, m.Stats())
	m.Reset()
	assert.Equal(t, http.StatusOK, post(t, srv.URL, "d"), "the count starts again at a reset")
	assert.Zero(t, m.Stats().Held)
}

// postAway posts a send under key to the mock at url from a goroutine of
// its own, and says how it ended: its error, or the status it was answered.
func postAway(url, key string) <-chan error {
	sent := make(chan error, 1)
	go func() {
		req, err := http.NewRequest(http.MethodPost, url+mockmail.SendPath, strings.NewReader(`{}`))
		if err != nil {
			sent <- err
			return
		}
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %d", resp.StatusCode)
		}
		sent <- err
	}()
	return sent
}

// Close ends the requests HoldEvery holds instead of waiting for them.
func TestCloseEndsHeldRequests(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{HoldEvery: 1})
	require.NoError(t, err)
	l, err := m.Listen("127.0.0.1:0")
	require.NoError(t, err)
	sent := postAway(l.URL(), "a")
	require.Eventually(t, func() bool { return m.Stats().Held == 1 }, 30*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, l.Close(ctx), "Close did not wait for the held request")
	err = <-sent
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "answered", "the held request gets no answer")
}

// Close ends the requests waiting out the latency unanswered: a 200 would
// be a delivery the mock never recorded.
func TestCloseDuringTheLatencyAnswersNothing(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	var once sync.Once
	m, err := mockmail.New(mockmail.Config{Latency: time.Hour, Now: func() time.Time {
		once.Do(func() { close(arrived) }) // a request's first look at the clock
		return time.Now()
	}})
	require.NoError(t, err)
	l, err := m.Listen("127.0.0.1:0")
	require.NoError(t, err)
	sent := postAway(l.URL(), "a")
	select {
	case <-arrived:
	case err := <-sent:
		t.Fatalf("the request ended before the mock saw it: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, l.Close(ctx))
	err = <-sent
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "answered", "a request the mock never recorded")
	assert.Equal(t, mockmail.Stats{}, m.Stats())
}

// TestBodyMustBeAJSONObject: the mock accepts a body that decodes as one
// JSON object (what follows it is not read) and answers anything else 400,
// naming what was wrong; a valid object is recognised without being built.
func TestBodyMustBeAJSONObject(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	for i, c := range []struct {
		body string
		want int
	}{
		{`{"email":"a@example.com","n":1e999}`, 200},
		{" \n\t{}", 200},
		{`{"a":1} trailing`, 200},
		{`{"a":[1,{"b":null}],"c":"\u00e9"}`, 200},
		{`[1]`, 400},
		{`"text"`, 400},
		{`{"a":`, 400},
		{``, 400},
		{"{\"a\":\"\xff\"}", 200}, // invalid UTF-8 in a string: replaced, as encoding/json does
	} {
		status, answer := postBody(t, srv.URL, fmt.Sprint("k", i), c.body)
		assert.Equal(t, c.want, status, "%q", c.body)
		if c.want == 400 {
			assert.Contains(t, answer, "body is not a JSON object", "%q", c.body)
		}
	}
}
