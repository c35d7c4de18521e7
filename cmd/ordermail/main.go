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
	"runtime/debug"
	"syscall"

	"github.com/peterbourgon/ff/v3/ffcli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "ordermail:", err)
		os.Exit(1)
	}
}

// run is the whole program, callable from tests.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := &ffcli.Command{
		Name:       "ordermail",
		ShortUsage: "ordermail <command> [flags]",
		ShortHelp:  "order confirmation service",
		LongHelp: "ordermail sends an order confirmation when an order becomes paid, and retries\n" +
			"failed sends on a timer armed by the document allow_retrys in retry.\n" +
			"Every flag can also be set as ORDERMAIL_<FLAG>, e.g. ORDERMAIL_MAIL_URL.",
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
		},
		Exec: func(_ context.Context, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q; run ordermail -h for the commands", args[0])
			}
			return flag.ErrHelp
		},
	}
	err := root.ParseAndRun(ctx, args)
	var noExec ffcli.NoExecError
	if errors.As(err, &noExec) {
		noExec.Command.FlagSet.Usage()
		return flag.ErrHelp
	}
	return err
}

// version is the module version the binary was built from ("(devel)" for a
// local build).
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
