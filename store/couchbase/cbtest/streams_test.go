package cbtest

import (
	"math"
	"testing"
	"time"

	"github.com/couchbase/gocbcore/v10"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// namedDCPAgent is newDCPAgent that also returns the DCP connection name
// and a close the test may call early (gocbcore panics on a second Close).
func namedDCPAgent(t *testing.T, s *Server, bucket string) (*gocbcore.DCPAgent, string, func()) {
	t.Helper()
	return dcpAgentOf(t, s, bucket, 0)
}

// closeStream closes the agent's stream on vb and waits for the answer.
func closeStream(t *testing.T, a *gocbcore.DCPAgent, vb uint16) {
	t.Helper()
	done := make(chan error, 1)
	_, err := a.CloseStream(vb, gocbcore.CloseStreamOptions{}, func(err error) { done <- err })
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("CLOSE_STREAM on vb %d: no answer", vb)
	}
}

func TestOpenStreamsCountsAStreamUntilItCloses(t *testing.T) {
	s := Start(t, Options{VBuckets: 8})
	a, _, _ := namedDCPAgent(t, s, "orders")
	_, err := open(t, a, 3, position{}, nil, newRecorder())
	require.NoError(t, err)
	assert.Equal(t, map[uint16]int{3: 1}, s.OpenStreams("orders"))
	assert.Equal(t, map[uint16]int{3: 1}, s.OpenStreams(), "every bucket")
	assert.Empty(t, s.OpenStreams("metadata"))

	closeStream(t, a, 3)
	assert.Empty(t, s.OpenStreams("orders"), "the stream leaves before CLOSE_STREAM is answered")

	// Reopening on the same connection is no overlap.
	_, err = open(t, a, 3, position{}, nil, newRecorder())
	require.NoError(t, err)
	assert.Equal(t, map[uint16]int{3: 1}, s.OpenStreams("orders"))
	assert.Equal(t, 1, s.MaxStreamsPerVBucket("orders"))
	assert.Empty(t, s.StreamOverlaps("orders"))
	assert.Zero(t, s.StreamOverlapCount("orders"))
}

func TestStreamOverlapsAcrossConnections(t *testing.T) {
	s := Start(t, Options{VBuckets: 8})
	a, nameA, _ := namedDCPAgent(t, s, "orders")
	b, nameB, _ := namedDCPAgent(t, s, "orders")
	_, err := open(t, a, 5, position{}, nil, newRecorder())
	require.NoError(t, err)
	before := time.Now()
	_, err = open(t, b, 5, position{}, nil, newRecorder())
	require.NoError(t, err)

	assert.Equal(t, map[uint16]int{5: 2}, s.OpenStreams("orders"))
	assert.Equal(t, 2, s.MaxStreamsPerVBucket("orders"))
	assert.Zero(t, s.MaxStreamsPerVBucket("metadata"))
	overlaps := s.StreamOverlaps("orders")
	require.Len(t, overlaps, 1)
	assert.Equal(t, uint16(5), overlaps[0].VBucket)
	assert.Equal(t, []string{nameA, nameB}, overlaps[0].Connections, "the holder, then the newcomer")
	assert.False(t, overlaps[0].At.Before(before), "At %v is before the second STREAM_REQ (%v)", overlaps[0].At, before)
	assert.Equal(t, 1, s.StreamOverlapCount("orders"))
	assert.Empty(t, s.StreamOverlaps("metadata"))

	// The counts follow the streams; the overlap stays until reset.
	closeStream(t, b, 5)
	assert.Equal(t, map[uint16]int{5: 1}, s.OpenStreams("orders"))
	assert.Equal(t, 2, s.MaxStreamsPerVBucket("orders"))
	s.ResetStreamOverlaps()
	assert.Empty(t, s.StreamOverlaps("orders"))
	assert.Zero(t, s.StreamOverlapCount("orders"))
	assert.Equal(t, 1, s.MaxStreamsPerVBucket("orders"), "restarts from the stream still open")

	// A clean handover: A closes, then B opens.
	closeStream(t, a, 5)
	_, err = open(t, b, 5, position{}, nil, newRecorder())
	require.NoError(t, err)
	assert.Equal(t, map[uint16]int{5: 1}, s.OpenStreams("orders"))
	assert.Empty(t, s.StreamOverlaps("orders"))
	assert.Equal(t, 1, s.MaxStreamsPerVBucket("orders"))
}

func TestOpenStreamsReleasedWhenTheConnectionCloses(t *testing.T) {
	s := Start(t, Options{Nodes: 2, VBuckets: 8})
	a, _, closeA := namedDCPAgent(t, s, "orders")
	for vb := uint16(0); vb < 8; vb++ {
		_, err := open(t, a, vb, position{}, nil, newRecorder())
		require.NoError(t, err, "vb %d", vb)
	}
	assert.Len(t, s.OpenStreams("orders"), 8)

	closeA() // as when the process dies: the TCP connections just go
	require.Eventually(t, func() bool { return len(s.OpenStreams()) == 0 }, 10*time.Second, 5*time.Millisecond,
		"the streams of a closed DCP connection still count as open")

	// Another process takes every vBucket over: no overlap.
	b, _, _ := namedDCPAgent(t, s, "orders")
	for vb := uint16(0); vb < 8; vb++ {
		_, err := open(t, b, vb, position{}, nil, newRecorder())
		require.NoError(t, err, "vb %d", vb)
	}
	assert.Len(t, s.OpenStreams("orders"), 8)
	assert.Empty(t, s.StreamOverlaps("orders"))
	assert.Equal(t, 1, s.MaxStreamsPerVBucket("orders"))
}

func TestOpenStreamsReleasedWhenTheConnectionClosesMidRequest(t *testing.T) {
	// Stream requests still in flight when the connection goes must not
	// leave a stream counted.
	s := Start(t, Options{Nodes: 2, VBuckets: 64})
	a, _, closeA := namedDCPAgent(t, s, "orders")
	answers := make(chan error, 64)
	for vb := uint16(0); vb < 64; vb++ {
		_, err := a.OpenStream(vb, 0, 0, 0, math.MaxUint64, 0, 0, newRecorder(), gocbcore.OpenStreamOptions{},
			func(_ []gocbcore.FailoverEntry, err error) { answers <- err })
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return len(s.OpenStreams()) > 0 }, 10*time.Second, time.Millisecond,
		"no stream opened")
	closeA()
	require.Eventually(t, func() bool { return len(s.OpenStreams()) == 0 }, 10*time.Second, 5*time.Millisecond,
		"the streams of a closed DCP connection still count as open")
	s.DropConnections() // nothing is left to release either way
	assert.Empty(t, s.OpenStreams())
}

func TestStreamsEndedByTheServerAreReleased(t *testing.T) {
	s := Start(t, Options{VBuckets: 8,
		Buckets: []BucketSpec{{Name: "orders", Collections: []string{"_default.inbound"}}}})
	inID, err := s.CollectionID("orders", "_default", "inbound")
	require.NoError(t, err)
	a, _, _ := namedDCPAgent(t, s, "orders")
	rec := newRecorder()
	for _, vb := range []uint16{2, 4} {
		_, err := open(t, a, vb, position{}, nil, rec)
		require.NoError(t, err, "vb %d", vb)
	}
	_, err = open(t, a, 6, position{}, []uint32{inID}, rec)
	require.NoError(t, err)
	assert.Equal(t, map[uint16]int{2: 1, 4: 1, 6: 1}, s.OpenStreams("orders"))
	waitEnd := func(vb uint16) {
		t.Helper()
		rec.until(t, func(e dcpEvent) bool { return e.kind == "end" && e.vb == vb })
	}

	// Injected STREAM_END: released before EndStream returns.
	assert.Equal(t, 1, s.EndStream("orders", 2, EndStateChanged))
	assert.Equal(t, map[uint16]int{4: 1, 6: 1}, s.OpenStreams("orders"))
	waitEnd(2)

	// The end seqno reached: the producer ends the stream (STREAM_END
	// "ok" leaves the server after the stream left the counts).
	answered := make(chan error, 1)
	_, err = a.OpenStream(1, 0, 0, 0, 0, 0, 0, rec, gocbcore.OpenStreamOptions{},
		func(_ []gocbcore.FailoverEntry, err error) { answered <- err })
	require.NoError(t, err)
	require.NoError(t, <-answered)
	waitEnd(1)
	assert.Equal(t, map[uint16]int{4: 1, 6: 1}, s.OpenStreams("orders"))
	require.Len(t, s.StreamRequests("orders", 1), 1)
	assert.Zero(t, s.StreamRequests("orders", 1)[0].Status, "the stream did open")

	// Filter empty: the only filtered collection is dropped.
	require.NoError(t, s.DropCollection("orders", "_default", "inbound"))
	waitEnd(6)
	assert.Equal(t, map[uint16]int{4: 1}, s.OpenStreams("orders"))
	assert.Equal(t, 1, s.MaxStreamsPerVBucket("orders"))
	assert.Empty(t, s.StreamOverlaps("orders"))
}

func TestStreamOverlapsAreCapped(t *testing.T) {
	s := &Server{}
	holder := &dcpConn{bucket: "orders", name: "holder"}
	other := &dcpConn{bucket: "orders", name: "other"}
	s.streams.opened(holder, 1)
	for range maxStreamOverlaps + 5 {
		s.streams.opened(other, 1)
		s.streams.closed(other, 1)
	}
	assert.Len(t, s.StreamOverlaps("orders"), maxStreamOverlaps)
	assert.Equal(t, maxStreamOverlaps+5, s.StreamOverlapCount("orders"))
	assert.Equal(t, []string{"holder", "other"}, s.StreamOverlaps("orders")[0].Connections)
	assert.Equal(t, map[uint16]int{1: 1}, s.OpenStreams("orders"))
	assert.Equal(t, 2, s.MaxStreamsPerVBucket("orders"))
	s.ResetStreamOverlaps()
	assert.Empty(t, s.StreamOverlaps("orders"))
	assert.Zero(t, s.StreamOverlapCount("orders"))
	assert.Equal(t, 1, s.MaxStreamsPerVBucket("orders"))
	s.streams.closed(holder, 1)
	assert.Empty(t, s.OpenStreams())
}
