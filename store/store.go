package store

import (
	"context"
	"errors"
	"time"
)

// Errors every implementation maps its own failures to, so that no other
// package needs to know the technology behind the store.
var (
	ErrNotFound    = errors.New("document not found")
	ErrExists      = errors.New("document already exists")
	ErrCASMismatch = errors.New("document changed since it was read (CAS mismatch)")
	// ErrUnavailable wraps failures that may clear by themselves (a locked
	// database, a timeout, a node down): the caller may try again later.
	ErrUnavailable = errors.New("store unavailable")
	ErrClosed      = errors.New("store closed")
)

// Meta is the collection of ordermail's own bookkeeping (leases); the
// Couchbase store keeps it in the metadata bucket. It is not on the feed.
const Meta = "_meta"

// Doc is one stored document.
type Doc struct {
	Key   string
	Value []byte // JSON
	CAS   uint64
}

// Event is one change on the feed: the document's state after the change,
// or its deletion. Like DCP, the feed may skip intermediate states of a key
// but always delivers its latest one.
type Event struct {
	Collection string
	Key        string
	Value      []byte // nil when Deleted
	Deleted    bool
	CAS        uint64
	Partition  uint16 // vBucket for Couchbase, 0 for the embedded store
	Seq        uint64 // position in its partition

	// Ack must be called exactly once, after the event's outcome has been
	// written. Events may be acknowledged in any order; the checkpoint never
	// moves past an event that has not been acknowledged.
	Ack func()
}

// Subscription is an open change feed.
type Subscription interface {
	// Next blocks until the next event, ctx ends, or the feed fails.
	Next(ctx context.Context) (Event, error)
	// Close stops the feed and saves the checkpoint of what was
	// acknowledged, giving up on the save when ctx ends.
	Close(ctx context.Context) error
}

// FeedOptions say where a subscription without a saved checkpoint starts.
type FeedOptions struct {
	// FromNow starts a subscription that has no checkpoint at the current end
	// of the feed instead of its beginning.
	FromNow bool
}

// SweepResult counts what one sweep flagged.
type SweepResult struct {
	Flagged int
}

// Counts is what operators watch.
type Counts struct {
	OrdersPaid      int // paymentStatus == "paid"
	OrdersConfirmed int // paid and confirmationEmailSent
	RetryDocs       int // documents in retry, allow_retrys not counted
	RetryFlagged    int // retry documents with fireRetry set
	DeadLetters     int // documents in deadletter
}

// Store is what ordermail needs from a database.
type Store interface {
	Get(ctx context.Context, collection, key string) (Doc, error)
	// Insert fails with ErrExists when the key is taken.
	Insert(ctx context.Context, collection, key string, value []byte) (uint64, error)
	// Replace fails with ErrNotFound, or ErrCASMismatch when cas is not zero
	// and the document changed since it was read.
	Replace(ctx context.Context, collection, key string, value []byte, cas uint64) (uint64, error)
	Upsert(ctx context.Context, collection, key string, value []byte) (uint64, error)
	// Remove fails with ErrNotFound, or ErrCASMismatch as Replace.
	Remove(ctx context.Context, collection, key string, cas uint64) error

	// Subscribe opens the change feed over collections, resuming after the
	// checkpoint saved under name.
	Subscribe(ctx context.Context, name string, collections []string, opts FeedOptions) (Subscription, error)

	// SweepRetries sets fireRetry on every due retry document that is not
	// flagged already, the control document aside. A document is due when its
	// nextAttemptAt (ms) is at or before now or, for documents without one
	// (the sample's), when its ts (ms) is more than quantum before now. Each
	// flagged document is a change on the feed.
	SweepRetries(ctx context.Context, now time.Time, quantum time.Duration) (SweepResult, error)

	// Scan calls fn for every document in collection, in key order, until fn
	// returns an error. fn may write to the store.
	Scan(ctx context.Context, collection string, fn func(Doc) error) error

	// Counts reads the numbers operators watch.
	Counts(ctx context.Context) (Counts, error)

	Close() error
}
