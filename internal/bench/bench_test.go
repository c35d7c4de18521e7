package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAfterWritesCountsOnlyDeliveriesAfterTheLastWrite(t *testing.T) {
	const ms = int64(1e6)
	for _, tc := range []struct {
		name          string
		delivered     []int64
		lastWrite     int64
		wantN         int
		wantPerSecond float64
	}{
		{"none after", []int64{1 * ms, 2 * ms}, 5 * ms, 0, 0},
		{"one at the write itself is not after it", []int64{5 * ms, 15 * ms}, 5 * ms, 1, 100},
		// Three deliveries in the 30ms after the last write: 100 a second.
		{"some after", []int64{1 * ms, 2 * ms, 20 * ms, 30 * ms, 40 * ms}, 10 * ms, 3, 100},
		{"all after", []int64{1010 * ms, 1020 * ms}, 1000 * ms, 2, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, perSecond := afterWrites(tc.delivered, tc.lastWrite)
			assert.Equal(t, tc.wantN, n)
			assert.InDelta(t, tc.wantPerSecond, perSecond, 1e-9)
		})
	}
}

func TestKeysParseBackAndScatter(t *testing.T) {
	for _, scattered := range []bool{false, true} {
		b := &bench{cfg: Config{Seed: 7, Scatter: scattered}, keyPrefix: "bench-x-"}
		keys := make([]string, 1000)
		for i := range keys {
			keys[i] = b.key('d', i)
			kind, n, ok := b.parseKey("confirmation:" + keys[i] + "@12")
			if !ok || kind != 'd' || n != i {
				t.Fatalf("scatter %v: %s parsed as %c %d %v", scattered, keys[i], kind, n, ok)
			}
		}
		// Keys in write order are in key order, or, scattered, about half
		// of the neighbours are out of it.
		inOrder := 0
		for i := 1; i < len(keys); i++ {
			if keys[i-1] < keys[i] {
				inOrder++
			}
		}
		if !scattered && inOrder != len(keys)-1 {
			t.Errorf("numbered keys: %d of %d neighbours in order", inOrder, len(keys)-1)
		}
		if scattered && (inOrder < 400 || inOrder > 600) {
			t.Errorf("scattered keys: %d of %d neighbours in order, want about half", inOrder, len(keys)-1)
		}
	}
}

// The ceiling's senders stop at an answer the service would not send
// again, and say it: each sent it again at once, up to a thousand times,
// and a service that wanted credentials got thousands of requests a
// second. A 503 is sent again, as the service would.
func TestTheSendersStopAtAnAnswerTheServiceWouldNotSendAgain(t *testing.T) {
	var requests atomic.Int64
	refused := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Error(w, "no credentials", http.StatusUnauthorized)
	}))
	defer refused.Close()
	bodies := make([][]byte, 100)
	for i := range bodies {
		bodies[i] = []byte(`{}`)
	}
	_, err := runCeiling(context.Background(), target{url: refused.URL}, bodies, 4, "k")
	require.ErrorContains(t, err, "answered 401 Unauthorized, which the service would not send again")
	assert.LessOrEqual(t, requests.Load(), int64(4), "one request a sender")

	var paths []string
	var tries atomic.Int64
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tries.Add(1) == 1 {
			paths = append(paths, r.URL.RequestURI())
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
	}))
	defer flaky.Close()
	c, err := runCeiling(context.Background(), target{url: flaky.URL + "/?key=abc"}, bodies[:1], 1, "k")
	require.NoError(t, err)
	assert.Equal(t, int64(2), c.requests, "the 503 sent again")
	assert.Equal(t, []string{"/sendConfirmation?key=abc"}, paths, "where the service posts, its query kept")
}

// The ceiling's senders carry none of the credentials or TLS files given
// to the service after --: with a service of the user's they are refused
// before anything is sent.
func TestTheCeilingIsRefusedWhereItsSendersWouldBe(t *testing.T) {
	ok := Config{Exe: "ordermail", Orders: 1, Workers: 1, TimerInterval: time.Second, RetryQuantum: time.Second,
		BackoffMin: time.Second, Backoff: order.BackoffExponential, Timeout: time.Minute, MailURL: "https://mail.example"}
	require.NoError(t, ok.Validate())
	for _, arg := range []string{"--mail-auth-file", "-mail-signing-secret-file=x", "--mail-cert-file"} {
		for _, c := range []Config{{Ceiling: true}, {Minimal: true}} {
			cfg := ok
			cfg.Ceiling, cfg.Minimal, cfg.ServiceArgs = c.Ceiling, c.Minimal, []string{arg, "f"}
			assert.ErrorContains(t, cfg.Validate(), "the senders of --ceiling and --minimal carry none of the service's credentials", arg)
			cfg.Ceiling, cfg.Minimal = false, false
			assert.NoError(t, cfg.Validate(), "without the senders, %s is the user's to give", arg)
		}
	}
}

// The service's share of the ceiling is given only where the two did the
// same work: not at an arrival rate, nor with failures.
func TestTheShareOfTheCeilingOnlyWhereComparable(t *testing.T) {
	c := ceilingResult{perSecond: 1000}
	res := Result{OrdersPerSecond: 800}
	setCeiling(&res, c, c, true)
	require.NotNil(t, res.OfCeiling)
	assert.InDelta(t, 0.8, *res.OfCeiling, 1e-9)
	res = Result{OrdersPerSecond: 800}
	setCeiling(&res, c, c, false)
	assert.Nil(t, res.OfCeiling)
	require.NotNil(t, res.CeilingPerSecond, "the ceiling itself is still said")
}

// The senders send again what the service would (its --retry-statuses,
// --retry-all-failures, given after --): the sample's mock answers 406 at
// a coin flip, which a service told --retry-all-failures retries; the
// ceiling ended the whole bench at the first.
func TestTheSendersSendAgainWhatTheServiceWould(t *testing.T) {
	var tries atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tries.Add(1) == 1 {
			http.Error(w, "sample mock", http.StatusNotAcceptable)
		}
	}))
	defer srv.Close()
	all := func(status int) bool { return status == http.StatusNotAcceptable }
	c, err := runCeiling(context.Background(), target{url: srv.URL, resends: all}, [][]byte{[]byte(`{}`)}, 1, "k")
	require.NoError(t, err)
	assert.Equal(t, int64(2), c.requests)
}

// Every flag the bench gives the service is refused after --: given there,
// the last value would win, and the figures would describe another run
// than the one the bench says (--mail-conns 64 beside a 16-sender ceiling).
func TestEveryFlagTheBenchGivesIsRefusedAfterDashes(t *testing.T) {
	ok := Config{Exe: "ordermail", Orders: 1, Workers: 1, TimerInterval: time.Second, RetryQuantum: time.Second,
		BackoffMin: time.Second, Backoff: order.BackoffExponential, Timeout: time.Minute}
	require.NoError(t, ok.Validate())
	given := 0
	for _, a := range ServiceFlags(ok, "store.db") {
		name, isFlag := strings.CutPrefix(a, "--")
		if !isFlag {
			continue
		}
		given++
		if name == "log-level" {
			continue // the user's to raise, to see what the service did
		}
		cfg := ok
		cfg.ServiceArgs = []string{"--" + name + "=x"}
		assert.ErrorContains(t, cfg.Validate(), "the bench sets it for the service", name)
	}
	assert.Greater(t, given, 5, "ServiceFlags gives its flags as --name value")
}
