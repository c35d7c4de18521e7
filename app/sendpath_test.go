package app_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// placeOne writes one paid order under key.
func placeOne(t *testing.T, st store.Store, key string) {
	t.Helper()
	_, err := st.Upsert(context.Background(), order.Inbound, key, []byte(`{"email":"ann@example.com","paymentStatus":"paid","card":"4111111111111111"}`))
	require.NoError(t, err)
}

// waitDeadLetter waits for key's dead letter and returns it.
func waitDeadLetter(t *testing.T, st store.Store, key string) order.DeadLetterDoc {
	t.Helper()
	var d order.DeadLetterDoc
	require.Eventually(t, func() bool {
		var ok bool
		d, ok = deadLetter(t, st, key)
		return ok
	}, 30*time.Second, 10*time.Millisecond, "no dead letter for %q", key)
	return d
}

// TestRedirectsAreAnswersNotDeliveries (finding 1): an email service that
// redirects is never followed: no order is confirmed, nothing reaches the
// redirect's target. A URL that redirects every order (an http:// URL a
// provider sends to https://, an API moved) is the configuration's, not
// the orders': after three orders in a row sends are held and the mailer
// says where it was sent, and no order is dead-lettered.
func TestRedirectsAreAnswersNotDeliveries(t *testing.T) {
	for _, status := range []int{301, 302, 307, 308} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			var target atomic.Int64
			elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { target.Add(1) }))
			defer elsewhere.Close()
			var posts atomic.Int64
			redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				posts.Add(1)
				http.Redirect(w, r, elsewhere.URL+"/steal?sig=s3cret", status)
			}))
			defer redirecting.Close()
			r := newScriptedRun(t, mockmail.Config{})
			r.cfg.Mail.URL = redirecting.URL
			r.cfg.Mail.BreakerCooldown = time.Hour
			var mail *mailer.Client
			a, st := r.start(t, &mail)
			defer stop(t, a)
			for _, k := range []string{"o1", "o2", "o3"} {
				placeOne(t, st, k)
			}
			require.Eventually(t, func() bool { return mail.Misconfigured() != "" }, 30*time.Second, 10*time.Millisecond,
				"sends never held; %d posts", later.Value(func() any { return posts.Load() }))
			assert.Equal(t, fmt.Sprintf("answered %d %s (0 bytes) to %s", status, http.StatusText(status), elsewhere.URL),
				mail.Misconfigured(), "where it was sent, its path and query left out")
			for _, k := range []string{"o1", "o2", "o3"} {
				assert.False(t, confirmed(t, st, k))
				_, dead := deadLetter(t, st, k)
				assert.False(t, dead, "%s dead-lettered for the URL's redirect", k)
			}
			assert.Zero(t, target.Load(), "the orders went nowhere else")
		})
	}
}

// TestAny2xxConfirms (finding 5): 202 and 204 are success.
func TestAny2xxConfirms(t *testing.T) {
	for _, status := range []int{http.StatusAccepted, http.StatusNoContent} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			var posts atomic.Int64
			svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				posts.Add(1)
				w.WriteHeader(status)
			}))
			defer svc.Close()
			r := newScriptedRun(t, mockmail.Config{})
			r.cfg.Mail.URL = svc.URL
			a, st := r.start(t)
			defer stop(t, a)
			placeOne(t, st, "o")
			require.Eventually(t, func() bool { return confirmed(t, st, "o") }, 30*time.Second, 10*time.Millisecond)
			_, dead := deadLetter(t, st, "o")
			assert.False(t, dead)
			assert.Equal(t, int64(1), posts.Load())
		})
	}
}

// TestUntrustedTLSHoldsSendsWithoutBlamingTheOrder (finding 6, refined by
// the production email services issue): a certificate ordermail does not
// trust is the configuration's fault, not the order's: the order waits in a
// retry document with the reason, no attempt counted and no dead letter,
// and sends are held (the mailer says why) until a probe succeeds.
func TestUntrustedTLSHoldsSendsWithoutBlamingTheOrder(t *testing.T) {
	svc := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	svc.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake the client refuses
	svc.StartTLS()
	defer svc.Close()
	r := newScriptedRun(t, mockmail.Config{})
	r.cfg.Mail.URL = svc.URL
	r.cfg.Mail.BreakerFailures = 0
	r.cfg.Mail.BreakerCooldown = time.Hour
	var mail *mailer.Client
	a, st := r.start(t, &mail)
	defer stop(t, a)
	placeOne(t, st, "o")
	var retry order.RetryDoc
	require.Eventually(t, func() bool {
		d, err := st.Get(context.Background(), order.Retry, "o")
		if err != nil {
			return false
		}
		retry, err = order.DecodeRetryDoc(d.Value)
		return err == nil
	}, 30*time.Second, 10*time.Millisecond, "no retry document for o")
	assert.Equal(t, "tls: certificate signed by unknown authority", retry.LastError)
	assert.Zero(t, retry.Attempt, "no attempt counted against the order")
	_, dead := deadLetter(t, st, "o")
	assert.False(t, dead)
	assert.Equal(t, "tls: certificate signed by unknown authority", mail.Misconfigured())
}

// TestUnsendableKeysSpareTheBreaker (finding 3): keys a header cannot carry
// are dead-lettered at once; the breaker stays closed and the good orders
// behind them go out.
func TestUnsendableKeysSpareTheBreaker(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{})
	r.cfg.Mail.BreakerFailures = 3
	var mail *mailer.Client
	a, st := r.start(t, &mail)
	defer stop(t, a)
	bad := []string{"cr\r", "lf\n", "crlf\r\nX-Evil: 1", "nul\x00", "del\x7f", "esc\x1b", "bell\a"}
	for _, k := range append(bad, "tab-ok\t") {
		placeOne(t, st, k)
	}
	keys := r.placeOrders(t, st, 20)
	waitConfirmed(t, st, keys)
	for _, k := range bad {
		d := waitDeadLetter(t, st, k)
		assert.Equal(t, order.ReasonInvalidKey, d.Reason, "%q", k)
	}
	assert.True(t, confirmed(t, st, "tab-ok\t"), "a tab is a valid header byte")
	assert.Equal(t, "closed", mail.BreakerState())
	assert.Equal(t, 21, r.mock.Stats().Requests, "no request for a bad key")
}

// TestNoCustomerDataInStoreOrLogs (finding 15): what the email service
// answers is kept as status, type, length and code, never its body.
func TestNoCustomerDataInStoreOrLogs(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":"overloaded","echo":{"email":"ann@example.com","card":"4111111111111111"}}`))
	}))
	defer svc.Close()
	logs := &logBuffer{}
	r := newScriptedRun(t, mockmail.Config{})
	r.cfg.Mail.URL = svc.URL
	r.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, st := r.start(t)
	placeOne(t, st, "o")
	var retry string
	require.Eventually(t, func() bool {
		var ok bool
		d, err := st.Get(context.Background(), order.Retry, "o")
		retry, ok = string(d.Value), err == nil
		return ok
	}, 30*time.Second, 10*time.Millisecond)
	stop(t, a)
	assert.Contains(t, retry, `"lastError":"answered 503 Service Unavailable (application/json, 83 bytes, code overloaded)"`)
	for _, secret := range []string{"4111111111111111", "ann@example.com"} {
		assert.NotContains(t, retry, secret)
		assert.NotContains(t, logs.String(), secret)
	}
}
