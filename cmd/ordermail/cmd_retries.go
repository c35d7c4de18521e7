package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func retriesCommand(stdout, stderr io.Writer) *ffcli.Command {
	sub := func(name, help string, exec func(context.Context, store.Store) error) *ffcli.Command {
		fs := newFlagSet("retries "+name, stderr)
		var storeURL string
		storeFlag(fs, &storeURL)
		c := &ffcli.Command{
			Name: name, ShortUsage: "ordermail retries " + name + " --store file:PATH", ShortHelp: help,
			FlagSet: fs, Options: envOptions,
		}
		c.Exec = func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			st, err := app.OpenStore(ctx, storeURL)
			if err != nil {
				return err
			}
			defer st.Close()
			return exec(ctx, st)
		}
		return c
	}
	var asJSON bool
	status := sub("status", "show the timer and the backlog", func(ctx context.Context, st store.Store) error {
		s, err := readStatus(ctx, st)
		if err != nil {
			return err
		}
		if asJSON {
			return json.NewEncoder(stdout).Encode(s)
		}
		armed := "paused (no allow_retrys)"
		if s.TimerArmed {
			armed = "armed"
		}
		fmt.Fprintf(stdout, "retry timer:        %s\nretry documents:    %d (%d flagged for retry)\norders paid:        %d\n  confirmed:        %d\n  unconfirmed:      %d\n",
			armed, s.RetryDocs, s.RetryFlagged, s.OrdersPaid, s.OrdersConfirmed, s.OrdersUnconfirmed)
		return nil
	})
	status.FlagSet.BoolVar(&asJSON, "json", false, "print one JSON object")

	return &ffcli.Command{
		Name:       "retries",
		ShortUsage: "ordermail retries start|stop|status --store file:PATH",
		ShortHelp:  "start or stop the retry timer (create or delete allow_retrys), or show status",
		FlagSet:    newFlagSet("retries", stderr),
		Subcommands: []*ffcli.Command{
			sub("start", "create allow_retrys: the timer retries failed sends", func(ctx context.Context, st store.Store) error {
				_, err := st.Insert(ctx, order.Retry, order.ControlKey, []byte(`{}`))
				if errors.Is(err, store.ErrExists) {
					fmt.Fprintln(stdout, "retries already started")
					return nil
				}
				if err != nil {
					return err
				}
				fmt.Fprintln(stdout, "retries started: created", order.ControlKey)
				return nil
			}),
			sub("stop", "delete allow_retrys: retry documents wait, first sends go on", func(ctx context.Context, st store.Store) error {
				err := st.Remove(ctx, order.Retry, order.ControlKey, 0)
				if errors.Is(err, store.ErrNotFound) {
					fmt.Fprintln(stdout, "retries already stopped")
					return nil
				}
				if err != nil {
					return err
				}
				fmt.Fprintln(stdout, "retries stopped: deleted", order.ControlKey)
				return nil
			}),
			status,
		},
	}
}

type retryStatus struct {
	TimerArmed        bool `json:"timerArmed"`
	RetryDocs         int  `json:"retryDocs"`
	RetryFlagged      int  `json:"retryFlagged"`
	OrdersPaid        int  `json:"ordersPaid"`
	OrdersConfirmed   int  `json:"ordersConfirmed"`
	OrdersUnconfirmed int  `json:"ordersUnconfirmed"`
}

func readStatus(ctx context.Context, st store.Store) (retryStatus, error) {
	_, err := st.Get(ctx, order.Retry, order.ControlKey)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return retryStatus{}, err
	}
	armed := err == nil
	c, err := st.Counts(ctx)
	if err != nil {
		return retryStatus{}, err
	}
	return retryStatus{
		TimerArmed: armed, RetryDocs: c.RetryDocs, RetryFlagged: c.RetryFlagged,
		OrdersPaid: c.OrdersPaid, OrdersConfirmed: c.OrdersConfirmed,
		OrdersUnconfirmed: c.OrdersPaid - c.OrdersConfirmed,
	}, nil
}
