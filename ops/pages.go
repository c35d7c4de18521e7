package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// Defaults of a ListQuery.
const (
	DefaultPageSize   = 50
	DefaultScanBudget = 5000
)

// ListQuery asks for one page of retries or dead letters.
type ListQuery struct {
	// Reason keeps only the documents of this reason (a dead letter's
	// reason field, a retry's RetryReason); empty: all.
	Reason string
	// Prefix keeps only the keys that start with it; empty: all.
	Prefix string
	// After starts the page after this key (a previous page's Next).
	After string
	// Limit is the most documents listed; default DefaultPageSize.
	Limit int
	// Budget is the most documents examined, listed or not: a reason that
	// matches one document in a million still answers at once, with a
	// Next to go on from. Default DefaultScanBudget.
	Budget int
}

// Page is one page of a list.
type Page[T any] struct {
	Items []T `json:"items"`
	// Next is the key the next page starts after; empty when there is
	// nothing more to examine.
	Next string `json:"next,omitempty"`
	// Examined counts the documents read for this page; when it reached
	// the budget before Limit items matched, the page is short but Next
	// goes on.
	Examined int  `json:"examined"`
	Budgeted bool `json:"budgeted"` // the page stopped at the budget
}

// Retry is a pending retry document and its key.
type Retry struct {
	ID string `json:"id"`
	order.RetryDoc
	Reason string `json:"reason"` // RetryReason
	// Unreadable is why the document could not be decoded; the other
	// fields are then zero.
	Unreadable string `json:"unreadable,omitempty"`
	// CAS is the version read: an action on what a page showed (a drop)
	// acts on that version only.
	CAS uint64 `json:"-"`
}

// Reasons of retries, as RetryReason says them, besides "HTTP 503".
const (
	RetryReasonNoAnswer   = order.WhyNoAnswer
	RetryReasonHeldBack   = order.WhyHeldBack
	RetryReasonUnreadable = "unreadable retry document"
	RetryReasonNone       = "no failure recorded"
)

// RetryReason says why a retry waits, as the status counts it
// (order.RetryDoc.Why), "no failure recorded" for a document that says
// none.
func RetryReason(r order.RetryDoc) string {
	if why := r.Why(); why != "" {
		return why
	}
	return RetryReasonNone
}

// DeadLetterReasons are the reasons the watcher gives dead letters, and
// "unreadable" for a dead letter that cannot be decoded, for a list to offer.
var DeadLetterReasons = append(order.Reasons(), ReasonUnreadable)

// ListRetries reads one page of pending retries, the control document
// aside; those of one reason on the store's index of it where it has one
// (store.Store.ScanRetries).
func ListRetries(ctx context.Context, st store.Store, q ListQuery) (Page[Retry], error) {
	ctx = store.Browsing(ctx) // a page shown, not a bulk action: the indexes as they are
	scan := func(after string, fn func(store.Doc) error) error {
		switch q.Reason {
		case "", RetryReasonUnreadable: // known only by reading each
			return st.Scan(ctx, order.Retry, after, fn)
		case RetryReasonNone:
			return st.ScanRetries(ctx, "", after, fn)
		}
		return st.ScanRetries(ctx, q.Reason, after, fn)
	}
	return scanPage(ctx, st, order.Retry, q, scan, func(d store.Doc) (Retry, string, bool) {
		if d.Key == order.ControlKey {
			return Retry{}, "", false
		}
		r, err := order.DecodeRetryDoc(d.Value)
		if err != nil {
			return Retry{ID: d.Key, Reason: RetryReasonUnreadable, Unreadable: order.Shorten(err.Error(), MaxDetail), CAS: d.CAS}, RetryReasonUnreadable, true
		}
		reason := RetryReason(r)
		return Retry{ID: d.Key, RetryDoc: r, Reason: reason, CAS: d.CAS}, reason, true
	})
}

// ListDeadLetterPage reads one page of dead letters; those of one reason on
// the store's index of their reason, so that a reason that few have is
// found at once among many of another.
func ListDeadLetterPage(ctx context.Context, st store.Store, q ListQuery) (Page[DeadLetter], error) {
	ctx = store.Browsing(ctx) // a page shown, not a bulk action: the indexes as they are
	scan := func(after string, fn func(store.Doc) error) error {
		return scanDeadLetters(ctx, st, q.Reason, after, fn)
	}
	return scanPage(ctx, st, order.DeadLetter, q, scan, func(d store.Doc) (DeadLetter, string, bool) {
		dl := deadLetterOf(d)
		return dl, dl.Reason, true
	})
}

// errPageDone ends a page's scan.
var errPageDone = errors.New("page done")

// scanPage reads a page of coll with scan, which calls fn for the documents
// from a key on: decode turns a document into an item and its reason, or
// says to leave it out.
func scanPage[T any](ctx context.Context, st store.Store, coll string, q ListQuery, scan func(after string, fn func(store.Doc) error) error,
	decode func(store.Doc) (T, string, bool)) (Page[T], error) {
	if q.Limit <= 0 {
		q.Limit = DefaultPageSize
	}
	if q.Budget <= 0 {
		q.Budget = DefaultScanBudget
	}
	p := Page[T]{Items: []T{}}
	// A full page goes on after stop, if there is a document after it: a
	// page that ends with the collection (or the prefix) offers no next
	// one, for the price of reading one document more.
	stop, budgeted := "", false
	// visit takes one document; it says when the page is done.
	visit := func(d store.Doc) bool {
		if q.Prefix != "" && !strings.HasPrefix(d.Key, q.Prefix) {
			return true // keys in order: past the prefix, nothing more matches
		}
		if stop != "" {
			p.Next, p.Budgeted = stop, budgeted
			return true
		}
		p.Examined++
		if item, reason, ok := decode(d); ok && (q.Reason == "" || reason == q.Reason) {
			p.Items = append(p.Items, item)
		}
		switch {
		case len(p.Items) >= q.Limit:
			stop = d.Key
		case p.Examined >= q.Budget:
			stop, budgeted = d.Key, true
		}
		return false
	}
	after := q.After
	if q.Prefix != "" && after < q.Prefix {
		// Scan starts after a key: the prefix itself, the first key that
		// can match, is read on its own.
		d, err := st.Get(ctx, coll, q.Prefix)
		switch {
		case err == nil:
			if visit(d) {
				return p, nil
			}
		case !errors.Is(err, store.ErrNotFound):
			return Page[T]{}, fmt.Errorf("list %s: %w", coll, err)
		}
		after = q.Prefix
	}
	err := scan(after, func(d store.Doc) error {
		if visit(d) {
			return errPageDone
		}
		return nil
	})
	if err != nil && !errors.Is(err, errPageDone) {
		return Page[T]{}, fmt.Errorf("list %s: %w", coll, err)
	}
	return p, nil
}

// RedriveByReason redrives every dead letter whose reason is reason, and
// returns how many. It reads those dead letters once each, on the store's
// index of their reason, not the others.
func RedriveByReason(ctx context.Context, st store.Store, now time.Time, reason string) (int, error) {
	if reason == "" {
		return 0, errors.New("redrive by reason: no reason given")
	}
	return redrive(ctx, st, now, nil, true, reason, time.Time{})
}

// PurgeByReason purges every dead letter whose reason is reason,
// dead-lettered by asOf (see Purge), and returns how many.
func PurgeByReason(ctx context.Context, st store.Store, reason string, asOf time.Time) (int, error) {
	if reason == "" {
		return 0, errors.New("purge by reason: no reason given")
	}
	return purge(ctx, st, nil, true, reason, asOf)
}

// CheckRetryReason says what is wrong with reason as a filter of retries:
// none that RetryReason gives ("HTTP " and a status, or one of the
// RetryReason constants).
func CheckRetryReason(reason string) error {
	fixed := []string{RetryReasonNoAnswer, RetryReasonHeldBack, RetryReasonNone, RetryReasonUnreadable}
	if slices.Contains(fixed, reason) {
		return nil
	}
	if code, ok := strings.CutPrefix(reason, "HTTP "); ok && len(code) == 3 {
		if n, err := strconv.Atoi(code); err == nil && n >= 100 {
			return nil
		}
	}
	return fmt.Errorf("%q is no retry's reason; the reasons are \"HTTP \" and a status (HTTP 503), %s", reason, strings.Join(fixed, ", "))
}

// CheckDeadLetterReason says what is wrong with reason as a filter of dead
// letters: empty, or none the watcher gives (DeadLetterReasons).
func CheckDeadLetterReason(reason string) error {
	if slices.Contains(DeadLetterReasons, reason) {
		return nil
	}
	return fmt.Errorf("%q is no dead letter's reason; the reasons are %s", reason, strings.Join(DeadLetterReasons, ", "))
}
