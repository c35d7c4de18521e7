package watcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// Change is a feed event reduced to what the decision needs.
type Change struct {
	Collection string
	Key        string
	Deleted    bool
	Value      []byte // the document as the event carries it; nil when Deleted

	decoded *decoded // Value decoded once, for Settled and Decide; nil: each decodes
}

// decoded is a change's value decoded, as an order or a retry document by
// its collection.
type decoded struct {
	done  bool
	order order.Order
	retry order.RetryDoc
	err   error
}

func changeOf(ev store.Event) Change {
	return Change{Collection: ev.Collection, Key: ev.Key, Deleted: ev.Deleted, Value: ev.Value, decoded: &decoded{}}
}

// decode decodes the change's value by its collection, once per change made
// by changeOf.
func (c Change) decode() *decoded {
	d := c.decoded
	if d == nil {
		d = &decoded{}
	}
	if !d.done {
		switch c.Collection {
		case order.Inbound:
			d.order, d.err = order.DecodeOrder(c.Value)
		case order.Retry:
			d.retry, d.err = order.DecodeRetryDoc(c.Value)
		}
		d.done = true
	}
	return d
}

// own says whether doc of coll is the change's own value: the feed's
// snapshot of the state holds it, and it need not be decoded again.
func (c Change) own(coll string, doc store.Doc) bool {
	return c.Collection == coll && !c.Deleted && bytes.Equal(doc.Value, c.Value)
}

// orderOf decodes the state's order.
func (c Change) orderOf(doc store.Doc) (order.Order, error) {
	if c.own(order.Inbound, doc) {
		d := c.decode()
		return d.order, d.err
	}
	return order.DecodeOrder(doc.Value)
}

// retryOf decodes the state's retry document.
func (c Change) retryOf(doc store.Doc) (order.RetryDoc, error) {
	if c.own(order.Retry, doc) {
		d := c.decode()
		return d.retry, d.err
	}
	return order.DecodeRetryDoc(doc.Value)
}

// Settled says, from the change alone, that there is nothing to do: an
// order that is not paid, a retry document that is not flagged. A change
// that is no longer current is no exception: whatever changed since came
// with a change of its own, still to be decided. It spares the read of the
// state for most changes (every order is written before it is paid; every
// claim and failed attempt writes a retry document that is not flagged).
// A paid order always reads the state, and so does a confirmed one unless
// outcomes are atomic: it may have a retry document or a dead letter to
// clean up.
func Settled(c Change, now time.Time, lim Limits) (Plan, bool) {
	if c.Deleted {
		return ignore("deleted"), true
	}
	switch c.Collection {
	case order.Inbound:
		d := c.decode()
		o, err := d.order, d.err
		if err == nil && o.ConfirmationEmailSent && lim.AtomicOutcomes {
			return ignore("already confirmed"), true
		}
		if err != nil || o.PaymentStatus == order.StatusPaid {
			return Plan{}, false
		}
		return orderNotPaid(o), true
	case order.Retry:
		if c.Key == order.ControlKey {
			return ignore("control document, read by the timer"), true
		}
		d := c.decode()
		r, err := d.retry, d.err
		if err != nil || r.FireRetry {
			return Plan{}, false
		}
		return retryNotDue(r, now), true
	}
	return ignore("collection not watched"), true
}

// Action is what a plan does.
type Action int

const (
	// Ignore: nothing to do (not paid, already confirmed, our own write...).
	Ignore Action = iota
	// Write: apply Plan.Writes, the whole outcome; nothing is sent.
	Write
	// Send: apply Plan.Writes (the claim of a retry, if any), send, then
	// apply what Settle says.
	Send
)

func (a Action) String() string { return [...]string{"ignore", "write", "send"}[a] }

// Limits are the settings decisions depend on.
type Limits struct {
	MaxOrderBytes int
	ClaimTTL      time.Duration
	Policy        order.Policy
	// SingleConsumer: no other instance reads this feed (the embedded
	// store's process lock), so a flagged retry needs no claim.
	SingleConsumer bool
	// AtomicOutcomes: the store writes an outcome in one transaction (the
	// embedded store), so no crash leaves a confirmed order with a retry
	// document or dead letter to clean up.
	AtomicOutcomes bool
}

// Plan is Decide's answer.
type Plan struct {
	Action Action
	Reason string // why: the ignore reason, or the dead-letter reason
	Detail string // what exactly, for a dead letter
	// Warn is something an operator should see about this document (an
	// unknown payment state, a due time centuries away).
	Warn   string
	Writes []store.Write

	// For Send.
	OrderKey         string
	OrderCAS         uint64 // of the order decided on: paid, unconfirmed, readable
	OrderIncarnation uint64 // of the order decided on; 0: the store cannot tell
	IdempotencyKey   string
	Body             []byte
	Attempt          int            // the number of this attempt, from 1
	Retry            order.RetryDoc // the retry document once claimed; zero for a first send
}

// Decide is the one place that says what a change means, on the current
// state of the order's documents (the change itself may be stale: a replay,
// or a change overtaken by later ones). It is pure.
func Decide(c Change, st store.State, now time.Time, lim Limits) Plan {
	if c.Deleted {
		return ignore("deleted")
	}
	switch c.Collection {
	case order.Inbound:
		return decideOrder(c, st, now, lim)
	case order.Retry:
		return decideRetry(c, st, now, lim)
	}
	return ignore("collection not watched")
}

func ignore(reason string) Plan { return Plan{Action: Ignore, Reason: reason} }

// decideOrder is function 1: the first send of a paid, unconfirmed order.
func decideOrder(c Change, st store.State, now time.Time, lim Limits) Plan {
	key := c.Key
	if !st.Order.Found() {
		return ignore("order no longer exists")
	}
	o, decodeErr := c.orderOf(st.Order)
	if decodeErr == nil {
		if o.ConfirmationEmailSent {
			if key == order.ControlKey {
				return ignore("already confirmed") // its retry document is the control document
			}
			return cleanUp(st, "already confirmed")
		}
		if o.PaymentStatus != order.StatusPaid {
			return orderNotPaid(o)
		}
	}
	if key == order.ControlKey {
		// Its retry document would be the control document.
		return deadLetterOrder(key, st, order.ReasonReservedKey,
			fmt.Sprintf("the key %s is the retry timer's control document; give the order another key", order.ControlKey), decodeErr, now)
	}
	if decodeErr == nil {
		// Before what holds a send back or keeps it from going (a retry or
		// a dead letter left by a crash between an outcome's writes on
		// Couchbase, a copy without its email address): it went.
		if sent, says := sentUnder(st, order.IdempotencyKey(key, incarnation(st.Order))); sent != "" {
			return markedAgain(key, st, sent, says)
		}
	}
	if st.Retry.Found() {
		return ignore("a retry document owns the confirmation")
	}
	dl, dead := deadLetterOf(st)
	if dead && dl.HoldsBack(key, st.Order.Incarnation) {
		return ignore("dead-lettered (" + dl.Reason + "); redrive to send")
	}
	if reason, detail := problem(key, st.Order, o, decodeErr, lim); reason != "" {
		return deadLetterOrder(key, st, reason, detail, decodeErr, now)
	}
	idem := order.IdempotencyKey(key, incarnation(st.Order))
	if dead && dl.IdempotencyKey != "" && dl.Reason != order.ReasonOrderMissing && !otherIncarnation(dl.IdempotencyKey, key, st.Order) {
		// The order mended (an address given back) after its retries were
		// dead-lettered for it: the confirmation they attempted, under
		// their key, which an edit changes on Couchbase (the order's CAS),
		// so that a send of theirs that got through is not delivered
		// twice. Not for an order missing: that one may be a new order
		// under the same key, whose confirmation is its own.
		idem = dl.IdempotencyKey
	}
	return Plan{Action: Send, OrderKey: key, OrderCAS: st.Order.CAS, OrderIncarnation: st.Order.Incarnation, Body: st.Order.Value, Attempt: 1,
		IdempotencyKey: idem}
}

// markedAgain is the plan for an order (decoded) that came back paid
// without its mark after its confirmation went out under sent, as says
// tells: marked again, nothing sent, and what its sending left (a retry or
// a dead letter, where a crash came between an outcome's writes) removed,
// the order first.
func markedAgain(key string, st store.State, sent, says string) Plan {
	ws := []store.Write{{Op: store.OpReplace, Collection: order.Inbound, Key: key,
		Value: order.MarkDecodedConfirmed(st.Order.Value), CAS: st.Order.CAS, Sent: sent}}
	return Plan{Action: Write, Reason: "sent before: marked again",
		Warn: "the order came back paid without confirmationEmailSent after its confirmation was sent under " + sent +
			" (" + says + " says so): marked confirmed again, not mailed again; whatever wrote the order dropped the mark",
		Writes: append(ws, cleanUp(st, "").Writes...)}
}

// sentUnder says under which key this very order's confirmation was sent,
// if it was, and what says so, so that a copy of the order written back
// without the mark (an order system saving what it read before the send)
// is not mailed again: the key the store keeps with the order document
// (Couchbase: an attribute its deletion drops, so never another
// incarnation's), or the order's attempt record where the store reads it
// with the state (the embedded store), when the record's key is idem, the
// key of this very order (its incarnation): a record of another
// incarnation's send has another key; one where the store cannot tell
// incarnations is not used.
func sentUnder(st store.State, idem string) (sent, says string) {
	if st.Order.Sent != "" {
		return st.Order.Sent, "the key the store keeps with the order"
	}
	if !st.Attempts.Found() || st.Order.Incarnation == 0 {
		return "", ""
	}
	rec, err := order.DecodeAttempts(st.Attempts.Value)
	if err != nil || rec.Result != "sent" || rec.IdempotencyKey != idem {
		return "", ""
	}
	return idem, "its attempt record"
}

// maxDetail bounds the text of a dead letter's reason (its lastError, its
// log line): a decode error names the fields of a document, which a
// hostile one may make megabytes long.
const maxDetail = 300

// orderNotPaid is the plan for an order that is not paid: nothing, and a
// warning when its payment state is none the service knows.
func orderNotPaid(o order.Order) Plan {
	p := ignore("not paid")
	if o.UnknownPaymentState() {
		p.Warn = fmt.Sprintf("unknown payment state %q: the order is not confirmed unless it is %q", order.Shorten(o.PaymentStatus, 64), order.StatusPaid)
	}
	return p
}

// retryNotDue is the plan for a retry document the timer has not flagged:
// nothing, and a warning when it falls due more than a year away.
func retryNotDue(r order.RetryDoc, now time.Time) Plan {
	p := ignore("retry not due")
	if r.NextAttemptAt > now.Add(order.FarFuture).UnixMilli() {
		p.Warn = "retry due at " + time.UnixMilli(r.NextAttemptAt).UTC().Format(time.RFC3339) + ", more than a year away"
	}
	return p
}

// deadLetterOrder records a problem of a first send; one already recorded
// for the same reason is left as it is.
func deadLetterOrder(key string, st store.State, reason, detail string, decodeErr error, now time.Time) Plan {
	if decodeErr != nil {
		reason, detail = order.ReasonMalformedOrder, decodeErr.Error()
	}
	detail = order.Shorten(detail, maxDetail)
	if dl, ok := deadLetterOf(st); ok && dl.Reason == reason {
		return ignore("dead-lettered already (" + reason + ")")
	}
	return Plan{Action: Write, Reason: reason, Detail: detail,
		Writes: deadLetterWrites(st, order.DeadLetterDoc{DocID: key, Reason: reason, LastError: detail, DeadAt: now.UnixMilli()}, false)}
}

// problem names what keeps a paid order from being sent at all.
func problem(key string, doc store.Doc, o order.Order, decodeErr error, lim Limits) (reason, detail string) {
	switch {
	case decodeErr != nil:
		return order.ReasonMalformedOrder, decodeErr.Error()
	case mailer.CheckHeaderValue(order.IdempotencyKey(key, incarnation(doc))) != nil:
		return order.ReasonInvalidKey, "the key holds control characters an Idempotency-Key header cannot carry"
	case !utf8.ValidString(key):
		// Sent, its retry document's docId, JSON, could not hold the key:
		// every retry would be malformed.
		return order.ReasonInvalidKey, "the key is not valid UTF-8, which JSON documents (the retry's, the dead letter's) cannot hold"
	case !o.HasEmail():
		return order.ReasonNoEmail, "paid order has no email address"
	case len(doc.Value) > lim.MaxOrderBytes:
		return order.ReasonTooLarge, fmt.Sprintf("order is %d bytes, more than the %d an email is sent for", len(doc.Value), lim.MaxOrderBytes)
	}
	return "", ""
}

// decideRetry is function 2: the resend of a retry document flagged
// fireRetry.
func decideRetry(c Change, st store.State, now time.Time, lim Limits) Plan {
	key := c.Key
	if key == order.ControlKey {
		return ignore("control document, read by the timer")
	}
	if !st.Retry.Found() {
		return ignore("retry document no longer exists")
	}
	r, err := c.retryOf(st.Retry)
	switch {
	case err != nil:
	case r.DocID != key:
		err = fmt.Errorf("%w: docId %q is not the document's key", order.ErrMalformed, r.DocID)
	case r.IdempotencyKey != "" && !ownKey(key, r.IdempotencyKey):
		// Another order's (a hand edit, another tool): sent under it, this
		// order would be taken for that one's replay, answered 2xx, and
		// marked confirmed unmailed. Its dead letter gets one of its own.
		err = fmt.Errorf("%w: idempotencyKey is not one of this order's", order.ErrMalformed)
	}
	if err != nil {
		return retryDeadLetter(key, st, salvaged(key, st.Retry.Value), order.ReasonMalformedRetry, err.Error(), now)
	}
	if !r.FireRetry {
		return retryNotDue(r, now)
	}
	if dl, ok := deadLetterOf(st); ok && dl.HoldsBack(key, st.Order.Incarnation) && r.RedriveCount <= dl.RedriveCount {
		// The dead letter came after this retry (a crash between the two
		// writes of a dead-lettering); a redrive's retry counts one more.
		return Plan{Action: Write, Reason: "dead letter supersedes the retry",
			Writes: []store.Write{removeOf(order.Retry, st.Retry)}}
	}
	if !st.Order.Found() {
		return retryDeadLetter(key, st, r, order.ReasonOrderMissing, "no order "+key+" in "+order.Inbound, now)
	}
	o, decodeErr := c.orderOf(st.Order)
	switch {
	case decodeErr == nil && o.ConfirmationEmailSent:
		return cleanUp(st, "order already confirmed; retry dropped")
	case decodeErr == nil && o.PaymentStatus != order.StatusPaid:
		p := Plan{Action: Write, Reason: "order no longer paid; retry dropped", Writes: []store.Write{removeOf(order.Retry, st.Retry)}}
		p.Warn = fmt.Sprintf("order is no longer paid (payment state %q); its retry is dropped", o.PaymentStatus)
		return p
	case decodeErr == nil:
		// A retry left by a crash between a send's mark and its removal,
		// and the order written back without the mark since.
		if sent, says := sentUnder(st, r.IdempotencyKey); sent != "" {
			return markedAgain(key, st, sent, says)
		}
	}
	if r.IdempotencyKey == "" && st.Order.Incarnation == 0 {
		// A retry without a key where the store keeps no incarnations
		// (Couchbase): the sample's, whose sends carried none, or the first
		// release's, which sent "confirmation:<key>" on every attempt. That
		// key, lest the email service take this attempt for a new
		// confirmation, and its dead letter's (below), which a mended
		// order is sent under. (The embedded store wrote it into the first
		// release's documents as it upgraded them.)
		r.IdempotencyKey = order.IdempotencyKey(key, 0)
	}
	if reason, detail := problem(key, st.Order, o, decodeErr, lim); reason != "" {
		return retryDeadLetter(key, st, r, reason, detail, now)
	}
	if r.IdempotencyKey == "" || otherIncarnation(r.IdempotencyKey, key, st.Order) {
		// A key of another incarnation is a deleted order's: this one is new.
		r.IdempotencyKey = order.IdempotencyKey(key, incarnation(st.Order))
	}
	if lim.SingleConsumer {
		// A flagged document is never flagged again (the sweep takes only
		// unflagged ones), and a crash before the outcome replays its event.
		return Plan{Action: Send, OrderKey: key, OrderCAS: st.Order.CAS, OrderIncarnation: st.Order.Incarnation, Body: st.Order.Value, Attempt: order.Incr(r.Attempt),
			IdempotencyKey: r.IdempotencyKey, Retry: r}
	}
	claimed := r
	claimed.FireRetry = false
	claimed.NextAttemptAt = now.Add(lim.ClaimTTL).UnixMilli()
	return Plan{
		Action: Send, OrderKey: key, OrderCAS: st.Order.CAS, OrderIncarnation: st.Order.Incarnation, Body: st.Order.Value, Attempt: order.Incr(r.Attempt),
		IdempotencyKey: claimed.IdempotencyKey, Retry: claimed,
		// The claim: of several instances that saw the flag, one wins; if it
		// dies, the sweep flags the document again once the claim has run
		// out.
		Writes: []store.Write{{Op: store.OpReplace, Collection: order.Retry, Key: key, Value: claimed.Encode(), CAS: st.Retry.CAS}},
	}
}

// incarnation tells one order from another created under the same key
// later. Where the store keeps the write that created the document (the
// embedded store) that is its incarnation. Where it cannot tell (Couchbase
// KV), the order's CAS when its confirmation is first planned stands in: a
// re-created order always has another, and every later attempt sends the
// key its retry document kept. Only a crash between a send and its outcome,
// with the order edited in that window, makes the replay send another key.
func incarnation(d store.Doc) uint64 {
	if d.Incarnation != 0 {
		return d.Incarnation
	}
	return d.CAS
}

// otherIncarnation says whether idempotency key k was made for another
// order than d under the same key (order.OfAnotherIncarnation).
func otherIncarnation(k, key string, d store.Doc) bool {
	return order.OfAnotherIncarnation(k, key, d.Incarnation)
}

// salvaged is what can be read of a malformed retry document of key (one
// edited by hand, a field of the wrong type): its attempts, and its
// idempotency key where it is one of key's, so that its dead letter
// counts them and a redrive sends under the key an attempt may have got
// through with, not under a new one.
func salvaged(key string, raw []byte) order.RetryDoc {
	var r order.RetryDoc
	_ = json.Unmarshal(raw, &r) // fills the fields it can read, whatever the others
	if !ownKey(key, r.IdempotencyKey) {
		r.IdempotencyKey = ""
	}
	return order.RetryDoc{DocID: key, Attempt: max(r.Attempt, 0), FirstAttemptAt: r.FirstAttemptAt, TS: r.TS,
		LastStatus: r.LastStatus, RedriveCount: max(r.RedriveCount, 0), IdempotencyKey: r.IdempotencyKey}
}

// ownKey says whether k is an idempotency key of order key's (of any of
// its incarnations), one a header can carry.
func ownKey(key, k string) bool {
	return order.IsKeyOf(k, key) && mailer.CheckHeaderValue(k) == nil
}

// retryDeadLetter gives up on a retry: the dead letter, then the retry
// document goes.
func retryDeadLetter(key string, st store.State, r order.RetryDoc, reason, detail string, now time.Time) Plan {
	r.DocID = key
	detail = order.Shorten(detail, maxDetail)
	if r.IdempotencyKey == "" && st.Order.Found() {
		// Unreadable, or the sample's: the order's key, so that the dead
		// letter holds up this order and not one created anew.
		r.IdempotencyKey = order.IdempotencyKey(key, incarnation(st.Order))
	}
	d := deadLetterFrom(r, reason, now)
	d.LastError = detail
	return Plan{Action: Write, Reason: reason, Detail: detail, Writes: deadLetterWrites(st, d, true)}
}

// cleanUp removes what a confirmed order no longer needs: a retry document
// or a dead letter left by a crash between the writes of an outcome on
// Couchbase.
func cleanUp(st store.State, reason string) Plan {
	var ws []store.Write
	if st.Retry.Found() {
		ws = append(ws, removeOf(order.Retry, st.Retry))
	}
	if st.DeadLetter.Found() {
		ws = append(ws, removeOf(order.DeadLetter, st.DeadLetter))
	}
	if len(ws) == 0 {
		return ignore(reason)
	}
	return Plan{Action: Write, Reason: reason, Writes: ws}
}

func removeOf(coll string, d store.Doc) store.Write {
	return store.Write{Op: store.OpRemove, Collection: coll, Key: d.Key, CAS: d.CAS}
}

// deadLetterWrites writes the dead letter (over the one there, if any, by
// its CAS) and then, with removeRetry, removes the retry document. Dead
// letter first: a crash in between leaves both, and the retry then finds
// the dead letter newer than itself and goes (decideRetry).
func deadLetterWrites(st store.State, d order.DeadLetterDoc, removeRetry bool) []store.Write {
	d.Type = order.TypeConfirmation
	w := store.Write{Op: store.OpInsert, Collection: order.DeadLetter, Key: d.DocID, Value: d.Encode()}
	if st.DeadLetter.Found() {
		w.Op, w.CAS = store.OpReplace, st.DeadLetter.CAS
		if old, err := order.DecodeDeadLetter(st.DeadLetter.Value); err == nil {
			d.RedriveCount = max(d.RedriveCount, old.RedriveCount)
			w.Value = d.Encode()
		}
	}
	ws := []store.Write{w}
	if removeRetry && st.Retry.Found() {
		ws = append(ws, removeOf(order.Retry, st.Retry))
	}
	return ws
}

// deadLetterOf reads the order's dead letter. An unreadable one counts as
// about sending, so that only an operator's redrive or purge lets the order
// go out again.
func deadLetterOf(st store.State) (order.DeadLetterDoc, bool) {
	if !st.DeadLetter.Found() {
		return order.DeadLetterDoc{}, false
	}
	d, err := order.DecodeDeadLetter(st.DeadLetter.Value)
	if err != nil {
		return order.DeadLetterDoc{DocID: st.DeadLetter.Key, Reason: "unreadable"}, true
	}
	return d, true
}

func deadLetterFrom(r order.RetryDoc, reason string, now time.Time) order.DeadLetterDoc {
	return order.DeadLetterDoc{
		DocID: r.DocID, Reason: reason, LastStatus: r.LastStatus, LastError: r.LastError,
		Attempts: r.Attempt, FirstAttemptAt: r.FirstAttemptAt, LastAttemptAt: r.TS,
		DeadAt: now.UnixMilli(), RedriveCount: r.RedriveCount, IdempotencyKey: r.IdempotencyKey,
	}
}

// Outcome is what Settle says to write after a send.
type Outcome struct {
	Result string // "sent", "retry" or "dead_letter"
	Reason string // the dead-letter reason
	Retry  order.RetryDoc
	Delay  time.Duration // until the retry, for the log
	Writes []store.Write
}

// Settle says what a send's result means, on the current state: st is the
// state the send was planned on (with the claim made) or, when an outcome
// could not be written because a document changed meanwhile, the state
// read again. u is a uniform draw from [0, 1) for the jitter. It is pure.
func Settle(p Plan, st store.State, sendErr error, now time.Time, lim Limits, u float64) Outcome {
	if sendErr == nil {
		var ws []store.Write
		// The order first: marking it is what keeps it from a second send.
		// Only the order sent: one created anew under its key meanwhile is not.
		if st.Order.Found() && (p.OrderIncarnation == 0 || st.Order.Incarnation == p.OrderIncarnation) {
			if marked, ok := markedOrder(p, st.Order); ok {
				ws = append(ws, store.Write{Op: store.OpReplace, Collection: order.Inbound, Key: p.OrderKey, Value: marked, CAS: st.Order.CAS,
					Sent: p.IdempotencyKey})
			}
		}
		if st.Retry.Found() {
			ws = append(ws, removeOf(order.Retry, st.Retry))
		}
		if st.DeadLetter.Found() {
			ws = append(ws, removeOf(order.DeadLetter, st.DeadLetter))
		}
		return Outcome{Result: "sent", Writes: ws}
	}

	if p.Retry.DocID != "" && !st.Retry.Found() {
		// The retry sent was dropped during the send (ops.DropRetry): the
		// order stays unconfirmed, as the operator was told; a retry made
		// again would send it once more.
		return Outcome{Result: "retry", Reason: "dropped during the send"}
	}
	f, status, reason := failureOf(sendErr)
	prev := p.Retry
	if prev.DocID == "" {
		prev = order.RetryDoc{Type: order.TypeConfirmation, DocID: p.OrderKey, IdempotencyKey: p.IdempotencyKey}
	}
	if st.Retry.Found() {
		cur, err := order.DecodeRetryDoc(st.Retry.Value)
		switch {
		case err == nil && cur.RedriveCount != prev.RedriveCount:
			// Redriven during the send: the new budget is not this failure's.
			return Outcome{Result: "retry", Reason: "redriven during the send"}
		case err == nil:
			prev = cur // the failure counts on top of what is stored now
			// The key the send carried: the stored one, unless that was a
			// deleted order's (decideRetry made this incarnation's).
			prev.IdempotencyKey = p.IdempotencyKey
		}
	}
	next := prev
	if !f.NotAttempted {
		next = prev.Failed(now)
	} else if next.TS == 0 {
		next.TS = now.UnixMilli()
	}
	next.FireRetry = false
	if f.Held {
		// No request: what the last one got stays, so that an outage's
		// backlog says what the email service answered, not only that the
		// breaker held the sends back.
		next.HeldBack = strings.TrimPrefix(reason, order.NotAttemptedPrefix)
		if strings.HasPrefix(next.LastError, order.NotAttemptedPrefix) {
			next.LastError = "" // a hold, as documents said before heldBack
		}
	} else {
		next.LastStatus, next.LastError, next.HeldBack = status, reason, ""
	}

	if f.Invalid {
		return deadLetterOutcome(st, next, order.ReasonInvalidKey, now)
	}
	v := lim.Policy.Next(next.Attempt, now, f.Failure, u)
	if v.GiveUp {
		return deadLetterOutcome(st, next, v.Reason, now)
	}
	next.NextAttemptAt = v.At.UnixMilli()
	if v.ByQuantum {
		next.NextAttemptAt = 0
	}
	w := store.Write{Op: store.OpInsert, Collection: order.Retry, Key: p.OrderKey, Value: next.Encode()}
	if st.Retry.Found() {
		w.Op, w.CAS = store.OpReplace, st.Retry.CAS
	}
	return Outcome{Result: "retry", Retry: next, Delay: v.At.Sub(now), Writes: []store.Write{w}}
}

// markedOrder is the order d marked confirmed, when it is readable and not
// yet marked: known without decoding it again when it is the very revision
// the plan was made on.
func markedOrder(p Plan, d store.Doc) ([]byte, bool) {
	if p.OrderCAS == 0 || d.CAS != p.OrderCAS {
		o, err := order.DecodeOrder(d.Value)
		if err != nil || o.ConfirmationEmailSent {
			return nil, false
		}
	}
	// Decoded, here or when the plan was made on this very revision.
	return order.MarkDecodedConfirmed(d.Value), true
}

func deadLetterOutcome(st store.State, r order.RetryDoc, reason string, now time.Time) Outcome {
	d := deadLetterFrom(r, reason, now)
	return Outcome{Result: "dead_letter", Reason: reason, Retry: r, Writes: deadLetterWrites(st, d, true)}
}

// sendFailure is what the policy needs of a failed send.
type sendFailure struct {
	order.Failure
	Invalid bool
	Held    bool // no request was made (the breaker, the rate limit, a settings file)
}

// failureOf reads a send error: the policy's view, the status and a reason
// free of customer data. Anything that is not a classified
// *mailer.SendError is taken as transient.
func failureOf(err error) (sendFailure, int, string) {
	var se *mailer.SendError
	if !errors.As(err, &se) {
		return sendFailure{}, 0, "unclassified send failure"
	}
	return sendFailure{
		// A refused configuration spends no attempt of the order's.
		Failure: order.Failure{Permanent: se.Class == mailer.Permanent, RetryAfter: se.RetryAfter,
			NotAttempted: se.NotAttempted || se.Class == mailer.Configuration},
		Invalid: se.Class == mailer.Invalid,
		Held:    se.NotAttempted,
	}, se.Status, se.Reason()
}
