package order

import (
	"fmt"
	"time"
)

// Backoff kinds.
const (
	BackoffExponential = "exponential" // MinDelay doubling to MaxDelay, with jitter
	BackoffFixed       = "fixed"       // the sample's: every retry after Quantum
)

// MaxRetryAfter caps how long a service's Retry-After can park an order.
const MaxRetryAfter = time.Hour

// Policy says when a failed confirmation is tried again, and when not.
type Policy struct {
	Backoff     string        // BackoffExponential (default) or BackoffFixed
	MinDelay    time.Duration // first delay of exponential backoff; default 1s
	MaxDelay    time.Duration // cap of exponential backoff; default 10m
	Jitter      float64       // a delay d is drawn from [d(1-Jitter), d(1+Jitter)] cut to [MinDelay, MaxDelay]; default 0.2
	MaxAttempts int           // attempts before dead-lettering; 0: unlimited (the sample)
	Quantum     time.Duration // the fixed backoff's delay; default 15s
}

// DefaultQuantum is the sample's: a retry document without nextAttemptAt
// is due this long after its ts.
const DefaultQuantum = 15 * time.Second

// DefaultPolicy is the policy when nothing is set; README explains the values.
func DefaultPolicy() Policy {
	return Policy{Backoff: BackoffExponential, MinDelay: time.Second, MaxDelay: 10 * time.Minute,
		Jitter: 0.2, MaxAttempts: 10, Quantum: DefaultQuantum}
}

// Validate names the setting that is wrong.
func (p Policy) Validate() error {
	switch {
	case p.Backoff != BackoffExponential && p.Backoff != BackoffFixed:
		return fmt.Errorf("backoff: %q is not %s or %s", p.Backoff, BackoffExponential, BackoffFixed)
	case p.MinDelay <= 0:
		return fmt.Errorf("backoff-min: %s is not positive", p.MinDelay)
	case p.MaxDelay < p.MinDelay:
		return fmt.Errorf("backoff-max: %s is below backoff-min %s", p.MaxDelay, p.MinDelay)
	case p.MaxDelay > maxBackoff:
		// Doubled past what a Duration holds, a delay wrapped round to the
		// shortest (146 years and more).
		return fmt.Errorf("backoff-max: %s is more than a year", p.MaxDelay)
	case !(p.Jitter >= 0 && p.Jitter < 1): // NaN too
		return fmt.Errorf("backoff-jitter: %v is not in [0, 1)", p.Jitter)
	case p.MaxAttempts < 0:
		return fmt.Errorf("max-attempts: %d is negative", p.MaxAttempts)
	case p.Quantum <= 0:
		return fmt.Errorf("retry-quantum: %s is not positive", p.Quantum)
	}
	return nil
}

// Failure is what the policy needs to know of a failed send.
type Failure struct {
	Permanent    bool          // the service refused the order; trying again won't help
	RetryAfter   time.Duration // the service asked to wait this long
	NotAttempted bool          // the send was held back (circuit open): no attempt spent
}

// Dead-letter reasons.
const (
	ReasonPermanent      = "permanent_error"
	ReasonExhausted      = "attempts_exhausted"
	ReasonMalformedOrder = "malformed_order"
	ReasonNoEmail        = "no_email"
	ReasonOrderMissing   = "order_missing"
	ReasonMalformedRetry = "malformed_retry_document"
	ReasonTooLarge       = "order_too_large"
	// ReasonReservedKey: the order's key is the control document's, which
	// its retry document would overwrite.
	ReasonReservedKey = "reserved_key"
	// ReasonInvalidKey: the key cannot be carried in the Idempotency-Key
	// header (control characters), or in a JSON document (not UTF-8).
	ReasonInvalidKey = "invalid_key"
	// ReasonPoisonEvent: handling the change failed again and again with an
	// error that is not the store being unavailable.
	ReasonPoisonEvent = "poison_event"
)

// Reasons returns every dead-letter reason the service gives, for the
// lists and metrics that name each.
func Reasons() []string {
	return []string{ReasonPermanent, ReasonExhausted, ReasonMalformedOrder, ReasonNoEmail, ReasonOrderMissing,
		ReasonMalformedRetry, ReasonTooLarge, ReasonReservedKey, ReasonInvalidKey, ReasonPoisonEvent}
}

// Verdict is the policy's answer.
type Verdict struct {
	GiveUp bool
	Reason string    // why it gives up
	At     time.Time // when to try again
	// ByQuantum: At is only now+Quantum, the fixed backoff. The retry
	// document then carries no nextAttemptAt, as the sample's, and the sweep
	// applies its current quantum (which allow_retrys may change).
	ByQuantum bool
}

// Next decides after a failure. attempts counts the attempts made so far,
// this one included; u is a uniform draw from [0, 1) for the jitter, so that
// the decision is a pure function.
func (p Policy) Next(attempts int, now time.Time, f Failure, u float64) Verdict {
	if f.NotAttempted {
		// Jittered, so that what was held back together does not come back
		// together; above the wait only: its RetryAfter is when the hold
		// may end (the breaker's cooldown), and one back before it is only
		// held again, a write and a change more each.
		d := max(f.RetryAfter, p.MinDelay)
		return Verdict{At: now.Add(time.Duration(float64(d) * (1 + 2*p.Jitter*u)))}
	}
	if f.Permanent {
		return Verdict{GiveUp: true, Reason: ReasonPermanent}
	}
	if p.MaxAttempts > 0 && attempts >= p.MaxAttempts {
		return Verdict{GiveUp: true, Reason: ReasonExhausted}
	}
	retryAfter := min(f.RetryAfter, MaxRetryAfter)
	if p.Backoff == BackoffFixed {
		if retryAfter > 0 {
			// The service named its wait: written in the document, as the
			// sweep's quantum, which allow_retrys may make shorter than
			// ours, must not cut it.
			return Verdict{At: now.Add(max(retryAfter, p.Quantum))}
		}
		return Verdict{At: now.Add(p.Quantum), ByQuantum: true}
	}
	return Verdict{At: now.Add(max(p.exponential(attempts, u), retryAfter))}
}

// maxBackoff bounds --backoff-max (and so --backoff-min).
const maxBackoff = 365 * 24 * time.Hour

func (p Policy) exponential(attempts int, u float64) time.Duration {
	d := p.MinDelay
	for i := 1; i < attempts && d < p.MaxDelay; i++ {
		d *= 2
	}
	// Drawn from the jitter's range cut to [MinDelay, MaxDelay], not drawn
	// and then cut: cut after, half the first retries would come back at
	// MinDelay exactly, together, and half the last at MaxDelay.
	d = min(d, p.MaxDelay)
	lo := max(time.Duration(float64(d)*(1-p.Jitter)), p.MinDelay)
	hi := max(min(time.Duration(float64(d)*(1+p.Jitter)), p.MaxDelay), lo)
	return lo + time.Duration(float64(hi-lo)*u)
}
