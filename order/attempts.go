package order

import (
	"fmt"
	"time"
)

// Attempts is the collection of attempt records: one document per order, under
// the order's key, holding its latest send attempts. It is not on the feed.
const Attempts = "attempts"

// TypeAttempts names an attempt record document.
const TypeAttempts = "attempts"

// Attempt is one send attempt and the outcome written after it. It holds no
// customer data: the reason is the mailer's (status, media type, sizes, an
// error code), never the answer's body.
type Attempt struct {
	N          int   `json:"n"`          // the attempt's number over the order's life, from 1
	At         int64 `json:"at"`         // ms since the epoch, when the request set out
	DurationMs int64 `json:"durationMs"` // until the answer, or the failure
	Status     int   `json:"status,omitempty"`
	// Class is "sent", or the failure's class: "transient", "permanent",
	// "config" (the service refused our credentials or certificate: not
	// counted against the order), "invalid".
	Class string `json:"class"`
	// Error names what went wrong when there was no answer: "timeout",
	// "connection refused", "connection reset", "connection closed", "dns",
	// "tls", "settings file", or "other".
	Error string `json:"error,omitempty"`
	// Reason is the mailer's description, free of customer data.
	Reason   string `json:"reason,omitempty"`
	Outcome  string `json:"outcome"` // what was written after it: sent, retry, dead_letter
	Instance string `json:"instance,omitempty"`
}

// AttemptsDoc is an order's attempt record.
type AttemptsDoc struct {
	Type           string `json:"type"`
	DocID          string `json:"docId"`
	IdempotencyKey string `json:"idempotencyKey,omitempty"` // of the latest attempt
	// Total counts every attempt ever recorded; Attempts keeps the latest of
	// them, at most the bound given to Add.
	Total    int       `json:"total"`
	Attempts []Attempt `json:"attempts"`
	// SettledAt (ms) is when the order was confirmed or dead-lettered; 0
	// while it is pending. The record expires a retention after it.
	SettledAt int64  `json:"settledAt,omitempty"`
	Result    string `json:"result,omitempty"` // "sent" or "dead_letter" once settled
}

// DecodeAttempts reads an attempt record.
func DecodeAttempts(raw []byte) (AttemptsDoc, error) {
	var d AttemptsDoc
	if err := decodeObject(raw, &d); err != nil {
		return AttemptsDoc{}, err
	}
	if d.DocID == "" {
		return AttemptsDoc{}, fmt.Errorf("%w: docId is missing or empty", ErrMalformed)
	}
	return d, nil
}

// Encode is the document's JSON.
func (d AttemptsDoc) Encode() []byte { return mustMarshal(d) }

// Add records a, numbering it after the others, and keeps the latest limit
// attempts (limit < 1 keeps one). It settles the record when outcome is sent or
// dead_letter, and opens it again otherwise (a redriven order's next attempt).
func (d AttemptsDoc) Add(a Attempt, limit int, now time.Time) AttemptsDoc {
	limit = max(1, limit)
	d.Type = TypeAttempts
	d.Total = Incr(d.Total)
	a.N = d.Total
	kept := d.Attempts
	if len(kept) >= limit {
		kept = kept[len(kept)-limit+1:]
	}
	d.Attempts = append(append(make([]Attempt, 0, len(kept)+1), kept...), a)
	switch a.Outcome {
	case "sent", "dead_letter":
		d.SettledAt, d.Result = now.UnixMilli(), a.Outcome
	default:
		d.SettledAt, d.Result = 0, ""
	}
	return d
}
