package main

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunAsProcess runs `ordermail run` as a real process, feeds it orders
// written by other processes on the same file, and stops it with SIGTERM.
func TestRunAsProcess(t *testing.T) {
	m, err := mockmail.New(mockmail.Config{FailRate: 0.3, Seed: 9})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	defer srv.Close()
	dir := t.TempDir()
	storeURL := "file:" + filepath.Join(dir, "o.db")

	var logs syncbuf.Buffer
	cmd := exec.Command(binary, "run", "--timer-interval", "100ms", "--retry-quantum", "200ms", "--log-format", "json")
	cmd.Env = append(cmd.Environ(), "ORDERMAIL_STORE="+storeURL, "ORDERMAIL_MAIL_URL="+srv.URL)
	cmd.Stderr = &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})

	// Another process loads and pays orders while run is running.
	orders := filepath.Join(dir, "orders.jsonl")
	writeJSONL(t, orders, fixtures.Generate(30, 5))
	load := exec.Command(binary, "load", "--store", storeURL, "--collection", "inbound", orders)
	out, err := load.CombinedOutput()
	require.NoError(t, err, string(out))
	keys := make([]string, 0, 30)
	for _, d := range fixtures.Generate(30, 5) {
		keys = append(keys, d.Key)
	}
	out, err = exec.Command(binary, append([]string{"pay", "--store", storeURL}, keys...)...).CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command(binary, "retries", "start", "--store", storeURL).CombinedOutput()
	require.NoError(t, err, string(out))

	st, err := app.OpenStore(context.Background(), app.StoreConfig{URL: storeURL}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	defer st.Close()
	require.Eventually(t, func() bool {
		c, err := st.Counts(context.Background())
		return err == nil && c.OrdersConfirmed == 30 && c.RetryDocs == 0
	}, 60*time.Second, 20*time.Millisecond, "logs:\n%s", logs.String())

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, "clean exit after SIGTERM; logs:\n%s", logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit after SIGTERM; logs:\n%s", logs.String())
	}
	assert.Contains(t, logs.String(), `"msg":"shutting down"`)
	assert.Contains(t, logs.String(), `"msg":"stopped","component":"watcher"`)
	assert.Equal(t, 30, m.Stats().Deliveries)
	assert.Zero(t, m.Stats().DuplicateRequests)
	_, err = st.Get(context.Background(), order.Retry, order.ControlKey)
	assert.NoError(t, err)
}
