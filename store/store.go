package store

import (
	"context"
	"errors"
	"slices"
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
	// ErrUnreachable, with ErrUnavailable, says the store, or the node
	// of it that holds the key, did not answer (a timeout, a connection
	// lost, the store busy with another process): its other keys there
	// would fail alike. A document locked, or a durable write of it under
	// way, is unavailable only.
	ErrUnreachable = errors.New("store unreachable")
	ErrClosed      = errors.New("store closed")
	// ErrFeedFailed says a subscription stopped for good (a watched
	// collection is gone, access was revoked): reading it again cannot
	// help, a person must fix the cause and restart.
	ErrFeedFailed = errors.New("change feed failed")
)

// WithSharedCommit marks the writes made under ctx as one writer's among
// many concurrent ones (the watcher's workers): a store that commits in
// groups may hold them a moment for others to join the same commit. Writes
// without it (a command's, one after another) are committed at once, so
// that a caller waiting for each write is not held for writers that are
// not there.
func WithSharedCommit(ctx context.Context) context.Context {
	return context.WithValue(ctx, sharedCommitKey{}, true)
}

// SharedCommit says whether ctx carries WithSharedCommit.
func SharedCommit(ctx context.Context) bool {
	v, _ := ctx.Value(sharedCommitKey{}).(bool)
	return v
}

type sharedCommitKey struct{}

// FeedStats is what a subscription that can tell reports of itself.
type FeedStats struct {
	Partitions  int // streamed by this instance
	StreamsOpen int
	// Lag is, summed over the partitions and at most for one, how many
	// changes the store has past the checkpoint.
	Lag, MaxLag                                uint64
	Rollbacks, Reopens, CheckpointSaveFailures uint64

	// A store whose instances share the partitions among themselves
	// (Couchbase without a fixed split): this instance's name, the
	// members as its last heartbeat read them, and since it started the
	// partitions it claimed, handed over, and lost to another member.
	Member                    string
	Members                   []Member
	Claimed, Released, Fenced uint64
	// Aside: this instance stepped aside (its sends were held back while
	// another's went out) and streams nothing until it tries again.
	Aside bool
}

// AnotherSends says whether a member other than this instance sends
// (Member.Sends), as this instance's last heartbeat read the members
// document.
func (s FeedStats) AnotherSends() bool {
	return slices.ContainsFunc(s.Members, func(m Member) bool { return m.Name != s.Member && m.Sends() })
}

// DefaultFeed names the service's feed (its checkpoints, its members)
// unless it is told otherwise.
const DefaultFeed = "ordermail"

// MemberLister is a store whose instances share a feed's partitions among
// themselves (Couchbase without a fixed split): Members reads them as the
// feed's members document has them now.
type MemberLister interface {
	Members(ctx context.Context, feed string) ([]Member, error)
}

// Member is one instance among those that share a feed's partitions.
type Member struct {
	Name         string
	HeartbeatAge time.Duration // since its last heartbeat
	Partitions   int           // it owned at its last heartbeat
	Live         bool          // its heartbeat has not expired, and it has not left
	Leaving      bool          // it stopped cleanly
	// Held: its sends were all held back at its last heartbeat. Aside: so
	// long, while another's went out, that it handed its partitions to
	// the others (live, it takes none until it tries again).
	Held, Aside bool
}

// Sends says m's sends go out: it is live, not held back, not aside. A
// member steps aside only while another sends, and a probing instance
// leaves the sweep to one that sends.
func (m Member) Sends() bool { return m.Live && !m.Held && !m.Aside }

// State is m's state in a word: live; aside (live, stepped aside);
// stale (its heartbeat expired: stopped or cut off); leaving (stopped
// cleanly).
func (m Member) State() string {
	switch {
	case m.Live && m.Aside:
		return "aside"
	case m.Live:
		return "live"
	case m.Leaving:
		return "leaving"
	}
	return "stale"
}

// StatsReporter is a Subscription that reports FeedStats.
type StatsReporter interface {
	FeedStats() FeedStats
}

// Meta is the collection of ordermail's own bookkeeping (leases); the
// Couchbase store keeps it in the metadata bucket. It is not on the feed.
const Meta = "_meta"

// Doc is one stored document.
type Doc struct {
	Key   string
	Value []byte // JSON
	CAS   uint64 // 0: the document does not exist
	// Incarnation changes only when the key is created anew (after a
	// removal, or for the first time); 0 when the store cannot tell.
	Incarnation uint64
	// Sent is the idempotency key this very document's confirmation went
	// out under, where the store keeps it with the document (Write.Sent):
	// on Couchbase an extended attribute, which a full-body write of the
	// order keeps and its deletion drops. Read with the order by State;
	// empty where none was kept, and on the embedded store, whose attempt
	// record says it (State.Attempts).
	Sent string
}

// Found says whether the document exists.
func (d Doc) Found() bool { return d.CAS != 0 }

// State is everything stored about one order's confirmation, read at once:
// the order, its retry document and its dead letter. An absent one is a
// zero Doc. Attempts, the order's attempt record, is read only by stores that
// write an outcome in one transaction (the embedded store), where the record
// is part of it; elsewhere it is zero and read apart when needed.
type State struct {
	Order, Retry, DeadLetter Doc
	Attempts                 Doc
}

// Op is what a Write does.
type Op int

const (
	// OpInsert creates the document; it fails with ErrExists when the key is taken.
	OpInsert Op = iota + 1
	// OpReplace overwrites the document whose CAS is Write.CAS (any CAS when
	// 0); ErrNotFound or ErrCASMismatch otherwise.
	OpReplace
	// OpUpsert writes the document whatever is there.
	OpUpsert
	// OpRemove deletes the document whose CAS is Write.CAS (any CAS when 0);
	// ErrNotFound or ErrCASMismatch otherwise.
	OpRemove
)

func (o Op) String() string {
	return [...]string{"?", "insert", "replace", "upsert", "remove"}[o]
}

// Write is one guarded change of an outcome.
type Write struct {
	Op         Op
	Collection string
	Key        string
	Value      []byte // for insert, replace and upsert
	CAS        uint64 // the guard of replace and remove
	// Expiry, when not zero, is when the document written goes away by
	// itself (Couchbase's document expiry; the embedded store purges it in
	// bounded batches, without a change on the feed, as its feed moves and
	// at least once an ExpireInterval while it does not).
	Expiry time.Time
	// Sent, on a replace of an order that marks it confirmed, is the
	// idempotency key its confirmation went out under, kept with the
	// document in the same write where the store can (Doc.Sent); the
	// embedded store, which records it in the outcome's transaction
	// (State.Attempts), ignores it.
	Sent string
}

// WriteError names the write of an outcome whose guard failed; it wraps
// ErrExists, ErrNotFound or ErrCASMismatch.
type WriteError struct {
	Write Write
	Err   error
}

func (e *WriteError) Error() string {
	return e.Write.Op.String() + " " + e.Write.Collection + "/" + e.Write.Key + ": " + e.Err.Error()
}

func (e *WriteError) Unwrap() error { return e.Err }

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
	// Locus is where the partition was when the event was read: on
	// Couchbase the node holding it (as a revision of the cluster's map
	// names it, -1 unknown); 0 on the embedded store. The keys of one
	// locus are reachable, or not, together.
	Locus int
	Seq   uint64 // position in its partition
	// Incarnation is the document's, as in Doc.
	Incarnation uint64
	// State, when the feed can give it, is the state of the event's key as
	// it was when the event was read (the embedded store reads it with the
	// event, in one query). It includes every write the store had made up
	// to Snapshot, its position then; a reader that wrote the key after
	// that must read the state again.
	State    *State
	Snapshot uint64
	// StateAt is when State was read, taken before the read began: a
	// write done before it is in State. What others wrote since (the order
	// system cancelling the order, an operator dropping its retry) is in
	// no snapshot: a reader holding an event for long reads it again.
	StateAt time.Time

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
	// SkipSettled lets the store leave out the changes a consumer whose
	// outcomes are atomic ignores without reading anything else: deletions,
	// confirmed orders (every confirmation is one), and readable retry
	// documents not flagged fireRetry (every failed send writes one) that
	// are due within order.FarFuture (one due later is delivered, to be
	// warned about). On a busy feed they are most of the changes. A store that
	// cannot tell them apart delivers them anyway. A store may keep no record
	// of a deletion that no subscription saved without SkipSettled wants
	// (the embedded store then deletes the row, where it would keep a
	// tombstone).
	SkipSettled bool
	// SendsHeld, when set, says whether the consumer's sends are all held
	// back now (held: its circuit breaker or configuration gate is open),
	// or the next goes out as the probe that decides (probing). A store
	// whose instances share the partitions (Couchbase without a fixed
	// split) hands those of an instance whose sends stay held, while
	// another's go out, to the others: its way to the email service is
	// broken, theirs is not.
	SendsHeld func() (held, probing bool)
	// LocusHeld, when set, says whether the consumer holds back the events
	// of a locus (Event.Locus: the store did not answer for its keys). A
	// store whose loci stream apart (Couchbase: a node's vBuckets) hands out
	// no more of a held locus's changes until it is not held: they wait in
	// the stream, not in the consumer, while the other loci's go on.
	LocusHeld func(locus int) bool
}

// SweepResult counts what one sweep batch flagged.
type SweepResult struct {
	Flagged int
	// More is true when the batch was full: more due documents may wait.
	More bool
}

// Counts is what operators watch.
type Counts struct {
	OrdersPaid      int // paymentStatus == "paid"
	OrdersConfirmed int // paid and confirmationEmailSent
	// OrdersCountedAt is when OrdersPaid and OrdersConfirmed were counted
	// where they may be older than the rest (Couchbase, where counting
	// them goes over an index entry for every paid order: it is done at
	// most every OrderCountsTTL); zero where they are counted with it.
	OrdersCountedAt time.Time
	RetryDocs       int // documents in retry, allow_retrys not counted
	RetryFlagged    int // retry documents with fireRetry set
	DeadLetters     int // documents in deadletter
}

// Tally is how many retries or dead letters are there for one reason.
type Tally struct {
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// RetryTally names the retries that wait for why (order.RetryDoc.Why)
// among Backlog's reasons: "retrying: HTTP 503", or "retrying" for those
// that record no failure.
func RetryTally(why string) string {
	if why == "" {
		return "retrying"
	}
	return "retrying: " + why
}

// Backlog is what the status shows of the retries waiting.
type Backlog struct {
	Due int // flagged, or due by nextAttemptAt or ts
	// OldestDue is when the longest-waiting due retry fell due, flagged or
	// not (the sweep flags ahead of the sends: a backlog waits flagged);
	// one flagged by hand before it fell due counts as due now. Zero when
	// none is.
	OldestDue time.Time
}

// Store is what ordermail needs from a database.
type Store interface {
	Get(ctx context.Context, collection, key string) (Doc, error)
	// State reads an order's confirmation state.
	State(ctx context.Context, key string) (State, error)
	// Apply makes the writes of one outcome. On the embedded store they are
	// one transaction: all or none. On Couchbase they are made one by one in
	// the order given, each guarded by its CAS, stopping at the first that
	// fails: the caller orders them so that every prefix is safe. The CAS
	// of each write made is returned (for a removal, the position of the
	// deletion where the store has one, else 0). A failed guard is a
	// *WriteError, returned with the CAS of each write made before it: none
	// on the embedded store, which undoes them; on Couchbase those writes
	// stay.
	Apply(ctx context.Context, writes []Write) ([]uint64, error)
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

	// SweepRetries sets fireRetry on at most limit due retry documents that
	// are not flagged already, the control document aside, oldest due first
	// whether due by nextAttemptAt or by ts (on Couchbase exactly for a
	// sweep of up to 16, as the timer's probe of an email service that is
	// down, one; a larger one in the order of its index scans).
	// A document is due when its nextAttemptAt (ms) is at or before now or,
	// for documents without one (the sample's), when its ts (ms) is more than
	// quantum before now. Each flagged document is a change on the feed. Its
	// cost is proportional to limit, not to the number of retry documents.
	SweepRetries(ctx context.Context, now time.Time, quantum time.Duration, limit int) (SweepResult, error)
	// FlaggedRetries counts the retry documents flagged (fireRetry set)
	// and not yet taken, read afresh: the sweep flags no further ahead of
	// the sends than they take. Its cost follows the flagged documents at
	// most, never the other retries.
	FlaggedRetries(ctx context.Context) (int, error)

	// Scan calls fn for every document in collection whose key comes after
	// after ("": from the first), in key order, until fn returns an error.
	// fn may write to the store. A reader of pages ends one by returning an
	// error of its own from fn, and starts the next with the last key it
	// saw as after: the store reads from there on its key index, whatever
	// came before.
	Scan(ctx context.Context, collection, after string, fn func(Doc) error) error
	// ScanDeadLetters is Scan of the dead letters whose reason is reason,
	// read on an index of the reason: its cost grows with them, not with
	// the other dead letters. It may call fn for an unreadable dead letter
	// too (Couchbase: its reason field is reason, but it lacks what
	// order.DecodeDeadLetter needs); callers decode each and check.
	ScanDeadLetters(ctx context.Context, reason, after string, fn func(Doc) error) error
	// ScanRetries is Scan of the retry documents that wait for why (what
	// order.RetryDoc.Why says of them; "": no failure recorded), read on
	// an index of that reason: its cost grows with them, not with the
	// other retries. Either store may call fn for others (the control
	// document, an unreadable one): callers decode each and check.
	ScanRetries(ctx context.Context, why, after string, fn func(Doc) error) error

	// Counts reads the numbers operators watch. On the embedded store it
	// costs the same whatever the number of documents; on Couchbase the
	// paid and confirmed orders are index counts, which go over an entry
	// for every paid order, and are served from a count up to
	// --cb-order-counts-ttl (1m) old (Counts.OrdersCountedAt; the others
	// cost the same whatever the number).
	Counts(ctx context.Context) (Counts, error)
	// Backlog reads the due retries at now (quantum as in SweepRetries);
	// its cost grows with the due documents only. Every instance's metrics
	// read it all the time.
	Backlog(ctx context.Context, now time.Time, quantum time.Duration) (Backlog, error)
	// Reasons reads the five most common reasons of retries and dead
	// letters together (RetryTally's names for retries, "dead: " and the
	// reason for dead letters), the most common first. The status and the
	// console ask for them; the metrics do not. The embedded store keeps
	// them with its writes; Couchbase counts them on the indexes of the
	// reasons, whose entries it reads.
	Reasons(ctx context.Context) ([]Tally, error)

	Close() error
}

// ReadFigures reads what operators watch: the counts, then the backlog.
// The two are read a moment apart, and a busy service flags and settles
// retries in between: its due count is brought within what the counts
// allow (a flagged retry is due, a due one is pending), so that no status
// or scrape says "100 flagged, 90 due now".
func ReadFigures(ctx context.Context, st Store, now time.Time, quantum time.Duration) (Counts, Backlog, error) {
	c, err := st.Counts(ctx)
	if err != nil {
		return Counts{}, Backlog{}, err
	}
	b, err := st.Backlog(ctx, now, quantum)
	if err != nil {
		return Counts{}, Backlog{}, err
	}
	b.Due = min(max(b.Due, c.RetryFlagged), c.RetryDocs)
	return c, b, nil
}

// browsingKey marks, in its context, the scans of a page an operator
// browses (Browsing).
type browsingKey struct{}

// Browsing marks ctx's scans as those of a page an operator browses: a
// store whose indexes lag its writes (Couchbase's) answers from them as
// they are, without waiting for them to catch up with every write before
// the scan, which under an outage's write load can outlast the query's
// timeout and leave the console without a page. A document written a
// moment before may be missing from the page; every one listed is read as
// it is now. Bulk actions do not browse: they wait, not to miss any.
func Browsing(ctx context.Context) context.Context {
	return context.WithValue(ctx, browsingKey{}, true)
}

// IsBrowsing says whether ctx's scans browse (Browsing).
func IsBrowsing(ctx context.Context) bool {
	b, _ := ctx.Value(browsingKey{}).(bool)
	return b
}
