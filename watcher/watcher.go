package watcher

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// Config of the watcher.
type Config struct {
	// Workers is how many events are handled at once. Default 8.
	Workers int
	// FeedName names the feed's checkpoint in the store. Default "ordermail".
	FeedName string
	// FromNow makes a feed with no checkpoint start at the current end of the
	// feed instead of its beginning.
	FromNow bool
	// Policy decides retries and dead letters. Zero: order.DefaultPolicy().
	Policy order.Policy
	// ClaimTTL is how long a retry claimed for a send is left alone by other
	// instances, and by the sweep should this one die. It must outlast a
	// send. Default 1m.
	ClaimTTL time.Duration
	// MaxOrderBytes: a larger order is dead-lettered, not posted. Default 1 MiB.
	MaxOrderBytes int
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if c.Workers < 0 || c.Workers > 1024 {
		return fmt.Errorf("workers: %d is not between 1 and 1024", c.Workers)
	}
	if c.ClaimTTL < 0 {
		return fmt.Errorf("claim-ttl: %s is negative", c.ClaimTTL)
	}
	if c.MaxOrderBytes < 0 {
		return fmt.Errorf("max-order-bytes: %d is negative", c.MaxOrderBytes)
	}
	if c.Policy != (order.Policy{}) {
		return c.Policy.Validate()
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Workers == 0 {
		c.Workers = 8
	}
	if c.FeedName == "" {
		c.FeedName = "ordermail"
	}
	if c.Policy == (order.Policy{}) {
		c.Policy = order.DefaultPolicy()
	}
	if c.ClaimTTL == 0 {
		c.ClaimTTL = time.Minute
	}
	if c.MaxOrderBytes == 0 {
		c.MaxOrderBytes = 1 << 20
	}
	return c
}

// Sender sends one confirmation; nil means the service answered 200.
type Sender interface {
	Send(ctx context.Context, idempotencyKey string, order []byte) error
}

// Stats counts what the watcher did since it started.
type Stats struct {
	Handled                                          int64 // events finished and acknowledged
	Sends, Sent, SendFailures, DeadLettered, Ignored int64
}

// Watcher runs the feed. Start and Stop it once.
type Watcher struct {
	cfg   Config
	store store.Store
	mail  Sender
	log   *slog.Logger
	now   func() time.Time

	handled, sends, sent, sendFailures, deadLettered, ignored atomic.Int64
	rand                                                      func() float64 // jitter draws

	sub      store.Subscription
	cancel   context.CancelFunc // stops the reader
	abort    context.CancelFunc // aborts in-flight work
	stopping chan struct{}
	reader   sync.WaitGroup
	workers  sync.WaitGroup
}

// New returns a watcher; now may be nil for time.Now.
func New(cfg Config, st store.Store, mail Sender, log *slog.Logger, now func() time.Time) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return &Watcher{
		cfg: cfg.withDefaults(), store: st, mail: mail, now: now, rand: rand.Float64,
		log: log.With("component", "watcher"),
	}, nil
}

// Stats returns the counters.
func (w *Watcher) Stats() Stats {
	return Stats{
		Handled: w.handled.Load(),
		Sends:   w.sends.Load(), Sent: w.sent.Load(), SendFailures: w.sendFailures.Load(),
		DeadLettered: w.deadLettered.Load(), Ignored: w.ignored.Load(),
	}
}

// Start subscribes to the feed and starts the reader and the workers. It
// does not block.
func (w *Watcher) Start(ctx context.Context) error {
	sub, err := w.store.Subscribe(ctx, w.cfg.FeedName, []string{order.Inbound, order.Retry}, store.FeedOptions{FromNow: w.cfg.FromNow})
	if err != nil {
		return fmt.Errorf("start watcher: %w", err)
	}
	w.sub = sub
	readCtx, cancel := context.WithCancel(context.Background())
	workCtx, abort := context.WithCancel(context.Background())
	w.cancel, w.abort = cancel, abort
	w.stopping = make(chan struct{})

	shards := make([]chan store.Event, w.cfg.Workers)
	for i := range shards {
		shards[i] = make(chan store.Event, 4)
		w.workers.Add(1)
		go w.work(workCtx, shards[i])
	}
	w.reader.Add(1)
	go w.read(readCtx, shards)
	w.log.Info("watching", "feed", w.cfg.FeedName, "workers", w.cfg.Workers)
	return nil
}

// Stop stops reading, lets in-flight events finish (then aborts them:
// unacknowledged, they come back after a restart) and saves the checkpoint.
// In-flight events get four fifths of ctx's time, saving the checkpoint
// half of the rest, and the rest is left for whatever stops after it: fx
// runs no further stop hook once the deadline has passed, and the store
// must close.
func (w *Watcher) Stop(ctx context.Context) error {
	grace, save := ctx, ctx
	if dl, ok := ctx.Deadline(); ok {
		reserve := time.Until(dl) / 5
		var cancelGrace, cancelSave context.CancelFunc
		grace, cancelGrace = context.WithDeadline(ctx, dl.Add(-reserve))
		save, cancelSave = context.WithDeadline(ctx, dl.Add(-reserve/2))
		defer cancelGrace()
		defer cancelSave()
	}
	w.cancel()
	w.reader.Wait()
	close(w.stopping)
	done := make(chan struct{})
	go func() { w.workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-grace.Done():
		w.log.Warn("in-flight events did not finish in time; they will be replayed", "error", grace.Err())
		w.abort()
		<-done
	}
	w.abort()
	if err := w.sub.Close(save); err != nil {
		return fmt.Errorf("stop watcher: %w", err)
	}
	w.log.Info("stopped", "sends", w.sends.Load(), "sent", w.sent.Load())
	return nil
}

func (w *Watcher) read(ctx context.Context, shards []chan store.Event) {
	defer w.reader.Done()
	backoff := newBackoff()
	for {
		ev, err := w.sub.Next(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.log.Warn("read change feed", "error", err, "retry_in", backoff.peek())
			if !backoff.wait(ctx) {
				return
			}
			continue
		}
		backoff.reset()
		select {
		case shards[shardOf(ev.Key, len(shards))] <- ev:
		case <-ctx.Done():
			return // not acknowledged: read again after a restart
		}
	}
}

func shardOf(key string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

func (w *Watcher) work(ctx context.Context, events <-chan store.Event) {
	defer w.workers.Done()
	for {
		select {
		case <-w.stopping:
			return // queued events stay unacknowledged and are replayed
		case ev := <-events:
			if !w.complete(ctx, ev) {
				return
			}
		}
	}
}

// complete handles ev until its outcome is written, trying again after an
// error: skipping it would pin the checkpoint behind it and leave the order
// alone until a restart. The orders behind it on this worker wait meanwhile.
// It returns false when the watcher stops first; ev is then replayed.
func (w *Watcher) complete(ctx context.Context, ev store.Event) bool {
	b := newBackoff()
	for {
		select {
		case <-w.stopping:
			return false
		default:
		}
		err := w.handle(ctx, ev)
		if err == nil {
			ev.Ack()
			w.handled.Add(1)
			return true
		}
		if ctx.Err() != nil {
			return false // aborted at shutdown
		}
		w.log.Warn("change not done; trying again", "collection", ev.Collection, "key", ev.Key,
			"error", err, "retry_in", b.peek())
		if !b.waitUnless(ctx, w.stopping) {
			return false
		}
	}
}

// handle carries out the decision for one event. It returns an error only
// when the outcome could not be written; the event is then not acknowledged.
func (w *Watcher) handle(ctx context.Context, ev store.Event) error {
	d := Decide(changeOf(ev), w.cfg.MaxOrderBytes)
	log := w.log.With("collection", ev.Collection, "key", ev.Key)
	switch d.Action {
	case DeadLetter:
		if ev.Collection == order.Retry {
			return w.retryDeadLetter(ctx, log, ev.Key, order.RetryDoc{DocID: ev.Key}, d.Reason, 0, d.Detail)
		}
		return w.sendOrder(ctx, log, ev.Key) // re-reads the order and dead-letters it if still bad
	case SendOrder:
		return w.sendOrder(ctx, log, ev.Key)
	case SendRetry:
		return w.sendRetry(ctx, log, ev.Key)
	}
	w.ignored.Add(1)
	log.Debug("ignore", "reason", d.Reason)
	return nil
}

// get reads a document, trying again while the store is unavailable;
// found is false for a missing document.
func (w *Watcher) get(ctx context.Context, log *slog.Logger, coll, key string) (doc store.Doc, found bool, err error) {
	err = w.retryStore(ctx, log, "read "+coll, func() error {
		var err error
		doc, err = w.store.Get(ctx, coll, key)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return store.Doc{}, false, nil
	}
	return doc, err == nil, err
}

// sendOrder is function 1: the first send of a paid, unconfirmed order.
func (w *Watcher) sendOrder(ctx context.Context, log *slog.Logger, key string) error {
	doc, found, err := w.get(ctx, log, order.Inbound, key)
	if err != nil || !found {
		w.ignored.Add(1)
		return err
	}
	// Decide again on the current order: the event may be stale.
	d := Decide(Change{Collection: order.Inbound, Key: key, Value: doc.Value}, w.cfg.MaxOrderBytes)
	if d.Action == Ignore {
		w.ignored.Add(1)
		return nil
	}
	// A retry document means a first send already failed: the retry owns it.
	if _, found, err := w.get(ctx, log, order.Retry, key); err != nil || found {
		w.ignored.Add(1)
		return err
	}
	dl, dead, err := w.deadLetterOf(ctx, log, key)
	if err != nil {
		return err
	}
	if dead && !dl.ClearedByOrderChange() {
		w.ignored.Add(1)
		log.Debug("ignore", "reason", "dead-lettered ("+dl.Reason+"); redrive to send")
		return nil
	}
	if d.Action == DeadLetter {
		return w.writeDeadLetter(ctx, log, order.DeadLetterDoc{DocID: key, Reason: d.Reason, LastError: d.Detail})
	}

	attempt := order.RetryDoc{Type: order.TypeConfirmation, DocID: key}
	if sendErr := w.send(ctx, key, doc.Value); sendErr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return w.recordFailure(ctx, log, key, attempt, 0, sendErr)
	}
	log.Info("confirmation sent", "attempt", 1)
	if err := w.markConfirmed(ctx, log, key); err != nil {
		return err
	}
	if dead {
		return w.remove(ctx, log, order.DeadLetter, key)
	}
	return nil
}

// sendRetry is function 2: the resend of a retry document flagged fireRetry.
func (w *Watcher) sendRetry(ctx context.Context, log *slog.Logger, key string) error {
	rdoc, found, err := w.get(ctx, log, order.Retry, key)
	if err != nil || !found {
		w.ignored.Add(1)
		return err
	}
	r, err := order.DecodeRetryDoc(rdoc.Value)
	if err != nil {
		return w.retryDeadLetter(ctx, log, key, order.RetryDoc{DocID: key}, order.ReasonMalformedRetry, 0, err.Error())
	}
	if !r.FireRetry {
		w.ignored.Add(1) // changed since the event; its own event decides
		return nil
	}
	log = log.With("order_id", r.DocID, "attempt", r.Attempt+1)
	claimCAS, err := w.claim(ctx, log, key, r, rdoc.CAS)
	if errors.Is(err, errClaimLost) {
		w.ignored.Add(1)
		log.Debug("ignore", "reason", "claimed by another instance")
		return nil
	}
	if err != nil {
		return err
	}

	odoc, found, err := w.get(ctx, log, order.Inbound, r.DocID)
	if err != nil {
		return err
	}
	if !found {
		return w.retryDeadLetter(ctx, log, key, r, order.ReasonOrderMissing, 0, "no order "+r.DocID+" in "+order.Inbound)
	}
	o, err := order.DecodeOrder(odoc.Value)
	switch {
	case err != nil:
		return w.retryDeadLetter(ctx, log, key, r, order.ReasonMalformedOrder, 0, err.Error())
	case o.ConfirmationEmailSent:
		log.Info("order already confirmed; retry dropped")
		return w.finishRetry(ctx, log, key, r.DocID)
	case o.PaymentStatus != order.StatusPaid:
		log.Warn("order is no longer paid; retry dropped", "payment_status", o.PaymentStatus)
		return w.remove(ctx, log, order.Retry, key)
	case o.Email == "":
		return w.retryDeadLetter(ctx, log, key, r, order.ReasonNoEmail, 0, "paid order has no email address")
	}
	if sendErr := w.send(ctx, r.DocID, odoc.Value); sendErr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return w.recordFailure(ctx, log, key, r, claimCAS, sendErr)
	}
	log.Info("confirmation sent")
	if err := w.markConfirmed(ctx, log, r.DocID); err != nil {
		return err
	}
	return w.finishRetry(ctx, log, key, r.DocID)
}

// finishRetry removes the retry document and a dead letter a redrive
// interrupted by a crash may have left behind.
func (w *Watcher) finishRetry(ctx context.Context, log *slog.Logger, key, orderKey string) error {
	if err := w.remove(ctx, log, order.Retry, key); err != nil {
		return err
	}
	return w.remove(ctx, log, order.DeadLetter, orderKey)
}

func (w *Watcher) send(ctx context.Context, orderKey string, body []byte) error {
	w.sends.Add(1)
	err := w.mail.Send(ctx, order.IdempotencyKey(orderKey), body)
	if err != nil {
		w.sendFailures.Add(1)
		return err
	}
	w.sent.Add(1)
	return nil
}

// failureOf reads what the policy needs from a send error. Anything that is
// not a classified *mailer.SendError is taken as transient.
func failureOf(err error) (order.Failure, int) {
	var se *mailer.SendError
	if !errors.As(err, &se) {
		return order.Failure{}, 0
	}
	return order.Failure{Permanent: se.Class == mailer.Permanent, RetryAfter: se.RetryAfter, NotAttempted: se.NotAttempted}, se.Status
}

var errClaimLost = errors.New("retry document claimed by someone else")

// claim takes a flagged retry document for this send: fireRetry off and
// nextAttemptAt a ClaimTTL away, written with the CAS it was read with. Of
// several instances that saw it, one wins; if the winner dies, the sweep
// flags the document again once the claim has run out.
func (w *Watcher) claim(ctx context.Context, log *slog.Logger, key string, r order.RetryDoc, cas uint64) (uint64, error) {
	r.FireRetry = false
	r.NextAttemptAt = w.now().Add(w.cfg.ClaimTTL).UnixMilli()
	var claimCAS uint64
	err := w.retryStore(ctx, log, "claim retry document", func() error {
		var err error
		claimCAS, err = w.store.Replace(ctx, order.Retry, key, r.Encode(), cas)
		if errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrNotFound) {
			return errClaimLost
		}
		return err
	})
	return claimCAS, err
}

// recordFailure asks the policy what follows a failed send, and writes it:
// the retry document with its next attempt time, or a dead letter. prev is
// the retry document the send was made for, claimCAS its CAS once claimed
// (0 for a first send, which has no retry document yet).
func (w *Watcher) recordFailure(ctx context.Context, log *slog.Logger, key string, prev order.RetryDoc, claimCAS uint64, sendErr error) error {
	existing := claimCAS != 0
	now := w.now()
	f, status := failureOf(sendErr)
	next := prev
	if !f.NotAttempted {
		next = prev.Failed(now)
	} else if next.TS == 0 {
		next.TS = now.UnixMilli()
	}
	next.FireRetry = false
	next.LastStatus = status
	next.LastError = truncate(sendErr.Error(), 300)

	v := w.cfg.Policy.Next(next.Attempt, now, f, w.rand())
	if v.GiveUp {
		if !existing {
			return w.writeDeadLetter(ctx, log, deadLetterOf(next, v.Reason, now))
		}
		return w.retryDeadLetter(ctx, log, key, next, v.Reason, status, next.LastError)
	}
	next.NextAttemptAt = v.At.UnixMilli()
	if v.ByQuantum {
		next.NextAttemptAt = 0
	}
	log.Info("send failed, retry scheduled", "error", sendErr, "attempts", next.Attempt,
		"retry_in", v.At.Sub(now).Round(time.Millisecond), "breaker_open", f.NotAttempted)

	if !existing {
		err := w.retryStore(ctx, log, "write retry document", func() error {
			_, err := w.store.Insert(ctx, order.Retry, key, next.Encode())
			return err
		})
		if errors.Is(err, store.ErrExists) {
			return nil // written before a crash; the retry goes on from there
		}
		return err
	}
	return w.retryStore(ctx, log, "update retry document", func() error {
		_, err := w.store.Replace(ctx, order.Retry, key, next.Encode(), claimCAS)
		if errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrNotFound) {
			log.Info("retry document changed during the send (a redrive?); leaving the newer one")
			return nil
		}
		return err
	})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func deadLetterOf(r order.RetryDoc, reason string, now time.Time) order.DeadLetterDoc {
	return order.DeadLetterDoc{
		DocID: r.DocID, Reason: reason, LastStatus: r.LastStatus, LastError: r.LastError,
		Attempts: r.Attempt, FirstAttemptAt: r.FirstAttemptAt, LastAttemptAt: r.TS,
		DeadAt: now.UnixMilli(), RedriveCount: r.RedriveCount,
	}
}

// retryDeadLetter moves the work of a retry document to a dead letter:
// first the dead letter, then the retry document goes, so a crash between
// the two only repeats the work.
func (w *Watcher) retryDeadLetter(ctx context.Context, log *slog.Logger, key string, r order.RetryDoc, reason string, status int, detail string) error {
	if r.DocID == "" {
		r.DocID = key
	}
	r.LastStatus, r.LastError = status, detail
	if err := w.writeDeadLetter(ctx, log, deadLetterOf(r, reason, w.now())); err != nil {
		return err
	}
	return w.remove(ctx, log, order.Retry, key)
}

func (w *Watcher) writeDeadLetter(ctx context.Context, log *slog.Logger, d order.DeadLetterDoc) error {
	d.Type = order.TypeConfirmation
	if d.DeadAt == 0 {
		d.DeadAt = w.now().UnixMilli()
	}
	w.deadLettered.Add(1)
	log.Warn("dead-lettered", "order_id", d.DocID, "reason", d.Reason, "detail", d.LastError, "attempts", d.Attempts)
	return w.retryStore(ctx, log, "write dead letter", func() error {
		_, err := w.store.Upsert(ctx, order.DeadLetter, d.DocID, d.Encode())
		return err
	})
}

func (w *Watcher) deadLetterOf(ctx context.Context, log *slog.Logger, key string) (order.DeadLetterDoc, bool, error) {
	doc, found, err := w.get(ctx, log, order.DeadLetter, key)
	if err != nil || !found {
		return order.DeadLetterDoc{}, false, err
	}
	d, err := order.DecodeDeadLetter(doc.Value)
	if err != nil {
		// Unreadable: treat it as a send-related dead letter, so that only
		// an operator's redrive or purge lets the order go out again.
		return order.DeadLetterDoc{DocID: key, Reason: "unreadable"}, true, nil
	}
	return d, true, nil
}

// remove deletes a document if it is there.
func (w *Watcher) remove(ctx context.Context, log *slog.Logger, coll, key string) error {
	err := w.retryStore(ctx, log, "delete from "+coll, func() error {
		return w.store.Remove(ctx, coll, key, 0)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// markConfirmed sets confirmationEmailSent on the order, keeping whatever
// else changed in it meanwhile: a CAS mismatch reads it again.
func (w *Watcher) markConfirmed(ctx context.Context, log *slog.Logger, key string) error {
	err := w.retryStore(ctx, log, "mark order confirmed", func() error {
		for {
			doc, err := w.store.Get(ctx, order.Inbound, key)
			if err != nil {
				return err
			}
			marked, err := order.MarkConfirmed(doc.Value)
			if err != nil {
				return err
			}
			_, err = w.store.Replace(ctx, order.Inbound, key, marked, doc.CAS)
			if !errors.Is(err, store.ErrCASMismatch) {
				return err
			}
		}
	})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, order.ErrMalformed) {
		log.Warn("order changed under the send; not marked", "error", err)
		return nil
	}
	return err
}

// retryStore runs op until it succeeds, fails for good, or ctx ends. An
// unavailable store is tried again; other errors, a CAS mismatch among them,
// are the caller's to judge.
func (w *Watcher) retryStore(ctx context.Context, log *slog.Logger, what string, op func() error) error {
	b := newBackoff()
	for {
		err := op()
		if !errors.Is(err, store.ErrUnavailable) {
			return err
		}
		log.Warn(what, "error", err, "retry_in", b.peek())
		if !b.wait(ctx) {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
	}
}
