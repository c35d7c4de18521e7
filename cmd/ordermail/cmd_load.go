package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/peterbourgon/ff/v3/ffcli"
)

var collections = []string{order.Inbound, order.Retry}

func loadCommand(stdout, stderr io.Writer) *ffcli.Command {
	var coll string
	var pay, replace bool
	var docs []fixtures.Doc
	c := storeCommand("load", "ordermail load --store URL --collection NAME [--pay] [--replace] FILE|DIR...",
		"write JSON documents into a collection (.json: one document keyed by file name; .jsonl: {\"id\":...,\"doc\":{...}} lines)", stderr,
		func(ctx context.Context, st store.Store, files []string) error {
			kept, err := fixtures.Load(ctx, st, coll, docs, replace)
			if err != nil {
				// What was written stays; loaded again, it is left as it is
				// (or written over with --replace) and the rest is loaded.
				fmt.Fprintf(stdout, "stopped while loading into %s: the documents written so far stay; the same command again loads the rest\n", coll)
				return err
			}
			fmt.Fprintf(stdout, "loaded %d documents into %s from %s\n", len(docs)-len(kept), coll, plural(len(files), "path"))
			if len(kept) > 0 {
				named := strings.Join(kept[:min(len(kept), 10)], " ")
				if len(kept) > 10 {
					named += " ..."
				}
				fmt.Fprintf(stdout, "left %d documents that were there as they were (--replace writes over them): %s\n", len(kept), named)
			}
			if !pay {
				return nil
			}
			// Those left as they were too when they are the file's document
			// as it stands (a load cut short, Ctrl-C, between its writes and
			// its payments, is finished by running it again); one that is
			// not (another order under the key, the order system's) is left
			// alone. An order paid already is not written again.
			left := make(map[string]bool, len(kept))
			for _, k := range kept {
				left[k] = true
			}
			paid, already, others := 0, 0, 0
			for _, d := range docs {
				if left[d.Key] {
					cur, err := st.Get(ctx, order.Inbound, d.Key)
					if err != nil && !errors.Is(err, store.ErrNotFound) {
						fmt.Fprintf(stdout, "marked %d of %d orders paid (%d were already); the same command again pays the rest\n", paid, len(docs), already)
						return fmt.Errorf("pay %s: %w", d.Key, err)
					}
					if err != nil || !bytes.Equal(bytes.TrimSpace(cur.Value), bytes.TrimSpace(d.Value)) {
						others++
						continue
					}
				}
				changed, err := markPaid(ctx, st, d.Key)
				if err != nil {
					fmt.Fprintf(stdout, "marked %d of %d orders paid (%d were already); the same command again pays the rest\n", paid, len(docs), already)
					return err
				}
				if changed {
					paid++
				} else {
					already++
				}
			}
			msg := fmt.Sprintf("marked %d orders paid", paid)
			if already > 0 {
				msg += fmt.Sprintf(" (%d were already)", already)
			}
			if others > 0 {
				msg += fmt.Sprintf("; %d of those left as they were are not the files' documents (the order system's, or changed since): not paid", others)
			}
			fmt.Fprintln(stdout, msg)
			return nil
		})
	c.FlagSet.StringVar(&coll, "collection", "", "collection to write into: inbound or retry")
	c.FlagSet.BoolVar(&replace, "replace", false, "write over documents with the same keys (an order replaced is unconfirmed again: once paid, the embedded store marks it confirmed again while its attempt record says it was sent, Couchbase sends its confirmation again); without it they are left as they are")
	c.FlagSet.BoolVar(&pay, "pay", false, "then set each order's paymentStatus to paid, as the sample's manual test does (inbound only); one already there too when it is the file's document as it stands (a load cut short is finished by running it again), unless paid already")
	// Check the arguments and read every file before the store is opened:
	// a bad file loads nothing.
	exec := c.Exec
	c.Exec = func(ctx context.Context, files []string) error {
		if err := settingsFromEnv(c.FlagSet); err != nil {
			return err
		}
		switch {
		case coll == "":
			return usageErrorf("load: --collection is required: %s", strings.Join(collections, " or "))
		case !slices.Contains(collections, coll):
			return usageErrorf("load: --collection %q is not one of %s", coll, strings.Join(collections, ", "))
		}
		if len(files) == 0 {
			return usageErrorf("load: no files to load: give FILE or DIR arguments")
		}
		if pay && coll != order.Inbound {
			return usageErrorf("pay: only orders, in %s, can be paid", order.Inbound)
		}
		for _, f := range files {
			d, err := fixtures.ReadPath(f)
			if err != nil {
				return err
			}
			docs = append(docs, d...)
		}
		seen := make(map[string]bool, len(docs))
		for _, d := range docs {
			if seen[d.Key] { // which one was meant?
				return fmt.Errorf("load: %s is given twice (nothing loaded)", d.Key)
			}
			seen[d.Key] = true
		}
		if pay { // an order that cannot be paid loads nothing either
			for _, d := range docs {
				if _, err := order.SetPaymentStatus(d.Value, order.StatusPaid); err != nil {
					return fmt.Errorf("pay %s: %w (nothing loaded)", d.Key, err)
				}
			}
		}
		return exec(ctx, files)
	}
	return c
}

func payCommand(stdout, stderr io.Writer) *ffcli.Command {
	return storeCommand("pay", "ordermail pay --store URL ORDER_KEY...",
		"set orders' paymentStatus to paid, as the sample's manual test does", stderr,
		func(ctx context.Context, st store.Store, keys []string) error {
			var errs []error
			paid, already := 0, 0
			for i, k := range keys {
				if ctx.Err() != nil { // Ctrl-C: said, and the same command again goes on
					fmt.Fprintf(stdout, "stopped: marked %d of %d orders paid (%d were already), %d not tried; the same command again pays the rest\n",
						paid, len(keys), already, len(keys)-i)
					return errors.Join(append(errs, ctx.Err())...)
				}
				changed, err := markPaid(ctx, st, k)
				switch {
				case err != nil:
					errs = append(errs, err)
					continue
				case !changed:
					already++
				}
				paid++ // or paid already: it is, as asked
			}
			if already > 0 {
				fmt.Fprintf(stdout, "marked %d of %d orders paid (%d were already: left as they were)\n", paid, len(keys), already)
			} else {
				fmt.Fprintf(stdout, "marked %d of %d orders paid\n", paid, len(keys))
			}
			return errors.Join(errs...)
		},
		existing(), checkArgs(func(keys []string) error {
			if len(keys) == 0 {
				return usageErrorf("pay: no order keys: give the keys of the orders to mark paid")
			}
			return nil
		}))
}

// markPaid sets paymentStatus to paid, re-reading when the order changed
// under it, at most maxPayTries times; changed is false when it was paid
// already (nothing written).
func markPaid(ctx context.Context, st store.Store, key string) (changed bool, err error) {
	for range maxPayTries {
		d, err := st.Get(ctx, order.Inbound, key)
		if errors.Is(err, store.ErrNotFound) {
			return false, fmt.Errorf("pay %s: no such order in %s: %w", key, order.Inbound, err)
		}
		if err != nil {
			return false, fmt.Errorf("pay %s: %w", key, err)
		}
		v, err := order.SetPaymentStatus(d.Value, order.StatusPaid)
		if err != nil {
			return false, fmt.Errorf("pay %s: %w", key, err)
		}
		if bytes.Equal(v, bytes.TrimSpace(d.Value)) {
			return false, nil
		}
		_, err = st.Replace(ctx, order.Inbound, key, v, d.CAS)
		if !errors.Is(err, store.ErrCASMismatch) {
			if err != nil {
				return false, fmt.Errorf("pay %s: %w", key, err)
			}
			return true, nil
		}
	}
	return false, fmt.Errorf("pay %s: the order changed under each of %d tries; try again", key, maxPayTries)
}

// maxPayTries bounds the reads and writes of one order that keeps changing
// while it is marked paid.
const maxPayTries = 10

// plural says n things, "1 path" or "2 paths".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
