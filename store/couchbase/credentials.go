package couchbase

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/couchbase/gocbcore/v10"
	"github.com/ordermail/ordermail/internal/watchfile"
)

// credentials log in: a user and its password, or a client certificate
// (the cluster maps it to its user). The files are read again when they
// change: a password rotated on the cluster and in --cb-password-file (a
// secret mount swapped), or a renewed certificate, is used within a second
// by everything that logs in anew, each query and management request and
// each new KV or DCP connection, with no restart; connections already open
// stay logged in. While a file cannot be read, or the certificate and key
// do not match (one swapped before the other), what they last held is
// used, and a warning says so once.
type credentials struct {
	username, password string
	file               *watchfile.File
	cert, key          *watchfile.File
	log                *slog.Logger // nil: nothing said

	mu       sync.Mutex
	goodPW   string           // the file's last readable password
	goodPair *tls.Certificate // the files' last matching pair
	said     string           // the failure last warned of
}

// credentials reads the files once, so that one that cannot be read stops
// Open and Setup with its name.
func (c Config) credentials(log *slog.Logger) (*credentials, error) {
	cr := &credentials{username: c.Username, password: c.Password, file: watchfile.New("cb-password-file", c.PasswordFile),
		cert: watchfile.New("cb-cert-file", c.CertFile), key: watchfile.New("cb-key-file", c.KeyFile), log: log}
	var err error
	if cr.cert != nil {
		_, err = cr.certificate()
	} else {
		_, err = cr.current()
	}
	if err != nil {
		return nil, err
	}
	return cr, nil
}

// current is the password as of now; a file's line ending is not part of it.
func (c *credentials) current() (string, error) {
	if c.file == nil {
		return c.password, nil
	}
	b, _, err := c.file.Read(time.Now())
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		return c.goodPW, c.fallBack(err, c.goodPW != "")
	}
	c.goodPW, c.said = strings.TrimRight(string(b), "\r\n"), ""
	return c.goodPW, nil
}

// certificate is the client certificate as of now; nil when a password
// logs in. Its errors name the files, never the key.
func (c *credentials) certificate() (*tls.Certificate, error) {
	if c.cert == nil {
		return nil, nil
	}
	now := time.Now()
	certPEM, _, err := c.cert.Read(now)
	var keyPEM []byte
	if err == nil {
		keyPEM, _, err = c.key.Read(now)
	}
	var pair tls.Certificate
	if err == nil {
		if pair, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
			err = fmt.Errorf("cb-cert-file and cb-key-file (%s, %s): %w", c.cert.Path(), c.key.Path(), err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		return c.goodPair, c.fallBack(err, c.goodPair != nil)
	}
	c.goodPair, c.said = &pair, ""
	return c.goodPair, nil
}

// fallBack is the error of a read that failed: none when what the files
// last held can stand in (have), said once. Under mu.
func (c *credentials) fallBack(err error, have bool) error {
	if !have {
		return err
	}
	if msg := err.Error(); c.log != nil && msg != c.said {
		c.log.Warn("a credentials file cannot be used now: logging in with what it last held", "error", msg)
		c.said = msg
	}
	return nil
}

// pair is what the SDK sends: with a certificate, no user and no password,
// so that it makes no SASL login (SDK-RFC 0036); its HTTP requests then carry an
// empty basic auth, which the cluster passes over for the certificate.
func (c *credentials) pair() (username, password string, err error) {
	if c.cert != nil {
		return "", "", nil
	}
	pw, err := c.current()
	return c.username, pw, err
}

// gocbAuth is the credentials as gocb asks for them.
type gocbAuth struct{ *credentials }

var _ gocb.Authenticator = gocbAuth{}

func (a gocbAuth) SupportsTLS() bool    { return true }
func (a gocbAuth) SupportsNonTLS() bool { return a.cert == nil }
func (a gocbAuth) Certificate(gocb.AuthCertRequest) (*tls.Certificate, error) {
	return a.certificate()
}
func (a gocbAuth) Credentials(gocb.AuthCredsRequest) ([]gocb.UserPassPair, error) {
	u, pw, err := a.pair()
	if err != nil {
		return nil, err
	}
	return []gocb.UserPassPair{{Username: u, Password: pw}}, nil
}

// coreAuth is the credentials as gocbcore's agents (the feed's) ask for them.
type coreAuth struct{ *credentials }

var _ gocbcore.AuthProvider = coreAuth{}

func (a coreAuth) SupportsTLS() bool    { return true }
func (a coreAuth) SupportsNonTLS() bool { return a.cert == nil }
func (a coreAuth) Certificate(gocbcore.AuthCertRequest) (*tls.Certificate, error) {
	return a.certificate()
}
func (a coreAuth) Credentials(gocbcore.AuthCredsRequest) ([]gocbcore.UserPassPair, error) {
	u, pw, err := a.pair()
	if err != nil {
		return nil, err
	}
	return []gocbcore.UserPassPair{{Username: u, Password: pw}}, nil
}
