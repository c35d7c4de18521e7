package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/bench"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runBench runs `ordermail bench` as a process of the built binary, so that
// the mock and the service it starts are that binary too, and returns its
// JSON line, decoded twice: as the Result and as a map, to see which
// fields are there.
func runBench(t *testing.T, args ...string) (bench.Result, map[string]any) {
	t.Helper()
	res, fields, _ := runBenchSaying(t, args...)
	return res, fields
}

// runBenchSaying is runBench that returns what the bench said on stderr
// too (its progress).
func runBenchSaying(t *testing.T, args ...string) (bench.Result, map[string]any, string) {
	t.Helper()
	// Generous: both cores may be busy with other tests. The bench's own
	// --timeout ends it first and says where it was.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, append([]string{"bench", "--timeout", "5m"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "stderr:\n%s", stderr.String())
	t.Logf("bench %s:\n%s%s", strings.Join(args, " "), stderr.String(), stdout.String())
	assert.NotContains(t, stderr.String(), "warning:", "the mock and the service stop cleanly")

	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	require.Len(t, lines, 1, "one JSON line on stdout")
	var res bench.Result
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &res))
	var fields map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &fields))
	for _, f := range []string{"orders", "confirmed", "sendAttempts", "deliveries", "duplicateRequests",
		"elapsedSeconds", "ordersPerSecond", "secondsTo", "retryGapMs", "paidToSentMs", "settings"} {
		assert.Contains(t, fields, f)
	}
	if runtime.GOOS == "linux" {
		for _, f := range []string{"peakRSSMB", "serviceCPUSeconds", "serviceCPUPerOrderUs"} {
			assert.Contains(t, fields, f)
		}
	}
	return res, fields, stderr.String()
}

func TestBenchClosedLoopWithCeiling(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the service and the mock as processes")
	}
	t.Parallel()
	res, fields := runBench(t, "--orders", "300", "--mail-latency", "0", "--workers", "8", "--ceiling", "--minimal")

	assert.Equal(t, 300, res.Orders)
	assert.Equal(t, 300, res.Confirmed)
	require.NotNil(t, res.Deliveries)
	assert.Equal(t, res.Confirmed, *res.Deliveries)
	assert.Equal(t, 300, *res.SendAttempts, "no failures at fail rate 0")
	assert.Zero(t, *res.DuplicateRequests)
	assert.Zero(t, res.DeadLetters, "the run's, the redriven ones not counted")
	assert.Zero(t, res.RetryDocsLeft)
	assert.Positive(t, res.ElapsedSeconds)
	assert.Positive(t, res.OrdersPerSecond)
	if runtime.GOOS == "linux" {
		require.NotNil(t, res.ServiceCPUSeconds)
		require.NotNil(t, res.ServiceCPUPerOrderUs)
		// The service decoded, sent and recorded 300 orders: that takes
		// CPU, and the per-order figure is the total over the orders.
		assert.Positive(t, *res.ServiceCPUSeconds)
		assert.InDelta(t, *res.ServiceCPUSeconds*1e6/300, *res.ServiceCPUPerOrderUs, 0.1+*res.ServiceCPUPerOrderUs*0.01)
	}

	require.NotNil(t, res.SecondsTo)
	require.NotNil(t, res.SecondsTo.P50)
	require.NotNil(t, res.SecondsTo.P99)
	assert.LessOrEqual(t, *res.SecondsTo.P50, *res.SecondsTo.P99)
	assert.LessOrEqual(t, *res.SecondsTo.P99, res.ElapsedSeconds)
	require.NotNil(t, res.PaidToSentMs)
	require.NotNil(t, res.PaidToSentMs.Max)
	assert.Positive(t, *res.PaidToSentMs.Max)
	assert.Zero(t, res.RetryGapMs.Count)

	for _, f := range []string{"ceilingPerSecond", "ceilingBeforePerSecond", "ceilingAfterPerSecond", "ofCeiling", "afterWritesPerSecond", "afterWritesOfCeiling"} {
		assert.Contains(t, fields, f)
	}
	require.NotNil(t, res.OfCeiling)
	// One write of 300 orders: most deliveries come after it.
	require.NotNil(t, res.AfterWritesPerSecond)
	require.NotNil(t, res.AfterWritesOfCeiling)
	assert.Positive(t, *res.AfterWritesPerSecond)
	assert.InDelta(t, *res.AfterWritesPerSecond / *res.CeilingPerSecond, *res.AfterWritesOfCeiling, 0.001)
	assert.Positive(t, *res.CeilingPerSecond)
	assert.Positive(t, *res.OfCeiling)
	// The ceiling is measured before the run and after it: its figure is
	// the mean, and each time the 300 orders were sent once, under keys of
	// their own (no duplicate request above).
	require.NotNil(t, res.CeilingBeforePerSecond)
	require.NotNil(t, res.CeilingAfterPerSecond)
	assert.Positive(t, *res.CeilingBeforePerSecond)
	assert.Positive(t, *res.CeilingAfterPerSecond)
	// Each of the three is rounded to 0.1.
	assert.InDelta(t, (*res.CeilingBeforePerSecond+*res.CeilingAfterPerSecond)/2, *res.CeilingPerSecond, 0.15)
	assert.InDelta(t, res.OrdersPerSecond / *res.CeilingPerSecond, *res.OfCeiling, 0.001)
	assert.Equal(t, int64(600), *res.CeilingRequests)
	assert.Equal(t, 8, res.Settings.Workers)
	assert.True(t, res.Settings.Ceiling)

	// The mean send times: 8 senders cannot spend more than 8 times the
	// elapsed time sending.
	for _, f := range []string{"sendMeanMs", "ceilingSendMeanMs"} {
		assert.Contains(t, fields, f)
	}
	require.NotNil(t, res.SendMeanMs)
	require.NotNil(t, res.CeilingSendMeanMs)
	assert.Positive(t, *res.SendMeanMs)
	assert.Positive(t, *res.CeilingSendMeanMs)
	assert.LessOrEqual(t, *res.SendMeanMs*300, 8*res.ElapsedSeconds*1000*1.05)
	// The ceiling's is the mean of its two measurements'.
	assert.LessOrEqual(t, *res.CeilingSendMeanMs, 8*1000*(1 / *res.CeilingBeforePerSecond + 1 / *res.CeilingAfterPerSecond)/2*1.05)

	// The minimal pipeline ran before the service, with keys of its own:
	// the run's figures above count the run's orders alone.
	require.NotNil(t, res.MinimalPerSecond)
	require.NotNil(t, res.MinimalOfCeiling)
	assert.Positive(t, *res.MinimalPerSecond)
	assert.InDelta(t, *res.MinimalPerSecond / *res.CeilingPerSecond, *res.MinimalOfCeiling, 0.001)
	assert.True(t, res.Settings.Minimal)
	require.NotNil(t, res.MinimalSendMeanMs)
	assert.Positive(t, *res.MinimalSendMeanMs)
	assert.LessOrEqual(t, *res.MinimalSendMeanMs, 8*1000 / *res.MinimalPerSecond * 1.05)
	if runtime.GOOS == "linux" {
		require.NotNil(t, res.MinimalCPUPerOrderUs)
		assert.Positive(t, *res.MinimalCPUPerOrderUs)
		require.NotNil(t, res.OrderWriteCPUPerOrderUs)
		assert.Positive(t, *res.OrderWriteCPUPerOrderUs, "writing 300 orders takes CPU")
	}
}

func TestBenchFailuresDueDeadAndHistory(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the service and the mock as processes")
	}
	t.Parallel()
	// After --: no breaker and no attempt budget, so that an unlucky run of
	// failures neither pauses the sends for a cooldown nor dead-letters.
	res, _, said := runBenchSaying(t, "--orders", "300", "--fail-rate", "0.3", "--mail-latency", "0", "--workers", "8",
		"--backoff", "fixed", "--retry-quantum", "100ms", "--timer-interval", "50ms",
		"--due", "50", "--dead", "40", "--history", "200", "--seed", "7", "--idle", "200ms", "--minimal",
		"--", "--breaker-failures", "0", "--max-attempts", "0")
	// The minimal pipeline sends what the service delivers: the due
	// retries and the dead letters too.
	assert.Contains(t, said, "minimal pipeline: 390 sends")

	assert.Equal(t, 390, res.Confirmed, "the orders, the due retries and the redriven dead letters; not the history")
	require.NotNil(t, res.Deliveries)
	assert.Equal(t, res.Confirmed, *res.Deliveries)
	assert.Zero(t, *res.DuplicateRequests)
	assert.Zero(t, res.DeadLetters)
	assert.Zero(t, res.RetryDocsLeft)
	assert.Positive(t, *res.Failures, "at 30%% some sends failed")
	assert.Equal(t, *res.Deliveries+*res.Failures, *res.SendAttempts)
	// Every failure was followed by a retry, and the mock timed each.
	assert.Equal(t, *res.Failures, res.RetryGapMs.Count)
	assert.Positive(t, res.RetryGapMs.MinMs)
	assert.LessOrEqual(t, res.RetryGapMs.MinMs, res.RetryGapMs.MeanMs)
	assert.LessOrEqual(t, res.RetryGapMs.P99Ms, res.RetryGapMs.MaxMs)
	// No retry goes out before it is due: the last order came no earlier
	// than the floor its failures set.
	require.NotNil(t, res.FirstPassSeconds)
	require.NotNil(t, res.AfterFirstPassSeconds)
	require.NotNil(t, res.RetryFloorSeconds, "a fixed retry delay")
	assert.Positive(t, *res.FirstPassSeconds)
	assert.LessOrEqual(t, *res.FirstPassSeconds, res.ElapsedSeconds)
	assert.LessOrEqual(t, *res.RetryFloorSeconds, *res.AfterFirstPassSeconds)
	assert.Equal(t, []string{"--breaker-failures", "0", "--max-attempts", "0"}, res.Settings.ServiceArgs)
	assert.Equal(t, "fixed", res.Settings.Backoff)
	assert.Equal(t, 200, res.History)
	assert.Equal(t, 50, res.Due)
	// The due retries waited, paused, until the run started retries.
	require.NotNil(t, res.DueFirstSeconds)
	require.NotNil(t, res.DuePerSecond)
	assert.GreaterOrEqual(t, *res.DueFirstSeconds, 0.0)
	assert.LessOrEqual(t, *res.DueFirstSeconds, res.ElapsedSeconds)
	assert.Positive(t, *res.DuePerSecond)
	// The drain alone: the same deliveries, counted from the first of them.
	require.NotNil(t, res.DueDrainPerSecond)
	fromStart := float64(res.Due) / *res.DuePerSecond
	assert.InEpsilon(t, float64(res.Due-1)/(fromStart-*res.DueFirstSeconds), *res.DueDrainPerSecond, 0.05)
	// The dead letters came back with the redrive, which was timed.
	assert.Equal(t, 40, res.Dead)
	require.NotNil(t, res.RedriveSeconds)
	assert.Positive(t, *res.RedriveSeconds)
	assert.LessOrEqual(t, *res.RedriveSeconds, res.ElapsedSeconds)
	if runtime.GOOS == "linux" {
		require.NotNil(t, res.RedrivePeakRSSMB)
		assert.Positive(t, *res.RedrivePeakRSSMB)
	}
	require.NotNil(t, res.DeadFirstSeconds)
	require.NotNil(t, res.DeadPerSecond)
	assert.GreaterOrEqual(t, *res.DeadFirstSeconds, 0.0)
	assert.LessOrEqual(t, *res.DeadFirstSeconds, res.ElapsedSeconds)
	assert.Positive(t, *res.DeadPerSecond)
	assert.Nil(t, res.CeilingPerSecond, "no --ceiling")
	// --idle: the idle service and the status timed, while the due retries
	// waited paused and after the run.
	for name, f := range map[string]*float64{"idleCPUPercent": res.IdleCPUPercent, "statusMs": res.StatusMs,
		"metricsMs": res.MetricsMs, "pausedIdleCPUPercent": res.PausedIdleCPUPercent,
		"pausedStatusMs": res.PausedStatusMs, "pausedMetricsMs": res.PausedMetricsMs} {
		if assert.NotNil(t, f, name) {
			assert.GreaterOrEqual(t, *f, 0.0, name)
		}
	}
	if assert.NotNil(t, res.StatusMs) && assert.NotNil(t, res.PausedStatusMs) {
		assert.Positive(t, *res.StatusMs, "a process was run and timed")
		assert.Positive(t, *res.PausedStatusMs, "a process was run and timed")
	}
}

// TestBenchFailOnce: with --fail-once the mock fails first sends only, so
// no order is failed twice however high the rate.
func TestBenchFailOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the service and the mock as processes")
	}
	t.Parallel()
	res, _ := runBench(t, "--orders", "200", "--fail-rate", "0.9", "--fail-once", "--mail-latency", "0", "--workers", "8",
		"--backoff", "fixed", "--retry-quantum", "100ms", "--timer-interval", "50ms", "--seed", "11",
		"--", "--breaker-failures", "0")
	assert.Equal(t, 200, res.Confirmed)
	assert.True(t, res.Settings.FailOnce)
	require.NotNil(t, res.Failures)
	assert.Positive(t, *res.Failures)
	assert.LessOrEqual(t, *res.Failures, 200, "an order failed more than once")
	assert.Equal(t, *res.Failures+200, *res.SendAttempts, "one retry a failure")
	// One failure at most: the floor is one retry delay past some order's
	// first request, and the last delivery is no earlier.
	require.NotNil(t, res.RetryFloorSeconds)
	assert.LessOrEqual(t, *res.RetryFloorSeconds, 0.1)
	assert.LessOrEqual(t, *res.RetryFloorSeconds, *res.AfterFirstPassSeconds)
	assert.Zero(t, *res.DuplicateRequests)
}

// TestBenchHoldEvery: the mock answers nothing to the first request of
// every 100th order; the service gives up on each at its mail timeout and
// sends it again later, and every order is delivered once.
func TestBenchHoldEvery(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the service and the mock as processes")
	}
	t.Parallel()
	res, _ := runBench(t, "--orders", "300", "--hold-every", "100", "--mail-latency", "0", "--workers", "8",
		"--backoff", "fixed", "--retry-quantum", "100ms", "--timer-interval", "50ms", "--seed", "5",
		"--", "--mail-timeout", "2s", "--breaker-failures", "0")
	assert.Equal(t, 300, res.Confirmed)
	require.NotNil(t, res.HeldRequests)
	assert.Equal(t, 3, *res.HeldRequests, "keys 100, 200 and 300 of the mock's count (the probe order is the first)")
	assert.Equal(t, 300, *res.Deliveries)
	assert.Equal(t, 303, *res.SendAttempts, "one more request for each held one")
	assert.Zero(t, *res.DuplicateRequests)
	assert.Equal(t, 100, res.Settings.HoldEvery)
}

// Against another email service, the service's credentials are the
// user's to give after -- (bench gives them only with --secure, to its
// own mock).
func TestBenchPassesCredentialsForAnotherEmailService(t *testing.T) {
	t.Parallel()
	c := bench.Config{Exe: "x", Orders: 1, Workers: 16, TimerInterval: time.Second, RetryQuantum: 15 * time.Second,
		Backoff: "exponential", BackoffMin: time.Second, Timeout: time.Minute, MailURL: "http://127.0.0.1:1",
		ServiceArgs: []string{"--mail-auth-file", "/run/secrets/token", "--mail-signing-secret-file=/run/secrets/whsec"}}
	assert.NoError(t, c.Validate())
	c.Secure, c.MailURL = true, ""
	assert.ErrorContains(t, c.Validate(), "-- --mail-auth-file: the bench sets it")
}

func TestBenchRejectsBadSettings(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		give []string
		want string
	}{
		{give: []string{"--fail-rate", "1"}, want: "fail-rate: 1 is not at least 0 and below 1"},
		{give: []string{"--orders", "0"}, want: "orders: 0 is not positive"},
		{give: []string{"--workers", "0"}, want: "workers: 0 is not between 1 and 1024"},
		{give: []string{"--backoff", "linear"}, want: `backoff: "linear" is not exponential or fixed`},
		{give: []string{"--mail-url", "http://127.0.0.1:1", "--fail-rate", "0.1"}, want: "fail-rate: a setting of the mock"},
		{give: []string{"--hold-every", "100", "--ceiling"}, want: "hold-every: the senders of --ceiling and --minimal would wait"},
		{give: []string{"--hold-every", "100", "--minimal"}, want: "hold-every: the senders of --ceiling and --minimal would wait"},
		{give: []string{"--hold-every", "-1"}, want: "hold-every: -1 is negative"},
		{give: []string{"--dead", "-1"}, want: "dead: -1 is negative"},
		// The service's flags the bench sets: after --, the last value would
		// win while the figures describe the bench's.
		{give: []string{"--", "--workers", "64"}, want: "-- --workers: the bench sets it for the service"},
		{give: []string{"--", "-retry-quantum=3s"}, want: "give it as bench's --retry-quantum"},
		{give: []string{"--", "--log-level", "info", "--backoff", "fixed"}, want: "-- --backoff:"},
		{give: []string{"--secure", "--", "--mail-auth-file", "x"}, want: "bench --secure gives the service its credentials"},
		// The service's flags are checked as it will check them, before
		// anything runs: the service used to refuse them after the ceiling
		// and the history's writes.
		{give: []string{"--ceiling", "--", "--claim-ttl", "1ms"}, want: "the flags after --, as the service would take them: claim-ttl: 1ms must be longer than mail-timeout 10s"},
		{give: []string{"--ceiling", "--", "--mail-conns", "64"}, want: "-- --mail-conns: the bench sets it for the service"},
		{give: []string{"--", "--no-such-flag"}, want: "flag provided but not defined: -no-such-flag"},
		{give: []string{"--", "--breaker-failures", "x"}, want: `invalid value "x" for flag -breaker-failures`},
		{give: []string{"--", "stray"}, want: `"stray" is no flag`},
		{give: []string{"--mail-url", "http://127.0.0.1:1", "--ceiling", "--", "--mail-auth-file", "x"}, want: "the senders of --ceiling and --minimal carry none of the service's credentials"},
	} {
		_, _, err := cli(t, append([]string{"bench"}, tt.give...)...)
		assert.ErrorContains(t, err, tt.want, "%v", tt.give)
		assert.Equal(t, 2, exitStatus(err, nil, io.Discard), "%v: a value the command does not take", tt.give)
	}
}

// TestBenchRefusesAStoreThatIsThere: a store given with --store that holds
// a store already may be a service's, whose orders the figures would count
// and which would mail the benchmark's orders: refused, and left as it was.
func TestBenchRefusesAStoreThatIsThere(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "ordermail.db")
	require.NoError(t, os.WriteFile(db, []byte("a service's store"), 0o600))
	_, stderr, err := cli(t, "bench", "--orders", "10", "--store", dir)
	assert.EqualError(t, err, "store: "+dir+" already holds a store (ordermail.db); a benchmark writes its own orders on a new one: give a new directory")
	assert.Equal(t, 2, exitStatus(err, nil, io.Discard), "a value the command does not take")
	assert.NotContains(t, stderr, "store kept", "nothing of the benchmark's was kept")
	b, _ := os.ReadFile(db)
	assert.Equal(t, "a service's store", string(b))

	// A --store that is no directory is said as such.
	_, _, err = cli(t, "bench", "--orders", "10", "--store", db)
	assert.ErrorContains(t, err, "not a directory")
	assert.NotContains(t, err.Error(), "already holds a store")
	entries, _ := os.ReadDir(dir)
	assert.Len(t, entries, 1, "nothing else was made")
}

// bench's help names every figure its JSON line can hold (README says it
// does), and the nested ones' parents: a field added to the Result is
// added to the help too.
func TestBenchHelpNamesEveryFigure(t *testing.T) {
	help := benchCommand(io.Discard, io.Discard).LongHelp
	words := map[string]bool{}
	for _, w := range strings.FieldsFunc(help, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) {
		words[w] = true
	}
	rt := reflect.TypeFor[bench.Result]()
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		assert.True(t, words[name], "bench -h does not name %q", name)
	}
}

// Figures of a run that left orders unconfirmed are printed and the exit
// status says the run was partial: a script that reads only the rate
// would otherwise take it for the service's speed.
func TestBenchSaysAPartialRunFailed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, "bench", "--timeout", "5m", "--orders", "40", "--fail-rate", "0.5",
		"--", "--max-attempts", "1", "--breaker-failures", "0")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "stderr:\n%s", stderr.String())
	assert.Equal(t, 1, exit.ExitCode())
	var res bench.Result
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &res), "the figures are printed: %s", stdout.String())
	assert.Positive(t, res.DeadLetters)
	assert.Equal(t, 40, res.Confirmed+res.DeadLetters)
	assert.True(t, res.Partial, "the figures say it: %s", stdout.String())
	assert.Contains(t, stderr.String(), fmt.Sprintf("%d of the run's 40 orders confirmed, %d dead-lettered", res.Confirmed, res.DeadLetters))
}

// A key in --mail-url (the one way to give a real service's without an
// auth file) is masked in the progress, the settings printed and the
// error: bench figures get pasted into documents.
func TestBenchMasksAKeyInTheMailURL(t *testing.T) {
	mock := startMock(t, "--fail-rate", "0")
	url := mock + "/?api_key=SECRET123"
	file := filepath.Join(t.TempDir(), "mail-url")
	require.NoError(t, os.WriteFile(file, []byte(url+"\n"), 0o600))
	for _, c := range []struct {
		name string
		args []string
		own  bool // the bench's own command line holds the key: the user gave it there
	}{
		// With the ceiling too: its senders post where the service does,
		// the key kept (they posted to /?api_key=.../sendConfirmation).
		{"--mail-url", []string{"--mail-url", url, "--ceiling"}, true},
		{"--mail-url-file", []string{"--mail-url-file", file}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
			defer cancel()
			var stdout, stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, binary, append([]string{"bench", "--timeout", "5m", "--orders", "20"}, c.args...)...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			require.NoError(t, cmd.Start())
			listed := make(chan processListing)
			stop := make(chan struct{})
			go func() { listed <- listProcesses(cmd.Process.Pid, c.own, "SECRET123", stop) }()
			err := cmd.Wait()
			close(stop)
			seen := <-listed
			require.NoError(t, err, "stderr:\n%s", stderr.String())
			out := stdout.String() + stderr.String()
			if runtime.GOOS == "linux" {
				require.NotZero(t, seen.services, "no listing of the processes saw the service")
				assert.Empty(t, seen.showing, "the key is on a command line any user of the machine can read")
			}
			assert.Contains(t, stdout.String(), `"mailURL":"`+mock+`/?api_key=REDACTED"`, "the settings printed")
			assert.Contains(t, out, "api_key=REDACTED", "the URL is said, masked:\n%s", out)
			assert.NotContains(t, out, "SECRET123")
		})
	}
}

// processListing is what listProcesses saw.
type processListing struct {
	services int      // listings in which a child `ordermail run` was seen
	showing  []string // command lines that held the secret
}

// listProcesses reads every process's command line, as `ps` does, until
// stop is closed, and says which of them held secret (but parent's own,
// with skipParent). It reads /proc, so it sees nothing on systems without
// one.
func listProcesses(parent int, skipParent bool, secret string, stop <-chan struct{}) processListing {
	var seen processListing
	// A child the parent forks shows the parent's command line until it
	// runs its own program: the parent's, still.
	own, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", parent))
	for {
		select {
		case <-stop:
			return seen
		case <-time.After(5 * time.Millisecond):
		}
		paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil || (skipParent && bytes.Equal(b, own)) {
				continue
			}
			args := strings.Split(string(b), "\x00")
			if len(args) > 1 && args[0] == binary && args[1] == "run" && parentOf(filepath.Dir(p)) == parent {
				seen.services++
			}
			if line := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(line, secret) && !slices.Contains(seen.showing, line) {
				seen.showing = append(seen.showing, line)
			}
		}
	}
}

// parentOf gives the parent's pid of the process whose /proc directory is
// dir, or -1.
func parentOf(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return -1
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(fields) < 2 {
		return -1
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return -1
	}
	return ppid
}

// The ceiling's senders learn from the flags after -- which answers the
// service sends again.
func TestBenchSendersFollowTheServicesRetryFlags(t *testing.T) {
	c := bench.Config{Workers: 16, TimerInterval: time.Second, RetryQuantum: time.Second, Backoff: "exponential", BackoffMin: time.Second}
	resends, err := checkServiceFlagsOf(append(bench.ServiceFlags(c, "file:x.db"), "--retry-all-failures"), "")
	require.NoError(t, err)
	assert.True(t, resends(406))
	resends, err = checkServiceFlagsOf(bench.ServiceFlags(c, "file:x.db"), "")
	require.NoError(t, err)
	assert.False(t, resends(406))
	assert.True(t, resends(503))
}
