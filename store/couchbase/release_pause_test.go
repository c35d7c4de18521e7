package couchbase

import (
	"testing"
	"time"

	"github.com/couchbase/gocbcore/v10"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A vBucket being handed over (its checkpoint written before the stream
// stops) when the process wakes from a pause past its TTL: what its stream
// read ahead before the pause was handed out, where any other vBucket's is
// dropped; another member may have claimed it meanwhile and stream the
// same changes (a review's reproduction, at the feed's insides).
func TestABeingHandedOverVBucketHandsOutNothingAfterAPause(t *testing.T) {
	agent := &fakeAgent{}
	opts := fastOpts
	opts.flushEvery = time.Hour
	f := startFeed(t, agent, &fakeCheckpoints{}, []uint16{0, 1}, false, opts)
	for vb := uint16(0); vb < 2; vb++ {
		s := agent.lastOpen(t, vb, 1)
		s.cb(1, nil)
		s.obs.SnapshotMarker(gocbcore.DcpSnapshotMarker{VbID: vb, StartSeqNo: 1, EndSeqNo: 1})
		s.obs.Mutation(mutation(vb, inboundID, "k", "{}", 1))
	}
	f.mu.Lock()
	f.own = &ownership{ttl: time.Second, beat: 200 * time.Millisecond, lastTry: time.Now().Add(-time.Hour)} // paused
	for vb := uint16(0); vb < 2; vb++ {
		f.state[vb].held = true
	}
	f.state[1].releasing = true // its handover's checkpoint write is under way
	f.mu.Unlock()
	var handed []uint16
	for range 2 {
		p, err := f.receive(t.Context())
		require.NoError(t, err)
		if f.handOut(p) {
			handed = append(handed, p.ev.Partition)
		}
	}
	f.mu.Lock()
	f.own = nil
	suspect := f.state[1].suspect
	f.mu.Unlock()
	assert.Empty(t, handed, "handed out after a pause past the TTL")
	assert.True(t, suspect, "to be checked, should its handover not be made")
}
