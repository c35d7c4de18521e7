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
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/console"
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/secretfile"
	"github.com/ordermail/ordermail/internal/tracing"
	"github.com/ordermail/ordermail/internal/webhook"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/schollz/progressbar/v3"
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
	keep       bool
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
	Traced            int     `json:"traced"`  // requests with a valid W3C traceparent
	ElapsedSeconds    float64 `json:"elapsedSeconds"`
	Store             string  `json:"store"`
	Interrupted       bool    `json:"interrupted,omitempty"` // Ctrl-C: the counts so far
}

func demoCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("demo", stderr)
	var d demoFlags
	cfg := app.Config{}
	var logs logFlags
	fs.IntVar(&d.orders, "orders", 100, "generated orders, on top of the sample fixtures")
	finiteFloat64Var(fs, &d.failRate, "fail-rate", 0.3, "share of sends the mock email service fails")
	fs.IntVar(&d.failStatus, "fail-status", http.StatusServiceUnavailable, "status of a failed send; 406, the sample mock's, is permanent: those orders are dead-lettered")
	fs.DurationVar(&d.latency, "latency", 0, "mock email service latency")
	fs.StringVar(&d.data, "data", "", "directory for the store file; default a temporary directory, removed afterwards")
	fs.StringVar(&cfg.Console.Listen, "admin-listen", "127.0.0.1:0", "address of the web console while the demo runs (its URL is printed); empty: none")
	fs.BoolVar(&d.json, "json", false, "print the summary as one JSON object")
	fs.BoolVar(&d.keep, "keep-running", false, "once every order is settled, keep the service, its console and the mock email service running until Ctrl-C or SIGTERM, then print the summary")
	fs.DurationVar(&d.timeout, "timeout", 5*time.Minute, "give up when not every order is confirmed by then")
	fs.Uint64Var(&d.seed, "seed", 0, "seed for generated orders and mock failures; 0 picks one")
	serviceFlags(fs, &cfg, serviceDefaults{interval: 200 * time.Millisecond, quantum: time.Second,
		backoffMin: 200 * time.Millisecond, backoffMax: 2 * time.Second, breakerCooldown: time.Second, ownMock: true})
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
				return usageErrorf("orders: %d is negative", d.orders)
			}
			if d.timeout <= 0 {
				return usageErrorf("timeout: %s is not positive", d.timeout)
			}
			// Progress only on a terminal. Log lines that would share the
			// terminal with the bar go through it: printed above the bar,
			// which is drawn again under them.
			var prog *demoProgress
			logOut := stderr
			if !d.json && isTerminal(stdout) {
				prog = &demoProgress{out: stdout}
				if isTerminal(stderr) {
					logOut = prog
				}
			}
			log, err := logs.logger(logOut)
			if err != nil {
				return badSetting(err)
			}
			// As run's: every request carries a traceparent, and spans are
			// exported when the OTEL_* environment asks.
			flush, err := tracing.Start(ctx, version(), log)
			if err != nil {
				return err
			}
			defer flush() // exports the spans still buffered
			return demo(ctx, d, cfg, log, stdout, stderr, prog)
		},
	}
}

func demo(ctx context.Context, d demoFlags, cfg app.Config, log *slog.Logger, stdout, stderr io.Writer, prog *demoProgress) error {
	if d.seed == 0 {
		d.seed = uint64(time.Now().UnixNano())
	}
	mcfg := mockmail.Config{FailRate: d.failRate, FailStatus: d.failStatus, Latency: d.latency, Seed: d.seed}
	if err := mcfg.Validate(); err != nil {
		return badSetting(err)
	}
	mock, err := mockmail.New(mcfg)
	if err != nil {
		return err
	}
	// Before anything is written to --data, as far as they can be checked
	// without the store and the mock (below, again, with them).
	early := cfg
	early.Store, early.Mail.URL = app.StoreConfig{URL: "file:ordermail.db"}, "http://127.0.0.1:1"
	if err := checkServiceFlags(&early); err != nil {
		return badSetting(err)
	}
	started := false  // the service, on the store file the demo made in --data
	var made []string // in --data, by name: taken back if the service does not start
	dir := d.data
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ordermail-demo-*"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data: %w", err)
	} else if f, err := os.OpenFile(filepath.Join(dir, "ordermail.db"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
		// The demo writes its orders, allow_retrys and its credentials
		// there: a store with an operator's settings and orders is no
		// place for them. Made at once, not looked for, so that of two
		// demos started on one new directory one is refused here (both
		// went on, writing each other's credentials: one stood by, the
		// other's sends all refused).
		if !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("data: %w", err)
		}
		if fi, err := os.Stat(filepath.Join(dir, "ordermail.db")); err == nil && fi.Size() == 0 {
			return usageErrorf("data: %s holds an empty ordermail.db: another demo is starting there, or one was killed before its store opened "+
				"(then remove the file, or give a new directory)", dir)
		}
		return usageErrorf("data: %s already holds a store (ordermail.db); the demo writes its own orders and retry settings: give a new directory", dir)
	} else if err := f.Close(); err != nil {
		return fmt.Errorf("data: %w", err)
	} else {
		// Until the service has started on it, a failure takes back what
		// the demo made there, so that it can be run again on the same
		// directory: what it wrote, and the store file last (another demo
		// waits on it, and must not lose its own credentials to this
		// cleanup).
		made = []string{"ordermail.db", "ordermail.db-wal", "ordermail.db-shm"}
		defer func() {
			if !started {
				for _, name := range slices.Backward(made) {
					os.Remove(filepath.Join(dir, name))
				}
			}
		}()
	}
	if err := demoCredentials(dir, mock, &cfg); err != nil {
		return err
	}
	made = append(made, "mail-token", "mail-signing-secrets")
	if cfg.Console.Listen != "" && cfg.Console.TokenFile == "" {
		// The console's actions need a token: a fresh one, in a private file.
		cfg.Console.TokenFile = filepath.Join(dir, "admin-token")
		if err := secretfile.Write(cfg.Console.TokenFile, strings.TrimPrefix(webhook.NewSecret(), "whsec_")); err != nil {
			return fmt.Errorf("demo console token: %w", err)
		}
		made = append(made, "admin-token")
	}
	l, err := mock.Listen("127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("mock email service: %w", err)
	}
	defer l.Close(context.Background())

	cfg.Store = app.StoreConfig{URL: "file:" + filepath.Join(dir, "ordermail.db")}
	cfg.Mail.URL = l.URL()
	if err := checkServiceFlags(&cfg); err != nil {
		return badSetting(err)
	}
	docs := append(fixtures.Orders(), fixtures.Generate(d.orders, d.seed)...)
	prog.begin(len(docs))
	defer prog.end()
	var st store.Store
	var cons *console.Console
	a := app.New(ctx, cfg, log, fx.Populate(&st, &cons))
	if err := a.Start(ctx); err != nil {
		return fmt.Errorf("start: %w", app.RootCause(err))
	}
	started = true
	if cons != nil && cons.Addr() != nil && !d.json {
		note := "(its admin token is in " + cfg.Console.TokenFile
		if d.data == "" {
			note += ", deleted with the demo's store"
		}
		out := io.Writer(stdout)
		if prog != nil {
			out = prog // above the bar drawn on stdout, not after it on its line
		}
		fmt.Fprintf(out, "console: http://%s %s)\n", cons.Addr(), note)
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
	var show func(store.Counts)
	if prog != nil {
		show = prog.show
	}
	runErr := loadAndPay(ctx, st, docs, show)
	if runErr == nil {
		_, _, _, runErr = ops.StartRetries(ctx, st, order.Control{})
	}
	if runErr == nil {
		runErr = waitConfirmed(ctx, st, start.Add(d.timeout), show)
	}
	elapsed := time.Since(start)
	interrupted := ctx.Err() != nil
	if d.keep && runErr == nil && !interrupted {
		// The console's URL, printed at the start, would be gone a second
		// later: the operator's whole experience, on the demo's store,
		// until they stop it.
		out := stdout
		if d.json {
			out = stderr // the JSON summary alone on standard output
		}
		fmt.Fprintf(out, "every order is settled; the service, its console and the mock email service (%s) run on until Ctrl-C. Try:\n"+
			" ordermail orders show order_140 --store %s\n", l.URL(), shellQuote(cfg.Store.URL))
		<-ctx.Done()
	}
	if runErr != nil && !interrupted && !errors.Is(runErr, errDemoTimeout) {
		return runErr
	}
	prog.end()
	if err := stop(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	// Read once the service has stopped, sends in flight settled, and with
	// a context of its own: ctx may be cancelled (Ctrl-C).
	final, err := finalCounts(cfg.Store)
	if err != nil {
		return err
	}

	ms := mock.Stats()
	sum := demoSummary{
		Orders: final.OrdersPaid, Confirmed: final.OrdersConfirmed, RetryDocsLeft: final.RetryDocs,
		DeadLetters:  final.DeadLetters,
		SendAttempts: ms.Requests, Deliveries: ms.Deliveries, Failures: ms.Failures, Refused: ms.Unauthorized,
		DuplicateRequests: ms.DuplicateRequests, Traced: ms.Traced, ElapsedSeconds: elapsed.Seconds(), Store: cfg.Store.URL,
		Interrupted: interrupted,
	}
	if d.json {
		if err := json.NewEncoder(stdout).Encode(sum); err != nil {
			return err
		}
	} else {
		if interrupted {
			fmt.Fprintf(stdout, "interrupted after %.1fs, with %d of the demo's %d orders paid, %d of them neither confirmed nor dead-lettered yet; the counts so far:\n",
				sum.ElapsedSeconds, sum.Orders, len(docs), sum.Orders-sum.Confirmed-sum.DeadLetters)
		}
		fmt.Fprintf(stdout, "orders paid:         %d\nconfirmed:           %d\ndead letters:        %d\nretry docs left:     %d\n"+
			"send attempts:       %d (%d failed at the mock's %.0f%% failure rate)\ndeliveries:          %d\n"+
			"duplicate requests:  %d\nrefused (401):       %d (%s)\n"+
			"elapsed:             %.1fs\n",
			sum.Orders, sum.Confirmed, sum.DeadLetters, sum.RetryDocsLeft, sum.SendAttempts, sum.Failures, d.failRate*100,
			sum.Deliveries, sum.DuplicateRequests, sum.Refused, refusedNote(sum.Refused), sum.ElapsedSeconds)
		if sum.DeadLetters > 0 {
			fmt.Fprintln(stdout, deadLettersHint(d.data))
		}
		if interrupted && d.data != "" && sum.Orders > sum.Confirmed+sum.DeadLetters {
			fmt.Fprintln(stdout, finishHint(d.data))
		}
	}
	if interrupted {
		return ctx.Err()
	}
	if errors.Is(runErr, errDemoTimeout) {
		// The summary's counts, read once the sends in flight settled, not
		// those of the moment it gave up.
		return fmt.Errorf("%w after %s: %d of %d orders confirmed and %d dead-lettered, as the summary says; the others were not yet",
			errDemoTimeout, d.timeout, sum.Confirmed, sum.Orders, sum.DeadLetters)
	}
	return runErr
}

// finishHint says how to finish an interrupted demo whose store was kept:
// its orders, retries and credentials are in data, and a demo again there
// is refused (it would write its orders over them).
func finishHint(data string) string {
	if abs, err := filepath.Abs(data); err == nil {
		data = abs
	}
	file := func(name string) string { return shellQuote(filepath.Join(data, name)) }
	return "(to finish it by hand, the demo's credentials in its directory, run in two terminals:\n" +
		" ordermail mockmail --fail-rate 0 --auth-file " + file("mail-token") + " --signing-secret-file " + file("mail-signing-secrets") + "\n" +
		" ordermail run --store " + shellQuote("file:"+filepath.Join(data, "ordermail.db")) + " --mail-url http://127.0.0.1:9080 --mail-auth-file " +
		file("mail-token") + " --mail-signing-secret-file " + file("mail-signing-secrets") + ")"
}

// refusedNote says what the mock's refusals mean: none, that every request
// was authenticated; some, that some were not.
func refusedNote(refused int) string {
	if refused == 0 {
		return "every request carried a bearer token and a Standard Webhooks signature the mock verified"
	}
	return "requests whose bearer token or signature the mock did not accept: the demo's credentials were changed while it ran?"
}

// deadLettersHint says how to look at the dead letters: a temporary store is
// gone by the time the operator reads this, so they need a run with --data.
func deadLettersHint(data string) string {
	if data == "" {
		return "(the demo's store was temporary and is deleted; to look at its dead letters, run the demo again with --data DIR, then:\n" +
			" ordermail deadletters list --store file:DIR/ordermail.db)"
	}
	if abs, err := filepath.Abs(data); err == nil {
		data = abs
	}
	return "(see them with: ordermail deadletters list --store " + shellQuote("file:"+filepath.Join(data, "ordermail.db")) + ")"
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	plain := func(r rune) bool {
		return r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("@%_+=:,./-", r))
	}
	if s != "" && strings.IndexFunc(s, func(r rune) bool { return !plain(r) }) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// finalCounts opens the store again, after the service that had it open has
// stopped, and reads its counts.
func finalCounts(sc app.StoreConfig) (store.Counts, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := app.OpenStore(ctx, sc, slog.New(slog.DiscardHandler))
	if err != nil {
		return store.Counts{}, fmt.Errorf("summary: %w", err)
	}
	defer st.Close()
	c, err := st.Counts(ctx)
	if err != nil {
		return store.Counts{}, fmt.Errorf("summary: %w", err)
	}
	return c, nil
}

// loadAndPay writes the orders one by one and marks each paid, as the
// sample's manual test does; show, if set, gets the counts every 100ms.
func loadAndPay(ctx context.Context, st store.Store, docs []fixtures.Doc, show func(store.Counts)) error {
	var shown time.Time
	for i, doc := range docs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := fixtures.Load(ctx, st, order.Inbound, docs[i:i+1], true); err != nil {
			return err
		}
		if _, err := markPaid(ctx, st, doc.Key); err != nil {
			return err
		}
		if show != nil && time.Since(shown) >= 100*time.Millisecond {
			c, err := st.Counts(ctx)
			if err != nil {
				return fmt.Errorf("counts: %w", err)
			}
			show(c)
			shown = time.Now()
		}
	}
	return nil
}

var errDemoTimeout = errors.New("demo timed out")

// demoCredentials gives the demo what a production email service asks for:
// a bearer token and Standard Webhooks signing secrets, fresh random ones in
// private files of dir, which the mock then requires.
func demoCredentials(dir string, mock *mockmail.Server, cfg *app.Config) error {
	token := "Bearer " + strings.TrimPrefix(webhook.NewSecret(), "whsec_")
	cfg.Mail.AuthFile = filepath.Join(dir, "mail-token")
	if err := secretfile.Write(cfg.Mail.AuthFile, token); err != nil {
		return fmt.Errorf("demo credentials: %w", err)
	}
	mock.SetAuthValue(token)
	secret := webhook.NewSecret()
	secrets, err := webhook.ParseSecrets([]byte(secret))
	if err != nil {
		return err
	}
	cfg.Mail.SigningSecretFile = filepath.Join(dir, "mail-signing-secrets")
	if err := secretfile.Write(cfg.Mail.SigningSecretFile, secret); err != nil {
		return fmt.Errorf("demo credentials: %w", err)
	}
	mock.SetSigning(secrets)
	return nil
}

// waitConfirmed polls the store until every paid order is confirmed or
// dead-lettered and no retry document is left, or until deadline. show, if
// set, gets the counts at each poll.
func waitConfirmed(ctx context.Context, st store.Store, deadline time.Time, show func(store.Counts)) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := st.Counts(ctx)
		if err != nil {
			return fmt.Errorf("counts: %w", err)
		}
		if show != nil {
			show(c)
		}
		if c.OrdersConfirmed+c.DeadLetters >= c.OrdersPaid && c.RetryDocs == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errDemoTimeout
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// demoProgress shows the demo's progress on a terminal, from the moment
// the orders are generated: one bar of the orders settled (confirmed or
// dead-lettered) out of those to pay, with the counts, the rate and the time
// left. Log lines written to it are printed above the bar, never through it.
// A nil *demoProgress shows nothing.
type demoProgress struct {
	out  io.Writer
	mu   sync.Mutex
	bar  *progressbar.ProgressBar // nil before begin and after end
	done bool                     // the bar is full and its line ended
}

// begin draws the bar at once, for total orders.
func (p *demoProgress) begin(total int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bar = progressbar.NewOptions(total,
		progressbar.OptionSetWriter(p.out),
		progressbar.OptionSetDescription(progressLine(store.Counts{}, total)),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("orders"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetRenderBlankState(true))
}

// show moves the bar to the store's counts.
func (p *demoProgress) show(c store.Counts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil || p.done {
		return
	}
	total := p.bar.GetMax()
	if c.OrdersPaid > total { // --data names a store with orders of its own
		total = c.OrdersPaid
		p.bar.ChangeMax(total)
	}
	p.bar.Describe(progressLine(c, total))
	p.bar.Set(min(c.OrdersConfirmed+c.DeadLetters, total))
	if p.bar.IsFinished() {
		fmt.Fprintln(p.out)
		p.done = true
	}
}

func progressLine(c store.Counts, total int) string {
	return fmt.Sprintf("paid %d/%d  confirmed %d  awaiting retry %d  dead %d ", c.OrdersPaid, total, c.OrdersConfirmed, c.RetryDocs, c.DeadLetters)
}

// end leaves the bar as it stands, with the log lines it held printed, and
// the cursor on the next line.
func (p *demoProgress) end() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil {
		return
	}
	if !p.done {
		p.bar.RenderBlank() // prints the log lines held, then the bar
		p.bar.Exit()
		fmt.Fprintln(p.out)
	}
	p.bar = nil
}

// Write prints a log line above the bar (the bar holds it until it draws
// itself again, within 100ms), or straight out when no bar is shown.
func (p *demoProgress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil || p.done {
		return p.out.Write(b)
	}
	if _, err := progressbar.Bprintf(p.bar, "%s", b); err != nil {
		return 0, err
	}
	return len(b), nil
}
