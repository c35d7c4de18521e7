package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
	"golang.org/x/sync/errgroup"
)

// StartRetries creates allow_retrys with ctl's settings (zero fields are
// left out), or rewrites the one that exists with them. With no settings
// it resumes (ResumeRetries). set is the settings allow_retrys was created
// or rewritten with; dropped is the settings a pause had kept that ctl's
// stand in for. started is false when allow_retrys existed already. An
// error wrapping ErrKept comes with retries armed.
func StartRetries(ctx context.Context, st store.Store, ctl order.Control) (started bool, set, dropped order.Control, err error) {
	if ctl == (order.Control{}) {
		started, set, err = ResumeRetries(ctx, st)
		return started, set, order.Control{}, err
	}
	body := ctl.Encode()
	kept, keptErr := readKept(ctx, st) // out of reach: the flags stand all the same
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, body)
	if errors.Is(err, store.ErrExists) {
		// Armed already: the settings given are rewritten, the others
		// stand, and what a pause kept is left to the pause that kept it
		// (one under way now).
		set, err = updateControl(ctx, st, ctl)
		return false, set, order.Control{}, err
	} else if err != nil {
		return false, order.Control{}, order.Control{}, err
	}
	if keptErr != nil {
		return true, ctl, order.Control{}, keptErr
	}
	return true, ctl, kept.ctl, kept.clear(ctx, st)
}

// updateControl sets in allow_retrys the settings ctl gives, leaving the
// others as they are (a malformed document is written over), and returns
// them all. It reads again when the document changed under it, a bounded
// number of times.
func updateControl(ctx context.Context, st store.Store, ctl order.Control) (order.Control, error) {
	for range 10 {
		d, err := st.Get(ctx, order.Retry, order.ControlKey)
		if errors.Is(err, store.ErrNotFound) { // paused meanwhile: armed again with these
			if _, err = st.Insert(ctx, order.Retry, order.ControlKey, ctl.Encode()); !errors.Is(err, store.ErrExists) {
				return ctl, err
			}
			continue
		}
		if err != nil {
			return order.Control{}, err
		}
		set, _ := order.DecodeControl(d.Value)
		if ctl.Interval > 0 {
			set.Interval = ctl.Interval
		}
		if ctl.Quantum > 0 {
			set.Quantum = ctl.Quantum
		}
		if _, err = st.Replace(ctx, order.Retry, order.ControlKey, set.Encode(), d.CAS); !errors.Is(err, store.ErrCASMismatch) {
			return set, err
		}
	}
	return order.Control{}, fmt.Errorf("%s changed under each of 10 tries: try again", order.ControlKey)
}

// ResumeRetries creates allow_retrys with the settings the last pause
// kept (none when it kept none), and clears them: they are given back
// once. It leaves allow_retrys that exists as it is, and what a pause
// kept with it: armed by other means, whose settings stand, the running
// service's timer drops them (order.KeptControlKey); armed while a pause
// is under way, they are that pause's. set is the settings created with.
// Kept settings out of reach hold up no resume: it arms without them, and
// its error, wrapping ErrKept, comes with started true.
func ResumeRetries(ctx context.Context, st store.Store) (started bool, set order.Control, err error) {
	kept, keptErr := readKept(ctx, st)
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, kept.ctl.Encode())
	if errors.Is(err, store.ErrExists) {
		return false, order.Control{}, nil
	} else if err != nil {
		return false, order.Control{}, err
	}
	if keptErr != nil {
		return true, order.Control{}, keptErr
	}
	return true, kept.ctl, kept.clear(ctx, st)
}

// ErrKept says that retries were armed or paused as asked, but the
// settings a pause keeps (in ordermail's own collection: on Couchbase the
// metadata bucket) could not be read, kept or cleared: that collection out
// of reach, or the user without the right to write it. The error says
// which, and what it means.
var ErrKept = errors.New("the settings a pause keeps")

// kept is what readKept found: the settings a pause kept and the CAS of
// their document (0: none).
type kept struct {
	ctl order.Control
	cas uint64
}

// readKept reads the settings the last pause kept. A document that does
// not decode (edited by hand) gives none back, rather than holding up
// every resume; the resume then clears it.
func readKept(ctx context.Context, st store.Store) (kept, error) {
	d, err := st.Get(ctx, store.Meta, order.KeptControlKey)
	if errors.Is(err, store.ErrNotFound) {
		return kept{}, nil
	} else if err != nil {
		return kept{}, fmt.Errorf("%w could not be read, so none were given back: %w", ErrKept, err)
	}
	k, _ := order.DecodeKeptControl(d.Value)
	return kept{ctl: k.Control, cas: d.CAS}, nil
}

// clear deletes the kept settings read, unless a pause has kept others
// since (after the resume armed allow_retrys, then paused again).
func (k kept) clear(ctx context.Context, st store.Store) error {
	if k.cas == 0 {
		return nil
	}
	err := st.Remove(ctx, store.Meta, order.KeptControlKey, k.cas)
	if err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrCASMismatch) {
		return nil
	}
	return fmt.Errorf("%w were given back but not cleared, so a later resume may give them again (unless the running service's timer drops them): %w", ErrKept, err)
}

// PausedSettings is the settings the last pause kept, which a resume gives
// back; zero when there are none.
func PausedSettings(ctx context.Context, st store.Store) (order.Control, error) {
	k, err := readKept(ctx, st)
	return k.ctl, err
}

// ErrControlChanging says allow_retrys changed between each read and
// delete of a pause: someone writes it as fast as the pause reads it.
var ErrControlChanging = errors.New(order.ControlKey + " changed while it was being deleted, three times: try again")

// StopRetries deletes allow_retrys; stopped is false when it was not there.
// was is the settings the deleted document carried (zero when it carried
// none, or none that decode); they are kept (order.KeptControlKey) until a
// resume gives them back. They are kept before the document is deleted,
// so that no failure between the two loses them; kept settings out of
// reach hold up no pause, which is what stops sends to a struggling email
// service: it deletes allow_retrys all the same, and its error, wrapping
// ErrKept, comes with stopped true and was, for the operator to give them
// again by hand.
func StopRetries(ctx context.Context, st store.Store) (stopped bool, was order.Control, err error) {
	// The settings kept are the ones deleted: a change between the read
	// and the delete is read again.
	var keptCAS uint64
	var keptErr error
	// Still armed after all: what this pause kept is no pause's (unless
	// another pause has kept its own since).
	unkeep := func() {
		if keptCAS != 0 {
			st.Remove(context.WithoutCancel(ctx), store.Meta, order.KeptControlKey, keptCAS)
		}
	}
	for range 3 {
		d, err := st.Get(ctx, order.Retry, order.ControlKey)
		if errors.Is(err, store.ErrNotFound) {
			return false, order.Control{}, nil
		} else if err != nil {
			return false, order.Control{}, err
		}
		was, _ = order.DecodeControl(d.Value) // malformed: no settings to give back
		keptCAS, keptErr = keep(ctx, st, order.KeptControl{Control: was, PausedAt: time.Now()})
		err = st.Remove(ctx, order.Retry, order.ControlKey, d.CAS)
		switch {
		case err == nil:
			return true, was, keptErr
		case errors.Is(err, store.ErrNotFound):
			return false, order.Control{}, nil // paused by another meanwhile, who kept the same
		case !errors.Is(err, store.ErrCASMismatch):
			// The delete may have been made all the same (an answer
			// lost): the settings kept go only if allow_retrys is there.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			_, gerr := st.Get(rctx, order.Retry, order.ControlKey)
			cancel()
			if errors.Is(gerr, store.ErrNotFound) {
				return true, was, keptErr
			} else if gerr == nil {
				unkeep()
			}
			return false, order.Control{}, err
		}
	}
	unkeep()
	return false, order.Control{}, ErrControlChanging
}

// keep keeps k as the settings a resume gives back, and returns the CAS
// of their document; with none it clears what an earlier pause kept, lest
// a resume give back stale ones.
func keep(ctx context.Context, st store.Store, k order.KeptControl) (uint64, error) {
	if k.Control == (order.Control{}) {
		err := st.Remove(ctx, store.Meta, order.KeptControlKey, 0)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, fmt.Errorf("%w: those an earlier pause kept could not be cleared, so a resume may give them back: %w", ErrKept, err)
		}
		return 0, nil
	}
	cas, err := st.Upsert(ctx, store.Meta, order.KeptControlKey, k.Encode())
	if err != nil {
		return 0, fmt.Errorf("%w could not be kept (%s), so no resume gives them back: %w", ErrKept, k.Control, err)
	}
	return cas, nil
}

// ReasonCount is how many confirmations fail for one reason.
type ReasonCount struct {
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// RetryState is whether retries are armed or paused, as allow_retrys
// says.
type RetryState struct {
	TimerArmed bool   `json:"timerArmed"`
	Paused     bool   `json:"paused"`
	Control    string `json:"control,omitempty"` // allow_retrys as stored
	// ResumeWith is the settings a resume gives back (PausedSettings);
	// zero when armed, or paused with none kept.
	ResumeWith order.Control `json:"-"`
	// KeptUnread says why the settings a pause kept could not be read
	// (paused, they are ordermail's own document: on Couchbase in the
	// metadata bucket); "" when they were. Retries are paused all the same.
	KeptUnread string        `json:"-"`
	quantum    time.Duration // allow_retrys' own; 0: none
	read       bool          // it was read (Known)
}

// Known says whether the state was read: ReadStatus returns it with its
// error when what failed came after it.
func (s RetryState) Known() bool { return s.read }

// readRetryState reads allow_retrys and, when it is absent, the settings
// a resume gives back: one or two reads, whatever the store holds.
func readRetryState(ctx context.Context, st store.Store) (RetryState, error) {
	var s RetryState
	ctl, err := st.Get(ctx, order.Retry, order.ControlKey)
	switch {
	case err == nil:
		s.TimerArmed, s.Control = true, string(ctl.Value)
		if c, err := order.DecodeControl(ctl.Value); err == nil {
			s.quantum = c.Quantum
		}
	case errors.Is(err, store.ErrNotFound):
		s.Paused = true
		if s.ResumeWith, err = PausedSettings(ctx, st); err != nil {
			// Paused all the same: a resume is still what the operator
			// may want (it says what it could not give back).
			s.KeptUnread = err.Error()
		}
	default:
		return RetryState{}, err
	}
	s.read = true
	return s, nil
}

// Status is what `ordermail retries status` shows.
type Status struct {
	RetryState
	RetryDocs         int        `json:"retryDocs"` // pending retries
	RetryFlagged      int        `json:"retryFlagged"`
	DueNow            int        `json:"dueNow"`
	OldestDueAt       *time.Time `json:"oldestDueAt"` // the longest-waiting due retry, flagged or not; null when none is due
	DeadLetters       int        `json:"deadLetters"`
	OrdersPaid        int        `json:"ordersPaid"`
	OrdersConfirmed   int        `json:"ordersConfirmed"`
	OrdersUnconfirmed int        `json:"ordersUnconfirmed"`
	// OrdersCountedAt is when the three above were counted, where that
	// may be earlier than the rest (Couchbase: store.Counts); nil where
	// they are counted with it.
	OrdersCountedAt *time.Time    `json:"ordersCountedAt,omitempty"`
	TopFailures     []ReasonCount `json:"topFailureReasons"`
	// Sweeper is the instance that holds the sweep lease, and until when;
	// nil when none ever did.
	Sweeper *Sweeper `json:"sweeper"`
	// SweeperLeft, when nobody holds the sweep lease, says who gave it up
	// last, when and why (its sends held back, its sweeps failing, a
	// stop); nil when none ever held it, or one holds it now.
	SweeperLeft *SweeperLeft `json:"sweeperLeft,omitempty"`
	// Members are the instances sharing the feed (Couchbase without
	// --instance); nil on a store whose instances do not.
	Members []store.Member `json:"members,omitempty"`
}

// Sweeper is who runs the timer's sweep.
type Sweeper struct {
	Holder    string    `json:"holder"`
	ExpiresAt time.Time `json:"expiresAt"`
	Expired   bool      `json:"expired"` // it stopped renewing: another instance takes over at its next tick
}

// SweeperLeft is the last sweeper, gone: lease.Holding's Left.
type SweeperLeft struct {
	Holder string    `json:"holder"`
	At     time.Time `json:"at"`
	Why    string    `json:"why"`
}

// ReadStatus reads the status at now; quantum decides when a retry document
// without nextAttemptAt is due, unless allow_retrys sets one. On an error
// read after it, the status holds the retry state (RetryState.Known).
func ReadStatus(ctx context.Context, st store.Store, now time.Time, quantum time.Duration) (Status, error) {
	var s Status
	var err error
	if s.RetryState, err = readRetryState(ctx, st); err != nil {
		return Status{RetryState: s.RetryState}, err
	}
	if s.quantum > 0 {
		quantum = s.quantum
	}
	// What grows with the store is counted by the store itself (kept
	// with every write on the embedded store, on indexes on Couchbase),
	// the due retries on their indexes; the reasons below likewise.
	c, b, err := store.ReadFigures(ctx, st, now, quantum)
	if err != nil {
		return Status{RetryState: s.RetryState}, err
	}
	s.RetryDocs, s.RetryFlagged, s.DeadLetters = c.RetryDocs, c.RetryFlagged, c.DeadLetters
	s.OrdersPaid, s.OrdersConfirmed, s.OrdersUnconfirmed = c.OrdersPaid, c.OrdersConfirmed, c.OrdersPaid-c.OrdersConfirmed
	if !c.OrdersCountedAt.IsZero() {
		s.OrdersCountedAt = &c.OrdersCountedAt
	}
	h, err := timer.ReadSweeper(ctx, st)
	if err != nil {
		return Status{RetryState: s.RetryState}, fmt.Errorf("read the sweep lease: %w", err)
	}
	switch {
	case h.Owner != "":
		s.Sweeper = &Sweeper{Holder: h.Owner, ExpiresAt: h.ExpiresAt, Expired: !h.ExpiresAt.After(now)}
	case h.Left != "":
		s.SweeperLeft = &SweeperLeft{Holder: h.Left, At: h.LeftAt, Why: h.Why}
	}
	if ml, ok := st.(store.MemberLister); ok {
		if s.Members, err = ml.Members(ctx, store.DefaultFeed); err != nil {
			return Status{RetryState: s.RetryState}, fmt.Errorf("read the members: %w", err)
		}
	}
	s.DueNow = b.Due
	if !b.OldestDue.IsZero() {
		s.OldestDueAt = &b.OldestDue
	}
	reasons, err := st.Reasons(ctx)
	if err != nil {
		return Status{RetryState: s.RetryState}, err
	}
	s.TopFailures = []ReasonCount{}
	for _, t := range reasons {
		s.TopFailures = append(s.TopFailures, ReasonCount{Reason: t.Reason, Count: t.Count})
	}
	return s, nil
}

// DeadLetter is a dead-letter document and its key.
type DeadLetter struct {
	ID string `json:"id"`
	order.DeadLetterDoc
	cas uint64
}

// EachDeadLetter calls fn for every dead letter of reason ("": every one)
// in key order, as the store's scan reads them a page at a time, until fn
// returns an error. Unreadable documents come with reason "unreadable".
func EachDeadLetter(ctx context.Context, st store.Store, reason string, fn func(DeadLetter) error) error {
	return scanDeadLetters(ctx, st, reason, "", func(d store.Doc) error {
		if dl := deadLetterOf(d); reason == "" || dl.Reason == reason {
			return fn(dl)
		}
		return nil
	})
}

// scanDeadLetters scans the dead letters from after on: those of reason on
// the store's index of their reason (store.Store.ScanDeadLetters), so that
// its cost grows with them and not with the others; every one for reason
// "" or "unreadable" (a document that cannot be read is known only by
// reading it). Callers check each document's reason.
func scanDeadLetters(ctx context.Context, st store.Store, reason, after string, fn func(store.Doc) error) error {
	if reason == "" || reason == ReasonUnreadable {
		return st.Scan(ctx, order.DeadLetter, after, fn)
	}
	return st.ScanDeadLetters(ctx, reason, after, fn)
}

// ReasonUnreadable is the reason a dead letter that cannot be read is
// listed by.
const ReasonUnreadable = "unreadable"

func deadLetterOf(d store.Doc) DeadLetter {
	dl, err := order.DecodeDeadLetter(d.Value)
	if err != nil {
		dl = order.DeadLetterDoc{DocID: d.Key, Reason: ReasonUnreadable, LastError: order.Shorten(err.Error(), MaxDetail)}
	}
	return DeadLetter{ID: d.Key, DeadLetterDoc: dl, cas: d.CAS}
}

// MaxDetail bounds the text of an unreadable document's decode error, as
// the service bounds a dead letter's: it names the document's fields, which
// a hostile or broken one may make megabytes long.
const MaxDetail = 300

// ErrStopped says a bulk action stopped before its end, on an error of the
// store (or its context's end): what it did is done, the rest are as they
// were, and the same action again goes on.
var ErrStopped = errors.New("stopped before the end (the rest are as they were: the same action again goes on)")

// stopped marks err, the error that ended a bulk action, with ErrStopped.
func stopped(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrStopped, err)
}

// ErrNoSuchDeadLetter names an id that has no dead letter.
var ErrNoSuchDeadLetter = errors.New("no such dead letter")

// bulkParallel bounds the dead letters that one redrive or purge handles at
// once: enough for their writes to share the embedded store's commits (each
// commit takes the writes queued while the last one was made) and for
// Couchbase's round trips to overlap, few enough that a backlog of any size
// is held a page at a time.
const bulkParallel = 16

// eachDeadLetter calls fn for the dead letters named by ids, or for every
// one (of reason, when not empty) in key order as the store's scan reads
// them, at most bulkParallel at once. It stops at fn's first error and
// returns it, with an ErrNoSuchDeadLetter naming the ids that name none
// (the first few of them, and how many). Its writes are not
// marked store.WithSharedCommit: each caller waits for its own, so a
// writer that lingered for more would only wait.
func eachDeadLetter(ctx context.Context, st store.Store, ids []string, all bool, reason string, fn func(ctx context.Context, d DeadLetter) error) (missing error, err error) {
	var none changedKeys // the ids that name no dead letter: the first few, and how many
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(bulkParallel)
	if all {
		err = EachDeadLetter(gctx, st, reason, func(d DeadLetter) error {
			g.Go(func() error { return fn(gctx, d) })
			return gctx.Err() // a failed fn ends the scan
		})
	} else {
		seen := make(map[string]bool, len(ids))
		for _, id := range ids {
			if seen[id] { // named twice: handled once, and found once
				continue
			}
			seen[id] = true
			if gctx.Err() != nil {
				break
			}
			g.Go(func() error {
				doc, err := st.Get(gctx, order.DeadLetter, id)
				if errors.Is(err, store.ErrNotFound) {
					none.add(id)
					return nil
				}
				if err != nil {
					return err
				}
				return fn(gctx, deadLetterOf(doc))
			})
		}
	}
	if werr := g.Wait(); werr != nil {
		err = werr // the cause, where the scan saw only its cancellation
	}
	if none.n > 0 {
		missing = fmt.Errorf("%w: %s", ErrNoSuchDeadLetter, none.list())
	}
	return missing, err
}

// ErrReservedKey refuses to redrive the order keyed like the control
// document: its retry document would be the control document.
var ErrReservedKey = errors.New("the key is the retry timer's control document; give the order another key")

// Redrive brings dead letters back as retry documents due now, with a fresh
// attempt budget and their redrive count raised, in one outcome: the retry
// document is written, then the dead letter goes (by its CAS: one that
// changed meanwhile is left in place). On Couchbase a crash between the two
// leaves both, and the retry, counting one redrive more than the dead
// letter, goes ahead and removes it. A redrive that finds the dead letter
// gone or changed once it has read the retry document leaves both: a
// redrive alongside has taken it; one that finds a retry document made of
// the dead letter it redrives (redrivenFrom), the dead letter unchanged,
// finishes that redrive: the retry stays as it is, the dead letter goes.
// It redrives what it can and returns
// how many, with an error for the ids it could not. A backlog of any size
// is read a page at a time (see eachDeadLetter).
func Redrive(ctx context.Context, st store.Store, now time.Time, ids []string, all bool) (int, error) {
	return redrive(ctx, st, now, ids, all, "", time.Time{})
}

// RedriveShown is Redrive of ids as a page shown at asOf listed them: one
// dead-lettered again since (redriven and failed anew) is not the one the
// operator chose, and is left and said (ErrChanged), as Purge leaves it.
func RedriveShown(ctx context.Context, st store.Store, now time.Time, ids []string, asOf time.Time) (int, error) {
	return redrive(ctx, st, now, ids, false, "", asOf)
}

// redrive is Redrive, of the dead letters of reason with all ("": every
// one), of those dead-lettered by asOf when it is not zero.
func redrive(ctx context.Context, st store.Store, now time.Time, ids []string, all bool, reason string, asOf time.Time) (int, error) {
	var n atomic.Int64
	var mu sync.Mutex
	var reserved error
	var changed changedKeys
	missing, err := eachDeadLetter(ctx, st, ids, all, reason, func(ctx context.Context, d DeadLetter) error {
		if d.ID == order.ControlKey {
			mu.Lock()
			defer mu.Unlock()
			reserved = fmt.Errorf("redrive %s: %w", d.ID, ErrReservedKey)
			return nil
		}
		if !asOf.IsZero() && d.DeadAt > asOf.UnixMilli() {
			changed.add(d.ID) // dead-lettered since the operator looked
			return nil
		}
		d.DocID = d.ID
		cur, err := st.Get(ctx, order.Retry, d.ID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("redrive %s: %w", d.ID, err)
		}
		r := order.Redriven(d.DeadLetterDoc, now)
		retry := store.Write{Op: store.OpInsert, Collection: order.Retry, Key: d.ID}
		halfMade := false
		if err == nil {
			retry.Op, retry.CAS = store.OpReplace, cur.CAS
			// A retry document beside the dead letter may be that of a
			// redrive that ran alongside and has removed the dead letter
			// since it was listed (on Couchbase, where a redrive's two
			// writes are apart): replacing it would reset its attempts and
			// send at once. The dead letter, read again after the retry
			// document, says: gone or changed, it is left.
			again, err := st.Get(ctx, order.DeadLetter, d.ID)
			if errors.Is(err, store.ErrNotFound) {
				return nil // redriven or purged by another meanwhile: nothing left to do
			}
			if err == nil && again.CAS != d.cas {
				changed.add(d.ID)
				return nil
			}
			if err != nil {
				return fmt.Errorf("redrive %s: %w", d.ID, err)
			}
			if old, derr := order.DecodeRetryDoc(cur.Value); derr == nil {
				if d.DeadAt != 0 && old.RedrivenFrom == d.DeadAt {
					// Made of this very dead letter by a redrive whose
					// removal of it is not made yet, or was lost (cut
					// short between its two writes, on Couchbase): the
					// retry document stands as the service left it, and
					// the dead letter, unchanged since, goes, as that
					// redrive would have done.
					halfMade = true
				}
				if r.IdempotencyKey == "" {
					// A dead letter of no send (a poison event) knows no key;
					// the attempts the retry document made carry one.
					r.IdempotencyKey = old.IdempotencyKey
				}
			}
		}
		if r.IdempotencyKey == "" && !halfMade {
			// Nor the dead letter (unreadable, or of a poison event) nor a
			// retry beside it: the attempt record keeps the latest send's.
			if r.IdempotencyKey, err = attemptsKey(ctx, st, d.ID); err != nil {
				return fmt.Errorf("redrive %s: %w", d.ID, err)
			}
		}
		writes := []store.Write{{Op: store.OpRemove, Collection: order.DeadLetter, Key: d.ID, CAS: d.cas}}
		if !halfMade {
			retry.Value = r.Encode()
			writes = append([]store.Write{retry}, writes...)
		}
		made, err := st.Apply(ctx, writes)
		var we *store.WriteError
		if errors.As(err, &we) {
			if len(made) > 0 {
				// Couchbase: the retry document was written, and the dead
				// letter has changed since, most often removed by the
				// service that has already confirmed the redriven order.
				n.Add(1)
				return nil
			}
			if _, gerr := st.Get(ctx, order.DeadLetter, d.ID); errors.Is(gerr, store.ErrNotFound) {
				return nil // redriven or purged by another meanwhile: nothing left to do
			}
			changed.add(d.ID) // changed since it was read: left, and said
			return nil
		}
		if err != nil {
			return fmt.Errorf("redrive %s: %w", d.ID, err)
		}
		n.Add(1)
		return nil
	})
	return int(n.Load()), errors.Join(missing, reserved, changed.err("redrive"), stopped(err))
}

// attemptsKey is the idempotency key of key's latest send in its attempt
// record, where there is a readable one, made for key, and not settled as
// sent; else "". A confirmation sent under it was this very order's (its
// mark kept says so, and the order is marked again, not mailed) or, on
// Couchbase, which cannot tell them apart, a deleted order's: the new
// order sent under it would be answered as a replay, never mailed.
func attemptsKey(ctx context.Context, st store.Store, key string) (string, error) {
	doc, err := st.Get(ctx, order.Attempts, key)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read attempt record: %w", err)
	}
	a, err := order.DecodeAttempts(doc.Value)
	if err != nil || !order.IsKeyOf(a.IdempotencyKey, key) || a.Result == "sent" {
		return "", nil
	}
	return a.IdempotencyKey, nil
}

// changedKeys are the dead letters an action left because they, or their
// retry documents, changed while it ran: how many, and the first few (a
// redrive of a million dead letters keeps ten names, not a million).
type changedKeys struct {
	mu    sync.Mutex
	n     int
	first []string
}

const changedShown = 10

func (c *changedKeys) add(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if len(c.first) < changedShown {
		c.first = append(c.first, Shown(id))
	}
}

// Shown is text from a document or a remote service (a key, a reason, an
// error) as a terminal or a log may print it: as it is when every
// character is printable, else quoted Go-style, so that a control
// character (an escape sequence, or a newline that would forge a line of
// output) is seen, not obeyed.
func Shown(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// err says which were left; nil when none was.
func (c *changedKeys) err(action string) error {
	if c.n == 0 {
		return nil
	}
	return fmt.Errorf("%s: %d left, %w: %s", action, c.n, ErrChanged, c.list())
}

// redrivenMeanwhile says whether a redrive alongside had written its retry
// document of d, the dead letter a purge has just removed, and not yet
// removed d (on Couchbase, where a redrive's two writes are apart): that
// retry stands and is sent, and the redrive counts it. A store whose
// writes of an outcome are one transaction (AtomicApply) cannot be so.
// unknown says the read failed: d was removed, and is counted purged.
func redrivenMeanwhile(ctx context.Context, st store.Store, d DeadLetter) (redriven, unknown bool) {
	if a, ok := st.(interface{ AtomicApply() bool }); d.DeadAt == 0 || ok && a.AtomicApply() {
		return false, false
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	cur, err := st.Get(ctx, order.Retry, d.ID)
	if errors.Is(err, store.ErrNotFound) {
		return false, false
	}
	if err != nil {
		return false, true
	}
	r, err := order.DecodeRetryDoc(cur.Value)
	return err == nil && r.RedrivenFrom == d.DeadAt, false
}

// ErrRedrivenMeanwhile says dead letters a purge removed had been redriven
// as it ran: on Couchbase a redrive writes the retry document before it
// removes the dead letter, and the purge removed it in between.
var ErrRedrivenMeanwhile = errors.New("redriven meanwhile, not purged: their retry documents stand, and their orders go out")

// ErrMaybeRedriven says dead letters a purge removed and counted, whose
// look for a redrive alongside failed: one may have made a retry of them.
var ErrMaybeRedriven = errors.New("removed and counted purged, but whether a redrive alongside made a retry of them is unknown (a retry document of theirs naming them in redrivenFrom stands, and is sent)")

// redrivenErr says which dead letters a purge found redriven meanwhile.
func (c *changedKeys) redrivenErr() error {
	if c.n == 0 {
		return nil
	}
	return fmt.Errorf("purge: %d %w: %s", c.n, ErrRedrivenMeanwhile, c.list())
}

// list names the first keys, sorted, and how many more: however many an
// operator selected, the message stays short.
func (c *changedKeys) list() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	slices.Sort(c.first)
	list := strings.Join(c.first, ", ")
	if c.n > len(c.first) {
		list += fmt.Sprintf(" and %d more", c.n-len(c.first))
	}
	return list
}

// Purge deletes dead letters for good; their orders stay unconfirmed until
// an order itself changes (its change is a first send again). It purges
// those dead-lettered by asOf, the time the operator looked: a dead letter
// written later, while the purge runs or after the console asked to
// confirm, is one the operator has not seen, and is left; one of ids so
// left (redriven and dead-lettered again since) is said.
func Purge(ctx context.Context, st store.Store, ids []string, all bool, asOf time.Time) (int, error) {
	return purge(ctx, st, ids, all, "", asOf)
}

// purge is Purge, of the dead letters of reason with all ("": every one).
func purge(ctx context.Context, st store.Store, ids []string, all bool, reason string, asOf time.Time) (int, error) {
	var n atomic.Int64
	var changed, redriven, unsure changedKeys
	missing, err := eachDeadLetter(ctx, st, ids, all, reason, func(ctx context.Context, d DeadLetter) error {
		if d.DeadAt > asOf.UnixMilli() { // dead-lettered since the operator looked
			if !all {
				changed.add(d.ID)
			}
			return nil
		}
		err := st.Remove(ctx, order.DeadLetter, d.ID, d.cas)
		if errors.Is(err, store.ErrNotFound) {
			return nil // gone since it was read: what purge wanted
		}
		if errors.Is(err, store.ErrCASMismatch) { // changed (redriven, say): left, and said
			changed.add(d.ID)
			return nil
		}
		if err != nil {
			return fmt.Errorf("purge %s: %w", d.ID, err)
		}
		switch again, unknown := redrivenMeanwhile(ctx, st, d); {
		case again:
			redriven.add(d.ID)
			return nil
		case unknown:
			unsure.add(d.ID)
		}
		n.Add(1)
		return nil
	})
	var maybe error
	if unsure.n > 0 {
		maybe = fmt.Errorf("purge: %d %w: %s", unsure.n, ErrMaybeRedriven, unsure.list())
	}
	return int(n.Load()), errors.Join(missing, changed.err("purge"), redriven.redrivenErr(), maybe, stopped(err))
}
