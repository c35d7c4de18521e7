package testpki_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/stretchr/testify/require"
)

func TestPKIClientCert(t *testing.T) {
	t.Parallel()
	p, err := testpki.New()
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	srv.TLS = p.ServerTLS(true)
	srv.StartTLS()
	defer srv.Close()

	get := func(cfg *tls.Config, url string) (string, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	_, err = get(p.ClientTLS(false), srv.URL)
	require.Error(t, err, "no client certificate")
	name, err := get(p.ClientTLS(true), srv.URL)
	require.NoError(t, err)
	require.Equal(t, "ordermail test client", name)

	// The server certificate names localhost too.
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	require.NoError(t, err)
	_, err = get(p.ClientTLS(true), "https://localhost:"+port)
	require.NoError(t, err)

	// The PEM files load as a pair and are the owner's alone.
	files, err := p.WriteFiles(t.TempDir())
	require.NoError(t, err)
	_, err = tls.LoadX509KeyPair(files.ClientCert, files.ClientKey)
	require.NoError(t, err)
	_, err = tls.LoadX509KeyPair(files.ServerCert, files.ServerKey)
	require.NoError(t, err)
	fi, err := os.Stat(files.ServerKey)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}
