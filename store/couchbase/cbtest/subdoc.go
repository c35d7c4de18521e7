package cbtest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Extended attributes and the two sub-document multi commands,
// SUBDOC_MULTI_LOOKUP (0xd0) and SUBDOC_MULTI_MUTATION (0xd1), as kv_engine
// documents them (docs/SubDocument.md, docs/ExtendedAttributes.md) and
// implements them (daemon/subdocument*.cc). A document's xattrs are kept
// apart from its body (item.xattrs): plain GET and DCP see the body only.

// xattr is one extended attribute: its X-Key and raw JSON value.
type xattr struct {
	key   string
	value []byte
}

// isSystemXattr: X-Keys with a leading underscore are system xattrs
// (docs/ExtendedAttributes.md, "XATTR Features").
func isSystemXattr(key string) bool { return strings.HasPrefix(key, "_") }

// systemXattrs are those of xs that outlive the body.
func systemXattrs(xs []xattr) []xattr {
	var out []xattr
	for _, x := range xs {
		if isSystemXattr(x.key) {
			out = append(out, x)
		}
	}
	return out
}

// xattrsObject is xs as the JSON object kv_engine runs xattr specs
// against ({"key": value, ...}: subdocument_context.cc do_xattr_phase).
func xattrsObject(xs []xattr) []byte {
	fs := make([]jfield, len(xs))
	for i, x := range xs {
		fs[i] = jfield{x.key, x.value}
	}
	return encodeObject(fs)
}

func xattrsOf(obj []byte) []xattr {
	fs, _ := objectFields(obj)
	out := make([]xattr, len(fs))
	for i, f := range fs {
		out[i] = xattr{f.key, f.raw}
	}
	return out
}

// xattrBlob encodes xs as a value's xattr section (docs/Document.md, "XAttr
// - extended attributes"): the section's length (u32, itself excluded),
// then per xattr its pair length (u32), key, 0x00, value, 0x00.
func xattrBlob(xs []xattr) []byte {
	var pairs []byte
	for _, x := range xs {
		pairs = binary.BigEndian.AppendUint32(pairs, uint32(len(x.key)+len(x.value)+2))
		pairs = append(append(append(append(pairs, x.key...), 0), x.value...), 0)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(pairs))), pairs...)
}

// Spec opcodes (gocbcore memd/cmdcode.go, memd/constants.go): the
// sub-JSON ones, and the whole-document ones that reuse GET, SET and
// DELETE (docs/SubDocument.md, "Whole Doc Commands").
const (
	sdGetDoc     = opGet
	sdSetDoc     = opSet
	sdDeleteDoc  = opDelete
	sdGet        = 0xc5
	sdExists     = 0xc6
	sdDictAdd    = 0xc7
	sdDictUpsert = 0xc8
	sdDelete     = 0xc9
	sdReplace    = 0xca
	sdGetCount   = 0xd2
)

// sdKnown are the spec opcodes kv_engine accepts, true for mutations;
// any other is SUBDOC_INVALID_COMBO (subdocument_validators.cc
// is_valid_multipath_spec).
var sdKnown = map[byte]bool{
	sdGetDoc: false, sdGet: false, sdExists: false, sdGetCount: false,
	sdSetDoc: true, sdDeleteDoc: true, sdDictAdd: true, sdDictUpsert: true, sdDelete: true, sdReplace: true,
	0xcb: true, 0xcc: true, 0xcd: true, 0xce: true, 0xcf: true, 0xd3: true, // arrays, counter, replace body with xattr
}

// sdImplemented are those this server runs.
var sdImplemented = map[byte]bool{
	sdGetDoc: true, sdGet: true, sdExists: true, sdGetCount: true,
	sdSetDoc: true, sdDictAdd: true, sdDictUpsert: true, sdDelete: true, sdReplace: true,
}

// Path flags and doc flags (docs/SubDocument.md, "Flags").
const (
	pathFlagMkdirP       = 0x01
	pathFlagXattr        = 0x04
	pathFlagExpandMacros = 0x10
	pathFlagBinaryValue  = 0x20

	docFlagMkDoc         = 0x01
	docFlagAdd           = 0x02
	docFlagAccessDeleted = 0x04
)

// maxSubdocPaths is SUBDOC_MULTI_MAX_PATHS (docs/SubDocument.md "Limits").
const maxSubdocPaths = 16

// maxXattrKeyLen: an X-Key is shorter than SUBDOC_MAX_XATTR_LENGTH (16)
// bytes (daemon/subdocument_validators.h; xattr/key_validator.cc).
const maxXattrKeyLen = 15

type sdSpec struct {
	op, flags byte
	path      string
	value     []byte
	xattr     bool
	comps     []pathComp // for an xattr, the X-Key first
	pathErr   uint16     // the path's parse status, reported per spec
}

type sdRequest struct {
	docFlags  byte
	expiry    uint32
	userFlags *uint32
	specs     []sdSpec
}

// sdError is a request-level refusal.
type sdError struct {
	status uint16
	msg    string
}

func sdErr(status uint16, format string, a ...any) *sdError {
	return &sdError{status, fmt.Sprintf(format, a...)}
}

func (c *kvConn) subdocMulti(p *packet) {
	c.s.work.kvOp(p.opcode)
	mutation := p.opcode == opSubdocMultiMutation
	req, err := c.parseSubdoc(p, mutation)
	if err != nil {
		c.fail(p, err.status, err.msg)
		return
	}
	if mutation {
		c.mutateIn(p, req)
	} else {
		c.lookupIn(p, req)
	}
}

// parseSubdoc decodes and checks a multi request as kv_engine's
// validator does (subdocument_validators.cc subdoc_multi_validator;
// daemon/subdocument_parser.h SubdocMultiPayloadParser for the extras).
func (c *kvConn) parseSubdoc(p *packet, mutation bool) (*sdRequest, *sdError) {
	req := &sdRequest{}
	ex := p.extras
	switch {
	case !mutation && len(ex) > 1, mutation && !(len(ex) == 0 || len(ex) == 1 || len(ex) == 4 || len(ex) == 5 || len(ex) == 8 || len(ex) == 9):
		return nil, sdErr(statusEINVAL, "Request extras invalid")
	}
	if len(ex) >= 4 {
		req.expiry = binary.BigEndian.Uint32(ex)
	}
	if len(ex) >= 8 {
		f := binary.BigEndian.Uint32(ex[4:])
		req.userFlags = &f
	}
	if len(ex)%4 == 1 {
		req.docFlags = ex[len(ex)-1]
	}
	if err := checkDocFlags(req.docFlags, p.cas, mutation); err != nil {
		return nil, err
	}
	body := p.value
	for len(body) > 0 {
		if len(req.specs) == maxSubdocPaths {
			return nil, sdErr(statusSubdocInvalidCombo, "Request must contain at most %d paths", maxSubdocPaths)
		}
		sp, n, err := c.parseSpec(body, mutation, req.docFlags)
		if err != nil {
			return nil, err
		}
		if sp.xattr && len(req.specs) > 0 && !req.specs[len(req.specs)-1].xattr {
			// Xattr specs come first (subdoc_multi_validator).
			return nil, sdErr(statusSubdocInvalidXattrOrder, "xattr specs must precede body specs")
		}
		req.specs = append(req.specs, sp)
		body = body[n:]
	}
	if len(req.specs) == 0 {
		return nil, sdErr(statusSubdocInvalidCombo, "Request must contain at least one path")
	}
	return req, nil
}

// checkDocFlags allows, on lookups, AccessDeleted and, on mutations,
// MkDoc or Add; the other doc flags (CreateAsDeleted, ReviveDocument,
// ReplicaRead, AccessDeleted on a mutation) are not implemented.
func checkDocFlags(f byte, cas uint64, mutation bool) *sdError {
	switch {
	case mutation && f&docFlagAdd != 0 && cas != 0:
		return sdErr(statusEINVAL, "Request with add flag must have CAS 0")
	case mutation && f&docFlagAdd != 0 && f&docFlagMkDoc != 0:
		return sdErr(statusEINVAL, "Request must not contain both add and mkdoc flags")
	case mutation && f&^(docFlagMkDoc|docFlagAdd) != 0:
		return sdErr(statusEINVAL, "doc flags 0x%02x are not implemented on mutations (only MkDoc and Add)", f&^(docFlagMkDoc|docFlagAdd))
	case !mutation && f&^docFlagAccessDeleted != 0:
		return sdErr(statusEINVAL, "doc flags 0x%02x are not implemented on lookups (only AccessDeleted)", f&^docFlagAccessDeleted)
	}
	return nil
}

// parseSpec decodes one operation spec: opcode, flags, path length (u16),
// for mutations the value length (u32), then path and value
// (docs/SubDocument.md "Operation Spec"); it returns the bytes it used.
func (c *kvConn) parseSpec(b []byte, mutation bool, docFlags byte) (sdSpec, int, *sdError) {
	hdr := 4
	if mutation {
		hdr = 8
	}
	if len(b) < hdr {
		return sdSpec{}, 0, sdErr(statusEINVAL, "spec truncated")
	}
	sp := sdSpec{op: b[0], flags: b[1]}
	pathLen, valLen := int(binary.BigEndian.Uint16(b[2:])), 0
	if mutation {
		valLen = int(binary.BigEndian.Uint32(b[4:]))
	}
	if hdr+pathLen+valLen > len(b) {
		return sdSpec{}, 0, sdErr(statusEINVAL, "spec path and value truncated")
	}
	sp.path = string(b[hdr : hdr+pathLen])
	sp.value = b[hdr+pathLen : hdr+pathLen+valLen]
	sp.xattr = sp.flags&pathFlagXattr != 0
	if mutation && docFlags&(docFlagMkDoc|docFlagAdd) != 0 {
		sp.flags |= pathFlagMkdirP // implied by MkDoc and Add
	}
	if err := c.checkSpec(&sp, mutation); err != nil {
		return sdSpec{}, 0, err
	}
	return sp, hdr + pathLen + valLen, nil
}

// checkSpec applies is_valid_multipath_spec's and validate_xattr_section's
// rules (subdocument_validators.cc) and parses the path.
func (c *kvConn) checkSpec(sp *sdSpec, mutation bool) *sdError {
	isMut, known := sdKnown[sp.op]
	switch {
	case !known, isMut != mutation:
		return sdErr(statusSubdocInvalidCombo, "spec opcode 0x%02x is not valid in this command", sp.op)
	case !sdImplemented[sp.op]:
		return sdErr(statusEINVAL, "sub-document op 0x%02x is not implemented", sp.op)
	}
	allowed := byte(pathFlagXattr | pathFlagBinaryValue | pathFlagExpandMacros)
	if mutation {
		allowed |= pathFlagMkdirP
	}
	wholeDoc := sp.op == sdGetDoc || sp.op == sdSetDoc
	switch {
	case sp.flags&^allowed != 0, wholeDoc && sp.flags&^pathFlagMkdirP != 0:
		return sdErr(statusEINVAL, "Request flags invalid")
	case !sp.xattr && sp.flags&(pathFlagExpandMacros|pathFlagBinaryValue) != 0:
		return sdErr(statusSubdocXattrInvalidFlags, "EXPAND_MACROS and BINARY_VALUE need the XATTR flag")
	case sp.flags&(pathFlagExpandMacros|pathFlagBinaryValue) != 0:
		return sdErr(statusEINVAL, "macro expansion and binary xattr values are not implemented")
	case wholeDoc && sp.path != "":
		return sdErr(statusEINVAL, "Request must not include path for wholedoc operations")
	case !wholeDoc && !sp.xattr && sp.path == "":
		return sdErr(statusEINVAL, "Request must include path")
	case len(sp.path) > maxPathLen:
		return sdErr(statusEINVAL, "Request path length exceeds maximum")
	case mutation && sp.op != sdDelete && len(sp.value) == 0:
		return sdErr(statusEINVAL, "Request must include value")
	case mutation && sp.op == sdDelete && len(sp.value) != 0:
		return sdErr(statusEINVAL, "Request must not include value")
	}
	if !sp.xattr {
		sp.comps, sp.pathErr = parsePath(sp.path)
		return nil
	}
	if !c.features[featXattr] {
		return sdErr(statusNotSupported, "Connection not XATTR enabled")
	}
	key, ok := xattrKey(sp.path)
	switch {
	case !ok:
		return sdErr(statusXattrEINVAL, "Request XATTR key invalid")
	case key[0] == '$' && mutation:
		return sdErr(statusSubdocXattrCantModifyVattr, "virtual xattrs can't be modified")
	case key[0] == '$':
		return sdErr(statusEINVAL, "virtual xattrs (%s) are not implemented", key)
	}
	rest := sp.path[len(key):]
	if strings.HasPrefix(rest, ".") {
		if rest = rest[1:]; rest == "" {
			sp.pathErr = statusSubdocPathEINVAL
			return nil
		}
	}
	comps, st := parsePath(rest)
	sp.comps, sp.pathErr = append([]pathComp{{key: key}}, comps...), st
	return nil
}

// xattrKey is the X-Key an xattr path starts with: up to its first . or
// [ (no backtick escaping), non-empty and shorter than 16 bytes, valid
// UTF-8 without NUL, not starting with punctuation or a control character
// but for _ (system) and $ (virtual), which need one more character
// (xattr/key_validator.cc is_valid_xattr_key; docs/ExtendedAttributes.md).
func xattrKey(path string) (string, bool) {
	if !utf8.ValidString(path) || strings.IndexByte(path, 0) >= 0 {
		return "", false
	}
	key := path
	if end := strings.IndexAny(path, ".["); end >= 0 {
		key = path[:end]
	}
	if key == "" || len(key) > maxXattrKeyLen {
		return "", false
	}
	first := key[0]
	special := first == '_' || first == '$'
	if special && len(key) == 1 {
		return "", false
	}
	punct := first < 0x80 && (first < 0x20 || first == 0x7f || strings.IndexByte("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", first) >= 0)
	if punct && !special {
		return "", false
	}
	return key, true
}

// lookupIn runs SUBDOC_MULTI_LOOKUP: every spec gets a result (status
// u16, value length u32, value), the overall status is SUCCESS or
// SUBDOC_MULTI_PATH_FAILURE, their _DELETED forms on a tombstone read with
// AccessDeleted (subdocument.cc send_multi_lookup_response).
func (c *kvConn) lookupIn(p *packet, req *sdRequest) {
	c.docOp(p, func(b *bucket, vb *vbucket, _ *collDef, k docKey) {
		it := c.s.liveItemLocked(b, vb, k)
		if t := vb.items[k]; it == nil && t != nil && t.deleted && req.docFlags&docFlagAccessDeleted != 0 {
			it = t
		}
		if it == nil {
			c.fail(p, statusKeyENOENT, "")
			return
		}
		var out []byte
		failed := false
		for _, sp := range req.specs {
			v, st := lookupSpec(it, sp)
			failed = failed || st != statusSuccess
			out = binary.BigEndian.AppendUint16(out, st)
			out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
			out = append(out, v...)
		}
		status := map[[2]bool]uint16{
			{false, false}: statusSuccess, {true, false}: statusSubdocMultiPathFailure,
			{false, true}: statusSubdocSuccessDeleted, {true, true}: statusSubdocMultiFailureDeleted,
		}[[2]bool{failed, it.deleted}]
		c.reply(p, status, nil, out, it.cas, 0)
	})
}

// lookupSpec is one lookup's status and value. The whole-document GET
// returns the body whatever it holds, PATH_ENOENT when it is empty;
// sub-JSON specs on a body that is not JSON are DOC_NOTJSON
// (subdocument_context.cc operate_wholedoc, operate_single_doc).
func lookupSpec(it *item, sp sdSpec) ([]byte, uint16) {
	if sp.op == sdGetDoc {
		if len(it.value) == 0 {
			return nil, statusSubdocPathENOENT
		}
		return it.value, statusSuccess
	}
	doc := it.value
	if sp.xattr {
		doc = xattrsObject(it.xattrs)
	} else if it.datatype&datatypeJSON == 0 {
		return nil, statusSubdocDocNotJSON // before the path is parsed
	}
	if sp.pathErr != 0 {
		return nil, sp.pathErr
	}
	v, st := jsonGet(doc, sp.comps)
	switch {
	case st != statusSuccess:
		return nil, st
	case sp.op == sdExists:
		return nil, statusSuccess
	case sp.op == sdGetCount:
		return jsonCount(v)
	}
	return v, statusSuccess
}

// mutateIn runs SUBDOC_MULTI_MUTATION: all specs or none, in one new
// version of the document (new CAS and seqno), with the memcached
// semantics its doc flags choose (none: REPLACE, MkDoc: SET, Add: ADD;
// docs/SubDocument.md "Mutation semantics") and the durability and
// preserve-TTL frames as SET honours them.
func (c *kvConn) mutateIn(p *packet, req *sdRequest) {
	c.docOp(p, func(b *bucket, vb *vbucket, coll *collDef, k docKey) {
		cur := c.s.liveItemLocked(b, vb, k)
		switch {
		case cur != nil && req.docFlags&docFlagAdd != 0:
			c.fail(p, statusKeyEEXISTS, "document exists")
			return
		case cur == nil && (req.docFlags&(docFlagMkDoc|docFlagAdd) == 0 || p.cas != 0):
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
		nw, idx, st := applyMutations(cur, req.specs)
		if st != statusSuccess {
			// The first failing spec's index and status only
			// (send_multi_mutation_response).
			c.reply(p, statusSubdocMultiPathFailure, nil, binary.BigEndian.AppendUint16([]byte{byte(idx)}, st), 0, 0)
			return
		}
		nw.docKey = k
		nw.expiry = c.s.expiryFor(b, coll, req.expiry, fr, cur)
		switch {
		case req.userFlags != nil:
			nw.flags = *req.userFlags
		case cur != nil:
			nw.flags = cur.flags // kept unless the request sets them (subdocument.cc allocate_document)
		}
		if c.abortedDurably(p, fr) {
			return
		}
		c.s.storeLocked(b, vb, nw)
		if c.madeDurably(p, fr, vb, nw) {
			// No implemented mutation returns a value (only COUNTER does).
			c.reply(p, statusSuccess, c.mutationExtras(vb, nw), nil, nw.cas, 0)
		}
	})
}

// applyMutations runs the specs on cur (nil: a document to create) as
// kv_engine does: the xattr phase on the object of all xattrs, then the
// body phase; a new document starts as {} when a sub-JSON spec needs a
// root (subdocument.cc fetch_input_document). It returns the new item's
// body and xattrs, or the index and status of the first failing spec.
func applyMutations(cur *item, specs []sdSpec) (*item, int, uint16) {
	var xs []xattr
	var body, xdoc []byte
	if cur != nil {
		xs, body = cur.xattrs, cur.value
	} else if slices.ContainsFunc(specs, func(sp sdSpec) bool { return sp.op != sdSetDoc }) {
		body = []byte("{}")
	}
	for i, sp := range specs {
		if sp.op != sdSetDoc && sp.pathErr != 0 {
			return nil, i, sp.pathErr
		}
		m := pathMutation{op: sp.op, value: sp.value, mkdir: sp.flags&pathFlagMkdirP != 0}
		var st uint16
		switch {
		case sp.xattr:
			if xdoc == nil {
				xdoc = xattrsObject(xs)
			}
			xdoc, st = jsonMutate(xdoc, sp.comps, m)
		case sp.op == sdSetDoc:
			body = sp.value
		case bodyDatatype(body) != datatypeJSON:
			st = statusSubdocDocNotJSON
		default:
			body, st = jsonMutate(body, sp.comps, m)
		}
		if st != statusSuccess {
			return nil, i, st
		}
	}
	if xdoc != nil {
		if xs = xattrsOf(xdoc); len(xs) == 0 {
			xs = nil
		}
	}
	return &item{value: bytes.Clone(body), xattrs: xs, datatype: bodyDatatype(body)}, 0, statusSuccess
}
