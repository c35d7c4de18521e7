package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/ordermail/ordermail/console"
	"github.com/ordermail/ordermail/internal/redact"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/metrics"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"go.uber.org/dig"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

// Config is the whole service's configuration.
type Config struct {
	Store   StoreConfig
	Mail    mailer.Config
	Watcher watcher.Config
	Timer   timer.Config
	Metrics metrics.Config
	Console console.Config
}

// StoreConfig names the store.
type StoreConfig struct {
	// URL is file:PATH for the embedded store, or a Couchbase connection
	// string, couchbase://HOST or couchbases://HOST.
	URL string
	// Couchbase holds the credentials and layout for a Couchbase URL; its
	// ConnStr is the URL.
	Couchbase couchbase.Config
	// Embedded tunes the embedded store; its Path is the URL's.
	Embedded embedded.Config
	// StandbyPoll is how often a standby instance on an embedded store
	// checks whether it can take over. Default 500ms.
	StandbyPoll time.Duration
}

// DefaultStore is the embedded store in ./data.
const DefaultStore = "file:" + embedded.DefaultPath

// Validate checks every setting, naming the first one that is wrong.
func (c Config) Validate() error {
	if err := c.Store.Validate(); err != nil {
		return err
	}
	for _, v := range []interface{ Validate() error }{c.Mail, c.Watcher, c.Timer, c.Console} {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	// A send that waits for a connection spends its mail-timeout waiting,
	// and a timeout is an attempt: with more workers than connections, a
	// slow but healthy service would see attempts spent, and the breaker
	// opened, by sends never made.
	workers, conns := c.Watcher.Workers, c.Mail.Conns
	if workers == 0 {
		workers = 8
	}
	if conns == 0 {
		conns = 64
	}
	if workers > conns {
		return fmt.Errorf("mail-conns: %d is fewer than workers %d: a send waiting for a connection would spend its mail-timeout, and an attempt, before any request; give --mail-conns %d or more", conns, workers, workers)
	}
	// A claim that runs out during a send lets the sweep hand the retry to
	// a second send while the first is still waiting for its answer.
	claim, send := c.Watcher.ClaimTTL, c.Mail.Timeout
	if claim == 0 {
		claim = time.Minute
	}
	if send == 0 {
		send = 10 * time.Second
	}
	if claim <= send {
		return fmt.Errorf("claim-ttl: %s must be longer than mail-timeout %s: a claimed retry must outlast its send", claim, send)
	}
	// Under --send-rate a send first waits its turn: with every worker
	// waiting, the last waits workers/rate. That wait is part of the send:
	// on Couchbase for the claim, and everywhere for the health check's
	// bound on a worker, twice the claim (which restarted a service
	// sending at just its rate). The embedded store claims nothing.
	if rate := c.Mail.SendRate; rate > 0 {
		workers := c.Watcher.Workers
		if workers == 0 {
			workers = 8
		}
		bound, what := claim, "claim-ttl "+claim.String()
		if kind, _ := c.Store.kind(); kind == "file" {
			bound, what = 2*claim, "twice claim-ttl "+claim.String()+" (the health check's bound on a worker)"
		}
		turn := time.Duration(float64(workers) / rate * float64(time.Second))
		if turn+send >= bound {
			return fmt.Errorf("send-rate: %v a second gives %d workers turns up to %s apart, which with mail-timeout %s is not within %s: "+
				"raise --send-rate or --claim-ttl, or lower --workers", rate, workers, turn.Round(time.Millisecond), send, what)
		}
	}
	return nil
}

// watcherConfig is the watcher's settings with what the store implies: on
// the embedded store one process at a time reads the feed (its lock).
func (c Config) watcherConfig() watcher.Config {
	w := c.Watcher
	if kind, _ := c.Store.kind(); kind == "file" {
		w.SingleConsumer, w.AtomicOutcomes = true, true
	}
	return w
}

// RootCause is the error behind fx's account of a failed construction or
// start, which names every function on the way.
func RootCause(err error) error { return dig.RootCause(err) }

// New builds the service; extra options let the demo and tests reach into it
// (fx.Populate). Start it with Start and stop it with Stop. ctx bounds the
// building, which opens the store (a Couchbase cluster may take three
// --cb-timeouts to answer): a stop asked for meanwhile ends it.
func New(ctx context.Context, cfg Config, log *slog.Logger, extra ...fx.Option) *fx.App {
	fxlog := &fxevent.SlogLogger{Logger: log.With("component", "fx")}
	fxlog.UseLogLevel(slog.LevelDebug)
	fxlog.UseErrorLevel(slog.LevelDebug) // the caller reports a failed start, once
	watch := &StopWatch{Logger: fxlog}
	// The store the build opens: closed here if the build fails after it.
	var opened store.Store
	mailTimeout := cfg.Mail.Timeout
	if mailTimeout == 0 {
		mailTimeout = 10 * time.Second
	}
	stopTimeout := mailTimeout*5/4 + 5*time.Second
	opts := []fx.Option{
		fx.WithLogger(func() fxevent.Logger { return watch }),
		fx.Supply(watch),
		// In-flight sends are bounded by the mail timeout; give them that
		// much to finish before they are abandoned for replay. The watcher
		// gives them four fifths of the stop's time (watcher.Stop): the
		// whole mail timeout, and 4s more.
		fx.StopTimeout(stopTimeout),
		fx.Supply(cfg.Mail, cfg.watcherConfig(), cfg.Timer, cfg.Metrics, cfg.Console, log),
		fx.Provide(func(lc fx.Lifecycle) (store.Store, error) {
			st, err := openStoreWaiting(ctx, cfg.Store, log)
			if err != nil {
				return nil, err
			}
			opened = st
			lc.Append(fx.StopHook(st.Close))
			// What would expire its work on its own is refused here, at
			// run's start, not when a tool opens the store.
			if c, ok := st.(interface{ CheckRetention(context.Context) error }); ok {
				if err := c.CheckRetention(ctx); err != nil {
					return nil, err
				}
			}
			// In the background: a slow query service does not hold the
			// start up, and the stop ends the check.
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			lc.Append(fx.StartStopHook(func() { go func() { defer close(done); warnMissingIndexes(ctx, st, log) }() },
				func() { cancel(); <-done }))
			return st, nil
		}),
		fx.Provide(func(c *mailer.Client) watcher.Sender { return c }),
		mailer.Module, watcher.Module, timer.Module, metrics.Module, console.Module,
		fx.Invoke(func(lc fx.Lifecycle, st store.Store, w *watcher.Watcher, sd fx.Shutdowner) {
			if l, ok := st.(interface{ Lost() <-chan struct{} }); ok {
				stopWhen(lc, sd, log, ExitStoreLost, l.Lost(), func(struct{}) string {
					return "the store's file was deleted or replaced"
				})
			}
			stopWhen(lc, sd, log, ExitFeedFailed, w.Failed(), func(err error) string {
				return "the change feed stopped for good (" + err.Error() + ")"
			})
		}),
		fx.Invoke(func(lc fx.Lifecycle, w *watcher.Watcher, t *timer.Timer, sd fx.Shutdowner) {
			r := &runner{w: w, poll: cfg.Store.StandbyPoll, log: log.With("component", "runner"),
				lost: func() { sd.Shutdown(fx.ExitCode(ExitStoreLost)) },
				// The former holder's check, then its stop (the same
				// settings, as a standby of the same service has).
				takeoverWait: 2*lockCheck + stopTimeout}
			if r.poll == 0 {
				r.poll = 500 * time.Millisecond
			}
			if kind, path := cfg.Store.kind(); kind == "file" {
				r.lock = embedded.NewProcessLock(path)
			}
			lc.Append(fx.Hook{OnStart: r.start, OnStop: r.stop})
			// The timer after the watcher's start and before its stop: a
			// tick between took the instance for a standby (its feed not
			// running) and gave the sweep lease up saying its breaker was
			// open (with the console on: the demo's test under load, 4 of
			// 30 runs).
			lc.Append(fx.StartStopHook(t.Start, t.Stop))
		}),
		// Last: started once every other start hook has run, stopping
		// before any stop hook runs, for /readyz.
		fx.Invoke(func(lc fx.Lifecycle, m *metrics.Server) {
			lc.Append(fx.StartStopHook(m.Started, m.Stopping))
		}),
	}
	a := fx.New(append(opts, extra...)...)
	if a.Err() != nil && opened != nil {
		// Built no further than the store (the console's token file
		// unreadable, say): no stop hook will run to close it.
		opened.Close()
	}
	return a
}

// StopWatch is fx's logger, noting the part whose start or stop is under
// way, so that a start or a stop that runs out of time can say which part
// it waited on (fx says it at debug level only). New supplies it.
type StopWatch struct {
	fxevent.Logger
	mu                 sync.Mutex
	starting, stopping string
}

// LogEvent notes a hook's start and end, and logs e as fx does.
func (w *StopWatch) LogEvent(e fxevent.Event) {
	w.mu.Lock()
	switch e := e.(type) {
	case *fxevent.OnStartExecuting:
		w.starting = e.FunctionName
	case *fxevent.OnStartExecuted:
		w.starting = ""
	case *fxevent.OnStopExecuting:
		w.stopping = e.FunctionName
	case *fxevent.OnStopExecuted:
		w.stopping = ""
	}
	w.mu.Unlock()
	w.Logger.LogEvent(e)
}

// Starting names the part whose start is under way, or "" when none is.
func (w *StopWatch) Starting() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return partName(w.starting)
}

// Stopping names the part whose stop is under way ("store/embedded.(*Store).Close"),
// or "" when none is.
func (w *StopWatch) Stopping() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return partName(w.stopping)
}

// partName is a hook's function as fx names it, without the module's path.
func partName(fn string) string {
	fn = strings.TrimPrefix(fn, "github.com/ordermail/ordermail/")
	return strings.TrimSuffix(strings.TrimSuffix(fn, "()"), "-fm")
}

// ExitStoreLost is the exit code of a service whose store file was deleted
// or replaced under it.
const ExitStoreLost = 3

// ExitFeedFailed is the exit code of a service whose change feed stopped for
// good (a watched collection is gone, access was revoked).
const ExitFeedFailed = 4

// stopWhen stops the service with code when ch delivers: what it says
// cannot mend by itself, and an orchestrator should see a failed process
// rather than one that stalls.
func stopWhen[T any](lc fx.Lifecycle, sd fx.Shutdowner, log *slog.Logger, code int, ch <-chan T, why func(T) string) {
	done, stopped := make(chan struct{}), make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			go func() {
				defer close(stopped)
				select {
				case v := <-ch:
					log.Error(why(v)+"; stopping", "component", "app")
					sd.Shutdown(fx.ExitCode(code))
				case <-done:
				}
			}()
			return nil
		},
		OnStop: func(context.Context) error {
			close(done)
			<-stopped
			return nil
		},
	})
}

// Validate checks the URL and, for Couchbase, its settings.
func (c StoreConfig) Validate() error {
	switch kind, path := c.kind(); kind {
	case "file":
		if path == "" {
			return fmt.Errorf("store: %q names no file; want file:PATH", redact.URL(c.URL))
		}
		return nil
	case "couchbase":
		cb := c.Couchbase
		cb.ConnStr = c.URL
		return cb.Validate()
	}
	return fmt.Errorf("store: %q is not a store URL; want file:PATH, couchbase://HOST or couchbases://HOST", redact.URL(c.URL))
}

// EmbeddedPath is the database file a file: URL names; ok is false for
// any other URL.
func (c StoreConfig) EmbeddedPath() (path string, ok bool) {
	return strings.CutPrefix(c.URL, "file:")
}

func (c StoreConfig) kind() (kind, path string) {
	if path, ok := c.EmbeddedPath(); ok {
		return "file", path
	}
	if strings.HasPrefix(c.URL, "couchbase://") || strings.HasPrefix(c.URL, "couchbases://") {
		return "couchbase", ""
	}
	return "", ""
}

// IsCouchbase says whether the URL names a Couchbase cluster.
func (c StoreConfig) IsCouchbase() bool {
	kind, _ := c.kind()
	return kind == "couchbase"
}

// CouchbaseConfig is the Couchbase configuration with the URL in place.
func (c StoreConfig) CouchbaseConfig() couchbase.Config {
	cb := c.Couchbase
	cb.ConnStr = c.URL
	return cb
}

// warnMissingIndexes logs each index the store's queries need that it
// lacks (a Couchbase cluster set up by an earlier release), with the
// command that creates it: the service runs without it, reading more.
func warnMissingIndexes(ctx context.Context, st store.Store, log *slog.Logger) {
	ix, ok := st.(interface {
		MissingIndexes(context.Context) ([]string, error)
	})
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	missing, err := ix.MissingIndexes(ctx)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			log.Warn("could not check the cluster's indexes", "error", err)
		}
		return
	}
	for _, m := range missing {
		log.Warn("index missing: run `ordermail setup` (it creates only what is missing)", "index", m)
	}
}

// openStoreWaiting is OpenStore for the service: an embedded store whose
// write lock another process holds past the busy timeout (a long sqlite3
// session, a backup, a bulk command) is waited for, with a warning at each
// try, until it opens or ctx ends, as a running service waits the store
// out; the operator commands give up and say why instead.
func openStoreWaiting(ctx context.Context, c StoreConfig, log *slog.Logger) (store.Store, error) {
	if c.IsCouchbase() {
		return OpenStore(ctx, c, log)
	}
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = time.Second, 30*time.Second
	b.Reset()
	for {
		st, err := OpenStore(ctx, c, log)
		if !errors.Is(err, embedded.ErrBusy) || ctx.Err() != nil {
			return st, err // a full disk, a file it cannot open: said, not waited on
		}
		wait := b.NextBackOff()
		log.Warn("the store is busy with another process's write; trying again", "in", wait.Round(time.Second), "error", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, err
		}
	}
}

// OpenStore opens the store c names.
func OpenStore(ctx context.Context, c StoreConfig, log *slog.Logger) (store.Store, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.IsCouchbase() {
		return couchbase.Open(ctx, c.CouchbaseConfig(), log)
	}
	_, path := c.kind()
	ec := c.Embedded
	ec.Path = path
	return embedded.Open(ctx, ec)
}
