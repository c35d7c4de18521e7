package couchbase

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A password rotated on the cluster and in --cb-password-file (swapped as
// a secret mount swaps it) is used by the running store without a
// restart: queries at once, and KV and the feed once their connections
// are made again. Before, the file was read once at start, and every
// query (the sweep, the counts) failed until a restart.
func TestARotatedPasswordFileIsUsedWithoutARestart(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	dir := t.TempDir()
	file := filepath.Join(dir, "cb-password")
	swap := func(pw string) {
		tmp := filepath.Join(dir, "new")
		require.NoError(t, os.WriteFile(tmp, []byte(pw+"\n"), 0o600))
		require.NoError(t, os.Rename(tmp, file))
	}
	swap(srv.Password())
	cfg.Password, cfg.PasswordFile, cfg.CountsTTL = "", file, -1
	s := openStore(t, cfg)
	sub := subscribe(t, s, "rotation", []string{order.Inbound}, true)
	put(t, s, order.Inbound, "before")
	readUntil(t, sub, sawKeys("before"))

	require.NoError(t, srv.SetPassword("rotated-secret"))
	swap("rotated-secret")
	var lastErr atomic.Value
	require.Eventually(t, func() bool {
		_, err := s.Counts(context.Background())
		lastErr.Store(fmt.Sprint(err))
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "a query with the new password: %v", later.Value(lastErr.Load))

	srv.DropConnections() // KV and DCP log in again, with the new password
	put(t, s, order.Inbound, "after")
	readUntil(t, sub, sawKeys("after"))
}

// The client certificate's files are read again too: swapped for a
// certificate the cluster does not trust, the next KV logins present it
// (the server says so: a failed write alone could be a busy machine's
// timeout); swapped back, they succeed, with no restart.
func TestARenewedClientCertificateIsUsedWithoutARestart(t *testing.T) {
	var (
		logMu     sync.Mutex
		refusals  int // handshakes the server failed on a client certificate it could not verify
		serverLog = func(format string, args ...any) {
			if line := fmt.Sprintf(format, args...); strings.Contains(line, "TLS handshake") &&
				strings.Contains(line, "certificate signed by unknown authority") {
				logMu.Lock()
				refusals++
				logMu.Unlock()
			}
		}
		refused = func() bool { logMu.Lock(); defer logMu.Unlock(); return refusals > 0 }
	)
	cfg, srv, pki := tlsCluster(t, true, func(o *cbtest.Options) { o.Logf = serverLog })
	stranger, err := testpki.New()
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	swap := func(p *testpki.PKI) {
		for path, b := range map[string][]byte{certFile: p.ClientCertPEM, keyFile: p.ClientKeyPEM} {
			tmp := path + ".new"
			require.NoError(t, os.WriteFile(tmp, b, 0o600))
			require.NoError(t, os.Rename(tmp, path))
		}
	}
	swap(pki)
	cfg.CertFile, cfg.KeyFile, cfg.Timeout = certFile, keyFile, time.Second
	s := openStore(t, cfg)
	var lastErr atomic.Value
	write := func() bool {
		// A write cut off is read back until the server answers: the
		// context bounds that.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := s.Upsert(ctx, order.Inbound, "k", []byte(`{}`))
		lastErr.Store(fmt.Sprint(err))
		return err == nil
	}
	require.Eventually(t, write, 30*time.Second, 100*time.Millisecond, "the first certificate: %v", later.Value(lastErr.Load))

	swap(stranger)
	// KV logs in again after each drop; within a second (the files' look
	// again), with the certificate swapped in.
	require.Eventually(t, func() bool { srv.DropConnections(); write(); return refused() }, 30*time.Second, 100*time.Millisecond,
		"the server never saw the certificate swapped in: the files were not read again (last write: %v)", later.Value(lastErr.Load))
	swap(pki)
	require.Eventually(t, write, 30*time.Second, 100*time.Millisecond, "the renewed certificate: %v", later.Value(lastErr.Load))
}

// While the password file cannot be read (a secret mount between its old
// and its new content), logins go on with the password it last held, and
// a warning names the file once; before, every new login failed until the
// next look at the file, and the SDK said nothing of why.
func TestAPasswordFileGoneForAMomentHoldsNothingUp(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	require.NoError(t, srv.SetPassword("hunter2-h8Kq")) // a word no log line holds otherwise
	file := filepath.Join(t.TempDir(), "cb-password")
	require.NoError(t, os.WriteFile(file, []byte(srv.Password()+"\n"), 0o600))
	cfg.Password, cfg.PasswordFile, cfg.CountsTTL = "", file, -1
	logs := &syncbuf.Buffer{}
	s, err := Open(context.Background(), cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })

	require.NoError(t, os.Remove(file))
	var lastErr atomic.Value
	require.Eventually(t, func() bool {
		srv.DropConnections() // KV logs in again, and every query does
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := s.Upsert(ctx, order.Inbound, "k", []byte(`{}`))
		if err == nil {
			_, err = s.Counts(ctx)
		}
		lastErr.Store(fmt.Sprint(err))
		return err == nil && len(logs.Lines("cannot be used now")) > 0
	}, 30*time.Second, 100*time.Millisecond, "logins with the file gone: %v; logs:\n%v",
		later.Value(lastErr.Load), later.Value(func() any { return logs.String() }))
	warned := logs.Lines("cannot be used now")
	require.Len(t, warned, 1, "said once")
	assert.Contains(t, warned[0], "cb-password-file: ")
	assert.NotContains(t, logs.String(), srv.Password(), "the password is never logged")
}

// A plain couchbase:// connection string to a host other machines share
// sends the password (HTTP basic auth to the query and management
// services) and every order unencrypted: remotePlain names the host to
// warn of; couchbases:// and loopback hosts are not.
func TestRemotePlainNamesAHostReachedInTheClear(t *testing.T) {
	for give, want := range map[string]string{
		"couchbase://db1.example.com":             "db1.example.com",
		"couchbase://127.0.0.1,db2.example.com":   "db2.example.com",
		"couchbase://10.0.0.5:11210?network=auto": "10.0.0.5",
		"couchbase://[2001:db8::1]":               "2001:db8::1",
		"couchbases://db1.example.com":            "",
		"couchbase://localhost":                   "",
		"couchbase://127.0.0.1:34567,[::1]:34568": "",
		"couchbase://127.0.0.1:8091=http":         "",
		"couchbase://localhost.":                  "",
	} {
		assert.Equal(t, want, remotePlain(give), give)
	}
}
