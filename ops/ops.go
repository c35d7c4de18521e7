package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// StartRetries creates allow_retrys, or rewrites it with ctl's settings
// (zero fields are left out). started is false when it existed already.
func StartRetries(ctx context.Context, st store.Store, ctl order.Control) (started bool, err error) {
	doc := map[string]string{}
	if ctl.Interval > 0 {
		doc["interval"] = ctl.Interval.String()
	}
	if ctl.Quantum > 0 {
		doc["quantum"] = ctl.Quantum.String()
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return false, err
	}
	_, err = st.Insert(ctx, order.Retry, order.ControlKey, body)
	if errors.Is(err, store.ErrExists) {
		if len(doc) == 0 {
			return false, nil
		}
		_, err = st.Upsert(ctx, order.Retry, order.ControlKey, body)
		return false, err
	}
	return err == nil, err
}

// StopRetries deletes allow_retrys; stopped is false when it was not there.
func StopRetries(ctx context.Context, st store.Store) (stopped bool, err error) {
	err = st.Remove(ctx, order.Retry, order.ControlKey, 0)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// ReasonCount is how many confirmations fail for one reason.
type ReasonCount struct {
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// Status is what `ordermail retries status` shows.
type Status struct {
	TimerArmed        bool          `json:"timerArmed"`
	Paused            bool          `json:"paused"`
	RetryDocs         int           `json:"retryDocs"` // pending retries
	RetryFlagged      int           `json:"retryFlagged"`
	DueNow            int           `json:"dueNow"`
	OldestDueAt       *time.Time    `json:"oldestDueAt"` // the longest-waiting due retry; null when none is due
	DeadLetters       int           `json:"deadLetters"`
	OrdersPaid        int           `json:"ordersPaid"`
	OrdersConfirmed   int           `json:"ordersConfirmed"`
	OrdersUnconfirmed int           `json:"ordersUnconfirmed"`
	TopFailures       []ReasonCount `json:"topFailureReasons"`
	Control           string        `json:"control,omitempty"` // allow_retrys as stored
}

// ReadStatus reads the status at now; quantum decides when a retry document
// without nextAttemptAt is due, unless allow_retrys sets one.
func ReadStatus(ctx context.Context, st store.Store, now time.Time, quantum time.Duration) (Status, error) {
	var s Status
	ctl, err := st.Get(ctx, order.Retry, order.ControlKey)
	switch {
	case err == nil:
		s.TimerArmed, s.Control = true, string(ctl.Value)
		if c, err := order.DecodeControl(ctl.Value); err == nil && c.Quantum > 0 {
			quantum = c.Quantum
		}
	case errors.Is(err, store.ErrNotFound):
		s.Paused = true
	default:
		return Status{}, err
	}
	c, err := st.Counts(ctx)
	if err != nil {
		return Status{}, err
	}
	s.RetryDocs, s.RetryFlagged, s.DeadLetters = c.RetryDocs, c.RetryFlagged, c.DeadLetters
	s.OrdersPaid, s.OrdersConfirmed, s.OrdersUnconfirmed = c.OrdersPaid, c.OrdersConfirmed, c.OrdersPaid-c.OrdersConfirmed

	reasons := map[string]int{}
	err = st.Scan(ctx, order.Retry, func(d store.Doc) error {
		if d.Key == order.ControlKey {
			return nil
		}
		r, err := order.DecodeRetryDoc(d.Value)
		if err != nil {
			reasons["unreadable retry document"]++
			return nil
		}
		reasons[retryReason(r)]++
		due := time.UnixMilli(r.NextAttemptAt)
		if r.NextAttemptAt == 0 {
			due = time.UnixMilli(r.TS).Add(quantum)
		}
		if r.FireRetry || !due.After(now) {
			s.DueNow++
			if s.OldestDueAt == nil || due.Before(*s.OldestDueAt) {
				s.OldestDueAt = &due
			}
		}
		return nil
	})
	if err != nil {
		return Status{}, err
	}
	err = st.Scan(ctx, order.DeadLetter, func(d store.Doc) error {
		dl, err := order.DecodeDeadLetter(d.Value)
		if err != nil {
			reasons["dead: unreadable dead letter"]++
			return nil
		}
		reasons["dead: "+dl.Reason+statusSuffix(dl.LastStatus)]++
		return nil
	})
	if err != nil {
		return Status{}, err
	}
	for r, n := range reasons {
		s.TopFailures = append(s.TopFailures, ReasonCount{Reason: r, Count: n})
	}
	sort.Slice(s.TopFailures, func(i, j int) bool {
		a, b := s.TopFailures[i], s.TopFailures[j]
		return a.Count > b.Count || (a.Count == b.Count && a.Reason < b.Reason)
	})
	s.TopFailures = s.TopFailures[:min(len(s.TopFailures), 5)]
	return s, nil
}

func retryReason(r order.RetryDoc) string {
	switch {
	case r.LastStatus > 0:
		return fmt.Sprintf("retrying: HTTP %d", r.LastStatus)
	case r.LastError != "":
		return "retrying: no answer"
	}
	return "retrying" // the sample's documents say nothing of why
}

func statusSuffix(code int) string {
	if code == 0 {
		return ""
	}
	return fmt.Sprintf(" (HTTP %d)", code)
}

// DeadLetter is a dead-letter document and its key.
type DeadLetter struct {
	ID string `json:"id"`
	order.DeadLetterDoc
	cas uint64
}

// ListDeadLetters returns every dead letter in key order. Unreadable
// documents are listed with reason "unreadable".
func ListDeadLetters(ctx context.Context, st store.Store) ([]DeadLetter, error) {
	var out []DeadLetter
	err := st.Scan(ctx, order.DeadLetter, func(d store.Doc) error {
		out = append(out, deadLetterOf(d))
		return nil
	})
	return out, err
}

func deadLetterOf(d store.Doc) DeadLetter {
	dl, err := order.DecodeDeadLetter(d.Value)
	if err != nil {
		dl = order.DeadLetterDoc{DocID: d.Key, Reason: "unreadable", LastError: err.Error()}
	}
	return DeadLetter{ID: d.Key, DeadLetterDoc: dl, cas: d.CAS}
}

// ErrNoSuchDeadLetter names an id that has no dead letter.
var ErrNoSuchDeadLetter = errors.New("no such dead letter")

// selectDeadLetters returns the dead letters named by ids, or all of them.
func selectDeadLetters(ctx context.Context, st store.Store, ids []string, all bool) ([]DeadLetter, error) {
	if all {
		return ListDeadLetters(ctx, st)
	}
	var out []DeadLetter
	var missing []error
	for _, id := range ids {
		d, err := st.Get(ctx, order.DeadLetter, id)
		if errors.Is(err, store.ErrNotFound) {
			missing = append(missing, fmt.Errorf("%w: %s", ErrNoSuchDeadLetter, id))
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, deadLetterOf(d))
	}
	return out, errors.Join(missing...)
}

// Redrive brings dead letters back as retry documents due now, with a fresh
// attempt budget and their redrive count raised. The retry document is
// written before the dead letter goes, so a crash between the two loses
// nothing; a dead letter that changed meanwhile (the retry failed again
// already) is left in place. It redrives what it can and returns how many,
// with an error for the ids it could not.
func Redrive(ctx context.Context, st store.Store, now time.Time, ids []string, all bool) (int, error) {
	dls, selErr := selectDeadLetters(ctx, st, ids, all)
	n := 0
	for _, d := range dls {
		if d.DocID == "" {
			d.DocID = d.ID
		}
		if _, err := st.Upsert(ctx, order.Retry, d.ID, order.Redriven(d.DeadLetterDoc, now).Encode()); err != nil {
			return n, errors.Join(selErr, fmt.Errorf("redrive %s: %w", d.ID, err))
		}
		err := st.Remove(ctx, order.DeadLetter, d.ID, d.cas)
		if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrCASMismatch) {
			return n, errors.Join(selErr, fmt.Errorf("redrive %s: %w", d.ID, err))
		}
		n++
	}
	return n, selErr
}

// Purge deletes dead letters for good; their orders stay unconfirmed.
func Purge(ctx context.Context, st store.Store, ids []string, all bool) (int, error) {
	dls, selErr := selectDeadLetters(ctx, st, ids, all)
	n := 0
	for _, d := range dls {
		err := st.Remove(ctx, order.DeadLetter, d.ID, 0)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, errors.Join(selErr, fmt.Errorf("purge %s: %w", d.ID, err))
		}
		n++
	}
	return n, selErr
}
