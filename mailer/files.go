package mailer

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/ordermail/ordermail/internal/watchfile"
)

// credential is the value of the authentication header: the file's content
// without surrounding white space. It must be a valid header value.
func credential(f *watchfile.File, now time.Time) (string, error) {
	b, _, err := f.Read(now)
	if err != nil {
		return "", err
	}
	v := string(bytes.TrimSpace(b))
	if CheckHeaderValue(v) != nil {
		// Not the value: it is a secret.
		return "", fmt.Errorf("%s: %s holds a byte a header value cannot carry (a control character inside the value)", f.Flag(), f.Path())
	}
	return v, nil
}

// tlsFiles are the TLS settings' files.
type tlsFiles struct {
	ca, cert, key *watchfile.File
}

func (t tlsFiles) any() bool { return t.ca != nil || t.cert != nil }

// changed says when any of the files last changed (or became unreadable).
func (t tlsFiles) changed(now time.Time) time.Time {
	var at time.Time
	for _, f := range []*watchfile.File{t.ca, t.cert, t.key} {
		if f != nil {
			_, c, _ := f.Read(now)
			at = later(at, c)
		}
	}
	return at
}

// config builds the client TLS configuration from the files as they are
// now. Its errors name the settings and paths, never a key's bytes.
func (t tlsFiles) config(now time.Time) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.ca != nil {
		pem, _, err := t.ca.Read(now)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: %s holds no PEM certificate", t.ca.Flag(), t.ca.Path())
		}
		cfg.RootCAs = pool // replaces the system roots: trust the company's PKI only
	}
	if t.cert != nil {
		certPEM, _, err := t.cert.Read(now)
		if err != nil {
			return nil, err
		}
		keyPEM, _, err := t.key.Read(now)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("%s and %s: %w", t.cert.Flag(), t.key.Flag(), err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// errFileSettings is returned by Validate for half a client certificate.
var errFileSettings = errors.New("mail-cert-file and mail-key-file: give both for a client certificate, or neither")
