package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"
)

// binary is ordermail built once for the tests that run it as a process.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ordermail-bin-*")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "ordermail")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic("build ordermail: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cli runs the command in-process.
func cli(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func TestDemoJSONIsMeasured(t *testing.T) {
	out, _, err := cli(t, "demo", "--orders", "40", "--fail-rate", "0.5", "--json",
		"--timer-interval", "50ms", "--retry-quantum", "100ms", "--seed", "3")
	require.NoError(t, err)
	var s demoSummary
	require.NoError(t, json.Unmarshal([]byte(out), &s), out)
	assert.Equal(t, 45, s.Orders, "40 generated + 5 fixtures")
	assert.Equal(t, 45, s.Confirmed)
	assert.Zero(t, s.RetryDocsLeft)
	assert.Equal(t, 45, s.Deliveries)
	assert.Zero(t, s.DuplicateRequests)
	assert.Equal(t, s.SendAttempts, s.Deliveries+s.Failures)
	assert.Equal(t, s.SendAttempts, s.Traced, "every request carried a traceparent")
	assert.Positive(t, s.Failures, "at 50%% some sends failed")
	assert.Positive(t, s.ElapsedSeconds)
}

func TestDemoKeepsDataWhenAsked(t *testing.T) {
	dir := t.TempDir()
	// What a --data directory may hold already: a token file anyone may
	// read, and a link to a file of the user's. The demo's secrets go into
	// new private files, neither through the link nor with the old mode.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "mail-token"), []byte("old\n"), 0o644))
	require.NoError(t, os.Chmod(filepath.Join(dir, "mail-token"), 0o644))
	elsewhere := filepath.Join(t.TempDir(), "notes")
	require.NoError(t, os.WriteFile(elsewhere, []byte("mine"), 0o644))
	require.NoError(t, os.Symlink(elsewhere, filepath.Join(dir, "mail-signing-secrets")))
	out, _, err := cli(t, "demo", "--orders", "3", "--fail-rate", "0", "--data", dir, "--timer-interval", "50ms", "--retry-quantum", "100ms")
	require.NoError(t, err)
	assert.Contains(t, out, "confirmed:           8")
	assert.Contains(t, out, "(every request carried a bearer token and a Standard Webhooks signature the mock verified)")
	for _, name := range []string{"mail-token", "mail-signing-secrets"} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		require.NoError(t, err)
		assert.True(t, fi.Mode().IsRegular(), "%s: %s", name, fi.Mode())
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), name)
	}
	mine, err := os.ReadFile(elsewhere)
	require.NoError(t, err)
	assert.Equal(t, "mine", string(mine), "the link was not written through")
	out, _, err = cli(t, "retries", "status", "--json", "--store", "file:"+filepath.Join(dir, "ordermail.db"))
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &m), out)
	delete(m, "readAt")
	// The demo's sweeper, if it took the sweep lease (a demo that ends
	// before the timer's first tick takes it never holds it: seen under
	// load), says it stopped.
	if left, held := m["sweeperLeft"].(map[string]any); held {
		assert.Equal(t, "stopped", left["why"], "the demo's sweeper said it stopped: %s", out)
	}
	delete(m, "sweeperLeft")
	got, err := json.Marshal(m)
	require.NoError(t, err)
	assert.JSONEq(t, `{"timerArmed":true,"paused":false,"control":{},"retryDocs":0,"retryFlagged":0,"dueNow":0,
		"deadLetters":0,"ordersPaid":8,"ordersConfirmed":8,"ordersUnconfirmed":0,"topFailureReasons":[],
		"service":{"running":false}}`, string(got))
}

// TestDemoHasNoSettingsOfAnotherEmailService: the demo sends to its own
// mock with credentials of its own; it has no flag of another service (one
// given is an unknown flag), and such a setting of run's in the environment
// is not its.
func TestDemoHasNoSettingsOfAnotherEmailService(t *testing.T) {
	for _, give := range [][]string{{"--mail-url", "http://127.0.0.1:1"}, {"--mail-ca-file", "ca.pem"}, {"--mail-auth-file", "token"}} {
		_, stderr, err := cli(t, append([]string{"demo", "--orders", "1"}, give...)...)
		var usage usageError
		require.ErrorAs(t, err, &usage, give[0])
		assert.Contains(t, stderr, "flag provided but not defined: -"+give[0][2:])
	}
	t.Setenv("ORDERMAIL_MAIL_URL", "http://127.0.0.1:1")
	t.Setenv("ORDERMAIL_MAIL_AUTH_FILE", filepath.Join(t.TempDir(), "no-such-token"))
	out, _, err := cli(t, "demo", "--orders", "0", "--fail-rate", "0", "--admin-listen", "")
	require.NoError(t, err, "the demo sent to its own mock, with its own credentials")
	assert.Contains(t, out, "every request carried a bearer token and a Standard Webhooks signature the mock verified")
}

func TestLoadPayAndRetries(t *testing.T) {
	storeURL := "file:" + filepath.Join(t.TempDir(), "o.db")
	fixturesDir := filepath.Join("..", "..", "fixtures", "orders")
	files, err := filepath.Glob(filepath.Join(fixturesDir, "*.json"))
	require.NoError(t, err)

	out, _, err := cli(t, append([]string{"load", "--store", storeURL, "--collection", "inbound"}, files...)...)
	require.NoError(t, err)
	assert.Equal(t, "loaded 5 documents into inbound from 5 paths\n", out)

	lines := filepath.Join(t.TempDir(), "more.jsonl")
	require.NoError(t, os.WriteFile(lines, []byte(`{"id":"order_900","doc":{"email":"z@example.com","paymentStatus":"paid"}}`+"\n"), 0o644))
	bad := filepath.Join(t.TempDir(), "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"oops"`), 0o644))
	_, _, err = cli(t, "load", "--store", storeURL, "--collection", "inbound", lines, bad)
	require.ErrorContains(t, err, "bad.json: not valid JSON")
	_, _, err = cli(t, "load", "--store", storeURL, "--collection", "orders", lines)
	require.ErrorContains(t, err, `load: --collection "orders" is not one of inbound, retry`)

	out, _, err = cli(t, "load", "--store", "file:"+filepath.Join(t.TempDir(), "paid.db"), "--collection", "inbound", "--pay", fixturesDir)
	require.NoError(t, err)
	assert.Equal(t, "loaded 5 documents into inbound from 1 path\nmarked 5 orders paid\n", out)
	_, _, err = cli(t, "load", "--store", storeURL, "--collection", "retry", "--pay", fixturesDir)
	require.ErrorContains(t, err, "only orders")
	// A document that is no object loads nothing, with --pay or not.
	mixed := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(mixed, "a_order.json"), []byte(`{"email":"a@example.com"}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(mixed, "m_array.json"), []byte(`[1]`), 0o644))
	mixedStore := "file:" + filepath.Join(t.TempDir(), "mixed.db")
	_, _, err = cli(t, "load", "--store", mixedStore, "--collection", "inbound", "--pay", mixed)
	require.ErrorContains(t, err, "m_array.json: not a JSON object")
	_, _, err = cli(t, "orders", "show", "--store", mixedStore, "a_order")
	assert.Error(t, err, "a_order was not loaded")
	// A key given twice (here in a .jsonl and as a file name) loads nothing.
	require.NoError(t, os.WriteFile(filepath.Join(mixed, "m_array.json"), []byte(`{"email":"m@example.com"}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(mixed, "z.jsonl"), []byte(`{"id":"a_order","doc":{"email":"b@example.com"}}`+"\n"), 0o644))
	_, _, err = cli(t, "load", "--store", mixedStore, "--collection", "inbound", mixed)
	require.ErrorContains(t, err, "load: a_order is given twice (nothing loaded)")

	out, _, err = cli(t, "pay", "--store", storeURL, "order_140", "order_141", "order_missing")
	require.ErrorContains(t, err, "pay order_missing: no such order in inbound")
	assert.Equal(t, "marked 2 of 3 orders paid\n", out)

	status := func() map[string]any {
		out, _, err := cli(t, "retries", "status", "--json", "--store", storeURL)
		require.NoError(t, err)
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(out), &m))
		return m
	}
	s := status()
	assert.Equal(t, false, s["timerArmed"])
	assert.Equal(t, 2.0, s["ordersPaid"], "order_900 was not loaded: its batch had a bad file")
	assert.Equal(t, 2.0, s["ordersUnconfirmed"])

	out, _, err = cli(t, "retries", "start", "--store", storeURL)
	require.NoError(t, err)
	assert.Equal(t, "retries started: created allow_retrys\n", out)
	out, _, _ = cli(t, "retries", "start", "--store", storeURL)
	assert.Equal(t, "retries already started\n", out)
	assert.Equal(t, true, status()["timerArmed"])
	_, _, err = cli(t, "retries", "stop", "--store", storeURL)
	require.NoError(t, err)
	assert.Equal(t, false, status()["timerArmed"])

	out, _, err = cli(t, "retries", "status", "--store", storeURL)
	require.NoError(t, err)
	assert.Contains(t, out, "retries:            paused (no allow_retrys: retry documents wait)\n")

	out, _, err = cli(t, "retries", "start", "--store", storeURL, "--interval", "5s", "--quantum", "1m")
	require.NoError(t, err)
	assert.Equal(t, "retries started: created allow_retrys\n", out)
	out, _, err = cli(t, "retries", "start", "--store", storeURL, "--interval", "7s")
	require.NoError(t, err)
	assert.Equal(t, "retries already started; settings in allow_retrys now: interval 7s, quantum 1m0s\n", out,
		"the setting given is rewritten, the other stands")
	assert.Equal(t, map[string]any{"interval": "7s", "quantum": "1m0s"}, status()["control"])
	// A stop keeps the settings it deletes; status says so, and a start
	// without flags gives them back.
	out, _, err = cli(t, "retries", "stop", "--store", storeURL)
	require.NoError(t, err)
	assert.Equal(t, "retries stopped: deleted allow_retrys\n"+
		"its settings (interval 7s, quantum 1m0s) are kept: retries start without flags gives them back\n", out)
	assert.Equal(t, map[string]any{"interval": "7s", "quantum": "1m0s"}, status()["resumeWith"])
	out, _, err = cli(t, "retries", "status", "--store", storeURL)
	require.NoError(t, err)
	assert.Contains(t, out, "  on resuming:      interval 7s, quantum 1m0s (kept by the pause; retries start without flags gives them back)\n")
	out, _, err = cli(t, "retries", "start", "--store", storeURL)
	require.NoError(t, err)
	assert.Equal(t, "retries started: created allow_retrys with the settings the pause removed (interval 7s, quantum 1m0s)\n", out)
	assert.Equal(t, map[string]any{"interval": "7s", "quantum": "1m0s"}, status()["control"])
	assert.Nil(t, status()["resumeWith"])
	// Given back once; stopped again and started with flags, the flags
	// stand.
	_, _, err = cli(t, "retries", "stop", "--store", storeURL)
	require.NoError(t, err)
	out, _, err = cli(t, "retries", "start", "--store", storeURL, "--quantum", "2m")
	require.NoError(t, err)
	assert.Equal(t, "retries started: created allow_retrys\n"+
		"the settings the pause kept (interval 7s, quantum 1m0s) are dropped: the flags given stand\n", out)
	assert.Equal(t, map[string]any{"quantum": "2m0s"}, status()["control"])
}

// TestBadInvocations: a wrong command line (an unknown command or flag, a
// flag value that does not parse or that the command rejects, a required one
// missing, an argument missing or too many) exits 2 with the message and the
// usage on stderr; what only the attempt finds wrong exits 1. None of them
// touches a store.
func TestBadInvocations(t *testing.T) {
	t.Chdir(t.TempDir()) // where the default store, data/ordermail.db, would be made
	tests := []struct {
		give     []string
		want     string
		wantCode int
	}{
		{[]string{"bogus"}, `unknown command "bogus"`, 2},
		{[]string{"run", "--mail-url", "http://x", "--workers", "0"}, "workers: 0", 2},
		{[]string{"run", "--mail-url", "http://x", "--allowed-hosts", "localhost:9464"}, `allowed-hosts: "localhost:9464" is not a host name`, 2},
		{[]string{"run", "--mail-url", "http://x", "--store", "mysql://db"}, `store: "mysql://db"`, 2},
		{[]string{"run"}, "mail-url: required", 2},
		{[]string{"run", "--mail-url", "http://x", "--log-level", "loud"}, "log-level", 2},
		{[]string{"mockmail", "--fail-rate", "-1"}, "fail-rate", 2},
		{[]string{"run", "--mail-url", "http://x", "stray"}, "unexpected arguments: stray", 2},
		{[]string{"load", "--collection", "inbound"}, "no files to load", 2},
		{[]string{"run", "--mail-url", "http://x", "--backoff", "linear"}, `backoff: "linear"`, 2},
		{[]string{"run", "--mail-url", "http://x", "--backoff-min", "1m", "--backoff-max", "1s"}, "backoff-max: 1s is below backoff-min 1m0s", 2},
		{[]string{"run", "--mail-url", "http://x", "--retry-statuses", "503,abc"}, `"abc" is not an HTTP status`, 2},
		{[]string{"run", "--mail-url", "http://x", "--retry-statuses", "200"}, "retry-statuses: 200", 2},
		{[]string{"run", "--mail-url", "http://x", "--max-attempts", "-2"}, "max-attempts", 2},
		{[]string{"run", "--mail-url", "http://x", "--breaker-cooldown", "0s"}, "breaker-cooldown", 2},
		{[]string{"retries", "start", "--interval", "-1s"}, "interval: -1s is not between 0 and 24h0m0s", 2},
		{[]string{"retries", "start", "--interval", "0s"}, "interval: 0 is not a setting; leave the flag out for the service's own", 2},
		{[]string{"retries", "start", "--quantum", "0"}, "quantum: 0 is not a setting", 2},
		{[]string{"deadletters", "redrive"}, "give --all, --reason or the IDs", 2},
		{[]string{"run", "--mail-url", "http://x", "--store", "couchbase://db"}, "cb-username: required", 2},
		{[]string{"run", "--mail-url", "http://x", "--store", "couchbase://db", "--cb-username", "u"}, "cb-password or cb-password-file: required", 2},
		{[]string{"run", "--mail-url", "http://x", "--instance", "3/2"}, `"3/2" is not i/n`, 2},
		{[]string{"setup", "--store", "couchbase://db"}, "cb-username: required", 2},
		{[]string{"deadletters", "redrive", "--all", "x"}, "give one of --all, --reason or IDs", 2},
		{[]string{"deadletters", "purge", "--all"}, "add --yes", 2},
		{[]string{"pay"}, "no order keys", 2},
		{[]string{"retries", "status", "--store", "bogus://x"}, `store: "bogus://x" is not a store URL`, 2},
		{[]string{"deadletters", "list", "--store", "file:"}, `store: "file:" names no file`, 2},
		{[]string{"setup", "--store", "bogus://x"}, `store: "bogus://x" is not a store URL`, 2},
		{[]string{"setup", "--store", "couchbase://db", "--cb-username", "u", "--cb-password", "p", "--cb-index-wait", "0"}, "cb-index-wait: 0s", 2},
		{[]string{"retries", "stop", "x"}, "unexpected arguments: x", 2},
		{[]string{"run", "--bogus"}, "flag provided but not defined: -bogus", 2},
		{[]string{"demo", "--timeout", "0"}, "timeout: 0s is not positive", 2},
		{[]string{"run", "--mail-url", "http://x", "--cb-timeout", "0"}, "cb-timeout: 0s is no duration", 2},
		{[]string{"run", "--mail-url", "http://x", "--cb-member-ttl", "0s"}, "cb-member-ttl: 0s is no duration", 2},
		{[]string{"run", "--mail-url", "http://x", "--cb-step-aside-after", "0"}, "a negative one never steps aside", 2},
		{[]string{"setup", "--store", "couchbase://db", "--cb-username", "u", "--cb-password", "p", "--cb-counts-ttl", "0"}, "cb-counts-ttl: 0s is no duration; a negative one serves no cached counts", 2},
		{[]string{"retries", "status", "--cb-order-counts-ttl", "0"}, "cb-order-counts-ttl: 0s", 2},
		{[]string{"retries", "status", "--retry-quantum", "-1s"}, "retry-quantum: -1s is not positive", 2},
		{[]string{"healthcheck", "--url", "notaurl"}, `url: "notaurl" is not an http:// or https:// URL`, 2},
		{[]string{"load", "orders.json"}, "load: --collection is required: inbound or retry", 2},
		{[]string{"demo", "--fail-rate", "2"}, "fail-rate", 2},
		{[]string{"mockmail", "--tls-cert", "a.pem"}, "tls-cert and tls-key: give both or neither", 2},
		{[]string{"run", "--mail-url", "http://x", "--metrics-listen", "nonsense"}, `metrics-listen: "nonsense" is not HOST:PORT`, 2},
		{[]string{"run", "--mail-url", "http://x", "--admin-listen", "127.0.0.1:99999"}, `admin-listen: "127.0.0.1:99999" has no port`, 2},
		{[]string{"setup", "--log-format", "yaml"}, "log-format", 2},
		// A command line that makes sense, whose attempt fails.
		{[]string{"healthcheck", "--url", "http://127.0.0.1:1/healthz"}, "unhealthy", 1},
	}
	for _, tt := range tests {
		name := strings.Join(tt.give, " ")
		stdout, stderr, err := cli(t, tt.give...)
		assert.ErrorContains(t, err, tt.want, name)
		assert.Equal(t, tt.wantCode, exitStatus(err, nil, io.Discard), name)
		assert.Empty(t, stdout, name)
		if tt.wantCode == 2 {
			assert.Contains(t, stderr, tt.want, name)
			assert.Contains(t, stderr, "USAGE", name)
		}
	}
	left, err := os.ReadDir(".")
	require.NoError(t, err)
	assert.Empty(t, left, "a wrong command line made files")
}

func TestEnvironmentSetsFlags(t *testing.T) {
	t.Setenv("ORDERMAIL_MAIL_URL", "not a url")
	_, _, err := cli(t, "run")
	assert.ErrorContains(t, err, `mail-url: "not a url"`)
}

func TestDeadLettersCommands(t *testing.T) {
	dir := t.TempDir()
	storeURL := "file:" + filepath.Join(dir, "ordermail.db")
	// A demo whose mock refuses every send for good leaves only dead letters.
	out, _, err := cli(t, "demo", "--orders", "2", "--fail-rate", "1", "--fail-status", "400", "--data", dir, "--json")
	require.NoError(t, err)
	var s demoSummary
	require.NoError(t, json.Unmarshal([]byte(out), &s))
	assert.Equal(t, 7, s.DeadLetters)
	assert.Zero(t, s.Confirmed)

	out, _, err = cli(t, "deadletters", "list", "--store", storeURL, "--json")
	require.NoError(t, err)
	var dls []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &dls))
	require.Len(t, dls, 7)
	assert.Equal(t, "order_140", dls[0]["id"])
	assert.Equal(t, "permanent_error", dls[0]["reason"])
	assert.Equal(t, 400.0, dls[0]["lastStatus"])
	assert.Equal(t, 1.0, dls[0]["attempts"])

	out, _, err = cli(t, "deadletters", "list", "--store", storeURL)
	require.NoError(t, err)
	assert.Contains(t, out, "ID")
	assert.Regexp(t, `order_140\s+permanent_error\s+400\s+1\s+0`, out)

	out, _, err = cli(t, "retries", "status", "--store", storeURL)
	require.NoError(t, err)
	assert.Contains(t, out, "dead letters:       7")
	assert.Contains(t, out, "      7  dead: permanent_error (HTTP 400)")

	_, _, err = cli(t, "deadletters", "purge", "--store", storeURL, "order_140")
	require.ErrorContains(t, err, "add --yes")
	out, _, err = cli(t, "deadletters", "purge", "--store", storeURL, "--yes", "order_140", "order_nope")
	require.ErrorContains(t, err, "no such dead letter: order_nope")
	assert.Equal(t, "purged 1 dead letter\n", out)

	out, _, err = cli(t, "deadletters", "redrive", "--store", storeURL, "--all")
	require.NoError(t, err)
	assert.Equal(t, "redrove 6 dead letters\n", out)
	out, _, err = cli(t, "retries", "status", "--store", storeURL, "--json")
	require.NoError(t, err)
	var st map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	assert.Equal(t, 0.0, st["deadLetters"])
	assert.Equal(t, 6.0, st["retryDocs"], "redriven, waiting for a running service")
	assert.Equal(t, 6.0, st["dueNow"])
}

func TestSetupOnTheEmbeddedStore(t *testing.T) {
	out, _, err := cli(t, "setup", "--store", "file:"+filepath.Join(t.TempDir(), "x.db"))
	require.NoError(t, err)
	assert.Contains(t, out, "nothing to set up")
}

// TestReadCommandsReadAStoreOnAReadOnlyMount: the commands that only read
// (retries status, deadletters list, orders show) read a store on a
// read-only mount, as an operator inspecting a snapshot or a volume
// mounted read-only does, and say so; one that writes is refused by name.
// The mount is made in a mount namespace of the command's own (unshare),
// which needs privileges: without them the test skips.
func TestReadCommandsReadAStoreOnAReadOnlyMount(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1) to make a read-only mount in a namespace of its own (util-linux)")
	}
	if out, err := exec.Command("unshare", "-m", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot make a mount namespace here (unshare -m: %v: %s): needs root or CAP_SYS_ADMIN", err, out)
	}
	dir := t.TempDir()
	storeURL := "file:" + filepath.Join(dir, "ordermail.db")
	fixtures := filepath.Join("..", "..", "fixtures", "orders")
	_, _, err := cli(t, "load", "--store", storeURL, "--collection", "inbound", "--pay", fixtures)
	require.NoError(t, err)
	// The mount, then the command in it, in a namespace that ends with it.
	inMount := func(args ...string) (string, error) {
		script := `mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"`
		out, err := exec.Command("unshare", append([]string{"-m", "sh", "-c", script, "sh", dir}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := inMount("touch", filepath.Join(dir, "x"))
	require.Error(t, err, "the mount is read-only: %s", out)

	out, err = inMount(binary, "retries", "status", "--store", storeURL)
	require.NoError(t, err, out)
	assert.Contains(t, out, "note: "+filepath.Join(dir, "ordermail.db")+" cannot be written here: read as it is\n")
	assert.Contains(t, out, "orders paid:        5 (0 confirmed")
	out, err = inMount(binary, "orders", "show", "--store", storeURL, "order_140")
	require.NoError(t, err, out)
	assert.Contains(t, out, "order_140")
	out, err = inMount(binary, "deadletters", "list", "--store", storeURL)
	require.NoError(t, err, out)
	assert.Contains(t, out, "ID  REASON")

	out, err = inMount(binary, "retries", "stop", "--store", storeURL)
	require.Error(t, err, out)
	assert.Contains(t, out, "is read-only (a read-only mount)")

	// Commits still in the write-ahead log, and no -shm file: read as it
	// is, the file would miss them. Refused, saying why.
	db, err := sql.Open("sqlite", storeURL+"?_pragma=wal_autocheckpoint(0)")
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(`UPDATE counters SET value = value + 1 WHERE name = 'seq'`) // a commit, kept in the log
	require.NoError(t, err)
	for _, suffix := range []string{"", "-wal"} { // the files as a crash leaves them, but the -shm
		b, err := os.ReadFile(filepath.Join(dir, "ordermail.db"+suffix))
		require.NoError(t, err)
		require.NotEmpty(t, b)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "copy.db"+suffix), b, 0o600))
	}
	out, err = inMount(binary, "retries", "status", "--store", "file:"+filepath.Join(dir, "copy.db"))
	require.Error(t, err, out)
	assert.Contains(t, out, "copy.db-wal, which holds commits, cannot be read here")
}

// TestReadCommandsReadAFileTheyCannotWrite: an immutable store file (as a
// file of another user's, or of mode 0400, is to a user who is not root)
// is read by the commands that only read, as it is, making no file beside
// it; the others say it is read-only.
func TestReadCommandsReadAFileTheyCannotWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ordermail.db")
	storeURL := "file:" + path
	_, _, err := cli(t, "load", "--store", storeURL, "--collection", "inbound", "--pay", filepath.Join("..", "..", "fixtures", "orders"))
	require.NoError(t, err)
	if out, err := exec.Command("chattr", "+i", path).CombinedOutput(); err != nil {
		t.Skipf("chattr +i is not permitted here (needs root and a file system with the immutable flag): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })

	out, stderr, err := cli(t, "retries", "status", "--store", storeURL)
	require.NoError(t, err, stderr)
	assert.Equal(t, "note: "+path+" cannot be written here: read as it is\n", stderr)
	assert.Contains(t, out, "orders paid:        5 (0 confirmed")
	for _, suffix := range []string{"-wal", "-shm"} {
		_, err := os.Stat(path + suffix)
		assert.ErrorIs(t, err, os.ErrNotExist, "the read made a %s file", suffix)
	}
	_, _, err = cli(t, "pay", "--store", storeURL, "order_140")
	assert.ErrorContains(t, err, "is read-only (its file mode, or an immutable file)")
}

// A secret on the command line is readable by every user of the machine
// (ps): warned of, not refused; the environment keeps it to the process.
func TestSecretsOnTheCommandLineAreWarnedOf(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string // "" for no warning
	}{
		{args: []string{"retries", "status", "--store", "couchbase://db", "--cb-password", "p"}, want: "--cb-password on the command line"},
		{args: []string{"retries", "status", "--store", "couchbase://db", "-cb-password=p"}, want: "--cb-password on the command line"},
		{args: []string{"retries", "status", "--store", "couchbase://db", "--cb-username", "--cb-password"}},
		{args: []string{"retries", "status", "--store", "couchbase://db"}, env: map[string]string{"ORDERMAIL_CB_PASSWORD": "p"}},
		{args: []string{"run", "--mail-url", "https://u:pw@mail.example.com"}, want: "--mail-url carries a secret"},
		{args: []string{"run", "--mail-url=https://mail.example.com/send?api_key=k"}, want: "--mail-url carries a secret"},
		{args: []string{"run", "--mail-url", "http://127.0.0.1:9080"}},
		{args: []string{"run"}, env: map[string]string{"ORDERMAIL_MAIL_URL": "https://u:pw@mail.example.com"}},
		{args: []string{"run", "--mail-url", "https://u:pw@mail.example.com"}, env: map[string]string{"ORDERMAIL_MAIL_URL": "https://u:pw@mail.example.com"},
			want: "--mail-url carries a secret"},
	} {
		for k, v := range c.env {
			t.Setenv(k, v)
		}
		root := rootCommand(io.Discard, io.Discard)
		walk(root, func(c *ffcli.Command) { c.FlagSet.SetOutput(io.Discard) })
		require.NoError(t, root.Parse(flagsFirst(root, c.args)), "%v", c.args)
		var stderr strings.Builder
		warnSecrets(selected(root).FlagSet, c.args, &stderr)
		for k := range c.env {
			os.Unsetenv(k)
		}
		if c.want == "" {
			assert.Empty(t, stderr.String(), "%v", c.args)
			continue
		}
		assert.Contains(t, stderr.String(), c.want, "%v", c.args)
	}
}
