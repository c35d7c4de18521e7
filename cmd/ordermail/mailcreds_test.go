package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/console"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/ordermail/ordermail/internal/webhook"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/ops"
)

// private writes a file only its owner reads.
func private(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// get fetches a URL, returning its status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Logf("GET %s: %v", url, err)
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestA401StormEndsWhenTheKeyIsFixed runs the service and a mock that wants
// a bearer token and Standard Webhooks signatures, as processes. The
// service starts with the wrong key: 1,000 paid orders meet 401s, which are
// the configuration's fault, so nothing is dead-lettered and no attempt is
// counted against an order; sends are held and probed, /readyz says why.
// The key file is then fixed, without a restart: every order goes out once.
// The service signs with two secrets (a rotation), the mock knows the newer
// one. No secret is in any log line, output, answer or the store.
func TestA401StormEndsWhenTheKeyIsFixed(t *testing.T) {
	dir := t.TempDir()
	right, wrong := "Bearer r-"+strings.TrimPrefix(webhook.NewSecret(), "whsec_"), "Bearer w-"+strings.TrimPrefix(webhook.NewSecret(), "whsec_")
	older, newer := webhook.NewSecret(), webhook.NewSecret()
	mock := startMock(t, "--fail-rate", "0", "--auth-file", private(t, dir, "mock-token", right),
		"--signing-secret-file", private(t, dir, "mock-secrets", newer+"\n"))
	keyFile := private(t, dir, "token", wrong+"\n")
	storeURL := "file:" + filepath.Join(dir, "o.db")
	p := startProc(t, runArgs(storeURL, mock, "--log-level", "debug", "--metrics-listen", "127.0.0.1:0",
		"--mail-auth-file", keyFile, "--mail-signing-secret-file", private(t, dir, "secrets", older+"\n"+newer+"\n"),
		"--breaker-cooldown", "300ms")...)
	p.waitLog(t, `"msg":"serving metrics"`)
	metricsAddr := strings.Split(strings.Split(p.logs.Lines(`"msg":"serving metrics"`)[0], `"addr":"`)[1], `"`)[0]

	st := openStore(t, storeURL)
	docs := fixtures.Generate(1000, 21)
	placeOrders(t, st, docs)
	out, err := runBinary("retries", "start", "--store", storeURL)
	require.NoError(t, err, out)

	var status int
	var body string
	var lastReadyz atomic.Value // for the message: the condition runs in a goroutine of its own
	require.Eventually(t, func() bool {
		status, body = get(t, "http://"+metricsAddr+"/readyz")
		lastReadyz.Store(fmt.Sprintf("%d %s", status, body))
		return status == http.StatusServiceUnavailable
	}, 60*time.Second, 20*time.Millisecond, "readyz never said misconfigured (503); last answer: %v; logs:\n%v",
		later.Value(lastReadyz.Load), later.Value(func() any { return p.logs.String() }))
	assert.Contains(t, body, "401")
	_, metrics := get(t, "http://"+metricsAddr+"/metrics")
	assert.Contains(t, metrics, "\nordermail_mail_misconfigured 1\n")
	// Held and probed for a while: nothing is given up on.
	var refused atomic.Int64
	require.Eventually(t, func() bool {
		ms, err := mockmail.FetchStats(context.Background(), mock) // no require here: it would stop the wait's goroutine
		refused.Store(int64(ms.Unauthorized))
		return err == nil && ms.Unauthorized >= 3
	}, 60*time.Second, 20*time.Millisecond, "requests refused 401: %v, want 3", later.Value(func() any { return refused.Load() }))
	c, err := st.Counts(context.Background())
	require.NoError(t, err)
	assert.Zero(t, c.DeadLetters)
	assert.Zero(t, c.OrdersConfirmed)
	statusOut, err := runBinary("retries", "status", "--store", storeURL)
	require.NoError(t, err, statusOut)

	tmp := keyFile + ".new"
	require.NoError(t, os.WriteFile(tmp, []byte(right+"\n"), 0o600))
	require.NoError(t, os.Rename(tmp, keyFile)) // as a secret mount swaps it
	var seen seenCounts
	require.Eventually(t, func() bool { return seen.settled(t, st, len(docs)) }, 120*time.Second, 50*time.Millisecond,
		"not every order confirmed after the key was fixed (want %d); last: %v; logs:\n%v",
		len(docs), later.Value(seen.Last), later.Value(func() any { return tail(p.logs.String(), 4000) }))
	c, err = st.Counts(context.Background())
	require.NoError(t, err)
	assert.Zero(t, c.DeadLetters)
	ms := mockStats(t, mock)
	assert.Equal(t, len(docs), ms.Deliveries)
	assert.Zero(t, ms.DuplicateRequests)
	assert.Zero(t, ms.BadSignatures, "every request was signed with a secret the mock knows")
	status, _ = get(t, "http://"+metricsAddr+"/readyz")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, 1, len(p.logs.Lines(`"level":"ERROR"`, "sends held until a probe succeeds")), "logged once per state change")
	p.waitLog(t, "sending resumed")

	// The probes that met a 401 are in their orders' records, spending no
	// attempt: every order went out at its first counted attempt, but the
	// one whose 401 came first (it may have been that order's own: counted
	// against it, retried).
	probed, first := 0, 0
	for _, d := range docs {
		story, err := ops.OrderStory(context.Background(), st, d.Key, time.Now(), 15*time.Second)
		require.NoError(t, err)
		require.NotEmpty(t, story.Attempts, d.Key)
		for i, a := range story.Attempts {
			if i < len(story.Attempts)-1 {
				assert.Equal(t, http.StatusUnauthorized, a.Status)
				if a.Class == "transient" {
					first++
					continue
				}
				assert.Equal(t, "config", a.Class, "%s: %+v", d.Key, story.Attempts)
				probed++
			}
		}
		assert.Equal(t, "sent", story.Attempts[len(story.Attempts)-1].Outcome)
	}
	assert.Positive(t, probed)
	assert.Equal(t, 1, first, "the 401s counted against their orders: the storm's first alone")

	show, err := runBinary("orders", "show", "--store", storeURL, "--json", docs[0].Key)
	require.NoError(t, err, show)
	err, _ = p.stop(t, syscall.SIGTERM)
	require.NoError(t, err)

	// Nothing anywhere holds a secret.
	texts := map[string]string{"logs": p.logs.String(), "retries status": statusOut, "orders show": show,
		"metrics": metrics, "readyz": body}
	for _, name := range []string{"o.db", "o.db-wal"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
			texts["store file "+name] = string(b)
		}
	}
	for what, text := range texts {
		for _, secret := range []string{strings.TrimPrefix(right, "Bearer "), strings.TrimPrefix(wrong, "Bearer "),
			strings.TrimPrefix(older, "whsec_"), strings.TrimPrefix(newer, "whsec_")} {
			assert.NotContains(t, text, secret, "a secret in %s", what)
		}
	}
	assert.Contains(t, texts["store file o.db"]+texts["store file o.db-wal"], `"class":"config"`, "the grep reads the records")
}

// TestMutualTLSAsProcesses: a service on the company's own CA that wants a
// client certificate.
func TestMutualTLSAsProcesses(t *testing.T) {
	pki, err := testpki.New()
	require.NoError(t, err)
	files, err := pki.WriteFiles(t.TempDir())
	require.NoError(t, err)
	mock := startMock(t, "--fail-rate", "0", "--tls-cert", files.ServerCert, "--tls-key", files.ServerKey, "--client-ca", files.CA)
	require.True(t, strings.HasPrefix(mock, "https://"), mock)
	dir := t.TempDir()
	storeURL := "file:" + filepath.Join(dir, "o.db")
	p := startProc(t, runArgs(storeURL, mock, "--mail-ca-file", files.CA,
		"--mail-cert-file", files.ClientCert, "--mail-key-file", files.ClientKey)...)
	p.waitLog(t, `"msg":"watching"`)
	st := openStore(t, storeURL)
	docs := fixtures.Generate(20, 3)
	placeOrders(t, st, docs)
	var seen seenCounts
	require.Eventually(t, func() bool { return seen.settled(t, st, len(docs)) }, 60*time.Second, 20*time.Millisecond,
		"%d paid orders, all confirmed, no retry docs; last: %v; logs:\n%v",
		len(docs), later.Value(seen.Last), later.Value(func() any { return p.logs.String() }))

	// The mock wants a client certificate of everyone, its /stats reader too.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(true)}}
	resp, err := client.Get(mock + "/stats")
	require.NoError(t, err)
	var ms mockmail.Stats
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&ms))
	resp.Body.Close()
	assert.Equal(t, len(docs), ms.Deliveries)
	err, _ = p.stop(t, syscall.SIGTERM)
	require.NoError(t, err)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// TestSpansAreExportedOverOTLP: with the standard OTEL_* variables, run
// exports its spans to the collector they name (here a fake one that counts
// OTLP/HTTP trace posts).
func TestSpansAreExportedOverOTLP(t *testing.T) {
	var posts atomic.Int64
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/v1/traces" && r.Header.Get("Content-Type") == "application/x-protobuf" {
			if b, _ := io.ReadAll(r.Body); len(b) > 0 {
				posts.Add(1)
			}
		}
	}))
	defer collector.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100") // ms: export soon
	mock := startMock(t, "--fail-rate", "0")
	storeURL := "file:" + filepath.Join(t.TempDir(), "o.db")
	p := startProc(t, runArgs(storeURL, mock)...)
	p.waitLog(t, `"msg":"watching"`)
	st := openStore(t, storeURL)
	placeOrders(t, st, fixtures.Generate(5, 8))
	var seen seenCounts
	require.Eventually(t, func() bool { return seen.settled(t, st, 5) }, 60*time.Second, 20*time.Millisecond,
		"5 paid orders, all confirmed, no retry docs; last: %v; logs:\n%v",
		later.Value(seen.Last), later.Value(func() any { return p.logs.String() }))
	require.Eventually(t, func() bool { return posts.Load() > 0 }, 30*time.Second, 20*time.Millisecond,
		"no spans reached the collector (trace posts: %v); logs:\n%v",
		later.Value(func() any { return posts.Load() }), later.Value(func() any { return p.logs.String() }))
	assert.Positive(t, mockStats(t, mock).Traced)
	err, _ := p.stop(t, syscall.SIGTERM)
	require.NoError(t, err)
}

// A secret's file that other users may read is warned of at run's start,
// naming its flag (a 0644 admin token file was taken without a word); a
// private one, or none, is not.
func TestOpenSecretFilesAreWarnedOf(t *testing.T) {
	dir := t.TempDir()
	open, private := filepath.Join(dir, "open"), filepath.Join(dir, "private")
	require.NoError(t, os.WriteFile(open, []byte("a-token-of-sixteen-chars"), 0o644))
	require.NoError(t, os.Chmod(open, 0o644)) // whatever the umask
	require.NoError(t, os.WriteFile(private, []byte("a-token-of-sixteen-chars"), 0o600))
	var buf bytes.Buffer
	warnOpenSecrets(slog.New(slog.NewTextHandler(&buf, nil)), secretFiles(app.Config{
		Console: console.Config{TokenFile: open},
		Mail:    mailer.Config{AuthFile: private, SigningSecretFile: filepath.Join(dir, "missing")},
	}))
	out := buf.String()
	assert.Equal(t, 1, strings.Count(out, "level=WARN"), out)
	assert.Contains(t, out, "flag=admin-token-file path="+open+" mode=0644", out)
	assert.NotContains(t, out, private)
	assert.NotContains(t, out, "a-token-of-sixteen-chars", "never the secret")
}
