package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func mockmailCommand(stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("mockmail", stderr)
	var cfg mockmail.Config
	var logs logFlags
	listen := fs.String("listen", "127.0.0.1:9080", "address to listen on; one other machines can reach is logged as a warning")
	fs.Float64Var(&cfg.FailRate, "fail-rate", 0.5, "share of sends answered with --fail-status, 0 to 1 (the sample: a coin flip)")
	fs.IntVar(&cfg.FailStatus, "fail-status", http.StatusServiceUnavailable, "HTTP status of a failed send (the sample's mock: 406, which ordermail treats as permanent)")
	fs.DurationVar(&cfg.Latency, "latency", 0, "delay before every answer")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "random seed for the failures; 0 picks one")
	logs.register(fs, "info")
	return &ffcli.Command{
		Name:       "mockmail",
		ShortUsage: "ordermail mockmail [--listen ADDR] [--fail-rate P] [--fail-status CODE] [--latency DURATION]",
		ShortHelp:  "run the mock email service (POST /sendConfirmation, GET /stats)",
		FlagSet:    fs,
		Options:    envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			log, err := logs.logger(stderr)
			if err != nil {
				return err
			}
			m, err := mockmail.New(cfg)
			if err != nil {
				return err
			}
			l, err := m.Listen(*listen)
			if err != nil {
				return err
			}
			log.Info("mock email service listening", "addr", l.Addr().String(), "fail_rate", cfg.FailRate, "fail_status", cfg.FailStatus, "latency", cfg.Latency)
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
			log.Info("mock email service stopped", "requests", st.Requests, "deliveries", st.Deliveries, "failures", st.Failures, "duplicate_requests", st.DuplicateRequests)
			return err
		},
	}
}
