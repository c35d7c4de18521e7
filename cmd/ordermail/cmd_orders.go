package main

import (
	"context"
	"encoding/json"
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

func ordersCommand(stdout, stderr io.Writer) *ffcli.Command {
	var asJSON bool
	var quantum time.Duration
	show := storeCommand("show", "ordermail orders show --store URL [--json] KEY",
		"tell one order's confirmation: its state, retry, dead letter and latest send attempts", stderr,
		func(ctx context.Context, st store.Store, args []string) error {
			s, err := ops.OrderStory(ctx, st, args[0], time.Now(), quantum)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(stdout).Encode(s)
			}
			return printStory(stdout, s)
		},
		readsOnly(),
		checkArgs(func(args []string) error {
			if len(args) != 1 {
				return usageErrorf("orders show: give exactly one order key, got %d", len(args))
			}
			if quantum <= 0 {
				return usageErrorf("retry-quantum: %s is not positive", quantum)
			}
			return nil
		}))
	show.FlagSet.BoolVar(&asJSON, "json", false, "print one JSON object")
	show.FlagSet.DurationVar(&quantum, "retry-quantum", order.DefaultQuantum, "the service's --retry-quantum, to tell whether a retry without nextAttemptAt (the sample's) is due")

	return &ffcli.Command{
		Name:        "orders",
		ShortUsage:  "ordermail orders show --store URL KEY",
		ShortHelp:   "show what is stored about an order's confirmation",
		FlagSet:     newFlagSet("orders", stderr),
		Subcommands: []*ffcli.Command{show},
	}
}

// storyTime is the layout of the story's times: to the millisecond, since
// attempts a few milliseconds apart must read apart.
const storyTime = "2006-01-02T15:04:05.000Z07:00"

func printStory(w io.Writer, s ops.Story) error {
	orDash := func(v string) string {
		if v == "" {
			return "-"
		}
		return shown(v)
	}
	at := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(storyTime)
	}
	confirmed := "no"
	if s.Confirmed {
		confirmed = "yes"
	}
	fmt.Fprintf(w, "order:            %s\n", shown(s.Key))
	fmt.Fprintf(w, "state:            %s\n", s.State)
	if s.State == ops.StateGivenUp {
		fmt.Fprintf(w, "                  (attempted, and no retry or dead letter is left: its dead letter purged, or its retry\n"+
			"                  removed; nothing sends it unless the order changes)\n")
	}
	if s.State == ops.StatePendingFirstSend {
		fmt.Fprintf(w, "                  (paid, and nothing else is stored for it: its first send goes out as the service\n"+
			"                  reads its change; if that was long ago, a dead letter of it was purged or its retry removed\n"+
			"                  before any attempt was recorded, or its record has expired, and nothing sends it unless the\n"+
			"                  order changes)\n")
	}
	fmt.Fprintf(w, "payment:          %s\n", orDash(s.PaymentStatus))
	fmt.Fprintf(w, "confirmed:        %s\n", confirmed)
	fmt.Fprintf(w, "idempotency key:  %s\n", orDash(s.IdempotencyKey))
	if s.SentUnder != "" {
		fmt.Fprintf(w, "sent under it:    yes (kept with the order: written back unconfirmed, it is marked again, not mailed)\n")
	}
	if r := s.Retry; r != nil {
		next := "at " + at(r.NextAttemptAt)
		if r.NextAttemptAt.IsZero() {
			next = "a timer quantum after " + at(r.LastAttemptAt)
		}
		if r.FireRetry {
			next = "now (flagged)"
		}
		last := failure(r.LastStatus, r.LastError)
		if r.LastStatus == 0 && r.LastError == "" && r.HeldBack != "" {
			last = "none: no request made yet"
		}
		if s.RetriesPaused {
			next += " once retries start (they are paused: `ordermail retries start`)"
		}
		fmt.Fprintf(w, "next retry:       %s; %d attempts in this budget, %d redrives, last failure %s\n",
			next, r.Attempt, r.Redrives, last)
		if r.HeldBack != "" {
			fmt.Fprintf(w, "held back:        %s (the last try made no request)\n", truncate(r.HeldBack, 80))
		}
	}
	if d := s.DeadLetter; d != nil {
		fmt.Fprintf(w, "dead letter:      %s since %s; %d attempts, %d redrives, last failure %s\n",
			shown(d.Reason), at(d.DeadSince), d.Attempts, d.Redrives, failure(d.LastStatus, d.LastError))
	}
	if s.Result != "" {
		fmt.Fprintf(w, "settled:          %s at %s\n", s.Result, at(s.SettledAt))
	}
	for _, u := range s.Unreadable {
		fmt.Fprintf(w, "unreadable:       %s document: %s\n", u.Collection, shown(u.Error))
	}

	fmt.Fprintln(w)
	if len(s.Attempts) == 0 {
		fmt.Fprintln(w, "no send attempts recorded")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "N\tAT\tDURATION\tSTATUS\tCLASS\tOUTCOME\tINSTANCE\tREASON")
	for _, a := range s.Attempts {
		status := "-"
		if a.Status != 0 {
			status = strconv.Itoa(a.Status)
		}
		when := time.Time{}
		if a.At != 0 {
			when = time.UnixMilli(a.At)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.N, at(when),
			time.Duration(a.DurationMs)*time.Millisecond, status, orDash(a.Class), orDash(a.Outcome), orDash(a.Instance), orDash(a.Reason))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if s.AttemptsTotal > len(s.Attempts) {
		fmt.Fprintf(w, "(showing the latest %d of %d attempts)\n", len(s.Attempts), s.AttemptsTotal)
	}
	return nil
}

// failure is a failure's status and error, as far as they are known.
func failure(status int, msg string) string {
	var parts []string
	if status != 0 {
		parts = append(parts, "HTTP "+strconv.Itoa(status))
	}
	if msg != "" {
		parts = append(parts, truncate(msg, 80))
	}
	if len(parts) == 0 {
		return "unknown"
	}
	return strings.Join(parts, ": ")
}
