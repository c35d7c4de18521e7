package cbtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The query service on each node's n1ql port. Statements are recognised
// by shape (the table below) and run against the in-memory data under
// the server lock, so a statement sees every KV write acknowledged before
// it (request_plus holds trivially) and its own writes are atomic.

// queryError is a query service error: code and message as in the real
// service's errors array.
type queryError struct {
	code   int
	msg    string
	reason *object // the error's cause, when the service gives one
}

func (e *queryError) Error() string { return fmt.Sprintf("%d: %s", e.code, e.msg) }

// object is the error as the errors array holds it.
func (e *queryError) object() *object {
	o := op("code", float64(e.code), "msg", e.msg)
	if e.reason != nil {
		o.set("retry", false)
		o.set("reason", e.reason)
	}
	return o
}

// dmlError is the error of an UPDATE whose write of one document failed
// because another client wrote it (its CAS changed) or removed it between
// the statement's read and its write: the query service's MOP_UPDATE
// writes each document under the CAS it read, and on KEY_EEXISTS or
// KEY_ENOENT reports 12009 with the cause (couchbase/query
// datastore/couchbase singleMutationOp, errors.NewCbDMLError) and goes on
// with the other documents.
func dmlError(keyspace, key string, removed bool) *queryError {
	msg := "Failed to perform UPDATE on key " + key
	if removed {
		return &queryError{code: 12009, msg: "DML Error, possible causes include concurrent modification. " + msg,
			reason: op("_level", "exception", "code", 17014.0, "key", "datastore.couchbase.keynotfound",
				"message", "Key not found: "+key)}
	}
	return &queryError{code: 12009, msg: "DML Error, possible causes include CAS mismatch. " + msg,
		reason: op("_level", "exception", "code", 12033.0, "key", "datastore.couchbase.CAS_mismatch",
			"message", "CAS mismatch", "keyspace", keyspace, "document_key", key)}
}

func qerr(code int, format string, args ...any) *queryError {
	return &queryError{code: code, msg: fmt.Sprintf(format, args...)}
}

// Statement kinds.

type ksRef struct {
	parts  []string // bucket[.scope.collection] or, with a query context, [scope.]collection
	text   string
	system bool // system:<parts[0]>, a catalog of the query service
}

type projTerm struct {
	e    expr
	as   string
	star bool // alias.* or *
}

type orderTerm struct {
	e    expr
	desc bool
}

type selectStmt struct {
	text     string
	raw      bool
	distinct bool
	proj     []projTerm
	ks       *ksRef
	alias    string
	where    expr
	group    []expr
	having   expr
	order    []orderTerm
	limit    expr
	offset   expr
}

type setTerm struct {
	path expr
	val  expr
}

type returning struct {
	raw  bool
	proj []projTerm
}

type updateStmt struct {
	text   string
	ks     *ksRef
	alias  string
	sets   []setTerm
	unsets []expr
	where  expr
	limit  expr
	ret    *returning
}

type deleteStmt struct {
	text  string
	ks    *ksRef
	alias string
	where expr
	limit expr
	ret   *returning
}

type createIndexStmt struct {
	name        string
	primary     bool
	ifNotExists bool
	ks          *ksRef
	keys        []expr
	where       expr
	with        string
}

type buildIndexStmt struct {
	ks    *ksRef
	names []string
}

type dropIndexStmt struct {
	name     string
	primary  bool
	ifExists bool
	ks       *ksRef
}

type explainStmt struct {
	inner any
	text  string
}

// The statement shapes, tried in order. Each pattern is matched against
// the statement with string literals, quoted identifiers and everything
// inside parentheses masked out (so keywords inside subqueries or strings
// never match), case-insensitively; the named groups are cut from the
// original text and handed to build. KS is a keyspace path, ID an
// identifier. To support a new statement, add a row.
type shape struct {
	name  string
	re    string
	build func(c *compiler, g map[string]string) (any, error)
}

var shapes []shape

func shapeTable() []shape {
	return []shape{
		{"explain", `^EXPLAIN\s+(?P<stmt>.+?)$`, buildExplain},
		{"create-primary-index", `^CREATE\s+PRIMARY\s+INDEX(?P<ine>\s+IF\s+NOT\s+EXISTS)?(?:\s+(?P<name>ID))?(?P<ine2>\s+IF\s+NOT\s+EXISTS)?\s+ON\s+(?P<ks>KS)(?:\s+USING\s+GSI)?(?:\s+WITH\s+(?P<with>.+?))?$`, buildCreateIndex},
		{"create-index", `^CREATE\s+INDEX(?P<ine>\s+IF\s+NOT\s+EXISTS)?\s+(?P<name>ID)(?P<ine2>\s+IF\s+NOT\s+EXISTS)?\s+ON\s+(?P<ks>KS)\s*\((?P<keys>[^)]*)\)(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+USING\s+GSI)?(?:\s+WITH\s+(?P<with>.+?))?$`, buildCreateIndex},
		{"build-index", `^BUILD\s+INDEX\s+ON\s+(?P<ks>KS)\s*\((?P<names>[^)]*)\)(?:\s+USING\s+GSI)?$`, buildBuildIndex},
		{"drop-primary-index", `^DROP\s+PRIMARY\s+INDEX(?P<ie>\s+IF\s+EXISTS)?\s+ON\s+(?P<ks>KS)(?:\s+USING\s+GSI)?$`, buildDropIndex},
		{"drop-index", `^DROP\s+INDEX\s+(?P<name>ID)(?P<ie>\s+IF\s+EXISTS)?\s+ON\s+(?P<ks>KS)(?:\s+USING\s+GSI)?$`, buildDropIndex},
		{"update", `^UPDATE\s+(?P<ks>KS)(?:\s+(?:AS\s+)?(?P<alias>ID))?\s+SET\s+(?P<set>.+?)(?:\s+UNSET\s+(?P<unset>.+?))?(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+LIMIT\s+(?P<limit>.+?))?(?:\s+RETURNING\s+(?P<ret>.+?))?$`, buildUpdate},
		{"delete", `^DELETE\s+FROM\s+(?P<ks>KS)(?:\s+(?:AS\s+)?(?P<alias>ID))?(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+LIMIT\s+(?P<limit>.+?))?(?:\s+RETURNING\s+(?P<ret>.+?))?$`, buildDelete},
		{"select-from", `^SELECT\s+(?P<distinct>DISTINCT\s+)?(?P<raw>(?:RAW|ELEMENT|VALUE)\s+)?(?P<proj>.+?)\s+FROM\s+(?P<ks>KS)(?:\s+(?:AS\s+)?(?P<alias>ID))?(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+GROUP\s+BY\s+(?P<group>.+?))?(?:\s+HAVING\s+(?P<having>.+?))?(?:\s+ORDER\s+BY\s+(?P<order>.+?))?(?:\s+LIMIT\s+(?P<limit>.+?))?(?:\s+OFFSET\s+(?P<offset>.+?))?$`, buildSelect},
		{"select", `^SELECT\s+(?P<distinct>DISTINCT\s+)?(?P<raw>(?:RAW|ELEMENT|VALUE)\s+)?(?P<proj>.+?)$`, buildSelect},
	}
}

var compiledShapes []*regexp.Regexp

var (
	prepareRe     = regexp.MustCompile(`(?is)^\s*PREPARE\s+(?:FORCE\s+)?(.+)$`)
	prepareNameRe = regexp.MustCompile(`(?is)^(` + idPat + `)\s+(?:FROM|AS)\s+(.+)$`)
	explainRe     = regexp.MustCompile(`(?is)^\s*EXPLAIN\s`)
)

const (
	idPat = "(?:`[^`]*`|[A-Za-z_][A-Za-z0-9_]*)"
	ksPat = `(?:(?:default|system):)?` + idPat + `(?:\.` + idPat + `){0,2}`
)

func init() {
	shapes = shapeTable()
	for _, sh := range shapes {
		pat := strings.NewReplacer("KS", ksPat, "ID", idPat).Replace(sh.re)
		// Trailing whitespace and a semicolon are allowed everywhere.
		pat = strings.TrimSuffix(pat, "$") + `\s*;?\s*$`
		compiledShapes = append(compiledShapes, regexp.MustCompile(`(?is)`+pat))
	}
}

// stripComments blanks out comments, keeping every offset.
func stripComments(src string) string {
	b := []byte(src)
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"' || c == '\'' || c == '`':
			_, n, err := unquote(string(b[i:]))
			if err != nil {
				return string(b)
			}
			i += n - 1
		case c == '/' && i+1 < len(b) && b[i+1] == '*':
			j := bytes.Index(b[i+2:], []byte("*/"))
			end := len(b)
			if j >= 0 {
				end = i + 2 + j + 2
			}
			for k := i; k < end; k++ {
				b[k] = ' '
			}
			i = end - 1
		case c == '-' && i+1 < len(b) && b[i+1] == '-':
			for ; i < len(b) && b[i] != '\n'; i++ {
				b[i] = ' '
			}
		}
	}
	return string(b)
}

// mask hides the contents of quotes and of parentheses (keeping the
// outermost parentheses and all offsets).
func mask(src string) string {
	b := []byte(src)
	depth := 0
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			_, n, err := unquote(src[i:])
			if err != nil {
				n = len(b) - i
			}
			for j := i + 1; j < i+n-1; j++ {
				b[j] = '_'
			}
			if depth > 0 {
				b[i], b[i+n-1] = '_', '_'
			}
			i += n - 1
		case c == '(':
			if depth > 0 {
				b[i] = '_'
			}
			depth++
		case c == ')':
			depth--
			if depth > 0 {
				b[i] = '_'
			}
		default:
			if depth > 0 {
				b[i] = '_'
			}
		}
	}
	return string(b)
}

// compiler compiles statements; qctx is the request's query_context.
type compiler struct {
	qctx   *ksRef
	params map[string]bool // parameters the statement uses
}

func (c *compiler) compile(text string) (any, error) {
	clean := stripComments(text)
	masked := mask(clean)
	for i, re := range compiledShapes {
		m := re.FindStringSubmatchIndex(masked)
		if m == nil {
			continue
		}
		g := map[string]string{}
		for j, name := range re.SubexpNames() {
			if name != "" && m[2*j] >= 0 {
				g[name] = strings.TrimSpace(clean[m[2*j]:m[2*j+1]])
			}
		}
		if a := g["alias"]; a != "" && isReserved(a) {
			continue
		}
		g["text"] = strings.TrimSpace(text)
		st, err := shapes[i].build(c, g)
		if err != nil {
			var qe *queryError
			if errors.As(err, &qe) {
				return nil, err
			}
			return nil, qerr(3000, "syntax error in %s statement: %v - in: %s", shapes[i].name, err, strings.TrimSpace(text))
		}
		return st, nil
	}
	return nil, qerr(3000, "statement not supported by the cbtest query service (see the shapes in cbtest's doc.go): %s", strings.TrimSpace(text))
}

func (c *compiler) sub(text string) (*selectStmt, error) {
	st, err := c.compile(text)
	if err != nil {
		return nil, err
	}
	sel, ok := st.(*selectStmt)
	if !ok {
		return nil, fmt.Errorf("only SELECT is supported as a subquery")
	}
	return sel, nil
}

func (c *compiler) expr(src string) (expr, error) {
	if src == "" {
		return nil, nil
	}
	return parseExpr(src, c.sub, c.params)
}

func parseKS(text string) (*ksRef, error) {
	toks, err := lex(text)
	if err != nil {
		return nil, err
	}
	k := &ksRef{text: text}
	i := 0
	if len(toks) > 2 && toks[0].kind == tIdent && toks[1].kind == tOp && toks[1].text == ":" {
		switch {
		case strings.EqualFold(toks[0].text, "default"):
		case strings.EqualFold(toks[0].text, "system"):
			k.system = true
		default:
			return nil, fmt.Errorf("bad keyspace %q", text)
		}
		i = 2
	}
	for ; i < len(toks) && toks[i].kind != tEOF; i++ {
		t := toks[i]
		if t.kind != tIdent && t.kind != tQuoted {
			return nil, fmt.Errorf("bad keyspace %q", text)
		}
		k.parts = append(k.parts, t.text)
		if i+1 < len(toks) && toks[i+1].kind == tOp && toks[i+1].text == "." {
			i++
		}
	}
	if len(k.parts) == 0 || len(k.parts) > 3 || k.system && (len(k.parts) != 1 || !strings.EqualFold(k.parts[0], "indexes")) {
		return nil, fmt.Errorf("bad keyspace %q (of the system keyspaces, only system:indexes is served)", text)
	}
	return k, nil
}

func unquoteID(s string) string {
	if strings.HasPrefix(s, "`") {
		if u, _, err := unquote(s); err == nil {
			return u
		}
	}
	return s
}

func parseProjection(c *compiler, src string) ([]projTerm, error) {
	return parseList(src, c.sub, c.params, func(p *parser) (projTerm, error) {
		if p.acceptOp("*") {
			return projTerm{star: true}, nil
		}
		e, err := p.expr()
		if err != nil {
			return projTerm{}, err
		}
		if p.acceptOp(".") {
			if err := p.expectOp("*"); err != nil {
				return projTerm{}, err
			}
			return projTerm{e: e, star: true}, nil
		}
		t := projTerm{e: e}
		if p.acceptKw("AS") {
			n := p.next()
			if n.kind != tIdent && n.kind != tQuoted {
				return projTerm{}, p.errf("expected a name after AS")
			}
			t.as = n.text
		} else if n := p.peek(); n.kind == tQuoted || n.kind == tIdent && !isReserved(n.text) {
			p.pos++
			t.as = n.text
		}
		return t, nil
	})
}

func buildSelect(c *compiler, g map[string]string) (any, error) {
	q := &selectStmt{text: g["text"], raw: g["raw"] != "", distinct: g["distinct"] != ""}
	var err error
	if q.proj, err = parseProjection(c, g["proj"]); err != nil {
		return nil, err
	}
	if q.raw && (len(q.proj) != 1 || q.proj[0].star || q.proj[0].as != "") {
		return nil, fmt.Errorf("RAW takes one expression")
	}
	if g["ks"] != "" {
		if q.ks, err = parseKS(g["ks"]); err != nil {
			return nil, err
		}
		q.alias = unquoteID(g["alias"])
		if q.alias == "" {
			q.alias = q.ks.parts[len(q.ks.parts)-1]
		}
	}
	if q.where, err = c.expr(g["where"]); err != nil {
		return nil, err
	}
	if g["group"] != "" {
		if q.group, err = parseList(g["group"], c.sub, c.params, func(p *parser) (expr, error) { return p.expr() }); err != nil {
			return nil, err
		}
	}
	if q.having, err = c.expr(g["having"]); err != nil {
		return nil, err
	}
	if g["order"] != "" {
		q.order, err = parseList(g["order"], c.sub, c.params, func(p *parser) (orderTerm, error) {
			e, err := p.expr()
			if err != nil {
				return orderTerm{}, err
			}
			t := orderTerm{e: e}
			if p.acceptKw("DESC") {
				t.desc = true
			} else {
				p.acceptKw("ASC")
			}
			return t, nil
		})
		if err != nil {
			return nil, err
		}
	}
	if q.limit, err = c.expr(g["limit"]); err != nil {
		return nil, err
	}
	if q.offset, err = c.expr(g["offset"]); err != nil {
		return nil, err
	}
	return q, nil
}

func parseReturning(c *compiler, src string) (*returning, error) {
	if src == "" {
		return nil, nil
	}
	r := &returning{}
	m := regexp.MustCompile(`(?is)^(RAW|ELEMENT|VALUE)\s+`).FindStringIndex(src)
	if m != nil {
		r.raw = true
		src = src[m[1]:]
	}
	var err error
	if r.proj, err = parseProjection(c, src); err != nil {
		return nil, err
	}
	if r.raw && (len(r.proj) != 1 || r.proj[0].star) {
		return nil, fmt.Errorf("RETURNING RAW takes one expression")
	}
	return r, nil
}

func buildUpdate(c *compiler, g map[string]string) (any, error) {
	q := &updateStmt{text: g["text"], alias: unquoteID(g["alias"])}
	var err error
	if q.ks, err = parseKS(g["ks"]); err != nil {
		return nil, err
	}
	if q.alias == "" {
		q.alias = q.ks.parts[len(q.ks.parts)-1]
	}
	q.sets, err = parseList(g["set"], c.sub, c.params, func(p *parser) (setTerm, error) {
		path, err := p.postfix()
		if err != nil {
			return setTerm{}, err
		}
		if err := p.expectOp("="); err != nil {
			return setTerm{}, err
		}
		v, err := p.expr()
		return setTerm{path, v}, err
	})
	if err != nil {
		return nil, err
	}
	if g["unset"] != "" {
		if q.unsets, err = parseList(g["unset"], c.sub, c.params, func(p *parser) (expr, error) { return p.postfix() }); err != nil {
			return nil, err
		}
	}
	if q.where, err = c.expr(g["where"]); err != nil {
		return nil, err
	}
	if q.limit, err = c.expr(g["limit"]); err != nil {
		return nil, err
	}
	if q.ret, err = parseReturning(c, g["ret"]); err != nil {
		return nil, err
	}
	return q, nil
}

func buildDelete(c *compiler, g map[string]string) (any, error) {
	q := &deleteStmt{text: g["text"], alias: unquoteID(g["alias"])}
	var err error
	if q.ks, err = parseKS(g["ks"]); err != nil {
		return nil, err
	}
	if q.alias == "" {
		q.alias = q.ks.parts[len(q.ks.parts)-1]
	}
	if q.where, err = c.expr(g["where"]); err != nil {
		return nil, err
	}
	if q.limit, err = c.expr(g["limit"]); err != nil {
		return nil, err
	}
	if q.ret, err = parseReturning(c, g["ret"]); err != nil {
		return nil, err
	}
	return q, nil
}

func buildCreateIndex(c *compiler, g map[string]string) (any, error) {
	q := &createIndexStmt{name: unquoteID(g["name"]), ifNotExists: g["ine"] != "" || g["ine2"] != "", with: g["with"]}
	_, hasKeys := g["keys"]
	q.primary = !hasKeys
	if q.primary && q.name == "" {
		q.name = "#primary"
	}
	var err error
	if q.ks, err = parseKS(g["ks"]); err != nil {
		return nil, err
	}
	if hasKeys {
		q.keys, err = parseList(g["keys"], nil, nil, func(p *parser) (expr, error) {
			e, err := p.expr()
			if err == nil && !p.acceptKw("ASC") {
				p.acceptKw("DESC")
			}
			return e, err
		})
		if err != nil {
			return nil, err
		}
	}
	if q.where, err = c.expr(g["where"]); err != nil {
		return nil, err
	}
	return q, nil
}

func buildBuildIndex(c *compiler, g map[string]string) (any, error) {
	q := &buildIndexStmt{}
	var err error
	if q.ks, err = parseKS(g["ks"]); err != nil {
		return nil, err
	}
	for _, n := range strings.Split(g["names"], ",") {
		if n = unquoteID(strings.TrimSpace(n)); n == "" {
			return nil, fmt.Errorf("BUILD INDEX names no index")
		}
		q.names = append(q.names, n)
	}
	return q, nil
}

func buildDropIndex(c *compiler, g map[string]string) (any, error) {
	q := &dropIndexStmt{name: unquoteID(g["name"]), ifExists: g["ie"] != ""}
	if q.name == "" {
		q.primary, q.name = true, "#primary"
	}
	var err error
	q.ks, err = parseKS(g["ks"])
	return q, err
}

func buildExplain(c *compiler, g map[string]string) (any, error) {
	inner, err := c.compile(g["stmt"])
	if err != nil {
		return nil, err
	}
	switch inner.(type) {
	case *selectStmt, *updateStmt, *deleteStmt:
	default:
		return nil, qerr(3000, "EXPLAIN of this statement is not supported by the cbtest query service: %s", g["stmt"])
	}
	return &explainStmt{inner: inner, text: g["stmt"]}, nil
}

// Indexes and prepared statements.

type indexDef struct {
	name    string
	primary bool
	state   string // indexDeferred, indexBuilding or indexOnline, as system:indexes says
	keyTxt  []string
	replica int      // num_replica asked for
	keys    []string // canonical key texts
	cond    []string // canonical conjuncts of the WHERE
	condTxt string
}

type preparedStmt struct {
	text string
	qctx string
}

// Index states, as system:indexes says them. Only an online index is
// read by a statement.
const (
	indexDeferred = "deferred"
	indexBuilding = "building"
	indexOnline   = "online"
)

type queryState struct {
	indexes map[string][]*indexDef // by bucket.scope.collection
	// holdBuilds leaves the indexes a BUILD INDEX starts building until
	// HoldIndexBuilds' release, as a build over a large collection does.
	holdBuilds bool
	stateReads int // IndexStateReads
	prepared   map[string]preparedStmt
	reqSeq     atomic.Uint64
}

func (q *queryState) init() {
	q.indexes = map[string][]*indexDef{}
	q.prepared = map[string]preparedStmt{}
}

func ksID(bucket, scope, coll string) string { return bucket + "." + scope + "." + coll }

func (s *Server) dropIndexesLocked(bucket, scope, coll string) {
	delete(s.query.indexes, ksID(bucket, scope, coll))
}

func (q *queryState) dropBucketLocked(bucket string) {
	for k := range q.indexes {
		if strings.HasPrefix(k, bucket+".") {
			delete(q.indexes, k)
		}
	}
}

// Indexes lists the GSI indexes of a keyspace by name, primary first
// ("#primary" unless named), for tests.
func (s *Server) Indexes(bucket, scope, coll string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, ix := range s.query.indexes[ksID(bucket, scope, coll)] {
		out = append(out, ix.name)
	}
	return out
}

// DropIndex removes the GSI index name of a keyspace, as a cluster set up
// by an older release lacks it; it says whether there was one. For tests.
func (s *Server) DropIndex(bucket, scope, coll, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := ksID(bucket, scope, coll)
	list := s.query.indexes[id]
	for i, ix := range list {
		if ix.name == name {
			s.query.indexes[id] = append(list[:i:i], list[i+1:]...)
			return true
		}
	}
	return false
}

// Execution.

type exec struct {
	s     *Server
	qctx  *ksRef
	ev    *evalCtx
	muts  int
	start time.Time
	// docErrs are the errors of single documents a mutation went on
	// past (dmlError), returned with its results.
	docErrs []*queryError
}

type resolved struct {
	b    *bucket
	coll *collDef
	id   string // bucket.scope.collection
	path string // default:bucket.scope.collection
}

func (x *exec) resolveLocked(k *ksRef) (*resolved, error) {
	if k.system {
		return nil, qerr(3000, "%s is read only by SELECT", k.text)
	}
	var bucketName, scope, coll string
	switch {
	case len(k.parts) == 3:
		bucketName, scope, coll = k.parts[0], k.parts[1], k.parts[2]
	case x.qctx != nil && len(x.qctx.parts) == 2 && len(k.parts) == 1:
		bucketName, scope, coll = x.qctx.parts[0], x.qctx.parts[1], k.parts[0]
	case x.qctx != nil && len(k.parts) == 2:
		bucketName, scope, coll = x.qctx.parts[0], k.parts[0], k.parts[1]
	case len(k.parts) == 1:
		bucketName, scope, coll = k.parts[0], "_default", "_default"
	default:
		return nil, qerr(3000, "keyspace %s needs a bucket", k.text)
	}
	path := "default:" + bucketName + "." + scope + "." + coll
	b := x.s.buckets[bucketName]
	if b == nil {
		return nil, qerr(12003, "Keyspace not found in CB datastore: %s", path)
	}
	if b.man.scope(scope) == nil {
		return nil, qerr(12021, "Scope not found in CB datastore %s.%s", bucketName, scope)
	}
	c := b.man.collection(scope, coll)
	if c == nil {
		return nil, qerr(12003, "Keyspace not found in CB datastore: %s", path)
	}
	return &resolved{b: b, coll: c, id: ksID(bucketName, scope, coll), path: path}, nil
}

type docRow struct {
	row
	vb *vbucket
	it *item
}

func metaObject(it *item) *object {
	m := newObject()
	m.set("cas", json.Number(strconv.FormatUint(it.cas, 10)))
	m.set("expiration", float64(it.expiry))
	m.set("flags", float64(it.flags))
	m.set("id", it.key)
	if it.datatype&datatypeJSON != 0 {
		m.set("type", "json")
	} else {
		m.set("type", "base64")
	}
	return m
}

// docLocked is it's value as a query reads it, missing when it is not
// JSON: decoded at its first scan only, and counted (Server.decodes).
func (s *Server) docLocked(it *item) any {
	if !it.decoded {
		s.decodes++
		it.parsed, it.decoded = any(missing), true
		if it.datatype&datatypeJSON != 0 {
			if v, err := decodeJSON(it.value); err == nil {
				it.parsed = v
			}
		}
	}
	return it.parsed
}

// scanLocked returns the collection's live documents, by key.
func (x *exec) scanLocked(r *resolved, alias string) []*docRow {
	var out []*docRow
	for _, vb := range r.b.vbs {
		for k, it := range vb.items {
			if k.cid != r.coll.id || it.deleted || x.s.isExpired(it) {
				continue
			}
			out = append(out, &docRow{row: row{alias: alias, doc: x.s.docLocked(it), meta: metaObject(it)}, vb: vb, it: it})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].it.key < out[j].it.key })
	return out
}

func (x *exec) filterLocked(rows []*docRow, where expr) ([]*docRow, error) {
	if where == nil {
		return rows, nil
	}
	var out []*docRow
	for _, r := range rows {
		v, err := x.ev.eval(where, &r.row)
		if err != nil {
			return nil, err
		}
		if isTrue(v) {
			out = append(out, r)
		}
	}
	return out, nil
}

func (x *exec) count(e expr, what string) (int, bool, error) {
	if e == nil {
		return 0, false, nil
	}
	v, err := x.ev.eval(e, nil)
	if err != nil {
		return 0, false, err
	}
	f, ok := toFloat(v)
	if !ok || f < 0 || f != float64(int64(f)) {
		return 0, false, qerr(5030, "Invalid %s value %v", what, v)
	}
	return int(f), true, nil
}

func (x *exec) project(terms []projTerm, raw bool, r *row) (any, bool, error) {
	if raw {
		v, err := x.ev.eval(terms[0].e, r)
		if err != nil {
			return nil, false, err
		}
		return v, v != any(missing), nil
	}
	o := newObject()
	for i, t := range terms {
		switch {
		case t.star && t.e == nil:
			if r != nil {
				o.set(r.alias, r.doc)
			}
		case t.star:
			v, err := x.ev.eval(t.e, r)
			if err != nil {
				return nil, false, err
			}
			if src, ok := v.(*object); ok {
				for _, k := range src.keys {
					o.set(k, src.m[k])
				}
			}
		default:
			v, err := x.ev.eval(t.e, r)
			if err != nil {
				return nil, false, err
			}
			name := t.as
			if name == "" {
				switch e := t.e.(type) {
				case *exField:
					name = e.name
				case *exIdent:
					name = e.name
				default:
					name = "$" + strconv.Itoa(i+1)
				}
			}
			o.set(name, v)
		}
	}
	return o, true, nil
}

func (x *exec) selectLocked(q *selectStmt) ([]any, error) {
	if q.ks == nil {
		v, ok, err := x.project(q.proj, q.raw, nil)
		if err != nil || !ok {
			return []any{}, err
		}
		return []any{v}, nil
	}
	var all []*docRow
	if q.ks.system {
		all = x.systemIndexesLocked(q.alias)
	} else {
		r, err := x.resolveLocked(q.ks)
		if err != nil {
			return nil, err
		}
		if err := x.needIndexLocked(r, q.alias, q.where); err != nil {
			return nil, err
		}
		all = x.scanLocked(r, q.alias)
	}
	rows, err := x.filterLocked(all, q.where)
	if err != nil {
		return nil, err
	}
	// Aggregates in the projection, HAVING or ORDER BY, or a GROUP BY,
	// turn the rows into groups: one per distinct GROUP BY value, or one
	// of all rows.
	var aggs []*exFunc
	collect := func(e expr) {
		if e != nil {
			walk(e, func(e expr) {
				if f, ok := e.(*exFunc); ok && aggregateFuncs[f.name] {
					aggs = append(aggs, f)
				}
			})
		}
	}
	for _, t := range q.proj {
		collect(t.e)
	}
	collect(q.having)
	for _, o := range q.order {
		collect(o.e)
	}
	type result struct {
		v    any
		keys []any
	}
	var results []result
	emit := func(rw *row) error {
		v, ok, err := x.project(q.proj, q.raw, rw)
		if err != nil || !ok {
			return err
		}
		res := result{v: v}
		for _, o := range q.order {
			var k any
			if id, isID := o.e.(*exIdent); isID && !q.raw && id.name != q.alias {
				if obj, isObj := v.(*object); isObj {
					if pv, has := obj.m[id.name]; has {
						res.keys = append(res.keys, pv) // ORDER BY a projection alias
						continue
					}
				}
			}
			if k, err = x.ev.eval(o.e, rw); err != nil {
				return err
			}
			res.keys = append(res.keys, k)
		}
		results = append(results, res)
		return nil
	}
	if len(aggs) > 0 || q.group != nil {
		type group struct{ rows []*docRow }
		var groups []*group
		byKey := map[string]*group{}
		for _, r := range rows {
			var key []any
			for _, g := range q.group {
				v, err := x.ev.eval(g, &r.row)
				if err != nil {
					return nil, err
				}
				key = append(key, v)
			}
			kb, _ := marshalValue(key)
			gr := byKey[string(kb)]
			if gr == nil {
				gr = &group{}
				byKey[string(kb)] = gr
				groups = append(groups, gr)
			}
			gr.rows = append(gr.rows, r)
		}
		if q.group == nil && len(groups) == 0 {
			groups = append(groups, &group{}) // aggregates over no rows
		}
		for _, gr := range groups {
			for _, f := range aggs {
				v, err := x.aggregate(f, gr.rows)
				if err != nil {
					return nil, err
				}
				x.ev.aggs[f] = v
			}
			rep := &row{alias: q.alias, doc: missing}
			if len(gr.rows) > 0 {
				rep = &gr.rows[0].row
			}
			if q.having != nil {
				h, err := x.ev.eval(q.having, rep)
				if err != nil {
					return nil, err
				}
				if !isTrue(h) {
					continue
				}
			}
			if err := emit(rep); err != nil {
				return nil, err
			}
		}
	} else {
		for _, r := range rows {
			if err := emit(&r.row); err != nil {
				return nil, err
			}
		}
	}
	if len(q.order) > 0 {
		sort.SliceStable(results, func(i, j int) bool {
			for k, o := range q.order {
				c := collate(results[i].keys[k], results[j].keys[k])
				if o.desc {
					c = -c
				}
				if c != 0 {
					return c < 0
				}
			}
			return false
		})
	}
	out := []any{}
	seen := map[string]bool{}
	for _, res := range results {
		if q.distinct {
			b, _ := marshalValue(res.v)
			if seen[string(b)] {
				continue
			}
			seen[string(b)] = true
		}
		out = append(out, res.v)
	}
	off, hasOff, err := x.count(q.offset, "OFFSET")
	if err != nil {
		return nil, err
	}
	if hasOff {
		out = out[min(off, len(out)):]
	}
	lim, hasLim, err := x.count(q.limit, "LIMIT")
	if err != nil {
		return nil, err
	}
	if hasLim && lim < len(out) {
		out = out[:lim]
	}
	return out, nil
}

var aggregateFuncs = map[string]bool{"COUNT": true, "MIN": true, "MAX": true, "SUM": true, "AVG": true}

// aggregate computes f over rows: COUNT(*), or COUNT/MIN/MAX/SUM/AVG of
// the values that are neither MISSING nor NULL.
func (x *exec) aggregate(f *exFunc, rows []*docRow) (any, error) {
	if f.star {
		if f.name != "COUNT" {
			return nil, qerr(3000, "%s(*) is not valid", f.name)
		}
		return float64(len(rows)), nil
	}
	if len(f.args) != 1 {
		return nil, qerr(3000, "%s takes one argument", f.name)
	}
	var vals []any
	for _, r := range rows {
		v, err := x.ev.eval(f.args[0], &r.row)
		if err != nil {
			return nil, err
		}
		if v != nil && v != any(missing) {
			vals = append(vals, v)
		}
	}
	switch f.name {
	case "COUNT":
		return float64(len(vals)), nil
	case "MIN", "MAX":
		var best any
		for _, v := range vals {
			if best == nil || (f.name == "MIN") == (collate(v, best) < 0) && collate(v, best) != 0 {
				best = v
			}
		}
		return best, nil
	}
	sum, n := 0.0, 0
	for _, v := range vals {
		if fv, ok := toFloat(v); ok {
			sum += fv
			n++
		}
	}
	if n == 0 {
		return nil, nil
	}
	if f.name == "AVG" {
		return sum / float64(n), nil
	}
	return sum, nil
}

// pathOf turns a SET/UNSET target into field names below the document.
func pathOf(e expr, alias string) ([]string, error) {
	switch x := e.(type) {
	case *exIdent:
		if x.name == alias {
			return nil, fmt.Errorf("cannot SET the whole document")
		}
		return []string{x.name}, nil
	case *exField:
		if id, ok := x.x.(*exIdent); ok && id.name == alias {
			return []string{x.name}, nil
		}
		p, err := pathOf(x.x, alias)
		return append(p, x.name), err
	}
	return nil, fmt.Errorf("unsupported SET target %s", canon(e, alias))
}

func (x *exec) mutateLocked(ks *ksRef, alias string, where, limit expr, ret *returning,
	change func(r *resolved, d *docRow) (*row, error)) ([]any, error) {
	r, err := x.resolveLocked(ks)
	if err != nil {
		return nil, err
	}
	if err := x.needIndexLocked(r, alias, where); err != nil {
		return nil, err
	}
	rows, err := x.filterLocked(x.scanLocked(r, alias), where)
	if err != nil {
		return nil, err
	}
	if lim, has, err := x.count(limit, "LIMIT"); err != nil {
		return nil, err
	} else if has && lim < len(rows) {
		rows = rows[:lim]
	}
	out := []any{}
	for _, d := range rows {
		after, err := change(r, d)
		if err != nil {
			return nil, err
		}
		if after == nil {
			continue // not written: its error is in x.docErrs
		}
		x.muts++
		if ret != nil {
			v, ok, err := x.project(ret.proj, ret.raw, after)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, v)
			}
		}
	}
	return out, nil
}

func (x *exec) updateLocked(q *updateStmt) ([]any, error) {
	return x.mutateLocked(q.ks, q.alias, q.where, q.limit, q.ret, func(r *resolved, d *docRow) (*row, error) {
		if removed, ok := x.s.takeUpdateConflict(r.id, d.it.key); ok {
			// Another client's write lands between this statement's read of
			// the document and its write, which then fails on the CAS.
			if removed {
				x.s.deleteLocked(r.b, d.vb, d.it, false)
			} else {
				x.s.storeLocked(r.b, d.vb, &item{docKey: d.it.docKey, value: d.it.value, flags: d.it.flags,
					datatype: d.it.datatype, expiry: d.it.expiry, xattrs: d.it.xattrs})
			}
			x.docErrs = append(x.docErrs, dmlError(r.path, d.it.key, removed))
			return nil, nil
		}
		doc, ok := d.doc.(*object)
		if !ok {
			return nil, qerr(5000, "cannot UPDATE %s: not a JSON object", d.it.key)
		}
		nd := doc.clone()
		for _, st := range q.sets {
			v, err := x.ev.eval(st.val, &d.row)
			if err != nil {
				return nil, err
			}
			path, err := pathOf(st.path, q.alias)
			if err != nil {
				return nil, qerr(3000, "%v", err)
			}
			setPath(nd, path, v)
		}
		for _, u := range q.unsets {
			path, err := pathOf(u, q.alias)
			if err != nil {
				return nil, qerr(3000, "%v", err)
			}
			setPath(nd, path, missing)
		}
		val, err := nd.MarshalJSON()
		if err != nil {
			return nil, err
		}
		// An UPDATE is a KV mutation: new CAS, next seqno, DCP sees it.
		// It does not preserve the expiry (preserve_expiry is not set).
		// As a SET, it keeps the document's xattrs (kv_engine
		// mutation_context.cc getExistingItemToPreserveXattr).
		it := &item{docKey: d.it.docKey, value: val, flags: d.it.flags, datatype: datatypeJSON, xattrs: d.it.xattrs}
		x.s.storeLocked(r.b, d.vb, it)
		return &row{alias: q.alias, doc: nd, meta: metaObject(it)}, nil
	})
}

func setPath(o *object, path []string, v any) {
	for _, p := range path[:len(path)-1] {
		next, ok := o.get(p).(*object)
		if !ok {
			next = newObject()
			o.set(p, next)
		} else {
			next = next.clone()
			o.set(p, next)
		}
		o = next
	}
	last := path[len(path)-1]
	if v == any(missing) {
		if _, ok := o.m[last]; ok {
			delete(o.m, last)
			for i, k := range o.keys {
				if k == last {
					o.keys = append(o.keys[:i:i], o.keys[i+1:]...)
					break
				}
			}
		}
		return
	}
	o.set(last, v)
}

func (x *exec) deleteLocked(q *deleteStmt) ([]any, error) {
	return x.mutateLocked(q.ks, q.alias, q.where, q.limit, q.ret, func(r *resolved, d *docRow) (*row, error) {
		x.s.deleteLocked(r.b, d.vb, d.it, false)
		return &d.row, nil
	})
}

func (x *exec) createIndexLocked(q *createIndexStmt) error {
	r, err := x.resolveLocked(q.ks)
	if err != nil {
		return err
	}
	for _, ix := range x.s.query.indexes[r.id] {
		if ix.name == q.name || (q.primary && ix.primary) {
			if q.ifNotExists {
				return nil
			}
			return qerr(4300, "The index %s already exists.", q.name)
		}
	}
	var with struct {
		DeferBuild bool `json:"defer_build"`
		NumReplica *int `json:"num_replica"`
	}
	if q.with != "" {
		if err := json.Unmarshal([]byte(q.with), &with); err != nil {
			return qerr(5000, "GSI CreateIndex() - cause: WITH clause %s: %v", q.with, err)
		}
	}
	ix := &indexDef{name: q.name, primary: q.primary, state: indexOnline}
	if with.DeferBuild {
		ix.state = indexDeferred
	}
	if with.NumReplica != nil {
		// Each replica on an index node of its own, as the indexer places them.
		if *with.NumReplica < 0 || *with.NumReplica >= x.s.opts.Nodes {
			return qerr(5000, "GSI CreateIndex() - cause: Fails to create index.  There are not enough indexer nodes to create index with replica count of %d. Some indexer nodes may be marked as excluded.", *with.NumReplica)
		}
		ix.replica = *with.NumReplica
	}
	if q.primary {
		ix.keys = []string{canon(&exField{&exFunc{name: "META"}, "id"}, "")}
	}
	for _, k := range q.keys {
		ix.keys = append(ix.keys, canon(k, ""))
		ix.keyTxt = append(ix.keyTxt, canon(k, ""))
	}
	if q.where != nil {
		for _, c := range flattenBin(q.where, "AND") {
			ix.cond = append(ix.cond, canon(c, ""))
		}
		ix.condTxt = canon(q.where, "")
	}
	x.s.query.indexes[r.id] = append(x.s.query.indexes[r.id], ix)
	return nil
}

// buildIndexLocked builds deferred indexes: online at once, or building
// while HoldIndexBuilds holds them. An index built or building already
// fails the statement, as the indexer refuses it.
func (x *exec) buildIndexLocked(q *buildIndexStmt) error {
	r, err := x.resolveLocked(q.ks)
	if err != nil {
		return err
	}
	var build []*indexDef
	for _, name := range q.names {
		var found *indexDef
		for _, ix := range x.s.query.indexes[r.id] {
			if ix.name == name {
				found = ix
			}
		}
		switch {
		case found == nil:
			return qerr(12016, "Index Not Found - cause: GSI index %s not found.", name)
		case found.state == indexBuilding:
			return qerr(5000, "GSI BuildIndexes() - cause: Build Already In Progress. Index %s", name)
		case found.state == indexOnline:
			return qerr(5000, "GSI BuildIndexes() - cause: Index %s is already built", name)
		}
		build = append(build, found)
	}
	for _, ix := range build {
		ix.state = indexOnline
		if x.s.query.holdBuilds {
			ix.state = indexBuilding
		}
	}
	return nil
}

// HoldIndexBuilds leaves the indexes that BUILD INDEX starts "building"
// until release, which makes them online, as a build over a large
// collection takes minutes. For tests.
func (s *Server) HoldIndexBuilds() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.query.holdBuilds = true
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.query.holdBuilds = false
		for _, ixs := range s.query.indexes {
			for _, ix := range ixs {
				if ix.state == indexBuilding {
					ix.state = indexOnline
				}
			}
		}
	}
}

// IndexState is the state of a keyspace's index name, as system:indexes
// says it ("" when there is none). For tests.
func (s *Server) IndexState(bucket, scope, coll, name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ix := range s.query.indexes[ksID(bucket, scope, coll)] {
		if ix.name == name {
			return ix.state
		}
	}
	return ""
}

// IndexStateReads counts the statements that read system:indexes: a
// client waiting for a build reads it again and again. For tests.
func (s *Server) IndexStateReads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.query.stateReads
}

// systemIndexesLocked is system:indexes: a row per GSI index, with the
// fields gocb's query index manager reads.
func (x *exec) systemIndexesLocked(alias string) []*docRow {
	x.s.query.stateReads++
	var ids []string
	for id := range x.s.query.indexes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []*docRow
	for _, id := range ids {
		names := strings.SplitN(id, ".", 3)
		for _, ix := range x.s.query.indexes[id] {
			o := newObject()
			o.set("bucket_id", names[0])
			o.set("scope_id", names[1])
			o.set("keyspace_id", names[2])
			o.set("namespace_id", "default")
			o.set("id", fmt.Sprintf("%x", sha256.Sum256([]byte(id+"/"+ix.name)))[:16])
			o.set("name", ix.name)
			o.set("is_primary", ix.primary)
			o.set("state", ix.state)
			o.set("using", "gsi")
			keys := []any{}
			for _, k := range ix.keyTxt {
				keys = append(keys, k)
			}
			o.set("index_key", keys)
			if ix.condTxt != "" {
				o.set("condition", ix.condTxt)
			}
			if ix.replica > 0 {
				o.set("num_replica", float64(ix.replica))
			}
			out = append(out, &docRow{row: row{alias: alias, doc: o, meta: newObject()}})
		}
	}
	return out
}

func (x *exec) dropIndexLocked(q *dropIndexStmt) error {
	r, err := x.resolveLocked(q.ks)
	if err != nil {
		return err
	}
	list := x.s.query.indexes[r.id]
	for i, ix := range list {
		if ix.name == q.name || (q.primary && ix.primary) {
			x.s.query.indexes[r.id] = append(list[:i:i], list[i+1:]...)
			return nil
		}
	}
	if q.ifExists {
		return nil
	}
	return qerr(12004, "GSI index %s not found.", q.name)
}

// run executes a compiled statement.
func (x *exec) runLocked(st any) ([]any, error) {
	switch q := st.(type) {
	case *selectStmt:
		return x.selectLocked(q)
	case *updateStmt:
		return x.updateLocked(q)
	case *deleteStmt:
		return x.deleteLocked(q)
	case *createIndexStmt:
		return []any{}, x.createIndexLocked(q)
	case *dropIndexStmt:
		return []any{}, x.dropIndexLocked(q)
	case *buildIndexStmt:
		return []any{}, x.buildIndexLocked(q)
	case *explainStmt:
		plan, err := x.explainLocked(q.inner)
		if err != nil {
			return nil, err
		}
		row := newObject()
		row.set("plan", plan)
		row.set("text", q.text)
		return []any{row}, nil
	}
	return nil, qerr(5000, "cannot run %T", st)
}

// Planning, for EXPLAIN only: execution always reads the collection.

func op(kv ...any) *object {
	o := newObject()
	for i := 0; i+1 < len(kv); i += 2 {
		o.set(kv[i].(string), kv[i+1])
	}
	return o
}

// sargable says whether conj restricts the index key k to a range.
func sargable(k string, conj []expr, alias string) bool {
	for _, c := range conj {
		switch x := c.(type) {
		case *exBin:
			switch x.op {
			case "=", "!=", "<", "<=", ">", ">=", "LIKE":
				if canon(x.l, alias) == k && !refsKeyspace(x.r) || canon(x.r, alias) == k && !refsKeyspace(x.l) {
					return true
				}
			}
		case *exIn:
			if !x.not && canon(x.x, alias) == k && !refsKeyspace(x.list) {
				return true
			}
		case *exBetween:
			if !x.not && canon(x.x, alias) == k {
				return true
			}
		case *exIs:
			if canon(x.x, alias) == k && (x.what == "VALUED" && !x.not || x.what != "VALUED" && x.not) {
				return true
			}
		}
	}
	return false
}

// usableIndex is the first secondary index of ixs whose leading key
// conj restricts and whose condition conj implies; failing that, the
// primary index when conj restricts META().id.
func usableIndex(ixs []*indexDef, conj []expr, alias string) *indexDef {
	have := map[string]bool{}
	for _, c := range conj {
		have[canon(c, alias)] = true
	}
	for _, ix := range ixs {
		if ix.primary || ix.state != indexOnline || !sargable(ix.keys[0], conj, alias) {
			continue
		}
		ok := true
		for _, c := range ix.cond {
			ok = ok && have[c]
		}
		if ok {
			return ix
		}
	}
	for _, ix := range ixs {
		if ix.primary && ix.state == indexOnline && sargable(ix.keys[0], conj, alias) {
			return ix
		}
	}
	return nil
}

// needIndexLocked fails a statement on r that no index serves, unless
// Options.SequentialScans (the query service's 4120, which gocb reports
// as a planning failure).
func (x *exec) needIndexLocked(r *resolved, alias string, where expr) error {
	if x.s.opts.SequentialScans {
		return nil
	}
	if o := x.scanOp(r, alias, where); o.get("#operator") == "SequentialScan" {
		return qerr(4120, "No index available on keyspace %s that matches your query. Use CREATE PRIMARY INDEX ON %s to create a primary index, or check that your expected index is online.",
			r.id, r.id)
	}
	return nil
}

func (x *exec) scanOp(r *resolved, alias string, where expr) *object {
	ixs := x.s.query.indexes[r.id]
	names := strings.Split(r.id, ".")
	scan := func(ix *indexDef) *object {
		o := op("#operator", "IndexScan3", "bucket", names[0], "scope", names[1], "keyspace", names[2],
			"namespace", "default", "index", ix.name, "index_keys", ix.keys, "using", "gsi")
		if ix.condTxt != "" {
			o.set("index_condition", ix.condTxt)
		}
		if alias != "" {
			o.set("as", alias)
		}
		return o
	}
	var conj []expr
	if where != nil {
		conj = flattenBin(where, "AND")
	}
	secondary, primary := ixs[:0:0], ixs[:0:0]
	for _, ix := range ixs {
		if ix.primary {
			primary = append(primary, ix)
		} else {
			secondary = append(secondary, ix)
		}
	}
	if ix := usableIndex(secondary, conj, alias); ix != nil {
		return scan(ix)
	}
	for i, c := range conj {
		or, ok := c.(*exBin)
		if !ok || or.op != "OR" {
			continue
		}
		rest := append(append([]expr(nil), conj[:i]...), conj[i+1:]...)
		var scans []any
		for _, d := range flattenBin(or, "OR") {
			ix := usableIndex(secondary, append(append([]expr(nil), rest...), flattenBin(d, "AND")...), alias)
			if ix == nil {
				scans = nil
				break
			}
			scans = append(scans, scan(ix))
		}
		if scans != nil {
			return op("#operator", "DistinctScan", "scan", op("#operator", "UnionScan", "scans", scans))
		}
	}
	if ix := usableIndex(primary, conj, alias); ix != nil {
		return scan(ix)
	}
	for _, ix := range ixs {
		if ix.primary && ix.state == indexOnline {
			return op("#operator", "PrimaryScan3", "bucket", names[0], "scope", names[1], "keyspace", names[2],
				"namespace", "default", "index", ix.name, "using", "gsi")
		}
	}
	// 7.6 runs a query without any usable index as a sequential scan.
	return op("#operator", "SequentialScan", "bucket", names[0], "scope", names[1], "keyspace", names[2], "namespace", "default")
}

func (x *exec) explainLocked(st any) (*object, error) {
	var ks *ksRef
	var alias string
	var where expr
	var tail []any
	switch q := st.(type) {
	case *selectStmt:
		if q.ks == nil {
			return op("#operator", "Sequence", "~children", []any{op("#operator", "DummyScan"),
				op("#operator", "InitialProject"), op("#operator", "FinalProject")}), nil
		}
		ks, alias, where = q.ks, q.alias, q.where
		tail = []any{op("#operator", "InitialProject", "raw", q.raw)}
	case *updateStmt:
		ks, alias, where = q.ks, q.alias, q.where
		var set []any
		for _, s := range q.sets {
			set = append(set, op("path", canon(s.path, ""), "value", canon(s.val, "")))
		}
		tail = []any{op("#operator", "Clone"), op("#operator", "Set", "set_terms", set), op("#operator", "SendUpdate", "alias", alias)}
	case *deleteStmt:
		ks, alias, where = q.ks, q.alias, q.where
		tail = []any{op("#operator", "SendDelete", "alias", alias)}
	}
	r, err := x.resolveLocked(ks)
	if err != nil {
		return nil, err
	}
	if err := x.needIndexLocked(r, alias, where); err != nil {
		return nil, err
	}
	names := strings.Split(r.id, ".")
	inner := []any{}
	if where != nil {
		inner = append(inner, op("#operator", "Filter", "condition", canon(where, "")))
	}
	inner = append(inner, tail...)
	return op("#operator", "Sequence", "~children", []any{
		x.scanOp(r, alias, where),
		op("#operator", "Fetch", "as", alias, "bucket", names[0], "scope", names[1], "keyspace", names[2], "namespace", "default"),
		op("#operator", "Parallel", "~child", op("#operator", "Sequence", "~children", inner)),
		op("#operator", "FinalProject"),
	}), nil
}

// HTTP.

func (s *Server) queryRoutes(n *node) *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /admin/ping", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{})
	})
	m.HandleFunc("POST /query/service", s.handleQuery)
	m.HandleFunc("POST /query", s.handleQuery)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { notFound(w) })
	return m
}

type queryRequest struct {
	statement   string
	prepared    string
	encodedPlan string
	autoExecute bool
	qctx        string
	clientCtxID string
	consistency string // scan_consistency as sent; "" when not sent
	params      map[string]any
}

func parseQueryRequest(r *http.Request) (*queryRequest, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		return nil, err
	}
	raw := map[string]json.RawMessage{}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		vals, err := parseForm(string(body))
		if err != nil {
			return nil, err
		}
		for k, v := range vals {
			if strings.HasPrefix(k, "$") || k == "args" || k == "auto_execute" {
				raw[k] = json.RawMessage(v)
			} else {
				b, _ := json.Marshal(v)
				raw[k] = b
			}
		}
	} else if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("request body is not a JSON object: %v", err)
	}
	q := &queryRequest{params: map[string]any{}}
	str := func(k string) string {
		var v string
		_ = json.Unmarshal(raw[k], &v)
		return v
	}
	q.statement, q.prepared, q.encodedPlan = str("statement"), str("prepared"), str("encoded_plan")
	q.qctx, q.clientCtxID, q.consistency = str("query_context"), str("client_context_id"), str("scan_consistency")
	_ = json.Unmarshal(raw["auto_execute"], &q.autoExecute)
	for k, v := range raw {
		if strings.HasPrefix(k, "$") && len(k) > 1 {
			val, err := decodeJSON(v)
			if err != nil {
				return nil, fmt.Errorf("parameter %s: %v", k, err)
			}
			q.params[k[1:]] = val
		}
	}
	if a, ok := raw["args"]; ok {
		val, err := decodeJSON(a)
		if err != nil {
			return nil, fmt.Errorf("args: %v", err)
		}
		arr, ok := val.([]any)
		if !ok {
			return nil, fmt.Errorf("args must be an array")
		}
		for i, v := range arr {
			q.params[strconv.Itoa(i+1)] = v
		}
	}
	return q, nil
}

func parseForm(body string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(body, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		var err error
		if k, err = urlUnescape(k); err != nil {
			return nil, err
		}
		if v, err = urlUnescape(v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

func urlUnescape(s string) (string, error) {
	s = strings.ReplaceAll(s, "+", " ")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return "", err
			}
			b.WriteByte(byte(v))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String(), nil
}

func parseQueryContext(qc string) (*ksRef, error) {
	if qc == "" {
		return nil, nil
	}
	k, err := parseKS(qc)
	if err != nil {
		return nil, qerr(3000, "invalid query_context %q", qc)
	}
	if len(k.parts) == 1 {
		k.parts = append(k.parts, "_default")
	}
	if len(k.parts) != 2 {
		return nil, qerr(3000, "invalid query_context %q", qc)
	}
	return k, nil
}

func preparedName(text, qctx string) string {
	h := sha256.Sum256([]byte(qctx + "\x00" + text))
	return "cbtest-" + hex.EncodeToString(h[:8])
}

func (s *Server) handleQuery(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := fmt.Sprintf("cbtest-%08d", s.query.reqSeq.Add(1))
	req, err := parseQueryRequest(r)
	if err != nil {
		writeQueryError(w, reqID, "", start, qerr(1050, "%v", err))
		return
	}
	results, prepName, muts, docErrs, err := s.runQuery(req)
	if err != nil {
		var qe *queryError
		if !errors.As(err, &qe) {
			qe = qerr(5000, "%v", err)
		}
		writeQueryError(w, reqID, req.clientCtxID, start, qe)
		return
	}
	var buf bytes.Buffer
	field := func(k string, v any) {
		b, _ := marshalValue(v)
		kb, _ := json.Marshal(k)
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(b)
		buf.WriteByte(',')
	}
	buf.WriteByte('{')
	field("requestID", reqID)
	field("clientContextID", req.clientCtxID)
	field("signature", map[string]string{"*": "*"})
	if prepName != "" {
		field("prepared", prepName) // before results: gocb caches it
	}
	buf.WriteString(`"results":[`)
	size := 0
	for i, row := range results {
		b, err := marshalValue(row)
		if err != nil {
			writeQueryError(w, reqID, req.clientCtxID, start, qerr(5000, "%v", err))
			return
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(b)
		size += len(b)
	}
	buf.WriteString(`],`)
	status := "success"
	if len(docErrs) > 0 {
		// The results went out first: the status code stays 200
		// (couchbase/query server/http/service_response.go, MB-19307).
		errs := make([]any, len(docErrs))
		for i, qe := range docErrs {
			errs[i] = qe.object()
		}
		field("errors", errs)
		status = "errors"
	}
	field("status", status)
	el := time.Since(start).String()
	metrics := op("elapsedTime", el, "executionTime", el, "resultCount", float64(len(results)), "resultSize", float64(size))
	if muts > 0 {
		metrics.set("mutationCount", float64(muts))
	}
	if len(docErrs) > 0 {
		metrics.set("errorCount", float64(len(docErrs)))
	}
	mb, _ := metrics.MarshalJSON()
	buf.WriteString(`"metrics":`)
	buf.Write(mb)
	buf.WriteByte('}')
	w.Header().Set("Content-Type", "application/json; version=7.6.2-N1QL")
	w.WriteHeader(200)
	_, _ = w.Write(buf.Bytes())
}

func writeQueryError(w http.ResponseWriter, reqID, ctxID string, start time.Time, qe *queryError) {
	status := 500
	switch {
	case qe.code == 1050 || qe.code/1000 == 3:
		status = 400
	case qe.code == 4040 || qe.code == 12003 || qe.code == 12021:
		status = 404
	case qe.code/1000 == 10:
		status = 401
	}
	st := "errors"
	if status == 400 {
		st = "fatal"
	}
	el := time.Since(start).String()
	body := op("requestID", reqID, "clientContextID", ctxID,
		"errors", []any{qe.object()}, "status", st,
		"metrics", op("elapsedTime", el, "executionTime", el, "resultCount", 0.0, "resultSize", 0.0, "errorCount", 1.0))
	b, _ := body.MarshalJSON()
	w.Header().Set("Content-Type", "application/json; version=7.6.2-N1QL")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// runQuery handles PREPARE and prepared names around one statement. It
// returns the errors of single documents a mutation went on past apart.
func (s *Server) runQuery(req *queryRequest) ([]any, string, int, []*queryError, error) {
	text, qctxText := req.statement, req.qctx
	prepName := ""
	if text == "" {
		if req.prepared == "" {
			return nil, "", 0, nil, qerr(1050, "No statement or prepared value")
		}
		s.mu.Lock()
		p, ok := s.query.prepared[req.prepared]
		s.mu.Unlock()
		if !ok && req.encodedPlan != "" {
			if b, err := base64.StdEncoding.DecodeString(req.encodedPlan); err == nil {
				var pl preparedStmt
				if json.Unmarshal(b, &struct {
					Text *string `json:"text"`
					QCtx *string `json:"query_context"`
				}{&pl.text, &pl.qctx}) == nil && pl.text != "" {
					p, ok = pl, true
				}
			}
		}
		if !ok {
			return nil, "", 0, nil, qerr(4040, "No such prepared statement: %s", req.prepared)
		}
		text, qctxText = p.text, p.qctx
	} else if m := prepareRe.FindStringSubmatch(stripComments(text)); m != nil {
		inner, name := strings.TrimSpace(m[1]), ""
		if n := prepareNameRe.FindStringSubmatch(inner); n != nil && !isReserved(unquoteID(n[1])) {
			inner, name = strings.TrimSpace(n[2]), unquoteID(n[1])
		}
		if name == "" {
			name = preparedName(inner, qctxText)
		}
		// The query service's grammar prepares a statement, and EXPLAIN is
		// none (n1ql.y: prepare is PREPARE opt_force opt_name stmt, and
		// explain is a stmt_body of its own): a prepared EXPLAIN is a
		// syntax error. gocb prepares every query it is not told is ad hoc.
		if explainRe.MatchString(inner) {
			return nil, "", 0, nil, qerr(3000, "syntax error - at EXPLAIN: an EXPLAIN cannot be prepared: %s", strings.TrimSpace(text))
		}
		qctx, err := parseQueryContext(qctxText)
		if err != nil {
			return nil, "", 0, nil, err
		}
		if _, err := (&compiler{qctx: qctx}).compile(inner); err != nil {
			return nil, "", 0, nil, err
		}
		s.mu.Lock()
		s.query.prepared[name] = preparedStmt{text: inner, qctx: qctxText}
		s.mu.Unlock()
		if !req.autoExecute {
			plan, _ := json.Marshal(map[string]string{"text": inner, "query_context": qctxText})
			row := op("name", name, "encoded_plan", base64.StdEncoding.EncodeToString(plan), "text", text,
				"operator", op("#operator", "Sequence"))
			return []any{row}, "", 0, nil, nil
		}
		text, prepName = inner, name
	}
	s.work.statement(text, req.consistency)
	qctx, err := parseQueryContext(qctxText)
	if err != nil {
		return nil, "", 0, nil, err
	}
	comp := &compiler{qctx: qctx, params: map[string]bool{}}
	st, err := comp.compile(text)
	if err != nil {
		return nil, "", 0, nil, err
	}
	for name := range comp.params {
		if _, ok := req.params[name]; !ok {
			return nil, "", 0, nil, qerr(5010, "No value for named parameter $%s.", name)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	x := &exec{s: s, qctx: qctx, start: time.Now()}
	x.ev = &evalCtx{
		params: req.params,
		now:    func() float64 { return float64(s.now().UnixMilli()) },
		aggs:   map[*exFunc]any{},
	}
	x.ev.subquery = func(q *selectStmt) ([]any, error) { return x.selectLocked(q) }
	rows, err := x.runLocked(st)
	if err != nil {
		var ee *evalError
		if errors.As(err, &ee) {
			return nil, "", 0, nil, qerr(ee.code, "%s", ee.msg)
		}
		return nil, "", 0, nil, err
	}
	return rows, prepName, x.muts, x.docErrs, nil
}
