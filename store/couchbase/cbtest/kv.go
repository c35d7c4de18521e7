package cbtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// globalConfigDelay holds back a connection's first global config (see
// getClusterConfig).
const globalConfigDelay = 25 * time.Millisecond

// kvConn is one client connection to a node's KV port. Its requests are
// read and handled one at a time, in order, by serve (the client pipelines
// requests, e.g. SELECT_BUCKET right behind SASL_STEP). Responses and DCP
// stream messages share the writer under wmu.
type kvConn struct {
	s  *Server
	n  *node
	nc net.Conn
	br *bufio.Reader

	wmu sync.Mutex
	bw  *bufio.Writer

	closeOnce sync.Once
	closed    chan struct{}

	// Owned by the serve goroutine.
	features         map[uint16]bool
	authed           bool
	certAuthed       bool // logged in by its TLS client certificate
	scram            *scramConv
	scramCreds       *scramCreds // of the password when the conversation began
	sentGlobalConfig bool

	stMu       sync.Mutex
	bucketName string
	dcp        *dcpConn
}

func (s *Server) acceptKV(n *node) {
	for {
		nc, err := n.kvLn.Accept()
		if err != nil {
			return
		}
		c := &kvConn{s: s, n: n, nc: nc, br: bufio.NewReaderSize(nc, 64<<10), bw: bufio.NewWriterSize(nc, 64<<10),
			closed: make(chan struct{}), features: map[uint16]bool{}}
		n.connMu.Lock()
		n.conns[c] = struct{}{}
		n.connMu.Unlock()
		if !s.spawn(c.serve) {
			c.close()
			c.forget()
			return
		}
	}
}

func (c *kvConn) close() {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.nc.Close()
		// Streams stop counting as open with the connection.
		if d := c.dcpState(); d != nil {
			d.stop()
		}
	})
}

func (c *kvConn) forget() {
	c.n.connMu.Lock()
	delete(c.n.conns, c)
	c.n.connMu.Unlock()
}

func (c *kvConn) selectedBucket() string {
	c.stMu.Lock()
	defer c.stMu.Unlock()
	return c.bucketName
}

func (c *kvConn) serve() {
	defer func() {
		c.close()
		c.forget()
	}()
	if tc, ok := c.nc.(*tls.Conn); ok && !c.tlsLogin(tc) {
		return
	}
	for {
		p, err := readPacket(c.br)
		if err != nil {
			if err != errBadMagic && !isClosedErr(err) {
				c.s.logf("cbtest: node %d: read: %v", c.n.idx, err)
			}
			return
		}
		if !c.completePacketBuffered() {
			c.flush()
		}
		if !c.n.waitRunning(c.s.done, c.closed) {
			return
		}
		if p.magic == magicRes {
			// The client's answer to a DCP_NOOP.
			if d := c.dcpState(); d != nil && p.opcode == opDCPNoop {
				d.noopAcks.Add(1)
			}
			continue
		}
		if p.magic != magicReq {
			c.s.logf("cbtest: node %d: unexpected magic 0x%02x", c.n.idx, p.magic)
			return
		}
		c.handle(p)
		if !c.completePacketBuffered() {
			if err := c.flush(); err != nil {
				return
			}
		}
	}
}

func isClosedErr(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "use of closed network connection") ||
		strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "connection reset"))
}

// completePacketBuffered says whether a whole next request is already
// read, so that flushing can wait until after it is handled.
func (c *kvConn) completePacketBuffered() bool {
	n := c.br.Buffered()
	if n < 24 {
		return false
	}
	h, err := c.br.Peek(24)
	if err != nil {
		return false
	}
	return n >= 24+int(binary.BigEndian.Uint32(h[8:]))
}

func (c *kvConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.bw.Flush()
}

// write queues p; flush sends it at once.
func (c *kvConn) write(p *packet, flush bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := p.writeTo(c.bw); err != nil {
		return err
	}
	if flush {
		return c.bw.Flush()
	}
	return nil
}

// reply answers req. Responses never carry a key (§2.5 of the facts).
func (c *kvConn) reply(req *packet, status uint16, extras, value []byte, cas uint64, datatype byte) {
	res := &packet{magic: magicRes, opcode: req.opcode, status: status, opaque: req.opaque, cas: cas,
		extras: extras, value: value, datatype: datatype}
	if d := c.s.slowFor(c.selectedBucket()); d > 0 {
		go func() { // SlowBucket: made at once, answered late
			select {
			case <-time.After(d):
				_ = c.write(res, true)
			case <-c.closed:
			}
		}()
		return
	}
	_ = c.write(res, false)
}

// fail answers req with an error status and, when the client asked for
// extended errors, kv_engine's JSON error context.
func (c *kvConn) fail(req *packet, status uint16, context string) {
	if context != "" && c.features[featXerror] {
		v, _ := json.Marshal(map[string]any{"error": map[string]string{"context": "cbtest: " + context}})
		c.reply(req, status, nil, v, 0, datatypeJSON)
		return
	}
	c.reply(req, status, nil, nil, 0, 0)
}

func (c *kvConn) dcpState() *dcpConn {
	c.stMu.Lock()
	defer c.stMu.Unlock()
	return c.dcp
}

func (c *kvConn) handle(p *packet) {
	switch p.opcode {
	case opHello:
		c.hello(p)
		return
	case opGetErrorMap:
		c.reply(p, statusSuccess, nil, []byte(`{"version":2,"revision":1,"errors":{}}`), 0, 0)
		return
	case opSASLListMechs, opSASLAuth, opSASLStep:
		if c.certAuthed {
			// Logged in by the certificate: SASL is not supported any
			// more (SDK-RFC 0036, "KV Engine And X.509").
			c.fail(p, statusNotSupported, "authenticated by the client certificate")
			return
		}
	}
	switch p.opcode {
	case opSASLListMechs:
		c.reply(p, statusSuccess, nil, []byte(saslMechs), 0, 0)
		return
	case opSASLAuth:
		c.saslAuth(p)
		return
	case opSASLStep:
		c.saslStep(p)
		return
	}
	if !c.authed {
		c.fail(p, statusEACCESS, "not authenticated")
		return
	}
	switch p.opcode {
	case opNoop:
		c.reply(p, statusSuccess, nil, nil, 0, 0)
	case opSelectBucket:
		c.selectBucket(p)
	case opGetClusterConfig:
		c.getClusterConfig(p)
	case opGetCollectionID:
		c.getCollectionID(p)
	case opGetCollectionsManif:
		c.withBucket(p, func(b *bucket) {
			c.reply(p, statusSuccess, nil, b.man.manifestJSON(), 0, c.jsonType())
		})
	case opGet, opSet, opAdd, opReplace, opDelete, opTouch, opGAT:
		c.kvOp(p)
	case opSubdocMultiLookup, opSubdocMultiMutation:
		c.subdocMulti(p)
	case opGetAllVBSeqnos:
		c.getAllVBSeqnos(p)
	case opDCPOpen:
		c.dcpOpen(p)
	case opDCPControl, opDCPStreamReq, opDCPCloseStream, opDCPGetFailoverLog, opDCPBufferAck:
		d := c.dcpState()
		if d == nil {
			if p.opcode != opDCPGetFailoverLog {
				c.fail(p, statusEINVAL, "not a DCP connection (no DCP_OPEN)")
				return
			}
		}
		switch p.opcode {
		case opDCPControl:
			d.control(p)
		case opDCPStreamReq:
			d.streamReq(p)
		case opDCPCloseStream:
			d.closeStream(p)
		case opDCPGetFailoverLog:
			c.getFailoverLog(p)
		case opDCPBufferAck:
			d.bufferAck(p)
		}
	default:
		c.fail(p, statusUnknownCommand, fmt.Sprintf("opcode 0x%02x is not implemented", p.opcode))
	}
}

// tlsLogin completes the handshake of a TLS connection and, when the
// client presented a certificate (verified by the handshake against
// ClientCAs), logs it in as the user its subject's common name names; a
// certificate of anyone else, or a failed handshake, ends the connection.
func (c *kvConn) tlsLogin(tc *tls.Conn) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.s.logf("cbtest: node %d: TLS handshake: %v", c.n.idx, err)
		return false
	}
	chains := tc.ConnectionState().VerifiedChains
	if len(chains) == 0 {
		return true // a password logs in, with SASL
	}
	if cn := chains[0][0].Subject.CommonName; cn != c.s.opts.Username {
		c.s.logf("cbtest: node %d: client certificate of %q: no such user", c.n.idx, cn)
		return false
	}
	c.authed, c.certAuthed = true, true
	return true
}

func (c *kvConn) jsonType() byte {
	if c.features[featJSON] {
		return datatypeJSON
	}
	return 0
}

func (c *kvConn) hello(p *packet) {
	var granted []byte
	for i := 0; i+1 < len(p.value); i += 2 {
		f := binary.BigEndian.Uint16(p.value[i:])
		if grantable[f] {
			c.features[f] = true
			granted = binary.BigEndian.AppendUint16(granted, f)
		}
	}
	c.reply(p, statusSuccess, nil, granted, 0, 0)
}

func (c *kvConn) saslAuth(p *packet) {
	mech := string(p.key)
	c.scram = nil
	sec := c.s.secret.Load()
	if mech == "PLAIN" {
		parts := bytes.Split(p.value, []byte{0})
		if len(parts) == 3 && string(parts[1]) == c.s.opts.Username && string(parts[2]) == sec.password {
			c.authed = true
			c.reply(p, statusSuccess, nil, nil, 0, 0)
			return
		}
		c.fail(p, statusAuthError, "")
		return
	}
	cr := sec.creds[mech]
	if cr == nil {
		c.fail(p, statusAuthError, "unknown mechanism "+mech)
		return
	}
	conv, err := scramStart(mech, string(p.value), cr)
	if err != nil {
		c.fail(p, statusAuthError, err.Error())
		return
	}
	c.scram, c.scramCreds = conv, cr
	c.reply(p, statusAuthContinue, nil, []byte(conv.serverFirst), 0, 0)
}

func (c *kvConn) saslStep(p *packet) {
	conv := c.scram
	c.scram = nil
	if conv == nil || conv.mech != string(p.key) {
		c.fail(p, statusAuthError, "SASL_STEP without a SASL_AUTH of that mechanism")
		return
	}
	final, err := conv.finish(string(p.value), c.scramCreds, c.s.opts.Username)
	if err != nil {
		c.s.logf("cbtest: node %d: %s: %v", c.n.idx, conv.mech, err)
		c.fail(p, statusAuthError, "")
		return
	}
	c.authed = true
	c.reply(p, statusSuccess, nil, []byte(final), 0, 0)
}

func (c *kvConn) selectBucket(p *packet) {
	name := string(p.key)
	c.s.mu.Lock()
	_, ok := c.s.buckets[name]
	c.s.mu.Unlock()
	if !ok {
		c.fail(p, statusKeyENOENT, "no bucket "+name)
		return
	}
	c.stMu.Lock()
	c.bucketName = name
	c.stMu.Unlock()
	c.reply(p, statusSuccess, nil, nil, 0, 0)
}

// withBucket runs f under the server lock with the selected bucket, or
// answers NO_BUCKET.
func (c *kvConn) withBucket(p *packet, f func(b *bucket)) {
	name := c.selectedBucket()
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	b := c.s.buckets[name]
	if name == "" || b == nil {
		c.fail(p, statusNoBucket, "no bucket selected")
		return
	}
	f(b)
}

func (c *kvConn) getClusterConfig(p *packet) {
	name := c.selectedBucket()
	if name == "" && !c.sentGlobalConfig {
		// gocbcore v10.8.1's AgentGroup starts its KV agent, then
		// creates its cluster-level (HTTP) agent and only then makes it
		// a config watcher: a first config that arrives in between is
		// missed, and that agent waits for the next revision, which an
		// idle cbtest never makes. Real servers are slow enough at
		// bootstrap; here the first global config waits a little.
		c.sentGlobalConfig = true
		select {
		case <-time.After(globalConfigDelay):
		case <-c.closed:
			return
		}
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if len(p.extras) == 16 {
		epoch := int64(binary.BigEndian.Uint64(p.extras))
		rev := int64(binary.BigEndian.Uint64(p.extras[8:]))
		if epoch > 1 || (epoch == 1 && rev >= c.s.rev) {
			c.reply(p, statusSuccess, nil, nil, 0, 0)
			return
		}
	}
	if name == "" {
		c.reply(p, statusSuccess, nil, c.s.globalConfigLocked(c.n.idx), 0, c.jsonType())
		return
	}
	b := c.s.buckets[name]
	if b == nil {
		c.fail(p, statusNoBucket, "bucket "+name+" is gone")
		return
	}
	c.reply(p, statusSuccess, nil, c.s.bucketConfigLocked(b, c.n.idx), 0, c.jsonType())
}

func (c *kvConn) getCollectionID(p *packet) {
	c.withBucket(p, func(b *bucket) {
		path := string(p.value)
		if path == "" {
			path = string(p.key)
		}
		scope, coll, _ := strings.Cut(path, ".")
		if scope == "" {
			scope = "_default"
		}
		if coll == "" {
			coll = "_default"
		}
		if b.man.scope(scope) == nil {
			c.unknownCollection(p, b, statusUnknownScope)
			return
		}
		cd := b.man.collection(scope, coll)
		if cd == nil {
			c.unknownCollection(p, b, statusUnknownCollection)
			return
		}
		ex := make([]byte, 12)
		binary.BigEndian.PutUint64(ex, b.man.uid)
		binary.BigEndian.PutUint32(ex[8:], cd.id)
		c.reply(p, statusSuccess, ex, nil, 0, 0)
	})
}

// unknownCollection answers 0x88/0x8c with kv_engine's manifest body.
func (c *kvConn) unknownCollection(p *packet, b *bucket, status uint16) {
	v, _ := json.Marshal(map[string]string{"manifest_uid": hexUID(b.man.uid)})
	c.reply(p, status, nil, v, 0, datatypeJSON)
}

// notMyVBucket answers with the bucket config, as kv_engine does.
func (c *kvConn) notMyVBucket(p *packet, b *bucket) {
	c.reply(p, statusNotMyVBucket, nil, c.s.bucketConfigLocked(b, c.n.idx), 0, datatypeJSON)
}

// ownsLocked checks that vb exists and lives on this node, answering
// NOT_MY_VBUCKET otherwise.
func (c *kvConn) ownsLocked(p *packet, b *bucket, vb uint16) bool {
	if int(vb) >= len(b.vbs) || c.s.vbNode(vb) != c.n.idx {
		c.notMyVBucket(p, b)
		return false
	}
	return true
}

// decodeKey splits the collection id off a collection-encoded key.
func (c *kvConn) decodeKey(p *packet) (uint32, string, error) {
	if !c.features[featCollections] || !cidOpcodes[p.opcode] {
		return 0, string(p.key), nil
	}
	cid, n, err := readLEB128(p.key)
	if err != nil {
		return 0, "", err
	}
	return cid, string(p.key[n:]), nil
}

func (c *kvConn) mutationExtras(vb *vbucket, it *item) []byte {
	if !c.features[featMutationSeqno] {
		return nil
	}
	ex := make([]byte, 16)
	binary.BigEndian.PutUint64(ex, vb.uuid())
	binary.BigEndian.PutUint64(ex[8:], it.seqno)
	return ex
}

// docOp runs f under the server lock on the document p names, once the
// checks every document command shares passed (key, bucket, vBucket,
// collection); with Options.SyncDCP it answers a write only once DCP has
// sent it.
func (c *kvConn) docOp(p *packet, f func(b *bucket, vb *vbucket, coll *collDef, k docKey)) {
	cid, key, err := c.decodeKey(p)
	if err != nil {
		c.fail(p, statusEINVAL, err.Error())
		return
	}
	if key == "" || len(key) > 250 {
		c.fail(p, statusEINVAL, "invalid key length")
		return
	}
	var bucketName string
	var changes uint64 // the bucket's change count after a write
	defer func() {
		if changes > 0 && c.s.opts.SyncDCP {
			c.s.awaitDCP(bucketName, changes)
		}
	}()
	c.withBucket(p, func(b *bucket) {
		if !c.ownsLocked(p, b, p.vbucket) {
			return
		}
		before := b.changes
		defer func() {
			if b.changes != before {
				bucketName, changes = b.name, b.changes
			}
		}()
		coll := b.man.collectionByID(cid)
		if coll == nil {
			c.unknownCollection(p, b, statusUnknownCollection)
			return
		}
		f(b, b.vbs[p.vbucket], coll, docKey{cid, key})
	})
}

func (c *kvConn) kvOp(p *packet) {
	c.s.work.kvOp(p.opcode)
	c.docOp(p, func(b *bucket, vb *vbucket, coll *collDef, k docKey) {
		cur := c.s.liveItemLocked(b, vb, k)
		switch p.opcode {
		case opGet:
			if cur == nil {
				c.fail(p, statusKeyENOENT, "")
				return
			}
			c.replyDoc(p, cur)
		case opSet, opAdd, opReplace:
			c.store(p, b, vb, coll, k, cur)
		case opDelete:
			if cur == nil {
				c.fail(p, statusKeyENOENT, "")
				return
			}
			if p.cas != 0 && p.cas != cur.cas {
				c.fail(p, statusKeyEEXISTS, "CAS mismatch")
				return
			}
			fr, ok := c.frames(p)
			if !ok {
				return
			}
			if c.abortedDurably(p, fr) {
				return
			}
			t := c.s.deleteLocked(b, vb, cur, false)
			if !c.madeDurably(p, fr, vb, t) {
				return
			}
			c.reply(p, statusSuccess, c.mutationExtras(vb, t), nil, t.cas, 0)
		case opTouch, opGAT:
			if len(p.extras) != 4 {
				c.fail(p, statusEINVAL, "expected 4 bytes of extras")
				return
			}
			if cur == nil {
				c.fail(p, statusKeyENOENT, "")
				return
			}
			nw := *cur
			nw.expiry = c.s.expiryFor(b, coll, binary.BigEndian.Uint32(p.extras), reqFrames{}, nil) // bounded by a maxTTL too
			c.s.storeLocked(b, vb, &nw)
			if p.opcode == opTouch {
				c.reply(p, statusSuccess, c.mutationExtras(vb, &nw), nil, nw.cas, 0)
			} else {
				c.replyDoc(p, &nw)
			}
		}
	})
}

func (c *kvConn) replyDoc(p *packet, it *item) {
	ex := make([]byte, 4)
	binary.BigEndian.PutUint32(ex, it.flags)
	dt := it.datatype
	if !c.features[featJSON] {
		dt &^= datatypeJSON
	}
	c.reply(p, statusSuccess, ex, it.value, it.cas, dt)
}

func (c *kvConn) store(p *packet, b *bucket, vb *vbucket, coll *collDef, k docKey, cur *item) {
	if len(p.extras) != 8 {
		c.fail(p, statusEINVAL, "expected 8 bytes of extras")
		return
	}
	if p.datatype&datatypeSnappy != 0 {
		c.fail(p, statusEINVAL, "snappy values are not negotiated")
		return
	}
	if p.datatype&datatypeXattr != 0 {
		c.fail(p, statusEINVAL, "values carrying xattrs (datatype 0x04) are not implemented; use sub-document commands")
		return
	}
	switch {
	case p.opcode == opAdd && cur != nil:
		c.fail(p, statusKeyEEXISTS, "document exists")
		return
	case p.opcode == opAdd && p.cas != 0:
		c.fail(p, statusEINVAL, "ADD with a CAS")
		return
	case p.opcode == opReplace && cur == nil, p.opcode == opSet && cur == nil && p.cas != 0:
		c.fail(p, statusKeyENOENT, "")
		return
	case cur != nil && p.cas != 0 && p.cas != cur.cas:
		c.fail(p, statusKeyEEXISTS, "CAS mismatch")
		return
	}
	fr, ok := c.frames(p)
	if !ok {
		return
	}
	exp := c.s.expiryFor(b, coll, binary.BigEndian.Uint32(p.extras[4:]), fr, cur)
	it := &item{docKey: k, value: bytes.Clone(p.value), flags: binary.BigEndian.Uint32(p.extras), expiry: exp,
		datatype: bodyDatatype(p.value)}
	if cur != nil {
		// kv_engine copies the existing document's xattrs into the new
		// one (daemon/protocol/mcbp/mutation_context.cc,
		// getExistingItemToPreserveXattr); ADD only stores a new key.
		it.xattrs = cur.xattrs
	}
	if c.abortedDurably(p, fr) {
		return
	}
	c.s.storeLocked(b, vb, it)
	if c.madeDurably(p, fr, vb, it) {
		c.reply(p, statusSuccess, c.mutationExtras(vb, it), nil, it.cas, 0)
	}
}

// expiryFor is the expiry of a write with expiry field exp, the existing
// document's own with the preserve-TTL frame. A maxTTL (the collection's,
// or at 0 the bucket's, which it inherits; none at -1) bounds every
// expiry, as kv_engine's processExpiryTime does: none, or one later than
// now + maxTTL, becomes now + maxTTL.
func (s *Server) expiryFor(b *bucket, coll *collDef, exp uint32, fr reqFrames, cur *item) uint32 {
	if fr.preserveTTL && cur != nil {
		return cur.expiry // the document's own, the request's ignored
	}
	at := s.expiryAt(exp)
	limit := coll.maxTTL
	if limit == 0 && !coll.never {
		limit = b.maxTTL
	}
	if limit > 0 {
		if most := s.expiryAfter(limit); at == 0 || at > most {
			at = most
		}
	}
	return at
}

// bodyDatatype is the datatype of a body: JSON when it is, as kv_engine
// decides for itself whatever the client says (mutation_context.cc
// validateInput, setDatatypeJSONFromValue).
func bodyDatatype(body []byte) byte {
	if json.Valid(body) {
		return datatypeJSON
	}
	return 0
}

// abortedDurably answers a durable write SYNC_WRITE_AMBIGUOUS without
// making it when a fault says so (the active node aborted it when its
// replicas did not confirm in time), and returns whether it did.
func (c *kvConn) abortedDurably(p *packet, fr reqFrames) bool {
	if fr.durability == 0 {
		return false
	}
	if f, ok := c.s.takeFault(c.selectedBucket(), faultDurableAbort, p.vbucket); ok {
		c.fail(p, f.status, "sync write ambiguous")
		return true
	}
	return false
}

// madeDurably records a durable write's seqno (no failover loses it) and
// answers it SYNC_WRITE_AMBIGUOUS when a fault says so; it returns false
// when it answered.
func (c *kvConn) madeDurably(p *packet, fr reqFrames, vb *vbucket, it *item) bool {
	if fr.durability == 0 {
		return true
	}
	vb.durable = it.seqno
	if f, ok := c.s.takeFault(c.selectedBucket(), faultDurable, p.vbucket); ok {
		c.fail(p, f.status, "sync write ambiguous")
		return false
	}
	return true
}

// frames reads p's framing extras and checks a durability requirement;
// it answers p and returns false when they are wrong or cannot be met.
func (c *kvConn) frames(p *packet) (reqFrames, bool) {
	fr, err := p.frameInfo()
	switch {
	case err != nil:
		c.fail(p, statusEINVAL, err.Error())
	case fr.durability > 3, fr.durability > 1 && (c.s.opts.MajorityOnly || slices.Contains(c.s.opts.MajorityOnlyBuckets, c.selectedBucket())):
		c.fail(p, statusDurabilityInvalid, "durability level not supported")
	case fr.durability != 0 && c.s.durabilityImpossible.Load():
		c.fail(p, statusDurabilityImposs, "durability impossible")
	default:
		return fr, true
	}
	return fr, false
}

func (c *kvConn) getFailoverLog(p *packet) {
	if f, ok := c.s.takeFault(c.selectedBucket(), p.opcode, p.vbucket); ok {
		c.fail(p, f.status, "injected failure")
		return
	}
	c.withBucket(p, func(b *bucket) {
		if !c.ownsLocked(p, b, p.vbucket) {
			return
		}
		c.reply(p, statusSuccess, nil, failoverBytes(b.vbs[p.vbucket]), 0, 0)
	})
}

func failoverBytes(vb *vbucket) []byte {
	out := make([]byte, 0, 16*len(vb.failover))
	for _, e := range vb.failover {
		out = binary.BigEndian.AppendUint64(out, e.uuid)
		out = binary.BigEndian.AppendUint64(out, e.seqno)
	}
	return out
}

// getAllVBSeqnos lists this node's vBuckets (all active: there are no
// replicas) with their high seqnos, or a collection's high seqnos.
func (c *kvConn) getAllVBSeqnos(p *packet) {
	var state uint32
	var cid uint32
	hasCID := false
	switch len(p.extras) {
	case 0:
	case 4:
		state = binary.BigEndian.Uint32(p.extras)
	case 8:
		state = binary.BigEndian.Uint32(p.extras)
		cid, hasCID = binary.BigEndian.Uint32(p.extras[4:]), true
	default:
		c.fail(p, statusEINVAL, "extras must be 0, 4 or 8 bytes")
		return
	}
	if state > 4 {
		c.fail(p, statusEINVAL, "unknown vBucket state")
		return
	}
	c.withBucket(p, func(b *bucket) {
		if hasCID && b.man.collectionByID(cid) == nil {
			c.unknownCollection(p, b, statusUnknownCollection)
			return
		}
		var out []byte
		if state == 0 || state == 1 {
			for _, vb := range b.vbs {
				if c.s.vbNode(vb.id) != c.n.idx {
					continue
				}
				seq := vb.high
				if hasCID {
					seq = vb.collHigh[cid]
				}
				out = binary.BigEndian.AppendUint16(out, vb.id)
				out = binary.BigEndian.AppendUint64(out, seq)
			}
		}
		c.reply(p, statusSuccess, nil, out, 0, 0)
	})
}
