package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func retriesCommand(stdout, stderr io.Writer) *ffcli.Command {
	var ctl order.Control
	start := storeCommand("start", "ordermail retries start --store URL [--interval D] [--quantum D]",
		"create allow_retrys: the timer retries failed sends (the settings go into the document)", stderr,
		func(ctx context.Context, st store.Store, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if ctl.Interval < 0 || ctl.Quantum < 0 || ctl.Interval > order.MaxControlDuration || ctl.Quantum > order.MaxControlDuration {
				return fmt.Errorf("interval and quantum: want durations between 0 and %s", order.MaxControlDuration)
			}
			started, err := ops.StartRetries(ctx, st, ctl)
			switch {
			case err != nil:
				return err
			case started:
				fmt.Fprintln(stdout, "retries started: created", order.ControlKey)
			case ctl != (order.Control{}):
				fmt.Fprintln(stdout, "retries already started; settings updated in", order.ControlKey)
			default:
				fmt.Fprintln(stdout, "retries already started")
			}
			return nil
		})
	start.FlagSet.DurationVar(&ctl.Interval, "interval", 0, "sweep at most this often (default: the service's --timer-interval)")
	start.FlagSet.DurationVar(&ctl.Quantum, "quantum", 0, "retry documents without nextAttemptAt are due after this (default: the service's --retry-quantum)")

	stop := storeCommand("stop", "ordermail retries stop --store URL",
		"delete allow_retrys: retries pause (documents wait), first sends go on", stderr,
		func(ctx context.Context, st store.Store, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			stopped, err := ops.StopRetries(ctx, st)
			if err != nil {
				return err
			}
			if stopped {
				fmt.Fprintln(stdout, "retries stopped: deleted", order.ControlKey)
			} else {
				fmt.Fprintln(stdout, "retries already stopped")
			}
			return nil
		})

	var asJSON bool
	var quantum time.Duration
	status := storeCommand("status", "ordermail retries status --store URL [--json]", "show the timer, the backlog and why sends fail", stderr,
		func(ctx context.Context, st store.Store, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			s, err := ops.ReadStatus(ctx, st, time.Now(), quantum)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(stdout).Encode(s)
			}
			printStatus(stdout, s)
			return nil
		})
	status.FlagSet.BoolVar(&asJSON, "json", false, "print one JSON object")
	status.FlagSet.DurationVar(&quantum, "retry-quantum", 15*time.Second, "the service's --retry-quantum, to tell which of the sample's retry documents are due")

	return &ffcli.Command{
		Name:        "retries",
		ShortUsage:  "ordermail retries start|stop|status --store URL",
		ShortHelp:   "start or pause retries (create or delete allow_retrys), or show their status",
		FlagSet:     newFlagSet("retries", stderr),
		Subcommands: []*ffcli.Command{start, stop, status},
	}
}

func printStatus(w io.Writer, s ops.Status) {
	timer := "paused (no " + order.ControlKey + ")"
	if s.TimerArmed {
		timer = "armed " + s.Control
	}
	oldest := "-"
	if s.OldestDueAt != nil {
		oldest = fmt.Sprintf("due for %s", time.Since(*s.OldestDueAt).Round(time.Second))
	}
	fmt.Fprintf(w, "retries:            %s\n", timer)
	fmt.Fprintf(w, "pending retries:    %d (%d due now, %d flagged)\n", s.RetryDocs, s.DueNow, s.RetryFlagged)
	fmt.Fprintf(w, "oldest due:         %s\n", oldest)
	fmt.Fprintf(w, "dead letters:       %d\n", s.DeadLetters)
	fmt.Fprintf(w, "orders paid:        %d (%d confirmed, %d unconfirmed)\n", s.OrdersPaid, s.OrdersConfirmed, s.OrdersUnconfirmed)
	if len(s.TopFailures) > 0 {
		fmt.Fprintln(w, "top failure reasons:")
		for _, r := range s.TopFailures {
			fmt.Fprintf(w, "  %5d  %s\n", r.Count, r.Reason)
		}
	}
}
