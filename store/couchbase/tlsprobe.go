package couchbase

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/couchbase/gocbcore/v10"
)

// reachTrouble says what is wrong with reaching the cluster that the SDK
// could not reach, which tells only of a timeout. It makes a connection of
// its own to the seed nodes' data ports, the first that takes one: nothing listening there, a
// name that does not resolve, a host that does not answer are named. On
// couchbases:// the connection is checked as the SDK checks it (the same
// CA, the same client certificate); on both it asks a memcached HELLO,
// which a node answers before any login: a certificate it cannot trust, no
// TLS at all (or TLS where none is expected), or a login the node refuses
// (a client certificate missing, of a CA it does not trust, of no user:
// under TLS 1.3 said only after the handshake) is named. nil when the node
// answers, or says nothing at all (the caller's own message then stands).
func (c Config) reachTrouble(ctx context.Context) error {
	ac := &gocbcore.AgentConfig{}
	if err := ac.FromConnStr(c.ConnStr); err != nil || len(ac.SeedConfig.MemdAddrs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, max(c.withDefaults().Timeout, probeTimeout))
	defer cancel()
	// The first node that takes a connection is the one asked: one node
	// down of several is no reason the SDK failed.
	var raw net.Conn
	var addr string
	var dialErrs []error
	// Each node a share of the time: one that drops connections (a host
	// down, a firewall) must not use it all before a live one is asked.
	seeds := ac.SeedConfig.MemdAddrs
	dialer := &net.Dialer{Timeout: max(time.Second, max(c.withDefaults().Timeout, probeTimeout)/time.Duration(len(seeds)))}
	for _, a := range seeds {
		conn, err := dialer.DialContext(ctx, "tcp", a)
		if err == nil {
			raw, addr = conn, a
			break
		}
		dialErrs = append(dialErrs, unreachable(a, err))
		if ctx.Err() != nil {
			break
		}
	}
	if raw == nil {
		if len(dialErrs) == 1 {
			return dialErrs[0]
		}
		return fmt.Errorf("no node of the connection string takes a connection: %w", errors.Join(dialErrs...))
	}
	defer raw.Close()
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	if d, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(d)
	}
	if !strings.HasPrefix(c.ConnStr, "couchbases://") {
		if err := hello(raw); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%s does not answer as a Couchbase data port (%v): is it the cluster's data port (11210), "+
				"or its TLS port (11207), which wants couchbases://?", addr, err)
		}
		return nil
	}
	pool, err := c.caPool()
	if err != nil || (pool == nil && strings.HasSuffix(host, ".cloud.couchbase.com")) {
		return nil // a bad file is said apart; without one, the SDK trusts Capella's CA too
	}
	tc := &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12}
	if c.CertFile != "" {
		creds, err := c.credentials(nil)
		if err != nil {
			return nil // said apart
		}
		// As the SDK offers it: whatever CAs the server asks for.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return creds.certificate() }
	}
	conn := tls.Client(raw, tc)
	defer conn.Close()
	err = conn.HandshakeContext(ctx)
	shook := err == nil
	if shook {
		err = hello(conn)
	}
	if err == nil || ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil // it answers, or it does not answer at all: nothing to say of TLS
	}
	return c.tlsProblem(addr, shook, err)
}

// unreachable names why a connection to addr could not be made.
func unreachable(addr string, err error) error {
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing listens at %s (connection refused): is Couchbase running there, and is that its data port?", addr)
	case errors.As(err, &dns):
		return fmt.Errorf("%s: the name does not resolve (%v): is the host in the connection string right?", addr, dns)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%s does not answer a connection: is the host right, and does a firewall let its data port through?", addr)
	}
	return fmt.Errorf("cannot connect to %s: %w", addr, err)
}

// probeTimeout is reachTrouble's least bound: a refusal after the
// handshake takes a round trip and the node's checks.
const probeTimeout = 5 * time.Second

// hello sends a memcached HELLO and reads the header of the answer.
func hello(conn net.Conn) error {
	const key = "ordermail-tls-probe"
	req := make([]byte, 24, 24+len(key))
	req[0], req[1] = 0x80, 0x1f // request, HELLO
	binary.BigEndian.PutUint16(req[2:], uint16(len(key)))
	binary.BigEndian.PutUint32(req[8:], uint32(len(key)))
	if _, err := conn.Write(append(req, key...)); err != nil {
		return err
	}
	var res [24]byte
	if _, err := io.ReadFull(conn, res[:]); err != nil {
		return err
	}
	if res[0] != 0x81 || res[1] != 0x1f {
		return fmt.Errorf("%w: its answer begins %q", errNotDataPort, res[:4])
	}
	return nil
}

// errNotDataPort is an answer to HELLO that is no memcached response.
var errNotDataPort = errors.New("no memcached answer")

// tlsProblem names what err, from the probe's handshake (or, when shook,
// from its HELLO after it), says is wrong.
func (c Config) tlsProblem(addr string, shook bool, err error) error {
	trust := "give the PEM file of the CA that signed the cluster's certificates with --cb-ca-cert"
	if c.CACertFile != "" {
		trust = "is " + c.CACertFile + " (--cb-ca-cert) the CA that signed the cluster's certificates?"
	}
	login := "give a client certificate it trusts, whose subject names one of its users, with --cb-cert-file and --cb-key-file"
	if c.CertFile != "" {
		login = "does it trust " + c.CertFile + " (--cb-cert-file), and does the certificate's subject name one of its users?"
	}
	var (
		verify  *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		name    x509.HostnameError
		alert   *net.OpError
	)
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("%s presents a certificate signed by a CA not trusted here (%v): %s", addr, unknown, trust)
	case errors.As(err, &name):
		return fmt.Errorf("%s presents a certificate for other names (%v): name the node as its certificate does", addr, name)
	case errors.As(err, &verify):
		return fmt.Errorf("%s presents a certificate that does not verify: %v", addr, verify.Err)
	case errors.As(err, &alert) && alert.Op == "remote error":
		// A TLS alert the node sent: one of a certificate's (bad,
		// unknown, of an unknown CA, required...) or of access is about
		// the login; any other about TLS itself.
		if msg := alert.Err.Error(); strings.Contains(msg, "certificate") || strings.Contains(msg, "access denied") {
			return fmt.Errorf("%s refused the TLS login (%v): %s", addr, err, login)
		}
		return fmt.Errorf("%s refused the TLS handshake: %v", addr, err)
	case shook && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)):
		if c.CertFile != "" {
			return fmt.Errorf("%s hung up once it had the client certificate: %s", addr, login)
		}
		return fmt.Errorf("%s hung up right after the TLS handshake: does the cluster require a client certificate? %s", addr, login)
	case shook && errors.Is(err, errNotDataPort):
		return fmt.Errorf("%s does not answer as a Couchbase data port over TLS (%v): is it the cluster's TLS data port (11207)?", addr, err)
	case shook:
		return nil // TLS works; whatever else is wrong, the caller's message says
	}
	// Connected, and no TLS came back: a plain port (memcached hangs up
	// on a request it cannot read) or something else entirely.
	return fmt.Errorf("%s does not answer in TLS (%v): is it the cluster's TLS port (11207), or is the cluster's "+
		"connection string couchbase://?", addr, err)
}
