package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// States of an order's confirmation, as Story.State.
const (
	StateNotPaid   = "not paid"
	StateConfirmed = "confirmed"
	// StatePendingFirstSend: paid, unconfirmed, and nothing else stored:
	// the first send goes out as the service reads the order's change; or
	// it was given up without an attempt record (a dead letter purged, a
	// retry removed, before any request, or the record expired), which
	// the store cannot tell apart without a write at every purge.
	StatePendingFirstSend = "pending first send"
	// StateGivenUp: paid, unconfirmed, attempted, and neither a retry nor
	// a dead letter left (the dead letter purged, the retry removed by
	// hand): nothing sends it unless the order changes.
	StateGivenUp              = "given up"
	StateRetryScheduled       = "retry scheduled"
	StateRetryDue             = "retry due"
	StateDeadLettered         = "dead-lettered"
	StateUnknownOrder         = "unknown order"
	StateUnreadableOrder      = "unreadable order"
	StateUnreadableRetry      = "unreadable retry document"
	StateUnreadableDeadLetter = "unreadable dead letter"
)

// ErrNothingStored says that no document of any kind is kept under a key:
// most likely a mistyped key.
var ErrNothingStored = errors.New("no order, retry, dead letter or attempt record")

// Story is everything stored about one order's confirmation. It carries
// only the order's payment status and confirmed flag, never its body or
// email address: it is printed and pasted into tickets.
type Story struct {
	Key   string `json:"key"`
	Found bool   `json:"found"` // the order document exists
	State string `json:"state"`

	PaymentStatus string `json:"paymentStatus,omitempty"`
	Confirmed     bool   `json:"confirmed"`
	// IdempotencyKey is the one the attempts send: the one the order's
	// confirmation went out under (SentUnder), else the retry document's,
	// else the dead letter's, else the attempt record's, else the order's
	// current one.
	IdempotencyKey string `json:"idempotencyKey,omitempty"`
	// SentUnder is the key this very order's confirmation went out under,
	// where the store keeps it with the order document (Couchbase): an
	// order written back unconfirmed with one is marked again, not mailed.
	SentUnder string `json:"sentUnder,omitempty"`

	Retry      *RetryInfo      `json:"retry,omitempty"`
	DeadLetter *DeadLetterInfo `json:"deadLetter,omitempty"`

	// Attempts are the latest recorded attempts, oldest first; At is in
	// milliseconds since the epoch, as stored.
	Attempts []order.Attempt `json:"attempts"`
	// AttemptsTotal counts every attempt recorded: more than
	// len(Attempts) when older ones were dropped.
	AttemptsTotal int       `json:"attemptsTotal"`
	SettledAt     time.Time `json:"settledAt,omitzero"`
	Result        string    `json:"result,omitempty"` // sent or dead_letter once settled

	// RetriesPaused: retries are stopped (no allow_retrys), so that a
	// retry not flagged yet waits, due or not, until `retries start`.
	RetriesPaused bool `json:"retriesPaused,omitempty"`

	// Unreadable names the documents that are stored but could not be
	// decoded, so that the story still tells what the others say.
	Unreadable []UnreadableDoc `json:"unreadable,omitempty"`
}

// RetryInfo is what the retry document says.
type RetryInfo struct {
	Attempt       int       `json:"attempt"` // attempts made in the current budget
	LastAttemptAt time.Time `json:"lastAttemptAt,omitzero"`
	// NextAttemptAt is zero for the sample's documents, due a timer
	// quantum after LastAttemptAt.
	NextAttemptAt  time.Time `json:"nextAttemptAt,omitzero"`
	FireRetry      bool      `json:"fireRetry"`
	LastStatus     int       `json:"lastStatus,omitempty"`
	LastError      string    `json:"lastError,omitempty"`
	HeldBack       string    `json:"heldBack,omitempty"` // why the last try made no request
	Redrives       int       `json:"redrives"`
	IdempotencyKey string    `json:"idempotencyKey,omitempty"`
	CAS            uint64    `json:"-"` // the version read: a drop acts on it only
}

// DeadLetterInfo is what the dead letter says.
type DeadLetterInfo struct {
	Reason     string    `json:"reason"`
	LastStatus int       `json:"lastStatus,omitempty"`
	LastError  string    `json:"lastError,omitempty"`
	Attempts   int       `json:"attempts"`
	DeadSince  time.Time `json:"deadSince,omitzero"`
	Redrives   int       `json:"redrives"`
}

// UnreadableDoc is a stored document that could not be decoded.
type UnreadableDoc struct {
	Collection string `json:"collection"`
	Error      string `json:"error"`
}

// OrderStory reads everything stored under key and tells where its
// confirmation stands at now; quantum is the service's --retry-quantum,
// unless allow_retrys sets one. Unreadable documents are part of the
// story, not errors: they are what an operator looks for.
func OrderStory(ctx context.Context, st store.Store, key string, now time.Time, quantum time.Duration) (Story, error) {
	// The attempt record first: where an outcome's writes are apart
	// (Couchbase) the record comes after the retry or dead letter it
	// names, which the state read next then finds (or what came of it).
	rec, err := st.Get(ctx, order.Attempts, key)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return Story{}, fmt.Errorf("read attempt record %q: %w", key, err)
	}
	state, err := st.State(ctx, key)
	if err != nil {
		return Story{}, fmt.Errorf("read order %q: %w", key, err)
	}
	if key == order.ControlKey {
		state.Retry = store.Doc{} // the timer's control document, not a retry
	}
	paused := false
	if state.Retry.Found() {
		// A retry without nextAttemptAt (the sample's) is due a quantum
		// after its last attempt: allow_retrys' quantum, else quantum.
		ctl, err := st.Get(ctx, order.Retry, order.ControlKey)
		switch {
		case err == nil:
			if c, err := order.DecodeControl(ctl.Value); err == nil && c.Quantum > 0 {
				quantum = c.Quantum
			}
		case errors.Is(err, store.ErrNotFound):
			paused = true
		} // unread: the story tells the rest, without a pause or an override

	}
	if !state.Order.Found() && !state.Retry.Found() && !state.DeadLetter.Found() && !rec.Found() {
		return Story{}, fmt.Errorf("%w under key %q", ErrNothingStored, key)
	}

	s := Story{Key: key, Found: state.Order.Found(), SentUnder: state.Order.Sent, Attempts: []order.Attempt{}}
	unreadable := func(coll string, err error) {
		s.Unreadable = append(s.Unreadable, UnreadableDoc{Collection: coll, Error: order.Shorten(err.Error(), MaxDetail)})
	}
	var o order.Order
	orderOK := false
	if s.Found {
		if o, err = order.DecodeOrder(state.Order.Value); err != nil {
			unreadable(order.Inbound, err)
		} else {
			orderOK = true
			s.PaymentStatus, s.Confirmed = o.PaymentStatus, o.ConfirmationEmailSent
		}
	}
	var r order.RetryDoc
	retryOK := false
	if state.Retry.Found() {
		if r, err = order.DecodeRetryDoc(state.Retry.Value); err != nil {
			unreadable(order.Retry, err)
		} else {
			retryOK = true
			s.Retry = &RetryInfo{Attempt: r.Attempt, LastAttemptAt: msTime(r.TS), NextAttemptAt: msTime(r.NextAttemptAt),
				FireRetry: r.FireRetry, LastStatus: r.LastStatus, LastError: r.LastError, HeldBack: r.HeldBack, Redrives: r.RedriveCount,
				IdempotencyKey: r.IdempotencyKey, CAS: state.Retry.CAS}
		}
	}
	var dl order.DeadLetterDoc
	if state.DeadLetter.Found() {
		if dl, err = order.DecodeDeadLetter(state.DeadLetter.Value); err != nil {
			unreadable(order.DeadLetter, err)
		} else {
			s.DeadLetter = &DeadLetterInfo{Reason: dl.Reason, LastStatus: dl.LastStatus, LastError: dl.LastError,
				Attempts: dl.Attempts, DeadSince: msTime(dl.DeadAt), Redrives: dl.RedriveCount}
		}
	}
	// A key of an order deleted since (where the store tells them apart)
	// is not the one this order is sent under, nor are its attempts this
	// order's (the watcher starts the record afresh at its first attempt).
	other := func(k string) bool { return order.OfAnotherIncarnation(k, key, state.Order.Incarnation) }
	mine := func(k string) bool { return k != "" && !other(k) }
	var a order.AttemptsDoc
	if rec.Found() {
		if a, err = order.DecodeAttempts(rec.Value); err != nil {
			unreadable(order.Attempts, err)
		} else if !other(a.IdempotencyKey) {
			s.Attempts = append(s.Attempts, a.Attempts...)
			s.AttemptsTotal, s.SettledAt, s.Result = a.Total, msTime(a.SettledAt), a.Result
		}
	}
	switch {
	case s.SentUnder != "":
		s.IdempotencyKey = s.SentUnder
	case mine(r.IdempotencyKey):
		s.IdempotencyKey = r.IdempotencyKey
	case mine(dl.IdempotencyKey):
		s.IdempotencyKey = dl.IdempotencyKey
	case mine(a.IdempotencyKey):
		s.IdempotencyKey = a.IdempotencyKey
	case s.Found:
		s.IdempotencyKey = order.IdempotencyKey(key, state.Order.Incarnation)
	}

	// The precedence is the watcher's (watcher.Decide): a confirmed order
	// is done; a retry goes ahead unless a dead letter that holds the
	// order back (readable or not) came after it (counts as many redrives
	// or more), and is dropped if its order is no longer paid; a dead
	// letter of an order deleted since is not this order's.
	held := dl
	if state.DeadLetter.Found() && s.DeadLetter == nil {
		held = order.DeadLetterDoc{Reason: ReasonUnreadable} // as the watcher takes it
	}
	dead := state.DeadLetter.Found() && !other(held.IdempotencyKey)
	switch {
	case !s.Found:
		s.State = StateUnknownOrder
	case !orderOK:
		s.State = StateUnreadableOrder
	case o.ConfirmationEmailSent:
		s.State = StateConfirmed
	case state.Retry.Found() && !retryOK:
		s.State = StateUnreadableRetry
	case retryOK && (!dead || !held.HoldsBack(key, state.Order.Incarnation) || r.RedriveCount > held.RedriveCount):
		if o.PaymentStatus != order.StatusPaid {
			s.State = StateNotPaid // its retry is dropped when it is handled
			break
		}
		s.State = StateRetryScheduled
		if r.FireRetry || r.Due(now, quantum) {
			s.State = StateRetryDue
		}
		s.RetriesPaused = paused && !r.FireRetry // a flagged one goes out all the same
	case dead && s.DeadLetter != nil:
		s.State = StateDeadLettered
	case dead:
		s.State = StateUnreadableDeadLetter
	case o.PaymentStatus != order.StatusPaid:
		s.State = StateNotPaid
	case a.Total > 0 && a.Result != "sent" && !other(a.IdempotencyKey):
		// Attempted, not sent, nothing left to try it again: the
		// attempt record is written after the outcome where the two are
		// apart (Couchbase), so a retry or dead letter it names is there.
		s.State = StateGivenUp
	default:
		s.State = StatePendingFirstSend
	}
	return s, nil
}

// msTime is the time of milliseconds since the epoch, in UTC; zero for 0.
func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}
