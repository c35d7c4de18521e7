package cbtest

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// Sub-document paths over raw JSON, as kv_engine's subjson reads them
// (docs/SubDocument.md "Path"): components separated by dots, an array
// index in brackets right after its array ([-1] is the last element),
// backticks around a component to escape . [ ] ("``" is a literal
// backtick). Values stay raw JSON: a lookup returns the matched bytes as
// stored, a mutation re-encodes only the containers along its path.

// Path limits (docs/SubDocument.md "Limits").
const (
	maxPathLen        = 1024
	maxPathComponents = 32
)

type pathComp struct {
	key     string
	index   int // -1: the last element
	isIndex bool
}

// parsePath parses a body path, or what follows an X-Key; it returns a
// sub-document status (PATH_EINVAL, PATH_E2BIG) when it cannot.
func parsePath(p string) ([]pathComp, uint16) {
	var out []pathComp
	for i := 0; i < len(p); {
		if p[i] == '[' {
			end := strings.IndexByte(p[i:], ']')
			if end < 0 {
				return nil, statusSubdocPathEINVAL
			}
			n, err := strconv.Atoi(p[i+1 : i+end])
			if err != nil || n < -1 {
				return nil, statusSubdocPathEINVAL
			}
			out = append(out, pathComp{index: n, isIndex: true})
			i += end + 1
		} else {
			key, n, ok := readPathKey(p[i:])
			if !ok {
				return nil, statusSubdocPathEINVAL
			}
			out = append(out, pathComp{key: key})
			i += n
		}
		if i < len(p) && p[i] == '.' {
			if i++; i == len(p) {
				return nil, statusSubdocPathEINVAL // a trailing dot
			}
		} else if i < len(p) && p[i] != '[' {
			return nil, statusSubdocPathEINVAL
		}
	}
	if len(out) > maxPathComponents {
		return nil, statusSubdocPathE2BIG
	}
	return out, 0
}

// readPathKey reads one dictionary key up to the next unescaped . or [.
func readPathKey(p string) (string, int, bool) {
	var b strings.Builder
	i := 0
	for i < len(p) && p[i] != '.' && p[i] != '[' {
		switch p[i] {
		case ']':
			return "", 0, false
		case '`':
			i++
			for {
				if i >= len(p) {
					return "", 0, false // unterminated
				}
				if p[i] == '`' && i+1 < len(p) && p[i+1] == '`' {
					b.WriteByte('`')
					i += 2
					continue
				}
				if p[i] == '`' {
					i++
					break
				}
				b.WriteByte(p[i])
				i++
			}
		default:
			b.WriteByte(p[i])
			i++
		}
	}
	return b.String(), i, i > 0
}

// jfield is one member of a JSON object, its value raw.
type jfield struct {
	key string
	raw []byte
}

// objectFields splits a JSON object into its members, in order; ok is
// false when doc is not an object.
func objectFields(doc []byte) ([]jfield, bool) {
	doc = bytes.TrimSpace(doc)
	if len(doc) == 0 || doc[0] != '{' {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	if _, err := dec.Token(); err != nil {
		return nil, false
	}
	var out []jfield
	for dec.More() {
		t, err := dec.Token()
		k, isKey := t.(string)
		if err != nil || !isKey {
			return nil, false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, false
		}
		out = append(out, jfield{k, raw})
	}
	return out, true
}

// arrayElems splits a JSON array into its elements; ok is false when doc
// is not an array.
// elemAt is doc's elements and the position index names in them (-1:
// the last), or the status of a path that names none.
func elemAt(doc []byte, index int) (es [][]byte, i int, status uint16) {
	es, ok := arrayElems(doc)
	if !ok {
		return nil, 0, statusSubdocPathMismatch
	}
	i = index
	if i == -1 {
		i = len(es) - 1
	}
	if i < 0 || i >= len(es) {
		return nil, 0, statusSubdocPathENOENT
	}
	return es, i, 0
}

func arrayElems(doc []byte) ([][]byte, bool) {
	doc = bytes.TrimSpace(doc)
	if len(doc) == 0 || doc[0] != '[' {
		return nil, false
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(doc, &raws); err != nil {
		return nil, false
	}
	out := make([][]byte, len(raws))
	for i, r := range raws {
		out[i] = r
	}
	return out, true
}

func encodeObject(fs []jfield) []byte {
	out := []byte{'{'}
	for i, f := range fs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, quoteJSON(f.key)...)
		out = append(out, ':')
		out = append(out, f.raw...)
	}
	return append(out, '}')
}

func encodeArray(es [][]byte) []byte {
	return append(append([]byte{'['}, bytes.Join(es, []byte{','})...), ']')
}

// quoteJSON is s as a JSON string, without Go's HTML escaping.
func quoteJSON(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimRight(b.Bytes(), "\n")
}

// childOf is the value c names in doc.
func childOf(doc []byte, c pathComp) ([]byte, uint16) {
	if c.isIndex {
		es, i, st := elemAt(doc, c.index)
		if st != 0 {
			return nil, st
		}
		return es[i], 0
	}
	fs, ok := objectFields(doc)
	if !ok {
		return nil, statusSubdocPathMismatch
	}
	for _, f := range fs {
		if f.key == c.key {
			return f.raw, 0
		}
	}
	return nil, statusSubdocPathENOENT
}

// jsonGet is the raw value at path in doc (SUBDOC_GET).
func jsonGet(doc []byte, path []pathComp) ([]byte, uint16) {
	for _, c := range path {
		child, st := childOf(doc, c)
		if st != 0 {
			return nil, st
		}
		doc = child
	}
	return bytes.TrimSpace(doc), 0
}

// jsonCount is SUBDOC_GET_COUNT: the members of an object or elements of
// an array, as an ASCII number (docs/SubDocument.md "CMD_GET_COUNT").
func jsonCount(v []byte) ([]byte, uint16) {
	if fs, ok := objectFields(v); ok {
		return strconv.AppendInt(nil, int64(len(fs)), 10), 0
	}
	if es, ok := arrayElems(v); ok {
		return strconv.AppendInt(nil, int64(len(es)), 10), 0
	}
	return nil, statusSubdocPathMismatch
}

// pathMutation is one sub-JSON mutation: the spec opcode (DictAdd,
// DictUpsert, Replace or Delete), its value and whether missing
// intermediate dictionaries are created (MKDIR_P, implied by MkDoc and
// Add).
type pathMutation struct {
	op    byte
	value []byte
	mkdir bool
}

// jsonMutate applies m at path in doc and returns the new doc, or a
// sub-document status (docs/SubDocument.md "Command Listings").
func jsonMutate(doc []byte, path []pathComp, m pathMutation) ([]byte, uint16) {
	if len(path) == 0 {
		return nil, statusSubdocPathEINVAL // a dictionary op needs a key
	}
	c := path[0]
	if len(path) == 1 {
		return mutateLast(doc, c, m)
	}
	child, st := childOf(doc, c)
	dictOp := m.op == sdDictAdd || m.op == sdDictUpsert
	if st == statusSubdocPathENOENT && m.mkdir && dictOp && !c.isIndex && !path[1].isIndex {
		// MKDIR_P creates dictionaries only, never array elements.
		child, st = []byte("{}"), 0
	}
	if st != 0 {
		return nil, st
	}
	nc, st := jsonMutate(child, path[1:], m)
	if st != 0 {
		return nil, st
	}
	return setChild(doc, c, nc), 0
}

// setChild replaces (or, in an object, adds) the value c names; doc is
// known to be the right kind of container.
func setChild(doc []byte, c pathComp, v []byte) []byte {
	if c.isIndex {
		es, _ := arrayElems(doc)
		i := c.index
		if i == -1 {
			i = len(es) - 1
		}
		es[i] = v
		return encodeArray(es)
	}
	fs, _ := objectFields(doc)
	for i := range fs {
		if fs[i].key == c.key {
			fs[i].raw = v
			return encodeObject(fs)
		}
	}
	return encodeObject(append(fs, jfield{c.key, v}))
}

// mutateLast applies m to the member or element c of doc.
func mutateLast(doc []byte, c pathComp, m pathMutation) ([]byte, uint16) {
	if m.op != sdDelete && !json.Valid(m.value) {
		return nil, statusSubdocValueCantInsert
	}
	v := bytes.TrimSpace(m.value)
	if c.isIndex {
		if m.op == sdDictAdd || m.op == sdDictUpsert {
			return nil, statusSubdocPathEINVAL // the path must end in a key
		}
		es, i, st := elemAt(doc, c.index)
		if st != 0 {
			return nil, st
		}
		if m.op == sdDelete {
			return encodeArray(append(es[:i:i], es[i+1:]...)), 0
		}
		es[i] = v
		return encodeArray(es), 0
	}
	fs, ok := objectFields(doc)
	if !ok {
		return nil, statusSubdocPathMismatch
	}
	at := -1
	for i, f := range fs {
		if f.key == c.key {
			at = i
			break
		}
	}
	switch {
	case at >= 0 && m.op == sdDictAdd:
		return nil, statusSubdocPathEEXISTS
	case at < 0 && (m.op == sdReplace || m.op == sdDelete):
		return nil, statusSubdocPathENOENT
	case at < 0:
		return encodeObject(append(fs, jfield{c.key, v})), 0
	case m.op == sdDelete:
		return encodeObject(append(fs[:at:at], fs[at+1:]...)), 0
	}
	fs[at].raw = v
	return encodeObject(fs), 0
}
