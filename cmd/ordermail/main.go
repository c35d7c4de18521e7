// Command ordermail sends order confirmations for orders that become paid in
// a Couchbase-shaped store, retrying failed sends on a timer. Run
// `ordermail -h` for the commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/internal/buildinfo"
	"github.com/ordermail/ordermail/internal/redact"
	"github.com/ordermail/ordermail/ops"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func main() {
	within := sameSignalWithin
	if v := os.Getenv("ORDERMAIL_SIGNAL_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			fmt.Fprintf(os.Stderr, "ordermail: ORDERMAIL_SIGNAL_WINDOW: %q is no duration like \"1s\"; %v is used\n", v, within)
		} else {
			within = d
		}
	}
	ctx, first, stop := notifyStop(os.Stderr, within)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	code := exitStatus(err, first(), os.Stderr)
	stop()
	os.Exit(code)
}

// sameSignalWithin: a signal this soon after the first is the same one
// delivered twice (a wrapper passing on what its process group got too),
// not a second asking to end at once. ORDERMAIL_SIGNAL_WINDOW sets another.
const sameSignalWithin = time.Second

// notifyStop returns a context that SIGINT or SIGTERM ends, so that the
// command stops cleanly; first says which came first, nil before any
// (after SIGINT, Ctrl-C, the command exits 130, as a shell expects of an
// interrupted command). A signal that comes while the clean stop is under
// way, more than within after the first, ends the process at once, as if
// it had not been caught; one within is said and ignored. stop undoes it.
func notifyStop(stderr io.Writer, within time.Duration) (ctx context.Context, first func() os.Signal, stop func()) {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	var firstSig atomic.Value // os.Signal
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var first time.Time
		for {
			select {
			case <-done:
				return
			case sig := <-signals:
				switch {
				case first.IsZero():
					first = time.Now()
					firstSig.Store(sig)
					cancel()
				case time.Since(first) < within:
					fmt.Fprintf(stderr, "ordermail: %v again within %v of the first: taken for the same one; send it again to end at once\n", sig, within)
				default:
					signal.Reset(os.Interrupt, syscall.SIGTERM)
					if p, err := os.FindProcess(os.Getpid()); err == nil {
						_ = p.Signal(sig) // uncaught now: the process ends
					}
					return
				}
			}
		}
	}()
	return ctx, func() os.Signal { s, _ := firstSig.Load().(os.Signal); return s }, func() {
		close(done)
		<-stopped
		signal.Stop(signals)
		cancel()
	}
}

// exitError is a failure with an exit status of its own (README's "Exit
// codes": 3 and 4 from run).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// exitStatus reports err, unless run did already (a usage error), and
// returns the exit status: 0, 1 when the command failed, 2 when its command
// line was wrong, an exitError's own (whatever signal came: run stopped
// for a reason of its own, said), 130 when it was interrupted, 143 when
// SIGTERM cut it short.
func exitStatus(err error, sig os.Signal, stderr io.Writer) int {
	var usage usageError
	var coded exitError
	interrupted := sig == os.Interrupt
	switch {
	case errors.As(err, &usage):
		return 2
	case errors.As(err, &coded):
		say(stderr, err)
		return coded.code
	case sig == syscall.SIGTERM && canceled(err):
		// A stop asked for cut the command short (a demo, a bulk action):
		// said by the status a shell gives a command SIGTERM ended, not as
		// a failure ("context canceled", 1); what else went wrong is said.
		// A command that stopped cleanly (run) returns no error: 0.
		if rest := besidesCancel(err); rest != nil {
			say(stderr, rest)
		}
		return 143
	case interrupted && (err == nil || canceled(err)):
		// As for SIGTERM: a failure of the command's own (a start or a
		// stop that failed) is 1, whatever signal came; a Couchbase
		// request the interrupt cut short is the interrupt's (canceled).
		if rest := besidesCancel(err); rest != nil {
			say(stderr, rest)
		}
		return 130
	case err != nil:
		say(stderr, err)
		return 1
	}
	return 0
}

// say prints err after "ordermail:", its control characters escaped
// (\x1b, \n): errors name keys read from the store, which may hold any
// byte (a dead letter of an invalid key), and a terminal would obey them,
// or take a newline in one for a line of ordermail's own. The failures of
// an errors.Join are a line each, as it says them; an error that says its
// lines are its own (MultiLine: a process's last output) keeps them.
func say(stderr io.Writer, err error) {
	fmt.Fprintln(stderr, "ordermail:", shownErr(err))
}

// shownErr is err's message as say prints it.
func shownErr(err error) string {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		if parts := j.Unwrap(); isJoin(err, parts) {
			lines := make([]string, len(parts))
			for i, p := range parts {
				lines[i] = shownErr(p)
			}
			return strings.Join(lines, "\n")
		}
	}
	// A join wrapped by text of the wrapper's ("bench timed out: %w"):
	// the text escaped, the join's failures a line each.
	for inner := errors.Unwrap(err); inner != nil; inner = errors.Unwrap(inner) {
		if j, ok := inner.(interface{ Unwrap() []error }); ok && isJoin(inner, j.Unwrap()) {
			if msg, im := err.Error(), inner.Error(); strings.HasSuffix(msg, im) {
				return escaped(msg[:len(msg)-len(im)]) + shownErr(inner)
			}
			break
		}
	}
	var lines interface{ MultiLine() bool }
	if errors.As(err, &lines) && lines.MultiLine() {
		ls := strings.Split(err.Error(), "\n")
		for i, l := range ls {
			ls[i] = escaped(l)
		}
		return strings.Join(ls, "\n")
	}
	return escaped(err.Error())
}

// escaped is s with its control characters escaped, Go-style, newlines
// too (tabs kept).
func escaped(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return r == utf8.RuneError || !unicode.IsPrint(r) && r != '\t' }) < 0 {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}

// canceled says whether err is a cancellation: the context's, or a
// Couchbase request's that the context cut short (which does not wrap it).
func canceled(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, gocb.ErrRequestCanceled)
}

// besidesCancel is what err says besides the cancellation an interrupt
// caused: nil when that is all. The parts of an error joined with it (a
// bulk action's "left, changed", say) are kept.
func besidesCancel(err error) error {
	if !canceled(err) {
		return err
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok || !isJoin(err, joined.Unwrap()) {
		return nil // one error, however many it wraps ("%w: %w")
	}
	var rest []error
	for _, e := range joined.Unwrap() {
		if e = besidesCancel(e); e != nil && e != ops.ErrStopped {
			rest = append(rest, e)
		}
	}
	return errors.Join(rest...)
}

// isJoin says whether err, wrapping parts, is errors.Join's: failures
// apart, each its own line, not one failure's annotations.
func isJoin(err error, parts []error) bool {
	msgs := make([]string, len(parts))
	for i, p := range parts {
		msgs[i] = p.Error()
	}
	return err.Error() == strings.Join(msgs, "\n")
}

// run is the whole program, callable from tests. Help asked for goes to
// stdout; a wrong command line is reported on stderr with the usage, and
// returned as a usageError.
// warnSecrets says of a secret given on the command line args of fs (the
// command's flags as parsed), where every user of the machine reads it
// (ps, /proc): --cb-password, a --mail-url with a password or a key. A flag
// set and named in args was given there; one set from the environment
// (ORDERMAIL_<FLAG>) is kept to the process. Nothing is refused.
func warnSecrets(fs *flag.FlagSet, args []string, stderr io.Writer) {
	named := func(name string) bool {
		for _, a := range args {
			if n, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "="); n == name && strings.HasPrefix(a, "-") {
				return true
			}
		}
		return false
	}
	fs.Visit(func(f *flag.Flag) {
		v := f.Value.String()
		if !named(f.Name) {
			return
		}
		switch {
		case f.Name == "cb-password":
			fmt.Fprintln(stderr, "ordermail: warning: --cb-password on the command line is visible to every user of this machine (ps): use ORDERMAIL_CB_PASSWORD or --cb-password-file")
		case f.Name == "mail-url" && redact.MailURL(v) != v:
			fmt.Fprintln(stderr, "ordermail: warning: --mail-url carries a secret, visible on the command line to every user of this machine (ps): use ORDERMAIL_MAIL_URL")
		}
	})
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := rootCommand(stdout, stderr)
	// The flag package and ffcli print errors and help alike to a flag
	// set's output; run prints them itself, each where it belongs.
	walk(root, func(c *ffcli.Command) {
		c.FlagSet.SetOutput(io.Discard)
		clearErrors(c.FlagSet)
	})

	var noExec ffcli.NoExecError
	switch err := root.Parse(flagsFirst(root, args)); {
	case errors.Is(err, flag.ErrHelp):
		// -h, -help or --help.
		_, err := io.WriteString(stdout, usageText(selected(root)))
		return err
	case errors.As(err, &noExec):
		c := noExec.Command
		if rest := c.FlagSet.Args(); len(rest) > 0 {
			err = usageErrorf("%s: unknown command %q", c.Name, rest[0])
		} else {
			err = usageErrorf("%s: give a command: %s", c.Name, commandNames(c))
		}
		return reportUsage(stderr, c, err)
	case err != nil:
		// An unknown flag, a bad flag value or environment variable.
		msg := strings.TrimPrefix(err.Error(), "error parsing commandline arguments: ")
		return reportUsage(stderr, selected(root), usageError{msg})
	}
	warnSecrets(selected(root).FlagSet, args, stderr)
	err := root.Run(ctx)
	var usage usageError
	switch {
	case errors.As(err, &usage):
		return reportUsage(stderr, selected(root), err)
	case errors.Is(err, flag.ErrHelp):
		// A command that says "usage error" the way ffcli documents.
		msg := strings.TrimSuffix(err.Error(), ": "+flag.ErrHelp.Error())
		return reportUsage(stderr, selected(root), usageError{msg})
	}
	return err
}

// rootCommand is ordermail's command tree.
func rootCommand(stdout, stderr io.Writer) *ffcli.Command {
	root := &ffcli.Command{
		Name:       "ordermail",
		ShortUsage: "ordermail <command> [flags]",
		ShortHelp:  "order confirmation service",
		LongHelp: "ordermail sends an order confirmation when an order becomes paid, and retries\n" +
			"failed sends on a timer armed by the document allow_retrys in retry.\n" +
			"A setting can also be given as ORDERMAIL_<FLAG>, e.g. ORDERMAIL_MAIL_URL; a command's\n" +
			"own choices (--yes, --all, --reason, --pay...) only on its command line, and bench reads\n" +
			"none. `ordermail <command> -h` shows a command's flags. Exit status: 0 done, 1 failed,\n" +
			"2 wrong command line, 3 run stopped because its store file or lock file was deleted or\n" +
			"replaced, 4 run stopped because the change feed failed for good,\n" +
			"130 interrupted (Ctrl-C).",
		FlagSet: newFlagSet("ordermail", stderr),
		Subcommands: []*ffcli.Command{
			demoCommand(stdout, stderr),
			runCommand(stderr),
			setupCommand(stdout, stderr),
			mockmailCommand(stderr),
			loadCommand(stdout, stderr),
			payCommand(stdout, stderr),
			retriesCommand(stdout, stderr),
			deadlettersCommand(stdout, stderr),
			ordersCommand(stdout, stderr),
			benchCommand(stdout, stderr),
			healthcheckCommand(stdout),
			versionCommand(stdout),
		},
		Exec: func(_ context.Context, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q", args[0])
			}
			return usageErrorf("no command given")
		},
	}
	root.Subcommands = append(root.Subcommands, helpCommand(root, stdout))
	return root
}

// reportUsage prints what was wrong with the command line, then the usage of
// the command c, and returns err for the exit status.
func reportUsage(stderr io.Writer, c *ffcli.Command, err error) error {
	fmt.Fprintf(stderr, "ordermail: %s\n\n%s", err, usageText(c))
	return err
}

// usageText is c's help: description, usage, subcommands and flags.
func usageText(c *ffcli.Command) string {
	if c.UsageFunc != nil {
		return c.UsageFunc(c)
	}
	return ffcli.DefaultUsageFunc(c)
}

// selected is the command the arguments chose: the deepest one whose flags
// were parsed (or failed to parse).
func selected(root *ffcli.Command) *ffcli.Command {
	c := root
	for {
		next := subcommand(c, c.FlagSet.Args())
		if next == nil || next.FlagSet == nil || !next.FlagSet.Parsed() {
			return c
		}
		c = next
	}
}

// subcommand is c's subcommand named by args[0], as ffcli matches it.
func subcommand(c *ffcli.Command, args []string) *ffcli.Command {
	if len(args) == 0 {
		return nil
	}
	for _, s := range c.Subcommands {
		if strings.EqualFold(args[0], s.Name) {
			return s
		}
	}
	return nil
}

// flagsFirst moves the flags given after a command's arguments before them
// (`ordermail pay order_1 --store URL`, as README writes it), where the
// flag package reads them: it stops at the first argument, and the flags
// after it became arguments (an order "--store" not found, and the default
// store changed instead of the one named). After "--" everything is an
// argument, and stays one: the arguments go after a "--" of their own.
func flagsFirst(root *ffcli.Command, args []string) []string {
	c, i := root, 0
	for ; i < len(args); i++ {
		next := subcommand(c, args[i:])
		if next == nil {
			break
		}
		c = next
	}
	if c.FlagSet == nil || c.Subcommands != nil {
		return args // a command of commands: its flags are its own
	}
	var flags, positional []string
	rest := args[i:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		switch {
		case a == "--":
			positional = append(positional, rest[j+1:]...)
			j = len(rest)
		case len(a) < 2 || a[0] != '-':
			positional = append(positional, a)
		default:
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if strings.Contains(name, "=") {
				continue // -name=value
			}
			f := c.FlagSet.Lookup(name)
			if f == nil {
				continue // unknown: the parse names it
			}
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				continue // a switch
			}
			if j+1 == len(rest) {
				// Its value is missing: the parse says so.
				return append(slices.Clip(args[:i]), flags...)
			}
			j++
			flags = append(flags, rest[j]) // its value, whatever it looks like
		}
	}
	out := append(append(slices.Clip(args[:i]), flags...), "--")
	return append(out, positional...)
}

func commandNames(c *ffcli.Command) string {
	names := make([]string, len(c.Subcommands))
	for i, s := range c.Subcommands {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

func walk(c *ffcli.Command, fn func(*ffcli.Command)) {
	if c.FlagSet != nil {
		fn(c)
	}
	for _, s := range c.Subcommands {
		walk(s, fn)
	}
}

func helpCommand(root *ffcli.Command, stdout io.Writer) *ffcli.Command {
	return &ffcli.Command{
		Name:       "help",
		ShortUsage: "ordermail help [COMMAND [SUBCOMMAND]]",
		ShortHelp:  "show the help of ordermail or of a command",
		FlagSet:    newFlagSet("help", io.Discard),
		Exec: func(_ context.Context, args []string) error {
			c := root
			for i := range args {
				if c = subcommand(c, args[i:]); c == nil {
					return usageErrorf("help: no command %q", strings.Join(args[:i+1], " "))
				}
			}
			_, err := io.WriteString(stdout, usageText(c))
			return err
		},
	}
}

func versionCommand(stdout io.Writer) *ffcli.Command {
	return &ffcli.Command{
		Name:       "version",
		ShortUsage: "ordermail version",
		ShortHelp:  "print the version, commit and Go version the binary was built from",
		FlagSet:    newFlagSet("version", io.Discard),
		Exec: func(_ context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			b := buildinfo.Read()
			commit := "not recorded (built outside a git checkout, or with -buildvcs=false)"
			if b.Revision != "" {
				commit = b.Revision
				if b.Modified {
					commit += " (modified: built with uncommitted changes)"
				}
			}
			fmt.Fprintf(stdout, "ordermail %s\ncommit:       %s\n", b.Version, commit)
			if b.Time != "" {
				fmt.Fprintf(stdout, "commit time:  %s\n", b.Time)
			}
			_, err := fmt.Fprintf(stdout, "go:           %s\n", b.GoVersion)
			return err
		},
	}
}

// version is the module version the binary was built from ("(devel)" for a
// local build), with the commit as build metadata when the version does not
// carry it already: "(devel)+1a2b3c4d5e6f.dirty".
func version() string {
	b := buildinfo.Read()
	v := b.Version
	if len(b.Revision) >= 12 && !strings.Contains(v, b.Revision[:12]) {
		v += "+" + b.Revision[:12]
		if b.Modified {
			v += ".dirty"
		}
	}
	return v
}
