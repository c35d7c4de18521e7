package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/console"
	"github.com/ordermail/ordermail/internal/redact"
	"github.com/ordermail/ordermail/internal/tracing"
	"github.com/ordermail/ordermail/metrics"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store/couchbase"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/peterbourgon/ff/v3/ffcli"
	"go.uber.org/fx"
)

func runCommand(stderr io.Writer) *ffcli.Command {
	fs, cfg, logs := runFlags(stderr)
	return runWith(fs, cfg, logs, stderr)
}

// runFlags is run's flag set and the settings it parses into.
func runFlags(stderr io.Writer) (*flag.FlagSet, *app.Config, *logFlags) {
	fs := newFlagSet("run", stderr)
	cfg := &app.Config{}
	logs := &logFlags{}
	storeFlags(fs, &cfg.Store)
	fs.Var(instanceFlag{&cfg.Store.Couchbase}, "instance", "i/n: a fixed split, this is instance i (from 0) of n on one Couchbase cluster, streaming the vBuckets v with v % n == i (default: the instances share the vBuckets by heartbeats)")
	fs.DurationVar(&cfg.Store.Couchbase.MemberTTL, "cb-member-ttl", 10*time.Second, "without --instance: an instance whose heartbeat is this old is taken for dead and its vBuckets move to the others")
	fs.DurationVar(&cfg.Store.Couchbase.StepAsideAfter, "cb-step-aside-after", time.Minute, "without --instance: an instance whose sends have all been held back this long (its breaker open), while another's go out, hands its vBuckets to the others and tries again later; negative: never")
	fs.StringVar(&cfg.Metrics.Listen, "metrics-listen", "", "address of a Prometheus GET /metrics endpoint, e.g. 127.0.0.1:9464; empty: none")
	fs.StringVar(&cfg.Console.Listen, "admin-listen", "", "address of the operator's web console, e.g. 127.0.0.1:9465; empty: none")
	fs.Var(hostList{&cfg.Metrics.AllowedHosts}, "allowed-hosts", "comma-separated host names that requests to the console and /metrics may name besides "+
		"127.0.0.1, [::1] and localhost (DNS rebinding); default: any on an address other machines reach, none more on loopback")
	fs.StringVar(&cfg.Console.TokenFile, "admin-token-file", "", "file holding the console's admin token (16 characters or more), which actions need; "+
		"or set ORDERMAIL_ADMIN_TOKEN; with neither the console is read-only. Never logged")
	fs.Func("admin-trusted-proxies", "comma-separated addresses or CIDR ranges of the proxies in front of the console, whose X-Forwarded-For names the client: "+
		"login attempts are then limited by client, not by proxy; default: none", func(v string) error {
		p, err := console.ParseTrustedProxies(v)
		cfg.Console.TrustedProxies = append(cfg.Console.TrustedProxies, p...)
		return err
	})
	fs.BoolVar(&cfg.Watcher.FromNow, "from-now", false, "with no saved checkpoint, start the feed at its current end instead of its beginning")
	serviceFlags(fs, cfg, serviceDefaults{interval: timer.DefaultInterval, quantum: order.DefaultQuantum,
		backoffMin: time.Second, backoffMax: 10 * time.Minute, breakerCooldown: 30 * time.Second})
	logs.register(fs, "info")
	return fs, cfg, logs
}

// secretFiles are the files of cfg that hold a secret, by their flags.
func secretFiles(cfg app.Config) map[string]string {
	cb := cfg.Store.Couchbase
	return map[string]string{
		"admin-token-file": cfg.Console.TokenFile, "mail-auth-file": cfg.Mail.AuthFile, "mail-key-file": cfg.Mail.KeyFile,
		"mail-signing-secret-file": cfg.Mail.SigningSecretFile, "cb-password-file": cb.PasswordFile, "cb-key-file": cb.KeyFile,
	}
}

// warnOpenSecrets warns of each secret file that other users may read
// (an admin token in a 0644 file was taken without a word). A warning, not
// a refusal: a Kubernetes secret volume's files are 0644 by default, read
// by nobody else in the pod.
func warnOpenSecrets(log *slog.Logger, files map[string]string) {
	for _, flag := range slices.Sorted(maps.Keys(files)) {
		path := files[flag]
		if path == "" {
			continue
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm()&0o077 == 0 {
			continue // unreadable: the file's reader says why
		}
		log.Warn("a secret's file is open to other users: make it private (chmod 600)", "flag", flag, "path", path,
			"mode", fmt.Sprintf("%#o", fi.Mode().Perm()))
	}
}

// checkRun checks run's settings as run does before it starts anything,
// the error one run returns.
func checkRun(cfg *app.Config) error {
	if err := checkStoreFlags(cfg.Store); err != nil {
		return badSetting(err)
	}
	if err := metrics.CheckAllowedHosts(cfg.Metrics.AllowedHosts); err != nil {
		return badSetting(err)
	}
	cfg.Console.AllowedHosts = cfg.Metrics.AllowedHosts
	switch cb := cfg.Store.Couchbase; { // run's own, as checkServiceFlags checks the others
	case cb.MemberTTL == 0:
		return usageErrorf("cb-member-ttl: 0s is no duration")
	case cb.StepAsideAfter == 0:
		return usageErrorf("cb-step-aside-after: 0s is no duration; a negative one never steps aside")
	}
	if err := checkServiceFlags(cfg); err != nil {
		return badSetting(err)
	}
	if cfg.Console.Listen != "" {
		return cfg.Console.CheckToken()
	}
	return nil
}

// cutShort says whether err, a start's failure after a stop was asked
// for, is the stop's doing (the start cancelled, the store's lock waited
// for until then) rather than a failure of its own (a port in use, a file
// unreadable), which a stop must not hide from a supervisor.
func cutShort(err error) bool {
	return canceled(err) || errors.Is(err, embedded.ErrBusy)
}

// runWith is the run command of fs, whose flags parse into parsed and logs.
func runWith(fs *flag.FlagSet, parsed *app.Config, logs *logFlags, stderr io.Writer) *ffcli.Command {
	return &ffcli.Command{
		Name:       "run",
		ShortUsage: "ordermail run --store file:PATH --mail-url URL [flags]",
		ShortHelp:  "run the service until SIGINT or SIGTERM",
		FlagSet:    fs,
		Options:    envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			cfg := *parsed
			log, err := logs.logger(stderr)
			if err != nil {
				return badSetting(err)
			}
			// The token itself comes from the environment only: a flag's
			// value is in every process listing.
			cfg.Console.Token = console.Secret(os.Getenv("ORDERMAIL_ADMIN_TOKEN"))
			if err := checkRun(&cfg); err != nil {
				return err
			}
			if cfg.Console.TokenFile != "" && cfg.Console.Listen == "" {
				log.Warn("admin-token-file is set, but admin-listen is not: the console is off, and the token unused")
			}
			warnOpenSecrets(log, secretFiles(cfg))
			setServiceGC()
			flush, err := tracing.Start(ctx, version(), log)
			if err != nil {
				return err
			}
			defer flush() // exports the spans still buffered
			var watch *app.StopWatch
			a := app.New(ctx, cfg, log, fx.Populate(&watch))
			if err := a.Err(); err != nil {
				if ctx.Err() != nil && cutShort(err) { // SIGTERM or Ctrl-C while the store was opening
					log.Info("stopped before the service started")
					return nil
				}
				return app.RootCause(err)
			}
			// Started whatever comes meanwhile, for a stop's time more: a
			// start cut short by a signal rolled back with the cancelled
			// context, which runs no stop hook (listeners, the store, a
			// Couchbase member's leave), and exited 1. A signal that came
			// during the start stops the service once it has started.
			startCtx, cancelStart := context.WithCancel(context.WithoutCancel(ctx))
			defer cancelStart()
			started, startDone := context.WithCancel(context.Background())
			stopWaiting := context.AfterFunc(ctx, func() {
				log.Info("stop asked for while starting: stopping once started", "giving_up_after", a.StopTimeout())
				select {
				case <-time.After(a.StopTimeout()):
					cancelStart()
				case <-started.Done():
				}
			})
			err = a.Start(startCtx)
			stopWaiting()
			startDone()
			if err != nil {
				if startCtx.Err() != nil { // given up on a stop's time after the signal
					// fx rolls back with the cancelled context: no stop hook runs.
					return fmt.Errorf("stop asked for while starting, and %s had not started a stop's time (%s) later: stopped without stopping the parts started",
						cmp.Or(watch.Starting(), "the start"), a.StopTimeout())
				}
				if ctx.Err() != nil && cutShort(err) {
					log.Info("stopped before the service started", "start", app.RootCause(err))
					return nil
				}
				return fmt.Errorf("start: %w", app.RootCause(err))
			}
			log.Info("ordermail running", "store", redact.URL(cfg.Store.URL), "mail_url", cfg.Mail.RedactedURL())
			var exit int
			select {
			case <-ctx.Done():
			case sig := <-a.Wait():
				exit = sig.ExitCode
			}
			log.Info("shutting down")
			stopCtx, cancel := context.WithTimeout(context.Background(), a.StopTimeout())
			defer cancel()
			stopErr := a.Stop(stopCtx)
			if part := watch.Stopping(); stopErr != nil && part != "" {
				stopErr = fmt.Errorf("%w while stopping %s (a stop has %s: --mail-timeout × 5/4 + 5s)", stopErr, part, a.StopTimeout())
			}
			var why error
			switch exit {
			case app.ExitStoreLost:
				why = fmt.Errorf("stopped: the store %s or its lock file was deleted or replaced while running", redact.URL(cfg.Store.URL))
			case app.ExitFeedFailed:
				why = errors.New("stopped: the change feed failed for good (see the log); fix the cause and start again")
			default:
				if stopErr != nil {
					return fmt.Errorf("stop: %w", stopErr)
				}
				return nil
			}
			if stopErr != nil { // a store gone fails the stop too: the reason comes first
				why = fmt.Errorf("%w; and stopping: %w", why, stopErr)
			}
			return exitError{code: exit, err: why}
		},
	}
}

// instanceFlag reads i/n into the Couchbase settings.
type instanceFlag struct{ cb *couchbase.Config }

func (f instanceFlag) String() string {
	if f.cb == nil || f.cb.Instances == 0 {
		return ""
	}
	return fmt.Sprintf("%d/%d", f.cb.Instance, f.cb.Instances)
}

func (f instanceFlag) Set(v string) error {
	var i, n int
	if _, err := fmt.Sscanf(v, "%d/%d", &i, &n); err != nil || n < 1 || i < 0 || i >= n {
		return fmt.Errorf("%q is not i/n with 0 <= i < n", v)
	}
	f.cb.Instance, f.cb.Instances = i, n
	return nil
}

// serviceGCPercent is the service's GOGC. Its live heap is small (tens of
// MB) and allocation steady: collecting at 5x it instead of 2x costs some
// memory and saves about a fifth of the CPU per order (ordermail bench).
const serviceGCPercent = 400

// setServiceGC sets serviceGCPercent unless GOGC is set, which wins.
func setServiceGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serviceGCPercent)
	}
}
