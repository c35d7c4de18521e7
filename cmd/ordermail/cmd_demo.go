package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/webhook"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/peterbourgon/ff/v3/ffcli"
	"go.uber.org/fx"
)

type demoFlags struct {
	orders     int
	failRate   float64
	failStatus int
	data       string
	json       bool
	timeout    time.Duration
	seed       uint64
	latency    time.Duration
}

// demoSummary is what the demo measured, from the store and the mock.
type demoSummary struct {
	Orders            int     `json:"orders"`
	Confirmed         int     `json:"confirmed"`
	RetryDocsLeft     int     `json:"retryDocsLeft"`
	SendAttempts      int     `json:"sendAttempts"`
	Deliveries        int     `json:"deliveries"`
	Failures          int     `json:"failures"`
	DeadLetters       int     `json:"deadLetters"`
	DuplicateRequests int     `json:"duplicateRequests"`
	Refused           int     `json:"refused"` // answered 401: a missing or forged token or signature
	ElapsedSeconds    float64 `json:"elapsedSeconds"`
	Store             string  `json:"store"`
}

func demoCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("demo", stderr)
	var d demoFlags
	cfg := app.Config{}
	var logs logFlags
	fs.IntVar(&d.orders, "orders", 100, "generated orders, on top of the sample fixtures")
	fs.Float64Var(&d.failRate, "fail-rate", 0.3, "share of sends the mock email service fails")
	fs.IntVar(&d.failStatus, "fail-status", http.StatusServiceUnavailable, "status of a failed send; 406, the sample mock's, is permanent: those orders are dead-lettered")
	fs.DurationVar(&d.latency, "latency", 0, "mock email service latency")
	fs.StringVar(&d.data, "data", "", "directory for the store file; default a temporary directory, removed afterwards")
	fs.BoolVar(&d.json, "json", false, "print the summary as one JSON object")
	fs.DurationVar(&d.timeout, "timeout", 5*time.Minute, "give up when not every order is confirmed by then")
	fs.Uint64Var(&d.seed, "seed", 0, "seed for generated orders and mock failures; 0 picks one")
	serviceFlags(fs, &cfg, serviceDefaults{interval: 200 * time.Millisecond, quantum: time.Second,
		backoffMin: 200 * time.Millisecond, backoffMax: 2 * time.Second, breakerCooldown: time.Second})
	logs.register(fs, "warn")
	return &ffcli.Command{
		Name:       "demo",
		ShortUsage: "ordermail demo [--orders N] [--fail-rate P] [--data DIR] [--json]",
		ShortHelp:  "run the whole mission on the embedded store with an in-process mock email service",
		FlagSet:    fs,
		Options:    envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if d.orders < 0 {
				return fmt.Errorf("orders: %d is negative", d.orders)
			}
			log, err := logs.logger(stderr)
			if err != nil {
				return err
			}
			return demo(ctx, d, cfg, log, stdout)
		},
	}
}

func demo(ctx context.Context, d demoFlags, cfg app.Config, log *slog.Logger, stdout io.Writer) error {
	if d.seed == 0 {
		d.seed = uint64(time.Now().UnixNano())
	}
	mock, err := mockmail.New(mockmail.Config{FailRate: d.failRate, FailStatus: d.failStatus, Latency: d.latency, Seed: d.seed})
	if err != nil {
		return err
	}
	dir := d.data
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ordermail-demo-*"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	if err := demoCredentials(dir, mock, &cfg); err != nil {
		return err
	}
	l, err := mock.Listen("127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("mock email service: %w", err)
	}
	defer l.Close(context.Background())

	cfg.Store = app.StoreConfig{URL: "file:" + filepath.Join(dir, "ordermail.db")}
	cfg.Mail.URL = l.URL()
	if err := checkServiceFlags(&cfg); err != nil {
		return err
	}
	var st store.Store
	a := app.New(cfg, log, fx.Populate(&st))
	if err := a.Start(ctx); err != nil {
		return fmt.Errorf("start: %w", app.RootCause(err))
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stopCtx, cancel := context.WithTimeout(context.Background(), a.StopTimeout())
		defer cancel()
		return a.Stop(stopCtx)
	}
	defer stop()

	start := time.Now()
	docs := append(fixtures.Orders(), fixtures.Generate(d.orders, d.seed)...)
	if err := fixtures.Load(ctx, st, order.Inbound, docs); err != nil {
		return err
	}
	for _, doc := range docs {
		if err := markPaid(ctx, st, doc.Key); err != nil {
			return err
		}
	}
	if _, err := st.Upsert(ctx, order.Retry, order.ControlKey, []byte(`{}`)); err != nil {
		return err
	}

	progress := !d.json && isTerminal(stdout)
	finished, waitErr := waitConfirmed(ctx, st, start.Add(d.timeout), func(c store.Counts) {
		if progress {
			fmt.Fprintf(stdout, "\r%d/%d orders confirmed, %d waiting for a retry, %d dead letters, %s   ",
				c.OrdersConfirmed, c.OrdersPaid, c.RetryDocs, c.DeadLetters, time.Since(start).Round(100*time.Millisecond))
		}
	})
	elapsed := time.Since(start)
	if progress {
		fmt.Fprintln(stdout)
	}
	if err := stop(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}

	ms := mock.Stats()
	sum := demoSummary{
		Orders: finished.OrdersPaid, Confirmed: finished.OrdersConfirmed, RetryDocsLeft: finished.RetryDocs,
		DeadLetters:  finished.DeadLetters,
		SendAttempts: ms.Requests, Deliveries: ms.Deliveries, Failures: ms.Failures, Refused: ms.Unauthorized,
		DuplicateRequests: ms.DuplicateRequests, ElapsedSeconds: elapsed.Seconds(), Store: cfg.Store.URL,
	}
	if d.json {
		if err := json.NewEncoder(stdout).Encode(sum); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "orders paid:         %d\nconfirmed:           %d\ndead letters:        %d\nretry docs left:     %d\n"+
			"send attempts:       %d (%d failed at the mock's %.0f%% failure rate)\ndeliveries:          %d\n"+
			"duplicate requests:  %d\nrefused (401):       %d (every request carried a bearer token and a Standard Webhooks signature the mock verified)\n"+
			"elapsed:             %.1fs\n",
			sum.Orders, sum.Confirmed, sum.DeadLetters, sum.RetryDocsLeft, sum.SendAttempts, sum.Failures, d.failRate*100,
			sum.Deliveries, sum.DuplicateRequests, sum.Refused, sum.ElapsedSeconds)
		if sum.DeadLetters > 0 {
			fmt.Fprintln(stdout, "(see them with: ordermail deadletters list --store", cfg.Store.URL+"; --data keeps the store)")
		}
	}
	return waitErr
}

var errDemoTimeout = errors.New("demo timed out")

// demoCredentials gives the demo what a production email service asks for:
// a bearer token and Standard Webhooks signing secrets, fresh random ones in
// private files of dir, which the mock then requires. Files the operator
// named already are left alone (and the mock checks nothing for them).
func demoCredentials(dir string, mock *mockmail.Server, cfg *app.Config) error {
	if cfg.Mail.AuthFile == "" {
		token := "Bearer " + strings.TrimPrefix(webhook.NewSecret(), "whsec_")
		cfg.Mail.AuthFile = filepath.Join(dir, "mail-token")
		if err := os.WriteFile(cfg.Mail.AuthFile, []byte(token+"\n"), 0o600); err != nil {
			return fmt.Errorf("demo credentials: %w", err)
		}
		mock.SetAuthValue(token)
	}
	if cfg.Mail.SigningSecretFile == "" {
		secret := webhook.NewSecret()
		secrets, err := webhook.ParseSecrets([]byte(secret))
		if err != nil {
			return err
		}
		cfg.Mail.SigningSecretFile = filepath.Join(dir, "mail-signing-secrets")
		if err := os.WriteFile(cfg.Mail.SigningSecretFile, []byte(secret+"\n"), 0o600); err != nil {
			return fmt.Errorf("demo credentials: %w", err)
		}
		mock.SetSigning(secrets)
	}
	return nil
}

// waitConfirmed polls the store until every paid order is confirmed or
// dead-lettered and no retry document is left, or until deadline.
func waitConfirmed(ctx context.Context, st store.Store, deadline time.Time, show func(store.Counts)) (store.Counts, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := st.Counts(ctx)
		if err != nil {
			return c, err
		}
		show(c)
		if c.OrdersConfirmed+c.DeadLetters >= c.OrdersPaid && c.RetryDocs == 0 {
			return c, nil
		}
		if time.Now().After(deadline) {
			return c, fmt.Errorf("%w: %d of %d orders confirmed", errDemoTimeout, c.OrdersConfirmed, c.OrdersPaid)
		}
		select {
		case <-ctx.Done():
			return c, ctx.Err()
		case <-tick.C:
		}
	}
}
