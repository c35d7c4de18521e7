package console_test

import (
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/console"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/lease"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const token = "s3cret-admin-token-0123456789"

// fixture is a console on a real embedded store, served by httptest.
type fixture struct {
	st     store.Store
	c      *console.Console
	srv    *httptest.Server
	client *http.Client // keeps cookies, never follows redirects
}

func newFixture(t *testing.T, cfg console.Config) *fixture {
	t.Helper()
	st := openEmbedded(t)
	m := deadMailer(t)
	return serve(t, cfg, st, deps(t, st, m))
}

// openEmbedded opens an embedded store in a temporary directory, closed
// when the test ends.
func openEmbedded(t *testing.T) *embedded.Store {
	t.Helper()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

// deadMailer is an email client whose service nobody answers: the console
// reads its state, and sends nothing.
func deadMailer(t *testing.T) *mailer.Client {
	t.Helper()
	m, err := mailer.New(mailer.Config{URL: "http://127.0.0.1:1"}, quiet)
	require.NoError(t, err)
	return m
}

// serve serves a console on st with d through httptest, to a client that
// keeps cookies and never follows redirects.
func serve(t *testing.T, cfg console.Config, st store.Store, d console.Deps) *fixture {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0" // not started: served by httptest
	}
	c, err := console.New(cfg, d, quiet, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(srv.Close)
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	client := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &fixture{st: st, c: c, srv: srv, client: client}
}

// deps are a watcher and a timer on st, neither started: the console reads
// their counters and status.
func deps(t *testing.T, st store.Store, m *mailer.Client) console.Deps {
	t.Helper()
	w, err := watcher.New(watcher.Config{}, st, m, quiet, nil)
	require.NoError(t, err)
	tm, err := timer.New(timer.Config{}, st, quiet, nil)
	require.NoError(t, err)
	return console.Deps{Store: st, Watcher: w, Mail: m, Timer: tm}
}

func (f *fixture) put(t *testing.T, coll, key string, v []byte) {
	t.Helper()
	_, err := f.st.Upsert(context.Background(), coll, key, v)
	require.NoError(t, err)
}

func (f *fixture) deadLetter(t *testing.T, key, reason string) {
	t.Helper()
	f.put(t, order.Inbound, key, []byte(`{"email":"a@example.com","paymentStatus":"paid"}`))
	f.put(t, order.DeadLetter, key, order.DeadLetterDoc{Type: "deadletter", DocID: key, Reason: reason, LastStatus: 400,
		LastError: "answered 400 Bad Request", Attempts: 1, DeadAt: time.Now().UnixMilli()}.Encode())
}

func (f *fixture) exists(t *testing.T, coll, key string) bool {
	t.Helper()
	_, err := f.st.Get(context.Background(), coll, key)
	if err == nil {
		return true
	}
	require.ErrorIs(t, err, store.ErrNotFound)
	return false
}

func (f *fixture) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := f.client.Get(f.srv.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// post posts a form as the console's own pages do (Origin: the console).
func (f *fixture) post(t *testing.T, path string, form url.Values, header ...string) (*http.Response, string) {
	t.Helper()
	resp, body, err := f.tryPost(path, form, header...)
	require.NoError(t, err)
	return resp, body
}

// tryPost is post, its failure returned: for a condition that is waited
// for, which must not stop the test.
func (f *fixture) tryPost(path string, form url.Values, header ...string) (*http.Response, string, error) {
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", f.srv.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// login logs in with the token and returns the session's CSRF token.
func (f *fixture) login(t *testing.T) string {
	t.Helper()
	return f.loginWith(t, token)
}

// loginWith logs in with tok and returns the session's CSRF token.
func (f *fixture) loginWith(t *testing.T, tok string) string {
	t.Helper()
	resp, _ := f.post(t, "/login", url.Values{"token": {tok}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body := f.get(t, "/")
	m := csrfField.FindStringSubmatch(body)
	require.NotNil(t, m, "a logged-in page carries the CSRF token")
	return m[1]
}

func TestReadOnlyWithoutToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{})
	f.deadLetter(t, "d1", order.ReasonPermanent)
	require.True(t, f.c.ReadOnly())

	code, body := f.get(t, "/")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "This console is <strong>read-only</strong>")
	assert.NotContains(t, body, `action="/retries/pause"`)
	code, body = f.get(t, "/deadletters")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "d1")
	assert.NotContains(t, body, "Redrive selected", "no actions offered")

	resp, body := f.post(t, "/login", url.Values{"token": {"anything-at-all-really"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, body = f.post(t, "/deadletters/redrive", url.Values{"one": {"d1"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Contains(t, body, "read-only")
	assert.True(t, f.exists(t, order.DeadLetter, "d1"))
}

func TestActionRefusedWithoutSession(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "d1", order.ReasonPermanent)

	_, body := f.get(t, "/")
	assert.Contains(t, body, "Log in</a>")
	resp, body := f.post(t, "/deadletters/redrive", url.Values{"one": {"d1"}, "csrf": {"x"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Contains(t, body, "Log in first")
	resp, _ = f.post(t, "/retries/resume", url.Values{})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.True(t, f.exists(t, order.DeadLetter, "d1"))
	assert.False(t, f.exists(t, order.Retry, order.ControlKey))

	// A made-up session id is no session.
	u, _ := url.Parse(f.srv.URL)
	f.client.Jar.SetCookies(u, []*http.Cookie{{Name: "ordermail-session", Value: "forged"}})
	resp, _ = f.post(t, "/deadletters/redrive", url.Values{"one": {"d1"}, "csrf": {"x"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.True(t, f.exists(t, order.DeadLetter, "d1"))
}

func TestLogin(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})

	resp, body := f.post(t, "/login", url.Values{"token": {"not-the-token-at-all"}})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Contains(t, body, "That is not the admin token.")
	assert.Empty(t, resp.Cookies())

	resp, _ = f.post(t, "/login", url.Values{"token": {" " + token + "\n"}, "back": {"//evil.example/x"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/", resp.Header.Get("Location"), "back must be a path of the console")
	require.Len(t, resp.Cookies(), 1)
	ck := resp.Cookies()[0]
	assert.Equal(t, "ordermail-session", ck.Name)
	assert.True(t, ck.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, ck.SameSite)
	assert.Zero(t, ck.MaxAge, "a session cookie, gone with the browser, as the login page says")
	assert.True(t, ck.Expires.IsZero(), "a session cookie")
	assert.NotContains(t, ck.Value, token)
	assert.GreaterOrEqual(t, len(ck.Value), 40, "a random id")

	_, body = f.get(t, "/")
	assert.Contains(t, body, "Logged in.")
	assert.Contains(t, body, `id="logout"`)
	csrf := csrfField.FindStringSubmatch(body)[1]
	resp, _ = f.post(t, "/logout", url.Values{"csrf": {csrf}})
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = f.post(t, "/retries/resume", url.Values{"csrf": {csrf}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "logged out")
}

func TestLoginAttemptsAreLimited(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	codes := map[int]int{}
	for range 8 {
		resp, _ := f.post(t, "/login", url.Values{"token": {"guess-guess-guess-guess"}})
		codes[resp.StatusCode]++
	}
	assert.Positive(t, codes[http.StatusTooManyRequests], "%v", codes)

	// The limit is the guesser's: the operator, from another address
	// (127.0.0.2, on the loopback too), logs in at once.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	if c, err := d.Dial("tcp", f.srv.Listener.Addr().String()); err != nil {
		t.Skipf("127.0.0.2 cannot reach the loopback here (%v): the limit by address is left to TestLoginLimitsByAddress", err)
	} else {
		c.Close()
	}
	f.client.Transport = &http.Transport{DialContext: d.DialContext}
	resp, body := f.post(t, "/login", url.Values{"token": {token}})
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode, "%s", body)
}

func TestActionRefusedWithWrongCSRF(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "d1", order.ReasonPermanent)
	f.login(t)

	for _, form := range []url.Values{{"one": {"d1"}}, {"one": {"d1"}, "csrf": {"wrong"}}} {
		resp, body := f.post(t, "/deadletters/redrive", form)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode)
		assert.Contains(t, body, "CSRF")
	}
	assert.True(t, f.exists(t, order.DeadLetter, "d1"))
}

func TestActionRefusedFromAnotherSite(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "d1", order.ReasonPermanent)
	csrf := f.login(t)

	for _, h := range [][]string{
		{"Origin", "http://evil.example", "Sec-Fetch-Site", ""},
		{"Sec-Fetch-Site", "cross-site"},
		{"Sec-Fetch-Site", "same-site"},
	} {
		resp, body := f.post(t, "/deadletters/redrive", url.Values{"one": {"d1"}, "csrf": {csrf}}, h...)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%v", h)
		assert.Contains(t, body, "another site")
	}
	assert.True(t, f.exists(t, order.DeadLetter, "d1"))
}

func TestRedriveThroughPOST(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	for _, k := range []string{"d1", "d2", "d3", "d4"} {
		f.deadLetter(t, k, order.ReasonPermanent)
	}
	f.deadLetter(t, "x1", order.ReasonExhausted)
	f.deadLetter(t, "x2", order.ReasonExhausted)
	csrf := f.login(t)

	resp, _ := f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "one": {"d1"}, "back": {"/deadletters?prefix=d"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/deadletters?prefix=d", resp.Header.Get("Location"))
	assert.False(t, f.exists(t, order.DeadLetter, "d1"))
	d, err := f.st.Get(context.Background(), order.Retry, "d1")
	require.NoError(t, err)
	r, err := order.DecodeRetryDoc(d.Value)
	require.NoError(t, err)
	assert.True(t, r.FireRetry, "due now")
	_, body := f.get(t, "/deadletters?prefix=d")
	assert.Contains(t, body, "Redrove 1 of the dead letter of d1")

	resp, _ = f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "scope": {"selected"}, "id": {"d2", "d3"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.DeadLetter, "d2"))
	assert.False(t, f.exists(t, order.DeadLetter, "d3"))
	assert.True(t, f.exists(t, order.DeadLetter, "d4"))

	// A reason that is none (a typo, a stray space) is refused, as the
	// CLI refuses it, not reported as a redrive of nothing.
	for _, bogus := range []string{"bogus", order.ReasonExhausted + " "} {
		resp, _ = f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "scope": {"reason"}, "reason": {bogus}})
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
		_, body = f.get(t, "/")
		assert.Contains(t, body, "is no dead letter&#39;s reason", "reason %q", bogus)
		assert.NotContains(t, body, "Redrove 0", "reason %q", bogus)
	}
	assert.True(t, f.exists(t, order.DeadLetter, "x1"))

	// Every one of a reason: asked first, as all are (a key prefix the
	// list showed does not narrow it).
	resp, body = f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "scope": {"reason"}, "reason": {order.ReasonExhausted}, "back": {"/deadletters?prefix=x"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "Redrive every “"+order.ReasonExhausted+"” dead letter?")
	assert.Contains(t, body, "a key prefix does not narrow it")
	assert.True(t, f.exists(t, order.DeadLetter, "x1"), "nothing redriven before the confirmation")
	resp, _ = f.post(t, "/deadletters/redrive", withToken(hiddenFields(body)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.DeadLetter, "x1"))
	assert.False(t, f.exists(t, order.DeadLetter, "x2"))
	assert.True(t, f.exists(t, order.DeadLetter, "d4"))

	// All is every dead letter, whatever the list's filter: asked first,
	// with how many.
	resp, body = f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "scope": {"all"}, "back": {"/deadletters?prefix=x"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "Redrive every dead letter (1)?")
	assert.Contains(t, body, "not only those a filter shows")
	assert.Contains(t, body, "even while retries are paused")
	assert.True(t, f.exists(t, order.DeadLetter, "d4"), "nothing redriven before the confirmation")
	resp, _ = f.post(t, "/deadletters/redrive", withToken(hiddenFields(body)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/deadletters?prefix=x", resp.Header.Get("Location"))
	assert.False(t, f.exists(t, order.DeadLetter, "d4"))

	resp, _ = f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "scope": {"selected"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body = f.get(t, "/")
	assert.Contains(t, body, "no dead letter is selected")
}

func TestPauseAndResumeThroughPOST(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	csrf := f.login(t)

	_, body := f.get(t, "/")
	assert.Contains(t, body, `id="retries-state">paused`)
	resp, _ := f.post(t, "/retries/resume", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.True(t, f.exists(t, order.Retry, order.ControlKey))
	_, body = f.get(t, "/")
	assert.Contains(t, body, `id="retries-state">armed`)
	assert.Contains(t, body, "Retries resumed")

	resp, _ = f.post(t, "/retries/pause", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.Retry, order.ControlKey))

	// A pause keeps the settings it deletes, in the store: Resume gives
	// them back on another instance's console too (or after a restart).
	ctx := context.Background()
	set := order.Control{Interval: 30 * time.Second, Quantum: time.Minute}
	_, _, _, err := ops.StartRetries(ctx, f.st, set)
	require.NoError(t, err)
	resp, _ = f.post(t, "/retries/pause", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body = f.get(t, "/")
	assert.Contains(t, body, "Its settings (interval 30s, quantum 1m0s) are kept")
	assert.Contains(t, body, `id="resume-with">interval 30s, quantum 1m0s<`, "the overview says what Resume gives back")
	m := deadMailer(t)
	other := serve(t, console.Config{Token: token}, f.st, deps(t, f.st, m))
	otherCSRF := other.login(t)
	resp, _ = other.post(t, "/retries/resume", url.Values{"csrf": {otherCSRF}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	d, err := f.st.Get(ctx, order.Retry, order.ControlKey)
	require.NoError(t, err)
	got, err := order.DecodeControl(d.Value)
	require.NoError(t, err)
	assert.Equal(t, set, got, "resumed with the settings the pause removed: %s", d.Value)
	_, body = other.get(t, "/")
	assert.Contains(t, body, "with the settings the pause removed (interval 30s, quantum 1m0s)")

	// Armed meanwhile by someone else: their settings stand, and the
	// pause's are not given back later either.
	f.post(t, "/retries/pause", url.Values{"csrf": {csrf}})
	_, _, _, err = ops.StartRetries(ctx, f.st, order.Control{Interval: 5 * time.Minute})
	require.NoError(t, err)
	f.post(t, "/retries/resume", url.Values{"csrf": {csrf}})
	require.NoError(t, f.st.Remove(ctx, order.Retry, order.ControlKey, 0)) // deleted by hand: nothing kept
	f.post(t, "/retries/resume", url.Values{"csrf": {csrf}})
	d, err = f.st.Get(ctx, order.Retry, order.ControlKey)
	require.NoError(t, err)
	assert.JSONEq(t, `{}`, string(d.Value), "no settings given back twice")

	// A pause of a document without settings clears what an earlier
	// pause kept: it resumes without them.
	_, _, _, err = ops.StartRetries(ctx, f.st, set)
	require.NoError(t, err)
	_, _, err = ops.StopRetries(ctx, f.st) // kept: set
	require.NoError(t, err)
	_, err = f.st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`)) // armed by hand, without settings
	require.NoError(t, err)
	f.post(t, "/retries/pause", url.Values{"csrf": {csrf}})
	f.post(t, "/retries/resume", url.Values{"csrf": {csrf}})
	d, err = f.st.Get(ctx, order.Retry, order.ControlKey)
	require.NoError(t, err)
	assert.JSONEq(t, `{}`, string(d.Value))
	f.post(t, "/retries/pause", url.Values{"csrf": {csrf}})

	// GET never changes anything.
	code, _ := f.get(t, "/retries/resume")
	assert.Equal(t, http.StatusMethodNotAllowed, code)
	assert.False(t, f.exists(t, order.Retry, order.ControlKey))
}

func TestPurgeNeedsConfirmation(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "d1", order.ReasonPermanent)
	f.deadLetter(t, "d2", order.ReasonPermanent)
	f.deadLetter(t, "d3", order.ReasonPermanent)
	csrf := f.login(t)

	resp, body := f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"selected"}, "id": {"d1", "d2"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "Purge 2 selected dead letters?")
	assert.Contains(t, body, "their orders stay unconfirmed")
	assert.True(t, f.exists(t, order.DeadLetter, "d1"), "nothing purged before the confirmation")

	resp, _ = f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"selected"}, "id": {"d1", "d2"}, "confirm": {"yes"}, "token": {token}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.DeadLetter, "d1"))
	assert.False(t, f.exists(t, order.DeadLetter, "d2"))
	assert.True(t, f.exists(t, order.DeadLetter, "d3"))

	resp, body = f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"all"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "Purge every dead letter (1)?")
	assert.Contains(t, body, "not only those a filter shows")
	asOf := regexp.MustCompile(`name="asof" value="(\d+)"`).FindStringSubmatch(body)
	require.Len(t, asOf, 2, "the page carries when it was shown:\n%s", body)
	// Dead-lettered after the page was shown: not in its count.
	f.put(t, order.DeadLetter, "d4", order.DeadLetterDoc{Type: "deadletter", DocID: "d4", Reason: order.ReasonPermanent,
		Attempts: 1, DeadAt: time.Now().Add(time.Minute).UnixMilli()}.Encode())
	resp, _ = f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"all"}, "asof": {asOf[1]}, "confirm": {"yes"}, "token": {token}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.DeadLetter, "d3"))
	assert.True(t, f.exists(t, order.Inbound, "d3"), "the order stays")
	assert.True(t, f.exists(t, order.DeadLetter, "d4"), "a dead letter the operator was not shown is left")
	_, next := f.get(t, "/deadletters")
	assert.Contains(t, next, "any dead-lettered after the page was shown are left", "and the operator is told")
}

// A redrive or purge of every dead letter, or of every one of a reason,
// and any purge or drop (what loses orders) ask for the admin token again:
// a session cookie alone (which the browser sends to another service on
// the same host, whatever its port) does not do it.
func TestActionsThatLoseOrdersAskForTheTokenAgain(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "d1", order.ReasonPermanent)
	f.deadLetter(t, "d2", order.ReasonNoEmail)
	csrf := f.login(t)
	bulk := []struct {
		path string
		form url.Values
	}{
		{"/deadletters/redrive", url.Values{"scope": {"all"}}},
		{"/deadletters/redrive", url.Values{"scope": {"reason"}, "reason": {order.ReasonPermanent}}},
		{"/deadletters/purge", url.Values{"scope": {"all"}}},
		{"/deadletters/purge", url.Values{"scope": {"reason"}, "reason": {order.ReasonPermanent}}},
	}
	for i, b := range bulk {
		b.form.Set("csrf", csrf)
		resp, body := f.post(t, b.path, b.form)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s %v", b.path, b.form)
		assert.Contains(t, body, `id="token"`, "%s %v: the confirmation asks for the token", b.path, b.form)
		confirmed := hiddenFields(body)
		// Wrong tokens count against the login's limit (five at once),
		// as right ones do: one here; the login and three actions below
		// take the others.
		tokens := []string{""}
		if i == 0 {
			tokens = append(tokens, "wrong")
		}
		for _, given := range tokens {
			form := hiddenFields(body)
			if given != "" {
				form.Set("token", given)
			}
			resp, again := f.post(t, b.path, form)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %v token %q", b.path, b.form, given)
			want := "That is not the admin token: nothing was done."
			if given == "" {
				want = "The admin token is asked again for this: nothing was done."
			}
			assert.Contains(t, again, want, "%s %v token %q", b.path, b.form, given)
			assert.Equal(t, confirmed, hiddenFields(again), "%s %v token %q: the same confirmation, shown again", b.path, b.form, given)
			assert.True(t, f.exists(t, order.DeadLetter, "d1"), "%s %v token %q: nothing done", b.path, b.form, given)
		}
	}
	// A purge of the selected, or of one, and a drop lose orders alike:
	// the cookie alone would purge every dead letter a page at a time.
	resp, body := f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"selected"}, "id": {"d2"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, `id="token"`, "a purge of the selected asks for the token")
	resp, again := f.post(t, "/deadletters/purge", hiddenFields(body))
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Equal(t, hiddenFields(body), hiddenFields(again), "the same confirmation, shown again")
	assert.True(t, f.exists(t, order.DeadLetter, "d2"), "not purged without the token")
	resp, _ = f.post(t, "/deadletters/purge", withToken(hiddenFields(body)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.DeadLetter, "d2"))
	f.put(t, order.Retry, "r1", order.RetryDoc{Type: order.TypeConfirmation, DocID: "r1", Attempt: 1, TS: time.Now().UnixMilli()}.Encode())
	resp, body = f.post(t, "/retries/drop", url.Values{"csrf": {csrf}, "key": {"r1"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, `id="token"`, "a drop asks for the token")
	resp, _ = f.post(t, "/retries/drop", hiddenFields(body))
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.True(t, f.exists(t, order.Retry, "r1"), "not dropped without the token")
	resp, _ = f.post(t, "/retries/drop", withToken(hiddenFields(body)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.Retry, "r1"), "dropped with the token")

	resp, body = f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"all"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = f.post(t, "/deadletters/purge", withToken(hiddenFields(body)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.DeadLetter, "d1"), "purged with the token")

	// Guessing goes at the login's pace.
	codes := []int{}
	for len(codes) < 6 && !slices.Contains(codes, http.StatusTooManyRequests) {
		resp, _ := f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"all"}, "confirm": {"yes"}, "token": {"guess"}})
		codes = append(codes, resp.StatusCode)
	}
	assert.Contains(t, codes, http.StatusTooManyRequests, "wrong tokens are limited")
}

// TestPurgeByReasonNeedsConfirmation: a list filtered by a reason offers
// to purge every dead letter of it (not all of them), once confirmed; one
// dead-lettered after the confirmation was shown is left.
func TestPurgeByReasonNeedsConfirmation(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "d1", order.ReasonPermanent)
	f.deadLetter(t, "d2", order.ReasonPermanent)
	f.deadLetter(t, "e1", order.ReasonNoEmail)
	csrf := f.login(t)
	_, list := f.get(t, "/deadletters?reason="+order.ReasonPermanent)
	assert.Contains(t, list, `id="purge-reason"`, "offered on a list filtered by reason")
	_, list = f.get(t, "/deadletters")
	assert.NotContains(t, list, `id="purge-reason"`, "not on the whole list")

	resp, body := f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"reason"}, "reason": {order.ReasonPermanent}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "Purge every “"+order.ReasonPermanent+"” dead letter?")
	assert.Contains(t, body, "not only those the list showed")
	assert.True(t, f.exists(t, order.DeadLetter, "d1"), "nothing purged before the confirmation")
	f.put(t, order.DeadLetter, "d3", order.DeadLetterDoc{Type: "deadletter", DocID: "d3", Reason: order.ReasonPermanent,
		Attempts: 1, DeadAt: time.Now().Add(time.Minute).UnixMilli()}.Encode())
	resp, _ = f.post(t, "/deadletters/purge", withToken(hiddenFields(body)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.DeadLetter, "d1"))
	assert.False(t, f.exists(t, order.DeadLetter, "d2"))
	assert.True(t, f.exists(t, order.DeadLetter, "e1"), "another reason's is left")
	assert.True(t, f.exists(t, order.DeadLetter, "d3"), "a dead letter the operator was not shown is left")
	_, next := f.get(t, "/deadletters")
	assert.Contains(t, next, "Purged 2 of the dead letters of reason "+order.ReasonPermanent)
}

// The dead letters an operator redrives from a page are those it showed:
// one dead-lettered again since (redriven and failed anew, by a second
// click or another operator) is left and said, as a purge leaves it.
func TestRedriveOfTheSelectedLeavesWhatWasDeadLetteredAgainSinceShown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	for _, k := range []string{"d1", "d2"} {
		f.deadLetter(t, k, order.ReasonPermanent)
	}
	f.login(t)
	_, list := f.get(t, "/deadletters")
	form := hiddenFields(list)
	require.NotEmpty(t, form.Get("asof"), "the list's form carries when it was shown")
	f.put(t, order.DeadLetter, "d1", order.DeadLetterDoc{Type: "deadletter", DocID: "d1", Reason: order.ReasonExhausted,
		Attempts: 8, RedriveCount: 1, DeadAt: time.Now().Add(time.Minute).UnixMilli()}.Encode())
	form.Set("scope", "selected")
	form["id"] = []string{"d1", "d2"}
	resp, _ := f.post(t, "/deadletters/redrive", form)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.True(t, f.exists(t, order.DeadLetter, "d1"), "dead-lettered again since the list showed it: left")
	assert.False(t, f.exists(t, order.Retry, "d1"))
	assert.False(t, f.exists(t, order.DeadLetter, "d2"))
	assert.True(t, f.exists(t, order.Retry, "d2"), "redriven")
	_, next := f.get(t, "/deadletters")
	assert.Contains(t, next, "Redrove 1 of 2 selected dead letters")
	assert.Contains(t, next, "changed since it was read; look again: d1")
}

// An order paid with nothing else stored is pending its first send, or
// was given up before any attempt was recorded: its page says both.
func TestAPendingOrdersPageSaysWhatElseItMayBe(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.put(t, order.Inbound, "p1", []byte(`{"email":"x@example.com","paymentStatus":"paid"}`))
	_, page := f.get(t, "/order?key=p1")
	assert.Contains(t, page, `id="order-state">pending first send`)
	assert.Contains(t, page, `id="state-note">Paid, and nothing else is stored for it`)
}

// hiddenFields are a page's hidden form fields, as its form posts them.
// withToken is form with the admin token, which a confirmation of a bulk
// action asks for again.
func withToken(form url.Values) url.Values {
	form.Set("token", token)
	return form
}

func hiddenFields(body string) url.Values {
	form := url.Values{}
	for _, m := range regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`).FindAllStringSubmatch(body, -1) {
		form.Add(m[1], m[2])
	}
	return form
}

// The dead letters the operator ticks are those the list showed: one
// redriven meanwhile and dead-lettered again (another reason, another
// story) is not what was chosen, and is left and said; so from the order's
// page.
func TestPurgeOfTheSelectedLeavesWhatWasDeadLetteredAgainSinceShown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	for _, k := range []string{"d1", "d2", "d3"} {
		f.deadLetter(t, k, order.ReasonPermanent)
	}
	f.login(t)                  // the pages carry the session's CSRF token
	again := func(key string) { // redriven, failed again, dead-lettered anew after the page
		f.put(t, order.DeadLetter, key, order.DeadLetterDoc{Type: "deadletter", DocID: key, Reason: order.ReasonExhausted,
			Attempts: 8, RedriveCount: 1, DeadAt: time.Now().Add(time.Minute).UnixMilli()}.Encode())
	}

	_, list := f.get(t, "/deadletters")
	form := hiddenFields(list)
	require.NotEmpty(t, form.Get("asof"), "the list's form carries when it was shown:\n%s", list)
	again("d1")
	form.Set("scope", "selected")
	form["id"] = []string{"d1", "d2"}
	resp, confirm := f.post(t, "/deadletters/purge", form)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, confirm, "Purge 2 selected dead letters?")
	resp, _ = f.post(t, "/deadletters/purge", withToken(hiddenFields(confirm)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.True(t, f.exists(t, order.DeadLetter, "d1"), "dead-lettered again since the list showed it: left")
	assert.False(t, f.exists(t, order.DeadLetter, "d2"))
	_, next := f.get(t, "/deadletters")
	assert.Contains(t, next, "Purged 1 of 2 selected dead letters")
	assert.Contains(t, next, "1 left, changed since it was read; look again: d1")

	_, page := f.get(t, "/order?key=d3")
	form = hiddenFields(page)
	require.NotEmpty(t, form.Get("asof"), "the order's page carries when it was shown:\n%s", page)
	again("d3")
	form.Set("one", "d3")
	resp, confirm = f.post(t, "/deadletters/purge", form)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = f.post(t, "/deadletters/purge", withToken(hiddenFields(confirm)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.True(t, f.exists(t, order.DeadLetter, "d3"), "dead-lettered again since its page showed it: left")
}

// heldGets is a store whose read of one dead letter waits until released,
// and then fails if its caller's context has ended meanwhile.
type heldGets struct {
	store.Store
	key     string
	held    chan struct{} // closed when the first read waits
	release chan struct{}
	once    sync.Once
}

func (h *heldGets) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if coll == order.DeadLetter && key == h.key {
		h.once.Do(func() { close(h.held) })
		<-h.release
		if err := ctx.Err(); err != nil {
			return store.Doc{}, err
		}
	}
	return h.Store.Get(ctx, coll, key)
}

// An action is the operator's, not the browser's: a tab closed or a
// proxy's timeout (nginx's 60s; a redrive of a million takes longer) in the
// middle of a redrive does not cut it short.
func TestAnActionOutlivesTheBrowserThatAskedForIt(t *testing.T) {
	t.Parallel()
	st := openEmbedded(t)
	h := &heldGets{Store: st, key: "d2", held: make(chan struct{}), release: make(chan struct{})}
	m := deadMailer(t)
	f := serve(t, console.Config{Token: token}, h, deps(t, h, m))
	gone := make(chan struct{}) // the action's request ended, on the server
	var once sync.Once
	f.srv.Config.Handler = func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/deadletters/redrive" {
				context.AfterFunc(r.Context(), func() { once.Do(func() { close(gone) }) })
			}
			next.ServeHTTP(w, r)
		})
	}(f.srv.Config.Handler)
	for _, k := range []string{"d1", "d2", "d3"} {
		f.deadLetter(t, k, order.ReasonPermanent)
	}
	csrf := f.login(t)

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.srv.URL+"/deadletters/redrive",
		strings.NewReader(url.Values{"csrf": {csrf}, "scope": {"selected"}, "id": {"d1", "d2", "d3"}}.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", f.srv.URL)
	asked := make(chan error, 1)
	go func() {
		resp, err := f.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		asked <- err
	}()
	var released sync.Once
	release := func() { released.Do(func() { close(h.release) }) }
	t.Cleanup(release) // before the server's close, which waits for the handler
	select {
	case <-h.held: // the redrive is under way
	case err := <-asked:
		t.Fatalf("the request ended before the redrive read d2: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the redrive did not read d2 within a minute")
	}
	cancel() // the browser goes
	require.Error(t, <-asked)
	select {
	case <-gone:
	case <-time.After(time.Minute):
		t.Fatal("the server did not see the request end within a minute")
	}
	release()
	var page atomic.Value
	require.Eventually(t, func() bool { // the action's end sets the flash: a page read before it has none
		resp, err := f.client.Get(f.srv.URL + "/deadletters")
		if err != nil {
			page.Store(err.Error())
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page.Store(string(body))
		return strings.Contains(string(body), "Redrove 3 of 3 selected dead letters")
	}, time.Minute, 10*time.Millisecond, "the next page says what the action did; last:\n%v", later.Value(page.Load))
	assert.False(t, f.exists(t, order.DeadLetter, "d2"), "the dead letter read after the browser went is redriven all the same")
	for _, k := range []string{"d1", "d2", "d3"} {
		assert.True(t, f.exists(t, order.Retry, k), "%s redriven", k)
	}
}

func TestRunRetryNowAndDrop(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	later := time.Now().Add(time.Hour).UnixMilli()
	f.put(t, order.Retry, "r1", order.RetryDoc{Type: order.TypeConfirmation, DocID: "r1", Attempt: 3, TS: time.Now().UnixMilli(),
		NextAttemptAt: later, LastStatus: 503}.Encode())
	csrf := f.login(t)

	_, body := f.get(t, "/retries")
	assert.Contains(t, body, "r1")
	assert.Contains(t, body, "HTTP 503")
	assert.Contains(t, body, "Run now")

	resp, _ := f.post(t, "/retries/run", url.Values{"csrf": {csrf}, "key": {"r1"}, "back": {"/retries"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	d, err := f.st.Get(context.Background(), order.Retry, "r1")
	require.NoError(t, err)
	r, err := order.DecodeRetryDoc(d.Value)
	require.NoError(t, err)
	assert.True(t, r.FireRetry)
	assert.Equal(t, later, r.NextAttemptAt, "the rest of the document is kept")
	_, body = f.get(t, "/retries")
	assert.Contains(t, body, "flagged: sending")
	assert.Contains(t, body, "Flag again", "a flag that went unhandled can be written again")

	// Flagged again: written as it is, a change of its own for the feed.
	resp, _ = f.post(t, "/retries/run", url.Values{"csrf": {csrf}, "key": {"r1"}, "back": {"/retries"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	again, err := f.st.Get(context.Background(), order.Retry, "r1")
	require.NoError(t, err)
	assert.NotEqual(t, d.CAS, again.CAS)
	assert.Equal(t, string(d.Value), string(again.Value))
	_, body = f.get(t, "/retries")
	assert.Contains(t, body, "was flagged already: it is written again")

	// The retry changed after the order's page showed it (flagged again):
	// not the one the operator chose to drop, though the confirmation
	// page came after the change.
	_, page := f.get(t, "/order?key=r1")
	shown := regexp.MustCompile(`<input type="hidden" name="cas" value="(\d+)">`).FindStringSubmatch(page)
	require.Len(t, shown, 2, "the order page's form carries the version shown:\n%s", page)
	resp, _ = f.post(t, "/retries/run", url.Values{"csrf": {csrf}, "key": {"r1"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, body = f.post(t, "/retries/drop", url.Values{"csrf": {csrf}, "key": {"r1"}, "cas": {shown[1]}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = f.post(t, "/retries/drop", withToken(hiddenFields(body)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.True(t, f.exists(t, order.Retry, "r1"), "a retry changed since the page showed it is left")

	resp, body = f.post(t, "/retries/drop", url.Values{"csrf": {csrf}, "key": {"r1"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "stays unconfirmed")
	assert.True(t, f.exists(t, order.Retry, "r1"), "nothing dropped before the confirmation")
	// The retry changed while the confirmation was read (flagged again):
	// not the one the operator chose to drop.
	confirmed := withToken(hiddenFields(body))
	resp, _ = f.post(t, "/retries/run", url.Values{"csrf": {csrf}, "key": {"r1"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = f.post(t, "/retries/drop", confirmed)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.True(t, f.exists(t, order.Retry, "r1"), "a retry changed since it was shown is left")
	_, body = f.get(t, "/")
	assert.Contains(t, body, "The retry of r1 was not dropped.")
	assert.Contains(t, body, "changed")

	resp, body = f.post(t, "/retries/drop", url.Values{"csrf": {csrf}, "key": {"r1"}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = f.post(t, "/retries/drop", withToken(hiddenFields(body)))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.False(t, f.exists(t, order.Retry, "r1"))
	resp, _ = f.post(t, "/retries/drop", url.Values{"csrf": {csrf}, "key": {"r1"}, "confirm": {"yes"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body = f.get(t, "/")
	assert.Contains(t, body, "No retry was dropped.", "a confirmation without the version shown drops nothing")

	resp, _ = f.post(t, "/retries/run", url.Values{"csrf": {csrf}, "key": {"r1"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body = f.get(t, "/")
	assert.Contains(t, body, "no such retry")
}

// heldBack is a store and a mailer whose breaker is open for an hour.
func heldBack(t *testing.T) (store.Store, *mailer.Client) {
	t.Helper()
	st := openEmbedded(t)
	m, err := mailer.New(mailer.Config{URL: "http://127.0.0.1:1", BreakerFailures: 1, BreakerCooldown: time.Hour}, quiet)
	require.NoError(t, err)
	require.Error(t, m.Send(context.Background(), "k", []byte(`{}`)), "nothing listens on port 1")
	require.Equal(t, "open", m.BreakerState())
	return st, m
}

// "Run now" while the breaker holds sends back says so: the retry is put
// off again, not sent within a poll interval.
func TestRunRetryNowWhileSendsAreHeldBack(t *testing.T) {
	t.Parallel()
	st, m := heldBack(t)
	f := serve(t, console.Config{Token: token}, st, deps(t, st, m))
	f.put(t, order.Retry, "r1", order.RetryDoc{Type: order.TypeConfirmation, DocID: "r1", Attempt: 1, TS: time.Now().UnixMilli(),
		NextAttemptAt: time.Now().Add(time.Hour).UnixMilli(), LastStatus: 503}.Encode())
	csrf := f.login(t)

	resp, _ := f.post(t, "/retries/run", url.Values{"csrf": {csrf}, "key": {"r1"}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body := f.get(t, "/")
	assert.Contains(t, body, "sends are held back now (the circuit breaker is open)")
	assert.NotContains(t, body, "sent within a poll interval")
}

var examined = regexp.MustCompile(`Examined (\d+) documents`)

func TestPagingIsBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{PageSize: 10, ScanBudget: 200})
	for i := range 1000 {
		reason := order.ReasonPermanent
		if i%400 == 399 {
			reason = "rare"
		}
		k := fmt.Sprintf("k%04d", i)
		f.put(t, order.DeadLetter, k, order.DeadLetterDoc{DocID: k, Reason: reason}.Encode())
	}

	_, body := f.get(t, "/deadletters")
	assert.Equal(t, 10, strings.Count(body, `<a href="/order?key=k`))
	assert.Contains(t, body, `href="/deadletters?after=k0009"`)

	// A rare reason: each page examines at most the budget and says where
	// to go on; following the pages finds every match.
	var found []string
	next := "/deadletters?reason=rare"
	for pages := 0; next != ""; pages++ {
		require.Less(t, pages, 10)
		code, body := f.get(t, next)
		require.Equal(t, http.StatusOK, code)
		m := examined.FindStringSubmatch(body)
		require.NotNil(t, m)
		n, _ := strconv.Atoi(m[1])
		assert.LessOrEqual(t, n, 200)
		found = append(found, regexp.MustCompile(`<a href="/order\?key=(k\d+)"`).FindAllString(body, -1)...)
		next = ""
		if m := regexp.MustCompile(`<a class="button primary" href="([^"]+)" id="next-page"`).FindStringSubmatch(body); m != nil {
			next = html.UnescapeString(m[1])
			assert.Contains(t, body, "stopped at its budget of 200")
		}
	}
	assert.Len(t, found, 2)

	_, body = f.get(t, "/deadletters?prefix=k09")
	assert.Equal(t, 10, strings.Count(body, `<a href="/order?key=k09`))
	_, body = f.get(t, "/deadletters?prefix=k099")
	assert.Equal(t, 10, strings.Count(body, `<a href="/order?key=k099`))
	assert.NotContains(t, body, `id="next-page"`)
}

func TestOrderPageShowsAttempts(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "o1", order.ReasonExhausted)
	at := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	rec := order.AttemptsDoc{Type: order.TypeAttempts, DocID: "o1", Total: 2, Attempts: []order.Attempt{
		{N: 1, At: at.UnixMilli(), DurationMs: 12, Status: 503, Class: "transient", Reason: "answered 503 Service Unavailable", Outcome: "retry", Instance: "web-1"},
		{N: 2, At: at.Add(time.Second).UnixMilli(), DurationMs: 9, Status: 503, Class: "transient", Reason: "answered 503 Service Unavailable", Outcome: "dead_letter", Instance: "web-2"},
	}}
	f.put(t, order.Attempts, "o1", rec.Encode())
	f.login(t)

	code, body := f.get(t, "/order?key=o1")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `id="order-state">dead-lettered`)
	assert.Contains(t, body, "attempts_exhausted")
	assert.Contains(t, body, "2026-11-21 12:00:01 UTC")
	assert.Contains(t, body, "web-2")
	assert.Contains(t, body, "dead_letter")
	assert.Contains(t, body, `id="redrive"`)
	assert.NotContains(t, body, "a@example.com", "no customer data")

	code, body = f.get(t, "/order?key=nope")
	assert.Equal(t, http.StatusNotFound, code)
	assert.Contains(t, body, "no order, retry, dead letter or attempt record")
}

// During an outage the retries say what the email service answered, and
// those the breaker held back before any request say so.
func TestHeldBackRetries(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	held := "circuit breaker open: email service not called"
	next := time.Now().Add(time.Hour).UnixMilli()
	f.put(t, order.Retry, "after503", order.RetryDoc{Type: order.TypeConfirmation, DocID: "after503", Attempt: 1, TS: 1,
		NextAttemptAt: next, LastStatus: 503, LastError: "answered 503 Service Unavailable", HeldBack: held}.Encode())
	f.put(t, order.Retry, "never", order.RetryDoc{Type: order.TypeConfirmation, DocID: "never", TS: 1,
		NextAttemptAt: next, HeldBack: held}.Encode())

	code, body := f.get(t, "/retries?reason="+url.QueryEscape(ops.RetryReasonHeldBack))
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `<code>never</code>`)
	assert.NotContains(t, body, `<code>after503</code>`)
	assert.Contains(t, body, "held back: "+held)

	code, body = f.get(t, "/order?key=after503")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "HTTP 503 answered 503 Service Unavailable")
	assert.Contains(t, body, "<dt>Held back</dt><dd>"+held+"</dd>")
	_, body = f.get(t, "/order?key=never")
	assert.Contains(t, body, "none: no request made yet")

	_, body = f.get(t, "/")
	assert.Contains(t, body, `href="/retries?reason=held&#43;back"`, "the overview's reasons link to the list")
}

// A retry not flagged waits while retries are paused, due or not: the
// order's page says so, and no longer once they are started.
func TestOrderPageSaysARetryWaitsForRetriesToStart(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.put(t, order.Inbound, "o1", []byte(`{"email":"a@x","paymentStatus":"paid"}`))
	f.put(t, order.Retry, "o1", order.RetryDoc{Type: order.TypeConfirmation, DocID: "o1", Attempt: 1, TS: 1, NextAttemptAt: 2, LastStatus: 503}.Encode())
	_, body := f.get(t, "/order?key=o1")
	assert.Contains(t, body, `id="order-state">retry due`)
	assert.Contains(t, body, `id="retries-paused"`)
	f.put(t, order.Retry, order.ControlKey, []byte(`{}`))
	_, body = f.get(t, "/order?key=o1")
	assert.Contains(t, body, `id="order-state">retry due`)
	assert.NotContains(t, body, `id="retries-paused"`)
}

func TestOverview(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{})
	f.put(t, order.Inbound, "a", []byte(`{"email":"a@x","paymentStatus":"paid","confirmationEmailSent":true}`))
	f.deadLetter(t, "d1", order.ReasonPermanent)
	f.put(t, order.Retry, "r1", order.RetryDoc{DocID: "r1", Attempt: 1, TS: 1, NextAttemptAt: 1, LastStatus: 503}.Encode())
	f.put(t, order.Retry, order.ControlKey, []byte(`{}`))
	host, _ := os.Hostname()
	f.put(t, store.Meta, "lease:timer", fmt.Appendf(nil, `{"owner":"%s/%d/abc","expiresAt":%d}`, host, os.Getpid(), time.Now().Add(2*time.Second).UnixMilli()))

	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{
		`id="orders-paid">2<`, `id="orders-confirmed">1<`, `id="dead-letters">1<`, `id="retries-pending">1<`, `id="retries-due">1<`,
		`id="retries-state">armed`, `id="breaker">closed`, "<svg", "sweeper (holds the timer's lease)", "this process",
		`href="/deadletters?reason=permanent_error"`, `href="/retries?reason=HTTP&#43;503"`, "Embedded store: one process at a time",
		"oldest due for ",
	} {
		assert.Contains(t, body, want)
	}
}

// countedEarlier is a store whose order counts were taken apart from the
// rest, as Couchbase's are.
type countedEarlier struct {
	store.Store
	at time.Time
}

func (s countedEarlier) Counts(ctx context.Context) (store.Counts, error) {
	c, err := s.Store.Counts(ctx)
	c.OrdersCountedAt = s.at
	return c, err
}

// Where the order counts may be older than the rest, the overview says how
// old; where they are counted with it (the embedded store), nothing.
func TestOverviewSaysWhenTheOrdersWereCounted(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{})
	_, body := f.get(t, "/")
	assert.Contains(t, body, `id="orders-paid">0<`)
	assert.NotContains(t, body, `id="orders-counted"`)

	m := deadMailer(t)
	st := countedEarlier{Store: f.st, at: time.Now().Add(-40 * time.Second)}
	c, err := console.New(console.Config{Listen: "127.0.0.1:0"}, deps(t, st, m), quiet, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/")
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Regexp(t, `id="orders-counted">counted 4\ds ago<`, string(b))
}

// While this process's sends are held back (its breaker open) the overview
// says it does not sweep, and why due retries wait unflagged.
func TestOverviewWhileSendsAreHeldBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, m := heldBack(t)
	d := deps(t, st, m)
	d.Timer.SetGate(m)
	_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	res, err := d.Timer.Sweep(ctx, time.Now())
	require.NoError(t, err)
	require.True(t, res.Held)
	f := serve(t, console.Config{}, st, d)

	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{`id="breaker">open`, "not sweeping: its sends are held back",
		"but not while this process's sends are held back", "every instance's sends are held back"} {
		assert.Contains(t, body, want)
	}
}

// A standby (a process that does not run the feed) sends nothing: its
// breaker, closed for want of sends, is no news of the email service. It
// said "closed: sends go out" while the running instance's was open.
func TestOverviewOfAStandbySaysItSendsNothing(t *testing.T) {
	t.Parallel()
	st, m := heldBack(t)
	d := deps(t, st, m) // its watcher not started: a standby's
	f := serve(t, console.Config{}, st, d)
	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "this process sends nothing")
	assert.NotContains(t, body, "sends go out.")

	require.NoError(t, d.Watcher.Start(context.Background()))
	t.Cleanup(func() { assert.NoError(t, d.Watcher.Stop(context.Background())) })
	_, body = f.get(t, "/")
	assert.NotContains(t, body, "this process sends nothing", "it runs the feed")
	assert.Contains(t, body, "sends are held back as retries", "its breaker is open")
}

// The overview says who gave the sweep lease up last, and why, while
// nobody holds it.
func TestOverviewSaysWhyTheSweeperLeft(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, m := heldBack(t)
	other := lease.New(st, timer.LeaseName, "other/7/x", time.Minute, nil)
	require.NoError(t, other.Acquire(ctx))
	require.NoError(t, other.Release(ctx, timer.LeftBreaker))
	f := serve(t, console.Config{}, st, deps(t, st, m))

	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	assert.Regexp(t, `<code>other/7/x</code> gave it up \S+ ago \(its sends are held back: circuit breaker open\)`, body)
}

// reasonsFail is a store whose failure reasons cannot be read (a query
// that times out on a strained cluster).
type reasonsFail struct{ store.Store }

func (reasonsFail) Reasons(context.Context) ([]store.Tally, error) {
	return nil, errors.New("reasons: timeout")
}

// A store that answers some reads and not others still gives the overview
// Pause and Resume, which an operator wants most when the store strains,
// and says what it could not read.
func TestOverviewKeepsPauseWhenTheCountsFail(t *testing.T) {
	t.Parallel()
	st := reasonsFail{openEmbedded(t)}
	_, err := st.Insert(context.Background(), order.Retry, order.ControlKey, []byte(`{}`))
	require.NoError(t, err)
	f := serve(t, console.Config{Token: token}, st, deps(t, st, deadMailer(t)))
	csrf := f.login(t)

	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "The store did not answer: reasons: timeout")
	assert.Contains(t, body, `id="retries-state">armed`)
	assert.Contains(t, body, `id="pause"`)
	resp, _ := f.post(t, "/retries/pause", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body = f.get(t, "/")
	assert.Contains(t, body, `id="retries-state">paused`)
	assert.Contains(t, body, `id="resume"`)
}

// keptUnreadable is a store on which the settings a pause kept cannot be
// read (on Couchbase, in the metadata bucket).
type keptUnreadable struct{ store.Store }

func (s keptUnreadable) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if coll == store.Meta && key == order.KeptControlKey {
		return store.Doc{}, errors.New("metadata out of reach")
	}
	return s.Store.Get(ctx, coll, key)
}

// Paused, the settings the pause kept out of reach: the overview offers
// Resume all the same (which arms without them), says what it could not
// read, and shows the rest.
func TestOverviewOffersResumeWhenTheKeptSettingsCannotBeRead(t *testing.T) {
	t.Parallel()
	st := keptUnreadable{openEmbedded(t)}
	f := serve(t, console.Config{Token: token}, st, deps(t, st, deadMailer(t)))
	f.login(t)
	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `id="retries-state">paused`)
	assert.Contains(t, body, `id="resume"`)
	assert.Contains(t, body, "The settings the pause kept could not be read")
	assert.NotContains(t, body, "The store did not answer")
}

// membersStore is a store whose instances share the feed, as Couchbase's
// do, with the members its heartbeats would list.
type membersStore struct {
	store.Store
	members []store.Member
}

func (m membersStore) Members(context.Context, string) ([]store.Member, error) { return m.members, nil }

// On a store whose instances share the feed, the overview lists each
// member with its state, heartbeat and vBuckets, as retries status and
// ordermail_members do: a stale or aside member is seen here too.
func TestOverviewListsTheMembers(t *testing.T) {
	t.Parallel()
	st := openEmbedded(t)
	ms := membersStore{Store: st, members: []store.Member{
		{Name: "host-a/11", HeartbeatAge: 400 * time.Millisecond, Partitions: 512, Live: true},
		{Name: "host-b/22", HeartbeatAge: 1200 * time.Millisecond, Partitions: 0, Live: true, Held: true, Aside: true},
		{Name: "host-c/<33>", HeartbeatAge: 42 * time.Second, Partitions: 512},
	}}
	m := deadMailer(t)
	f := serve(t, console.Config{}, ms, deps(t, ms, m))

	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{`id="members"`,
		"<code>host-a/11</code>", `<span class="badge good">live</span>`, "0.4s ago", ">512<",
		"<code>host-b/22</code>", `<span class="badge bad">aside</span> its sends are held back`,
		"<code>host-c/&lt;33&gt;</code>", `<span class="badge bad">stale</span> stopped heartbeating`, "42.0s ago"} {
		assert.Contains(t, body, want)
	}
}

// Flagged retries count for the oldest due: with only flagged ones due, the
// overview gives their age, where it said "none waiting".
func TestOverviewWithOnlyFlaggedRetriesDue(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{})
	f.put(t, order.Inbound, "r1", []byte(`{"email":"a@x","paymentStatus":"paid"}`))
	f.put(t, order.Retry, "r1", order.RetryDoc{DocID: "r1", Attempt: 1, TS: 1, NextAttemptAt: 1, FireRetry: true, LastStatus: 503}.Encode())

	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `id="retries-due">1<`)
	assert.Contains(t, body, "oldest due for ")
	assert.NotContains(t, body, "none waiting<")
}

func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{})
	for _, path := range []string{"/", "/deadletters", "/static/console.css", "/nope"} {
		resp, err := f.client.Get(f.srv.URL + path)
		require.NoError(t, err)
		resp.Body.Close()
		csp := resp.Header.Get("Content-Security-Policy")
		assert.Contains(t, csp, "default-src 'self'", path)
		assert.Contains(t, csp, "script-src 'none'", path)
		assert.Contains(t, csp, "frame-ancestors 'none'", path)
		assert.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"), path)
		assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), path)
	}
	code, body := f.get(t, "/")
	require.Equal(t, http.StatusOK, code)
	assert.NotContains(t, body, "<script")
	assert.NotContains(t, body, "style=")
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{})
	code, body := f.get(t, "/readyz")
	assert.Equal(t, http.StatusOK, code)
	assert.JSONEq(t, `{"status":"ready"}`, body)
	require.NoError(t, f.st.Close())
	code, body = f.get(t, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "store unavailable")
}

func TestTokenSettings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "o.db")})
	require.NoError(t, err)
	defer st.Close()
	m := deadMailer(t)
	open := func(cfg console.Config) (*console.Console, error) {
		cfg.Listen = "127.0.0.1:0"
		return console.New(cfg, deps(t, st, m), quiet, nil)
	}

	tests := []struct {
		name         string
		give         console.Config
		wantErr      string
		wantReadOnly bool
	}{
		{"none", console.Config{}, "", true},
		{"environment", console.Config{Token: token}, "", false},
		{"file", console.Config{TokenFile: write("tok", token+"\n")}, "", false},
		{"short", console.Config{Token: "short"}, "ORDERMAIL_ADMIN_TOKEN: the admin token is shorter than 16 characters", false},
		{"repetitive", console.Config{Token: "abababababababababab"}, "ORDERMAIL_ADMIN_TOKEN: the admin token has fewer than 8 different characters", false},
		{"empty file", console.Config{TokenFile: write("empty", " \n")}, "the file is empty", false},
		{"missing file", console.Config{TokenFile: filepath.Join(dir, "nope")}, "admin-token-file: open", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := open(tt.give)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				assert.NotContains(t, err.Error(), token)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantReadOnly, c.ReadOnly())
		})
	}
	assert.Equal(t, "[redacted]", console.Secret(token).String())
	assert.NotContains(t, fmt.Sprintf("%v %+v", console.Config{Token: token}, console.Config{Token: token}), token)
}

func TestStartAndStop(t *testing.T) {
	t.Parallel()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	m := deadMailer(t)

	off, err := console.New(console.Config{}, deps(t, st, m), quiet, nil)
	require.NoError(t, err)
	require.NoError(t, off.Start(context.Background()))
	assert.Nil(t, off.Addr(), "no address, no console")
	require.NoError(t, off.Stop(context.Background()))

	c, err := console.New(console.Config{Listen: "127.0.0.1:0"}, deps(t, st, m), quiet, nil)
	require.NoError(t, err)
	require.NoError(t, c.Start(context.Background()))
	resp, err := http.Get("http://" + c.Addr().String() + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, c.Stop(context.Background()))
}

// TestOnlyLoopbackHostsWhileOnLoopback: a page whose name an attacker
// pointed at 127.0.0.1 (DNS rebinding) reads nothing of a console on
// loopback; a console listening where other machines reach it answers
// whatever name they use.
func TestOnlyLoopbackHostsWhileOnLoopback(t *testing.T) {
	t.Parallel()
	loop := newFixture(t, console.Config{}) // told 127.0.0.1:0
	open := newFixture(t, console.Config{Listen: "0.0.0.0:9465"})
	named := newFixture(t, console.Config{Listen: "console.internal:9465"})
	port := loop.srv.URL[strings.LastIndexByte(loop.srv.URL, ':')+1:]
	tests := []struct {
		f    *fixture
		give string // Host
		want int
	}{
		{loop, "evil.example", http.StatusMisdirectedRequest},
		{loop, "evil.example:" + port, http.StatusMisdirectedRequest},
		{loop, "localhost.evil.example:" + port, http.StatusMisdirectedRequest},
		{loop, "127.0.0.1.evil.example:" + port, http.StatusMisdirectedRequest},
		{loop, "0.0.0.0:" + port, http.StatusMisdirectedRequest},
		{loop, "127.0.0.1:" + port, http.StatusOK},
		{loop, "127.0.0.1", http.StatusOK},
		{loop, "127.4.5.6:" + port, http.StatusOK},
		{loop, "localhost:" + port, http.StatusOK},
		{loop, "LocalHost.", http.StatusOK},
		{loop, "[::1]:" + port, http.StatusOK},
		{loop, "[::1]", http.StatusOK},
		{open, "evil.example", http.StatusOK},
		{open, "203.0.113.7:9465", http.StatusOK},
		{named, "evil.example", http.StatusOK},
	}
	for _, tt := range tests {
		for _, path := range []string{"/", "/readyz", "/static/console.css", "/login"} {
			req, err := http.NewRequest(http.MethodGet, tt.f.srv.URL+path, nil)
			require.NoError(t, err)
			req.Host = tt.give
			resp, err := tt.f.client.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tt.want, resp.StatusCode, "Host %s, GET %s", tt.give, path)
		}
	}
	// An action too, were it to carry a session.
	resp, err := loop.client.Do(func() *http.Request {
		req, err := http.NewRequest(http.MethodPost, loop.srv.URL+"/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
		require.NoError(t, err)
		req.Host = "evil.example:" + port
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return req
	}())
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode)
}

// TestStartedOnLoopbackRefusesOtherHosts: the same check on the console's
// own listener, which knows the address it listens on.
func TestStartedOnLoopbackRefusesOtherHosts(t *testing.T) {
	t.Parallel()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	m := deadMailer(t)
	// On loopback; and on every address with the hosts named, as the
	// compose file runs it in a container published on the host's
	// loopback.
	for _, cfg := range []console.Config{{Listen: "localhost:0"}, {Listen: "0.0.0.0:0", AllowedHosts: []string{"localhost"}}} {
		c, err := console.New(cfg, deps(t, st, m), quiet, nil)
		require.NoError(t, err)
		require.NoError(t, c.Start(context.Background()))
		_, port, err := net.SplitHostPort(c.Addr().String())
		require.NoError(t, err)
		addr := net.JoinHostPort("127.0.0.1", port)
		for give, want := range map[string]int{
			"evil.example:" + port: http.StatusMisdirectedRequest,
			"localhost:" + port:    http.StatusOK,
			addr:                   http.StatusOK,
		} {
			req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
			require.NoError(t, err)
			req.Host = give
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, want, resp.StatusCode, "listen %s (allowed %q), Host %s", cfg.Listen, cfg.AllowedHosts, give)
		}
		assert.NoError(t, c.Stop(context.Background()))
	}
}

// TestAFilterOfNoReasonSaysSo: a reason ordermail gives no retry or dead
// letter (a typo, a trailing space) showed "No dead letters match." and
// offered to redrive every one of it, which the action refuses. The page
// says so, naming the reasons, and lists what has it all the same (written
// by hand or by another tool) without offering that redrive.
func TestAFilterOfNoReasonSaysSo(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "d1", order.ReasonPermanent)
	f.login(t)
	for _, c := range []struct {
		path, says string
	}{
		{"/deadletters?reason=bogus", `Reason: &#34;bogus&#34; is no dead letter&#39;s reason; the reasons are permanent_error, `},
		{"/deadletters?reason=" + url.QueryEscape(order.ReasonPermanent+" "), `&#34;permanent_error &#34; is no dead letter&#39;s reason`},
		{"/retries?reason=bogus", `Reason: &#34;bogus&#34; is no retry&#39;s reason; the reasons are &#34;HTTP &#34; and a status (HTTP 503), `},
		{"/retries?reason=" + url.QueryEscape("HTTP 5031"), `&#34;HTTP 5031&#34; is no retry&#39;s reason`},
	} {
		code, body := f.get(t, c.path)
		assert.Equal(t, http.StatusOK, code, c.path)
		assert.Contains(t, body, c.says, c.path)
		assert.NotContains(t, body, "Redrive every", c.path)
	}
	for _, path := range []string{"/deadletters?reason=" + order.ReasonPermanent, "/retries?reason=" + url.QueryEscape("HTTP 418"),
		"/retries?reason=" + url.QueryEscape(ops.RetryReasonNoAnswer)} {
		code, body := f.get(t, path)
		assert.Equal(t, http.StatusOK, code, "%s: %s", path, body)
	}
	_, body := f.get(t, "/deadletters?reason="+order.ReasonPermanent)
	assert.Contains(t, body, "d1")
	assert.Contains(t, body, "Redrive every")
	assert.NotContains(t, body, `id="filter-note"`)
}

// TestActionsOnNothingSaySo: a form too large, a retry action naming no
// key and a redrive or purge of a key that is no dead letter each say what
// was wrong, and nothing of a success.
func TestActionsOnNothingSaySo(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	csrf := f.login(t)

	resp, body := f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "scope": {"selected"},
		"id": {strings.Repeat("x", 2<<20)}})
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Contains(t, body, "The form is larger than 1024 KiB")

	for _, c := range []struct {
		path string
		form url.Values
		says string
	}{
		{"/retries/run", url.Values{}, "No retry was run. Error: the form names no retry&#39;s key"},
		{"/retries/drop", url.Values{}, "No retry was dropped. Error: the form names no retry&#39;s key"},
		{"/deadletters/redrive", url.Values{"one": {"nosuch"}}, "Nothing was redriven. Error: "},
		{"/deadletters/purge", url.Values{"one": {"nosuch"}, "confirm": {"yes"}, "token": {token}}, "Nothing was purged. Error: "},
	} {
		c.form.Set("csrf", csrf)
		c.form.Set("back", "/")
		resp, _ := f.post(t, c.path, c.form)
		assert.Equal(t, http.StatusSeeOther, resp.StatusCode, c.path)
		_, body := f.get(t, "/")
		assert.Contains(t, body, c.says, c.path)
	}
}

// TestNoLoginWhereTheTokenWouldCrossTheNetworkInTheClear: on an address
// other machines reach, without TLS, the admin token would cross the
// network unencrypted: no login is offered there, and one posted is
// refused. Over HTTPS (a proxy that says so) it is offered, its cookie
// Secure; so is it where the browser names a loopback host (a container
// published on its host's loopback, an SSH tunnel).
func TestNoLoginWhereTheTokenWouldCrossTheNetworkInTheClear(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token, Listen: "0.0.0.0:9465"})
	ask := func(method, host string, form url.Values, header ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, f.srv.URL+"/login", strings.NewReader(form.Encode()))
		require.NoError(t, err)
		req.Host = host
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(body)
	}
	login := url.Values{"token": {token}}

	resp, body := ask(http.MethodGet, "ops.example.net:9465", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, `id="login-clear"`)
	assert.Contains(t, body, "unencrypted")
	assert.NotContains(t, body, `name="token"`, "no form to type the token into")
	resp, body = ask(http.MethodPost, "ops.example.net:9465", login)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, body)
	assert.Empty(t, resp.Cookies(), "no session")

	resp, _ = ask(http.MethodPost, "ops.example.net", login, "X-Forwarded-Proto", "https")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Len(t, resp.Cookies(), 1)
	assert.True(t, resp.Cookies()[0].Secure, "over HTTPS the cookie is never sent in the clear")

	for _, host := range []string{"localhost:9465", "127.0.0.1:9465", "[::1]:9465"} {
		resp, body = ask(http.MethodGet, host, nil)
		assert.Contains(t, body, `name="token"`, host)
		resp, _ = ask(http.MethodPost, host, login)
		assert.Equal(t, http.StatusSeeOther, resp.StatusCode, host)
	}
}

// TestXForwardedProtoIsAProxysWord: the header that says the browser came
// over HTTPS is taken from a proxy on this host (a loopback peer, above) or
// one --admin-trusted-proxies names; a client elsewhere that writes it
// itself is still in the clear, and refused.
func TestXForwardedProtoIsAProxysWord(t *testing.T) {
	t.Parallel()
	post := func(f *fixture) *http.Response {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, "http://ops.example.net/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.RemoteAddr = "192.0.2.7:40000" // a client on another machine
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		req.Header.Set("X-Forwarded-Proto", "https")
		rec := httptest.NewRecorder()
		f.c.Handler().ServeHTTP(rec, req)
		return rec.Result()
	}
	resp := post(newFixture(t, console.Config{Token: token, Listen: "0.0.0.0:9465"}))
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "written by the client itself")
	assert.Empty(t, resp.Cookies(), "no session")

	resp = post(newFixture(t, console.Config{Token: token, Listen: "0.0.0.0:9465",
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}))
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, "from a trusted proxy")
	require.Len(t, resp.Cookies(), 1)
	assert.True(t, resp.Cookies()[0].Secure)
}

// TestLoginsInTheClearAreLimitedToo: a client posting logins in the clear
// is refused at the login limit's pace, each refusal logged: it must not
// fill the log at its own.
func TestLoginsInTheClearAreLimitedToo(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token, Listen: "0.0.0.0:9465"})
	codes := map[int]int{}
	start := time.Now()
	for range 20 {
		req, err := http.NewRequest(http.MethodPost, f.srv.URL+"/login", strings.NewReader("token=x"))
		require.NoError(t, err)
		req.Host = "ops.example.net:9465"
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		codes[resp.StatusCode]++
	}
	// Five at once, then one a second.
	allowed := 5 + int(time.Since(start)/time.Second) + 1
	assert.LessOrEqual(t, codes[http.StatusForbidden], allowed, "refused in the clear (and logged) at the limit's pace: %v", codes)
	assert.Equal(t, 20, codes[http.StatusForbidden]+codes[http.StatusTooManyRequests], "%v", codes)
}

// TestARotatedTokenFileEndsTheOldTokensSessions: the operator who rewrites
// --admin-token-file (the token leaked) needs no restart: within a second
// or so the new token logs in, the old one does not, and every session
// made with the old one is ended.
func TestARotatedTokenFileEndsTheOldTokensSessions(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "admin-token")
	require.NoError(t, os.WriteFile(path, []byte(token+"\n"), 0o600))
	f := newFixture(t, console.Config{TokenFile: path})
	csrf := f.login(t) // a session made with the old token
	const rotated = "a-rotated-token-after-the-leak-0123456789"
	require.NoError(t, os.WriteFile(path, []byte(rotated+"\n"), 0o600))

	fresh := func() *http.Client {
		jar, err := cookiejar.New(nil)
		require.NoError(t, err)
		return &http.Client{Jar: jar, CheckRedirect: f.client.CheckRedirect}
	}
	var last atomic.Value
	require.Eventually(t, func() bool { // the old session's pages offer no action any more
		resp, err := f.client.Get(f.srv.URL + "/")
		if err != nil {
			last.Store(err.Error())
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last.Store(string(body))
		return !csrfField.Match(body)
	}, time.Minute, 50*time.Millisecond, "the old token's session lives on; last page:\n%v", later.Value(last.Load))

	resp, body := f.post(t, "/retries/resume", url.Values{"csrf": {csrf}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "the old token's session is ended")
	assert.Contains(t, body, "Log in first")
	f.client = fresh()
	resp, _ = f.post(t, "/login", url.Values{"token": {token}})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the old token no longer logs in")

	// A file emptied (or removed: a leak answered by deleting it) logs
	// nobody in, and its sessions act no more while it holds no token;
	// the same token back, they act again.
	csrf = f.loginWith(t, rotated)
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	require.Eventually(t, func() bool { // a try a second: the login limit's pace
		resp, err := fresh().PostForm(f.srv.URL+"/login", url.Values{"token": {rotated}})
		if err != nil {
			last.Store(err.Error())
			return false
		}
		resp.Body.Close()
		last.Store(resp.Status)
		return resp.StatusCode == http.StatusServiceUnavailable
	}, time.Minute, 1100*time.Millisecond, "an empty token file still let a login in; last: %v", later.Value(last.Load))
	resp, body = f.post(t, "/retries/resume", url.Values{"csrf": {csrf}})
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "no action while the file holds no token")
	assert.Contains(t, body, "holds no token: actions are off")
	require.NoError(t, os.WriteFile(path, []byte(rotated+"\n"), 0o600))
	require.Eventually(t, func() bool {
		resp, _, err := f.tryPost("/retries/resume", url.Values{"csrf": {csrf}})
		if err != nil {
			last.Store(err.Error())
			return false
		}
		last.Store(resp.Status)
		return resp.StatusCode == http.StatusSeeOther
	}, time.Minute, 100*time.Millisecond, "the session made with the token put back does not act again; last: %v", later.Value(last.Load))
}

// blockedGets is a store whose read of one dead letter waits for its
// caller's context to end, then says it returned.
type blockedGets struct {
	store.Store
	key      string
	blocked  chan struct{}
	returned atomic.Bool
	once     sync.Once
}

func (b *blockedGets) Get(ctx context.Context, coll, key string) (store.Doc, error) {
	if coll == order.DeadLetter && key == b.key {
		b.once.Do(func() { close(b.blocked) })
		<-ctx.Done()
		b.returned.Store(true)
		return store.Doc{}, ctx.Err()
	}
	return b.Store.Get(ctx, coll, key)
}

// Stop ends the actions still running and waits for them: an action
// outlives its request, and must not use the store once Stop has returned
// (the store is closed next).
func TestStopWaitsForTheActionsItEnds(t *testing.T) {
	t.Parallel()
	st := openEmbedded(t)
	b := &blockedGets{Store: st, key: "d1", blocked: make(chan struct{})}
	m := deadMailer(t)
	c, err := console.New(console.Config{Token: token, Listen: "127.0.0.1:0"}, deps(t, b, m), quiet, nil)
	require.NoError(t, err)
	require.NoError(t, c.Start(context.Background()))
	f := &fixture{st: b, c: c, srv: &httptest.Server{URL: "http://" + c.Addr().String()}}
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	f.client = &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	f.deadLetter(t, "d1", order.ReasonPermanent)
	csrf := f.login(t)

	go func() { // its answer never comes: the stop cuts it
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/deadletters/redrive",
			strings.NewReader(url.Values{"csrf": {csrf}, "one": {"d1"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", f.srv.URL)
		if resp, err := f.client.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-b.blocked:
	case <-time.After(time.Minute):
		t.Fatal("the redrive did not read d1 within a minute")
	}
	// The action would outlast the whole stop: it is ended within it, so
	// that the stops after the console's (the store's close) have time.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a margin of 2.5s for the action to return on a busy machine
	defer cancel()
	c.Stop(ctx)
	assert.NoError(t, ctx.Err(), "Stop returned within the stop's time")
	assert.True(t, b.returned.Load(), "the action returned before Stop did")
}

// heldApply is a store whose writes wait until release is closed.
type heldApply struct {
	store.Store
	entered, release chan struct{}
	once             sync.Once
}

func (h *heldApply) Apply(ctx context.Context, ws []store.Write) ([]uint64, error) {
	h.once.Do(func() { close(h.entered) })
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return h.Store.Apply(ctx, ws)
}

// The list filtered by a reason offers to redrive every one of it, not when
// a key prefix narrows what it shows: the redrive would not be narrowed.
func TestRedriveEveryOfAReasonIsNotOfferedUnderAPrefix(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	f.deadLetter(t, "a1", order.ReasonPermanent)
	f.login(t)
	_, body := f.get(t, "/deadletters?reason="+order.ReasonPermanent)
	assert.Contains(t, body, `id="redrive-reason"`)
	_, body = f.get(t, "/deadletters?reason="+order.ReasonPermanent+"&prefix=a")
	assert.NotContains(t, body, `id="redrive-reason"`)
	assert.Contains(t, body, `id="redrive-all"`, "all asks first, saying a filter does not narrow it")
}

// countsBound records how long each Counts call's context had left.
type countsBound struct {
	store.Store
	mu   sync.Mutex
	left []time.Duration
}

func (s *countsBound) Counts(ctx context.Context) (store.Counts, error) {
	left := time.Duration(-1) // no deadline
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	s.mu.Lock()
	s.left = append(s.left, left)
	s.mu.Unlock()
	return s.Store.Counts(ctx)
}

// A confirmation page's count is a page's read, bound as the others are
// (10s), not by the action's minutes: a store that does not answer left
// the page unanswered for five minutes (a reviewer).
func TestAConfirmationsCountIsBoundAsAPagesRead(t *testing.T) {
	t.Parallel()
	st := &countsBound{Store: openEmbedded(t)}
	f := serve(t, console.Config{Token: token}, st, deps(t, st, deadMailer(t)))
	csrf := f.login(t)
	for _, path := range []string{"/deadletters/purge", "/deadletters/redrive"} {
		st.mu.Lock()
		st.left = nil
		st.mu.Unlock()
		resp, body := f.post(t, path, url.Values{"csrf": {csrf}, "scope": {"all"}})
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Contains(t, body, "every dead letter (0)?", path)
		st.mu.Lock()
		left := slices.Clone(st.left)
		st.mu.Unlock()
		require.NotEmpty(t, left, path)
		for _, l := range left {
			assert.True(t, l > 0 && l <= 10*time.Second, "%s: a count with %v left", path, l)
		}
	}
}

// One bulk redrive or purge at a time: while one runs, every page says so,
// and a second is refused saying which runs, where it would have found
// every dead letter changed under it and its message hidden the first's.
func TestOneBulkActionAtATime(t *testing.T) {
	t.Parallel()
	h := &heldApply{Store: openEmbedded(t), entered: make(chan struct{}), release: make(chan struct{})}
	f := serve(t, console.Config{Token: token}, h, deps(t, h, deadMailer(t)))
	f.deadLetter(t, "d1", order.ReasonPermanent)
	f.deadLetter(t, "d2", order.ReasonPermanent)
	csrf := f.login(t)

	first := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/deadletters/redrive",
			strings.NewReader(url.Values{"csrf": {csrf}, "scope": {"all"}, "confirm": {"yes"}, "token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", f.srv.URL)
		resp, err := f.client.Do(req)
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	select {
	case <-h.entered:
	case <-time.After(time.Minute):
		t.Fatal("the redrive of all never wrote")
	}

	_, body := f.get(t, "/deadletters")
	assert.Contains(t, body, `id="bulk"`)
	assert.Contains(t, body, "a redrive of every dead letter is under way, started ")
	resp, _ := f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "scope": {"reason"}, "reason": {order.ReasonPermanent}, "confirm": {"yes"}, "token": {token}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = f.post(t, "/deadletters/purge", url.Values{"csrf": {csrf}, "scope": {"all"}, "confirm": {"yes"}, "token": {token}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body = f.get(t, "/")
	assert.Contains(t, body, "Nothing was purged. Error: a redrive of every dead letter is under way, started ")
	assert.True(t, f.exists(t, order.DeadLetter, "d1"), "nothing purged")

	close(h.release)
	select {
	case code := <-first:
		require.Equal(t, http.StatusSeeOther, code)
	case <-time.After(time.Minute):
		t.Fatal("the redrive of all did not end")
	}
	_, body = f.get(t, "/")
	assert.NotContains(t, body, `id="bulk"`)
	assert.Contains(t, body, "Redrove 2 of every dead letter")
	assert.False(t, f.exists(t, order.DeadLetter, "d1"))
}

// deadLetteredDuringTheRead writes a dead letter as the list reads the
// dead letters, a moment after the page began.
type deadLetteredDuringTheRead struct {
	store.Store
	once sync.Once
	t    *testing.T
}

func (s *deadLetteredDuringTheRead) Scan(ctx context.Context, coll, after string, fn func(store.Doc) error) error {
	if coll == order.DeadLetter {
		s.once.Do(func() {
			time.Sleep(5 * time.Millisecond) // the page began a few milliseconds before
			_, err := s.Store.Upsert(ctx, order.DeadLetter, "late", order.DeadLetterDoc{Type: "deadletter", DocID: "late",
				Reason: order.ReasonPermanent, LastStatus: 400, Attempts: 1, DeadAt: time.Now().UnixMilli()}.Encode())
			assert.NoError(s.t, err)
		})
	}
	return s.Store.Scan(ctx, coll, after, fn)
}

// A dead letter written while the list read it is shown, and the page's
// actions take it: the time the page says it was shown (asof) was taken
// before the read, and its redrive was refused as dead-lettered since
// (the console's review).
func TestADeadLetterShownIsOneItsPagesActionsTake(t *testing.T) {
	st := openEmbedded(t)
	late := &deadLetteredDuringTheRead{Store: st, t: t}
	f := serve(t, console.Config{Token: token}, late, deps(t, late, deadMailer(t)))
	f.login(t)
	code, body := f.get(t, "/deadletters")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "late", "shown")
	asOf := regexp.MustCompile(`name="asof" value="(\d+)"`).FindStringSubmatch(body)
	require.NotNil(t, asOf, body)
	d, err := st.Get(context.Background(), order.DeadLetter, "late")
	require.NoError(t, err)
	dl, err := order.DecodeDeadLetter(d.Value)
	require.NoError(t, err)
	shown, err := strconv.ParseInt(asOf[1], 10, 64)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, shown, dl.DeadAt, "the page says it was shown before the dead letter it shows was written")
}

// The consoles of several instances on one host keep a session each: a
// browser sends a host's cookies to every port, and one cookie name for
// all made a login to one console log out of the others (the console's
// review).
func TestConsolesOnOneHostKeepASessionEach(t *testing.T) {
	t.Parallel()
	st := openEmbedded(t)
	a := serve(t, console.Config{Token: token, Listen: "127.0.0.1:19465"}, st, deps(t, st, deadMailer(t)))
	b := serve(t, console.Config{Token: token, Listen: "127.0.0.1:19466"}, st, deps(t, st, deadMailer(t)))
	b.client = a.client // one browser: its cookies of 127.0.0.1 go to both
	csrfA := a.login(t)
	b.login(t)
	resp, _ := a.post(t, "/retries/pause", url.Values{"csrf": {csrfA}})
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode, "A's session outlives a login to B")
	u, err := url.Parse(a.srv.URL)
	require.NoError(t, err)
	var names []string
	for _, ck := range a.client.Jar.Cookies(u) {
		names = append(names, ck.Name)
	}
	assert.ElementsMatch(t, []string{"ordermail-session-19465", "ordermail-session-19466"}, names)

	// Started on ":0" (the demo's), each is named after the port it bound.
	var started []*fixture
	for range 2 {
		c, err := console.New(console.Config{Token: token, Listen: "127.0.0.1:0"}, deps(t, st, deadMailer(t)), quiet, nil)
		require.NoError(t, err)
		require.NoError(t, c.Start(context.Background()))
		t.Cleanup(func() { _ = c.Stop(context.Background()) })
		started = append(started, &fixture{st: st, c: c, srv: &httptest.Server{URL: "http://" + c.Addr().String()}, client: a.client})
	}
	csrfA = started[0].login(t)
	started[1].login(t)
	resp, _ = started[0].post(t, "/retries/resume", url.Values{"csrf": {csrfA}})
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode, "A's session outlives a login to B, both on ports of their own")
}

// A key a browser would change on its way back (a NUL, CR or LF, bytes
// that are not UTF-8) is carried encoded by the page's forms, and its row's
// actions act on it: they answered "no such dead letter", the dead letter
// left where it was (the console's review, in headless Chromium).
func TestOddKeysAreActedOnFromTheirRows(t *testing.T) {
	t.Parallel()
	f := newFixture(t, console.Config{Token: token})
	keys := []string{"cr\rkey", "lf\nkey", "nul\x00key", "latin1-caf\xe9", "~b64:looks-encoded", "plain"}
	for _, k := range keys {
		f.deadLetter(t, k, order.ReasonPermanent)
	}
	csrf := f.login(t)
	_, body := f.get(t, "/deadletters")
	values := regexp.MustCompile(`name="one" value="([^"]*)"`).FindAllStringSubmatch(body, -1)
	require.Len(t, values, len(keys), body)
	assert.Contains(t, body, `<code>&#34;lf\nkey&#34;</code>`, "shown escaped")
	for _, v := range values {
		resp, _ := f.post(t, "/deadletters/redrive", url.Values{"csrf": {csrf}, "one": {asABrowserSends(html.UnescapeString(v[1]))}})
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	}
	for _, k := range keys {
		assert.False(t, f.exists(t, order.DeadLetter, k), "%q is redriven", k)
		assert.True(t, f.exists(t, order.Retry, k), "%q is redriven", k)
	}
}

// asABrowserSends is an attribute's value as a browser posts it: its HTML
// parser makes a CR a LF, form encoding makes every LF a CRLF, and bytes
// that are not UTF-8 become U+FFFD.
func asABrowserSends(v string) string {
	v = strings.ReplaceAll(strings.ReplaceAll(v, "\r\n", "\n"), "\r", "\n")
	return strings.ReplaceAll(strings.ToValidUTF8(v, "\uFFFD"), "\n", "\r\n")
}
