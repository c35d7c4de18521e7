package couchbase

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMapErr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give error
		want error
	}{
		{gocb.ErrDocumentNotFound, store.ErrNotFound},
		{gocb.ErrDocumentExists, store.ErrExists},
		{gocb.ErrCasMismatch, store.ErrCASMismatch},
		{gocb.ErrTimeout, store.ErrUnavailable},
		{gocb.ErrAmbiguousTimeout, store.ErrUnavailable},
		{gocb.ErrUnambiguousTimeout, store.ErrUnavailable},
		{gocb.ErrServiceNotAvailable, store.ErrUnavailable},
		{gocb.ErrTemporaryFailure, store.ErrUnavailable},
		{gocb.ErrOverload, store.ErrUnavailable},
		{gocb.ErrDocumentLocked, store.ErrUnavailable},
		{gocb.ErrShutdown, store.ErrClosed},
		// The connection failing under a request.
		{&net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}, store.ErrUnavailable},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, store.ErrUnavailable},
		{io.EOF, store.ErrUnavailable},
	}
	for _, tt := range tests {
		wrapped := fmt.Errorf("op: %w", tt.give) // as gocb wraps them in KeyValueError
		got := mapErr(wrapped)
		assert.ErrorIs(t, got, tt.want, "%v", tt.give)
		assert.ErrorContains(t, got, tt.give.Error(), "the cause stays in the message")
	}
	for _, keep := range []error{gocb.ErrBucketNotFound, gocb.ErrCollectionNotFound, gocb.ErrAuthenticationFailure} {
		got := mapErr(keep)
		assert.ErrorIs(t, got, keep, "setup errors keep their identity")
		for _, s := range []error{store.ErrNotFound, store.ErrUnavailable, store.ErrExists} {
			assert.False(t, errors.Is(got, s))
		}
	}
	assert.NoError(t, mapErr(nil))
	// A request cut short by its context stays one, for the command line
	// to tell a stop asked for from a failure.
	assert.ErrorIs(t, mapErr(fmt.Errorf("op: %w", gocb.ErrRequestCanceled)), gocb.ErrRequestCanceled)
	assert.ErrorIs(t, mapErr(gocb.ErrAmbiguousTimeout), ErrAmbiguous, "a write that may have been made is told apart")
	assert.NotErrorIs(t, mapErr(gocb.ErrUnambiguousTimeout), ErrAmbiguous)
	// The node's failures, which its other keys share, against the key's
	// own (a document locked): the watcher holds back a node for the first.
	for _, nodes := range []error{gocb.ErrTimeout, gocb.ErrUnambiguousTimeout, gocb.ErrAmbiguousTimeout, gocb.ErrServiceNotAvailable, io.EOF} {
		assert.ErrorIs(t, mapErr(fmt.Errorf("op: %w", nodes)), store.ErrUnreachable, "%v", nodes)
	}
	for _, keys := range []error{gocb.ErrDocumentLocked, gocb.ErrDurableWriteInProgress, gocb.ErrTemporaryFailure} {
		assert.NotErrorIs(t, mapErr(fmt.Errorf("op: %w", keys)), store.ErrUnreachable, "%v", keys)
	}
}

func TestSweepStatementAndParams(t *testing.T) {
	t.Parallel()
	s := &Store{cfg: Config{Bucket: "orders", Scope: "_default"}}
	assert.Equal(t,
		"UPDATE `orders`.`_default`.`retry` AS r SET r.fireRetry = true "+
			"WHERE META(r).id != $control AND (r.fireRetry IS MISSING OR r.fireRetry != true) AND ("+
			"(r.nextAttemptAt <= $now AND IS_NUMBER(r.nextAttemptAt)) OR "+
			"(r.nextAttemptAt IS MISSING AND r.ts < $cutoff AND IS_NUMBER(r.ts))) "+
			"LIMIT $limit RETURNING RAW META(r).id",
		sweepStatement(s.keyspace("retry")))
	now := time.UnixMilli(1_700_000_000_000)
	assert.Equal(t, map[string]interface{}{
		"control": "allow_retrys",
		"now":     int64(1_700_000_000_000),
		"cutoff":  int64(1_700_000_000_000 - 15_000),
		"limit":   500,
	}, sweepParams(now, 15*time.Second, 500))
}

func TestOtherStatements(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "SELECT RAW META(d).id FROM `b`.`s`.`deadletter` AS d WHERE META(d).id > $after ORDER BY META(d).id LIMIT $limit",
		scanStatement("`b`.`s`.`deadletter`"))
	assert.Contains(t, backlogStatement("R"), "MIN("+flaggedDueAt+") FROM R AS r WHERE META(r).id != $control AND r.fireRetry = true)",
		"the oldest due is of every due retry, the flagged ones too, as the count is")
	o := orderCountsStatement("I")
	for _, want := range []string{
		`FROM I AS o WHERE o.paymentStatus = "paid")[0] AS paid`,
		`o.confirmationEmailSent = true)[0] AS confirmed`,
	} {
		assert.Contains(t, o, want)
	}
	c := countsStatement("R", "D")
	for _, want := range []string{
		`FROM R AS r)[0] AS retryDocs`, // the collection's count; the control document taken away after
		`r.fireRetry = true)[0] AS retryFlagged`,
		`FROM D AS d)[0] AS deadLetters`,
	} {
		assert.Contains(t, c, want)
	}
	assert.NotContains(t, c, "paymentStatus", "the orders are counted apart, less often")
}

func TestConfig(t *testing.T) {
	t.Parallel()
	ok := Config{ConnStr: "couchbase://localhost", Username: "u", Password: "p"}
	require.NoError(t, ok.Validate())
	tests := []struct {
		give func(*Config)
		want string
	}{
		{func(c *Config) { c.ConnStr = "http://x" }, "not a couchbase://"},
		{func(c *Config) { c.Username = "" }, "cb-username"},
		{func(c *Config) { c.Password = "" }, "cb-password"},
		{func(c *Config) { c.Instance, c.Instances = 2, 2 }, "instance: 2 of 2"},
		{func(c *Config) { c.CACertFile = "ca.pem" }, "needs a couchbases://"},
		{func(c *Config) { c.CertFile = "c.pem" }, "cb-cert-file and cb-key-file: give both"},
		{func(c *Config) { c.CertFile, c.KeyFile = "c.pem", "k.pem" }, "client certificate needs a couchbases://"},
		{func(c *Config) { c.ConnStr, c.CertFile, c.KeyFile = "couchbases://db", "c.pem", "k.pem" }, "give no username or password with it"},
		{func(c *Config) {
			c.ConnStr, c.CertFile, c.KeyFile, c.Password = "couchbases://db", "c.pem", "k.pem", ""
		}, "give no username or password with it"},
		{func(c *Config) { c.Timeout = -time.Second }, "cb-timeout"},
	}
	for _, tt := range tests {
		c := ok
		tt.give(&c)
		assert.ErrorContains(t, c.Validate(), tt.want)
	}
	certOnly := Config{ConnStr: "couchbases://db", CertFile: "c.pem", KeyFile: "k.pem"}
	assert.NoError(t, certOnly.Validate(), "the certificate names the user: no username, no password")

	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	require.NoError(t, os.WriteFile(pwFile, []byte("s3cret\n"), 0o600))
	c := ok
	c.PasswordFile = pwFile
	creds, err := c.credentials(nil)
	require.NoError(t, err)
	pw, err := creds.current()
	require.NoError(t, err)
	assert.Equal(t, "s3cret", pw, "the file wins, without its newline")
	c.PasswordFile = filepath.Join(dir, "missing")
	_, err = c.credentials(nil)
	assert.ErrorContains(t, err, "cb-password-file: ", "a file that cannot be read stops the start")

	c.CACertFile = filepath.Join(dir, "bad.pem")
	require.NoError(t, os.WriteFile(c.CACertFile, []byte("not a cert"), 0o600))
	_, err = c.caPool()
	assert.ErrorContains(t, err, "holds no PEM certificate")
}

func TestOwnedVbucketsSplitEvenly(t *testing.T) {
	t.Parallel()
	seen := map[uint16]int{}
	for i := range 3 {
		vbs := ownedVbuckets(Config{Instance: i, Instances: 3}, 1024)
		assert.InDelta(t, 1024/3, len(vbs), 1)
		for _, vb := range vbs {
			seen[vb]++
		}
	}
	assert.Len(t, seen, 1024, "every vBucket has an owner")
	for vb, n := range seen {
		assert.Equal(t, 1, n, "vb %d has one owner", vb)
	}
}

func TestPassthroughKeepsAnyBytes(t *testing.T) {
	t.Parallel()
	var out []byte
	require.NoError(t, passthrough{}.Decode([]byte{0xff, 'x'}, 0x03<<24, &out), "binary flags too")
	assert.Equal(t, []byte{0xff, 'x'}, out)
	var s string
	assert.Error(t, passthrough{}.Decode([]byte("x"), 0, &s))
	b, _, err := passthrough{}.Encode([]byte(`{"a":1}`))
	require.NoError(t, err)
	assert.Equal(t, `{"a":1}`, string(b))
}

func TestUnreachableClusterIsAClearStartupError(t *testing.T) {
	t.Parallel()
	cfg := Config{ConnStr: "couchbase://127.0.0.1:1", Username: "u", Password: "hunter2", Timeout: 300 * time.Millisecond}
	_, err := Open(context.Background(), cfg, quietLog)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "bucket orders on couchbase://127.0.0.1:1 is not reachable")
	assert.NotContains(t, err.Error(), "hunter2")
}

// Every index setup creates for ordermail's own queries is one that
// MissingIndexes checks, so that a new one cannot be left out of the
// warning (the primary index on attempts is an operator's, not a query's).
func TestMissingIndexesCheckWhatSetupCreates(t *testing.T) {
	t.Parallel()
	s := &Store{cfg: Config{Bucket: "b", Scope: "s"}}
	uses := s.indexUses()
	checked := func(index, coll string) bool {
		return slices.ContainsFunc(uses, func(u indexUse) bool {
			return u.index == index && strings.Contains(u.statement, s.keyspace(coll))
		})
	}
	for _, ix := range setupIndexes() {
		if ix.name == "#primary" && ix.coll == order.Attempts {
			continue
		}
		assert.True(t, checked(ix.name, ix.coll), "%s on %s: not checked by MissingIndexes", ix.name, ix.coll)
	}
}

// A sweep goes on past documents written or removed under it (12009 with
// a CAS mismatch or a key not found), and only those.
func TestChangedUnder(t *testing.T) {
	dml := func(reason map[string]interface{}, msg string) gocb.QueryErrorDesc {
		return gocb.QueryErrorDesc{Code: 12009, Message: msg, Reason: reason}
	}
	cas := dml(map[string]interface{}{"code": 12033.0}, "DML Error, possible causes include CAS mismatch. Failed to perform UPDATE on key a")
	gone := dml(map[string]interface{}{"code": 17014.0}, "DML Error, possible causes include concurrent modification. Failed to perform UPDATE on key b")
	tmpfail := dml(map[string]interface{}{"code": 12000.0}, "DML Error, possible causes include concurrent modification. Failed to perform UPDATE on key c")
	qe := func(descs ...gocb.QueryErrorDesc) error {
		return &gocb.QueryError{InnerError: gocb.ErrCasMismatch, Errors: descs}
	}
	tests := []struct {
		name  string
		give  error
		wantN int
		want  bool
	}{
		{"one CAS mismatch", qe(cas), 1, true},
		{"a CAS mismatch and a removed document", qe(cas, gone), 2, true},
		{"joined with a nil Close", errors.Join(qe(cas), nil), 1, true},
		{"no reason: the message names CAS mismatch among the possible causes of any DML failure", qe(dml(nil, "DML Error, possible causes include CAS mismatch. x")), 0, false},
		{"another cause of 12009", qe(cas, tmpfail), 0, false},
		{"the error limit", qe(cas, gocb.QueryErrorDesc{Code: 1195, Message: "Request execution aborted as the number of errors raised has reached the maximum permitted."}), 0, false},
		{"no errors listed", qe(), 0, false},
		{"not a query error", gocb.ErrTimeout, 0, false},
		{"joined with a Close error", errors.Join(qe(cas), errors.New("close")), 0, false},
	}
	for _, tt := range tests {
		n, ok := changedUnder(tt.give)
		assert.Equal(t, tt.want, ok, tt.name)
		assert.Equal(t, tt.wantN, n, tt.name)
	}
}
