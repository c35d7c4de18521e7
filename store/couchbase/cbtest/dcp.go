package cbtest

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DCP producer side. A connection becomes a DCP connection with DCP_OPEN;
// its streams are served by one producer goroutine (run), which sends,
// per stream, snapshots of the vBucket's live entries after the stream's
// position: first the backfill of what exists, then every later write.

// Stream-request flags.
const (
	streamFlagToLatest    = 0x04
	streamFlagStrictVBUUI = 0x20
)

// STREAM_END reasons.
const (
	EndOK            uint32 = 0
	EndClosed        uint32 = 1
	EndStateChanged  uint32 = 2
	EndDisconnected  uint32 = 3
	EndTooSlow       uint32 = 4
	EndBackfillFail  uint32 = 5
	EndRollback      uint32 = 6
	EndFilterEmpty   uint32 = 7
	EndLostPrivilege uint32 = 8
)

// Snapshot marker types.
const (
	snapMemory = 0x01
	snapDisk   = 0x02
)

// maxSnapshot caps the entries of one snapshot marker.
const maxSnapshot = 1024

type dcpConn struct {
	kc     *kvConn
	bucket string
	name   string
	flags  uint32

	collections bool

	cfgMu sync.Mutex // guards cfg, set by DCP_CONTROL
	cfg   dcpSettings

	// mu guards streams, which only addStreamLocked and
	// removeStreamLocked change; held while writing a stream's messages.
	mu      sync.Mutex
	streams map[uint16]*stream
	// added counts the streams ever added, so that a pass can tell that
	// its list of streams went stale before it locked the bucket.
	added atomic.Uint64

	fcMu    sync.Mutex
	unacked int64
	bufSize int64 // connection_buffer_size; 0: no flow control
	// peakUnacked is the most bytes ever unacknowledged (for tests).
	peakUnacked int64

	noopAcks atomic.Int64 // DCP_NOOP answers received

	// For Options.SyncDCP: the bucket's change count up to which
	// everything was sent, and whether flow control holds the producer.
	caughtUp atomic.Uint64
	blocked  atomic.Bool

	wake     chan struct{}
	stopOnce sync.Once
	stopped  chan struct{}
}

// dcpSettings are what DCP_CONTROL set.
type dcpSettings struct {
	noopEnabled      bool
	noopInterval     time.Duration
	expiryOpcode     bool
	streamEndOnClose bool
}

func (d *dcpConn) settings() dcpSettings {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	return d.cfg
}

type stream struct {
	vb     uint16
	opaque uint32
	start  uint64
	end    uint64
	uuid   uint64 // the vBucket's uuid when the stream opened
	filter *streamFilter

	// The snapshot the client said start is in (STREAM_REQ).
	snapStart, snapEnd uint64

	// Owned by the producer goroutine.
	sent       uint64 // every seqno up to here was sent or skipped
	first      bool   // no batch was produced yet
	backfill   bool   // the first batch is a disk snapshot
	markerSent bool
}

type streamFilter struct {
	colls map[uint32]bool // collection ids, or
	scope *uint32         // a scope id
}

func (d *dcpConn) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dcpConn) stop() {
	d.stopOnce.Do(func() {
		close(d.stopped)
		// The connection's streams end with it. Its writers fail once
		// the socket is closed, so d.mu is free soon; streamReq adds no
		// stream after d.stopped is closed.
		d.mu.Lock()
		for vb := range d.streams {
			d.removeStreamLocked(vb)
		}
		d.mu.Unlock()
		s := d.kc.s
		s.dcpMu.Lock()
		delete(s.dcpConns, d)
		s.dcpMu.Unlock()
		n := d.kc.n
		n.connMu.Lock()
		if n.dcpNames[d.name] == d.kc {
			delete(n.dcpNames, d.name)
		}
		n.connMu.Unlock()
	})
}

func (c *kvConn) dcpOpen(p *packet) {
	if len(p.extras) != 8 {
		c.fail(p, statusEINVAL, "DCP_OPEN needs 8 bytes of extras")
		return
	}
	flags := binary.BigEndian.Uint32(p.extras[4:])
	if flags&0x01 == 0 {
		c.fail(p, statusNotSupported, "only producer DCP connections are implemented")
		return
	}
	if c.dcpState() != nil {
		c.fail(p, statusEINVAL, "already a DCP connection")
		return
	}
	name := c.selectedBucket()
	if name == "" {
		c.fail(p, statusNoBucket, "no bucket selected")
		return
	}
	d := &dcpConn{kc: c, bucket: name, name: string(p.key), flags: flags, streams: map[uint16]*stream{},
		wake: make(chan struct{}, 1), stopped: make(chan struct{}), collections: c.features[featCollections]}
	// kv_engine closes an older connection of the same name (per node).
	c.n.connMu.Lock()
	old := c.n.dcpNames[d.name]
	c.n.dcpNames[d.name] = c
	c.n.connMu.Unlock()
	if old != nil && old != c {
		old.close()
	}
	c.stMu.Lock()
	c.dcp = d
	c.stMu.Unlock()
	c.s.dcpMu.Lock()
	c.s.dcpConns[d] = struct{}{}
	c.s.dcpMu.Unlock()
	if !c.s.spawn(d.run) {
		c.fail(p, statusEINTERNAL, "server closing")
		return
	}
	c.reply(p, statusSuccess, nil, nil, 0, 0)
}

func (d *dcpConn) control(p *packet) {
	key, val := string(p.key), string(p.value)
	ok := true
	d.cfgMu.Lock()
	switch key {
	case "enable_noop":
		d.cfg.noopEnabled = val == "true"
	case "set_noop_interval":
		n, err := strconv.Atoi(val)
		ok = err == nil && n > 0
		d.cfg.noopInterval = time.Duration(n) * time.Second
	case "set_priority":
		ok = val == "low" || val == "medium" || val == "high"
	case "enable_expiry_opcode":
		d.cfg.expiryOpcode = val == "true"
	case "connection_buffer_size":
		n, err := strconv.ParseInt(val, 10, 64)
		ok = err == nil && n >= 0
		d.fcMu.Lock()
		d.bufSize = n
		d.fcMu.Unlock()
	case "send_stream_end_on_client_close_stream":
		d.cfg.streamEndOnClose = val == "true"
	case "enable_out_of_order_snapshots", "backfill_order", "change_streams", "enable_sync_writes",
		"consumer_name", "include_deleted_user_xattrs", "v7_dcp_status_codes", "supports_cursor_dropping",
		"supports_hifi_MFU", "send_stream_end_on_client_close_stream_v2":
		// Accepted; snapshots are always in order and without history.
	default:
		ok = false // enable_stream_id and anything unknown
	}
	d.cfgMu.Unlock()
	if !ok {
		d.kc.fail(p, statusEINVAL, fmt.Sprintf("DCP control %s=%s is not supported", key, val))
		return
	}
	d.kc.reply(p, statusSuccess, nil, nil, 0, 0)
}

func (d *dcpConn) bufferAck(p *packet) {
	if len(p.extras) != 4 {
		return
	}
	d.fcMu.Lock()
	d.unacked -= int64(binary.BigEndian.Uint32(p.extras))
	if d.unacked < 0 {
		d.unacked = 0
	}
	d.fcMu.Unlock()
	d.poke()
}

func (d *dcpConn) parseFilter(value []byte, b *bucket) (*streamFilter, uint16, string) {
	if len(value) == 0 {
		return nil, 0, ""
	}
	if !d.collections {
		return nil, statusEINVAL, "a stream filter needs collections in HELLO"
	}
	var f struct {
		Collections []string         `json:"collections"`
		Scope       *string          `json:"scope"`
		UID         *string          `json:"uid"`
		SID         *json.RawMessage `json:"sid"`
	}
	if err := json.Unmarshal(value, &f); err != nil {
		return nil, statusEINVAL, "stream filter: " + err.Error()
	}
	if f.SID != nil {
		return nil, statusEINVAL, "stream ids are not enabled"
	}
	switch {
	case len(f.Collections) > 0:
		out := &streamFilter{colls: map[uint32]bool{}}
		for _, h := range f.Collections {
			id, err := strconv.ParseUint(h, 16, 32)
			if err != nil {
				return nil, statusEINVAL, "collection id " + h + " is not hex"
			}
			if b.man.collectionByID(uint32(id)) == nil {
				return nil, statusUnknownCollection, "unknown collection " + h
			}
			out.colls[uint32(id)] = true
		}
		return out, 0, ""
	case f.Scope != nil:
		id, err := strconv.ParseUint(*f.Scope, 16, 32)
		if err != nil {
			return nil, statusEINVAL, "scope id " + *f.Scope + " is not hex"
		}
		if b.man.scopeByID(uint32(id)) == nil {
			return nil, statusUnknownScope, "unknown scope " + *f.Scope
		}
		sid := uint32(id)
		return &streamFilter{scope: &sid}, 0, ""
	}
	return nil, 0, "" // {} or only a manifest uid: everything
}

// checkRollback applies kv_engine's stream-request rules (facts §6.6). It
// returns a status (0, ERANGE or ROLLBACK) and the rollback seqno.
func checkRollback(vb *vbucket, flags uint32, start, end, uuid, snapStart, snapEnd uint64) (uint16, uint64) {
	if start > end || snapStart > start || start > snapEnd {
		return statusERANGE, 0
	}
	// Deletions past the start were purged: a client resuming there would
	// miss them (kv_engine's failover-table.cc needsRollback). kv_engine
	// spares a collection-filtered stream whose collections changed
	// nothing after the start; here every stream rolls back, the stricter.
	if start != 0 && start < vb.purged {
		return statusRollback, 0
	}
	if !(start == 0 && (flags&streamFlagStrictVBUUI == 0 || uuid == 0)) {
		idx := -1
		for i, e := range vb.failover {
			if e.uuid == uuid {
				idx = i
				break
			}
		}
		if idx < 0 {
			return statusRollback, 0
		}
		upper := vb.high
		if idx > 0 {
			upper = vb.failover[idx-1].seqno
		}
		if start == snapStart {
			snapEnd = start
		}
		if snapEnd > upper {
			if start == snapEnd {
				snapStart = start
			}
			if upper < snapStart {
				return statusRollback, upper
			}
			return statusRollback, snapStart
		}
	}
	if start > vb.high {
		return statusERANGE, 0
	}
	return statusSuccess, 0
}

func (d *dcpConn) streamReq(p *packet) {
	c := d.kc
	if len(p.extras) != 48 {
		c.fail(p, statusEINVAL, "STREAM_REQ needs 48 bytes of extras")
		return
	}
	ex := p.extras
	flags := binary.BigEndian.Uint32(ex)
	start, end := binary.BigEndian.Uint64(ex[8:]), binary.BigEndian.Uint64(ex[16:])
	uuid := binary.BigEndian.Uint64(ex[24:])
	snapStart, snapEnd := binary.BigEndian.Uint64(ex[32:]), binary.BigEndian.Uint64(ex[40:])

	if _, ok := c.s.takeFault(d.bucket, p.opcode, p.vbucket); ok {
		c.s.recordStreamRequest(StreamRequest{Bucket: d.bucket, VB: p.vbucket, UUID: uuid, Start: start,
			SnapStart: snapStart, SnapEnd: snapEnd, Ignored: true, Node: c.n.idx, ConnectionName: d.name})
		c.s.tracef("cbtest: node %d: %s: STREAM_REQ vb %d start %d uuid %#x: ignored (injected)", c.n.idx, d.name, p.vbucket, start, uuid)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, open := d.streams[p.vbucket]; open {
		c.fail(p, statusKeyEEXISTS, "a stream is already open on this vBucket")
		return
	}
	s := c.s
	s.mu.Lock()
	b := s.buckets[d.bucket]
	if b == nil {
		s.mu.Unlock()
		c.fail(p, statusNoBucket, "bucket is gone")
		return
	}
	if !c.ownsLocked(p, b, p.vbucket) {
		s.mu.Unlock()
		return
	}
	filter, st, msg := d.parseFilter(p.value, b)
	if st != 0 {
		s.mu.Unlock()
		if st == statusUnknownCollection || st == statusUnknownScope {
			c.unknownCollection(p, b, st)
		} else {
			c.fail(p, st, msg)
		}
		return
	}
	vb := b.vbs[p.vbucket]
	if flags&streamFlagToLatest != 0 {
		end = vb.high
	}
	status, rb := checkRollback(vb, flags, start, end, uuid, snapStart, snapEnd)
	flog := failoverBytes(vb)
	str := &stream{vb: p.vbucket, opaque: p.opaque, start: start, end: end, uuid: vb.uuid(), filter: filter,
		snapStart: snapStart, snapEnd: snapEnd, sent: start, first: true, backfill: start < vb.high}
	s.mu.Unlock()
	s.tracef("cbtest: node %d: %s: STREAM_REQ vb %d flags %#x start %d end %d uuid %#x snap [%d,%d] -> status %#x rollback %d",
		c.n.idx, d.name, p.vbucket, flags, start, end, uuid, snapStart, snapEnd, status, rb)
	s.recordStreamRequest(StreamRequest{Bucket: d.bucket, VB: p.vbucket, UUID: uuid, Start: start, SnapStart: snapStart,
		SnapEnd: snapEnd, Status: status, RollbackTo: rb, Node: c.n.idx, ConnectionName: d.name})
	switch status {
	case statusSuccess:
	case statusRollback:
		v := binary.BigEndian.AppendUint64(nil, rb)
		c.reply(p, statusRollback, nil, v, 0, 0)
		return
	default:
		c.fail(p, status, fmt.Sprintf("start %d, end %d, snapshot [%d,%d] out of range", start, end, snapStart, snapEnd))
		return
	}
	// The stream counts as open before the client sees the response; the
	// response goes out before any message of the stream, as the
	// producer sees the stream only once d.mu is released.
	if !d.addStreamLocked(str) {
		return // the connection is gone
	}
	if err := c.write(&packet{magic: magicRes, opcode: p.opcode, opaque: p.opaque, value: flog}, true); err != nil {
		d.removeStreamLocked(p.vbucket)
		return
	}
	d.poke()
}

func (d *dcpConn) closeStream(p *packet) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.removeStreamLocked(p.vbucket)
	if st == nil {
		d.kc.fail(p, statusKeyENOENT, "no stream on this vBucket")
		return
	}
	if err := d.kc.write(&packet{magic: magicRes, opcode: p.opcode, opaque: p.opaque}, false); err != nil {
		return
	}
	if d.settings().streamEndOnClose {
		d.countSent(d.writeStreamEnd(st, EndClosed))
	}
	_ = d.kc.flush()
}

// writeStreamEnd writes STREAM_END for st (caller holds d.mu) and returns
// its size.
func (d *dcpConn) writeStreamEnd(st *stream, reason uint32) int {
	p := &packet{magic: magicReq, opcode: opDCPStreamEnd, vbucket: st.vb, opaque: st.opaque,
		extras: binary.BigEndian.AppendUint32(nil, reason)}
	if err := d.kc.write(p, false); err != nil {
		return 0
	}
	return p.size()
}

func (d *dcpConn) countSent(n int) {
	d.fcMu.Lock()
	d.unacked += int64(n)
	d.peakUnacked = max(d.peakUnacked, d.unacked)
	d.fcMu.Unlock()
}

// endStream ends the stream on vb, if any, with reason (fault injection).
func (d *dcpConn) endStream(vb uint16, reason uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.removeStreamLocked(vb)
	if st == nil {
		return false
	}
	d.countSent(d.writeStreamEnd(st, reason))
	_ = d.kc.flush()
	d.kc.s.tracef("cbtest: node %d: %s: STREAM_END vb %d reason %d (injected)", d.kc.n.idx, d.name, vb, reason)
	return true
}

// run is the producer goroutine of a DCP connection.
func (d *dcpConn) run() {
	s := d.kc.s
	lastSent := time.Now()
	for {
		if !d.kc.n.waitRunning(s.done, d.stopped) {
			return
		}
		sent, changed, err := d.pass()
		if err != nil {
			d.kc.close()
			return
		}
		if sent {
			lastSent = time.Now()
			continue
		}
		var noop <-chan time.Time
		var timer *time.Timer
		if interval := d.noopEvery(); interval > 0 {
			timer = time.NewTimer(time.Until(lastSent.Add(interval)))
			noop = timer.C
		}
		select {
		case <-d.stopped:
		case <-s.done:
		case <-d.wake:
		case <-changed:
		case <-noop:
			if err := d.kc.write(&packet{magic: magicReq, opcode: opDCPNoop, opaque: 0xfffffff0}, true); err != nil {
				d.kc.close()
			}
			lastSent = time.Now()
		}
		if timer != nil {
			timer.Stop()
		}
		select {
		case <-d.stopped:
			return
		case <-s.done:
			return
		default:
		}
	}
}

func (d *dcpConn) noopEvery() time.Duration {
	cfg := d.settings()
	if !cfg.noopEnabled {
		return 0
	}
	if i := d.kc.s.opts.DCPNoopInterval; i > 0 {
		return i
	}
	return cfg.noopInterval
}

type streamBatch struct {
	st    *stream
	msgs  []*packet
	order uint64 // of the batch's first entry; 0 for a bare STREAM_END
}

// pass sends at most one snapshot per stream, the snapshots in the order
// of their first writes (so that, on one connection, changes arrive in the
// order they were made whatever their vBuckets). It reports whether it
// sent anything and the channel that signals the next change of the
// bucket.
func (d *dcpConn) pass() (bool, <-chan struct{}, error) {
	s := d.kc.s
	streams := d.lockedStreams()
	b := s.buckets[d.bucket]
	if b == nil {
		s.mu.Unlock()
		return false, nil, fmt.Errorf("bucket %s is gone", d.bucket)
	}
	changed, changes := b.changed, b.changes
	cfg := d.settings()
	var batches []streamBatch
	for _, st := range streams {
		if msgs, order := d.produceLocked(b, st, cfg); len(msgs) > 0 {
			batches = append(batches, streamBatch{st, msgs, order})
		}
	}
	s.mu.Unlock()
	sort.SliceStable(batches, func(i, j int) bool { return batches[i].order < batches[j].order })

	sent := false
	for _, bt := range batches {
		for _, m := range bt.msgs {
			if !d.awaitWindow() {
				return sent, changed, fmt.Errorf("stopped")
			}
			d.mu.Lock()
			if d.streams[bt.st.vb] != bt.st {
				d.mu.Unlock()
				break // closed meanwhile
			}
			if err := d.kc.write(m, false); err != nil {
				d.mu.Unlock()
				return sent, changed, err
			}
			if m.opcode == opDCPStreamEnd {
				d.removeStreamLocked(bt.st.vb)
				d.kc.s.tracef("cbtest: node %d: %s: STREAM_END vb %d reason %d", d.kc.n.idx, d.name, m.vbucket, binary.BigEndian.Uint32(m.extras))
			}
			d.mu.Unlock()
			d.countSent(m.size())
			sent = true
		}
	}
	if sent {
		if err := d.kc.flush(); err != nil {
			return sent, changed, err
		}
	} else {
		d.caughtUp.Store(changes)
		s.signalDCP()
	}
	return sent, changed, nil
}

// lockedStreams returns the connection's streams, by vBucket, with s.mu
// held. The list is taken under d.mu, before s.mu (the order STREAM_REQ
// takes them in); if a stream was added between the two, the list is
// taken again. Otherwise a write made after that stream opened could go
// out on another vBucket before an earlier write on the new stream's.
func (d *dcpConn) lockedStreams() []*stream {
	s := d.kc.s
	for {
		d.mu.Lock()
		streams := make([]*stream, 0, len(d.streams))
		for _, st := range d.streams {
			streams = append(streams, st)
		}
		added := d.added.Load()
		d.mu.Unlock()
		sort.Slice(streams, func(i, j int) bool { return streams[i].vb < streams[j].vb })
		if f := s.passPaused.Load(); f != nil {
			(*f)(len(streams))
		}
		s.mu.Lock()
		if d.added.Load() == added {
			return streams
		}
		s.mu.Unlock()
	}
}

// signalDCP wakes the writers waiting in awaitDCP.
func (s *Server) signalDCP() {
	s.dcpSigMu.Lock()
	defer s.dcpSigMu.Unlock()
	close(s.dcpSig)
	s.dcpSig = make(chan struct{})
}

// awaitDCP waits (Options.SyncDCP) until every DCP connection of bucket
// has sent everything up to its change count changes, or is held back by
// flow control, or 1s passed.
func (s *Server) awaitDCP(bucket string, changes uint64) {
	deadline := time.NewTimer(time.Second)
	defer deadline.Stop()
	for {
		s.dcpSigMu.Lock()
		sig := s.dcpSig
		s.dcpSigMu.Unlock()
		done := true
		for _, d := range s.allDCP() {
			if d.bucket == bucket && !d.blocked.Load() && d.caughtUp.Load() < changes {
				select {
				case <-d.stopped:
				default:
					done = false
				}
			}
		}
		if done {
			return
		}
		select {
		case <-sig:
		case <-deadline.C:
			return
		case <-s.done:
			return
		}
	}
}

// awaitWindow blocks while the client's flow-control buffer is full.
func (d *dcpConn) awaitWindow() bool {
	for {
		d.fcMu.Lock()
		full := d.bufSize > 0 && d.unacked >= d.bufSize
		d.fcMu.Unlock()
		if d.blocked.Swap(full) != full {
			d.kc.s.signalDCP()
		}
		if !full {
			return true
		}
		_ = d.kc.flush()
		select {
		case <-d.wake:
		case <-d.stopped:
			return false
		case <-d.kc.s.done:
			return false
		}
	}
}

func (f *streamFilter) empty(m *manifest) bool {
	if f == nil {
		return false
	}
	if f.scope != nil {
		return m.scopeByID(*f.scope) == nil
	}
	for id := range f.colls {
		if m.collectionByID(id) != nil {
			return false
		}
	}
	return true
}

// passes says whether the stream carries the entry.
func (d *dcpConn) passes(f *streamFilter, m *manifest, e logEntry) bool {
	if e.it != nil {
		if !d.collections {
			return e.it.cid == 0
		}
		switch {
		case f == nil:
			return true
		case f.scope != nil:
			c := m.collectionByID(e.it.cid)
			return c != nil && c.scope.id == *f.scope
		default:
			return f.colls[e.it.cid]
		}
	}
	if !d.collections {
		return false
	}
	ev := e.ev
	switch {
	case f == nil:
		return true
	case f.scope != nil:
		return ev.scopeID == *f.scope
	default:
		return !ev.sysKey().scope && f.colls[ev.collID]
	}
}

// produceLocked builds the stream's next snapshot, or its end, and says
// when the snapshot's first entry was written. A batch of entries none of
// which is for the stream sends nothing (see snapshotLocked); the next
// batch is taken at once, so that one pass still sends a snapshot when
// there is one to send.
func (d *dcpConn) produceLocked(b *bucket, st *stream, cfg dcpSettings) ([]*packet, uint64) {
	vb := b.vbs[st.vb]
	if vb.uuid() != st.uuid {
		return []*packet{d.endPacket(st, EndStateChanged)}, 0
	}
	if st.sent >= st.end {
		return []*packet{d.endPacket(st, EndOK)}, 0
	}
	hi := min(vb.high, st.end)
	var msgs []*packet
	var order uint64
	for len(msgs) == 0 && st.sent < hi {
		msgs, order = d.snapshotLocked(b, st, hi, cfg)
	}
	switch {
	case st.sent >= st.end:
		msgs = append(msgs, d.endPacket(st, EndOK))
	case st.sent >= vb.high && st.filter.empty(&b.man):
		msgs = append(msgs, d.endPacket(st, EndFilterEmpty))
	}
	return msgs, order
}

// snapshotLocked takes the stream's next batch of at most maxSnapshot
// entries up to hi and returns its snapshot, which is empty when nothing
// in it is to be sent. kv_engine's rules (engines/ep/src/dcp/
// active_stream.cc, ActiveStream::processItemsInner, snapshot,
// markDiskSnapshot, completeBackfillInner; backfill_by_seqno_disk.cc):
//
//   - Memory snapshot: the marker covers the items sent, from the first to
//     the last (the first marker of a stream starts at the requested
//     start), and no SEQNO_ADVANCED follows. A batch in which no item
//     passes the stream's filter sends nothing at all, unless the stream
//     resumed in the middle of a snapshot and this batch reaches that
//     snapshot's end before any marker was sent (MB-47009): then a marker
//     from the requested snapshot start to the batch's end and
//     SEQNO_ADVANCED to it.
//   - Disk snapshot (backfill, the first batch of a stream that starts
//     behind the vBucket's high seqno): the marker runs from the start
//     to the batch's end whatever passes the filter; to a collection-aware
//     client it ends with SEQNO_ADVANCED when its last item is not the
//     stream's. A filtered backfill whose collections have nothing after
//     the start is skipped, marker and all.
func (d *dcpConn) snapshotLocked(b *bucket, st *stream, hi uint64, cfg dcpSettings) ([]*packet, uint64) {
	vb := b.vbs[st.vb]
	from := st.sent
	entries, upTo := vb.entriesAfter(from, hi, maxSnapshot)
	st.sent = upTo
	var visible []logEntry
	for _, e := range entries {
		if d.passes(st.filter, &b.man, e) {
			visible = append(visible, e)
		}
	}
	first := st.first
	st.first = false
	disk := first && st.backfill

	var start, end uint64
	seqnoAdvanced := false
	switch {
	case disk && (len(visible) > 0 || (d.collections && d.passesAfter(b, st, upTo, hi))):
		// The whole backfill is one disk snapshot on a real server; here
		// only its first batch is marked disk, which a filter may empty.
		start, end = st.start, upTo
		seqnoAdvanced = d.collections && (len(visible) == 0 || visible[len(visible)-1].seqno < upTo)
	case !disk && len(visible) > 0:
		start, end = visible[0].seqno, visible[len(visible)-1].seqno
		if !st.markerSent {
			start = min(st.start, start)
		}
	case d.collections && !st.markerSent && from < st.snapEnd && upTo >= st.snapEnd:
		start, end = min(st.snapStart, st.start), upTo
		seqnoAdvanced = true
	default:
		return nil, 0
	}
	typ := byte(snapMemory)
	if disk {
		typ = snapDisk
	}
	st.markerSent = true
	ex := binary.BigEndian.AppendUint64(nil, start)
	ex = binary.BigEndian.AppendUint64(ex, end)
	ex = binary.BigEndian.AppendUint32(ex, uint32(typ))
	msgs := []*packet{{magic: magicReq, opcode: opDCPSnapshotMarker, vbucket: st.vb, opaque: st.opaque, extras: ex}}
	for _, e := range visible {
		msgs = append(msgs, d.entryPacket(st, e, cfg))
	}
	if seqnoAdvanced {
		msgs = append(msgs, &packet{magic: magicReq, opcode: opDCPSeqnoAdvanced, vbucket: st.vb, opaque: st.opaque,
			extras: binary.BigEndian.AppendUint64(nil, end)})
	}
	var order uint64
	switch {
	case len(visible) > 0:
		order = visible[0].order()
	case len(entries) > 0:
		order = entries[0].order()
	}
	return msgs, order
}

// passesAfter says whether a live entry in (from, to] passes the stream's
// filter: whether its collections have anything there (kv_engine reads the
// collections' high seqnos for that).
func (d *dcpConn) passesAfter(b *bucket, st *stream, from, to uint64) bool {
	vb := b.vbs[st.vb]
	i := sort.Search(len(vb.log), func(i int) bool { return vb.log[i].seqno > from })
	for ; i < len(vb.log) && vb.log[i].seqno <= to; i++ {
		if e := vb.log[i]; vb.live(e) && d.passes(st.filter, &b.man, e) {
			return true
		}
	}
	return false
}

func (d *dcpConn) endPacket(st *stream, reason uint32) *packet {
	return &packet{magic: magicReq, opcode: opDCPStreamEnd, vbucket: st.vb, opaque: st.opaque,
		extras: binary.BigEndian.AppendUint32(nil, reason)}
}

func (d *dcpConn) entryPacket(st *stream, e logEntry, cfg dcpSettings) *packet {
	p := &packet{magic: magicReq, vbucket: st.vb, opaque: st.opaque}
	if ev := e.ev; ev != nil {
		p.opcode = opDCPSystemEvent
		version := byte(0)
		var v []byte
		v = binary.BigEndian.AppendUint64(v, ev.manifestUID)
		switch ev.event {
		case eventCollectionCreate:
			v = binary.BigEndian.AppendUint32(v, ev.scopeID)
			v = binary.BigEndian.AppendUint32(v, ev.collID)
			if ev.maxTTL > 0 {
				version = 1
				v = binary.BigEndian.AppendUint32(v, ev.maxTTL)
			}
			p.key = []byte(ev.name)
		case eventCollectionDrop:
			v = binary.BigEndian.AppendUint32(v, ev.scopeID)
			v = binary.BigEndian.AppendUint32(v, ev.collID)
		case eventScopeCreate:
			v = binary.BigEndian.AppendUint32(v, ev.scopeID)
			p.key = []byte(ev.name)
		case eventScopeDrop:
			v = binary.BigEndian.AppendUint32(v, ev.scopeID)
		}
		ex := binary.BigEndian.AppendUint64(nil, ev.seqno)
		ex = binary.BigEndian.AppendUint32(ex, ev.event)
		p.extras = append(ex, version)
		p.value = v
		return p
	}
	it := e.it
	p.cas = it.cas
	p.key = []byte(it.key)
	if d.collections {
		p.key = append(appendLEB128(nil, it.cid), it.key...)
	}
	ex := binary.BigEndian.AppendUint64(nil, it.seqno)
	ex = binary.BigEndian.AppendUint64(ex, it.revSeqno)
	switch {
	case !it.deleted:
		p.opcode = opDCPMutation
		ex = binary.BigEndian.AppendUint32(ex, it.flags)
		ex = binary.BigEndian.AppendUint32(ex, it.expiry)
		ex = binary.BigEndian.AppendUint32(ex, 0) // lock time
		ex = binary.BigEndian.AppendUint16(ex, 0) // nmeta
		ex = append(ex, 0)                        // nru
		p.datatype = it.datatype
		if d.flags&0x08 == 0 {
			p.value = it.value
		} else {
			p.datatype = 0
		}
		d.addXattrs(p, it)
	case it.expired && cfg.expiryOpcode:
		p.opcode = opDCPExpiration
		ex = binary.BigEndian.AppendUint32(ex, it.deleteTime)
	case cfg.expiryOpcode || d.flags&0x20 != 0: // delete times (implied by the expiry opcode)
		p.opcode = opDCPDeletion
		ex = binary.BigEndian.AppendUint32(ex, it.deleteTime)
		ex = append(ex, 0)
	default:
		p.opcode = opDCPDeletion
		ex = binary.BigEndian.AppendUint16(ex, 0)
	}
	if it.deleted {
		d.addXattrs(p, it) // a tombstone's system xattrs
	}
	p.extras = ex
	return p
}

// dcpOpenIncludeXattrs is DCP_OPEN's flag for values with xattrs.
const dcpOpenIncludeXattrs = 0x04

// addXattrs puts the item's xattrs in front of the message's value, with
// the XATTR datatype bit, when the connection opened with the
// include-xattrs flag; without it the producer sends the body only
// (docs/dcp/documentation/commands/open-connection.md and mutation.md,
// "The meaning of datatype"; docs/Document.md for the encoding).
func (d *dcpConn) addXattrs(p *packet, it *item) {
	if d.flags&dcpOpenIncludeXattrs == 0 || len(it.xattrs) == 0 {
		return
	}
	p.value = append(xattrBlob(it.xattrs), p.value...)
	p.datatype |= datatypeXattr
}

// allDCP is a snapshot of the DCP connections.
func (s *Server) allDCP() []*dcpConn {
	s.dcpMu.Lock()
	defer s.dcpMu.Unlock()
	out := make([]*dcpConn, 0, len(s.dcpConns))
	for d := range s.dcpConns {
		out = append(out, d)
	}
	return out
}
