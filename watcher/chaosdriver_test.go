package watcher_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// chaos is what both chaos tests do around a dozen order keys of st: each
// actor loops, drawing from the test's seed, until end. The shop creates,
// pays, cancels, edits and deletes orders (its errors, a key taken or a
// document changed meanwhile, are its to shrug off); the operator redrives
// every dead letter and runs retries now. With j set, every change the
// shop made is journaled.
type chaos struct {
	seed uint64
	st   store.Store
	keys []string
	j    *journal
	stop chan struct{}
	wg   sync.WaitGroup
}

func newChaos(seed uint64, st store.Store, j *journal) *chaos {
	c := &chaos{seed: seed, st: st, j: j, stop: make(chan struct{})}
	for i := range 12 {
		c.keys = append(c.keys, fmt.Sprintf("k%02d", i))
	}
	return c
}

// actor runs act, with a pause of up to 3ms after each, until end.
func (c *chaos) actor(stream uint64, act func(r *rand.Rand)) {
	r := rand.New(rand.NewPCG(c.seed, stream))
	c.wg.Go(func() {
		for {
			select {
			case <-c.stop:
				return
			default:
			}
			act(r)
			time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
		}
	})
}

// end stops the actors and waits for them.
func (c *chaos) end() {
	close(c.stop)
	c.wg.Wait()
}

func (c *chaos) note(key string, e entry) {
	if c.j != nil {
		e.seq = c.j.tick()
		c.j.add(key, e)
	}
}

func (c *chaos) setStatus(ctx context.Context, key, status string) {
	for range 5 {
		d, err := c.st.Get(ctx, order.Inbound, key)
		if err != nil {
			return
		}
		v, err := order.SetPaymentStatus(d.Value, status)
		if err != nil {
			return
		}
		cas, err := c.st.Replace(ctx, order.Inbound, key, v, d.CAS)
		if err == nil {
			c.note(key, entry{what: status, cas: cas})
		}
		if !errors.Is(err, store.ErrCASMismatch) {
			return
		}
	}
}

// shop is one shop actor.
func (c *chaos) shop(ctx context.Context, stream uint64) {
	c.actor(stream, func(r *rand.Rand) {
		k := c.keys[r.IntN(len(c.keys))]
		switch r.IntN(10) {
		case 0, 1:
			var from uint64
			if c.j != nil {
				from = c.j.tick()
			}
			cas, err := c.st.Insert(ctx, order.Inbound, k, []byte(`{"email":"a@example.com","paymentStatus":"initiated","confirmationEmailSent":false,"n":0}`))
			if err == nil {
				c.note(k, entry{from: from, what: "created", cas: cas})
			}
		case 2, 3, 4:
			c.setStatus(ctx, k, order.StatusPaid)
		case 5:
			c.setStatus(ctx, k, "cancelled")
		case 6, 7: // an edit that keeps every field
			if d, err := c.st.Get(ctx, order.Inbound, k); err == nil {
				cas, err := c.st.Replace(ctx, order.Inbound, k, []byte(strings.Replace(string(d.Value), `"n":`, `"n":1`, 1)), d.CAS)
				if err == nil {
					c.note(k, entry{what: "edited", cas: cas})
				}
			}
		case 8: // deleted, to be created again
			if d, err := c.st.Get(ctx, order.Inbound, k); err == nil && r.IntN(4) == 0 {
				if c.st.Remove(ctx, order.Inbound, k, d.CAS) == nil {
					c.note(k, entry{what: "removed", cas: d.CAS})
				}
			}
		}
	})
}

// operator is the operator's actor.
func (c *chaos) operator(ctx context.Context, stream uint64) {
	c.actor(stream, func(r *rand.Rand) {
		switch r.IntN(20) {
		case 0:
			ops.Redrive(ctx, c.st, time.Now(), nil, true)
		case 1, 2:
			ops.RunRetryNow(ctx, c.st, c.keys[r.IntN(len(c.keys))])
		}
	})
}

// redriveExisting redrives the dead letters of the orders that exist (one
// whose order is gone would only come back as order_missing).
func (c *chaos) redriveExisting(ctx context.Context) error {
	for _, k := range c.keys {
		if s, err := c.st.State(ctx, k); err == nil && s.DeadLetter.Found() && s.Order.Found() {
			if _, err := ops.Redrive(ctx, c.st, time.Now(), []string{k}, false); err != nil && !errors.Is(err, ops.ErrChanged) {
				return fmt.Errorf("redrive %s: %w", k, err)
			}
		}
	}
	return nil
}

// unsettled redrives the dead letters of the orders that exist and lists
// what is left to do: a retry document, a paid order not confirmed (with
// detail's words on its key), and what check says of an order that exists.
func (c *chaos) unsettled(ctx context.Context, detail func(key string) string, check func(key string, s store.State, o order.Order) string) []string {
	if err := c.redriveExisting(ctx); err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, k := range c.keys {
		s, err := c.st.State(ctx, k)
		if err != nil {
			return append(out, k+": "+err.Error())
		}
		if s.Retry.Found() {
			out = append(out, fmt.Sprintf("%s: retry %s; order %s", k, s.Retry.Value, s.Order.Value))
		}
		if !s.Order.Found() {
			continue
		}
		o, err := order.DecodeOrder(s.Order.Value)
		if err != nil {
			return append(out, k+": "+err.Error())
		}
		if problem := check(k, s, o); problem != "" {
			out = append(out, problem)
		}
		if o.PaymentStatus == order.StatusPaid && !o.ConfirmationEmailSent {
			out = append(out, fmt.Sprintf("%s paid, not confirmed; retry %s; dead letter %s%s", k, s.Retry.Value, s.DeadLetter.Value, detail(k)))
		}
	}
	return out
}
