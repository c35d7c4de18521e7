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

// reloadGrace is how long a setting's file may read wrong while what it
// last held is used: a rotation caught halfway (a certificate replaced a
// moment before its key, as certbot copies them; a file rewritten in
// place, read empty) is over within a read or two (watchfile.ReloadEvery),
// and holding every send for a cooldown for it would be the outage. A file
// still wrong after it holds the sends.
const reloadGrace = 5 * watchfile.ReloadEvery

// badSpell is when a setting's file started reading wrong.
type badSpell struct{ since time.Time }

// excuse returns nil while err is younger than reloadGrace and a good
// value is at hand to use meanwhile (saying so once, at the start), and err
// otherwise. A nil err ends the spell. c.mu is held.
func (c *Client) excuse(b *badSpell, err error, haveGood bool, now time.Time) error {
	if err == nil {
		b.since = time.Time{}
		return nil
	}
	if !haveGood {
		return err
	}
	if b.since.IsZero() {
		b.since = now
		c.log.Warn("a setting's file reads wrong: what it last held is used meanwhile; sends are held if it still does then",
			"error", err, "for", reloadGrace.String())
	}
	if now.Sub(b.since) < reloadGrace {
		return nil
	}
	return err
}

// errFileSettings is returned by Validate for half a client certificate.
var errFileSettings = errors.New("mail-cert-file and mail-key-file: give both for a client certificate, or neither")
