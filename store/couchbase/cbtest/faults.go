package cbtest

import (
	"fmt"
	"time"
)

// Fault injection and inspection for tests. All methods are safe to call
// from any goroutine while clients are connected.

// FailoverEntry is one entry of a vBucket's failover log.
type FailoverEntry struct {
	VBUUID uint64
	Seqno  uint64
}

func (s *Server) vbLocked(bucket string, vb uint16) (*bucket, *vbucket, error) {
	b := s.buckets[bucket]
	if b == nil {
		return nil, nil, fmt.Errorf("cbtest: no bucket %q", bucket)
	}
	if int(vb) >= len(b.vbs) {
		return nil, nil, fmt.Errorf("cbtest: no vBucket %d (there are %d)", vb, len(b.vbs))
	}
	return b, b.vbs[vb], nil
}

// Rollback makes vBucket vb of bucket lose everything after seqno
// toSeqno, as when a replica that was behind is promoted: the vBucket
// gets a new failover entry {new uuid, toSeqno}, every document returns to
// the version it had at toSeqno (or disappears if it did not exist yet),
// the next write takes seqno toSeqno+1, and its open DCP streams end with
// STREAM_END "state changed". A client that resumes from beyond toSeqno
// is then told to roll back to it. It refuses to roll back below a
// durable write, which a real failover never loses.
func (s *Server) Rollback(bucket string, vb uint16, toSeqno uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, v, err := s.vbLocked(bucket, vb)
	if err != nil {
		return err
	}
	if toSeqno < v.durable {
		return fmt.Errorf("cbtest: vBucket %d cannot roll back to seqno %d: seqno %d was written durably (replicated), and no failover loses it", vb, toSeqno, v.durable)
	}
	v.rollbackTo(toSeqno)
	b.notify()
	return nil
}

// PurgeTombstones drops the tombstones of vBucket vb of bucket, as
// compaction does once they are older than the bucket's metadata purge
// interval (3 days by default), and returns the purge seqno: a DCP client
// resuming from a seqno above 0 and below it is told to roll back to 0.
func (s *Server) PurgeTombstones(bucket string, vb uint16) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, v, err := s.vbLocked(bucket, vb)
	if err != nil {
		return 0, err
	}
	v.purgeTombstones()
	return v.purged, nil
}

// Failover gives the listed vBuckets of bucket (all when none are
// listed) a new vbuuid and failover log entry at their high seqno, as a
// failover to an up-to-date replica does. Open streams on them end with
// STREAM_END "state changed"; a client resuming with the old uuid and a
// position at or below the branch point continues without rollback.
func (s *Server) Failover(bucket string, vbs ...uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[bucket]
	if b == nil {
		return fmt.Errorf("cbtest: no bucket %q", bucket)
	}
	if len(vbs) == 0 {
		for _, v := range b.vbs {
			v.newBranch()
		}
	}
	for _, vb := range vbs {
		_, v, err := s.vbLocked(bucket, vb)
		if err != nil {
			return err
		}
		v.newBranch()
	}
	b.notify()
	return nil
}

// EndStream ends every open DCP stream on vBucket vb of bucket with
// STREAM_END and reason (EndOK, EndStateChanged, ...), and returns how
// many it ended.
func (s *Server) EndStream(bucket string, vb uint16, reason uint32) int {
	n := 0
	for _, d := range s.allDCP() {
		if d.bucket == bucket && d.endStream(vb, reason) {
			n++
		}
	}
	return n
}

// DropConnections closes every client KV and DCP connection on every node
// and ends the HTTP config streams. Clients reconnect on their own.
func (s *Server) DropConnections() {
	s.mu.Lock()
	close(s.httpDrop)
	s.httpDrop = make(chan struct{})
	s.mu.Unlock()
	for _, n := range s.nodes {
		n.closeConns(nil)
	}
}

// HangNode makes node i stop answering: its KV connections stop reading
// requests, its DCP streams stop, and its HTTP requests wait, until
// ResumeNode(i) (or Close). Connections stay open.
func (s *Server) HangNode(i int) {
	n := s.nodes[i]
	n.hangMu.Lock()
	defer n.hangMu.Unlock()
	if n.resume == nil {
		n.resume = make(chan struct{})
	}
}

// SlowBucket makes every node answer each KV request on a connection
// selected on bucket d late (a degraded node, as ordermail's metadata
// bucket sees it): the request is made at once, its answer sent d later,
// the answers of requests in flight together d late each, not one after
// another; 0 undoes it. DCP messages a node sends are not delayed.
func (s *Server) SlowBucket(bucket string, d time.Duration) {
	if d <= 0 {
		s.slow.Delete(bucket)
		return
	}
	s.slow.Store(bucket, d)
}

// slowFor is SlowBucket's delay of bucket's requests.
func (s *Server) slowFor(bucket string) time.Duration {
	d, _ := s.slow.Load(bucket)
	t, _ := d.(time.Duration)
	return t
}

// ResumeNode undoes HangNode(i).
func (s *Server) ResumeNode(i int) {
	n := s.nodes[i]
	n.hangMu.Lock()
	defer n.hangMu.Unlock()
	if n.resume != nil {
		close(n.resume)
		n.resume = nil
	}
	// Wake DCP producers waiting for a change.
	for _, d := range s.allDCP() {
		if d.kc.n == n {
			d.poke()
		}
	}
}

// CreateCollection creates a collection (and its scope if needed), as the
// management API does.
func (s *Server) CreateCollection(bucket, scope, coll string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[bucket]
	if b == nil {
		return fmt.Errorf("cbtest: no bucket %q", bucket)
	}
	if b.man.scope(scope) == nil {
		if _, err := s.createScopeLocked(b, scope); err != nil {
			return err
		}
	}
	_, err := s.createCollectionLocked(b, scope, coll, 0, false)
	return err
}

// DropCollection drops a collection as the management API does: its
// documents go, every vBucket logs a drop event, DCP streams see it, and
// streams filtered to only dropped collections end with "filter empty".
func (s *Server) DropCollection(bucket, scope, coll string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[bucket]
	if b == nil {
		return fmt.Errorf("cbtest: no bucket %q", bucket)
	}
	return s.dropCollectionLocked(b, scope, coll)
}

// CollectionID is the id of bucket.scope.coll.
func (s *Server) CollectionID(bucket, scope, coll string) (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[bucket]
	if b == nil {
		return 0, fmt.Errorf("cbtest: no bucket %q", bucket)
	}
	c := b.man.collection(scope, coll)
	if c == nil {
		return 0, fmt.Errorf("cbtest: no collection %s.%s.%s", bucket, scope, coll)
	}
	return c.id, nil
}

// HighSeqno is the high seqno of vBucket vb of bucket.
func (s *Server) HighSeqno(bucket string, vb uint16) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, v, err := s.vbLocked(bucket, vb)
	if err != nil {
		return 0
	}
	return v.high
}

// FailoverLog is the failover log of vBucket vb of bucket, newest first.
func (s *Server) FailoverLog(bucket string, vb uint16) []FailoverEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, v, err := s.vbLocked(bucket, vb)
	if err != nil {
		return nil
	}
	var out []FailoverEntry
	for _, e := range v.failover {
		out = append(out, FailoverEntry{e.uuid, e.seqno})
	}
	return out
}

// Doc reads a document directly: its value, flags and CAS, and whether it
// exists (expired documents do not).
func (s *Server) Doc(bucket, scope, coll, key string) (value []byte, flags uint32, cas uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[bucket]
	if b == nil {
		return nil, 0, 0, false
	}
	c := b.man.collection(scope, coll)
	if c == nil {
		return nil, 0, 0, false
	}
	it := b.vbs[vbOf([]byte(key), len(b.vbs))].items[docKey{c.id, key}]
	if it == nil || it.deleted || s.isExpired(it) {
		return nil, 0, 0, false
	}
	return append([]byte(nil), it.value...), it.flags, it.cas, true
}

// kvFault is an injected answer to the next requests of one kind.
type kvFault struct {
	bucket string
	opcode byte
	vb     uint16
	left   int
	status uint16 // 0: never answer
}

// faultDurable stands for the opcode of a fault on durable writes, any
// of SET, ADD, REPLACE, DELETE and SUBDOC_MULTI_MUTATION.
const faultDurable = 0xff

// AnswerDurableWritesAmbiguous makes the next n durable writes on vBucket
// vb of bucket answer SYNC_WRITE_AMBIGUOUS (0xa3) once they are made, as
// when the replicas do not confirm in time: the client cannot tell
// whether they were.
func (s *Server) AnswerDurableWritesAmbiguous(bucket string, vb uint16, n int) {
	s.inject(kvFault{bucket: bucket, opcode: faultDurable, vb: vb, left: n, status: statusSyncWriteAmbig})
}

// faultDurableAbort is AnswerDurableWritesAmbiguousNotMade's opcode.
const faultDurableAbort = 0xfd // no opcode gocbcore sends (its cmdcode.go)

// AnswerDurableWritesAmbiguousNotMade makes the next n durable writes on
// vBucket vb of bucket answer SYNC_WRITE_AMBIGUOUS (0xa3) without being
// made, as when the active node aborts a write its replicas did not
// confirm in time (kv_engine's common case of the answer).
func (s *Server) AnswerDurableWritesAmbiguousNotMade(bucket string, vb uint16, n int) {
	s.inject(kvFault{bucket: bucket, opcode: faultDurableAbort, vb: vb, left: n, status: statusSyncWriteAmbig})
}

// SetDurabilityImpossible makes durable writes answer
// DURABILITY_IMPOSSIBLE (0xa1), or not, from now on: as a node failed over
// and not yet rebalanced leaves its vBuckets too few copies.
func (s *Server) SetDurabilityImpossible(on bool) { s.durabilityImpossible.Store(on) }

// inject records a fault.
func (s *Server) inject(f kvFault) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	s.faults = append(s.faults, &f)
}

// takeFault reports the fault that applies to a request of opcode on vb of
// bucket, using up one of its count.
func (s *Server) takeFault(bucket string, opcode byte, vb uint16) (*kvFault, bool) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	for i, f := range s.faults {
		if f.bucket == bucket && f.opcode == opcode && f.vb == vb {
			f.left--
			if f.left <= 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
			return f, true
		}
	}
	return nil, false
}

// updateConflict is an injected write by another client in the middle of
// a query UPDATE.
type updateConflict struct {
	keyspace, key string // bucket.scope.collection and document key
	remove        bool
}

// ConflictOnUpdate makes the next query UPDATE that writes document key
// of bucket.scope.coll find it written again (or, with remove, removed) by
// another client between its read of the document and its write: the
// write by the CAS it read fails, and the statement goes on with its other
// documents and returns, after their results, a 12009 error for this one
// (reason 12033 CAS mismatch, or 17014 key not found), as the query
// service does. The other client's write is a real one: new CAS, next
// seqno, seen by DCP; it leaves the document's value as it was.
func (s *Server) ConflictOnUpdate(bucket, scope, coll, key string, remove bool) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	s.updateConflicts = append(s.updateConflicts, updateConflict{bucket + "." + scope + "." + coll, key, remove})
}

// takeUpdateConflict uses up the conflict injected for key of keyspace,
// if any, and says whether the document is to be removed.
func (s *Server) takeUpdateConflict(keyspace, key string) (remove, ok bool) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	for i, c := range s.updateConflicts {
		if c.keyspace == keyspace && c.key == key {
			s.updateConflicts = append(s.updateConflicts[:i:i], s.updateConflicts[i+1:]...)
			return c.remove, true
		}
	}
	return false, false
}

// FailFailoverLogs answers the next n GET_FAILOVER_LOG requests for
// vBucket vb of bucket with ETMPFAIL (0x86), as a node that is warming up
// does.
func (s *Server) FailFailoverLogs(bucket string, vb uint16, n int) {
	s.inject(kvFault{bucket: bucket, opcode: opDCPGetFailoverLog, vb: vb, left: n, status: statusETmpFail})
}

// IgnoreStreamRequests reads the next n DCP STREAM_REQs for vBucket vb of
// bucket and never answers them (no stream opens), as a node that lost
// them does. The connection keeps serving other requests.
func (s *Server) IgnoreStreamRequests(bucket string, vb uint16, n int) {
	s.inject(kvFault{bucket: bucket, opcode: opDCPStreamReq, vb: vb, left: n})
}

// StreamRequest is one DCP STREAM_REQ the server answered.
type StreamRequest struct {
	Bucket         string
	VB             uint16
	UUID, Start    uint64
	SnapStart      uint64
	SnapEnd        uint64
	Status         uint16 // 0 success, 0x23 rollback, 0x22 out of range, ...
	RollbackTo     uint64 // with status 0x23
	Ignored        bool   // swallowed by IgnoreStreamRequests
	Node           int
	ConnectionName string
}

// StreamRequests lists the STREAM_REQs for vBucket vb of bucket so far,
// oldest first.
func (s *Server) StreamRequests(bucket string, vb uint16) []StreamRequest {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	var out []StreamRequest
	for _, r := range s.streamReqs {
		if r.Bucket == bucket && r.VB == vb {
			out = append(out, r)
		}
	}
	return out
}

func (s *Server) recordStreamRequest(r StreamRequest) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	s.streamReqs = append(s.streamReqs, r)
}
