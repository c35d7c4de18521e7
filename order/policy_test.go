package order_test

import (
	"math"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func TestPolicyNext(t *testing.T) {
	t.Parallel()
	p := order.Policy{Backoff: order.BackoffExponential, MinDelay: time.Second, MaxDelay: time.Minute,
		Jitter: 0.2, MaxAttempts: 8, Quantum: 15 * time.Second}
	require.NoError(t, p.Validate())
	const mid = 0.5 // no jitter either way
	tests := []struct {
		name     string
		attempts int
		f        order.Failure
		u        float64
		want     order.Verdict
	}{
		{"first failure waits the minimum and up to its jitter above", 1, order.Failure{}, mid, order.Verdict{At: now.Add(1100 * time.Millisecond)}},
		{"doubles", 2, order.Failure{}, mid, order.Verdict{At: now.Add(2 * time.Second)}},
		{"doubles again", 4, order.Failure{}, mid, order.Verdict{At: now.Add(8 * time.Second)}},
		{"capped at the maximum and down to its jitter below", 7, order.Failure{}, mid, order.Verdict{At: now.Add(54 * time.Second)}},
		{"jitter low end", 3, order.Failure{}, 0, order.Verdict{At: now.Add(3200 * time.Millisecond)}},
		{"jitter upper half", 3, order.Failure{}, 0.75, order.Verdict{At: now.Add(4400 * time.Millisecond)}},
		{"jitter never below the minimum", 1, order.Failure{}, 0, order.Verdict{At: now.Add(time.Second)}},
		{"jitter never above the maximum", 7, order.Failure{}, 0.9999995, order.Verdict{At: now.Add(time.Minute - 6*time.Microsecond)}},
		{"Retry-After longer than backoff wins", 1, order.Failure{RetryAfter: 30 * time.Second}, mid, order.Verdict{At: now.Add(30 * time.Second)}},
		{"Retry-After shorter than backoff loses", 4, order.Failure{RetryAfter: time.Second}, mid, order.Verdict{At: now.Add(8 * time.Second)}},
		{"Retry-After is capped", 1, order.Failure{RetryAfter: 48 * time.Hour}, mid, order.Verdict{At: now.Add(order.MaxRetryAfter)}},
		{"permanent gives up at once", 1, order.Failure{Permanent: true}, mid, order.Verdict{GiveUp: true, Reason: order.ReasonPermanent}},
		{"exhausted at the budget", 8, order.Failure{}, mid, order.Verdict{GiveUp: true, Reason: order.ReasonExhausted}},
		{"not attempted: no budget spent", 8, order.Failure{NotAttempted: true, RetryAfter: 5 * time.Second}, mid, order.Verdict{At: now.Add(6 * time.Second)}},
		{"not attempted waits at least the minimum", 1, order.Failure{NotAttempted: true}, 0, order.Verdict{At: now.Add(time.Second)}},
		{"not attempted is jittered too, never before its wait", 1, order.Failure{NotAttempted: true, RetryAfter: 10 * time.Second}, 0, order.Verdict{At: now.Add(10 * time.Second)}},
		{"not attempted is jittered above its wait", 1, order.Failure{NotAttempted: true, RetryAfter: 10 * time.Second}, 0.999, order.Verdict{At: now.Add(13996 * time.Millisecond)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, p.Next(tt.attempts, now, tt.f, tt.u))
		})
	}
}

func TestPolicyJitterStaysInBounds(t *testing.T) {
	t.Parallel()
	p := order.DefaultPolicy()
	p.MaxAttempts = 0
	for attempts := 1; attempts <= 40; attempts++ {
		base := min(p.MinDelay<<min(attempts-1, 30), p.MaxDelay)
		for _, u := range []float64{0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999} {
			d := p.Next(attempts, now, order.Failure{}, u).At.Sub(now)
			assert.GreaterOrEqual(t, d, max(time.Duration(float64(base)*0.8), p.MinDelay), "attempt %d u %v", attempts, u)
			assert.LessOrEqual(t, d, min(time.Duration(float64(base)*1.2), p.MaxDelay), "attempt %d u %v", attempts, u)
		}
	}
}

// TestFirstAndLastRetriesAreSpread: the draws that the jitter's range
// would put below --backoff-min or above --backoff-max are not cut to it,
// which would bring half the first retries back at the same moment.
func TestFirstAndLastRetriesAreSpread(t *testing.T) {
	t.Parallel()
	p := order.DefaultPolicy()
	p.MaxAttempts = 0
	for _, attempts := range []int{1, 30} {
		seen := map[time.Duration]bool{}
		for i := range 10 {
			seen[p.Next(attempts, now, order.Failure{}, float64(i)/10).At.Sub(now)] = true
		}
		assert.Len(t, seen, 10, "attempt %d: ten draws, ten delays: %v", attempts, seen)
	}
}

func TestPolicyFixedIsTheSample(t *testing.T) {
	t.Parallel()
	p := order.Policy{Backoff: order.BackoffFixed, MinDelay: time.Second, MaxDelay: time.Second, Quantum: 15 * time.Second}
	for _, attempts := range []int{1, 5, 500} {
		assert.Equal(t, order.Verdict{At: now.Add(15 * time.Second), ByQuantum: true}, p.Next(attempts, now, order.Failure{}, 0.9),
			"MaxAttempts 0 retries forever, every quantum")
	}
	assert.Equal(t, order.Verdict{At: now.Add(time.Minute)}, p.Next(1, now, order.Failure{RetryAfter: time.Minute}, 0),
		"a longer Retry-After is honoured")
	// A shorter one waits the quantum, written in the document: the
	// quantum the sweep has when the retry falls due may be shorter than
	// the Retry-After (allow_retrys lowered it), and must not cut it.
	v := p.Next(1, now, order.Failure{RetryAfter: 10 * time.Second}, 0)
	assert.Equal(t, order.Verdict{At: now.Add(15 * time.Second)}, v)
	r := order.RetryDoc{Type: order.TypeConfirmation, DocID: "k"}.Failed(now)
	r.NextAttemptAt = v.At.UnixMilli() // as the watcher writes a verdict not ByQuantum
	assert.False(t, r.Due(now.Add(3*time.Second), 2*time.Second),
		"a retry answered Retry-After 10s is not due 3s later under a 2s quantum")
	assert.True(t, r.Due(now.Add(15*time.Second), 2*time.Second))
}

func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	ok := order.DefaultPolicy()
	require.NoError(t, ok.Validate())
	tests := []struct {
		give func(*order.Policy)
		want string
	}{
		{func(p *order.Policy) { p.Backoff = "linear" }, "backoff:"},
		{func(p *order.Policy) { p.MinDelay = 0 }, "backoff-min"},
		{func(p *order.Policy) { p.MaxDelay = p.MinDelay / 2 }, "backoff-max"},
		{func(p *order.Policy) { p.Jitter = 1 }, "backoff-jitter"},
		{func(p *order.Policy) { p.Jitter = math.NaN() }, "backoff-jitter"},
		{func(p *order.Policy) { p.MaxDelay = math.MaxInt64 }, "backoff-max: 2562047h47m16.854775807s is more than a year"},
		{func(p *order.Policy) { p.MaxAttempts = -1 }, "max-attempts"},
		{func(p *order.Policy) { p.Quantum = 0 }, "retry-quantum"},
	}
	for _, tt := range tests {
		p := ok
		tt.give(&p)
		assert.ErrorContains(t, p.Validate(), tt.want)
	}
}

func TestDecodeControl(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		want order.Control
		err  string
	}{
		{give: `{}`},
		{give: `{"interval":"5s","quantum":"1m"}`, want: order.Control{Interval: 5 * time.Second, Quantum: time.Minute}},
		{give: `{"interval":20}`, want: order.Control{Interval: 20 * time.Second}},
		{give: `{"interval":0.5}`, want: order.Control{Interval: 500 * time.Millisecond}},
		{give: `{"interval":"soon"}`, err: `interval: "soon" is not a duration`},
		{give: `{"interval":-3}`, err: "interval: -3s is not between"},
		{give: `{"quantum":"0s"}`, err: "quantum: 0s is not between"},
		{give: `{"interval":1e300}`, err: "interval: 1e+300 seconds is more than 24h0m0s"},
		{give: `{"interval":"9999h"}`, err: "is not between"},
		{give: `{"interval":[1]}`, err: "neither a duration string nor a number"},
		{give: `nonsense`, err: "not a JSON object"},
	}
	for _, tt := range tests {
		got, err := order.DecodeControl([]byte(tt.give))
		if tt.err != "" {
			assert.ErrorIs(t, err, order.ErrMalformed, tt.give)
			assert.ErrorContains(t, err, tt.err, tt.give)
			continue
		}
		require.NoError(t, err, tt.give)
		assert.Equal(t, tt.want, got, tt.give)
	}
}

// TestControlValidateNamesTheSetting: retries start --interval -1s said
// "interval and quantum", not which, nor the value given.
func TestControlValidateNamesTheSetting(t *testing.T) {
	t.Parallel()
	require.NoError(t, order.Control{Interval: time.Second, Quantum: order.MaxControlDuration}.Validate())
	assert.EqualError(t, order.Control{Interval: -time.Second}.Validate(), "interval: -1s is not between 0 and 24h0m0s")
	assert.EqualError(t, order.Control{Quantum: 25 * time.Hour}.Validate(), "quantum: 25h0m0s is not between 0 and 24h0m0s")
}

func TestRedrivenGetsAFreshBudget(t *testing.T) {
	t.Parallel()
	d := order.DeadLetterDoc{DocID: "order_7", Reason: order.ReasonPermanent, LastStatus: 400, Attempts: 3, FirstAttemptAt: 5, RedriveCount: 1,
		DeadAt: 9, IdempotencyKey: "confirmation:order_7@99"}
	r := order.Redriven(d, now)
	assert.Equal(t, order.RetryDoc{Type: "confirmation", DocID: "order_7", Attempt: 0, TS: now.UnixMilli(), FireRetry: true,
		NextAttemptAt: now.UnixMilli(), FirstAttemptAt: 5, LastStatus: 400, RedriveCount: 2, RedrivenFrom: 9,
		IdempotencyKey: "confirmation:order_7@99"}, r, "the attempts' key kept: one of them may have got through")
}
