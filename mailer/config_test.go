package mailer_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/ordermail/ordermail/internal/tracing"
	"github.com/ordermail/ordermail/internal/watchfile"
	"github.com/ordermail/ordermail/internal/webhook"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
)

// writeFile writes a private file in the test's directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// rewrite replaces a file's content the way a secret mount does: a new file
// moved over the old one.
func rewrite(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	require.NoError(t, os.WriteFile(tmp, []byte(content), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

// sendsAgain waits until a send succeeds, failing with the last error.
func sendsAgain(t *testing.T, c *mailer.Client, key string) {
	t.Helper()
	var last error
	ok := assert.Eventually(t, func() bool {
		last = c.Send(context.Background(), key, []byte(`{}`))
		return last == nil
	}, 20*time.Second, 20*time.Millisecond)
	if !ok {
		t.Fatalf("sends did not resume; last error: %v", last)
	}
}

func TestCredentialsFromAFileRotatedWithoutARestart(t *testing.T) {
	t.Parallel()
	const oldKey, newKey = "Bearer old-4f1c2a9b", "Bearer new-77d0e3c5"
	m, err := mockmail.New(mockmail.Config{AuthValue: newKey})
	require.NoError(t, err)
	l, err := m.Listen("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close(context.Background()) })
	keyFile := writeFile(t, "key", oldKey+"\n")
	// Long enough that the second send comes within it on a loaded
	// machine, short next to sendsAgain's wait for the probe after it.
	c, err := mailer.New(mailer.Config{URL: l.URL(), AuthFile: keyFile, BreakerCooldown: 2 * time.Second}, quiet)
	require.NoError(t, err)

	se := sendErr(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	assert.Equal(t, mailer.Transient, se.Class, "a first 401 may be the order's own: retried alone")
	assert.Empty(t, c.Misconfigured())
	se = sendErr(t, c.Send(context.Background(), "k2", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class, "a second 401, none accepted between, is the configuration's fault")
	assert.Equal(t, http.StatusUnauthorized, se.Status)
	assert.NotEmpty(t, c.Misconfigured())
	se = sendErr(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	assert.True(t, se.NotAttempted, "held after the second refusal")
	held, probing := c.HeldBack()
	assert.True(t, held || probing, "the gate holds sends as the breaker does")
	for _, text := range []string{se.Error(), se.Reason(), c.Misconfigured()} {
		assert.NotContains(t, text, "old-4f1c2a9b")
		assert.NotContains(t, text, "new-77d0e3c5")
	}

	rewrite(t, keyFile, newKey+"\n")
	sendsAgain(t, c, "k1")
	assert.Empty(t, c.Misconfigured())
	assert.Equal(t, 1, m.Stats().Deliveries)
}

func TestAnUnreadableCredentialsFileHoldsSends(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{AuthValue: "Bearer k", AuthHeader: "X-API-Key"})
	require.NoError(t, err)
	l, err := m.Listen("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close(context.Background()) })
	keyFile := writeFile(t, "key", "Bearer k")
	c, err := mailer.New(mailer.Config{URL: l.URL(), AuthHeader: "X-API-Key", AuthFile: keyFile, BreakerCooldown: 50 * time.Millisecond}, quiet)
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "k1", []byte(`{}`)))

	require.NoError(t, os.Remove(keyFile))
	var last error
	require.Eventually(t, func() bool {
		last = c.Send(context.Background(), "k2", []byte(`{}`))
		var se *mailer.SendError
		return errors.As(last, &se) && se.Class == mailer.Configuration && se.NotAttempted
	}, 20*time.Second, 20*time.Millisecond, "a deleted key file holds sends")
	assert.Contains(t, last.Error(), "mail-auth-file")
	requests := m.Stats().Requests

	rewrite(t, keyFile, "Bearer k")
	sendsAgain(t, c, "k2")
	assert.Equal(t, requests+1, m.Stats().Requests, "nothing was sent without the key")
}

func TestNewNamesTheBadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := writeFile(t, "empty", " \n")
	notPEM := writeFile(t, "ca.pem", "not a certificate")
	badSecrets := writeFile(t, "secrets", "whsec_not base64!\n")
	for _, tc := range []struct {
		cfg  mailer.Config
		want string
	}{
		{mailer.Config{AuthFile: filepath.Join(dir, "missing")}, "mail-auth-file"},
		{mailer.Config{AuthFile: empty}, "is empty"},
		{mailer.Config{CAFile: notPEM}, "holds no PEM certificate"},
		{mailer.Config{CertFile: notPEM}, "give both"},
		{mailer.Config{CertFile: notPEM, KeyFile: notPEM}, "mail-cert-file and mail-key-file"},
		{mailer.Config{SigningSecretFile: badSecrets}, "mail-signing-secret-file"},
		{mailer.Config{AuthHeader: "X-Key"}, "needs mail-auth-file"},
	} {
		tc.cfg.URL = "http://127.0.0.1:1"
		_, err := mailer.New(tc.cfg, quiet)
		require.Error(t, err, tc.want)
		assert.Contains(t, err.Error(), tc.want)
	}
}

func TestMutualTLS(t *testing.T) {
	t.Parallel()
	pki, err := testpki.New()
	require.NoError(t, err)
	files, err := pki.WriteFiles(t.TempDir())
	require.NoError(t, err)
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	l, err := m.ListenTLS("127.0.0.1:0", pki.ServerTLS(true))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close(context.Background()) })

	// The CA alone: the service wants a client certificate.
	c, err := mailer.New(mailer.Config{URL: l.URL(), CAFile: files.CA, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class, "%v", se)

	c, err = mailer.New(mailer.Config{URL: l.URL(), CAFile: files.CA, CertFile: files.ClientCert, KeyFile: files.ClientKey}, quiet)
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	assert.Equal(t, 1, m.Stats().Deliveries)
}

func TestARenewedCAFileResumesSends(t *testing.T) {
	t.Parallel()
	good, err := testpki.New()
	require.NoError(t, err)
	other, err := testpki.New()
	require.NoError(t, err)
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	l, err := m.ListenTLS("127.0.0.1:0", good.ServerTLS(false))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close(context.Background()) })
	caFile := writeFile(t, "ca.pem", string(other.CAPEM))
	c, err := mailer.New(mailer.Config{URL: l.URL(), CAFile: caFile, BreakerCooldown: 50 * time.Millisecond}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class)

	rewrite(t, caFile, string(good.CAPEM))
	sendsAgain(t, c, "k1")
}

func TestSignedRequests(t *testing.T) {
	t.Parallel()
	current, next := webhook.NewSecret(), webhook.NewSecret()
	// The receiver knows the next secret only: it has rotated already.
	receiver, err := webhook.ParseSecrets([]byte(next))
	require.NoError(t, err)
	m, err := mockmail.New(mockmail.Config{Signing: receiver})
	require.NoError(t, err)
	var headers http.Header
	srv := serveWith(t, func(w http.ResponseWriter, r *http.Request) {
		headers = r.Header.Clone()
		m.ServeHTTP(w, r)
	})
	secrets := writeFile(t, "secrets", "# rotating\n"+current+"\n"+next+"\n")
	c, err := mailer.New(mailer.Config{URL: srv, SigningSecretFile: secrets}, quiet)
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "confirmation:o1@7", []byte(`{"a":1}`)))
	assert.Equal(t, "confirmation:o1@7", headers.Get("webhook-id"), "the idempotency key")
	assert.Len(t, strings.Fields(headers.Get("webhook-signature")), 2, "one signature per secret")

	// A receiver with another secret refuses: the configuration's fault.
	stranger, err := webhook.ParseSecrets([]byte(webhook.NewSecret()))
	require.NoError(t, err)
	m.SetSigning(stranger)
	se := sendErr(t, c.Send(context.Background(), "confirmation:o2@8", []byte(`{}`)))
	assert.Equal(t, mailer.Transient, se.Class, "the first refusal: maybe the order's own")
	se = sendErr(t, c.Send(context.Background(), "confirmation:o3@9", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class, "the second")
	assert.Equal(t, 2, m.Stats().BadSignatures)
	for _, text := range []string{se.Error(), c.Misconfigured()} {
		assert.NotContains(t, text, strings.TrimPrefix(current, "whsec_"))
		assert.NotContains(t, text, strings.TrimPrefix(next, "whsec_"))
	}
}

func TestEveryRequestCarriesATraceparent(t *testing.T) {
	// Not parallel: it installs the global tracer provider.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	tracing.Install(tp)
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	m, c := newMock(t, mockmail.Config{})
	require.NoError(t, c.Send(context.Background(), "k", []byte(`{}`)))
	assert.Equal(t, 1, m.Stats().Traced)
}

// TestSpansCarryNoSecretOfTheURL: a key in the URL's query (or its
// password) reaches the tracing backend no more than the logs.
func TestSpansCarryNoSecretOfTheURL(t *testing.T) {
	// Not parallel: it installs the global tracer provider.
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	tracing.Install(tp)
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	answering := strings.Replace(srv.URL, "http://", "http://user:PASSWORD@", 1)

	for _, tc := range []struct {
		give, want string // want: url.full
	}{
		{answering + "/?api_key=SECRET&lang=en", srv.URL + "/sendConfirmation?api_key=REDACTED&lang=REDACTED"},
		{"http://127.0.0.1:1/?token=SECRET", "http://127.0.0.1:1/sendConfirmation?token=REDACTED"}, // no answer
	} {
		exporter.Reset()
		c, err := mailer.New(mailer.Config{URL: tc.give, Timeout: time.Minute}, quiet)
		require.NoError(t, err)
		_ = c.Send(context.Background(), "k", []byte(`{}`))
		spans := exporter.GetSpans() // a syncer: exported when the send's span ended
		require.Len(t, spans, 1, tc.give)
		s := spans[0]
		var full string
		for _, a := range s.Attributes {
			assert.NotContains(t, a.Value.Emit(), "SECRET", "%s of %s", a.Key, tc.give)
			assert.NotContains(t, a.Value.Emit(), "PASSWORD", "%s of %s", a.Key, tc.give)
			if a.Key == "url.full" {
				full = a.Value.AsString()
			}
		}
		assert.Equal(t, tc.want, full)
		assert.NotContains(t, s.Status.Description, "SECRET")
		for _, e := range s.Events {
			for _, a := range e.Attributes {
				assert.NotContains(t, a.Value.Emit(), "SECRET", "event %s: %s", e.Name, a.Key)
			}
		}
	}
	assert.Equal(t, 1, m.Stats().Deliveries, "the service got its key all the same")
}

func serveWith(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestCauseNamesAFailureWithoutAnAnswer(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(hanging.Close)
	t.Cleanup(func() { close(release) }) // first: Close waits for the handler
	untrusted := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	untrusted.Config.ErrorLog = log.New(io.Discard, "", 0)
	t.Cleanup(untrusted.Close)
	answering := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	t.Cleanup(answering.Close)
	// Only the hanging service is waited out; the others answer or fail
	// long before a generous timeout, however busy the machine (a TLS
	// handshake on a loaded machine can take longer than the hanging
	// case's 200ms).
	for _, tc := range []struct {
		url, want string
		timeout   time.Duration
	}{
		{"http://127.0.0.1:1", "connection refused", time.Minute},
		{hanging.URL, "timeout", 200 * time.Millisecond},
		{untrusted.URL, "tls", time.Minute},
		{answering.URL, "", time.Minute},
	} {
		c, err := mailer.New(mailer.Config{URL: tc.url, Timeout: tc.timeout}, quiet)
		require.NoError(t, err)
		se := sendErr(t, c.Send(context.Background(), "k", []byte(`{}`)))
		assert.Equal(t, tc.want, se.Cause(), tc.url)
	}
}

// TestCredentialsInTheClearAreWarnedOf: orders, and a token, sent to
// another machine over plain HTTP are said once at start (not refused: a
// sidecar or a trusted network may be meant); over https, or to this
// machine, nothing.
func TestCredentialsInTheClearAreWarnedOf(t *testing.T) {
	t.Parallel()
	token := writeFile(t, "token", "Bearer abc")
	for _, tt := range []struct {
		url, token    string
		warned, creds bool
	}{
		{"http://mail.example.net/v1", token, true, true},
		{"http://10.1.2.3:8080", token, true, true},
		{"http://127.0.0.1:9080", token, false, false},
		{"http://localhost:9080", token, false, false},
		{"http://[::1]:9080", token, false, false},
		{"https://mail.example.net", token, false, false},
		{"http://mail.example.net", "", true, false},
		{"http://user:s3cret@mail.example.net", "", true, true},
		{"http://mail.example.net/?api_key=s3cret", "", true, true},
		{"https://mail.example.net/?api_key=s3cret", "", false, false},
	} {
		var logs strings.Builder
		_, err := mailer.New(mailer.Config{URL: tt.url, AuthFile: tt.token}, slog.New(slog.NewTextHandler(&logs, nil)))
		require.NoError(t, err, tt.url)
		assert.Equal(t, tt.warned, strings.Contains(logs.String(), "customers' data, go over the network unencrypted"), "%s: %s", tt.url, logs.String())
		assert.Equal(t, tt.creds, strings.Contains(logs.String(), "credentials and orders"), "%s: %s", tt.url, logs.String())
	}
}

// TestAnOrderRefusedAgainAfterOthersWereAcceptedIsItsOwnFailure: one order
// the service refuses with 403 (a firewall refusing its body) while it
// accepts the others is retried alone; refused again with no send accepted
// between, it holds every send once, as a configuration refused would;
// refused again after another order was accepted, it is that order's
// failure, counted against it, and holds nobody's sends.
func TestAnOrderRefusedAgainAfterOthersWereAcceptedIsItsOwnFailure(t *testing.T) {
	t.Parallel()
	srv := serveWith(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") == "refused" {
			w.WriteHeader(http.StatusForbidden)
		}
	})
	c, err := mailer.New(mailer.Config{URL: srv, BreakerCooldown: 50 * time.Millisecond}, quiet)
	require.NoError(t, err)
	send := func(key string) error { return c.Send(context.Background(), key, []byte(`{}`)) }

	se := sendErr(t, send("refused"))
	assert.Equal(t, mailer.Transient, se.Class, "a first refusal may be the order's own")
	se = sendErr(t, send("refused"))
	assert.Equal(t, mailer.Configuration, se.Class, "a second, none accepted between, may be the configuration's")
	// Refused again with no send accepted meanwhile: still the configuration.
	var last error
	ok := assert.Eventually(t, func() bool {
		last = send("refused")
		se, isSE := errors.AsType[*mailer.SendError](last)
		return isSE && !se.NotAttempted
	}, 20*time.Second, 10*time.Millisecond)
	require.True(t, ok, "the refused order's send was never attempted again; last: %v", last)
	assert.Equal(t, mailer.Configuration, sendErr(t, last).Class, "no order accepted since: still the configuration")

	sendsAgain(t, c, "accepted-a") // the probe after the cooldown
	se = sendErr(t, send("refused"))
	assert.Equal(t, mailer.Transient, se.Class, "refused again after another order was accepted: its own failure")
	assert.Equal(t, http.StatusForbidden, se.Status)
	assert.False(t, se.NotAttempted, "counted against the order")
	require.NoError(t, send("accepted-b"), "nobody's sends are held for it")
	assert.Empty(t, c.Misconfigured())
}

// TestAURLThatNamesNoEndpointHoldsSends: a --mail-url whose path is
// mistyped (or an API the provider moved or retired) answers every order
// 404: after a few in a row that is the configuration, which holds sends
// and says so, and dead-letters nobody; mended, sends resume.
func TestAURLThatNamesNoEndpointHoldsSends(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusGone} {
		var mended atomic.Bool
		srv := serveWith(t, func(w http.ResponseWriter, r *http.Request) {
			if !mended.Load() {
				w.WriteHeader(status)
			}
		})
		c, err := mailer.New(mailer.Config{URL: srv, BreakerCooldown: 50 * time.Millisecond}, quiet)
		require.NoError(t, err)
		var classes []mailer.Class
		for i := range 3 {
			se := sendErr(t, c.Send(context.Background(), fmt.Sprintf("order_%d", i), []byte(`{}`)))
			assert.Equal(t, status, se.Status)
			assert.False(t, se.NotAttempted)
			classes = append(classes, se.Class)
		}
		assert.Equal(t, []mailer.Class{mailer.Transient, mailer.Transient, mailer.Configuration}, classes,
			"%d: the first may be the order's, tried again; three in a row are the URL's", status)
		assert.Contains(t, c.Misconfigured(), fmt.Sprintf("answered %d", status))
		se := sendErr(t, c.Send(context.Background(), "order_3", []byte(`{}`)))
		assert.True(t, se.NotAttempted, "%d: sends are held", status)
		assert.Equal(t, mailer.Configuration, se.Class)

		mended.Store(true)
		sendsAgain(t, c, "order_4")
		assert.Empty(t, c.Misconfigured())
	}
}

// TestAMailURLGivenWithTheEndpointIsSaid: --mail-url given as the full
// endpoint (…/sendConfirmation), a likely first-day slip, posts to
// …/sendConfirmation/sendConfirmation: said when the client is made, and
// in the reason the sends are held for (the path, not the URL's query).
func TestAMailURLGivenWithTheEndpointIsSaid(t *testing.T) {
	t.Parallel()
	var posted atomic.Value
	srv := serveWith(t, func(w http.ResponseWriter, r *http.Request) {
		posted.Store(r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	})
	var logs syncbuf.Buffer
	c, err := mailer.New(mailer.Config{URL: srv + "/v1/sendConfirmation?key=s3cret"}, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	assert.Contains(t, logs.String(), "--mail-url ends in /sendConfirmation, which ordermail adds to it: the requests go to /v1/sendConfirmation/sendConfirmation")
	for i := range 3 {
		sendErr(t, c.Send(context.Background(), fmt.Sprintf("order_%d", i), []byte(`{}`)))
	}
	assert.Equal(t, "/v1/sendConfirmation/sendConfirmation", posted.Load())
	assert.Contains(t, c.Misconfigured(), "answered 404 Not Found (0 bytes) to POST /v1/sendConfirmation/sendConfirmation: --mail-url is the service's base URL, and ordermail adds /sendConfirmation to it")
	assert.NotContains(t, c.Misconfigured()+logs.String(), "s3cret")

	var base syncbuf.Buffer
	_, err = mailer.New(mailer.Config{URL: srv + "/v1"}, slog.New(slog.NewTextHandler(&base, nil)))
	require.NoError(t, err)
	assert.NotContains(t, base.String(), "ends in", "a base URL is not said")

	// A key in the path (a webhook service's token) is masked there as
	// wherever the URL is shown.
	const token = "xoxb9f8e7d6c5b4a3f2e1d0"
	var keyed syncbuf.Buffer
	c, err = mailer.New(mailer.Config{URL: srv + "/hooks/" + token + "/sendConfirmation"}, slog.New(slog.NewTextHandler(&keyed, nil)))
	require.NoError(t, err)
	for i := range 3 {
		sendErr(t, c.Send(context.Background(), fmt.Sprintf("keyed_%d", i), []byte(`{}`)))
	}
	assert.Contains(t, c.Misconfigured(), "to POST /hooks/REDACTED/sendConfirmation/sendConfirmation")
	assert.Contains(t, keyed.String(), "the requests go to /hooks/REDACTED/sendConfirmation/sendConfirmation")
	assert.NotContains(t, c.Misconfigured()+keyed.String(), token)
}

// TestAnOrderAnswered404AmongOthersAcceptedIsNotTheURL: a service that
// answers 404 for one order (a recipient it does not know), retried alone
// or while the service accepts the others, holds nobody's sends for it:
// that order is tried again, as a transient failure, and dead-lettered
// when its attempts run out.
func TestAnOrderAnswered404AmongOthersAcceptedIsNotTheURL(t *testing.T) {
	t.Parallel()
	srv := serveWith(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") == "unknown-recipient" {
			w.WriteHeader(http.StatusNotFound)
		}
	})
	c, err := mailer.New(mailer.Config{URL: srv, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	// Retried alone, in a quiet hour: one order, however often.
	for i := range 5 {
		se := sendErr(t, c.Send(context.Background(), "unknown-recipient", []byte(`{}`)))
		assert.Equal(t, mailer.Transient, se.Class, "alone, refusal %d", i+1)
		assert.False(t, se.NotAttempted)
	}
	// Among others accepted.
	for i := range 5 {
		se := sendErr(t, c.Send(context.Background(), "unknown-recipient", []byte(`{}`)))
		assert.Equal(t, mailer.Transient, se.Class, "refusal %d", i+1)
		assert.False(t, se.NotAttempted)
		require.NoError(t, c.Send(context.Background(), fmt.Sprintf("order_%d", i), []byte(`{}`)), "nobody's sends are held")
	}
	assert.Empty(t, c.Misconfigured())

	// Two orders known to be refused for themselves, then a third's first
	// refusal: two of their own and one that may be the URL's, not three.
	own := serveWith(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Idempotency-Key"), "bad-") {
			w.WriteHeader(http.StatusNotFound)
		}
	})
	c, err = mailer.New(mailer.Config{URL: own, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	for _, key := range []string{"bad-a", "bad-b"} {
		require.Error(t, c.Send(context.Background(), key, []byte(`{}`)))
	}
	require.NoError(t, c.Send(context.Background(), "good-1", []byte(`{}`)))
	// Retried, twice in a quiet hour (no send accepted between): the first
	// two stay their own; the third is one order.
	for _, key := range []string{"bad-a", "bad-b", "bad-a", "bad-b", "bad-c"} {
		se := sendErr(t, c.Send(context.Background(), key, []byte(`{}`)))
		assert.Equal(t, mailer.Transient, se.Class, key)
	}
	require.NoError(t, c.Send(context.Background(), "good-2", []byte(`{}`)), "nobody's sends are held")
}

// tlsService serves h over TLS with a test PKI's certificate, asking for a
// client certificate as auth says (ClientCAs: the PKI's), and returns its
// URL and the PKI's files.
func tlsService(t *testing.T, auth tls.ClientAuthType, h http.HandlerFunc) (string, testpki.Files) {
	t.Helper()
	pki, err := testpki.New()
	require.NoError(t, err)
	files, err := pki.WriteFiles(t.TempDir())
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = pki.ServerTLS(true)
	srv.TLS.ClientAuth = auth
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL, files
}

// TestAnOrderWhoseConnectionIsDroppedAgainIsItsOwnFailure: a service that
// asks for a client certificate without requiring one (nginx's
// ssl_verify_client optional) and drops one order's connection (a proxy
// refusing its body) holds every send once, as a refused certificate
// would; dropped again after another order was accepted, it is that
// order's failure, not everyone's.
func TestAnOrderWhoseConnectionIsDroppedAgainIsItsOwnFailure(t *testing.T) {
	t.Parallel()
	url, files := tlsService(t, tls.RequestClientCert, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") == "dropped" {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		}
	})
	c, err := mailer.New(mailer.Config{URL: url, CAFile: files.CA, BreakerCooldown: 50 * time.Millisecond}, quiet)
	require.NoError(t, err)
	send := func(key string) error { return c.Send(context.Background(), key, []byte(`{}`)) }

	require.NoError(t, send("accepted-a"))
	// The dropped sends dial: on a kept-alive connection a drop is the
	// service's restart (transient), and whether the transport then tries
	// a new connection of its own depends on when it sees the close.
	c.CloseIdleConnections()
	se := sendErr(t, send("dropped"))
	assert.Equal(t, mailer.Configuration, se.Class, "dropped after a certificate request: maybe the certificate: %v", se)
	sendsAgain(t, c, "accepted-b")
	c.CloseIdleConnections()
	se = sendErr(t, send("dropped"))
	assert.Equal(t, mailer.Transient, se.Class, "dropped again after another order was accepted: its own failure: %v", se)
	require.NoError(t, send("accepted-c"), "nobody's sends are held for it")
	assert.Empty(t, c.Misconfigured())
}

// keyedService is a client of a mock that accepts the key accepts, with a
// key file holding holds, and a cooldown of an hour (a send held for a
// refused key stays held unless the key changes); it returns the file.
func keyedService(t *testing.T, accepts, holds string, log *slog.Logger) (*mailer.Client, string) {
	t.Helper()
	m, err := mockmail.New(mockmail.Config{AuthValue: accepts})
	require.NoError(t, err)
	l, err := m.Listen("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close(context.Background()) })
	keyFile := writeFile(t, "key", holds+"\n")
	c, err := mailer.New(mailer.Config{URL: l.URL(), AuthFile: keyFile, BreakerCooldown: time.Hour}, log)
	require.NoError(t, err)
	return c, keyFile
}

// TestAKeyRotatedWhileSendsAreHeldIsTriedAtOnce: a key revoked at the
// provider a moment before the file holds the new one: the sends between
// are refused and hold the rest, but the new key, once read, is tried at
// once, not after the cooldown (an hour here).
func TestAKeyRotatedWhileSendsAreHeldIsTriedAtOnce(t *testing.T) {
	t.Parallel()
	var logs syncbuf.Buffer
	c, keyFile := keyedService(t, "Bearer new", "Bearer old", slog.New(slog.NewTextHandler(&logs, nil)))
	sendErr(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	se := sendErr(t, c.Send(context.Background(), "k2", []byte(`{}`)))
	require.Equal(t, mailer.Configuration, se.Class, "the old key refused twice: %v", se)
	require.NotEmpty(t, c.Misconfigured())

	rewrite(t, keyFile, "Bearer new\n")
	sendsAgain(t, c, "k1")
	assert.Empty(t, c.Misconfigured())
	assert.Len(t, logs.Lines("configuration changed: sends go out again"), 1, "logs:\n%s", logs.String())
	assert.Len(t, logs.Lines("accepts ordermail's configuration again: sending resumed"), 1, "said once: logs:\n%s", logs.String())
	require.NoError(t, c.Send(context.Background(), "k3", []byte(`{}`)))
	assert.Len(t, logs.Lines("sending resumed"), 1, "said once: logs:\n%s", logs.String())
}

// TestAHeldInstanceTriesARotatedKeyWithoutASend: an instance whose sends
// are held makes none (its timer and feed ask HeldBack first): asking is
// what looks for a new key, and sends go out again once it is read.
func TestAHeldInstanceTriesARotatedKeyWithoutASend(t *testing.T) {
	t.Parallel()
	c, keyFile := keyedService(t, "Bearer new", "Bearer old", quiet)
	sendErr(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	sendErr(t, c.Send(context.Background(), "k2", []byte(`{}`)))
	held, _ := c.HeldBack()
	require.True(t, held, "the old key refused twice")
	rewrite(t, keyFile, "Bearer new\n")
	require.Eventually(t, func() bool { held, _ := c.HeldBack(); return !held }, time.Minute, 20*time.Millisecond,
		"still held, no send made: %v", later.Value(func() any { return c.Misconfigured() }))
	require.NoError(t, c.Send(context.Background(), "k1", []byte(`{}`)))
}

// TestTheFirstRefusalOfANewKeyCounts: a key replaced by one the service
// refuses as well: the send that first carries it is refused as the first
// of two, and the second holds the sends, as for any key.
func TestTheFirstRefusalOfANewKeyCounts(t *testing.T) {
	t.Parallel()
	c, keyFile := keyedService(t, "Bearer right", "Bearer right", quiet)
	require.NoError(t, c.Send(context.Background(), "k0", []byte(`{}`)))
	rewrite(t, keyFile, "Bearer wrong\n")
	var first error
	n := 0
	require.Eventually(t, func() bool { // accepted until the new key is read
		n++
		first = c.Send(context.Background(), fmt.Sprintf("k%d", n), []byte(`{}`))
		return first != nil
	}, time.Minute, 20*time.Millisecond, "the wrong key was never read")
	assert.Equal(t, mailer.Transient, sendErr(t, first).Class, "the first refusal: %v", first)
	se := sendErr(t, c.Send(context.Background(), "next", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class, "the second: %v", se)
}

// TestARefusalOfAReplacedKeyDoesNotCount: a send made with the old key
// and refused after the new one was read says nothing of the new key: a
// refusal of the new one after it is the first, retried alone, holding
// no send.
func TestARefusalOfAReplacedKeyDoesNotCount(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Authorization") == "Bearer old" && r.Header.Get("Idempotency-Key") == "old":
			arrived <- struct{}{}
			<-release // refused once the new key is in use
			w.WriteHeader(http.StatusUnauthorized)
		case r.Header.Get("Authorization") == "Bearer old":
			w.WriteHeader(http.StatusUnauthorized) // the sends before the new key is read
		case r.Header.Get("Idempotency-Key") == "refused":
			w.WriteHeader(http.StatusForbidden) // a firewall refusing this order's body
		}
	}))
	t.Cleanup(srv.Close)
	keyFile := writeFile(t, "key", "Bearer old\n")
	c, err := mailer.New(mailer.Config{URL: srv.URL, AuthFile: keyFile, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	old := make(chan error, 1)
	go func() { old <- c.Send(context.Background(), "old", []byte(`{}`)) }()
	<-arrived
	rewrite(t, keyFile, "Bearer new\n")
	sendsAgain(t, c, "new")
	close(release)
	se := sendErr(t, <-old)
	assert.Equal(t, mailer.Transient, se.Class, "refused with the old key: %v", se)
	se = sendErr(t, c.Send(context.Background(), "refused", []byte(`{}`)))
	assert.Equal(t, mailer.Transient, se.Class, "the first refusal of the new key: %v", se)
	assert.Empty(t, c.Misconfigured(), "no send held")
}

// TestATLSAlertOfTheServicesOwnHoldsNothing: a service whose TLS
// terminator fails one handshake for its own reasons (its certificate
// source erring, a reload) sends an internal-error alert: that send
// failed, no configuration was refused, and the next send goes out. A
// refusal of ours (no certificate where one is required) holds them.
func TestATLSAlertOfTheServicesOwnHoldsNothing(t *testing.T) {
	t.Parallel()
	pki, err := testpki.New()
	require.NoError(t, err)
	files, err := pki.WriteFiles(t.TempDir())
	require.NoError(t, err)
	var hellos atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = pki.ServerTLS(false)
	srv.TLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if hellos.Add(1) == 1 {
			return nil, errors.New("certificate source unavailable") // answered with an internal-error alert
		}
		return nil, nil
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: srv.URL, CAFile: files.CA, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	se := sendErr(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	assert.Equal(t, mailer.Transient, se.Class, "%v", se)
	assert.Equal(t, "no answer: the service ended the TLS handshake: tls: internal error", se.Reason())
	require.NoError(t, c.Send(context.Background(), "k2", []byte(`{}`)), "no send held")
	assert.Empty(t, c.Misconfigured())

	url, files := tlsService(t, tls.RequireAndVerifyClientCert, func(w http.ResponseWriter, r *http.Request) {})
	c, err = mailer.New(mailer.Config{URL: url, CAFile: files.CA, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	se = sendErr(t, c.Send(context.Background(), "k1", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class, "no certificate where one is required: %v", se)
	// TLS 1.3: the service's alert, or its close before the client read
	// the alert (a busy machine), whichever the client saw first.
	reason := se.Reason()
	assert.True(t, strings.Contains(reason, "the service refused the TLS handshake: tls: ") ||
		strings.Contains(reason, "the service dropped the connection after asking for a client certificate"), "%s", reason)
}

// TestAServiceThatAcceptsTheCertificateMayStillFail: a service that
// requires and accepts ordermail's client certificate and drops a new
// connection without an answer (a handler crashing, a restart) failed;
// nothing of the configuration is refused, and no send is held.
func TestAServiceThatAcceptsTheCertificateMayStillFail(t *testing.T) {
	t.Parallel()
	url, files := tlsService(t, tls.RequireAndVerifyClientCert, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") == "crashes" {
			panic(http.ErrAbortHandler) // the connection closed, no answer
		}
	})
	c, err := mailer.New(mailer.Config{URL: url, CAFile: files.CA, CertFile: files.ClientCert, KeyFile: files.ClientKey,
		BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "accepted-a", []byte(`{}`)), "the certificate is accepted")
	c.CloseIdleConnections() // the next send dials
	se := sendErr(t, c.Send(context.Background(), "crashes", []byte(`{}`)))
	assert.Equal(t, mailer.Transient, se.Class, "%v", se)
	require.NoError(t, c.Send(context.Background(), "accepted-b", []byte(`{}`)), "no send held")
	assert.Empty(t, c.Misconfigured())
}

// TestARotationCaughtHalfwayHoldsNothing: a client certificate renewed as
// certbot copies it, the certificate a moment before its key. Read in
// between, the pair does not match; the last good pair is used meanwhile
// (with a warning), not every send held for a cooldown.
func TestARotationCaughtHalfwayHoldsNothing(t *testing.T) {
	t.Parallel()
	pki, err := testpki.New()
	require.NoError(t, err)
	files, err := pki.WriteFiles(t.TempDir())
	require.NoError(t, err)
	other, err := testpki.New()
	require.NoError(t, err)
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	l, err := m.ListenTLS("127.0.0.1:0", pki.ServerTLS(false))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close(context.Background()) })
	var logs syncbuf.Buffer
	c, err := mailer.New(mailer.Config{URL: l.URL(), CAFile: files.CA, CertFile: files.ClientCert, KeyFile: files.ClientKey,
		BreakerCooldown: time.Hour}, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "k0", []byte(`{}`)))

	rewrite(t, files.ClientCert, string(other.ClientCertPEM)) // its key not yet
	var failed []error
	ok := assert.Eventually(t, func() bool {
		if err := c.Send(context.Background(), "k1", []byte(`{}`)); err != nil {
			failed = append(failed, err)
		}
		return strings.Contains(logs.String(), "reads wrong")
	}, 20*time.Second, 20*time.Millisecond)
	require.True(t, ok, "the mismatched pair was never read; logs:\n%s", logs.String())
	assert.Empty(t, failed, "sends failed while the pair was halfway")
	assert.NotContains(t, logs.String(), "PRIVATE KEY")

	rewrite(t, files.ClientKey, string(other.ClientKeyPEM)) // the pair again
	ok = assert.Eventually(t, func() bool {
		if err := c.Send(context.Background(), "k2", []byte(`{}`)); err != nil {
			failed = append(failed, err)
		}
		return strings.Contains(logs.String(), "TLS files changed")
	}, 20*time.Second, 20*time.Millisecond)
	require.True(t, ok, "the renewed pair was never taken; logs:\n%s", logs.String())
	assert.Empty(t, failed, "sends failed after the pair was whole again")
	assert.Empty(t, c.Misconfigured())
}

// TestOneOrdersRefusalHoldsNobody: a firewall refusing one order's body
// (403) while the service takes the others held every send for a cooldown
// at that order's first refusal: each such order stalled them all. The
// first refusal is retried alone now; the others go out.
func TestOneOrdersRefusalHoldsNobody(t *testing.T) {
	t.Parallel()
	srv := serveWith(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Idempotency-Key"), "waf") {
			w.WriteHeader(http.StatusForbidden)
		}
	})
	c, err := mailer.New(mailer.Config{URL: srv, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	send := func(key string) error { return c.Send(context.Background(), key, []byte(`{}`)) }
	for i := range 5 {
		bad := fmt.Sprint("waf", i)
		se := sendErr(t, send(bad))
		assert.Equal(t, mailer.Transient, se.Class, "%s: its first refusal", bad)
		require.NoError(t, send(fmt.Sprint("good", i)), "not held for %s", bad)
		se = sendErr(t, send(bad))
		assert.Equal(t, mailer.Transient, se.Class, "%s refused again after another was accepted: its own", bad)
		assert.False(t, se.NotAttempted)
	}
	assert.Empty(t, c.Misconfigured())
}

// TestARefusalThatCameAfterAnAcceptedSendStartedIsTheConfigurations: the
// provider revokes the key while sends are out. K's send started first and
// is answered 401 after another send, started after it, was accepted:
// that acceptance came before the revocation, and says nothing of it. K
// refused again at the probe is still the configuration's, not K's own
// (which would count it against K, let it close the gate as a probe, and
// dead-letter it in the end while the key is what is wrong).
func TestARefusalThatCameAfterAnAcceptedSendStartedIsTheConfigurations(t *testing.T) {
	t.Parallel()
	var revoked atomic.Bool
	kArrived, releaseK := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv := serveWith(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") == "K" && !revoked.Load() {
			once.Do(func() { close(kArrived) })
			<-releaseK
		}
		if revoked.Load() {
			w.WriteHeader(http.StatusUnauthorized)
		}
	})
	c, err := mailer.New(mailer.Config{URL: srv, BreakerCooldown: 50 * time.Millisecond}, quiet)
	require.NoError(t, err)
	send := func(key string) error { return c.Send(context.Background(), key, []byte(`{}`)) }
	kErr := make(chan error, 1)
	go func() { kErr <- send("K") }()
	<-kArrived
	require.NoError(t, send("A"), "started after K, accepted before the revocation")
	revoked.Store(true)
	close(releaseK)
	se := sendErr(t, <-kErr)
	require.Equal(t, http.StatusUnauthorized, se.Status)
	assert.Equal(t, mailer.Transient, se.Class, "a first refusal: maybe K's own")
	se = sendErr(t, send("K"))
	assert.Equal(t, mailer.Configuration, se.Class, "refused again, nothing accepted since its refusal came: the key")

	var last error
	ok := assert.Eventually(t, func() bool {
		last = send("K")
		se, isSE := errors.AsType[*mailer.SendError](last)
		return isSE && !se.NotAttempted
	}, 20*time.Second, 10*time.Millisecond)
	require.True(t, ok, "K was never sent again as the probe; last: %v", last)
	se = sendErr(t, last)
	assert.Equal(t, mailer.Configuration, se.Class, "nothing was accepted since K's refusal came: still the key")
	assert.NotEmpty(t, c.Misconfigured(), "sends are held")
}

// TestAKeyRewrittenInPlaceWhileQuietIsUsedAtTheNextSend: a key file
// rewritten in place (not renamed over) while no send goes out is read at
// the next send, which carries the new key: not the old one, refused once
// the provider revoked it, which would hold every send for a cooldown.
func TestAKeyRewrittenInPlaceWhileQuietIsUsedAtTheNextSend(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	keyFile := writeFile(t, "key", "Bearer old-4f1c2a9b\n")
	c, err := mailer.New(mailer.Config{URL: srv.URL, AuthFile: keyFile}, quiet)
	require.NoError(t, err)
	require.NoError(t, c.Send(context.Background(), "k1", []byte(`{}`)))

	require.NoError(t, os.WriteFile(keyFile, []byte("Bearer new-77d0e3c5\n"), 0o600)) // in place
	long := time.Now().Add(-2 * watchfile.Settle)
	require.NoError(t, os.Chtimes(keyFile, long, long)) // and left alone since
	time.Sleep(watchfile.ReloadEvery)                   // past the file's next look
	require.NoError(t, c.Send(context.Background(), "k2", []byte(`{}`)))
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"Bearer old-4f1c2a9b", "Bearer new-77d0e3c5"}, seen)
}

// TestEveryOrderRefusedAlikeHoldsTheSends: a service answering 400 to
// every order (an API changed under the URL) dead-letters the first few,
// each as its own, and then holds the sends as a configuration refused is,
// not the whole backlog dead-lettered at full speed; a probe accepted
// resumes them. Another status, or an order accepted, starts the count
// again.
func TestEveryOrderRefusedAlikeHoldsTheSends(t *testing.T) {
	t.Parallel()
	var status atomic.Int64
	status.Store(http.StatusBadRequest)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(srv.Close)
	c, err := mailer.New(mailer.Config{URL: srv.URL, BreakerCooldown: 50 * time.Millisecond}, quiet)
	require.NoError(t, err)
	classes := func(prefix string, n int) (out []mailer.Class) {
		for i := range n {
			se := sendErr(t, c.Send(context.Background(), fmt.Sprint(prefix, i), []byte(`{}`)))
			out = append(out, se.Class)
		}
		return out
	}

	got := classes("a", 9)
	assert.Equal(t, slices.Repeat([]mailer.Class{mailer.Permanent}, 9), got, "each its own, so far")
	status.Store(http.StatusUnprocessableEntity)
	got = classes("b", 9)
	assert.Equal(t, slices.Repeat([]mailer.Class{mailer.Permanent}, 9), got, "another status: counted afresh")
	se := sendErr(t, c.Send(context.Background(), "c-tenth", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class, "the tenth order refused alike: the service's")
	assert.Equal(t, http.StatusUnprocessableEntity, se.Status)
	se = sendErr(t, c.Send(context.Background(), "d", []byte(`{}`)))
	assert.True(t, se.NotAttempted, "held: %v", se)
	assert.NotEmpty(t, c.Misconfigured())
	// The held order, probed, refused again: its own, dead-lettered as a
	// redriven order still wrong is; another order refused alike is held.
	require.Eventually(t, func() bool {
		err := c.Send(context.Background(), "c-tenth", []byte(`{}`))
		se, ok := errors.AsType[*mailer.SendError](err)
		return ok && !se.NotAttempted
	}, 10*time.Second, 10*time.Millisecond, "the held order was never probed")
	se = sendErr(t, c.Send(context.Background(), "c-tenth", []byte(`{}`)))
	assert.Equal(t, mailer.Permanent, se.Class, "refused again: its own")
	se = sendErr(t, c.Send(context.Background(), "g", []byte(`{}`)))
	assert.Equal(t, mailer.Configuration, se.Class, "a new order refused alike, none accepted since: held")

	status.Store(http.StatusOK)
	sendsAgain(t, c, "e")
	assert.Empty(t, c.Misconfigured())
	status.Store(http.StatusBadRequest)
	got = classes("f", 9)
	assert.Equal(t, slices.Repeat([]mailer.Class{mailer.Permanent}, 9), got, "an order accepted: counted afresh")
}
