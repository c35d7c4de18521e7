package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/store"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func deadlettersCommand(stdout, stderr io.Writer) *ffcli.Command {
	var asJSON bool
	list := storeCommand("list", "ordermail deadletters list --store URL [--json]", "list the confirmations given up on", stderr,
		func(ctx context.Context, st store.Store, _ []string) error {
			if asJSON {
				return listJSON(ctx, st, stdout)
			}
			return listTable(ctx, st, stdout)
		},
		readOnly(), checkArgs(noArgs))
	list.FlagSet.BoolVar(&asJSON, "json", false, "print a JSON array")

	var redriveAll bool
	redrive := storeCommand("redrive", "ordermail deadletters redrive --store URL --all | ID...",
		"send dead letters again now, with a fresh attempt budget", stderr,
		func(ctx context.Context, st store.Store, ids []string) error {
			n, err := ops.Redrive(ctx, st, time.Now(), ids, redriveAll)
			fmt.Fprintf(stdout, "redrove %d dead letters\n", n)
			return err
		},
		checkArgs(func(ids []string) error { return idsOrAll("deadletters redrive", ids, redriveAll) }))
	redrive.FlagSet.BoolVar(&redriveAll, "all", false, "every dead letter")

	var purgeAll, yes bool
	purge := storeCommand("purge", "ordermail deadletters purge --store URL --yes --all | ID...",
		"delete dead letters for good (their orders stay unconfirmed)", stderr,
		func(ctx context.Context, st store.Store, ids []string) error {
			n, err := ops.Purge(ctx, st, ids, purgeAll)
			fmt.Fprintf(stdout, "purged %d dead letters\n", n)
			return err
		},
		checkArgs(func(ids []string) error {
			if err := idsOrAll("deadletters purge", ids, purgeAll); err != nil {
				return err
			}
			if !yes {
				return errors.New("purge deletes dead letters for good and their orders are never confirmed; add --yes to go on")
			}
			return nil
		}))
	purge.FlagSet.BoolVar(&purgeAll, "all", false, "every dead letter")
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
func listJSON(ctx context.Context, st store.Store, w io.Writer) error {
	bw := bufio.NewWriter(w)
	sep := "["
	err := ops.EachDeadLetter(ctx, st, func(d ops.DeadLetter) error {
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
func listTable(ctx context.Context, st store.Store, w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tREASON\tSTATUS\tATTEMPTS\tREDRIVES\tDEAD SINCE\tLAST ERROR")
	rows := 0
	err := ops.EachDeadLetter(ctx, st, func(d ops.DeadLetter) error {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\n", d.ID, d.Reason, d.LastStatus, d.Attempts, d.RedriveCount,
			time.UnixMilli(d.DeadAt).UTC().Format(time.RFC3339), truncate(d.LastError, 80))
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

func idsOrAll(cmd string, ids []string, all bool) error {
	switch {
	case all && len(ids) > 0:
		return usageErrorf("%s: give either --all or IDs, not both", cmd)
	case !all && len(ids) == 0:
		return usageErrorf("%s: no dead letters named: give --all or the IDs of dead letters", cmd)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
