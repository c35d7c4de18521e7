package mailer_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
)

// A send the rate limit holds back (no request made) while the
// configuration gate waits for its probe says nothing of the
// configuration: the gate neither closes (sends resumed on no evidence)
// nor opens again, and the next send is still the probe. The send is held
// for the rate ("rate"), not the configuration.
func TestARateHeldSendLeavesTheGatesProbe(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{AuthValue: "Bearer right"})
	require.NoError(t, err)
	l, err := m.Listen("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close(context.Background()) })
	// Two tokens, then one every 1000s: the two refusals take them.
	c, err := mailer.New(mailer.Config{URL: l.URL(), AuthFile: writeFile(t, "key", "Bearer wrong\n"),
		BreakerCooldown: 50 * time.Millisecond, SendRate: 0.001, SendBurst: 2}, quiet)
	require.NoError(t, err)
	ctx := context.Background()
	sendErr(t, c.Send(ctx, "k1", []byte(`{}`)))
	se := sendErr(t, c.Send(ctx, "k2", []byte(`{}`)))
	require.Equal(t, mailer.Configuration, se.Class, "two 401s in a row: the configuration's")
	require.Equal(t, http.StatusUnauthorized, se.Status)
	require.Eventually(t, func() bool { held, probing := c.HeldBack(); return !held && probing }, 30*time.Second, 5*time.Millisecond,
		"the gate never let a probe through; misconfigured %q", later.Value(func() any { return c.Misconfigured() }))

	// A deadline the next token is past: the limiter refuses at once.
	for i := range 2 {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		se = sendErr(t, c.Send(dctx, "k3", []byte(`{}`)))
		cancel()
		assert.True(t, se.NotAttempted, "send %d", i)
		assert.Equal(t, mailer.Transient, se.Class, "send %d", i)
		assert.Equal(t, "rate", se.Held(), "send %d: held by the rate, the probe's slot free", i)
		held, probing := c.HeldBack()
		assert.False(t, held, "send %d: the gate opened again on a send not made", i)
		assert.True(t, probing, "send %d: the gate closed on a send not made", i)
		assert.NotEmpty(t, c.Misconfigured(), "send %d", i)
	}
	assert.Equal(t, 2, m.Stats().Requests, "the rate-held sends made no request")
}

// Nor does it count for the circuit breaker: a send that made no request
// says nothing of the service's availability (as the gate ignores it).
func TestARateHeldSendIsNoFailureForTheBreaker(t *testing.T) {
	t.Parallel()
	m, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	l, err := m.Listen("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close(context.Background()) })
	// One token, then one every 1000s; a breaker that opens at one failure.
	c, err := mailer.New(mailer.Config{URL: l.URL(), BreakerFailures: 1, BreakerCooldown: time.Hour, SendRate: 0.001, SendBurst: 1}, quiet)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, c.Send(ctx, "k1", []byte(`{}`)))
	for i := range 3 {
		dctx, cancel := context.WithTimeout(ctx, time.Minute) // the next token is past it: refused at once
		se := sendErr(t, c.Send(dctx, "k2", []byte(`{}`)))
		cancel()
		assert.True(t, se.NotAttempted, "send %d", i)
		assert.Equal(t, "rate", se.Held(), "send %d", i)
	}
	held, _ := c.HeldBack()
	assert.False(t, held, "the breaker opened on sends never made")
	assert.Equal(t, "closed", c.BreakerState())
	assert.Equal(t, 1, m.Stats().Requests)
}
