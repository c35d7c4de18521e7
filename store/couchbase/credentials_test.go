package couchbase

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
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
