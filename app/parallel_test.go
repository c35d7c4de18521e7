package app_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/store"
)

// TestRetriesAreSentInParallel: the sample fires its retries in parallel,
// and so does ordermail: retries the timer flags together are sent at the
// same time, a worker each. The email service holds every retry until as
// many as there are workers are in flight at once; sent one after another,
// none would ever be let go.
func TestRetriesAreSentInParallel(t *testing.T) {
	const n = 8
	r := newScriptedRun(t, mockmail.Config{})
	r.cfg.Watcher.Workers = n
	var mu sync.Mutex
	seen := map[string]int{} // requests by idempotency key
	inFlight, most := 0, 0
	all := make(chan struct{})
	var release sync.Once
	r.cfg.Mail.URL = serveOn(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		key := req.Header.Get("Idempotency-Key")
		mu.Lock()
		seen[key]++
		first := seen[key] == 1
		if !first {
			inFlight++
			most = max(most, inFlight)
			if inFlight == n {
				release.Do(func() { close(all) })
			}
		}
		mu.Unlock()
		if first {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		select {
		case <-all:
		case <-time.After(45 * time.Second):
		case <-req.Context().Done():
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	r.cfg.Mail.Timeout = 50 * time.Second // above the handler's own wait for the others, within the claim
	a, st := r.start(t)
	defer stop(t, a)
	keys := r.placeOrders(t, st, n)

	// Every first send failed: the retries wait, paused, then are
	// flagged together by the timer's first sweep.
	var c store.Counts
	require.Eventually(t, func() bool { c = counts(t, st); return c.RetryDocs == n }, 60*time.Second, 10*time.Millisecond,
		"every order waits as a retry; last counts %+v", &c)
	armRetries(t, st)
	select {
	case <-all:
	case <-time.After(90 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("retries were not sent in parallel: at most %d of %d in flight at once", most, n)
	}
	waitConfirmed(t, st, keys)
}
