package embedded

import (
	"encoding/json"
	"fmt"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// columns are the typed columns written with a document: what the sweep,
// the counts and the status need, read once per write with the same
// decoders the watcher uses, so that a document means the same thing to
// both. They mirror the Couchbase indexes.
type columns struct {
	paid, confirmed, retry, fire, dead bool
	nextAt, tsAt                       *int64
	fireAt                             *int64 // a flagged retry document: when it fell due
	tally                              *string
	reason                             *string // a readable dead letter's reason, for ScanDeadLetters
}

func (c columns) args() []any {
	var nextAt, tsAt, fireAt, tally, reason any
	if c.nextAt != nil {
		nextAt = *c.nextAt
	}
	if c.tsAt != nil {
		tsAt = *c.tsAt
	}
	if c.fireAt != nil {
		fireAt = *c.fireAt
	}
	if c.tally != nil {
		tally = *c.tally
	}
	if c.reason != nil {
		reason = *c.reason
	}
	return []any{c.paid, c.confirmed, c.retry, c.fire, nextAt, tsAt, c.dead, tally, fireAt, reason}
}

// flat says whether classify leaves every column of coll's documents but
// paid and confirmed zero or NULL, whatever they hold: the writer's
// statements for them name no other column (flatReplaceQuery).
func flat(coll string) bool { return coll != order.Retry && coll != order.DeadLetter }

// classify reads the columns of value (nil: a tombstone) in coll.
func classify(coll, key string, value []byte) columns {
	var c columns
	if value == nil {
		return c
	}
	switch coll {
	case order.Inbound:
		if o, err := order.DecodeOrder(value); err == nil && o.PaymentStatus == order.StatusPaid {
			c.paid = true
			c.confirmed = o.ConfirmationEmailSent
		}
	case order.Retry:
		if key == order.ControlKey {
			return c
		}
		c.retry = true
		classifyRetry(value, &c)
	case order.DeadLetter:
		c.dead = true
		t := "dead: unreadable dead letter"
		if d, err := order.DecodeDeadLetter(value); err == nil {
			t = "dead: " + d.Reason + statusSuffix(d.LastStatus)
			c.reason = &d.Reason
		}
		c.tally = &t
	}
	return c
}

// unreadableRetry is the tally of a retry document the watcher cannot read.
const unreadableRetry = "retrying: unreadable retry document"

// classifyRetry reads a retry document the way the sweep always has: a
// document is due by a numeric nextAttemptAt or, without one, by a numeric
// ts; a document that is not a JSON object is never due (the watcher
// dead-letters it when it is written). A flagged one keeps that time in
// fireAt instead, for the oldest due (Backlog): a ts counts as it is, where
// the sweep's flag adds the quantum (flagQuery), so a sample document
// written flagged (run now by hand) counts a quantum early.
func classifyRetry(value []byte, c *columns) {
	var doc struct {
		FireRetry     json.RawMessage `json:"fireRetry"`
		NextAttemptAt json.RawMessage `json:"nextAttemptAt"`
		TS            json.RawMessage `json:"ts"`
	}
	t := unreadableRetry
	if r, err := order.DecodeRetryDoc(value); err == nil {
		t = store.RetryTally(r.Why())
	}
	c.tally = &t
	if json.Unmarshal(value, &doc) != nil {
		return
	}
	var at *int64
	byTS := false
	if ms, ok := millis(doc.NextAttemptAt); ok {
		at = &ms
	} else if len(doc.NextAttemptAt) == 0 || string(doc.NextAttemptAt) == "null" {
		if ms, ok := millis(doc.TS); ok {
			at, byTS = &ms, true
		}
	}
	switch {
	case string(doc.FireRetry) == "true":
		c.fire, c.fireAt = true, at
	case byTS:
		c.tsAt = at
	default:
		c.nextAt = at
	}
}

// millis reads a JSON number as milliseconds, clamped into int64.
func millis(raw json.RawMessage) (int64, bool) {
	var f float64
	if len(raw) == 0 || json.Unmarshal(raw, &f) != nil {
		return 0, false
	}
	switch {
	case f >= 9.2e18:
		return 1<<63 - 1, true
	case f <= -9.2e18:
		return -1 << 63, true
	}
	return int64(f), true
}

func statusSuffix(code int) string {
	if code <= 0 { // no status, or none an HTTP answer has
		return ""
	}
	return fmt.Sprintf(" (HTTP %d)", code)
}
