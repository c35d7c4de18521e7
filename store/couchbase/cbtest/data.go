package cbtest

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"sort"
	"strconv"
	"time"
)

// The in-memory data model. Everything here is guarded by Server.mu.
// Items and system events are immutable once logged: a write makes a new
// *item, so DCP producers may read logged entries without the lock.

// docKey identifies a document in a bucket.
type docKey struct {
	cid uint32
	key string
}

// item is one version of a document, or its tombstone.
type item struct {
	docKey
	value      []byte  // the body only: never the xattrs
	xattrs     []xattr // in order; shared between versions, never changed in place
	flags      uint32
	datatype   byte
	cas        uint64
	expiry     uint32 // absolute Unix seconds; 0 = never
	seqno      uint64
	revSeqno   uint64
	deleted    bool
	expired    bool   // deleted because its expiry passed (DCP EXPIRATION)
	deleteTime uint32 // Unix seconds of the deletion

	// parsed is value as queries read it, decoded at the first query that
	// scans the item (Server.docLocked, under Server.mu): an item is
	// never changed once stored, a mutation stores a new one, and a query
	// changes no document it reads (UPDATE clones along the path it sets).
	// Without it every query decoded every document it scanned, holding
	// the lock that KV operations wait for.
	parsed  any
	decoded bool
}

// System event codes (kv_engine docs/dcp/documentation/commands/system_event.md).
const (
	eventCollectionCreate = 0
	eventCollectionDrop   = 1
	eventScopeCreate      = 3
	eventScopeDrop        = 4
)

// sysEvent is a collection or scope create/drop as logged in a vBucket.
type sysEvent struct {
	seqno       uint64
	event       uint32
	manifestUID uint64
	scopeID     uint32
	collID      uint32
	name        string
	maxTTL      uint32
	order       uint64 // when it happened, on the CAS clock (see logEntry.order)
}

// sysKey is what a later event on the same scope or collection replaces.
type sysKey struct {
	scope bool
	id    uint32
}

func (e *sysEvent) sysKey() sysKey {
	if e.event == eventScopeCreate || e.event == eventScopeDrop {
		return sysKey{true, e.scopeID}
	}
	return sysKey{false, e.collID}
}

// logEntry is one seqno of a vBucket: an item or a system event.
type logEntry struct {
	seqno uint64
	it    *item
	ev    *sysEvent
}

// order is when the entry was written, bucket-wide: items by their CAS
// (strictly increasing server-wide), system events by a value taken from
// the same clock. A DCP connection sends its streams' snapshots in this
// order (see dcpConn.pass).
func (e logEntry) order() uint64 {
	if e.it != nil {
		return e.it.cas
	}
	return e.ev.order
}

type failoverEntry struct {
	uuid  uint64
	seqno uint64
}

type vbucket struct {
	id       uint16
	high     uint64
	failover []failoverEntry // newest first
	items    map[docKey]*item
	events   map[sysKey]*sysEvent
	log      []logEntry // every version, ascending seqno; superseded ones are skipped
	collHigh map[uint32]uint64
	// durable is the seqno of the last durable write: replicated, so no
	// failover loses it (Rollback refuses to go below it).
	durable uint64
	// purged is the purge seqno: the highest seqno of a tombstone
	// dropped (PurgeTombstones), as compaction drops those older than
	// the metadata purge interval.
	purged uint64
}

func randomUUID() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	u := binary.BigEndian.Uint64(b[:]) &^ (1 << 63)
	if u == 0 {
		u = 1
	}
	return u
}

func newVBucket(id uint16) *vbucket {
	return &vbucket{
		id:       id,
		failover: []failoverEntry{{uuid: randomUUID(), seqno: 0}},
		items:    map[docKey]*item{},
		events:   map[sysKey]*sysEvent{},
		collHigh: map[uint32]uint64{},
	}
}

func (v *vbucket) uuid() uint64 { return v.failover[0].uuid }

// live says whether e is the current version of its document or event.
func (v *vbucket) live(e logEntry) bool {
	if e.it != nil {
		return v.items[e.it.docKey] == e.it
	}
	return v.events[e.ev.sysKey()] == e.ev
}

// appendItem gives it the next seqno and logs it.
func (v *vbucket) appendItem(it *item) {
	v.high++
	it.seqno = v.high
	if old := v.items[it.docKey]; old != nil {
		it.revSeqno = old.revSeqno + 1
	} else {
		it.revSeqno = 1
	}
	v.items[it.docKey] = it
	v.log = append(v.log, logEntry{seqno: it.seqno, it: it})
	v.collHigh[it.cid] = it.seqno
}

func (v *vbucket) appendEvent(ev *sysEvent) {
	v.high++
	ev.seqno = v.high
	v.events[ev.sysKey()] = ev
	v.log = append(v.log, logEntry{seqno: ev.seqno, ev: ev})
	if !ev.sysKey().scope {
		v.collHigh[ev.collID] = ev.seqno
	}
}

// entriesAfter returns the live entries with from < seqno <= to, at most
// max of them (0 = no limit), and the seqno the returned range covers up
// to (to, or the last returned entry's seqno when max cut it short).
func (v *vbucket) entriesAfter(from, to uint64, max int) ([]logEntry, uint64) {
	i := sort.Search(len(v.log), func(i int) bool { return v.log[i].seqno > from })
	var out []logEntry
	for ; i < len(v.log) && v.log[i].seqno <= to; i++ {
		e := v.log[i]
		if !v.live(e) {
			continue
		}
		out = append(out, e)
		if max > 0 && len(out) == max {
			return out, e.seqno
		}
	}
	return out, to
}

// purgeTombstones drops every tombstone, as compaction does once they are
// older than the metadata purge interval, and raises the purge seqno to
// the highest of them.
func (v *vbucket) purgeTombstones() {
	kept := v.log[:0]
	for _, e := range v.log {
		if e.it != nil && e.it.deleted && v.live(e) {
			delete(v.items, e.it.docKey)
			v.purged = max(v.purged, e.seqno)
			continue
		}
		kept = append(kept, e)
	}
	clear(v.log[len(kept):])
	v.log = kept
}

// rollbackTo discards everything after seqno and starts a new branch of
// history there. A document whose latest version is discarded gets back
// the version it had at seqno (the log keeps every version), or
// disappears if it did not exist then.
func (v *vbucket) rollbackTo(seqno uint64) {
	if seqno > v.high {
		seqno = v.high
	}
	i := sort.Search(len(v.log), func(i int) bool { return v.log[i].seqno > seqno })
	lostItems, lostEvents := map[docKey]bool{}, map[sysKey]bool{}
	for _, e := range v.log[i:] {
		if !v.live(e) {
			continue
		}
		if e.it != nil {
			delete(v.items, e.it.docKey)
			lostItems[e.it.docKey] = true
		} else {
			delete(v.events, e.ev.sysKey())
			lostEvents[e.ev.sysKey()] = true
		}
	}
	v.log = v.log[:i:i]
	for j := len(v.log) - 1; j >= 0 && len(lostItems)+len(lostEvents) > 0; j-- {
		e := v.log[j]
		if e.it != nil && lostItems[e.it.docKey] {
			v.items[e.it.docKey] = e.it
			delete(lostItems, e.it.docKey)
		}
		if e.ev != nil && lostEvents[e.ev.sysKey()] {
			v.events[e.ev.sysKey()] = e.ev
			delete(lostEvents, e.ev.sysKey())
		}
	}
	v.high = seqno
	v.collHigh = map[uint32]uint64{}
	for _, e := range v.log {
		if e.it != nil {
			v.collHigh[e.it.cid] = e.seqno
		} else if !e.ev.sysKey().scope {
			v.collHigh[e.ev.collID] = e.seqno
		}
	}
	v.newBranch()
}

// newBranch adds a failover log entry at the current high seqno.
func (v *vbucket) newBranch() {
	v.failover = append([]failoverEntry{{uuid: randomUUID(), seqno: v.high}}, v.failover...)
	if len(v.failover) > maxFailoverEntries {
		v.failover = v.failover[:maxFailoverEntries:maxFailoverEntries]
	}
}

// maxFailoverEntries is how many entries a vBucket's failover log keeps,
// the newest (kv_engine's max_failover_entries, 25 by default): a client
// resuming on a branch dropped from it is rolled back to 0.
const maxFailoverEntries = 25

// reset empties the vBucket as a flush does: new uuid, seqnos from 0.
func (v *vbucket) reset() {
	*v = *newVBucket(v.id)
}

// Manifest.

type collDef struct {
	name    string
	id      uint32
	scope   *scopeDef
	maxTTL  uint32
	never   bool // maxTTL -1 (Couchbase 7.6): nothing expires by a maxTTL, the bucket's not inherited
	history bool
}

type scopeDef struct {
	name  string
	id    uint32
	colls []*collDef
}

type manifest struct {
	uid       uint64
	scopes    []*scopeDef
	nextScope uint32
	nextColl  uint32
}

func newManifest() manifest {
	def := &scopeDef{name: "_default", id: 0}
	def.colls = []*collDef{{name: "_default", id: 0, scope: def}}
	return manifest{scopes: []*scopeDef{def}, nextScope: 8, nextColl: 8}
}

func (m *manifest) scope(name string) *scopeDef {
	for _, s := range m.scopes {
		if s.name == name {
			return s
		}
	}
	return nil
}

func (m *manifest) collection(scope, name string) *collDef {
	if s := m.scope(scope); s != nil {
		for _, c := range s.colls {
			if c.name == name {
				return c
			}
		}
	}
	return nil
}

func (m *manifest) collectionByID(id uint32) *collDef {
	for _, s := range m.scopes {
		for _, c := range s.colls {
			if c.id == id {
				return c
			}
		}
	}
	return nil
}

func (m *manifest) scopeByID(id uint32) *scopeDef {
	for _, s := range m.scopes {
		if s.id == id {
			return s
		}
	}
	return nil
}

func hexUID(v uint64) string { return strconv.FormatUint(v, 16) }

// manifestJSON is the manifest as ns_server and GET_COLLECTIONS_MANIFEST
// show it: every uid a hex string.
func (m *manifest) manifestJSON() []byte {
	type jc struct {
		Name    string `json:"name"`
		UID     string `json:"uid"`
		MaxTTL  int64  `json:"maxTTL"`
		History bool   `json:"history"`
	}
	type js struct {
		Name        string `json:"name"`
		UID         string `json:"uid"`
		Collections []jc   `json:"collections"`
	}
	out := struct {
		UID    string `json:"uid"`
		Scopes []js   `json:"scopes"`
	}{UID: hexUID(m.uid), Scopes: []js{}}
	for _, s := range m.scopes {
		sj := js{Name: s.name, UID: hexUID(uint64(s.id)), Collections: []jc{}}
		for _, c := range s.colls {
			ttl := int64(c.maxTTL)
			if c.never {
				ttl = -1
			}
			sj.Collections = append(sj.Collections, jc{Name: c.name, UID: hexUID(uint64(c.id)), MaxTTL: ttl, History: c.history})
		}
		out.Scopes = append(out.Scopes, sj)
	}
	b, _ := json.Marshal(out)
	return b
}

// bucket is one Couchbase bucket.
type bucket struct {
	name         string
	uuid         string
	bucketType   string // membase or ephemeral
	ramQuotaMB   uint64
	replicas     int
	flushEnabled bool
	maxTTL       uint32 // seconds; collections of maxTTL 0 inherit it
	vbs          []*vbucket
	man          manifest
	changed      chan struct{} // closed and replaced on every change
	changes      uint64        // how many times changed was closed
}

func newBucket(name string, numVBs int) *bucket {
	b := &bucket{
		name:       name,
		uuid:       fmt.Sprintf("%016x%016x", randomUUID(), randomUUID()),
		bucketType: "membase",
		ramQuotaMB: 100,
		man:        newManifest(),
		changed:    make(chan struct{}),
	}
	b.vbs = make([]*vbucket, numVBs)
	for i := range b.vbs {
		b.vbs[i] = newVBucket(uint16(i))
	}
	return b
}

// notify wakes everything waiting on b.changed.
func (b *bucket) notify() {
	b.changes++
	close(b.changed)
	b.changed = make(chan struct{})
}

// validName follows kv_engine's rule for scope and collection names.
func validName(n string) bool {
	if n == "" || len(n) > 251 || n[0] == '_' || n[0] == '%' {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '%') {
			return false
		}
	}
	return true
}

// Errors of manifest changes; their texts follow ns_server's so that gocb
// classifies them (it matches substrings).
type mgmtError struct {
	status int
	msg    string
}

func (e *mgmtError) Error() string { return e.msg }

// createScopeLocked adds a scope and logs its event in every vBucket.
func (s *Server) createScopeLocked(b *bucket, name string) (*scopeDef, error) {
	if !validName(name) {
		return nil, &mgmtError{400, fmt.Sprintf("Scope name %q is invalid", name)}
	}
	if b.man.scope(name) != nil {
		return nil, &mgmtError{400, fmt.Sprintf("Scope with name %q already exists", name)}
	}
	sc := &scopeDef{name: name, id: b.man.nextScope}
	b.man.nextScope++
	b.man.uid++
	order := s.nextCASLocked()
	b.man.scopes = append(b.man.scopes, sc)
	for _, v := range b.vbs {
		v.appendEvent(&sysEvent{order: order, event: eventScopeCreate, manifestUID: b.man.uid, scopeID: sc.id, name: name})
	}
	s.manifestChangedLocked(b)
	return sc, nil
}

func (s *Server) createCollectionLocked(b *bucket, scope, name string, maxTTL uint32, history bool) (*collDef, error) {
	sc := b.man.scope(scope)
	if sc == nil {
		return nil, &mgmtError{404, fmt.Sprintf("Scope with name %q is not found", scope)}
	}
	if !validName(name) {
		return nil, &mgmtError{400, fmt.Sprintf("Collection name %q is invalid", name)}
	}
	if b.man.collection(scope, name) != nil {
		return nil, &mgmtError{400, fmt.Sprintf("Collection with name %q in scope %q already exists", name, scope)}
	}
	c := &collDef{name: name, id: b.man.nextColl, scope: sc, maxTTL: maxTTL, history: history}
	b.man.nextColl++
	b.man.uid++
	order := s.nextCASLocked()
	sc.colls = append(sc.colls, c)
	for _, v := range b.vbs {
		v.appendEvent(&sysEvent{order: order, event: eventCollectionCreate, manifestUID: b.man.uid, scopeID: sc.id, collID: c.id, name: name, maxTTL: maxTTL})
	}
	s.manifestChangedLocked(b)
	return c, nil
}

func (s *Server) dropCollectionLocked(b *bucket, scope, name string) error {
	sc := b.man.scope(scope)
	if sc == nil {
		return &mgmtError{404, fmt.Sprintf("Scope with name %q is not found", scope)}
	}
	c := b.man.collection(scope, name)
	if c == nil {
		return &mgmtError{404, fmt.Sprintf("Collection with name %q in scope %q is not found", name, scope)}
	}
	b.man.uid++
	order := s.nextCASLocked()
	for i, x := range sc.colls {
		if x == c {
			sc.colls = append(sc.colls[:i:i], sc.colls[i+1:]...)
			break
		}
	}
	s.purgeCollectionLocked(b, c.id)
	for _, v := range b.vbs {
		v.appendEvent(&sysEvent{order: order, event: eventCollectionDrop, manifestUID: b.man.uid, scopeID: sc.id, collID: c.id})
	}
	s.dropIndexesLocked(b.name, scope, name)
	s.manifestChangedLocked(b)
	return nil
}

func (s *Server) dropScopeLocked(b *bucket, name string) error {
	sc := b.man.scope(name)
	if sc == nil {
		return &mgmtError{404, fmt.Sprintf("Scope with name %q is not found", name)}
	}
	if sc.id == 0 {
		return &mgmtError{400, "Deleting _default scope is not allowed"}
	}
	b.man.uid++
	order := s.nextCASLocked()
	for _, c := range sc.colls {
		s.purgeCollectionLocked(b, c.id)
		for _, v := range b.vbs {
			v.appendEvent(&sysEvent{order: order, event: eventCollectionDrop, manifestUID: b.man.uid, scopeID: sc.id, collID: c.id})
		}
		s.dropIndexesLocked(b.name, name, c.name)
	}
	for i, x := range b.man.scopes {
		if x == sc {
			b.man.scopes = append(b.man.scopes[:i:i], b.man.scopes[i+1:]...)
			break
		}
	}
	for _, v := range b.vbs {
		v.appendEvent(&sysEvent{order: order, event: eventScopeDrop, manifestUID: b.man.uid, scopeID: sc.id})
	}
	s.manifestChangedLocked(b)
	return nil
}

// purgeCollectionLocked forgets a dropped collection's documents. Their
// log entries become stale, so DCP never sends them again.
func (s *Server) purgeCollectionLocked(b *bucket, cid uint32) {
	for _, v := range b.vbs {
		for k := range v.items {
			if k.cid == cid {
				delete(v.items, k)
			}
		}
		delete(v.collHigh, cid)
	}
}

// manifestChangedLocked publishes a manifest change: the bucket config
// carries the manifest uid, so the config rev moves too.
func (s *Server) manifestChangedLocked(b *bucket) {
	b.notify()
	s.bumpRevLocked()
}

// now is the server clock.
func (s *Server) now() time.Time { return s.opts.Clock() }

// nextCASLocked returns a CAS that is non-zero and larger than any before.
func (s *Server) nextCASLocked() uint64 {
	c := uint64(s.now().UnixNano())
	if c <= s.lastCAS {
		c = s.lastCAS + 1
	}
	s.lastCAS = c
	return c
}

// expiryAt turns a KV expiry field into absolute Unix seconds.
func (s *Server) expiryAt(exp uint32) uint32 {
	if exp == 0 {
		return 0
	}
	if exp <= 30*24*3600 {
		return uint32(s.now().Unix()) + exp
	}
	return exp
}

// expiryAfter is the absolute Unix seconds ttl seconds from now: a maxTTL
// is always a length, however long (a KV expiry field past 30 days is a
// time).
func (s *Server) expiryAfter(ttl uint32) uint32 {
	return uint32(s.now().Unix()) + ttl
}

func (s *Server) isExpired(it *item) bool {
	return !it.deleted && it.expiry != 0 && int64(it.expiry) <= s.now().Unix()
}

// liveItemLocked returns the document, or nil when it does not exist. An
// expired document is turned into an expiration tombstone first, as the
// real server does on access.
func (s *Server) liveItemLocked(b *bucket, vb *vbucket, k docKey) *item {
	it := vb.items[k]
	if it == nil || it.deleted {
		return nil
	}
	if s.isExpired(it) {
		s.deleteLocked(b, vb, it, true)
		return nil
	}
	return it
}

// storeLocked logs a new version of a document and wakes DCP.
func (s *Server) storeLocked(b *bucket, vb *vbucket, it *item) {
	it.cas = s.nextCASLocked()
	vb.appendItem(it)
	b.notify()
}

// deleteLocked replaces a document with a tombstone. The body and the
// user xattrs go; system xattrs stay with the tombstone (kv_engine
// docs/ExtendedAttributes.md, "XATTR lifetime"), whether deleted or
// expired.
func (s *Server) deleteLocked(b *bucket, vb *vbucket, old *item, expired bool) *item {
	t := &item{docKey: old.docKey, deleted: true, expired: expired, flags: old.flags, deleteTime: uint32(s.now().Unix()),
		xattrs: systemXattrs(old.xattrs)}
	s.storeLocked(b, vb, t)
	return t
}

// expireLocked runs the expiry pager over every bucket once.
func (s *Server) expireLocked() int {
	n := 0
	for _, b := range s.buckets {
		for _, vb := range b.vbs {
			var due []*item
			for _, it := range vb.items {
				if s.isExpired(it) {
					due = append(due, it)
				}
			}
			sort.Slice(due, func(i, j int) bool { return due[i].seqno < due[j].seqno })
			for _, it := range due {
				s.deleteLocked(b, vb, it, true)
				n++
			}
		}
	}
	return n
}

// vbOf is gocbcore's key to vBucket mapping (cbcrc.go, vbucketmap.go).
func vbOf(key []byte, numVBs int) uint16 {
	return uint16(((crc32.ChecksumIEEE(key) >> 16) & 0x7fff) % uint32(numVBs))
}
