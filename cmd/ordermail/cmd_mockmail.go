package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/ordermail/ordermail/internal/webhook"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func mockmailCommand(stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("mockmail", stderr)
	var cfg mockmail.Config
	var logs logFlags
	var sec mockSecurity
	listen := fs.String("listen", "127.0.0.1:9080", "address to listen on; one other machines can reach is logged as a warning")
	finiteFloat64Var(fs, &cfg.FailRate, "fail-rate", 0.5, "share of sends answered with --fail-status, 0 to 1 (the sample: a coin flip)")
	fs.BoolVar(&cfg.FailOnce, "fail-once", false, "--fail-rate applies to a key's first request only; its retries are answered 200")
	fs.IntVar(&cfg.HoldEvery, "hold-every", 0, "answer nothing to the first request of every Nth key seen, until the sender gives up (a service that never answers some requests); 0: answer all")
	fs.IntVar(&cfg.FailStatus, "fail-status", http.StatusServiceUnavailable, "HTTP status of a failed send, 300-599 (the sample's mock: 406, which ordermail treats as permanent)")
	fs.DurationVar(&cfg.Latency, "latency", 0, "delay before every answer")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "random seed for the failures; 0 picks one")
	sec.register(fs)
	logs.register(fs, "info")
	return &ffcli.Command{
		Name: "mockmail",
		ShortUsage: "ordermail mockmail [--listen ADDR] [--fail-rate P] [--fail-once] [--fail-status CODE] [--latency DURATION]\n" +
			"    [--hold-every N] [--seed N]\n" +
			"    [--auth-file PATH [--auth-header NAME]] [--signing-secret-file PATH]\n" +
			"    [--tls-cert PATH --tls-key PATH [--client-ca PATH]]",
		ShortHelp: "run the mock email service (POST /sendConfirmation, GET /stats)",
		LongHelp: "Runs the mock email service. Off by default, it can want what a production email API wants:\n" +
			"credentials (--auth-file), Standard Webhooks signatures (--signing-secret-file), HTTPS (--tls-cert,\n" +
			"--tls-key) and client certificates (--client-ca). Refused sends are answered 401 (400 when a signed\n" +
			"request's webhook-id is not its Idempotency-Key) and leave the keys' state alone.",
		FlagSet: fs,
		Options: envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			log, err := logs.logger(stderr)
			if err != nil {
				return badSetting(err)
			}
			if err := cfg.Validate(); err != nil {
				return badSetting(err)
			}
			tlsCfg, err := sec.apply(&cfg)
			if err != nil {
				return err
			}
			m, err := mockmail.New(cfg)
			if err != nil {
				return err
			}
			var l *mockmail.Listening
			if tlsCfg != nil {
				l, err = m.ListenTLS(*listen, tlsCfg)
			} else {
				l, err = m.Listen(*listen)
			}
			if err != nil {
				return err
			}
			// What is required, never the credentials themselves.
			attrs := []any{"addr", l.Addr().String(), "url", l.URL(), "fail_rate", cfg.FailRate, "fail_status", cfg.FailStatus, "latency", cfg.Latency,
				"tls", tlsCfg != nil, "client_certs_required", sec.clientCA != ""}
			if cfg.AuthValue != "" {
				attrs = append(attrs, "auth_required_in", cmp.Or(cfg.AuthHeader, "Authorization"))
			}
			if cfg.Signing != nil {
				attrs = append(attrs, "signing_secrets", cfg.Signing.Len())
			}
			log.Info("mock email service listening", attrs...)
			if a, ok := l.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
				log.Warn("the mock email service is reachable from other machines; give --listen a loopback address unless that is meant", "addr", l.Addr().String())
			}
			select {
			case err := <-l.Failed():
				return fmt.Errorf("serve: %w", err)
			case <-ctx.Done():
			}
			shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = l.Close(shutdown)
			st := m.Stats()
			log.Info("mock email service stopped", "requests", st.Requests, "deliveries", st.Deliveries, "failures", st.Failures,
				"duplicate_requests", st.DuplicateRequests, "unauthorized", st.Unauthorized, "bad_signatures", st.BadSignatures)
			return err
		},
	}
}

// mockSecurity is what the mock wants of a sender beyond the body: files
// only, so that no secret shows in the process list.
type mockSecurity struct {
	authHeader, authFile, signingFile string
	tlsCert, tlsKey, clientCA         string
}

func (s *mockSecurity) register(fs *flag.FlagSet) {
	fs.StringVar(&s.authHeader, "auth-header", "", "header that must carry the credentials of --auth-file (default Authorization)")
	fs.StringVar(&s.authFile, "auth-file", "", `file holding the exact header value a send must carry, such as "Bearer <token>"; never logged`)
	fs.StringVar(&s.signingFile, "signing-secret-file", "", "file of Standard Webhooks secrets (one whsec_<base64> a line, # comments); sends must be signed by one")
	fs.StringVar(&s.tlsCert, "tls-cert", "", "PEM certificate (chain) to serve HTTPS with; needs --tls-key")
	fs.StringVar(&s.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&s.clientCA, "client-ca", "", "PEM bundle of CAs; senders must present a client certificate signed by one (needs --tls-cert)")
}

// apply puts the credentials into cfg and returns the TLS config to serve
// with, nil for plain HTTP.
func (s *mockSecurity) apply(cfg *mockmail.Config) (*tls.Config, error) {
	if s.authHeader != "" && s.authFile == "" {
		return nil, usageErrorf("auth-header: needs --auth-file")
	}
	cfg.AuthHeader = s.authHeader
	if s.authFile != "" {
		b, err := os.ReadFile(s.authFile)
		if err != nil {
			return nil, fmt.Errorf("auth-file: %w", err)
		}
		if cfg.AuthValue = strings.TrimSpace(string(b)); cfg.AuthValue == "" {
			return nil, fmt.Errorf("auth-file: %s holds no value, only whitespace", s.authFile)
		}
	}
	if s.signingFile != "" {
		b, err := os.ReadFile(s.signingFile)
		if err != nil {
			return nil, fmt.Errorf("signing-secret-file: %w", err)
		}
		if cfg.Signing, err = webhook.ParseSecrets(b); err != nil {
			return nil, fmt.Errorf("signing-secret-file: %s: %w", s.signingFile, err)
		}
	}
	if (s.tlsCert == "") != (s.tlsKey == "") {
		return nil, usageErrorf("tls-cert and tls-key: give both or neither")
	}
	if s.tlsCert == "" {
		if s.clientCA != "" {
			return nil, usageErrorf("client-ca: needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(s.tlsCert, s.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("tls-cert and tls-key: %w", err)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if s.clientCA != "" {
		b, err := os.ReadFile(s.clientCA)
		if err != nil {
			return nil, fmt.Errorf("client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("client-ca: %s holds no PEM certificate", s.clientCA)
		}
		tlsCfg.ClientCAs = pool
		tlsCfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tlsCfg, nil
}
