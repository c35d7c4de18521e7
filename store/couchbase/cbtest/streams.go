package cbtest

import (
	"sync"
	"time"
)

// Stream accounting: which DCP connections stream each vBucket right now,
// over every connection and node, so that a test can assert that
// processes handing vBuckets over between them never stream one twice.
// A stream counts from just before its successful STREAM_REQ response
// until it leaves its connection: CLOSE_STREAM, any STREAM_END the server
// sends (end seqno reached, state changed, filter empty, EndStream), or
// the end of the connection (the client closed or dropped it,
// DropConnections, a DCP_OPEN of the same name, a deleted bucket, Close).

// maxStreamOverlaps caps the overlaps StreamOverlaps keeps.
const maxStreamOverlaps = 1000

// StreamOverlap is a moment when a DCP stream opened on a vBucket that
// another connection was already streaming.
type StreamOverlap struct {
	VBucket uint16
	// At is when the newcomer's stream opened (just before its
	// successful STREAM_REQ response), by time.Now, not Options.Clock.
	At time.Time
	// Connections are the DCP connection names (the DCP_OPEN keys): those
	// that held a stream on VBucket, oldest first, then the newcomer.
	Connections []string
}

type streamKey struct {
	bucket string
	vb     uint16
}

type bucketOverlap struct {
	bucket string
	StreamOverlap
}

// streamCounts is the server's stream accounting. Its mutex is taken
// under a dcpConn's mu, never the other way round, and nothing is called
// while it is held.
type streamCounts struct {
	mu       sync.Mutex
	open     map[streamKey][]*dcpConn // holders, in opening order
	peak     map[string]int           // by bucket: most holders of one vBucket since reset
	overlaps []bucketOverlap          // the first maxStreamOverlaps since reset
	total    map[string]int           // by bucket: overlaps since reset, kept or not
}

func (c *streamCounts) initLocked() {
	if c.open == nil {
		c.open = map[streamKey][]*dcpConn{}
		c.peak = map[string]int{}
		c.total = map[string]int{}
	}
}

// opened counts a stream of d on vb.
func (c *streamCounts) opened(d *dcpConn, vb uint16) {
	k := streamKey{d.bucket, vb}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.initLocked()
	holders := c.open[k]
	// Never d itself: a connection has one stream per vBucket at most.
	if len(holders) > 0 {
		c.total[d.bucket]++
		if len(c.overlaps) < maxStreamOverlaps {
			names := make([]string, 0, len(holders)+1)
			for _, h := range holders {
				names = append(names, h.name)
			}
			names = append(names, d.name)
			c.overlaps = append(c.overlaps, bucketOverlap{d.bucket, StreamOverlap{VBucket: vb, At: time.Now(), Connections: names}})
		}
	}
	holders = append(holders, d)
	c.open[k] = holders
	c.peak[d.bucket] = max(c.peak[d.bucket], len(holders))
}

// closed uncounts the stream of d on vb.
func (c *streamCounts) closed(d *dcpConn, vb uint16) {
	k := streamKey{d.bucket, vb}
	c.mu.Lock()
	defer c.mu.Unlock()
	holders := c.open[k]
	for i, h := range holders {
		if h == d {
			holders = append(holders[:i], holders[i+1:]...)
			break
		}
	}
	if len(holders) == 0 {
		delete(c.open, k)
	} else {
		c.open[k] = holders
	}
}

// addStreamLocked opens st on d (the caller holds d.mu) and counts it. It
// reports false, adding nothing, once the connection has stopped.
func (d *dcpConn) addStreamLocked(st *stream) bool {
	select {
	case <-d.stopped:
		return false
	default:
	}
	d.streams[st.vb] = st
	d.added.Add(1)
	d.kc.s.streams.opened(d, st.vb)
	return true
}

// removeStreamLocked removes the stream on vb from d (the caller holds
// d.mu) and uncounts it. It returns the stream, or nil if there was none.
func (d *dcpConn) removeStreamLocked(vb uint16) *stream {
	st := d.streams[vb]
	if st == nil {
		return nil
	}
	delete(d.streams, vb)
	d.kc.s.streams.closed(d, vb)
	return st
}

// OpenStreams counts the DCP streams open now per vBucket, over every
// connection and node, so a test can assert that no vBucket is streamed
// twice; only vBuckets with a stream appear. OpenStreams(bucket) counts
// the streams of bucket; OpenStreams() those of every bucket, adding up
// the counts of one vBucket number over the buckets. A stream counts from
// just before its successful STREAM_REQ response until its CLOSE_STREAM,
// its STREAM_END or the end of its connection.
func (s *Server) OpenStreams(buckets ...string) map[uint16]int {
	want := map[string]bool{}
	for _, b := range buckets {
		want[b] = true
	}
	c := &s.streams
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[uint16]int{}
	for k, holders := range c.open {
		if len(want) == 0 || want[k.bucket] {
			out[k.vb] += len(holders)
		}
	}
	return out
}

// StreamOverlaps lists, oldest first, the moments since Start (or the
// last ResetStreamOverlaps) when a DCP stream opened on a vBucket of
// bucket that another connection was already streaming. It keeps the
// first 1000 over all buckets; StreamOverlapCount counts them all.
func (s *Server) StreamOverlaps(bucket string) []StreamOverlap {
	c := &s.streams
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []StreamOverlap
	for _, o := range c.overlaps {
		if o.bucket == bucket {
			o.Connections = append([]string(nil), o.Connections...)
			out = append(out, o.StreamOverlap)
		}
	}
	return out
}

// StreamOverlapCount is the number of overlaps on bucket since Start (or
// the last ResetStreamOverlaps), including those StreamOverlaps no longer
// keeps.
func (s *Server) StreamOverlapCount(bucket string) int {
	c := &s.streams
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total[bucket]
}

// MaxStreamsPerVBucket is the most DCP streams any vBucket of bucket had
// open at once since Start (or the last ResetStreamOverlaps, counting the
// streams open then); above 1, StreamOverlaps says when and by whom.
func (s *Server) MaxStreamsPerVBucket(bucket string) int {
	c := &s.streams
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak[bucket]
}

// ResetStreamOverlaps forgets the overlaps of every bucket and restarts
// MaxStreamsPerVBucket from the streams open now (a test can reset after
// a deliberate overlap). The open streams stay counted.
func (s *Server) ResetStreamOverlaps() {
	c := &s.streams
	c.mu.Lock()
	defer c.mu.Unlock()
	c.initLocked()
	c.overlaps, c.total, c.peak = nil, map[string]int{}, map[string]int{}
	for k, holders := range c.open {
		c.peak[k.bucket] = max(c.peak[k.bucket], len(holders))
	}
}
