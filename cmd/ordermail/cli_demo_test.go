package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemoInterrupted: Ctrl-C in the middle of the demo stops it cleanly,
// prints what was done so far (read from the store, not from the cancelled
// context) and exits 130. Without a terminal there is no bar, but the
// summary is printed all the same.
func TestDemoInterrupted(t *testing.T) {
	for _, tt := range []struct {
		name string
		sig  syscall.Signal
		exit int
	}{
		{"SIGINT", syscall.SIGINT, 130},
		// A stop asked for (a supervisor, `kill`): as a shell says SIGTERM
		// ended a command, and no "context canceled" (it printed that and
		// exited 1).
		{"SIGTERM", syscall.SIGTERM, 143},
	} {
		t.Run(tt.name, func(t *testing.T) { demoInterrupted(t, tt.sig, tt.exit) })
	}
}

func demoInterrupted(t *testing.T, sig syscall.Signal, want int) {
	dir := t.TempDir()
	p := startProc(t, "demo", "--orders", "3000", "--latency", "5ms", "--data", dir)
	stdout, stderr := p.out, p.logs

	// The lock file is made once the store is set up and the service runs;
	// then wait for the first paid order.
	require.Eventually(t, func() bool {
		_, err := os.Stat(filepath.Join(dir, "ordermail.db.lock"))
		return err == nil
	}, 60*time.Second, 10*time.Millisecond, "the demo's lock file (set up, service running); stderr:\n%v",
		later.Value(func() any { return stderr.String() }))
	st := openStore(t, "file:"+filepath.Join(dir, "ordermail.db"))
	var seen seenCounts
	require.Eventually(t, func() bool {
		c, err := seen.read(st)
		return err == nil && c.OrdersPaid > 0
	}, 60*time.Second, 10*time.Millisecond, "a paid order; last: %v; stderr:\n%v",
		later.Value(seen.Last), later.Value(func() any { return stderr.String() }))
	err, _ := p.stop(t, sig)
	out := stdout.String()
	assert.Equal(t, want, exitCode(err), "stdout:\n%s\nstderr:\n%s", out, stderr.String())
	assert.Contains(t, out, "interrupted after ")
	m := regexp.MustCompile(`\norders paid:\s+(\d+)\n`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	paid, _ := strconv.Atoi(m[1])
	assert.Positive(t, paid, out)
	assert.NotContains(t, out+stderr.String(), "context canceled")
	if !strings.Contains(out, "neither confirmed nor dead-lettered yet; the counts so far") || strings.Contains(out, ", 0 of them neither") {
		t.Log("every order settled before the stop: no hint to finish")
	} else {
		assert.Contains(t, out, "(to finish it by hand, the demo's credentials in its directory, run in two terminals:\n ordermail mockmail --fail-rate 0 --auth-file "+
			filepath.Join(dir, "mail-token"))
	}

	c, err := st.Counts(t.Context())
	require.NoError(t, err)
	assert.Contains(t, out, "\norders paid:         "+strconv.Itoa(c.OrdersPaid)+"\n", "the summary is the store's")
	assert.Contains(t, out, "\nconfirmed:           "+strconv.Itoa(c.OrdersConfirmed)+"\n", "the summary is the store's")
}

// TestDemoDeadLettersHint: the command the demo prints to see its dead
// letters works when --data kept the store, and says how to keep it when
// the store was temporary.
func TestDemoDeadLettersHint(t *testing.T) {
	dir := t.TempDir()
	out, _, err := cli(t, "demo", "--orders", "2", "--fail-rate", "1", "--fail-status", "400", "--data", dir)
	require.NoError(t, err)
	m := regexp.MustCompile(`\(see them with: ordermail (deadletters list --store (\S+))\)\n`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	assert.Equal(t, "file:"+filepath.Join(dir, "ordermail.db"), m[2])
	list, _, err := cli(t, strings.Fields(m[1])...)
	require.NoError(t, err)
	assert.Contains(t, list, "order_140")
	before, err := os.ReadFile(filepath.Join(dir, "ordermail.db"))
	require.NoError(t, err)

	// Run again on a directory that holds a store: refused, the store as it was.
	_, _, err = cli(t, "demo", "--orders", "2", "--data", dir)
	require.ErrorContains(t, err, "data: "+dir+" already holds a store (ordermail.db)")
	assert.Equal(t, 2, exitStatus(err, nil, io.Discard), "a value the command does not take")
	after, err := os.ReadFile(filepath.Join(dir, "ordermail.db"))
	require.NoError(t, err)
	assert.Equal(t, before, after, "the store is untouched")

	out, _, err = cli(t, "demo", "--orders", "2", "--fail-rate", "1", "--fail-status", "400")
	require.NoError(t, err)
	assert.Contains(t, out, "run the demo again with --data DIR, then:\n ordermail deadletters list --store file:DIR/ordermail.db)\n")

	assert.Contains(t, refusedNote(0), "every request carried a bearer token")
	assert.NotContains(t, refusedNote(3), "every request", "refusals are not said to be none")
	assert.Equal(t, "'file:/a b/o.db'", shellQuote("file:/a b/o.db"))
	assert.Equal(t, `'it'\''s'`, shellQuote("it's"))
}

// TestDemoKeepsRunningWhenAsked: with --keep-running the console whose URL
// the demo prints still answers once every order is settled (it went with
// the demo a second after), until a stop; then the summary.
func TestDemoKeepsRunningWhenAsked(t *testing.T) {
	t.Run("text", func(t *testing.T) { demoKeepsRunning(t, false) })
	// With --json standard output holds the JSON summary alone.
	t.Run("json", func(t *testing.T) { demoKeepsRunning(t, true) })
}

func demoKeepsRunning(t *testing.T, asJSON bool) {
	args := []string{"demo", "--keep-running", "--orders", "3", "--fail-rate", "0"}
	if asJSON {
		args = append(args, "--json")
	}
	p := startProc(t, args...)
	stdout, stderr := p.out, p.logs
	said := stdout
	if asJSON {
		said = stderr
	}
	require.Eventually(t, func() bool { return strings.Contains(said.String(), "run on until Ctrl-C") }, 2*time.Minute, 10*time.Millisecond,
		"the demo did not settle and go on; stdout:\n%v\nstderr:\n%v", later.Value(func() any { return stdout.String() }), later.Value(func() any { return stderr.String() }))
	if asJSON {
		err, _ := p.stop(t, syscall.SIGTERM)
		require.NoError(t, err, "stderr:\n%s", stderr.String())
		var sum demoSummary
		require.NoError(t, json.Unmarshal([]byte(stdout.String()), &sum), "standard output: %q", stdout.String())
		assert.Equal(t, 8, sum.Confirmed)
		return
	}
	console := regexp.MustCompile(`console: (http://\S+) `).FindStringSubmatch(stdout.String())
	require.NotNil(t, console, stdout.String())
	resp, err := http.Get(console[1] + "/")
	require.NoError(t, err, "the console answers once every order is settled")
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.NotContains(t, stdout.String(), "orders paid:", "no summary before the stop")

	err, _ = p.stop(t, syscall.SIGTERM)
	require.NoError(t, err, "stderr:\n%s", stderr.String())
	assert.Contains(t, stdout.String(), "\nconfirmed:           8\n")
	assert.NotContains(t, stdout.String(), "interrupted after")
}

// TestADemoRefusedBeforeItsStoreOpenedLeavesNoStore: a demo whose setting
// was refused made its store file first, and the demo run again,
// corrected, on the same directory was refused as if a store were there.
// An empty store file (a demo killed before its store opened) is said to
// be one.
func TestADemoRefusedBeforeItsStoreOpenedLeavesNoStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, _, err := cli(t, "demo", "--orders", "2", "--admin-listen", "", "--data", dir, "--workers", "0")
	require.Error(t, err)
	assert.Equal(t, 2, exitStatus(err, nil, io.Discard))
	out, _, err := cli(t, "demo", "--orders", "2", "--fail-rate", "0", "--admin-listen", "", "--data", dir)
	require.NoError(t, err, "the same directory, the setting corrected")
	assert.Contains(t, out, "\nconfirmed:           7\n")

	// Refused at the start, the store file made: a console address in use.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	dir = filepath.Join(t.TempDir(), "data")
	_, _, err = cli(t, "demo", "--orders", "2", "--admin-listen", busy.Addr().String(), "--data", dir)
	require.Error(t, err)
	for _, name := range []string{"ordermail.db", "mail-token", "mail-signing-secrets", "admin-token"} {
		assert.NoFileExists(t, filepath.Join(dir, name), "what the demo made there is taken back (the store's lock files may stay)")
	}
	_, _, err = cli(t, "demo", "--orders", "2", "--fail-rate", "0", "--admin-listen", "", "--data", dir)
	require.NoError(t, err, "the same directory, another console address")

	empty := filepath.Join(t.TempDir(), "empty")
	require.NoError(t, os.MkdirAll(empty, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(empty, "ordermail.db"), nil, 0o600))
	_, _, err = cli(t, "demo", "--orders", "2", "--admin-listen", "", "--data", empty)
	require.ErrorContains(t, err, "holds an empty ordermail.db")
}

// TestTwoDemosOnOneNewDirectory: of two demos started at once on one new
// --data directory, one runs and the other is refused at once. Both went
// on (the store looked for, then made), each writing the mock's
// credentials over the other's: one stood by, the other's sends were all
// refused, and both waited out --timeout.
func TestTwoDemosOnOneNewDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	type result struct {
		out string
		err error
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			out, _, err := cli(t, "demo", "--orders", "2", "--fail-rate", "0", "--admin-listen", "", "--timeout", "2m", "--data", dir)
			results <- result{out, err}
		}()
	}
	var ran, refused int
	for range 2 {
		r := <-results
		switch {
		case r.err == nil:
			ran++
			assert.Contains(t, r.out, "\nconfirmed:           7\n", "the one that ran confirmed every order")
		case strings.Contains(r.err.Error(), "already holds a store"), strings.Contains(r.err.Error(), "another demo is starting there"):
			refused++
		default:
			t.Errorf("a demo failed otherwise: %v\n%s", r.err, r.out)
		}
	}
	assert.Equal(t, 1, ran, "one ran")
	assert.Equal(t, 1, refused, "the other was refused")
}

// TestDemoProgressKeepsLogLinesWhole: a log line written while the bar is
// shown comes out whole, on a line of its own, and the bar is drawn again
// after it.
func TestDemoProgressKeepsLogLinesWhole(t *testing.T) {
	var out bytes.Buffer
	p := &demoProgress{out: &out}
	p.begin(10)
	assert.Contains(t, out.String(), "paid 0/10", "drawn at once")
	p.show(store.Counts{OrdersPaid: 4, OrdersConfirmed: 2, RetryDocs: 1, DeadLetters: 1})
	line := "time=now level=WARN msg=dead-lettered key=order_1\n"
	_, err := p.Write([]byte(line))
	require.NoError(t, err)
	p.show(store.Counts{OrdersPaid: 10, OrdersConfirmed: 5, DeadLetters: 1})
	p.end()

	s := out.String()
	i := strings.Index(s, line)
	require.GreaterOrEqual(t, i, 0, "the log line whole:\n%q", s)
	assert.True(t, i == 0 || s[i-1] == '\r', "the log line starts a line: %q", s)
	assert.Contains(t, s[i+len(line):], "paid 10/10  confirmed 5  awaiting retry 0  dead 1", "the bar again after it")
	assert.True(t, strings.HasSuffix(s, "\n"), "the cursor left on a new line: %q", s)

	_, err = p.Write([]byte("after\n"))
	require.NoError(t, err)
	assert.True(t, strings.HasSuffix(out.String(), "\nafter\n"))

	var nothing *demoProgress // no terminal: nothing shown
	nothing.begin(3)
	nothing.end()
}

// TestDemoTimedOutSaysWhatTheSummarySays: a demo that gives up reports the
// counts of its summary, read once the sends in flight settled, not those
// of the moment it gave up (which said one order fewer confirmed).
func TestDemoTimedOutSaysWhatTheSummarySays(t *testing.T) {
	out, _, err := cli(t, "demo", "--orders", "200", "--latency", "20ms", "--workers", "1", "--fail-rate", "0",
		"--timeout", "300ms", "--admin-listen", "", "--json")
	require.ErrorIs(t, err, errDemoTimeout)
	var s demoSummary
	require.NoError(t, json.Unmarshal([]byte(out), &s), out)
	assert.Less(t, s.Confirmed, s.Orders, "a demo that cannot finish in time: %+v", s)
	assert.Contains(t, err.Error(), fmt.Sprintf("%d of %d orders confirmed and %d dead-lettered", s.Confirmed, s.Orders, s.DeadLetters))
}
