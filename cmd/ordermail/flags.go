package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"
	"golang.org/x/term"
)

// envOptions let every flag be set as ORDERMAIL_<FLAG>.
var envOptions = []ff.Option{ff.WithEnvVarPrefix("ORDERMAIL")}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// logFlags is how a command logs.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flag.FlagSet, level string) {
	fs.StringVar(&l.level, "log-level", level, "log level: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("log-level: %q is not debug, info, warn or error", l.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log-format: %q is not text or json", l.format)
}

// serviceDefaults are the defaults that differ between run and demo.
type serviceDefaults struct {
	interval, quantum, backoffMin, backoffMax, breakerCooldown time.Duration
	// ownMock: the demo's, which sends to a mock of its own, on loopback
	// in plain HTTP, with credentials of its own: it has no settings of
	// another email service.
	ownMock bool
}

// serviceFlags are the settings of the service itself, shared by run and
// demo. The quantum is one setting of both the timer and the policy.
func serviceFlags(fs *flag.FlagSet, cfg *app.Config, d serviceDefaults) {
	p := &cfg.Watcher.Policy
	if !d.ownMock {
		fs.StringVar(&cfg.Mail.URL, "mail-url", "", "email service base URL; confirmations are POSTed to <URL>/sendConfirmation")
		fs.StringVar(&cfg.Mail.CAFile, "mail-ca-file", "", "PEM bundle of the CAs trusted for the email service's certificate; replaces the system roots; read again when it changes")
		fs.StringVar(&cfg.Mail.CertFile, "mail-cert-file", "", "client certificate (PEM) for mutual TLS, with --mail-key-file; read again when it changes")
		fs.StringVar(&cfg.Mail.KeyFile, "mail-key-file", "", "private key (PEM) of --mail-cert-file")
		fs.StringVar(&cfg.Mail.AuthHeader, "mail-auth-header", "", "header that carries the credentials of --mail-auth-file (default Authorization)")
		fs.StringVar(&cfg.Mail.AuthFile, "mail-auth-file", "", "file whose content (trimmed) is the credentials header's value, e.g. \"Bearer KEY\"; read again when it changes; never logged")
		fs.StringVar(&cfg.Mail.SigningSecretFile, "mail-signing-secret-file", "", "Standard Webhooks secrets (whsec_..., one a line): every request is signed with each; read again when it changes")
	}
	fs.DurationVar(&cfg.Mail.Timeout, "mail-timeout", 10*time.Second, "bound on one send to the email service")
	fs.IntVar(&cfg.Watcher.Workers, "workers", 8, "events handled at once (1-1024)")
	fs.DurationVar(&cfg.Timer.Interval, "timer-interval", d.interval, "time between timer ticks; each flags the retries that are due")
	fs.DurationVar(&p.Quantum, "retry-quantum", d.quantum, "fixed backoff's delay, and when a retry document without nextAttemptAt (the sample's) is due")
	fs.StringVar(&p.Backoff, "backoff", order.BackoffExponential, "exponential or fixed (the sample's: every retry after --retry-quantum)")
	fs.DurationVar(&p.MinDelay, "backoff-min", d.backoffMin, "first delay of exponential backoff")
	fs.DurationVar(&p.MaxDelay, "backoff-max", d.backoffMax, "longest delay of exponential backoff")
	finiteFloat64Var(fs, &p.Jitter, "backoff-jitter", 0.2, "a delay d is drawn from [d(1-j), d(1+j)]; 0 to <1")
	fs.IntVar(&p.MaxAttempts, "max-attempts", 10, "attempts before a confirmation is dead-lettered; 0: unlimited (the sample)")
	fs.Var(statusList{&cfg.Mail.RetryStatuses}, "retry-statuses", "HTTP statuses that are retried; others are permanent (default 408,409,425,429 and every 5xx but 501,505)")
	fs.BoolVar(&cfg.Mail.RetryAllFailures, "retry-all-failures", false, "retry every failure, as the sample does")
	finiteFloat64Var(fs, &cfg.Mail.SendRate, "send-rate", 0, "most sends per second; 0: no limit")
	fs.IntVar(&cfg.Mail.SendBurst, "send-burst", 0, "sends allowed at once under --send-rate (default: one second's worth)")
	fs.IntVar(&cfg.Mail.BreakerFailures, "breaker-failures", 10, "consecutive transient failures that open the circuit breaker; 0: no breaker")
	fs.DurationVar(&cfg.Mail.BreakerCooldown, "breaker-cooldown", d.breakerCooldown, "how long an open breaker holds sends back before one probe")
	fs.DurationVar(&cfg.Watcher.ClaimTTL, "claim-ttl", time.Minute, "a retry claimed for a send is left alone this long by other instances and, should this one die, by the sweep")
	fs.IntVar(&cfg.Watcher.MaxOrderBytes, "max-order-bytes", 1<<20, "a paid order larger than this is dead-lettered (order_too_large), not posted")
	fs.IntVar(&cfg.Watcher.MaxEventFailures, "max-event-failures", 5, "a change that fails this often, over 30s at least, with an error other than an unavailable store, or a send whose outcome the store refuses so, is dead-lettered (poison_event)")
	fs.IntVar(&cfg.Mail.Conns, "mail-conns", 64, "most connections to the email service at once, kept alive for reuse")
	fs.IntVar(&cfg.Timer.SweepBatch, "sweep-batch", 1000, "due retries flagged per sweep transaction; a tick sweeps batch after batch for at most half an interval (1s at most)")
	fs.IntVar(&cfg.Watcher.AttemptHistory, "attempt-history", 20, "send attempts kept per order in its attempt record (orders show); 0: no record")
	fs.DurationVar(&cfg.Watcher.AttemptRetention, "attempt-retention", 7*24*time.Hour, "how long an attempt record stays after its last attempt (its order confirmed, dead-lettered, or neither)")
	fs.StringVar(&cfg.Watcher.Instance, "instance-name", "", "this instance's name in attempt records (default: the host name)")
}

// statusList is a comma-separated list of HTTP statuses.
type statusList struct{ codes *[]int }

func (l statusList) String() string {
	if l.codes == nil || *l.codes == nil {
		return ""
	}
	parts := make([]string, len(*l.codes))
	for i, c := range *l.codes {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}

func (l statusList) Set(v string) error {
	codes := []int{}
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		c, err := strconv.Atoi(part)
		if err != nil {
			return fmt.Errorf("%q is not an HTTP status", part)
		}
		codes = append(codes, c)
	}
	*l.codes = codes
	return nil
}

// hostList is a comma-separated list of host names.
type hostList struct{ names *[]string }

func (l hostList) String() string {
	if l.names == nil {
		return ""
	}
	return strings.Join(*l.names, ",")
}

// Set adds the names of v: the flag given twice names both lists' hosts.
func (l hostList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l.names = append(*l.names, part)
		}
	}
	return nil
}

// checkServiceFlags rejects zeros, which the packages would read as "use the
// default": on the command line a zero is a mistake, not a wish. It also
// hands the one quantum setting to the timer.
func checkServiceFlags(cfg *app.Config) error {
	cfg.Timer.Quantum = cfg.Watcher.Policy.Quantum
	switch {
	case cfg.Mail.Timeout <= 0:
		return fmt.Errorf("mail-timeout: %s is not positive", cfg.Mail.Timeout)
	case cfg.Watcher.Workers <= 0:
		return fmt.Errorf("workers: %d is not between 1 and 1024", cfg.Watcher.Workers)
	case cfg.Timer.Interval <= 0:
		return fmt.Errorf("timer-interval: %s is not positive", cfg.Timer.Interval)
	case cfg.Watcher.Policy.Quantum <= 0:
		return fmt.Errorf("retry-quantum: %s is not positive", cfg.Watcher.Policy.Quantum)
	case cfg.Watcher.ClaimTTL <= 0:
		return fmt.Errorf("claim-ttl: %s is not positive", cfg.Watcher.ClaimTTL)
	case cfg.Watcher.MaxOrderBytes <= 0:
		return fmt.Errorf("max-order-bytes: %d is not positive", cfg.Watcher.MaxOrderBytes)
	case cfg.Watcher.MaxEventFailures <= 0:
		return fmt.Errorf("max-event-failures: %d is not positive", cfg.Watcher.MaxEventFailures)
	case cfg.Mail.Conns <= 0:
		return fmt.Errorf("mail-conns: %d is not positive", cfg.Mail.Conns)
	case cfg.Timer.SweepBatch <= 0:
		return fmt.Errorf("sweep-batch: %d is not positive", cfg.Timer.SweepBatch)
	case cfg.Mail.BreakerCooldown <= 0:
		// Also how often a refused configuration is probed.
		return fmt.Errorf("breaker-cooldown: %s is not positive", cfg.Mail.BreakerCooldown)
	case cfg.Watcher.AttemptHistory < 0:
		return fmt.Errorf("attempt-history: %d is negative", cfg.Watcher.AttemptHistory)
	case cfg.Watcher.AttemptRetention <= 0:
		return fmt.Errorf("attempt-retention: %s is not positive", cfg.Watcher.AttemptRetention)
	}
	if err := checkListen("metrics-listen", cfg.Metrics.Listen); err != nil {
		return err
	}
	if err := checkListen("admin-listen", cfg.Console.Listen); err != nil {
		return err
	}
	if cfg.Watcher.AttemptHistory == 0 {
		cfg.Watcher.AttemptHistory = -1 // the watcher's "none"
	}
	return cfg.Validate()
}

// checkListen says what is wrong with addr, flag's address to listen on
// ("" is none): HOST:PORT or :PORT, the port a number from 0 to 65535 (0:
// any free one).
func checkListen(flag, addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s: %q is not HOST:PORT (127.0.0.1:9464, :9464)", flag, addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		return fmt.Errorf("%s: %q has no port from 0 to 65535", flag, addr)
	}
	return nil
}

// checkStoreFlags rejects zeros of the store's durations, as
// checkServiceFlags does the service's: the Couchbase package reads a
// zero as "the default", and a zero TTL on the command line reads as "no
// cache", which is a negative one.
func checkStoreFlags(sc app.StoreConfig) error {
	cb := sc.Couchbase
	if sc.Embedded.BusyTimeout < 0 {
		return fmt.Errorf("store-busy-timeout: %v is negative", sc.Embedded.BusyTimeout)
	}
	for _, d := range []struct {
		name   string
		v      time.Duration
		orElse string
	}{
		{"store-busy-timeout", sc.Embedded.BusyTimeout, ""},
		{"cb-timeout", cb.Timeout, ""},
		{"cb-counts-ttl", cb.CountsTTL, "; a negative one serves no cached counts"},
		{"cb-order-counts-ttl", cb.OrderCountsTTL, "; a negative one serves no cached counts"},
	} {
		if d.v == 0 {
			return fmt.Errorf("%s: 0s is no duration%s", d.name, d.orElse)
		}
	}
	return nil
}

// storeFlags name the store: its URL and, for Couchbase, how to reach it.
func storeFlags(fs *flag.FlagSet, c *app.StoreConfig) {
	cb := &c.Couchbase
	fs.StringVar(&c.URL, "store", app.DefaultStore, "store URL: file:PATH (embedded SQLite), couchbase://HOST or couchbases://HOST")
	fs.DurationVar(&c.Embedded.BusyTimeout, "store-busy-timeout", 5*time.Second, "embedded store: how long a write waits for another process's (a sqlite3 session, a backup) before it fails and is tried again")
	fs.StringVar(&cb.Username, "cb-username", "", "Couchbase user")
	fs.StringVar(&cb.Password, "cb-password", "", "Couchbase password (prefer ORDERMAIL_CB_PASSWORD or --cb-password-file); never logged")
	fs.StringVar(&cb.PasswordFile, "cb-password-file", "", "file holding the Couchbase password")
	fs.StringVar(&cb.CACertFile, "cb-ca-cert", "", "PEM file of the CA of the cluster's certificates, for couchbases://")
	fs.StringVar(&cb.CertFile, "cb-cert-file", "", "PEM client certificate that logs in instead of a password (with --cb-key-file), for couchbases://")
	fs.StringVar(&cb.KeyFile, "cb-key-file", "", "PEM key of --cb-cert-file")
	fs.StringVar(&cb.Bucket, "cb-bucket", "orders", "bucket of the collections inbound, retry, deadletter and attempts")
	fs.StringVar(&cb.Scope, "cb-scope", "_default", "scope of those collections")
	fs.StringVar(&cb.MetadataBucket, "cb-metadata-bucket", "metadata", "bucket of feed checkpoints and leases")
	fs.DurationVar(&cb.Timeout, "cb-timeout", 10*time.Second, "bound on each Couchbase operation; connecting may take three times as long")
	fs.DurationVar(&cb.CountsTTL, "cb-counts-ttl", 5*time.Second, "how long the backlog counts (a N1QL query) are served from the last answer, so a scrape never queries; negative: no cache")
	fs.StringVar(&cb.Durability, "cb-durability", "majority", "what the cluster holds before it acknowledges an outcome: majority (replicated to a majority of the bucket's copies: a failover keeps it), majorityAndPersistActive, persistToMajority, or none (a failover can lose it)")
	fs.DurationVar(&cb.OrderCountsTTL, "cb-order-counts-ttl", time.Minute, "how long the paid and confirmed order counts, which go over an index entry for every paid order, are served from the last count; negative: no cache")
}

// storeOption changes how storeCommand opens the store.
type storeOption func(*storeOptions)

type storeOptions struct {
	existing bool
	readOnly bool
	args     func(args []string) error
}

// existing is for a command that only reads, or that changes what must be
// there already (orders to pay, dead letters to redrive, allow_retrys to
// delete): it refuses an embedded store that does not exist rather than
// create an empty one, whose answers would look like a store with nothing
// in it (a typo in --store, or the default in the wrong directory).
func existing() storeOption { return func(o *storeOptions) { o.existing = true } }

// readsOnly is for a command that only reads: an embedded store it cannot
// write (a read-only mount, a copy not its user's) it reads as it is,
// rather than refuse it. It implies existing.
func readsOnly() storeOption {
	return func(o *storeOptions) { o.existing, o.readOnly = true, true }
}

// checkArgs checks the arguments (and flags) before the store is opened, so
// that a wrong command line touches no store.
func checkArgs(check func(args []string) error) storeOption {
	return func(o *storeOptions) { o.args = check }
}

// storeCommand is a command that opens the store and hands it to exec.
// Unless existing, a missing embedded store is created.
func storeCommand(name, usage, help string, stderr io.Writer, exec func(ctx context.Context, st store.Store, args []string) error, opts ...storeOption) *ffcli.Command {
	fs := newFlagSet(name, stderr)
	var sc app.StoreConfig
	var o storeOptions
	for _, opt := range opts {
		opt(&o)
	}
	storeFlags(fs, &sc)
	return &ffcli.Command{
		// No envOptions: settingsFromEnv reads the environment, settings
		// only.
		Name: name, ShortUsage: usage, ShortHelp: help, FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if err := settingsFromEnv(fs); err != nil {
				return err
			}
			if o.args != nil {
				if err := o.args(args); err != nil {
					return err
				}
			}
			if err := sc.Validate(); err != nil {
				return badSetting(err)
			}
			if err := checkStoreFlags(sc); err != nil {
				return badSetting(err)
			}
			if o.existing {
				if err := storeExists(sc); err != nil {
					return err
				}
			}
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			st, err := app.OpenStore(ctx, sc, log)
			if o.readOnly && errors.Is(err, embedded.ErrReadOnly) {
				sc.Embedded.ReadOnly = true
				if st, err = app.OpenStore(ctx, sc, log); err == nil {
					path, _ := sc.EmbeddedPath()
					fmt.Fprintf(stderr, "note: %s cannot be written here: read as it is\n", path)
				}
			}
			if err != nil {
				return err
			}
			defer st.Close()
			return exec(ctx, st, args)
		},
	}
}

// settingsFromEnv sets, from the environment as envOptions does, the flags
// of fs not given on the command line that are settings: the store's and
// the service's, which a deployment sets for run (its --retry-quantum). A command's own choices (--yes, --all, --reason,
// --pay...) come from the command line only: one set in the environment
// and not given stops the command, or a stale export would purge, redrive
// or pay without being asked.
// It may run again (a command that checks its arguments first, as load
// does, runs it before them): what it set counts as given.
func settingsFromEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := envName(f.Name)
		v := os.Getenv(env)
		if err != nil || given[f.Name] || v == "" {
			return
		}
		if !settings()[f.Name] {
			err = usageErrorf("%s is set in the environment, but --%s is a choice of this command, read from the command line only: unset %s", env, f.Name, env)
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = usageErrorf("environment variable %s: not a valid --%s: %v", env, f.Name, e)
		}
	})
	return err
}

// settings are the names of the store's flags and the service's (run's
// and demo's): what a deployment sets.
var settings = sync.OnceValue(func() map[string]bool {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	storeFlags(fs, &app.StoreConfig{})
	serviceFlags(fs, &app.Config{}, serviceDefaults{})
	names := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { names[f.Name] = true })
	return names
})

// envName is the environment variable that sets flag name (envOptions).
func envName(name string) string {
	return "ORDERMAIL_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// storeExists fails when sc names an embedded store whose file is missing,
// or is no SQLite database: SQLite would make one of an empty file (a lock
// file beside the store, `ordermail.db.open`, named by a slip), and the
// command would act on it, said done, the store itself untouched. A
// directory, or a file it cannot read, is left to app.OpenStore, which
// says so. Couchbase and malformed URLs are left to app.OpenStore too.
func storeExists(sc app.StoreConfig) error {
	path, ok := sc.EmbeddedPath()
	if !ok || path == "" {
		return nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no store at %s (start the service or load orders first; --store names another)", path)
	}
	if err != nil {
		return nil
	}
	defer f.Close()
	head := make([]byte, len(sqliteHeader))
	n, _ := io.ReadFull(f, head)
	if string(head[:n]) == sqliteHeader {
		return nil
	}
	if fi, err := f.Stat(); err != nil || fi.IsDir() {
		return nil
	}
	why := "not a SQLite database"
	if n == 0 {
		why = "the file is empty"
	}
	return fmt.Errorf("%s is not a store: %s (the store is ordermail's database file, not a lock file beside it; --store names another)", path, why)
}

// sqliteHeader begins every SQLite database file.
const sqliteHeader = "SQLite format 3\x00"

// isTerminal says whether w is a terminal, for live progress.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// noArgs rejects stray arguments, which are usually a mistyped flag.
func noArgs(args []string) error {
	if len(args) > 0 {
		return usageErrorf("unexpected arguments: %s", strings.Join(args, " "))
	}
	return nil
}

// usageError is a command line that makes no sense: an argument missing or
// one too many. run prints it with the command's usage; the exit status is 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// badSetting makes err, a value a check of the command's refused (a
// number out of range, a missing required flag), a usage error: the
// command line or the environment was wrong, as when a value does not
// parse, and the command exits 2 either way.
func badSetting(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err.Error()}
}

// clearErrors gives fs's duration and number flags errors that say what
// they take: the flag package's own say "parse error" (--mail-timeout 10,
// ORDERMAIL_WORKERS=abc), and leave the user to guess.
func clearErrors(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		g, ok := f.Value.(flag.Getter)
		if !ok {
			return
		}
		var want string
		switch g.Get().(type) {
		case time.Duration:
			want = "a duration with its unit, like 10s, 2m or 1h30m"
		case int, int64:
			want = "a whole number"
		case uint, uint64:
			want = "a whole number, 0 or more"
		case float64:
			want = "a number"
		default:
			return
		}
		f.Value = &saysWhat{g, want}
	})
}

// saysWhat is a flag value whose parse error says what it takes.
type saysWhat struct {
	flag.Getter
	want string
}

func (v *saysWhat) String() string {
	if v == nil || v.Getter == nil { // the flag package's zero value, for its defaults
		return ""
	}
	return v.Getter.String()
}

func (v *saysWhat) Set(s string) error {
	err := v.Getter.Set(s)
	if err != nil && err.Error() == "parse error" {
		return errors.New("want " + v.want)
	}
	return err
}

// finiteFloat64Var defines a float64 flag that refuses NaN and the
// infinities, which every range check written as a comparison lets through.
func finiteFloat64Var(fs *flag.FlagSet, p *float64, name string, value float64, usage string) {
	*p = value
	fs.Var((*finiteFloat)(p), name, usage)
}

type finiteFloat float64

func (f *finiteFloat) String() string { return strconv.FormatFloat(float64(*f), 'g', -1, 64) }

func (f *finiteFloat) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return errors.New("not a number")
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return errors.New("not a finite number")
	}
	*f = finiteFloat(v)
	return nil
}
