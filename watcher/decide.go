package watcher

import (
	"fmt"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
)

// Change is a feed event reduced to what the decision needs.
type Change struct {
	Collection string
	Key        string
	Value      []byte
	Deleted    bool
}

func changeOf(ev store.Event) Change {
	return Change{Collection: ev.Collection, Key: ev.Key, Value: ev.Value, Deleted: ev.Deleted}
}

// Action is what happens to a change.
type Action int

const (
	// Ignore: nothing to do (not paid, already confirmed, our own write...).
	Ignore Action = iota
	// DeadLetter: the work cannot be done (a malformed document, an order
	// without an email address); it is recorded in the dead-letter collection.
	DeadLetter
	// SendOrder is function 1: first send of a paid, unconfirmed order.
	SendOrder
	// SendRetry is function 2: resend for a retry document flagged fireRetry.
	SendRetry
)

func (a Action) String() string {
	return [...]string{"ignore", "dead_letter", "send_order", "send_retry"}[a]
}

// Decision is Decide's answer.
type Decision struct {
	Action Action
	Reason string         // why, for Ignore; the dead-letter reason for DeadLetter
	Detail string         // what exactly is wrong, for DeadLetter
	Retry  order.RetryDoc // for SendRetry
}

// Decide is the one place that says what a change means. It looks only at the
// change itself; the handler re-reads current state before it acts, because a
// replayed or late event may be stale. An order to send that is larger than
// maxOrderBytes is not posted to the email service.
func Decide(c Change, maxOrderBytes int) Decision {
	if c.Deleted {
		return Decision{Action: Ignore, Reason: "deleted"}
	}
	switch c.Collection {
	case order.Inbound:
		o, err := order.DecodeOrder(c.Value)
		switch {
		case err != nil:
			return Decision{Action: DeadLetter, Reason: order.ReasonMalformedOrder, Detail: err.Error()}
		case o.ConfirmationEmailSent:
			return Decision{Action: Ignore, Reason: "already confirmed"}
		case o.PaymentStatus != order.StatusPaid:
			return Decision{Action: Ignore, Reason: "not paid"}
		case o.Email == "":
			return Decision{Action: DeadLetter, Reason: order.ReasonNoEmail, Detail: "paid order has no email address"}
		case len(c.Value) > maxOrderBytes:
			return Decision{Action: DeadLetter, Reason: order.ReasonTooLarge,
				Detail: fmt.Sprintf("order is %d bytes, more than the %d an email is sent for", len(c.Value), maxOrderBytes)}
		}
		return Decision{Action: SendOrder}
	case order.Retry:
		if c.Key == order.ControlKey {
			return Decision{Action: Ignore, Reason: "control document, read by the timer"}
		}
		r, err := order.DecodeRetryDoc(c.Value)
		switch {
		case err != nil:
			return Decision{Action: DeadLetter, Reason: order.ReasonMalformedRetry, Detail: err.Error()}
		case !r.FireRetry:
			return Decision{Action: Ignore, Reason: "retry not due"}
		}
		return Decision{Action: SendRetry, Retry: r}
	}
	return Decision{Action: Ignore, Reason: "collection not watched"}
}
