package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runProcess runs the built binary to the end and returns its stdout, its
// stderr and its exit code.
func runProcess(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr syncbuf.Buffer
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := exitCode(err)
	require.True(t, code >= 0, "%v", err)
	return stdout.String(), stderr.String(), code
}

// exitCode is the exit status of a process that ended with err (Wait's);
// -1 when err says no exit status.
func exitCode(err error) int {
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode()
	case err != nil:
		return -1
	}
	return 0
}

func TestHelpGoesToStdout(t *testing.T) {
	tests := []struct {
		give []string
		want string // in the help
	}{
		{[]string{"-h"}, "ordermail <command> [flags]"},
		{[]string{"--help"}, "ordermail <command> [flags]"},
		{[]string{"help"}, "ordermail <command> [flags]"},
		{[]string{"retries", "-h"}, "ordermail retries start|stop|status"},
		{[]string{"retries", "status", "-h"}, "ordermail retries status --store URL [--json]"},
		{[]string{"help", "retries", "status"}, "ordermail retries status --store URL [--json]"},
		{[]string{"pay", "--help"}, "ordermail pay --store URL ORDER_KEY..."},
		{[]string{"demo", "-h"}, "ordermail demo"},
	}
	for _, tt := range tests {
		name := strings.Join(tt.give, " ")
		stdout, stderr, err := cli(t, tt.give...)
		require.NoError(t, err, name)
		assert.Contains(t, stdout, tt.want, name)
		assert.Contains(t, stdout, "USAGE", name)
		assert.Empty(t, stderr, name)
	}

	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}, {"deadletters", "redrive", "-h"}} {
		stdout, stderr, code := runProcess(t, args...)
		assert.Zero(t, code, "%v: stderr %s", args, stderr)
		assert.Contains(t, stdout, "USAGE", args)
		assert.Empty(t, stderr, args)
	}
}

func TestWrongCommandLineExits2(t *testing.T) {
	t.Chdir(t.TempDir())
	tests := []struct {
		give []string
		want string // on stderr, before the usage
	}{
		{[]string{"retries", "status", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"pay"}, "pay: no order keys"},
		{[]string{"deadletters", "redrive"}, "deadletters redrive: no dead letters named: give --all, --reason or the IDs"},
		{[]string{"deadletters", "purge", "--yes"}, "deadletters purge: no dead letters named: give --all, --reason or the IDs"},
		{[]string{"deadletters", "redrive", "--all", "--reason", "permanent_error"}, "deadletters redrive: give one of --all, --reason or IDs"},
		{[]string{"deadletters", "purge", "--yes", "--reason", "permanent"}, `deadletters purge: --reason: "permanent" is no dead letter's reason; the reasons are permanent_error, `},
		{[]string{"deadletters", "list", "--reason", "x"}, `deadletters list: --reason: "x" is no dead letter's reason`},
		{[]string{"load", "--collection", "inbound"}, "load: no files to load"},
		{[]string{"orders", "show"}, "orders show: give exactly one order key, got 0"},
		{[]string{"orders", "show", "a", "b"}, "orders show: give exactly one order key, got 2"},
		{[]string{"retries"}, "retries: give a command: start, stop, status"},
		{[]string{"retries", "resume"}, `retries: unknown command "resume"`},
		{[]string{}, "no command given"},
		{[]string{"help", "nope"}, `help: no command "nope"`},
		{[]string{"version", "x"}, "unexpected arguments: x"},
		// Every float setting refuses what no range check compares.
		{[]string{"run", "--backoff-jitter", "NaN"}, `invalid value "NaN" for flag -backoff-jitter: not a finite number`},
		{[]string{"run", "--send-rate", "+Inf"}, `invalid value "+Inf" for flag -send-rate: not a finite number`},
		{[]string{"demo", "--fail-rate", "nan"}, `invalid value "nan" for flag -fail-rate: not a finite number`},
		{[]string{"mockmail", "--fail-rate", "NaN"}, `invalid value "NaN" for flag -fail-rate: not a finite number`},
		{[]string{"bench", "--rate", "-Inf"}, `invalid value "-Inf" for flag -rate: not a finite number`},
		{[]string{"bench", "--fail-rate", "x"}, `invalid value "x" for flag -fail-rate: not a number`},
		// Durations and whole numbers say what they take, not "parse error".
		{[]string{"run", "--mail-timeout", "10"}, `invalid value "10" for flag -mail-timeout: want a duration with its unit, like 10s, 2m or 1h30m`},
		{[]string{"run", "--workers", "many"}, `invalid value "many" for flag -workers: want a whole number`},
		{[]string{"demo", "--seed", "-1"}, `invalid value "-1" for flag -seed: want a whole number, 0 or more`},
		{[]string{"bench", "--mail-url", "http://h", "--mail-url-file", "f"}, "mail-url-file: give the URL once"},
		{[]string{"bench", "--mail-url-file", "/no/such/file"}, "mail-url-file: open /no/such/file: no such file or directory"},
	}
	for _, tt := range tests {
		name := strings.Join(tt.give, " ")
		stdout, stderr, err := cli(t, tt.give...)
		require.Error(t, err, name)
		assert.Equal(t, 2, exitStatus(err, nil, io.Discard), name)
		assert.Empty(t, stdout, name)
		assert.True(t, strings.HasPrefix(stderr, "ordermail: "+tt.want), "%s: stderr %q", name, stderr)
		assert.Contains(t, stderr, "\nUSAGE\n", name)
	}

	stdout, stderr, code := runProcess(t, "retries", "status", "--bogus")
	assert.Equal(t, 2, code)
	assert.Empty(t, stdout)
	assert.Contains(t, stderr, "flag provided but not defined: -bogus")
	assert.Equal(t, 1, strings.Count(stderr, "-bogus"), "the message once, not repeated after the usage:\n%s", stderr)
	_, stderr, code = runProcess(t, "pay")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "no order keys")

	left, err := os.ReadDir(".")
	require.NoError(t, err)
	assert.Empty(t, left, "a wrong command line made files")
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		name       string
		give       error
		sig        os.Signal
		want       int
		wantStderr string
	}{
		{"done", nil, nil, 0, ""},
		{"failed", errors.New("boom"), nil, 1, "ordermail: boom\n"},
		{"usage", usageErrorf("no order keys"), nil, 2, ""}, // run printed it, with the usage
		{"a code of its own", exitError{code: 3, err: errors.New("store gone")}, nil, 3, "ordermail: store gone\n"},
		{"a code of its own, wrapped", fmt.Errorf("run: %w", exitError{code: 4, err: errors.New("feed failed")}), nil, 4, "ordermail: run: feed failed\n"},
		{"interrupted", context.Canceled, os.Interrupt, 130, ""},
		{"interrupted after it was done", nil, os.Interrupt, 130, ""},
		// Failed for a reason of its own (a start or stop that failed), as
		// after SIGTERM: 1, not 130, which hid it from a script.
		{"failed while interrupted", errors.New("boom"), os.Interrupt, 1, "ordermail: boom\n"},
		{"a Couchbase request cut short by Ctrl-C", fmt.Errorf("get retries/r1: %w: %w: %w", store.ErrUnavailable, store.ErrUnreachable,
			&gocb.KeyValueError{InnerError: gocb.ErrRequestCanceled}), os.Interrupt, 130, ""},
		{"a bulk action interrupted", errors.Join(errors.New("left 2 dead letters that changed: d1, d2"), fmt.Errorf("%w: %w", ops.ErrStopped, context.Canceled)),
			os.Interrupt, 130, "ordermail: left 2 dead letters that changed: d1, d2\n"},
		{"a bulk action interrupted, nothing left", errors.Join(nil, fmt.Errorf("%w: %w", ops.ErrStopped, context.Canceled)), os.Interrupt, 130, ""},
		// SIGTERM: a command cut short exits as a shell says SIGTERM ended
		// it, not 1 with "context canceled"; one that stopped cleanly, 0.
		{"stopped cleanly on SIGTERM", nil, syscall.SIGTERM, 0, ""},
		{"cut short by SIGTERM", fmt.Errorf("load: %w", context.Canceled), syscall.SIGTERM, 143, ""},
		{"a bulk action cut short by SIGTERM", errors.Join(errors.New("left 1 dead letter that changed: d1"), fmt.Errorf("%w: %w", ops.ErrStopped, context.Canceled)),
			syscall.SIGTERM, 143, "ordermail: left 1 dead letter that changed: d1\n"},
		{"failed otherwise after SIGTERM", errors.New("boom"), syscall.SIGTERM, 1, "ordermail: boom\n"},
		// Keys read from the store may hold any byte: a terminal is not
		// made to obey them.
		{"a key with an escape sequence", errors.Join(errors.New("redrive a\x1b[2Jb: store unavailable"), errors.New("purge c\xffd: gone")), nil, 1,
			"ordermail: redrive a\\x1b[2Jb: store unavailable\npurge c\\xffd: gone\n"},
		{"a key with a newline, which would forge a line", fmt.Errorf("purge %s: %w", "x\nordermail: all 3,740 dead letters purged", store.ErrUnavailable), nil, 1,
			"ordermail: purge x\\nordermail: all 3,740 dead letters purged: store unavailable\n"},
		{"a key quoted", errors.New("purge \"a\x1b[2J\""), nil, 1, "ordermail: purge \\\"a\\x1b[2J\\\"\n"},
		{"a key with a newline under a bulk action's stop", fmt.Errorf("%w: %w", ops.ErrStopped, fmt.Errorf("redrive %s: %w", "x\nordermail: all redriven", store.ErrUnavailable)), nil, 1,
			"ordermail: " + ops.ErrStopped.Error() + ": redrive x\\nordermail: all redriven: store unavailable\n"},
		{"a join wrapped", fmt.Errorf("bench timed out after 10m0s (--timeout): %w", errors.Join(errors.New("the probe x\x1bz"), errors.New("close store: disk I/O error"))), nil, 1,
			"ordermail: bench timed out after 10m0s (--timeout): the probe x\\x1bz\nclose store: disk I/O error\n"},
		// A message's own lines stay lines (the bench's tail of a log).
		{"a log's tail", fmt.Errorf("bench: %w", multiLine{errors.New("the service exited; its last output:\nlevel=ERROR msg=boom\nlevel=INFO msg=stopped")}), nil, 1,
			"ordermail: bench: the service exited; its last output:\nlevel=ERROR msg=boom\nlevel=INFO msg=stopped\n"},
		// On Couchbase a request the stop cut short fails with gocb's own
		// cancellation, which does not wrap the context's.
		{"a Couchbase request cut short by SIGTERM", fmt.Errorf("%w: %w", ops.ErrStopped,
			fmt.Errorf("get retries/r1: %w: %w: %w", store.ErrUnavailable, store.ErrUnreachable, &gocb.KeyValueError{InnerError: gocb.ErrRequestCanceled})),
			syscall.SIGTERM, 143, ""},
		// A code of its own is a reason of the command's own, whatever
		// signal came (it was hidden behind 143 or 130, unsaid).
		{"a code of its own after SIGTERM", exitError{code: 3, err: fmt.Errorf("store deleted; and stopping: %w", context.Canceled)}, syscall.SIGTERM, 3,
			"ordermail: store deleted; and stopping: context canceled\n"},
		{"a code of its own after Ctrl-C", exitError{code: 4, err: errors.New("feed failed")}, os.Interrupt, 4, "ordermail: feed failed\n"},
	}
	for _, tt := range tests {
		var stderr strings.Builder
		assert.Equal(t, tt.want, exitStatus(tt.give, tt.sig, &stderr), tt.name)
		assert.Equal(t, tt.wantStderr, stderr.String(), tt.name)
	}
}

func TestVersion(t *testing.T) {
	stdout, _, err := cli(t, "version")
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(stdout, "ordermail "+version()+"\n"), stdout)
	assert.Contains(t, stdout, "\ngo:           go1.")
	assert.Contains(t, stdout, "\ncommit:       ")

	stdout, _, code := runProcess(t, "version")
	assert.Zero(t, code)
	assert.Contains(t, stdout, "ordermail ")
}

// A lock file beside the store (empty), named by a slip, is no store:
// SQLite would make one of it, and `retries start` would say "started",
// the store itself left paused.
func TestCommandsThatNeedAStoreRefuseAFileThatIsNone(t *testing.T) {
	dir := t.TempDir()
	lock := filepath.Join(dir, "ordermail.db.open")
	require.NoError(t, os.WriteFile(lock, nil, 0o600))
	junk := filepath.Join(dir, "notes.txt")
	require.NoError(t, os.WriteFile(junk, []byte("orders to check"), 0o600))
	for path, why := range map[string]string{lock: "the file is empty", junk: "not a SQLite database"} {
		for _, give := range [][]string{{"retries", "start"}, {"deadletters", "redrive", "--all"}, {"retries", "status"}} {
			name := strings.Join(give, " ") + " " + path
			stdout, _, err := cli(t, append(give, "--store", "file:"+path)...)
			require.EqualError(t, err, path+" is not a store: "+why+" (the store is ordermail's database file, not a lock file beside it; --store names another)", name)
			assert.Equal(t, 1, exitStatus(err, nil, io.Discard), name)
			assert.Empty(t, stdout, name)
		}
	}
	fi, err := os.Stat(lock)
	require.NoError(t, err)
	assert.Zero(t, fi.Size(), "the lock file made a database")
}

// TestCommandsThatNeedAStoreRefuseAMissingOne: a command that only reads,
// or that changes what must be there already, does not create the store it
// was pointed at (a typo, or the default in the wrong directory), it says
// so (a retries start there would say "started" while the service's store
// stays paused); load, which adds orders, does create it.
func TestCommandsThatNeedAStoreRefuseAMissingOne(t *testing.T) {
	t.Chdir(t.TempDir())
	missing := filepath.Join("nowhere", "o.db")
	for _, tt := range []struct{ command, rest []string }{
		{[]string{"retries", "status"}, nil},
		{[]string{"retries", "status"}, []string{"--json"}},
		{[]string{"deadletters", "list"}, nil},
		{[]string{"orders", "show"}, []string{"order_1"}},
		{[]string{"pay"}, []string{"order_1"}},
		{[]string{"retries", "stop"}, nil},
		{[]string{"retries", "start"}, nil},
		{[]string{"deadletters", "redrive"}, []string{"--all"}},
		{[]string{"deadletters", "purge"}, []string{"--yes", "dl_1"}},
	} {
		for _, store := range []string{"", missing} {
			give := append([]string{}, tt.command...)
			wantPath := "data/ordermail.db"
			if store != "" {
				give = append(give, "--store", "file:"+store)
				wantPath = store
			}
			give = append(give, tt.rest...)
			name := strings.Join(give, " ")
			stdout, _, err := cli(t, give...)
			require.EqualError(t, err, "no store at "+wantPath+" (start the service or load orders first; --store names another)", name)
			assert.Equal(t, 1, exitStatus(err, nil, io.Discard), name)
			assert.Empty(t, stdout, name)
		}
	}
	left, err := os.ReadDir(".")
	require.NoError(t, err)
	assert.Empty(t, left, "a command that needs a store made files")

	_, stderr, code := runProcess(t, "retries", "status", "--store", "file:"+filepath.Join(t.TempDir(), "o.db"))
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "ordermail: no store at ")

	orders := filepath.Join(t.TempDir(), "orders.jsonl")
	writeJSONL(t, orders, fixtures.Generate(1, 1))
	_, _, err = cli(t, "load", "--collection", "inbound", "--store", "file:"+missing, orders)
	require.NoError(t, err, "load creates the store")
	_, err = os.Stat(missing)
	assert.NoError(t, err)
	_, _, err = cli(t, "retries", "start", "--store", "file:"+missing)
	require.NoError(t, err)
	out, _, err := cli(t, "retries", "status", "--store", "file:"+missing)
	require.NoError(t, err)
	assert.Contains(t, out, "retries:            armed")
}

func TestHealthcheck(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()

	out, _, err := cli(t, "healthcheck", "--url", srv.URL+"/healthz")
	require.NoError(t, err)
	assert.Equal(t, "healthy: "+srv.URL+"/healthz answered 200 OK\n", out)

	status.Store(http.StatusServiceUnavailable)
	_, _, err = cli(t, "healthcheck", "--url", srv.URL+"/healthz")
	require.EqualError(t, err, "unhealthy: "+srv.URL+"/healthz answered 503 Service Unavailable")
	assert.Equal(t, 1, exitStatus(err, nil, io.Discard))

	_, _, code := runProcess(t, "healthcheck", "--url", srv.URL+"/healthz")
	assert.Equal(t, 1, code)
	status.Store(http.StatusNoContent)
	_, _, code = runProcess(t, "healthcheck", "--url", srv.URL+"/healthz")
	assert.Zero(t, code)

	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	_, _, err = cli(t, "healthcheck", "--url", closed.URL+"/healthz")
	require.ErrorContains(t, err, "unhealthy: ")

	// The service's metrics address in the environment, as a container
	// sets it for `run`, is where the check asks, on loopback when the
	// service listens on every address.
	status.Store(http.StatusOK)
	t.Setenv("ORDERMAIL_METRICS_LISTEN", "0.0.0.0:"+srv.URL[strings.LastIndex(srv.URL, ":")+1:])
	out, _, err = cli(t, "healthcheck")
	require.NoError(t, err)
	assert.Equal(t, "healthy: "+srv.URL+"/healthz answered 200 OK\n", out)
	_, _, err = cli(t, "healthcheck", "--url", closed.URL+"/healthz")
	require.ErrorContains(t, err, "unhealthy: ", "--url given wins")
	t.Setenv("ORDERMAIL_METRICS_LISTEN", "9464")
	_, _, err = cli(t, "healthcheck")
	require.ErrorContains(t, err, `ORDERMAIL_METRICS_LISTEN: "9464" is not host:port`)
}

// TestFlagsAfterArguments: flags given after a command's arguments, as
// README's table of commands writes them, are read as flags (the flag
// package stopped at the first argument: `pay order_1 --store URL` paid
// "order_1", "--store" and the URL in the default store).
func TestFlagsAfterArguments(t *testing.T) {
	t.Chdir(t.TempDir())
	require.NoError(t, os.WriteFile("o.jsonl", []byte(`{"id":"order_1","doc":{"email":"a@example.com","paymentStatus":"unpaid"}}`+"\n"), 0o600))
	_, _, err := cli(t, "load", "--store", "file:s.db", "--collection", "inbound", "o.jsonl")
	require.NoError(t, err)

	out, _, err := cli(t, "pay", "order_1", "--store", "file:s.db")
	require.NoError(t, err)
	assert.Equal(t, "marked 1 of 1 orders paid\n", out)
	_, err = os.Stat("data")
	assert.ErrorIs(t, err, os.ErrNotExist, "the default store was opened")

	out, _, err = cli(t, "orders", "show", "order_1", "--json", "--store=file:s.db")
	require.NoError(t, err)
	assert.Contains(t, out, `"paymentStatus":"paid"`)

	_, _, err = cli(t, "orders", "show", "--store", "file:s.db", "--", "--json")
	assert.EqualError(t, err, `no order, retry, dead letter or attempt record under key "--json"`, "after -- an argument stays one")

	_, stderr, err := cli(t, "orders", "show", "order_1", "--store")
	assert.Equal(t, 2, exitStatus(err, nil, io.Discard))
	assert.Contains(t, stderr, "flag needs an argument: -store")
}

func TestFlagsFirst(t *testing.T) {
	root := rootCommand(io.Discard, io.Discard)
	for _, tt := range []struct{ give, want []string }{
		{[]string{"pay", "a", "--store", "file:x", "b"}, []string{"pay", "--store", "file:x", "--", "a", "b"}},
		{[]string{"orders", "show", "a", "-json", "--store=file:x"}, []string{"orders", "show", "-json", "--store=file:x", "--", "a"}},
		{[]string{"pay", "--store", "-odd-path", "a"}, []string{"pay", "--store", "-odd-path", "--", "a"}},
		{[]string{"pay", "a", "--", "--store", "-b"}, []string{"pay", "--", "a", "--store", "-b"}},
		{[]string{"pay", "a", "--nope", "b"}, []string{"pay", "--nope", "--", "a", "b"}},
		{[]string{"retries"}, []string{"retries"}},
		{[]string{"retries", "nope", "--x"}, []string{"retries", "nope", "--x"}},
		{[]string{"-h"}, []string{"-h"}},
	} {
		assert.Equal(t, tt.want, flagsFirst(root, tt.give), "%q", tt.give)
	}
}

// TestAnotherUsersWorldReadableStoreIsRefused: a store file of another
// user that every user may read (made first in a shared directory) is
// refused, since only its owner can make it private: before, the command
// wrote customer data into it as it was.
func TestAnotherUsersWorldReadableStoreIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: to make a file of another user, and run the command as a third")
	}
	shared, err := os.MkdirTemp("", "ordermail-shared-*")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(shared) })
	require.NoError(t, os.Chmod(shared, 0o1777))
	exe, err := os.ReadFile(binary)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(shared, "ordermail"), exe, 0o755))
	orders := filepath.Join(shared, "o.jsonl")
	require.NoError(t, os.WriteFile(orders, []byte(`{"id":"order_1","doc":{"email":"ann@example.com","paymentStatus":"paid"}}`+"\n"), 0o644))
	db := filepath.Join(shared, "o.db")
	require.NoError(t, os.WriteFile(db, nil, 0o666))
	require.NoError(t, os.Chmod(db, 0o666))
	require.NoError(t, os.Chown(db, 1, 1)) // daemon's

	cmd := exec.Command(filepath.Join(shared, "ordermail"), "load", "--store", "file:"+db, "--collection", "inbound", orders)
	cmd.Dir = shared
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}} // nobody's
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "%s", out)
	assert.Equal(t, 1, exit.ExitCode())
	assert.Contains(t, string(out), db+" is another user's file that every user may read (mode 0666), and only its owner can make it private")
	fi, err := os.Stat(db)
	require.NoError(t, err)
	assert.Zero(t, fi.Size(), "nothing was written into it")
	_, err = os.Stat(db + "-wal")
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// A start that failed on its own (a port in use, a file unreadable) while
// a stop was asked for exited 0, "stopped before the service started": a
// supervisor saw a clean stop of a broken configuration. Only a start the
// stop cut short is one.
func TestAStartCutShortIsTheStopsDoingOnly(t *testing.T) {
	assert.True(t, cutShort(fmt.Errorf("open store: %w", context.Canceled)))
	assert.True(t, cutShort(fmt.Errorf("open store: %w", embedded.ErrBusy)))
	assert.True(t, cutShort(fmt.Errorf("bucket orders is not reachable: %w", gocb.ErrRequestCanceled)))
	assert.False(t, cutShort(errors.New("metrics-listen: listen tcp 127.0.0.1:9464: bind: address already in use")))
	assert.False(t, cutShort(fmt.Errorf("admin-token-file: %w", os.ErrNotExist)))
}

// A console token file that cannot be read stopped run only once the
// store was open: an embedded store file made and migrated (on Couchbase,
// a connection waited for) before the typo was said.
func TestAnUnreadableAdminTokenFileIsSaidBeforeTheStoreOpens(t *testing.T) {
	dir := t.TempDir()
	_, stderr, err := cli(t, "run", "--store", "file:"+filepath.Join(dir, "om.db"), "--mail-url", "http://127.0.0.1:9",
		"--admin-listen", "127.0.0.1:0", "--admin-token-file", filepath.Join(dir, "no-such-token"))
	require.Error(t, err)
	assert.Contains(t, err.Error()+stderr, "admin-token-file: open "+filepath.Join(dir, "no-such-token"))
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left, "files made before the typo was said")
}

// multiLine is an error whose lines are its own, as the bench's tail of a
// process's output is.
type multiLine struct{ error }

func (e multiLine) Unwrap() error   { return e.error }
func (e multiLine) MultiLine() bool { return true }
