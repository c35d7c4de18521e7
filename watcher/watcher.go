package watcher

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

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
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if c.Workers < 0 || c.Workers > 1024 {
		return fmt.Errorf("workers: %d is not between 1 and 1024", c.Workers)
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
	return c
}

// Sender sends one confirmation; nil means the service answered 200.
type Sender interface {
	Send(ctx context.Context, idempotencyKey string, order []byte) error
}

// Stats counts what the watcher did since it started.
type Stats struct {
	Handled                                     int64 // events finished and acknowledged
	Sends, Sent, SendFailures, Skipped, Ignored int64
}

// Watcher runs the feed. Start and Stop it once.
type Watcher struct {
	cfg   Config
	store store.Store
	mail  Sender
	log   *slog.Logger
	now   func() time.Time

	handled, sends, sent, sendFailures, skipped, ignored atomic.Int64

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
		cfg: cfg.withDefaults(), store: st, mail: mail, now: now,
		log: log.With("component", "watcher"),
	}, nil
}

// Stats returns the counters.
func (w *Watcher) Stats() Stats {
	return Stats{
		Handled: w.handled.Load(),
		Sends:   w.sends.Load(), Sent: w.sent.Load(), SendFailures: w.sendFailures.Load(),
		Skipped: w.skipped.Load(), Ignored: w.ignored.Load(),
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

// Stop stops reading, lets in-flight events finish until ctx ends (then
// aborts them: unacknowledged, they come back after a restart) and saves the
// checkpoint.
func (w *Watcher) Stop(ctx context.Context) error {
	w.cancel()
	w.reader.Wait()
	close(w.stopping)
	done := make(chan struct{})
	go func() { w.workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.log.Warn("in-flight events did not finish in time; they will be replayed", "error", ctx.Err())
		w.abort()
		<-done
	}
	w.abort()
	if err := w.sub.Close(); err != nil {
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
			select {
			case <-w.stopping:
				return
			default:
			}
			if err := w.handle(ctx, ev); err != nil {
				w.log.Warn("change left for replay", "collection", ev.Collection, "key", ev.Key, "error", err)
				continue
			}
			ev.Ack()
			w.handled.Add(1)
		}
	}
}

// handle carries out the decision for one event. It returns an error only
// when the outcome could not be written; the event is then not acknowledged.
func (w *Watcher) handle(ctx context.Context, ev store.Event) error {
	d := Decide(changeOf(ev))
	log := w.log.With("collection", ev.Collection, "key", ev.Key)
	switch d.Action {
	case Skip:
		w.skipped.Add(1)
		log.Warn("skip document", "reason", d.Reason)
		return nil
	case SendOrder:
		return w.sendOrder(ctx, log, ev.Key)
	case SendRetry:
		return w.sendRetry(ctx, log, ev.Key)
	}
	w.ignored.Add(1)
	log.Debug("ignore", "reason", d.Reason)
	return nil
}

// sendOrder is function 1.
func (w *Watcher) sendOrder(ctx context.Context, log *slog.Logger, key string) error {
	var doc store.Doc
	err := w.retryStore(ctx, log, "read order", func() error {
		var err error
		doc, err = w.store.Get(ctx, order.Inbound, key)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		w.ignored.Add(1)
		return nil
	}
	if err != nil {
		return err
	}
	if o, err := order.DecodeOrder(doc.Value); err != nil || !o.NeedsConfirmation() {
		w.ignored.Add(1) // changed since the event; its own event decides
		return nil
	}
	// A retry document means a first send already failed: the retry owns it.
	err = w.retryStore(ctx, log, "look up retry document", func() error {
		_, err := w.store.Get(ctx, order.Retry, key)
		return err
	})
	if err == nil {
		w.ignored.Add(1)
		log.Debug("ignore", "reason", "retry document exists")
		return nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return err
	}

	if sendErr := w.send(ctx, key, doc.Value); sendErr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Info("send failed, retry scheduled", "attempt", 1, "error", sendErr)
		retry := order.NewRetryDoc(key, w.now())
		err := w.retryStore(ctx, log, "write retry document", func() error {
			_, err := w.store.Insert(ctx, order.Retry, key, retry.Encode())
			return err
		})
		if errors.Is(err, store.ErrExists) {
			return nil // written before a crash; the retry goes on from there
		}
		return err
	}
	log.Info("confirmation sent", "attempt", 1)
	return w.markConfirmed(ctx, log, key)
}

// sendRetry is function 2 for a flagged retry document.
func (w *Watcher) sendRetry(ctx context.Context, log *slog.Logger, key string) error {
	var rdoc store.Doc
	err := w.retryStore(ctx, log, "read retry document", func() error {
		var err error
		rdoc, err = w.store.Get(ctx, order.Retry, key)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		w.ignored.Add(1)
		return nil
	}
	if err != nil {
		return err
	}
	r, err := order.DecodeRetryDoc(rdoc.Value)
	if err != nil || !r.FireRetry {
		w.ignored.Add(1) // changed since the event; its own event decides
		return nil
	}
	log = log.With("order_id", r.DocID, "attempt", r.Attempt+1)

	var odoc store.Doc
	err = w.retryStore(ctx, log, "read order", func() error {
		var err error
		odoc, err = w.store.Get(ctx, order.Inbound, r.DocID)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		w.skipped.Add(1)
		log.Error("retry document names an order that does not exist; left in place")
		return nil
	}
	if err != nil {
		return err
	}
	o, err := order.DecodeOrder(odoc.Value)
	if err != nil {
		w.skipped.Add(1)
		log.Error("order of retry document is malformed; left in place", "reason", err)
		return nil
	}
	if !o.ConfirmationEmailSent {
		if sendErr := w.send(ctx, r.DocID, odoc.Value); sendErr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Info("retry failed, retry scheduled", "error", sendErr)
			return w.updateRetry(ctx, log, key, func(cur order.RetryDoc) (order.RetryDoc, bool) {
				return cur.Failed(w.now()), cur.FireRetry
			})
		}
		log.Info("confirmation sent")
		if err := w.markConfirmed(ctx, log, r.DocID); err != nil {
			return err
		}
	}
	err = w.retryStore(ctx, log, "delete retry document", func() error {
		return w.store.Remove(ctx, order.Retry, key, 0)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
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

// markConfirmed sets confirmationEmailSent on the order, keeping whatever
// else changed in it meanwhile.
func (w *Watcher) markConfirmed(ctx context.Context, log *slog.Logger, key string) error {
	err := w.retryStore(ctx, log, "mark order confirmed", func() error {
		doc, err := w.store.Get(ctx, order.Inbound, key)
		if err != nil {
			return err
		}
		marked, err := order.MarkConfirmed(doc.Value)
		if err != nil {
			return err
		}
		_, err = w.store.Replace(ctx, order.Inbound, key, marked, doc.CAS)
		return err
	})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, order.ErrMalformed) {
		log.Warn("order changed under the send; not marked", "error", err)
		return nil
	}
	return err
}

// updateRetry rewrites the retry document with change, re-reading it when
// it changed since it was read; change says false to leave it alone.
func (w *Watcher) updateRetry(ctx context.Context, log *slog.Logger, key string, change func(order.RetryDoc) (order.RetryDoc, bool)) error {
	err := w.retryStore(ctx, log, "update retry document", func() error {
		doc, err := w.store.Get(ctx, order.Retry, key)
		if err != nil {
			return err
		}
		cur, err := order.DecodeRetryDoc(doc.Value)
		if err != nil {
			return err
		}
		next, ok := change(cur)
		if !ok {
			return nil
		}
		_, err = w.store.Replace(ctx, order.Retry, key, next.Encode(), doc.CAS)
		return err
	})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, order.ErrMalformed) {
		return nil
	}
	return err
}

// retryStore runs op until it succeeds, fails for good, or ctx ends. A CAS
// mismatch and an unavailable store are tried again; other errors are
// returned for the caller to judge.
func (w *Watcher) retryStore(ctx context.Context, log *slog.Logger, what string, op func() error) error {
	b := newBackoff()
	for {
		err := op()
		if err == nil || !(errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrCASMismatch)) {
			return err
		}
		if errors.Is(err, store.ErrUnavailable) {
			log.Warn(what, "error", err, "retry_in", b.peek())
		}
		if !b.wait(ctx) {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
	}
}
