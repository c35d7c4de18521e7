package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ordermail/ordermail/internal/redact"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Config of one benchmark. The zero values of the durations are not
// defaults: the command fills every field.
type Config struct {
	// Exe is the ordermail binary that runs `mockmail` and `run`.
	Exe string

	Orders      int           // paid orders written in the run
	FailRate    float64       // the mock's share of 503 answers, 0 to <1
	FailOnce    bool          // the mock fails a key's first send only, at FailRate
	HoldEvery   int           // the mock answers nothing to the first request of every HoldEvery-th key
	MailLatency time.Duration // the mock's delay before every answer
	Seed        uint64        // the mock's failures and the generated orders
	// MailURL is an email service already running; empty: start the mock.
	MailURL string

	History int // confirmed orders written before the service starts, and not on its feed
	Pending int // retry documents due in a day, with their paid orders, written with the history
	// Due retry documents, with their paid orders, written before the
	// service starts while retries are paused; the run starts them as an
	// operator's `retries start` does, with its orders.
	Due int
	// Dead letters, with their paid orders, written before the service
	// starts; the run redrives them all as an operator does (`ordermail
	// deadletters redrive --all`, a process of its own), then writes its
	// orders.
	Dead int
	// Idle, when set, measures the service after the run for this long,
	// with nothing to do: its CPU, and how long `retries status` and a
	// /metrics scrape take.
	Idle    time.Duration
	Rate    float64 // orders a second (open loop); 0: all at once
	Ceiling bool    // measure the send-only ceiling first
	// Minimal measures the minimal pipeline first (see runMinimal): the
	// ceiling's senders and a group-committing store, no feed.
	Minimal bool
	// Secure makes the mock want a bearer token and Standard Webhooks
	// signatures, which the service and the ceiling then send.
	Secure bool
	// Scatter gives the orders keys in no order, as random identifiers
	// (UUIDs) do: the i-th written is anywhere in key order. Without it
	// they are numbered in the order they are written.
	Scatter bool

	// The service's settings.
	Workers       int
	TimerInterval time.Duration
	RetryQuantum  time.Duration
	Backoff       string
	BackoffMin    time.Duration
	ServiceArgs   []string // more flags of `ordermail run`
	// CheckService, when set, checks the service's flags (ServiceFlags
	// with ServiceArgs) as `ordermail run` will, once Validate has passed
	// (the service starts after the ceiling, the minimal pipeline and the
	// history's writes, minutes later with a million), and says which
	// answers the service sends again (its --retry-statuses,
	// --retry-all-failures), for the ceiling's senders to do the same.
	CheckService func(flags []string) (resends func(status int) bool, err error)

	// StoreDir holds the store file; empty: a temporary directory, removed
	// at the end unless Keep.
	StoreDir string
	Keep     bool
	Timeout  time.Duration // bound on the whole benchmark
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	switch {
	case c.Exe == "":
		return errors.New("bench: no ordermail binary to run")
	case c.Orders < 1:
		return fmt.Errorf("orders: %d is not positive", c.Orders)
	case !(c.FailRate >= 0 && c.FailRate < 1): // NaN too
		return fmt.Errorf("fail-rate: %v is not at least 0 and below 1 (at 1 nothing is ever delivered)", c.FailRate)
	case c.MailLatency < 0:
		return fmt.Errorf("mail-latency: %s is negative", c.MailLatency)
	case c.HoldEvery < 0:
		return fmt.Errorf("hold-every: %d is negative", c.HoldEvery)
	case c.Workers < 1 || c.Workers > 1024:
		return fmt.Errorf("workers: %d is not between 1 and 1024", c.Workers)
	case c.History < 0:
		return fmt.Errorf("history: %d is negative", c.History)
	case c.Pending < 0:
		return fmt.Errorf("pending: %d is negative", c.Pending)
	case c.Idle < 0:
		return fmt.Errorf("idle: %s is negative", c.Idle)
	case c.Due < 0:
		return fmt.Errorf("due: %d is negative", c.Due)
	case c.Dead < 0:
		return fmt.Errorf("dead: %d is negative", c.Dead)
	case c.Rate < 0 || math.IsInf(c.Rate, 0) || math.IsNaN(c.Rate):
		return fmt.Errorf("rate: %v is not a rate", c.Rate)
	case c.TimerInterval <= 0:
		return fmt.Errorf("timer-interval: %s is not positive", c.TimerInterval)
	case c.RetryQuantum <= 0:
		return fmt.Errorf("retry-quantum: %s is not positive", c.RetryQuantum)
	case c.BackoffMin <= 0:
		return fmt.Errorf("backoff-min: %s is not positive", c.BackoffMin)
	case c.Backoff != order.BackoffExponential && c.Backoff != order.BackoffFixed:
		return fmt.Errorf("backoff: %q is not %s or %s", c.Backoff, order.BackoffExponential, order.BackoffFixed)
	case c.Timeout <= 0:
		return fmt.Errorf("timeout: %s is not positive", c.Timeout)
	}
	for _, a := range c.ServiceArgs {
		name, ok := strings.CutPrefix(a, "-")
		if !ok {
			continue // a value
		}
		name, _, _ = strings.Cut(strings.TrimPrefix(name, "-"), "=")
		if why, set := benchSets[name]; set && (c.Secure || !credentialFlag[name]) {
			return fmt.Errorf("-- --%s: the bench sets it for the service (the last value would win, and the figures describe the bench's): %s", name, why)
		}
	}
	if c.MailURL != "" && (c.Ceiling || c.Minimal) {
		for _, a := range c.ServiceArgs {
			name, ok := strings.CutPrefix(a, "-")
			if !ok {
				continue
			}
			if name, _, _ = strings.Cut(strings.TrimPrefix(name, "-"), "="); senderLacks[name] {
				return fmt.Errorf("-- --%s: the senders of --ceiling and --minimal carry none of the service's credentials or TLS files: "+
					"the service would refuse them; run without --ceiling and --minimal against it", name)
			}
		}
	}
	if dir := c.StoreDir; dir != "" {
		// A store already there may be a service's: its orders would be
		// counted, its retry settings replaced, and its running service
		// would mail the benchmark's orders.
		switch _, err := os.Lstat(filepath.Join(dir, "ordermail.db")); {
		case err == nil:
			return fmt.Errorf("store: %s already holds a store (ordermail.db); a benchmark writes its own orders on a new one: give a new directory", dir)
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("store: %w", err) // not a directory, not one it may read
		}
	}
	return nil
}

// senderLacks are the service's flags the ceiling's and the minimal
// pipeline's senders do not follow (they sign and authorize as the bench's
// own mock wants, with --secure).
var senderLacks = map[string]bool{"mail-auth-file": true, "mail-auth-header": true, "mail-signing-secret-file": true,
	"mail-cert-file": true, "mail-key-file": true, "mail-ca-file": true}

// credentialFlag are the flags of benchSets the bench gives only with
// --secure: against another email service (--mail-url) they are the
// user's to give after --.
var credentialFlag = map[string]bool{"mail-auth-file": true, "mail-signing-secret-file": true}

// benchSets are the service's flags the bench gives it, and what to do
// instead of giving them after --.
var benchSets = map[string]string{
	"workers":                  "give it as bench's --workers",
	"timer-interval":           "give it as bench's --timer-interval",
	"retry-quantum":            "give it as bench's --retry-quantum",
	"backoff":                  "give it as bench's --backoff",
	"backoff-min":              "give it as bench's --backoff-min",
	"store":                    "give it as bench's --store",
	"mail-url":                 "give it as bench's --mail-url",
	"from-now":                 "the run's feed starts at the store's end",
	"metrics-listen":           "the bench reads the service's metrics on an address of its own",
	"mail-conns":               "the service keeps as many connections as bench's --workers, as the ceiling's senders do",
	"mail-auth-file":           "bench --secure gives the service its credentials",
	"mail-signing-secret-file": "bench --secure gives the service its credentials",
}

// Result is what one benchmark measured: the JSON line `ordermail bench`
// prints. Figures that need the mock's counts or timings are absent when
// the email service is not the bench's own mock.
type Result struct {
	Orders  int `json:"orders"`
	Due     int `json:"due"`
	Dead    int `json:"dead"`
	History int `json:"history"`
	Pending int `json:"pending"`
	// With --idle: the service with nothing to do, after the run.
	IdleCPUPercent *float64 `json:"idleCPUPercent,omitempty"` // of one core
	StatusMs       *float64 `json:"statusMs,omitempty"`       // `ordermail retries status --json`, the whole process
	MetricsMs      *float64 `json:"metricsMs,omitempty"`      // one GET /metrics
	// With --idle and --due: the same, before the run, while the due
	// retries wait with retries paused.
	PausedIdleCPUPercent *float64 `json:"pausedIdleCPUPercent,omitempty"`
	PausedStatusMs       *float64 `json:"pausedStatusMs,omitempty"`
	PausedMetricsMs      *float64 `json:"pausedMetricsMs,omitempty"`
	// From the store, the run's orders alone: counts at the end minus
	// counts before the run's first write.
	Confirmed     int `json:"confirmed"`
	DeadLetters   int `json:"deadLetters"`
	RetryDocsLeft int `json:"retryDocsLeft"`
	// Partial: not every order of the run (orders, due, dead) was
	// confirmed, or retry documents were left: the figures are of part
	// of the work (the command then exits 1).
	Partial bool `json:"partial,omitempty"`
	// From the email service's /stats, the run alone.
	SendAttempts      *int `json:"sendAttempts,omitempty"`
	Deliveries        *int `json:"deliveries,omitempty"`
	Failures          *int `json:"failures,omitempty"`
	DuplicateRequests *int `json:"duplicateRequests,omitempty"`
	HeldRequests      *int `json:"heldRequests,omitempty"` // with --hold-every: answered nothing
	// From the first write to the last delivery (the mock's clock, which is
	// this machine's), or to when the bench saw the last confirmation.
	ElapsedSeconds  float64  `json:"elapsedSeconds"`
	OrdersPerSecond float64  `json:"ordersPerSecond"`     // confirmed / elapsed
	ReadySeconds    float64  `json:"readySeconds"`        // service start to its probe order confirmed
	WriteSeconds    float64  `json:"writeSeconds"`        // first to last write of the run
	PeakRSSMB       *float64 `json:"peakRSSMB,omitempty"` // the service's VmHWM before it is stopped
	// The CPU time (user and system) the service used from the run's first
	// write to its last delivery, and that per confirmed order: steadier
	// than a rate on a machine whose speed varies from run to run.
	ServiceCPUSeconds    *float64 `json:"serviceCPUSeconds,omitempty"`
	ServiceCPUPerOrderUs *float64 `json:"serviceCPUPerOrderUs,omitempty"`
	// From the mock's per-key timings.
	SecondsTo  *Quantiles           `json:"secondsTo,omitempty"` // from the first write until that share was delivered
	RetryGapMs *mockmail.GapSummary `json:"retryGapMs,omitempty"`
	// An order's payment to its delivery; a due retry's from retries
	// start, a dead letter's from the redrive's start, counted with them.
	PaidToSentMs *Quantiles `json:"paidToSentMs,omitempty"`
	// When every order was delivered: from the first write to the last
	// order's first request (the first pass), and from then to the last
	// order's delivery. With --backoff fixed, retryFloorSeconds is the
	// least the second could have been with the failures the mock drew:
	// for each order, its first request plus a retry delay per failure it
	// met, had every retry gone out the moment it was due and been answered
	// at once; the latest of those, counted from the last first request.
	// Above a target, no engine with that delay meets it.
	FirstPassSeconds      *float64 `json:"firstPassSeconds,omitempty"`
	AfterFirstPassSeconds *float64 `json:"afterFirstPassSeconds,omitempty"`
	RetryFloorSeconds     *float64 `json:"retryFloorSeconds,omitempty"`
	// With --due: from the run's start of retries to the first due retry
	// delivered, and the due retries delivered a second until the last:
	// from the start of retries (the wait for the sweep's first tick
	// included), and from the first due retry delivered (the drain alone).
	DueFirstSeconds   *float64 `json:"dueFirstSeconds,omitempty"`
	DuePerSecond      *float64 `json:"duePerSecond,omitempty"`
	DueDrainPerSecond *float64 `json:"dueDrainPerSecond,omitempty"`
	// With --dead: how long `deadletters redrive --all` took and its
	// peak resident set, and from its start to the first redriven order
	// delivered, and those delivered a second from its start to the last.
	RedriveSeconds   *float64 `json:"redriveSeconds,omitempty"`
	RedrivePeakRSSMB *float64 `json:"redrivePeakRSSMB,omitempty"`
	DeadFirstSeconds *float64 `json:"deadFirstSeconds,omitempty"`
	DeadPerSecond    *float64 `json:"deadPerSecond,omitempty"`
	// The deliveries a second from the run's last write to its last
	// delivery: the service once the order system has stopped writing,
	// without the burst of writes that holds the store's write lock at the
	// start of a run that writes all its orders at once. Absent with --rate,
	// and when fewer than a tenth of the deliveries came after the last
	// write.
	AfterWritesPerSecond *float64 `json:"afterWritesPerSecond,omitempty"`
	// The send-only ceiling, with --ceiling: measured before the service's
	// run and again after it, the mean of the two, so that the machine's
	// drift during a run moves the ceiling as it moves the service. The two
	// apart show how far the machine drifted; the requests are both's.
	CeilingPerSecond       *float64 `json:"ceilingPerSecond,omitempty"`
	CeilingBeforePerSecond *float64 `json:"ceilingBeforePerSecond,omitempty"`
	CeilingAfterPerSecond  *float64 `json:"ceilingAfterPerSecond,omitempty"`
	CeilingRequests        *int64   `json:"ceilingRequests,omitempty"`
	OfCeiling              *float64 `json:"ofCeiling,omitempty"`            // ordersPerSecond / ceilingPerSecond
	AfterWritesOfCeiling   *float64 `json:"afterWritesOfCeiling,omitempty"` // afterWritesPerSecond / ceilingPerSecond
	// How long a request to the email service took on average: the
	// service's, from its ordermail_send_duration_seconds over the run, and
	// the ceiling's senders'. With as many senders, the gap between the two
	// is what the service's own work costs its sends (they wait for a core).
	SendMeanMs        *float64 `json:"sendMeanMs,omitempty"`
	CeilingSendMeanMs *float64 `json:"ceilingSendMeanMs,omitempty"`
	// The minimal pipeline, with --minimal: its rate, that over the
	// ceiling's (with --ceiling), the CPU it used an order, and its mean
	// request, to set beside the ceiling's and the service's.
	MinimalPerSecond     *float64 `json:"minimalPerSecond,omitempty"`
	MinimalOfCeiling     *float64 `json:"minimalOfCeiling,omitempty"`
	MinimalCPUPerOrderUs *float64 `json:"minimalCPUPerOrderUs,omitempty"`
	MinimalSendMeanMs    *float64 `json:"minimalSendMeanMs,omitempty"`
	// The CPU the bench used writing the run's orders, an order: the order
	// system's work, on the same machine as the service.
	OrderWriteCPUPerOrderUs *float64 `json:"orderWriteCPUPerOrderUs,omitempty"`

	Settings Settings `json:"settings"`
}

// Quantiles of a distribution; an absent one was not reached.
type Quantiles struct {
	P50 *float64 `json:"p50,omitempty"`
	P90 *float64 `json:"p90,omitempty"`
	P99 *float64 `json:"p99,omitempty"`
	Max *float64 `json:"max,omitempty"`
}

// Settings are the settings the run used.
type Settings struct {
	Orders          int      `json:"orders"`
	FailRate        *float64 `json:"failRate,omitempty"`      // the mock's
	FailOnce        bool     `json:"failOnce,omitempty"`      // the mock's: first sends only
	HoldEvery       int      `json:"holdEvery,omitempty"`     // the mock's: no answer to every Nth key's first request
	MailLatencyMs   *float64 `json:"mailLatencyMs,omitempty"` // the mock's
	Seed            uint64   `json:"seed"`
	MailURL         string   `json:"mailURL,omitempty"` // a service of the user's
	Workers         int      `json:"workers"`
	History         int      `json:"history"`
	Due             int      `json:"due"`
	Dead            int      `json:"dead,omitempty"`
	Rate            float64  `json:"rate"` // 0: closed loop
	Ceiling         bool     `json:"ceiling"`
	Minimal         bool     `json:"minimal,omitempty"`
	Secure          bool     `json:"secure"` // token and signatures on every request
	Scatter         bool     `json:"scatter,omitempty"`
	TimerIntervalMs float64  `json:"timerIntervalMs"`
	RetryQuantumMs  float64  `json:"retryQuantumMs"`
	Backoff         string   `json:"backoff"`
	BackoffMinMs    float64  `json:"backoffMinMs"`
	ServiceArgs     []string `json:"serviceArgs,omitempty"`
	CPUs            int      `json:"cpus"`
}

// Batch sizes of the writes: one transaction each.
const (
	historyBatch = 1000
	runBatch     = 500
)

// ConfigError is Run's refusal of its Config (Config.Validate): a value
// the command line gave wrong.
type ConfigError struct{ Err error }

func (e ConfigError) Error() string { return e.Err.Error() }
func (e ConfigError) Unwrap() error { return e.Err }

// Run runs one benchmark; progress and the processes' warnings go to
// progress. Whatever happens, the processes it started are stopped and
// waited for, and a temporary store is removed, before it returns.
func Run(ctx context.Context, cfg Config, progress io.Writer) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, ConfigError{err}
	}
	var resends func(int) bool
	if cfg.CheckService != nil {
		flags := ServiceFlags(cfg, "file:"+filepath.Join(os.TempDir(), "ordermail-bench-check.db"))
		var err error
		if resends, err = cfg.CheckService(append(flags, cfg.ServiceArgs...)); err != nil {
			return Result{}, ConfigError{fmt.Errorf("the flags after --, as the service would take them: %w", err)}
		}
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	// The processes' output goes there from their own goroutines. A key
	// in --mail-url (the one way to give a real service's without an auth
	// file) is masked in it, in the settings printed and in the error.
	out := &lockedWriter{w: progress}
	if raw := strings.TrimRight(cfg.MailURL, "/"); raw != "" && redact.MailURL(raw) != raw {
		masked := redact.MailURL(raw)
		pairs := []string{raw, masked}
		// net/http's errors quote the URL as url.URL.String writes it:
		// the scheme in lower case, escapes decoded where they may be.
		if u, err := url.Parse(raw); err == nil && u.String() != raw {
			pairs = append(pairs, u.String(), masked)
		}
		out.hide = strings.NewReplacer(pairs...)
	}
	b := &bench{cfg: cfg, out: out, runID: strconv.FormatInt(time.Now().UnixNano(), 36), resends: resends}
	b.keyPrefix = "bench-" + b.runID + "-"
	res, err := b.run(ctx)
	if cerr := b.cleanup(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil && ctx.Err() != nil && !errors.Is(err, context.Canceled) {
		err = fmt.Errorf("bench timed out after %s (--timeout): %w", cfg.Timeout, err)
	}
	if err != nil && out.hide != nil {
		err = hidden{out.hide.Replace(err.Error()), err}
	}
	return res, err
}

type bench struct {
	cfg       Config
	out       io.Writer
	runID     string
	keyPrefix string // of every order key the run writes

	dir, removeDir string
	st             store.Store
	mock, service  *child
	mailURL        string
	ownMock        bool
	metricsAddr    string // the service's /metrics
	creds          *credentials
	resends        func(status int) bool // the service's answers to send again; nil: the default
}

// target is where the ceiling's and the minimal pipeline's senders post.
func (b *bench) target() target { return target{url: b.mailURL, creds: b.creds, resends: b.resends} }

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.out, "bench: "+format+"\n", args...)
}

func (b *bench) run(ctx context.Context) (Result, error) {
	cfg := b.cfg
	res := Result{Orders: cfg.Orders, Due: cfg.Due, Dead: cfg.Dead, History: cfg.History, Pending: cfg.Pending, Settings: b.settings()}

	if err := b.openStore(ctx); err != nil {
		return res, err
	}
	if cfg.Secure {
		var err error
		if b.creds, err = newCredentials(b.dir); err != nil {
			return res, err
		}
	}
	if err := b.startMock(ctx); err != nil {
		return res, err
	}
	orders := generate(cfg.Orders, cfg.Seed, false)
	// The ceiling sends as many as the service delivers: the due retries
	// and the dead letters redriven too (with the orders alone, a run of
	// 20 orders and 1,000 due retries was 103% of its ceiling).
	sends := orders
	if extra := cfg.Due + cfg.Dead; extra > 0 {
		sends = append(slices.Clip(orders), generate(extra, cfg.Seed+7, false)...)
	}
	var before ceilingResult
	if cfg.Ceiling {
		var err error
		if before, err = b.ceiling(ctx, sends, "before"); err != nil {
			return res, err
		}
	}
	if cfg.Minimal {
		// As many as the ceiling: the rate set beside it.
		b.logf("minimal pipeline: %d sends from %d workers, their outcomes committed in groups", len(sends), cfg.Workers)
		m, err := b.minimal(ctx, sends)
		if err != nil {
			return res, err
		}
		res.MinimalPerSecond = ptr(round(m.perSecond, 1))
		if m.cpuPerOrder > 0 {
			res.MinimalCPUPerOrderUs = ptr(round(m.cpuPerOrder, 1))
		}
		res.MinimalSendMeanMs = ptr(round(ms(m.meanSend), 3))
		b.logf("minimal pipeline: %.0f orders a second", m.perSecond)
	}
	if err := b.writeHistory(ctx); err != nil {
		return res, err
	}
	if err := b.writePending(ctx); err != nil {
		return res, err
	}
	if err := b.writeDue(ctx); err != nil {
		return res, err
	}
	if err := b.writeDead(ctx); err != nil {
		return res, err
	}
	// The timer is armed for the whole run, failed sends need it; with due
	// retries waiting, it is armed by the run's first write instead.
	if cfg.Due == 0 {
		if _, err := b.st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`)); err != nil && !errors.Is(err, store.ErrExists) {
			return res, fmt.Errorf("arm the timer: %w", err)
		}
	}
	ready, err := b.startService(ctx)
	if err != nil {
		return res, err
	}
	res.ReadySeconds = round(ready.Seconds(), 3)
	b.logf("service ready in %.2fs (its probe order was confirmed)", ready.Seconds())

	if b.ownMock {
		if err := mockmail.ResetRemote(ctx, b.mailURL, b.creds.authorization()); err != nil {
			return res, err
		}
	}
	baseCounts, err := b.st.Counts(ctx)
	if err != nil {
		return res, err
	}
	baseStats, statsErr := mockmail.FetchStats(ctx, b.mailURL)
	haveStats := statsErr == nil
	if !haveStats {
		b.logf("no /stats at %s (%v): counting from the store only", b.mailURL, statsErr)
	}

	if cfg.Idle > 0 && cfg.Due > 0 {
		// While the due retries wait paused: the status and the metrics'
		// refresh count a backlog the sweep does not touch.
		cpu, status, metrics, err := b.idleFigures(ctx)
		if err != nil {
			return res, fmt.Errorf("paused: %w", err)
		}
		res.PausedIdleCPUPercent, res.PausedStatusMs, res.PausedMetricsMs = &cpu, &status, &metrics
	}
	sendsBefore, sendsErr := b.sends(ctx)
	cpuBefore, cpuOK := cpuSeconds(b.service.pid())
	writeCPUBefore, writeCPUOK := selfCPUSeconds()
	w, err := b.writeRun(ctx, orders)
	if err != nil {
		return res, err
	}
	if after, ok := selfCPUSeconds(); ok && writeCPUOK {
		res.OrderWriteCPUPerOrderUs = ptr(round((after-writeCPUBefore)*1e6/float64(len(orders)), 1))
	}
	res.WriteSeconds = round(w.last.Sub(w.start).Seconds(), 3)
	if w.redrive > 0 {
		res.RedriveSeconds = ptr(round(w.redrive.Seconds(), 3))
		if w.redriveRSSMB > 0 {
			res.RedrivePeakRSSMB = ptr(round(w.redriveRSSMB, 1))
		}
	}
	endSeen, err := b.waitDone(ctx, w.start, baseCounts, baseStats, haveStats)
	if err != nil {
		return res, err
	}
	if cpuAfter, ok := cpuSeconds(b.service.pid()); ok && cpuOK {
		res.ServiceCPUSeconds = ptr(round(cpuAfter-cpuBefore, 2))
	}
	sendsAfter, err := b.sends(ctx)
	switch {
	case sendsErr != nil || err != nil:
		b.logf("no mean send time: %v", errors.Join(sendsErr, err))
	case sendsAfter.count > sendsBefore.count:
		res.SendMeanMs = ptr(round(1000*(sendsAfter.sum-sendsBefore.sum)/(sendsAfter.count-sendsBefore.count), 3))
	}

	if cfg.Idle > 0 {
		cpu, status, metrics, err := b.idleFigures(ctx)
		if err != nil {
			return res, fmt.Errorf("idle: %w", err)
		}
		res.IdleCPUPercent, res.StatusMs, res.MetricsMs = &cpu, &status, &metrics
	}
	if rss, ok := peakRSSMB(b.service.pid()); ok {
		res.PeakRSSMB = ptr(round(rss, 1))
	}
	if err := b.service.stop(time.Minute); err != nil {
		b.logf("warning: service: %v", err)
	}
	final, err := b.st.Counts(ctx)
	if err != nil {
		return res, err
	}
	res.Confirmed = final.OrdersConfirmed - baseCounts.OrdersConfirmed
	if res.ServiceCPUSeconds != nil && res.Confirmed > 0 {
		res.ServiceCPUPerOrderUs = ptr(round(*res.ServiceCPUSeconds*1e6/float64(res.Confirmed), 1))
	}
	res.DeadLetters = final.DeadLetters - (baseCounts.DeadLetters - cfg.Dead) // the redriven ones are the run's
	res.RetryDocsLeft = final.RetryDocs - (baseCounts.RetryDocs - cfg.Due)    // the due ones are the run's
	end := endSeen
	if haveStats {
		st, err := mockmail.FetchStats(ctx, b.mailURL)
		if err != nil {
			return res, err
		}
		res.SendAttempts = ptr(st.Requests - baseStats.Requests)
		res.Deliveries = ptr(st.Deliveries - baseStats.Deliveries)
		res.Failures = ptr(st.Failures - baseStats.Failures)
		res.DuplicateRequests = ptr(st.DuplicateRequests - baseStats.DuplicateRequests)
		if b.cfg.HoldEvery > 0 {
			res.HeldRequests = ptr(st.Held - baseStats.Held)
		}
	}
	if b.ownMock {
		tm, err := mockmail.FetchTimings(ctx, b.mailURL)
		if err != nil {
			return res, err
		}
		last := b.timings(&res, tm, w)
		if !last.IsZero() {
			end = last
		}
	}
	elapsed := end.Sub(w.start).Seconds()
	res.ElapsedSeconds = round(elapsed, 3)
	res.OrdersPerSecond = round(float64(res.Confirmed)/elapsed, 1)
	if cfg.Ceiling {
		// Again: the service stopped, as it had not started the first
		// time, and the mock's figures of the run already read, so that
		// these requests count in none of them.
		after, err := b.ceiling(ctx, sends, "after")
		if err != nil {
			return res, err
		}
		setCeiling(&res, before, after, cfg.Rate == 0 && (b.cfg.MailURL != "" || cfg.FailRate == 0))
	}
	res.Partial = res.Confirmed != cfg.Orders+cfg.Due+cfg.Dead || res.RetryDocsLeft != 0
	return res, nil
}

// ceiling measures the send-only ceiling under keys of its own; when says
// which of the two measurements it is ("before" or "after").
func (b *bench) ceiling(ctx context.Context, orders [][]byte, when string) (ceilingResult, error) {
	b.logf("ceiling (%s the service's run): %d sends from %d workers to %s", when, len(orders), b.cfg.Workers, b.mailURL)
	c, err := runCeiling(ctx, b.target(), orders, b.cfg.Workers, "ceiling-"+when+":"+b.runID+":")
	if err != nil {
		return c, err
	}
	b.logf("ceiling (%s): %.0f deliveries a second", when, c.perSecond)
	return c, nil
}

// setCeiling gives res the ceiling measured before and after the run and
// every rate's share of their mean; the service's only when comparable: not
// at an arrival rate (the service's rate is the rate asked for), nor with
// failures (the ceiling sends a failed one again at once, the service after
// its retry delay).
func setCeiling(res *Result, before, after ceilingResult, comparable bool) {
	perSecond := (before.perSecond + after.perSecond) / 2
	res.CeilingPerSecond = ptr(round(perSecond, 1))
	res.CeilingBeforePerSecond, res.CeilingAfterPerSecond = ptr(round(before.perSecond, 1)), ptr(round(after.perSecond, 1))
	res.CeilingRequests = ptr(before.requests + after.requests)
	res.CeilingSendMeanMs = ptr(round(ms((before.meanSend+after.meanSend)/2), 3))
	if !comparable {
		return
	}
	res.OfCeiling = ptr(round(res.OrdersPerSecond/perSecond, 3))
	if res.AfterWritesPerSecond != nil {
		res.AfterWritesOfCeiling = ptr(round(*res.AfterWritesPerSecond/perSecond, 3))
	}
	if res.MinimalPerSecond != nil {
		res.MinimalOfCeiling = ptr(round(*res.MinimalPerSecond/perSecond, 3))
	}
}

// afterWrites counts the deliveries (sorted, in Unix nanoseconds) after
// lastWrite, and their rate from lastWrite to the last of them.
func afterWrites(deliveredAt []int64, lastWrite int64) (n int, perSecond float64) {
	i, _ := slices.BinarySearch(deliveredAt, lastWrite+1)
	n = len(deliveredAt) - i
	if n == 0 {
		return 0, 0
	}
	return n, float64(n) / (float64(deliveredAt[len(deliveredAt)-1]-lastWrite) / 1e9)
}

// minimal runs the minimal pipeline on a store of its own, in a directory
// removed afterwards.
func (b *bench) minimal(ctx context.Context, orders [][]byte) (minimalResult, error) {
	dir, err := os.MkdirTemp(b.dir, "minimal-*")
	if err != nil {
		return minimalResult{}, fmt.Errorf("minimal pipeline: %w", err)
	}
	defer os.RemoveAll(dir)
	return runMinimal(ctx, dir, b.target(), orders, b.cfg.Workers, "minimal:"+b.runID+":")
}

func (b *bench) settings() Settings {
	c := b.cfg
	s := Settings{Orders: c.Orders, Seed: c.Seed, MailURL: redact.MailURL(c.MailURL), Workers: c.Workers, History: c.History,
		Due: c.Due, Dead: c.Dead, Rate: c.Rate, Ceiling: c.Ceiling, Minimal: c.Minimal, Secure: c.Secure, Scatter: c.Scatter, TimerIntervalMs: ms(c.TimerInterval),
		RetryQuantumMs: ms(c.RetryQuantum), Backoff: c.Backoff, BackoffMinMs: ms(c.BackoffMin),
		ServiceArgs: c.ServiceArgs, CPUs: runtime.NumCPU()}
	if c.MailURL == "" {
		s.FailRate, s.FailOnce, s.MailLatencyMs, s.HoldEvery = &c.FailRate, c.FailOnce, ptr(ms(c.MailLatency)), c.HoldEvery
	}
	return s
}

func (b *bench) openStore(ctx context.Context) error {
	if dir := b.cfg.StoreDir; dir != "" {
		b.dir = dir // holding no store yet (Validate)
	}
	if b.dir == "" {
		dir, err := os.MkdirTemp("", "ordermail-bench-*")
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		b.dir = dir
		if !b.cfg.Keep {
			b.removeDir = dir
		}
	}
	st, err := embedded.Open(ctx, embedded.Config{Path: b.dbPath()})
	if err != nil {
		return err
	}
	b.st = st
	b.logf("store %s", b.dbPath())
	return nil
}

func (b *bench) dbPath() string { return filepath.Join(b.dir, "ordermail.db") }

// startMock starts `ordermail mockmail` on a free loopback port, and learns
// the port from its first log line; with --mail-url it only checks the URL.
func (b *bench) startMock(ctx context.Context) error {
	if b.cfg.MailURL != "" {
		b.mailURL = strings.TrimRight(b.cfg.MailURL, "/")
		return nil
	}
	addr := make(chan string, 1)
	args := []string{"mockmail", "--listen", "127.0.0.1:0",
		"--log-format", "json", "--log-level", "info",
		"--fail-rate", strconv.FormatFloat(b.cfg.FailRate, 'g', -1, 64), "--fail-status", "503",
		"--fail-once=" + strconv.FormatBool(b.cfg.FailOnce), "--hold-every", strconv.Itoa(b.cfg.HoldEvery),
		"--latency", b.cfg.MailLatency.String(), "--seed", strconv.FormatUint(b.cfg.Seed, 10)}
	c, err := startChild("mockmail", b.cfg.Exe, append(args, b.creds.mockArgs()...), nil,
		func(line string) bool {
			if a, ok := listeningAddr(line); ok {
				select {
				case addr <- a:
				default:
				}
			}
			if strings.Contains(line, `"level":"INFO"`) {
				return false
			}
			fmt.Fprintln(b.out, "mockmail:", line)
			return true
		})
	if err != nil {
		return err
	}
	b.mock = c
	select {
	case a := <-addr:
		b.mailURL, b.ownMock = "http://"+a, true
		b.logf("mock email service at %s (fail rate %v, latency %s)", b.mailURL, b.cfg.FailRate, b.cfg.MailLatency)
		return nil
	case <-c.exited:
		return c.failure()
	case <-ctx.Done():
		return fmt.Errorf("mockmail did not say where it listens: %w", ctx.Err())
	}
}

// ServiceFlags are the flags of `ordermail run` the bench gives the
// service on store, before its metrics address, the --secure files and
// c.ServiceArgs; the email service's URL goes in the environment.
func ServiceFlags(c Config, store string) []string {
	return []string{"--store", store, "--from-now",
		"--workers", strconv.Itoa(c.Workers), "--mail-conns", strconv.Itoa(c.Workers), "--log-level", "warn",
		"--timer-interval", c.TimerInterval.String(), "--retry-quantum", c.RetryQuantum.String(),
		"--backoff", c.Backoff, "--backoff-min", c.BackoffMin.String()}
}

// startService starts `ordermail run` and waits until it has confirmed a
// probe order written after its start: the feed, the worker pool, the
// mailer and the store's outcome write all work. The service's feed starts
// at the store's end (--from-now): the history is old, as it is for a
// service that has been running, so it is in the store but not on the
// feed. The probe is written again every 250ms while it is not confirmed,
// in case the feed opened after the first write. It returns the time from
// the start to the confirmation.
func (b *bench) startService(ctx context.Context) (time.Duration, error) {
	c := b.cfg
	// As many connections as workers, as the ceiling's senders have (the
	// service's default, 64, halved the share of a run with 128 workers).
	// The URL goes in the environment, not on the command line, which any
	// user of the machine can read in a process listing: it may carry a
	// real service's key (--mail-url).
	env := []string{"ORDERMAIL_MAIL_URL=" + b.mailURL}
	args := append([]string{"run"}, ServiceFlags(c, "file:"+b.dbPath())...)
	addr, err := freeAddr()
	if err != nil {
		return 0, err
	}
	b.metricsAddr = addr
	args = append(args, "--metrics-listen", addr)
	args = append(append(args, b.creds.serviceArgs()...), c.ServiceArgs...)
	const maxForwarded = 100
	forwarded := 0
	start := time.Now()
	svc, err := startChild("service", c.Exe, args, env, func(line string) bool {
		forwarded++
		switch {
		case forwarded <= maxForwarded:
			fmt.Fprintln(b.out, "service:", line)
			return true
		case forwarded == maxForwarded+1:
			fmt.Fprintln(b.out, "service: (more output not shown)")
		}
		return false
	})
	if err != nil {
		return 0, err
	}
	b.service = svc
	b.logf("service started: %s %s", filepath.Base(c.Exe), strings.Join(args, " "))

	probe, value := b.keyPrefix+"probe", generate(1, c.Seed+3, false)[0]
	if err := b.apply(ctx, []store.Write{{Op: store.OpUpsert, Collection: order.Inbound, Key: probe, Value: value}}); err != nil {
		return 0, fmt.Errorf("write the probe order: %w", err)
	}
	written, shown := time.Now(), time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		d, err := b.st.Get(ctx, order.Inbound, probe)
		if err != nil {
			return 0, fmt.Errorf("read the probe order: %w", err)
		}
		if o, err := order.DecodeOrder(d.Value); err == nil && o.ConfirmationEmailSent {
			return time.Since(start), nil
		}
		if time.Since(written) >= 250*time.Millisecond {
			// A failed send of the probe left a retry document, which
			// owns its confirmation; with retries paused (--due) nothing
			// would ever send it; with --max-attempts 1 after --, a dead
			// letter: remove them, so that the order's new change is a
			// first send again.
			for _, coll := range []string{order.Retry, order.DeadLetter} {
				if r, err := b.st.Get(ctx, coll, probe); err == nil {
					err = b.st.Remove(ctx, coll, probe, r.CAS)
					if err != nil && !errors.Is(err, store.ErrCASMismatch) && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrUnavailable) {
						return 0, fmt.Errorf("remove the probe's %s document: %w", coll, err)
					}
				} else if !errors.Is(err, store.ErrNotFound) {
					return 0, fmt.Errorf("read the probe's %s document: %w", coll, err)
				}
			}
			// Only if the service has not touched it meanwhile.
			_, err := b.st.Replace(ctx, order.Inbound, probe, value, d.CAS)
			if err != nil && !errors.Is(err, store.ErrCASMismatch) && !errors.Is(err, store.ErrUnavailable) {
				return 0, fmt.Errorf("write the probe order: %w", err)
			}
			written = time.Now()
		}
		if time.Since(shown) >= 5*time.Second {
			shown = time.Now()
			b.logf("waiting for the service to confirm its probe order (%.0fs)", time.Since(start).Seconds())
		}
		select {
		case <-svc.exited:
			return 0, svc.failure()
		case <-ctx.Done():
			return 0, fmt.Errorf("the service did not confirm its probe order %s: %w", probe, ctx.Err())
		case <-tick.C:
		}
	}
}

// apply writes in one transaction, trying again while the service holds
// the file's write lock too long (store.ErrUnavailable): the writes are
// upserts, all made or none.
func (b *bench) apply(ctx context.Context, writes []store.Write) error {
	wait := 10 * time.Millisecond
	for try := 1; ; try++ {
		_, err := b.st.Apply(ctx, writes)
		if err == nil || !errors.Is(err, store.ErrUnavailable) || try == 5 {
			return err
		}
		b.logf("store busy (%v); trying again in %s", err, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait *= 4
	}
}

// writeHistory writes the confirmed orders of --history before the service
// starts.
func (b *bench) writeHistory(ctx context.Context) error {
	n := b.cfg.History
	if n == 0 {
		return nil
	}
	start := time.Now()
	b.logf("writing %d confirmed orders of history", n)
	const chunk = 10 * historyBatch // generated at a time, to bound memory
	for from := 0; from < n; from += chunk {
		docs := generate(min(chunk, n-from), b.cfg.Seed+4+uint64(from), true)
		writes := make([]store.Write, len(docs))
		for i, d := range docs {
			writes[i] = store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: b.key('h', from+i), Value: d}
		}
		for w := range slices.Chunk(writes, historyBatch) {
			if err := b.apply(ctx, w); err != nil {
				return fmt.Errorf("write history: %w", err)
			}
		}
		if done := from + len(docs); done%(100*historyBatch) == 0 && done < n {
			b.logf("history: %d of %d written", done, n)
		}
	}
	b.logf("history written in %.1fs", time.Since(start).Seconds())
	return nil
}

// writeDue writes the --due retry documents, already due, while retries
// are paused: the service starts from now and sees none of it until the
// run starts retries. They fell due over the last hour, in the order of
// their keys, as an hour's outage leaves the retries of orders numbered
// in turn.
func (b *bench) writeDue(ctx context.Context) error {
	now := time.Now()
	i := 0
	return b.writeWithOrders(ctx, "due retries", 'd', b.cfg.Due, b.cfg.Seed+5, func(k string) store.Write {
		at := now.Add(-time.Hour + time.Hour/time.Duration(b.cfg.Due)*time.Duration(i)).UnixMilli()
		i++
		r := order.RetryDoc{Type: order.TypeConfirmation, DocID: k, Attempt: 1, TS: at, NextAttemptAt: at,
			FirstAttemptAt: at, LastStatus: 503, LastError: "bench: due retry"}
		return store.Write{Op: store.OpUpsert, Collection: order.Retry, Key: k, Value: r.Encode()}
	})
}

// writePending writes the --pending retry documents, due in a day, before
// the service starts.
func (b *bench) writePending(ctx context.Context) error {
	later := time.Now().Add(24 * time.Hour).UnixMilli()
	return b.writeRetries(ctx, "pending", 'p', b.cfg.Pending, b.cfg.Seed+6, order.RetryDoc{TS: later - 86_400_000,
		NextAttemptAt: later, LastStatus: 503})
}

// writeDead writes the --dead dead letters, each with its paid order (as
// after a send refused for good), before the service starts.
func (b *bench) writeDead(ctx context.Context) error {
	at := time.Now().Add(-time.Minute).UnixMilli()
	return b.writeWithOrders(ctx, "dead letters", 'x', b.cfg.Dead, b.cfg.Seed+7, func(k string) store.Write {
		dl := order.DeadLetterDoc{Type: order.TypeConfirmation, DocID: k, Reason: order.ReasonPermanent, LastStatus: 422,
			LastError: "bench: refused", Attempts: 1, FirstAttemptAt: at, LastAttemptAt: at, DeadAt: at}
		return store.Write{Op: store.OpUpsert, Collection: order.DeadLetter, Key: k, Value: dl.Encode()}
	})
}

// redrive runs `ordermail deadletters redrive --all` on the store, as an
// operator does, and returns how long it took and its peak resident set
// (0 where unknown).
func (b *bench) redrive(ctx context.Context) (time.Duration, float64, error) {
	cmd := exec.CommandContext(ctx, b.cfg.Exe, "deadletters", "redrive", "--all", "--store", "file:"+b.dbPath())
	cmd.Env = cleanEnv(os.Environ())
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("deadletters redrive --all: %w: %s", err, out)
	}
	want := fmt.Sprintf("redrove %d dead letters", b.cfg.Dead)
	if b.cfg.Dead == 1 {
		want = "redrove 1 dead letter"
	}
	if got := strings.TrimSpace(string(out)); got != want {
		return 0, 0, fmt.Errorf("deadletters redrive --all said %q, not %q", got, want)
	}
	rss, _ := childPeakRSSMB(cmd.ProcessState)
	return took, rss, nil
}

// writeRetries writes n retry documents like doc, each with its paid
// order, keyed by kind.
func (b *bench) writeRetries(ctx context.Context, what string, kind byte, n int, seed uint64, doc order.RetryDoc) error {
	return b.writeWithOrders(ctx, what+" retries", kind, n, seed, func(k string) store.Write {
		r := doc
		r.Type, r.DocID, r.Attempt = order.TypeConfirmation, k, 1
		return store.Write{Op: store.OpUpsert, Collection: order.Retry, Key: k, Value: r.Encode()}
	})
}

// writeWithOrders writes n documents, each made by doc for its key (of
// kind) and written with the key's paid order in the same transaction, a
// chunk at a time to bound memory.
func (b *bench) writeWithOrders(ctx context.Context, what string, kind byte, n int, seed uint64, doc func(key string) store.Write) error {
	if n == 0 {
		return nil
	}
	start := time.Now()
	b.logf("writing %d %s", n, what)
	const chunk = 10 * historyBatch
	for from := 0; from < n; from += chunk {
		orders := generate(min(chunk, n-from), seed+uint64(from), false)
		writes := make([]store.Write, 0, 2*len(orders))
		for i, o := range orders {
			k := b.key(kind, from+i)
			writes = append(writes, doc(k), store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: k, Value: o})
		}
		for w := range slices.Chunk(writes, historyBatch) {
			if err := b.apply(ctx, w); err != nil {
				return fmt.Errorf("write %s: %w", what, err)
			}
		}
	}
	b.logf("%s written in %.1fs", what, time.Since(start).Seconds())
	return nil
}

// sent is what the service's send histogram holds: requests and their
// total time (seconds).
type sent struct{ count, sum float64 }

// sends reads the service's ordermail_send_duration_seconds from its
// /metrics, all results together.
func (b *bench) sends(ctx context.Context) (sent, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.metricsAddr+"/metrics", nil)
	if err != nil {
		return sent{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return sent{}, fmt.Errorf("service /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return sent{}, fmt.Errorf("service /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return sent{}, fmt.Errorf("service /metrics: %w", err)
	}
	var s sent
	for _, m := range families["ordermail_send_duration_seconds"].GetMetric() {
		s.count += float64(m.GetHistogram().GetSampleCount())
		s.sum += m.GetHistogram().GetSampleSum()
	}
	return s, nil
}

// idleSettle is how long the service is left alone after the run before
// its idle CPU is measured: the run's last outcomes, its checkpoint, and
// SQLite's checkpoint of the write-ahead log the bench's own writes filled.
const idleSettle = 5 * time.Second

// idleFigures measures the service with nothing to do: its CPU (percent
// of a core) over cfg.Idle after idleSettle, then the milliseconds of
// `retries status` and of one /metrics scrape.
func (b *bench) idleFigures(ctx context.Context) (cpu, status, metrics float64, err error) {
	pid := b.service.pid()
	select {
	case <-time.After(idleSettle):
	case <-ctx.Done():
		return 0, 0, 0, ctx.Err()
	}
	before, ok := cpuSeconds(pid)
	if !ok {
		return 0, 0, 0, fmt.Errorf("cannot read the service's CPU time")
	}
	start := time.Now()
	select {
	case <-time.After(b.cfg.Idle):
	case <-ctx.Done():
		return 0, 0, 0, ctx.Err()
	}
	after, _ := cpuSeconds(pid)
	cpu = round(100*(after-before)/time.Since(start).Seconds(), 2)

	t0 := time.Now()
	out, err := exec.CommandContext(ctx, b.cfg.Exe, "retries", "status", "--json", "--store", "file:"+b.dbPath()).CombinedOutput()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("retries status: %v: %s", err, out)
	}
	status = round(ms(time.Since(t0)), 1)

	t0 = time.Now()
	resp, err := http.Get("http://" + b.metricsAddr + "/metrics")
	if err != nil {
		return 0, 0, 0, fmt.Errorf("/metrics: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, 0, 0, fmt.Errorf("/metrics: %s %v", resp.Status, err)
	}
	return cpu, status, round(ms(time.Since(t0)), 1), nil
}

// key is the order key of the i-th (from 0) document of a kind: o an order
// of the run, d a due retry's order, h history. With Scatter a number drawn
// from a generator seeded by the seed, the kind and i comes before i, so
// that keys in write order are anywhere in key order.
func (b *bench) key(kind byte, i int) string {
	if b.cfg.Scatter {
		return fmt.Sprintf("%s%c%016x.%07d", b.keyPrefix, kind, rand.NewPCG(b.cfg.Seed^uint64(kind)<<56, uint64(i)).Uint64(), i+1)
	}
	return fmt.Sprintf("%s%c%07d", b.keyPrefix, kind, i+1)
}

// parseKey is key's inverse, for the idempotency keys the mock reports:
// "confirmation:" KEY, with "@" and the order's incarnation when the store
// tells one.
func (b *bench) parseKey(idemKey string) (kind byte, i int, ok bool) {
	rest, ok := strings.CutPrefix(idemKey, order.TypeConfirmation+":"+b.keyPrefix)
	if !ok {
		return 0, 0, false
	}
	rest, _, _ = strings.Cut(rest, "@")
	if len(rest) < 2 {
		return 0, 0, false
	}
	kind, num := rest[0], rest[1:]
	if b.cfg.Scatter {
		if _, num, ok = strings.Cut(num, "."); !ok {
			return 0, 0, false
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 {
		return 0, 0, false
	}
	return kind, n - 1, true
}

// written is when the run's documents were written.
type written struct {
	start, last time.Time
	// Per document, the commit's time (Unix ns): when it became paid or
	// due; for a dead letter, when the redrive began.
	orders, due, dead []int64
	redrive           time.Duration // --dead: `deadletters redrive --all`
	redriveRSSMB      float64
}

// writeRun writes the due retry documents with their orders, then the paid
// orders: all at once (closed loop), or --rate a second (open loop).
func (b *bench) writeRun(ctx context.Context, orders [][]byte) (*written, error) {
	c := b.cfg
	w := &written{orders: make([]int64, len(orders)), due: make([]int64, c.Due), dead: make([]int64, c.Dead)}
	apply := func(writes []store.Write) (int64, error) {
		if w.start.IsZero() {
			w.start = time.Now()
		}
		if err := b.apply(ctx, writes); err != nil {
			return 0, fmt.Errorf("write the run's orders: %w", err)
		}
		w.last = time.Now()
		return w.last.UnixNano(), nil
	}

	// `retries start`: the due retries written before the service started
	// become due for it now.
	if c.Due > 0 {
		at, err := apply([]store.Write{{Op: store.OpInsert, Collection: order.Retry, Key: order.ControlKey, Value: []byte(`{}`)}})
		if err != nil {
			return nil, err
		}
		for i := range w.due {
			w.due[i] = at
		}
		b.logf("retries started: %d due", c.Due)
	}
	// `deadletters redrive --all`: the dead letters come back due now, and
	// the service sends them while the command goes on.
	if c.Dead > 0 {
		begin := time.Now()
		if w.start.IsZero() {
			w.start = begin
		}
		for i := range w.dead {
			w.dead[i] = begin.UnixNano()
		}
		var err error
		if w.redrive, w.redriveRSSMB, err = b.redrive(ctx); err != nil {
			return nil, err
		}
		w.last = time.Now()
		b.logf("redrove %d dead letters in %.2fs", c.Dead, w.redrive.Seconds())
	}

	writeOrders := func(from, to int) error {
		for from < to {
			n := min(runBatch, to-from)
			writes := make([]store.Write, n)
			for i := range n {
				writes[i] = store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: b.key('o', from+i), Value: orders[from+i]}
			}
			at, err := apply(writes)
			if err != nil {
				return err
			}
			for i := from; i < from+n; i++ {
				w.orders[i] = at
			}
			from += n
		}
		return nil
	}
	if c.Rate == 0 {
		if err := writeOrders(0, len(orders)); err != nil {
			return nil, err
		}
		b.logf("wrote %d orders, the run's writes over in %.2fs", len(orders), w.last.Sub(w.start).Seconds())
		return w, nil
	}

	// Open loop: on every tick, as many orders as the rate allows by now,
	// so that a late tick catches up instead of lowering the rate.
	b.logf("writing %d orders at %v a second for %.1fs", len(orders), c.Rate, float64(len(orders))/c.Rate)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	begin, done := time.Now(), 0
	for done < len(orders) {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("writing orders at %v a second: %w", c.Rate, ctx.Err())
		case <-b.service.exited:
			return nil, b.service.failure()
		case <-tick.C:
		}
		due := min(len(orders), int(time.Since(begin).Seconds()*c.Rate))
		if err := writeOrders(done, due); err != nil {
			return nil, err
		}
		done = due
	}
	b.logf("wrote %d orders, the run's writes over in %.2fs", len(orders), w.last.Sub(w.start).Seconds())
	return w, nil
}

// pollEvery is how often waitDone asks the email service for its counts.
// The polls cost the machine the service is measured on, where the ceiling
// and the minimal pipeline pay nothing of the kind (measured on the idle
// machine, the bench's polls and the mock's answers: every 10ms 0.8-2.7%
// of its two cores, every 50ms 0.2-0.7%). Our own mock records when each
// delivery happened, and the run's end is the last of those, so its polls
// need not be frequent; an email service of --mail-url gives no such
// record, and there the poll that sees the last delivery is the end.
func (b *bench) pollEvery() time.Duration {
	if b.ownMock {
		return 50 * time.Millisecond
	}
	return 10 * time.Millisecond
}

// waitDone waits until the run's every order is delivered (the email
// service's /stats), or else every one is confirmed or dead-lettered and no
// retry is pending (the store's counts, read when there are no deliveries
// to watch or they stall),
// and then until the store has recorded those outcomes. It returns when it
// saw the end.
func (b *bench) waitDone(ctx context.Context, start time.Time, base store.Counts, baseStats mockmail.Stats, haveStats bool) (time.Time, error) {
	want := b.cfg.Orders + b.cfg.Due + b.cfg.Dead
	tick := time.NewTicker(b.pollEvery())
	defer tick.Stop()
	var (
		delivered, lastDelivered    = 0, -1
		progressAt, countsAt, shown = time.Now(), time.Time{}, time.Now()
		countsCost                  time.Duration
		c                           store.Counts
	)
	settled := func() bool {
		// The --dead dead letters were redriven: those at the end are the run's.
		return c.OrdersConfirmed-base.OrdersConfirmed+c.DeadLetters-(base.DeadLetters-b.cfg.Dead) >= want && c.RetryDocs <= base.RetryDocs
	}
	readCounts := func() error {
		t := time.Now()
		var err error
		c, err = b.st.Counts(ctx)
		countsAt, countsCost = time.Now(), time.Since(t)
		return err
	}
	waiting := func(err error) error {
		return fmt.Errorf("waiting for %d deliveries, %d seen: %w", want, delivered, err)
	}
	for {
		now := time.Now()
		if haveStats {
			st, err := mockmail.FetchStats(ctx, b.mailURL)
			if err != nil {
				return time.Time{}, waiting(err)
			}
			delivered = st.Deliveries - baseStats.Deliveries
			if delivered >= want {
				break
			}
			if delivered != lastDelivered {
				lastDelivered, progressAt = delivered, now
			}
		}
		// Without deliveries to watch, or when they stall (dead letters),
		// the store says whether the run is over.
		stalled := !haveStats || now.Sub(progressAt) > 2*time.Second
		if stalled && now.Sub(countsAt) > max(10*countsCost, 50*time.Millisecond, boolDur(haveStats, 2*time.Second)) {
			if err := readCounts(); err != nil {
				return time.Time{}, waiting(err)
			}
			if settled() {
				return time.Now(), nil
			}
		}
		if now.Sub(shown) >= 2*time.Second {
			shown = now
			if haveStats {
				b.logf("%d of %d delivered after %.1fs", delivered, want, now.Sub(start).Seconds())
			} else {
				b.logf("%d of %d confirmed after %.1fs", c.OrdersConfirmed-base.OrdersConfirmed, want, now.Sub(start).Seconds())
			}
		}
		select {
		case <-ctx.Done():
			return time.Time{}, waiting(ctx.Err())
		case <-b.service.exited:
			return time.Time{}, b.service.failure()
		case <-tick.C:
		}
	}
	end := time.Now()
	// Delivered; the service writes each outcome right after its send.
	for {
		if err := readCounts(); err != nil {
			return time.Time{}, err
		}
		if settled() {
			return end, nil
		}
		t := time.NewTimer(max(2*countsCost, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return time.Time{}, fmt.Errorf("all %d delivered, but the store shows %d confirmed, %d dead letters, %d retry documents: %w",
				want, c.OrdersConfirmed-base.OrdersConfirmed, c.DeadLetters-(base.DeadLetters-b.cfg.Dead), c.RetryDocs-base.RetryDocs, ctx.Err())
		case <-b.service.exited:
			t.Stop()
			return time.Time{}, b.service.failure()
		case <-t.C:
		}
	}
}

func boolDur(b bool, d time.Duration) time.Duration {
	if b {
		return d
	}
	return 0
}

// deliveries counts deliveries (Unix ns) and keeps the first and the last.
type deliveries struct {
	n           int
	first, last int64
}

func (d *deliveries) add(at int64) {
	if d.n == 0 || at < d.first {
		d.first = at
	}
	d.last = max(d.last, at)
	d.n++
}

// timings fills the figures of the mock's per-key timings and returns the
// time of the run's last delivery.
func (b *bench) timings(res *Result, tm mockmail.Timings, w *written) time.Time {
	want := b.cfg.Orders + b.cfg.Due + b.cfg.Dead
	deliveredAt := make([]int64, 0, want)
	paidToSent := make([]float64, 0, want)
	var due, dead deliveries
	// The run's orders: the last first request, the last delivery, and the
	// earliest the last could have been delivered, each failure followed by
	// a fixed retry delay and nothing else.
	var lastFirst, lastDelivered, floor int64
	for k, t := range tm.Keys {
		kind, i, ok := b.parseKey(k)
		if !ok || t[1] == 0 {
			continue
		}
		var paid int64
		switch {
		case kind == 'o' && i < len(w.orders):
			paid = w.orders[i]
			lastFirst, lastDelivered = max(lastFirst, t[0]), max(lastDelivered, t[1])
			floor = max(floor, t[0]+t[2]*int64(b.cfg.RetryQuantum))
		case kind == 'd' && i < len(w.due):
			paid = w.due[i]
			due.add(t[1])
		case kind == 'x' && i < len(w.dead):
			paid = w.dead[i]
			dead.add(t[1])
		default:
			continue
		}
		deliveredAt = append(deliveredAt, t[1])
		paidToSent = append(paidToSent, float64(t[1]-paid)/1e6)
	}
	if len(deliveredAt) == 0 {
		return time.Time{}
	}
	slices.Sort(deliveredAt)
	since := func(ns int64) *float64 { return ptr(round(float64(ns-w.start.UnixNano())/1e9, 3)) }
	at := func(share float64) *float64 {
		n := int(math.Ceil(share * float64(want)))
		if n > len(deliveredAt) {
			return nil
		}
		return since(deliveredAt[n-1])
	}
	res.SecondsTo = &Quantiles{P50: at(0.5), P90: at(0.9), P99: at(0.99)}
	if b.cfg.Rate == 0 {
		if n, perSecond := afterWrites(deliveredAt, w.last.UnixNano()); n*10 >= len(deliveredAt) {
			res.AfterWritesPerSecond = ptr(round(perSecond, 1))
		}
	}
	slices.Sort(paidToSent)
	q := func(share float64) *float64 {
		return ptr(round(paidToSent[int(math.Ceil(share*float64(len(paidToSent))))-1], 3))
	}
	res.PaidToSentMs = &Quantiles{P50: q(0.5), P90: q(0.9), P99: q(0.99), Max: ptr(round(paidToSent[len(paidToSent)-1], 3))}
	if due.n > 0 && due.last > w.due[0] {
		res.DueFirstSeconds = ptr(round(float64(due.first-w.due[0])/1e9, 3))
		res.DuePerSecond = ptr(round(float64(due.n)/(float64(due.last-w.due[0])/1e9), 1))
		if due.last > due.first {
			res.DueDrainPerSecond = ptr(round(float64(due.n-1)/(float64(due.last-due.first)/1e9), 1))
		}
	}
	if dead.n > 0 && dead.last > w.dead[0] {
		res.DeadFirstSeconds = ptr(round(float64(dead.first-w.dead[0])/1e9, 3))
		res.DeadPerSecond = ptr(round(float64(dead.n)/(float64(dead.last-w.dead[0])/1e9), 1))
	}
	if lastFirst > 0 && len(deliveredAt) == want {
		res.FirstPassSeconds = ptr(round(float64(lastFirst-w.start.UnixNano())/1e9, 3))
		res.AfterFirstPassSeconds = ptr(round(float64(lastDelivered-lastFirst)/1e9, 3))
		if b.cfg.Backoff == order.BackoffFixed {
			res.RetryFloorSeconds = ptr(round(float64(max(floor-lastFirst, 0))/1e9, 3))
		}
	}
	g := tm.RetryGaps
	g.MinMs, g.MeanMs, g.P99Ms, g.MaxMs = round(g.MinMs, 3), round(g.MeanMs, 3), round(g.P99Ms, 3), round(g.MaxMs, 3)
	res.RetryGapMs = &g
	return time.Unix(0, deliveredAt[len(deliveredAt)-1])
}

// cleanup stops the processes (the service first: it sends to the mock),
// closes the store and removes a temporary directory.
func (b *bench) cleanup() error {
	var errs []error
	if b.service != nil {
		if err := b.service.stop(time.Minute); err != nil {
			b.logf("warning: service: %v", err)
		}
	}
	if b.mock != nil {
		if err := b.mock.stop(30 * time.Second); err != nil {
			b.logf("warning: mockmail: %v", err)
		}
	}
	if b.st != nil {
		if err := b.st.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	switch {
	case b.removeDir != "":
		if err := os.RemoveAll(b.removeDir); err != nil {
			errs = append(errs, err)
		}
	case b.dir != "":
		b.logf("store kept: %s", b.dbPath())
	}
	return errors.Join(errs...)
}

func ptr[T any](v T) *T { return &v }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// lockedWriter is a writer for several goroutines.
type lockedWriter struct {
	mu   sync.Mutex
	w    io.Writer
	hide *strings.Replacer // nil: nothing to mask
}

// Write writes p, masked: every write is a whole line, so a URL is never
// split between two.
func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hide != nil {
		if _, err := l.hide.WriteString(l.w, string(p)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return l.w.Write(p)
}

// hidden is an error whose message has what must not be shown masked.
type hidden struct {
	msg string
	err error
}

func (h hidden) Error() string { return h.msg }
func (h hidden) Unwrap() error { return h.err }
