package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func deadlettersCommand(stdout, stderr io.Writer) *ffcli.Command {
	var asJSON bool
	var listReason string
	list := storeCommand("list", "ordermail deadletters list --store URL [--reason R] [--json]", "list the confirmations given up on", stderr,
		func(ctx context.Context, st store.Store, _ []string) error {
			if asJSON {
				return listJSON(ctx, st, listReason, stdout)
			}
			return listTable(ctx, st, listReason, stdout)
		},
		readsOnly(), checkArgs(func(args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			return checkReason("deadletters list", listReason)
		}))
	list.FlagSet.BoolVar(&asJSON, "json", false, "print a JSON array")
	list.FlagSet.StringVar(&listReason, "reason", "", "only the dead letters of this reason (permanent_error, attempts_exhausted, ...)")

	var redriveAll bool
	var redriveReason string
	redrive := storeCommand("redrive", "ordermail deadletters redrive --store URL --all | --reason R | ID...",
		"send dead letters again now, with a fresh attempt budget", stderr,
		func(ctx context.Context, st store.Store, ids []string) error {
			var n int
			var err error
			if redriveReason != "" {
				n, err = ops.RedriveByReason(ctx, st, time.Now(), redriveReason)
			} else {
				n, err = ops.Redrive(ctx, st, time.Now(), ids, redriveAll)
			}
			fmt.Fprintln(stdout, doneOrStopped(ctx, err, "redrove", n))
			return err
		},
		existing(), checkArgs(func(ids []string) error { return selection("deadletters redrive", ids, redriveAll, redriveReason) }))
	redrive.FlagSet.BoolVar(&redriveAll, "all", false, "every dead letter")
	redrive.FlagSet.StringVar(&redriveReason, "reason", "", "every dead letter of this reason (permanent_error, attempts_exhausted, ...)")

	var purgeAll, yes bool
	var purgeReason string
	purge := storeCommand("purge", "ordermail deadletters purge --store URL --yes --all | --reason R | ID...",
		"delete dead letters for good (their orders stay unconfirmed; with --all or --reason, those dead-lettered after the command started are left)", stderr,
		func(ctx context.Context, st store.Store, ids []string) error {
			var n int
			var err error
			asOf := time.Now() // what is dead-lettered while it runs is left
			if purgeReason != "" {
				n, err = ops.PurgeByReason(ctx, st, purgeReason, asOf)
			} else {
				n, err = ops.Purge(ctx, st, ids, purgeAll, asOf)
			}
			fmt.Fprintln(stdout, doneOrStopped(ctx, err, "purged", n))
			return err
		},
		existing(), checkArgs(func(ids []string) error {
			if err := selection("deadletters purge", ids, purgeAll, purgeReason); err != nil {
				return err
			}
			if !yes {
				return usageErrorf("purge deletes dead letters for good: their orders stay unconfirmed unless the order itself changes again; add --yes to go on")
			}
			return nil
		}))
	purge.FlagSet.BoolVar(&purgeAll, "all", false, "every dead letter")
	purge.FlagSet.StringVar(&purgeReason, "reason", "", "every dead letter of this reason (permanent_error, attempts_exhausted, ...)")
	purge.FlagSet.BoolVar(&yes, "yes", false, "confirm the deletion")

	return &ffcli.Command{
		Name:        "deadletters",
		ShortUsage:  "ordermail deadletters list|redrive|purge --store URL",
		ShortHelp:   "list, redrive or purge the confirmations given up on",
		FlagSet:     newFlagSet("deadletters", stderr),
		Subcommands: []*ffcli.Command{list, redrive, purge},
	}
}

// listJSON prints the dead letters as one JSON array, each as the scan
// reads it: a backlog of any size is never held whole.
func listJSON(ctx context.Context, st store.Store, reason string, w io.Writer) error {
	bw := bufio.NewWriter(w)
	sep := "["
	err := ops.EachDeadLetter(ctx, st, reason, func(d ops.DeadLetter) error {
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		bw.WriteString(sep)
		sep = ","
		_, err = bw.Write(b)
		return err
	})
	if err != nil {
		return err
	}
	if sep == "[" {
		bw.WriteString(sep) // none: an empty array
	}
	bw.WriteString("]\n")
	return bw.Flush()
}

// listRows is how many rows of the table are aligned and printed together:
// a backlog of any size is never held whole.
const listRows = 500

// listTable prints the dead letters as a table, listRows rows at a time.
func listTable(ctx context.Context, st store.Store, reason string, w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tREASON\tSTATUS\tATTEMPTS\tREDRIVES\tDEAD SINCE\tLAST ERROR")
	rows := 0
	err := ops.EachDeadLetter(ctx, st, reason, func(d ops.DeadLetter) error {
		status := "-" // no answer: refused before a request, or none came
		if d.LastStatus != 0 {
			status = strconv.Itoa(d.LastStatus)
		}
		since := "-" // unreadable: no time
		if d.DeadAt != 0 {
			since = time.UnixMilli(d.DeadAt).UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", shown(d.ID), shown(d.Reason), status, d.Attempts, d.RedriveCount,
			since, truncate(d.LastError, 80))
		if rows++; rows%listRows == 0 {
			return tw.Flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Flush()
}

// selection checks that a command names its dead letters one way: --all,
// --reason or IDs.
func selection(cmd string, ids []string, all bool, reason string) error {
	ways := 0
	for _, given := range []bool{all, reason != "", len(ids) > 0} {
		if given {
			ways++
		}
	}
	switch {
	case ways > 1:
		return usageErrorf("%s: give one of --all, --reason or IDs", cmd)
	case ways == 0:
		return usageErrorf("%s: no dead letters named: give --all, --reason or the IDs of dead letters", cmd)
	}
	return checkReason(cmd, reason)
}

// checkReason refuses a --reason no dead letter has.
func checkReason(cmd, reason string) error {
	if reason == "" {
		return nil
	}
	if err := ops.CheckDeadLetterReason(reason); err != nil {
		return usageErrorf("%s: --reason: %v", cmd, err)
	}
	return nil
}

// truncate is s shortened to n bytes (order.Shorten), as a terminal may
// print it (shown).
func truncate(s string, n int) string {
	short := order.Shorten(s, n)
	if short == s {
		return shown(s)
	}
	return shown(strings.TrimSuffix(short, "...")) + "..." // the mark of the cut, not quoted
}

// shown is ops.Shown: text from a document or a remote service, its
// control characters seen, not obeyed.
func shown(s string) string { return ops.Shown(s) }

// doneOrStopped says how many dead letters a bulk command did: all it was
// asked, or, stopped (Ctrl-C, or an error of the store: err is
// ops.ErrStopped), those it saw made, which writes under way then may
// outnumber, and what to do.
func doneOrStopped(ctx context.Context, err error, did string, n int) string {
	letters := "dead letters"
	if n == 1 {
		letters = "dead letter"
	}
	if ctx.Err() == nil && !errors.Is(err, ops.ErrStopped) {
		return fmt.Sprintf("%s %d %s", did, n, letters)
	}
	return fmt.Sprintf("stopped: %s %d %s, and perhaps a few more whose writes were under way; "+
		"the rest are as they were: run the command again to go on", did, n, letters)
}
