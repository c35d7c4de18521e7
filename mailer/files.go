package mailer

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// reloadEvery is how often a setting's file is looked at again: a rotated
// key or certificate takes effect within it.
const reloadEvery = time.Second

// watchedFile is a file whose content is read again when it changes (its
// size, modification time or inode: a Kubernetes secret is swapped by a
// symlink). It is looked at no more than once per reloadEvery.
type watchedFile struct {
	flag, path string

	mu        sync.Mutex
	checked   time.Time
	stamp     fileStamp
	content   []byte
	err       error
	changedAt time.Time // when the content last changed, for the caller's caches
}

type fileStamp struct {
	size, mtime int64
	ino         uint64
}

func newWatchedFile(flag, path string) *watchedFile {
	if path == "" {
		return nil
	}
	return &watchedFile{flag: flag, path: path}
}

// read returns the content as of now, and when it last changed. Errors name
// the setting and the path, never the content.
func (f *watchedFile) read(now time.Time) ([]byte, time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.checked.IsZero() && now.Sub(f.checked) < reloadEvery {
		return f.content, f.changedAt, f.err
	}
	f.checked = now
	fi, err := os.Stat(f.path)
	if err != nil {
		f.set(nil, fileStamp{}, fmt.Errorf("%s: %w", f.flag, err), now)
		return f.content, f.changedAt, f.err
	}
	stamp := fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		stamp.ino = st.Ino
	}
	if f.err == nil && f.content != nil && stamp == f.stamp {
		return f.content, f.changedAt, nil
	}
	b, err := os.ReadFile(f.path)
	switch {
	case err != nil:
		f.set(nil, fileStamp{}, fmt.Errorf("%s: %w", f.flag, err), now)
	case len(bytes.TrimSpace(b)) == 0:
		f.set(nil, fileStamp{}, fmt.Errorf("%s: %s is empty", f.flag, f.path), now)
	default:
		f.set(b, stamp, nil, now)
	}
	return f.content, f.changedAt, f.err
}

func (f *watchedFile) set(b []byte, stamp fileStamp, err error, now time.Time) {
	if !bytes.Equal(b, f.content) || (err == nil) != (f.err == nil) {
		f.changedAt = now
	}
	f.content, f.stamp, f.err = b, stamp, err
}

// credential is the value of the authentication header: the file's content
// without surrounding white space. It must be a valid header value.
func credential(f *watchedFile, now time.Time) (string, error) {
	b, _, err := f.read(now)
	if err != nil {
		return "", err
	}
	v := string(bytes.TrimSpace(b))
	if CheckHeaderValue(v) != nil {
		// Not the value: it is a secret.
		return "", fmt.Errorf("%s: %s holds a byte a header value cannot carry (a control character inside the value)", f.flag, f.path)
	}
	return v, nil
}

// tlsFiles are the TLS settings' files.
type tlsFiles struct {
	ca, cert, key *watchedFile
}

func (t tlsFiles) any() bool { return t.ca != nil || t.cert != nil }

// changed says when any of the files last changed (or became unreadable).
func (t tlsFiles) changed(now time.Time) time.Time {
	var at time.Time
	for _, f := range []*watchedFile{t.ca, t.cert, t.key} {
		if f != nil {
			_, c, _ := f.read(now)
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
		pem, _, err := t.ca.read(now)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: %s holds no PEM certificate", t.ca.flag, t.ca.path)
		}
		cfg.RootCAs = pool // replaces the system roots: trust the company's PKI only
	}
	if t.cert != nil {
		certPEM, _, err := t.cert.read(now)
		if err != nil {
			return nil, err
		}
		keyPEM, _, err := t.key.read(now)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("%s and %s: %w", t.cert.flag, t.key.flag, err)
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
