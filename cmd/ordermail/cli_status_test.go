package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// statusJSON is `retries status --json` as a program reads it: every field
// of the type it says it is.
type statusJSON struct {
	ReadAt     time.Time `json:"readAt"`
	TimerArmed bool      `json:"timerArmed"`
	Paused     bool      `json:"paused"`
	Control    *struct {
		Interval string `json:"interval"`
		Quantum  string `json:"quantum"`
		Invalid  string `json:"invalid"`
	} `json:"control"`
	RetryDocs         int        `json:"retryDocs"`
	DueNow            int        `json:"dueNow"`
	OldestDueAt       *time.Time `json:"oldestDueAt"`
	DeadLetters       int        `json:"deadLetters"`
	OrdersPaid        int        `json:"ordersPaid"`
	OrdersUnconfirmed int        `json:"ordersUnconfirmed"`
	TopFailureReasons []struct {
		Reason string `json:"reason"`
		Count  int    `json:"count"`
	} `json:"topFailureReasons"`
	Service struct {
		Running any    `json:"running"`
		Note    string `json:"note"`
	} `json:"service"`
}

func readStatus(t *testing.T, storeURL string) statusJSON {
	t.Helper()
	out, _, err := cli(t, "retries", "status", "--json", "--store", storeURL)
	require.NoError(t, err)
	var s statusJSON
	require.NoError(t, json.Unmarshal([]byte(out), &s), out)
	assert.NotContains(t, out, "null")
	return s
}

func TestRetriesStatus(t *testing.T) {
	storeURL := "file:" + filepath.Join(t.TempDir(), "o.db")
	_, _, err := cli(t, "load", "--store", storeURL, "--collection", "inbound", "--pay", filepath.Join("..", "..", "fixtures", "orders"))
	require.NoError(t, err)

	s := readStatus(t, storeURL)
	assert.True(t, s.Paused)
	assert.Nil(t, s.Control, "no allow_retrys, no settings")
	assert.NotNil(t, s.TopFailureReasons, "an array, even empty")
	assert.Empty(t, s.TopFailureReasons)
	assert.Nil(t, s.OldestDueAt)
	assert.WithinDuration(t, time.Now(), s.ReadAt, time.Minute)
	assert.Equal(t, 5, s.OrdersPaid)
	assert.Equal(t, false, s.Service.Running)

	_, _, err = cli(t, "retries", "start", "--store", storeURL, "--interval", "7s", "--quantum", "1m")
	require.NoError(t, err)
	s = readStatus(t, storeURL)
	assert.True(t, s.TimerArmed)
	require.NotNil(t, s.Control)
	assert.Equal(t, "7s", s.Control.Interval)
	assert.Equal(t, "1m0s", s.Control.Quantum)

	out, _, err := cli(t, "retries", "status", "--store", storeURL)
	require.NoError(t, err)
	assert.Contains(t, out, "retries:            armed (allow_retrys exists)\n")
	assert.Contains(t, out, "  interval:         7s (from allow_retrys)\n")
	assert.Contains(t, out, "  quantum:          1m0s (from allow_retrys)\n")
	assert.Contains(t, out, "oldest due:         none due\n")
	assert.Contains(t, out, "service:            not running\n")
	assert.Contains(t, out, "top failure reasons: none\n")
	assert.NotContains(t, out, "null")
	assert.NotContains(t, out, "{")

	// Settings the service ignores are shown as such, not as JSON.
	_, _, err = cli(t, "retries", "stop", "--store", storeURL)
	require.NoError(t, err)
	st := openStore(t, storeURL)
	_, err = st.Upsert(t.Context(), "retry", "allow_retrys", []byte(`{"interval":"soon"}`))
	require.NoError(t, err)
	s = readStatus(t, storeURL)
	require.NotNil(t, s.Control)
	assert.Contains(t, s.Control.Invalid, "interval")
	out, _, err = cli(t, "retries", "status", "--store", storeURL)
	require.NoError(t, err)
	assert.Contains(t, out, "  settings:         ignored by the service: ")
}

// TestRetriesStatusSeesTheService: on the embedded store, status tells
// whether a service holds the store, without getting in its way.
func TestRetriesStatusSeesTheService(t *testing.T) {
	mock := startMock(t, "--fail-rate", "0")
	storeURL := "file:" + filepath.Join(t.TempDir(), "o.db")
	p := startProc(t, "run", "--store", storeURL, "--mail-url", mock, "--log-format", "json")
	p.waitLog(t, `"msg":"watching"`)

	s := readStatus(t, storeURL)
	assert.Equal(t, true, s.Service.Running, "run holds the store")
	assert.Contains(t, s.Service.Note, "o.db.lock")
	out, _, err := cli(t, "retries", "status", "--store", storeURL)
	require.NoError(t, err)
	assert.Contains(t, out, "service:            running (a process holds ")
	assert.False(t, p.hasLog(`"level":"ERROR"`), "the probe disturbed the service:\n%s", p.logs.String())

	err, _ = p.stop(t, syscall.SIGTERM)
	require.NoError(t, err, "logs:\n%s", p.logs.String())
	assert.Equal(t, false, readStatus(t, storeURL).Service.Running)
}

// Issue 11: on Couchbase, whether instances run is what their heartbeats
// say; with none (none runs, or --instance i/n, which does not heartbeat)
// the probe's null (cannot tell) stands.
func TestStatusViewOfMembers(t *testing.T) {
	now := time.Now()
	unknown := serviceView{Note: "probe"}
	v := newStatusView(ops.Status{Members: []store.Member{}}, now, unknown)
	assert.Equal(t, unknown, v.Service)
	assert.Empty(t, v.Members)

	v = newStatusView(ops.Status{Members: []store.Member{
		{Name: "a", Live: true, HeartbeatAge: 1500 * time.Millisecond, Partitions: 512},
		{Name: "b", HeartbeatAge: 40 * time.Second, Partitions: 512},
		{Name: "c", Leaving: true, HeartbeatAge: time.Second},
		{Name: "d", Live: true, Held: true, Aside: true, HeartbeatAge: time.Second},
		{Name: "e", Live: true, Held: true, HeartbeatAge: time.Second, Partitions: 512},
		{Name: "f", Held: true, HeartbeatAge: 40 * time.Second},
	}, Sweeper: &ops.Sweeper{Holder: "a", ExpiresAt: now.Add(time.Second)}}, now, unknown)
	assert.Equal(t, ptr(true), v.Service.Running)
	assert.Equal(t, "3 live members of 6 heartbeating lately, 1 stepped aside (its sends are held back: see its log)", v.Service.Note)
	assert.Equal(t, []memberView{
		{Name: "a", State: "live", HeartbeatAgeSeconds: 1.5, VBuckets: 512},
		{Name: "b", State: "stale", HeartbeatAgeSeconds: 40, VBuckets: 512},
		{Name: "c", State: "leaving", HeartbeatAgeSeconds: 1},
		{Name: "d", State: "aside", HeartbeatAgeSeconds: 1, SendsHeld: true},
		{Name: "e", State: "live", HeartbeatAgeSeconds: 1, VBuckets: 512, SendsHeld: true},
		{Name: "f", State: "stale", HeartbeatAgeSeconds: 40}, // what it held then holds nothing now
	}, v.Members)
	require.NotNil(t, v.Sweeper)
	assert.Equal(t, "a", v.Sweeper.Holder)
	var out strings.Builder
	require.NoError(t, printStatus(&out, v, 15*time.Second))
	assert.Contains(t, out.String(), "  STATE     HEARTBEAT  VBUCKETS  SENDS  NAME\n")
	assert.Contains(t, out.String(), "  live           1.5s       512  out    a\n")
	assert.Contains(t, out.String(), "  stale         40.0s       512  -      b\n")
	assert.Contains(t, out.String(), "  live           1.0s       512  held   e\n")
	assert.Contains(t, out.String(), "sweeper:            a (lease until")

	// Paused, an expired lease is taken over by nobody.
	v = newStatusView(ops.Status{Sweeper: &ops.Sweeper{Holder: "a", ExpiresAt: now.Add(-time.Second), Expired: true}}, now, unknown)
	out.Reset()
	require.NoError(t, printStatus(&out, v, 15*time.Second))
	assert.Contains(t, out.String(), "nobody sweeps while retries are paused)")
	assert.NotContains(t, out.String(), "takes over")
}

// When nobody sweeps, the status says who gave the sweep lease up last,
// when and why: an embedded store's only instance with its breaker open
// read "sweeper: none" and nothing more.
func TestStatusSaysWhyTheSweeperLeft(t *testing.T) {
	now := time.Now()
	at := now.Add(-90 * time.Second)
	v := newStatusView(ops.Status{SweeperLeft: &ops.SweeperLeft{Holder: "h/1/x", At: at, Why: timer.LeftBreaker}},
		now, serviceView{Running: ptr(true)})
	require.NotNil(t, v.SweeperLeft)
	assert.Nil(t, v.Sweeper)
	assert.Equal(t, sweeperLeftView{Holder: "h/1/x", At: at.UTC().Format(time.RFC3339), Why: timer.LeftBreaker, at: at}, *v.SweeperLeft)
	var out strings.Builder
	require.NoError(t, printStatus(&out, v, 15*time.Second))
	assert.Contains(t, out.String(), "sweeper:            none: h/1/x gave the sweep lease up 1m30s ago ("+at.UTC().Format(time.RFC3339)+
		"): its sends are held back: circuit breaker open\n", "as of the status's reading")
	assert.Contains(t, out.String(), "circuit breaker open\n                    due retries wait unflagged until its probe gets through, or another instance sweeps\n")

	v.SweeperLeft.Why = timer.LeftStopped
	out.Reset()
	require.NoError(t, printStatus(&out, v, 15*time.Second))
	assert.Contains(t, out.String(), "ago ("+at.UTC().Format(time.RFC3339)+"): stopped\n")
	assert.NotContains(t, out.String(), "due retries wait")
}

// The reasons' counts stay under their heading at a backlog's sizes: a
// count of six digits pushed its reason out of the column.
func TestStatusReasonsAligned(t *testing.T) {
	v := newStatusView(ops.Status{TopFailures: []ops.ReasonCount{
		{Reason: "retrying: HTTP 503", Count: 200000}, {Reason: "retrying: held back", Count: 7},
	}}, time.Now(), serviceView{Running: ptr(false)})
	var out strings.Builder
	require.NoError(t, printStatus(&out, v, 15*time.Second))
	assert.Contains(t, out.String(), "top failure reasons:\n   COUNT  REASON\n  200000  retrying: HTTP 503\n       7  retrying: held back\n")
}

// Flagged retries count for the oldest due, from when they fell due: after
// a redrive of 14,889 dead letters with no service running, the status said
// "14889 due now, 14889 flagged" and "oldest due: none due".
func TestStatusOldestDueCountsFlaggedRetries(t *testing.T) {
	storeURL := "file:" + filepath.Join(t.TempDir(), "o.db")
	st := openStore(t, storeURL)
	due := time.Now().Add(-time.Hour)
	_, err := st.Upsert(t.Context(), "retry", "o1", fmt.Appendf(nil, `{"docId":"o1","attempt":1,"ts":1,"nextAttemptAt":%d,"fireRetry":true}`, due.UnixMilli()))
	require.NoError(t, err)

	out, _, err := cli(t, "retries", "status", "--store", storeURL)
	require.NoError(t, err)
	assert.Contains(t, out, "pending retries:    1 (1 due now, 1 flagged)\n")
	assert.Regexp(t, `(?m)^oldest due:         due for 1h0m\d+s \(since `+regexp.QuoteMeta(due.UTC().Format(time.RFC3339))+`\)$`, out)
	s := readStatus(t, storeURL)
	require.NotNil(t, s.OldestDueAt)
	assert.Equal(t, due.Truncate(time.Second).Unix(), s.OldestDueAt.Unix(), "to the second, as RFC 3339 gives it")
}
