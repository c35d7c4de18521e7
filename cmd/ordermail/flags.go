package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/peterbourgon/ff/v3"
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

// serviceFlags are the settings of the service itself, shared by run and demo.
func serviceFlags(fs *flag.FlagSet, cfg *app.Config, interval, quantum time.Duration) {
	fs.StringVar(&cfg.Mail.URL, "mail-url", "", "email service base URL; confirmations are POSTed to <URL>/sendConfirmation")
	fs.DurationVar(&cfg.Mail.Timeout, "mail-timeout", 10*time.Second, "bound on one send to the email service")
	fs.IntVar(&cfg.Watcher.Workers, "workers", 8, "events handled at once (1-1024)")
	fs.DurationVar(&cfg.Timer.Interval, "timer-interval", interval, "time between retry sweeps (the sample's retryTimerInterval)")
	fs.DurationVar(&cfg.Timer.Quantum, "retry-quantum", quantum, "a retry document is retried once its last attempt is this old")
}

// checkServiceFlags rejects zeros, which the packages would read as "use the
// default": on the command line a zero is a mistake, not a wish.
func checkServiceFlags(cfg app.Config) error {
	switch {
	case cfg.Mail.Timeout <= 0:
		return fmt.Errorf("mail-timeout: %s is not positive", cfg.Mail.Timeout)
	case cfg.Watcher.Workers <= 0:
		return fmt.Errorf("workers: %d is not between 1 and 1024", cfg.Watcher.Workers)
	case cfg.Timer.Interval <= 0:
		return fmt.Errorf("timer-interval: %s is not positive", cfg.Timer.Interval)
	case cfg.Timer.Quantum <= 0:
		return fmt.Errorf("retry-quantum: %s is not positive", cfg.Timer.Quantum)
	}
	return cfg.Validate()
}

func storeFlag(fs *flag.FlagSet, u *string) {
	fs.StringVar(u, "store", app.DefaultStore, "store URL: file:PATH for the embedded SQLite store")
}

// isTerminal says whether w is a terminal, for live progress.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// noArgs rejects stray arguments, which are usually a mistyped flag.
func noArgs(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(args, " "))
	}
	return nil
}
