package lease_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/lease"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOneHolderAtATime(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	a := lease.New(st, "timer", "a", 10*time.Second, clock)
	b := lease.New(st, "timer", "b", 10*time.Second, clock)

	require.NoError(t, a.Acquire(ctx))
	err = b.Acquire(ctx)
	assert.ErrorIs(t, err, lease.ErrHeld)
	assert.ErrorContains(t, err, "held by a until 2026-11-21T12:00:10Z")

	now = now.Add(5 * time.Second)
	require.NoError(t, a.Acquire(ctx), "the holder renews")
	now = now.Add(9 * time.Second)
	assert.ErrorIs(t, b.Acquire(ctx), lease.ErrHeld, "renewed: not expired yet")

	now = now.Add(2 * time.Second) // a stopped renewing: expired
	require.NoError(t, b.Acquire(ctx), "taken over after the TTL")
	assert.ErrorIs(t, a.Acquire(ctx), lease.ErrHeld)

	require.NoError(t, a.Release(ctx, "stopped"), "releasing what one does not hold changes nothing")
	assert.ErrorIs(t, a.Acquire(ctx), lease.ErrHeld)
	require.NoError(t, b.Release(ctx, "stopped"))
	require.NoError(t, a.Acquire(ctx), "released: taken at once")
}

func TestHolderReadsWhoHoldsItWithoutTakingIt(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	a := lease.New(st, "timer", "a", 10*time.Second, clock)
	b := lease.New(st, "timer", "b", 10*time.Second, clock)

	h, err := b.Holder(ctx)
	require.NoError(t, err)
	assert.Equal(t, lease.Holding{}, h, "never taken")
	assert.True(t, h.Expired(now))

	require.NoError(t, a.Acquire(ctx))
	h, err = b.Holder(ctx)
	require.NoError(t, err)
	assert.Equal(t, "a", h.Owner)
	assert.True(t, h.ExpiresAt.Equal(now.Add(10*time.Second)), "%s", h.ExpiresAt)
	assert.Equal(t, 10*time.Second, h.TTL, "the holder's TTL")
	assert.True(t, h.RenewedAt(time.Minute).Equal(now), "renewed at: its own TTL, not the fallback: %s", h.RenewedAt(time.Minute))
	assert.True(t, lease.Holding{ExpiresAt: now}.RenewedAt(time.Minute).Equal(now.Add(-time.Minute)), "no TTL recorded: the fallback")
	assert.False(t, h.Expired(now))
	assert.True(t, h.Expired(now.Add(10*time.Second)))
	assert.ErrorIs(t, b.Acquire(ctx), lease.ErrHeld, "reading took nothing")
	assert.Equal(t, "b", b.Owner())
	assert.Equal(t, 10*time.Second, b.TTL())

	now = now.Add(time.Second)
	require.NoError(t, a.Release(ctx, "its sends are held back"))
	h, err = b.Holder(ctx)
	require.NoError(t, err)
	assert.Equal(t, "a", h.Left, "released: who gave it up")
	assert.True(t, h.LeftAt.Equal(now), "when: %s", h.LeftAt)
	assert.Equal(t, "its sends are held back", h.Why)
	assert.Empty(t, h.Owner)
	assert.True(t, h.Expired(now), "nobody holds it")
	require.NoError(t, b.Acquire(ctx), "given up: taken at once")
	h, err = a.Holder(ctx)
	require.NoError(t, err)
	assert.Equal(t, "b", h.Owner)
	assert.Empty(t, h.Left, "taken: the last holder's note is gone")
}

// TestALeaseNobodyRenewsExpiresWhateverTheClocks: a holder that stopped
// renewing, whose lease's expiry is an hour ahead of the would-be holder's
// clock (a clock stepped back), is taken over once the lease has stayed
// the same for a TTL on the monotonic clock; one that renews is not.
func TestALeaseNobodyRenewsExpiresWhateverTheClocks(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	now := time.Now()
	const ttl = 200 * time.Millisecond
	a := lease.New(st, "timer", "a", ttl, func() time.Time { return now })
	b := lease.New(st, "timer", "b", ttl, func() time.Time { return now.Add(-time.Hour) }) // stepped back

	require.NoError(t, a.Acquire(ctx))
	assert.ErrorIs(t, b.Acquire(ctx), lease.ErrHeld, "first read: held")
	// a renews: b sees a new lease each time, and leaves it.
	for range 5 {
		require.NoError(t, a.Acquire(ctx))
		require.ErrorIs(t, b.Acquire(ctx), lease.ErrHeld, "renewed")
	}
	// a stops: b takes it a TTL after it last saw it change.
	var last error
	require.Eventually(t, func() bool { last = b.Acquire(ctx); return last == nil }, 30*time.Second, 10*time.Millisecond,
		"taken over: %v", later.Value(func() any { return last }))
	h, err := a.Holder(ctx)
	require.NoError(t, err)
	assert.Equal(t, "b", h.Owner)
}

// TestAHolderWithALongerTTLIsNotTakenOverEarly: a holder ticking less often
// (a longer --timer-interval, so a longer TTL) renews less often than a
// reader's own TTL; the reader waits for the holder's.
func TestAHolderWithALongerTTLIsNotTakenOverEarly(t *testing.T) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	defer st.Close()
	now := time.Now()
	clock := func() time.Time { return now }
	a := lease.New(st, "timer", "a", time.Hour, clock)
	b := lease.New(st, "timer", "b", time.Millisecond, clock)
	require.NoError(t, a.Acquire(ctx))
	assert.ErrorIs(t, b.Acquire(ctx), lease.ErrHeld)
	time.Sleep(20 * time.Millisecond) // b's own TTL twenty times over; a's is an hour
	assert.ErrorIs(t, b.Acquire(ctx), lease.ErrHeld, "a renews within its own TTL")
}
