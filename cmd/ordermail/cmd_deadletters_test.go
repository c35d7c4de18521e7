package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDeadLettersListOverManyPages: the list is printed as the store reads
// it, a page at a time; over more than two of its pages (and of the
// table's blocks of listRows) it is still every dead letter, once, in key
// order, in both forms.
func TestDeadLettersListOverManyPages(t *testing.T) {
	t.Parallel()
	const n = 2*listRows + 201
	path, st := withDeadLetters(t, n)
	require.NoError(t, st.Close())
	storeURL := "file:" + path

	out, _, err := cli(t, "deadletters", "list", "--store", storeURL, "--json")
	require.NoError(t, err)
	var dls []struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &dls), "one JSON array")
	require.Len(t, dls, n)
	for i, d := range dls {
		require.Equal(t, fmt.Sprintf("order_%05d", i), d.ID)
	}

	out, _, err = cli(t, "deadletters", "list", "--store", storeURL)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, n+1, "a heading and a row each")
	assert.True(t, strings.HasPrefix(lines[0], "ID "), lines[0])
	for i, l := range lines[1:] {
		require.Regexp(t, fmt.Sprintf(`^order_%05d\s+permanent_error\s+400\s+1\s+0\s`, i), l)
	}
}

// TestDeadLettersListOfNoneIsAnEmptyArray: scripts read [] rather than
// nothing.
func TestDeadLettersListOfNoneIsAnEmptyArray(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.NoError(t, err)
	require.NoError(t, st.Close())
	out, _, err := cli(t, "deadletters", "list", "--store", "file:"+path, "--json")
	require.NoError(t, err)
	assert.Equal(t, "[]\n", out)
}

// TestDeadLettersByReason: list, redrive and purge take the dead letters of
// one reason, as the console's filter does, and leave the others.
func TestDeadLettersByReason(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(ctx, embedded.Config{Path: path})
	require.NoError(t, err)
	for k, reason := range map[string]string{"p1": order.ReasonPermanent, "p2": order.ReasonPermanent, "e1": order.ReasonExhausted, "n1": order.ReasonNoEmail} {
		_, err := st.Insert(ctx, order.DeadLetter, k, order.DeadLetterDoc{DocID: k, Reason: reason, Attempts: 1}.Encode())
		require.NoError(t, err)
	}
	require.NoError(t, st.Close())
	storeURL := "file:" + path
	ids := func(reason string) []string {
		t.Helper()
		out, _, err := cli(t, "deadletters", "list", "--store", storeURL, "--json", "--reason", reason)
		require.NoError(t, err)
		var dls []struct {
			ID string `json:"id"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &dls), out)
		var got []string
		for _, d := range dls {
			got = append(got, d.ID)
		}
		return got
	}
	assert.Equal(t, []string{"p1", "p2"}, ids(order.ReasonPermanent))
	out, _, err := cli(t, "deadletters", "list", "--store", storeURL, "--reason", order.ReasonExhausted)
	require.NoError(t, err)
	assert.Equal(t, 2, strings.Count(out, "\n"), "a heading and e1: %s", out)
	assert.Contains(t, out, "e1 ")

	out, _, err = cli(t, "deadletters", "redrive", "--store", storeURL, "--reason", order.ReasonPermanent)
	require.NoError(t, err)
	assert.Equal(t, "redrove 2 dead letters\n", out)
	assert.Empty(t, ids(order.ReasonPermanent))
	out, _, err = cli(t, "deadletters", "purge", "--store", storeURL, "--yes", "--reason", order.ReasonExhausted)
	require.NoError(t, err)
	assert.Equal(t, "purged 1 dead letter\n", out)
	assert.Empty(t, ids(order.ReasonExhausted))
	assert.Equal(t, []string{"n1"}, ids(order.ReasonNoEmail), "the others are left")

	s, err := embedded.Open(ctx, embedded.Config{Path: path})
	require.NoError(t, err)
	defer s.Close()
	for _, k := range []string{"p1", "p2"} {
		_, err := s.Get(ctx, order.Retry, k)
		assert.NoError(t, err, "%s redriven: a retry document", k)
	}
}

// TestTextFromDocumentsIsShownNotObeyed: keys and error texts come from
// customers and remote services. A control character in one (an escape
// sequence, a newline that would forge a row of the table) is printed
// quoted, in the list and in an order's story alike; plain text is as it is.
func TestTextFromDocumentsIsShownNotObeyed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(ctx, embedded.Config{Path: path})
	require.NoError(t, err)
	keys := map[string]string{
		"esc\x1b[31mRED\x1b[0m":           `"esc\x1b[31mRED\x1b[0m"`,
		"nl\norder_fake\tpermanent_error": `"nl\norder_fake\tpermanent_error"`,
		"plain_é":                         "plain_é",
	}
	for k := range keys {
		_, err := st.Insert(ctx, order.DeadLetter, k, order.DeadLetterDoc{DocID: k, Reason: order.ReasonInvalidKey,
			LastError: "answered \x1b]0;pwned\x07 400", Attempts: 1}.Encode())
		require.NoError(t, err)
	}
	require.NoError(t, st.Close())
	storeURL := "file:" + path

	out, _, err := cli(t, "deadletters", "list", "--store", storeURL)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	assert.Len(t, lines, 1+len(keys), "a heading and one row a dead letter, none forged:\n%s", out)
	assert.NotContains(t, out, "\x1b", "no escape reaches the terminal")
	for _, want := range keys {
		assert.Contains(t, out, want+"  ", "the key as shown")
	}
	assert.Contains(t, out, `"answered \x1b]0;pwned\a 400"`)
	assert.Regexp(t, `invalid_key\s+-\s+1\s`, out, "no status: '-', as the console shows it")

	show, _, err := cli(t, "orders", "show", "--store", storeURL, "nl\norder_fake\tpermanent_error")
	require.NoError(t, err)
	assert.Contains(t, show, `order:            "nl\norder_fake\tpermanent_error"`+"\n")
	assert.NotContains(t, show, "\x1b")
}

// TestACommandsChoicesAreNotTakenFromTheEnvironment: a stale export of
// ORDERMAIL_YES, _ALL or _PAY purged, redrove or paid without being asked.
// A command's own choices are read from its command line only; the store's
// settings still come from the environment.
func TestACommandsChoicesAreNotTakenFromTheEnvironment(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(ctx, embedded.Config{Path: path})
	require.NoError(t, err)
	_, err = st.Insert(ctx, order.DeadLetter, "d1", order.DeadLetterDoc{DocID: "d1", Reason: order.ReasonPermanent, Attempts: 1}.Encode())
	require.NoError(t, err)
	require.NoError(t, st.Close())
	t.Setenv("ORDERMAIL_STORE", "file:"+path) // a setting: taken

	for _, c := range []struct {
		env  string
		args []string
	}{
		{"ORDERMAIL_YES", []string{"deadletters", "purge", "d1"}},
		{"ORDERMAIL_ALL", []string{"deadletters", "redrive"}},
		{"ORDERMAIL_PAY", []string{"load", "--collection", "inbound", filepath.Join("..", "..", "fixtures", "orders")}},
		{"ORDERMAIL_COLLECTION", []string{"load", filepath.Join("..", "..", "fixtures", "orders")}}, // before load's own checks
	} {
		t.Run(c.env, func(t *testing.T) {
			t.Setenv(c.env, "true")
			_, _, err := cli(t, c.args...)
			flag := "--" + strings.ToLower(strings.TrimPrefix(c.env, "ORDERMAIL_"))
			assert.EqualError(t, err, c.env+" is set in the environment, but "+flag+
				" is a choice of this command, read from the command line only: unset "+c.env)
		})
	}
	out, _, err := cli(t, "deadletters", "list", "--json")
	require.NoError(t, err)
	assert.Contains(t, out, `"d1"`, "neither purged nor redriven")

	// The service's settings, which a deployment exports for run, are
	// taken; a choice exported and given on the command line too is the
	// command line's.
	t.Setenv("ORDERMAIL_RETRY_QUANTUM", "1m")
	t.Setenv("ORDERMAIL_JSON", "true")
	out, _, err = cli(t, "retries", "status", "--json")
	require.NoError(t, err)
	assert.Contains(t, out, `"timerArmed":false`)
	t.Setenv("ORDERMAIL_RETRY_QUANTUM", "soon")
	_, _, err = cli(t, "retries", "status", "--json")
	assert.EqualError(t, err, "environment variable ORDERMAIL_RETRY_QUANTUM: not a valid --retry-quantum: want a duration with its unit, like 10s, 2m or 1h30m")
	s, err := embedded.Open(ctx, embedded.Config{Path: path})
	require.NoError(t, err)
	defer s.Close()
	c, err := s.Counts(ctx)
	require.NoError(t, err)
	assert.Zero(t, c.OrdersPaid, "no order loaded, none paid")
}

// TestABulkRedriveStoppedSaysSo: a redrive --all stopped part way (Ctrl-C)
// says it stopped, counts no more than it made, and running it again does
// the rest.
func TestABulkRedriveStoppedSaysSo(t *testing.T) {
	t.Parallel()
	const n = 20000
	path, watch := withDeadLetters(t, n) // kept open: another process's, to see the command's writes
	defer watch.Close()
	storeURL := "file:" + path

	// Stopped once the first dead letter is redriven, as a Ctrl-C would.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer cancel()
		for ctx.Err() == nil {
			if _, err := watch.Get(ctx, order.DeadLetter, "order_00000"); errors.Is(err, store.ErrNotFound) {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var stdout, stderr bytes.Buffer
	err := run(ctx, []string{"deadletters", "redrive", "--all", "--store", storeURL}, &stdout, &stderr)
	require.Error(t, err, "stopped: stdout %q", stdout.String())
	var said int
	_, serr := fmt.Sscanf(stdout.String(), "stopped: redrove %d dead letter", &said) // or letters
	require.NoError(t, serr, "what it said: %q", stdout.String())
	assert.Contains(t, stdout.String(), "run the command again to go on")

	left := 0
	require.NoError(t, watch.Scan(context.Background(), order.DeadLetter, "", func(store.Doc) error { left++; return nil }))
	require.Positive(t, left, "the redrive was stopped before its end (test too slow to stop it?)")
	assert.LessOrEqual(t, said, n-left, "it counts no more than it made")

	out, _, err := cli(t, "deadletters", "redrive", "--all", "--store", storeURL)
	require.NoError(t, err)
	assert.Equal(t, doneOrStopped(context.Background(), nil, "redrove", left)+"\n", out)
}

// withDeadLetters is an embedded store in a temporary directory holding n
// dead letters, order_00000 on, open.
func withDeadLetters(t *testing.T, n int) (string, *embedded.Store) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.NoError(t, err)
	var writes []store.Write
	for i := range n {
		k := fmt.Sprintf("order_%05d", i)
		writes = append(writes, store.Write{Op: store.OpInsert, Collection: order.DeadLetter, Key: k,
			Value: order.DeadLetterDoc{DocID: k, Reason: order.ReasonPermanent, LastStatus: 400, Attempts: 1}.Encode()})
	}
	_, err = st.Apply(context.Background(), writes)
	require.NoError(t, err)
	return path, st
}

// A bulk action an error of the store stopped says so, as one Ctrl-C
// stopped does: it said "redrove 3220 dead letters", as if done.
func TestDoneOrStoppedSaysAStopByTheStore(t *testing.T) {
	ctx := context.Background()
	assert.Equal(t, "redrove 7 dead letters", doneOrStopped(ctx, nil, "redrove", 7))
	assert.Equal(t, "redrove 1 dead letter", doneOrStopped(ctx, nil, "redrove", 1))
	assert.Equal(t, "redrove 7 dead letters", doneOrStopped(ctx, fmt.Errorf("redrive: 1 left, %w", ops.ErrChanged), "redrove", 7))
	stoppedBy := fmt.Errorf("%w: redrive k: %w", ops.ErrStopped, store.ErrUnavailable)
	assert.Contains(t, doneOrStopped(ctx, stoppedBy, "redrove", 7), "stopped: redrove 7 dead letters")
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	assert.Contains(t, doneOrStopped(cancelled, nil, "purged", 3), "stopped: purged 3 dead letters")
}
