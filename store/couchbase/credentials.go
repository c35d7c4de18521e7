package couchbase

import (
	"crypto/tls"
	"strings"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/couchbase/gocbcore/v10"
	"github.com/ordermail/ordermail/internal/watchfile"
)

// credentials are the user and its password, read again from
// --cb-password-file when the file changes: a password rotated on the
// cluster and in the file (a secret mount swapped) is used within a
// second by everything that logs in anew, each query and management
// request and each new KV or DCP connection, with no restart; connections
// already open stay logged in.
type credentials struct {
	username, password string
	file               *watchfile.File
}

// credentials reads the password once, so that a file that cannot be read
// stops Open and Setup with its name.
func (c Config) credentials() (*credentials, error) {
	cr := &credentials{username: c.Username, password: c.Password, file: watchfile.New("cb-password-file", c.PasswordFile)}
	if _, err := cr.current(); err != nil {
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
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// gocbAuth is the credentials as gocb asks for them.
type gocbAuth struct{ *credentials }

var _ gocb.Authenticator = gocbAuth{}

func (gocbAuth) SupportsTLS() bool                                          { return true }
func (gocbAuth) SupportsNonTLS() bool                                       { return true }
func (gocbAuth) Certificate(gocb.AuthCertRequest) (*tls.Certificate, error) { return nil, nil }
func (a gocbAuth) Credentials(gocb.AuthCredsRequest) ([]gocb.UserPassPair, error) {
	pw, err := a.current()
	if err != nil {
		return nil, err
	}
	return []gocb.UserPassPair{{Username: a.username, Password: pw}}, nil
}

// coreAuth is the credentials as gocbcore's agents (the feed's) ask for them.
type coreAuth struct{ *credentials }

var _ gocbcore.AuthProvider = coreAuth{}

func (coreAuth) SupportsTLS() bool                                              { return true }
func (coreAuth) SupportsNonTLS() bool                                           { return true }
func (coreAuth) Certificate(gocbcore.AuthCertRequest) (*tls.Certificate, error) { return nil, nil }
func (a coreAuth) Credentials(gocbcore.AuthCredsRequest) ([]gocbcore.UserPassPair, error) {
	pw, err := a.current()
	if err != nil {
		return nil, err
	}
	return []gocbcore.UserPassPair{{Username: a.username, Password: pw}}, nil
}
