package watcher

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A probe speaks for the hold it probed only: one that ends after its hold
// ended and another began let a second probe go beside the new hold's.
func TestAProbeOfAnEndedHoldLeavesTheNextOne(t *testing.T) {
	now := time.Unix(0, 0)
	u := newUnreachable(8, func() time.Time { return now })
	u.done(1, nil, true, true) // the node fails: held back
	now = now.Add(time.Minute)
	ok, p, _ := u.admit(1)
	require.True(t, ok)
	require.NotNil(t, p, "the first probe")
	u.done(1, nil, true, false) // another event of the node succeeds: the hold ends
	u.done(1, nil, true, true)  // and one fails: held back again
	now = now.Add(time.Minute)
	ok, q, _ := u.admit(1)
	require.True(t, ok)
	require.NotNil(t, q, "the new hold's probe")
	u.done(1, p, true, true) // the first probe ends, failed
	ok, _, _ = u.admit(1)
	assert.False(t, ok, "a second probe beside the new hold's")
	u.done(1, q, true, false)
	assert.Zero(t, u.count(), "the new hold's probe succeeded: the node answers")
}

// An event that asked the store nothing says nothing of it.
func TestAProbeThatAskedNothingLeavesTheHold(t *testing.T) {
	now := time.Unix(0, 0)
	u := newUnreachable(8, func() time.Time { return now })
	u.done(1, nil, true, true)
	now = now.Add(time.Minute)
	ok, p, _ := u.admit(1)
	require.True(t, ok)
	u.done(1, p, false, false)
	assert.Equal(t, 1, u.count())
	ok, p, _ = u.admit(1)
	assert.True(t, ok, "the next event probes at once")
	assert.NotNil(t, p)
}
