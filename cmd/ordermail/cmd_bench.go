package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ordermail/ordermail/internal/bench"
	"github.com/ordermail/ordermail/order"
	"github.com/peterbourgon/ff/v3/ffcli"
)

// benchCommand measures the real service. Unlike the other commands it
// reads no ORDERMAIL_ settings (ORDERMAIL_SIGNAL_WINDOW aside, which every
// command reads), and hands none to the processes it starts:
// a deployment's settings in the environment (its store above all) must not
// leak into a benchmark.
func benchCommand(stdout, stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("bench", stderr)
	var c bench.Config
	fs.IntVar(&c.Orders, "orders", 20000, "paid orders written in the run")
	finiteFloat64Var(fs, &c.FailRate, "fail-rate", 0, "share of sends the mock answers 503 (transient), 0 to below 1")
	fs.BoolVar(&c.FailOnce, "fail-once", false, "the mock fails only first sends, at --fail-rate; a retry is answered 200")
	fs.DurationVar(&c.MailLatency, "mail-latency", time.Millisecond, "the mock's delay before every answer")
	fs.IntVar(&c.HoldEvery, "hold-every", 0, "the mock answers nothing to the first request of every Nth order, until the service gives up (its --mail-timeout) and retries; not with --ceiling")
	fs.Uint64Var(&c.Seed, "seed", 0, "seed of the mock's failures and the generated orders; 0 picks one")
	fs.StringVar(&c.MailURL, "mail-url", "", "an email service already running, instead of the mock; the figures that need the mock's timings are then absent")
	var mailURLFile string
	fs.StringVar(&mailURLFile, "mail-url-file", "", "--mail-url read from this file (its first line), so that a key in the URL is on no command line")
	fs.IntVar(&c.Workers, "workers", 16, "the service's --workers, and the ceiling's senders")
	fs.IntVar(&c.History, "history", 0, "confirmed orders written before the service starts")
	fs.IntVar(&c.Pending, "pending", 0, "retry documents due in a day, with their paid orders, in the store before the service starts")
	fs.DurationVar(&c.Idle, "idle", 0, "after the run, measure the idle service this long: its CPU, `retries status` and a /metrics scrape; with --due, before the run too, the due retries waiting paused")
	fs.IntVar(&c.Due, "due", 0, "retry documents already due, with their paid orders, written before the service starts with retries paused; the run starts retries (`retries start`)")
	fs.IntVar(&c.Dead, "dead", 0, "dead letters, with their paid orders, written before the service starts; the run redrives them all (`deadletters redrive --all`, timed) before it writes its orders")
	finiteFloat64Var(fs, &c.Rate, "rate", 0, "open loop: write this many orders a second (for orders/rate seconds); 0: all at once")
	fs.BoolVar(&c.Ceiling, "ceiling", false, "measure the send-only ceiling before the run and again after it: the same orders POSTed by --workers senders, nothing stored (with --due, bodies generated alike for the due retries)")
	fs.BoolVar(&c.Minimal, "minimal", false, "first measure the minimal pipeline: the ceiling's senders, each delivered order's outcome committed in groups by the embedded store; no feed, no decisions")
	fs.BoolVar(&c.Scatter, "scatter", false, "order keys in no order, as random identifiers (UUIDs) give; default: numbered in the order they are written")
	fs.BoolVar(&c.Secure, "secure", false, "the mock wants a bearer token and Standard Webhooks signatures; the service and the ceiling send them")
	fs.DurationVar(&c.TimerInterval, "timer-interval", time.Second, "the service's --timer-interval")
	fs.DurationVar(&c.RetryQuantum, "retry-quantum", order.DefaultQuantum, "the service's --retry-quantum")
	fs.StringVar(&c.Backoff, "backoff", order.BackoffExponential, "the service's --backoff: exponential or fixed")
	fs.DurationVar(&c.BackoffMin, "backoff-min", time.Second, "the service's --backoff-min")
	fs.StringVar(&c.StoreDir, "store", "", "directory of the store file; default a new temporary directory, removed at the end")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temporary store directory")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Minute, "give up after this long")
	return &ffcli.Command{
		Name:       "bench",
		ShortUsage: "ordermail bench [--orders N] [--fail-rate F] [--mail-latency D] [--workers W] [--ceiling] [flags] [-- RUN-FLAGS...]",
		ShortHelp:  "measure the service: confirmed orders a second, delivery times, retry gaps, memory",
		LongHelp: "bench starts the mock email service and `ordermail run` as processes of their own on a new\n" +
			"embedded store, waits until the service has confirmed a probe order, writes paid orders, and\n" +
			"prints what it measured as one JSON line on standard output; progress goes to standard error.\n" +
			"Fields: orders, due, dead, history, pending (the run's sizes); confirmed, deadLetters,\n" +
			"retryDocsLeft (store); sendAttempts, deliveries,\n" +
			"failures, duplicateRequests, heldRequests (the mock's /stats); readySeconds (the service's\n" +
			"start to its probe order confirmed); writeSeconds (the run's first to last order write; with\n" +
			"--dead, to the redrive's end);\n" +
			"elapsedSeconds and ordersPerSecond (first write to last delivery, as the mock timed it: the\n" +
			"last outcome's commit and the answer's way back are not in it, where the ceiling's and the\n" +
			"minimal pipeline's clocks stop at their last answer and commit); afterWritesPerSecond (from the last write to\n" +
			"the last delivery: the service once the order system stopped writing); secondsTo (from the\n" +
			"first write until 50, 90 and 99% of the run's orders were delivered),\n" +
			"paidToSentMs (an order's payment to its delivery; with --due and --dead, a due retry's from\n" +
			"retries start and a dead letter's from the redrive's start, counted with them), retryGapMs\n" +
			"(the mock's /timings); firstPassSeconds (to the last order's first\n" +
			"request), afterFirstPassSeconds (from then to the last delivery) and, with --backoff fixed,\n" +
			"retryFloorSeconds (the least that could have been, each failure followed by one retry delay\n" +
			"and nothing else); peakRSSMB (the service's VmHWM); serviceCPUSeconds and\n" +
			"serviceCPUPerOrderUs (the service's CPU time over the run); sendMeanMs (a request to the\n" +
			"email service, from the service's histogram);\n" +
			"dueFirstSeconds, duePerSecond and dueDrainPerSecond (--due: from retries start to the first\n" +
			"due retry delivered, and the drain's rate from retries start and from that first one);\n" +
			"idleCPUPercent, statusMs and metricsMs (--idle: the service idle after the run, then\n" +
			"`retries status` and a /metrics scrape, timed); pausedIdleCPUPercent, pausedStatusMs and\n" +
			"pausedMetricsMs (--idle with --due: the same before the run, the due retries waiting paused);\n" +
			"redriveSeconds, redrivePeakRSSMB, deadFirstSeconds and deadPerSecond (--dead: the redrive\n" +
			"command's time and memory, and the redriven orders' first delivery and rate from its start);\n" +
			"ceilingPerSecond, ofCeiling, afterWritesOfCeiling and ceilingSendMeanMs (--ceiling: the mean\n" +
			"of ceilingBeforePerSecond and ceilingAfterPerSecond, measured before and after the service's\n" +
			"run, and a request of the senders alone, to set beside sendMeanMs; ceilingRequests, the\n" +
			"requests they made; ofCeiling and afterWritesOfCeiling absent with --rate or --fail-rate, where\n" +
			"the senders, resending at once and never waiting for an arrival, do other work than the\n" +
			"service; the senders stop at an answer the service would not send again, and carry none of\n" +
			"the credentials or TLS files given after --, refused with --mail-url); minimalPerSecond,\n" +
			"minimalOfCeiling, minimalCPUPerOrderUs and minimalSendMeanMs (--minimal);\n" +
			"orderWriteCPUPerOrderUs (the bench's CPU writing the run's orders: the order system's work,\n" +
			"on the same machine); settings.\n" +
			"Flags after -- are handed to `ordermail run`, except those bench sets itself (--workers,\n" +
			"--timer-interval, --retry-quantum, --backoff, --backoff-min, --store, --mail-url, --mail-conns\n" +
			"and the like),\n" +
			"which are refused: give them as bench's own. bench reads no ORDERMAIL_ variables and passes\n" +
			"none on: a deployment's settings, its store above all, stay out of a benchmark.\n" +
			"Exit status 1 when the run failed, or when it printed figures of a partial run (\"partial\":true):\n" +
			"an order not confirmed (dead-lettered: a service that refuses some sends, or a setting after\n" +
			"--) or a retry document left.",
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if mailURLFile != "" {
				if c.MailURL != "" {
					return usageErrorf("mail-url-file: give the URL once, with --mail-url or with --mail-url-file")
				}
				b, err := os.ReadFile(mailURLFile)
				if err != nil {
					return usageErrorf("mail-url-file: %v", err)
				}
				line, _, _ := strings.Cut(string(b), "\n")
				if c.MailURL = strings.TrimSpace(line); c.MailURL == "" {
					return usageErrorf("mail-url-file: %s holds no URL", mailURLFile)
				}
			}
			var mockOnly []string
			fs.Visit(func(f *flag.Flag) {
				if f.Name == "fail-rate" || f.Name == "fail-once" || f.Name == "mail-latency" || f.Name == "hold-every" {
					mockOnly = append(mockOnly, f.Name)
				}
			})
			if c.MailURL != "" && c.Secure {
				return usageErrorf("secure: the mock's credentials; give your service's with -- --mail-auth-file and --mail-signing-secret-file")
			}
			if c.MailURL != "" && len(mockOnly) > 0 {
				return usageErrorf("%s: a setting of the mock, which --mail-url replaces", strings.Join(mockOnly, ", "))
			}
			if c.MailURL != "" {
				c.FailRate, c.FailOnce, c.MailLatency = 0, false, 0
			}
			if c.HoldEvery > 0 && (c.Ceiling || c.Minimal) {
				return usageErrorf("hold-every: the senders of --ceiling and --minimal would wait on the held requests; run it without them")
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("bench: find the ordermail binary: %w", err)
			}
			c.Exe, c.ServiceArgs = exe, args
			c.CheckService = func(flags []string) (func(int) bool, error) { return checkServiceFlagsOf(flags, c.MailURL) }
			// The ceiling's and the minimal pipeline's senders run with the
			// service's collector setting, so that the service is measured
			// against them at their best, not at a handicap of Go's default.
			setServiceGC()
			res, err := bench.Run(ctx, c, stderr)
			if _, bad := errors.AsType[bench.ConfigError](err); bad {
				return badSetting(err) // a value the command does not take
			}
			if err != nil {
				return err
			}
			if err := json.NewEncoder(stdout).Encode(res); err != nil {
				return err
			}
			// Figures of a run that left orders unconfirmed are a partial
			// run's: said, and the exit status says it to a script.
			if res.Partial {
				return fmt.Errorf("bench: %d of the run's %d orders confirmed, %d dead-lettered, %d retry documents left: "+
					"the figures above are of a partial run", res.Confirmed, c.Orders+c.Due+c.Dead, res.DeadLetters, res.RetryDocsLeft)
			}
			return nil
		},
	}
}

// checkServiceFlagsOf checks flags as `ordermail run` does before it starts
// anything, its email service's URL mailURL, or a stand-in (the bench's
// mock, started later, goes in the environment), and says which answers
// the service, so set, sends again.
func checkServiceFlagsOf(flags []string, mailURL string) (resends func(status int) bool, err error) {
	var parseErr strings.Builder
	fs, cfg, _ := runFlags(&parseErr)
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%q is no flag", fs.Arg(0))
	}
	cfg.Mail.URL = cmp.Or(mailURL, "http://127.0.0.1:9")
	if err := checkRun(cfg); err != nil {
		return nil, err
	}
	return cfg.Mail.Resends, nil
}
