package mailer

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ordermail/ordermail/internal/testpki"
)

// A send made with the TLS files as they were, refused after another send
// read new ones, says nothing of the new: it does not hold the sends that
// carry them (the gate it answers to was replaced with the files).
func TestARefusalOfReplacedTLSFilesHoldsNothing(t *testing.T) {
	oldPKI, err := testpki.New()
	require.NoError(t, err)
	newPKI, err := testpki.New()
	require.NoError(t, err)
	oldFiles, err := oldPKI.WriteFiles(t.TempDir())
	require.NoError(t, err)
	newFiles, err := newPKI.WriteFiles(t.TempDir())
	require.NoError(t, err)
	hello := make(chan struct{})
	goOn := make(chan struct{})
	var first atomic.Bool
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = newPKI.ServerTLS(false)
	srv.TLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if first.CompareAndSwap(false, true) { // the first send's handshake waits
			close(hello)
			<-goOn
		}
		return nil, nil
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	copyFile(t, oldFiles.CA, caFile) // a CA that does not sign the service's certificate
	c, err := New(Config{URL: srv.URL, CAFile: caFile, BreakerCooldown: time.Hour}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() { done <- c.Send(context.Background(), "k1", []byte(`{}`)) }()
	<-hello
	copyFile(t, newFiles.CA, caFile)
	_, err = c.client(time.Now().Add(time.Minute)) // another send reads the new file
	require.NoError(t, err)
	close(goOn)
	se, ok := (<-done).(*SendError)
	require.True(t, ok)
	assert.Equal(t, Configuration, se.Class, "refused, with the old CA: %v", se)
	require.NoError(t, c.Send(context.Background(), "k2", []byte(`{}`)), "the new CA's send held")
	assert.Empty(t, c.Misconfigured())
}

// copyFile replaces to with from's content, as a rotation does (renamed
// into place).
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to+".new", b, 0o600))
	require.NoError(t, os.Rename(to+".new", to))
}
