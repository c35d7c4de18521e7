package cbtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// A small SQL++ expression language: enough for the WHERE, SET, ORDER BY,
// LIMIT and projection clauses of the statement shapes in query.go. It is
// not a general SQL++ engine: anything outside this grammar is a parse
// error that names the offending text.
//
//	expr    := or
//	or      := and { OR and }
//	and     := not { AND not }
//	not     := NOT not | cmp
//	cmp     := concat [ (= == != <> < <= > >=) concat
//	                  | IS [NOT] (MISSING|NULL|VALUED)
//	                  | [NOT] LIKE concat | [NOT] IN concat
//	                  | [NOT] BETWEEN concat AND concat ]
//	concat  := add { || add }
//	add     := mul { (+|-) mul }
//	mul     := unary { (*|/|%) unary }
//	unary   := - unary | postfix
//	postfix := primary { . ident | [ expr ] }
//	primary := number | string | TRUE | FALSE | NULL | MISSING | $param
//	         | ident | `ident` | func ( [*|expr {, expr}] ) | ( expr )
//	         | ( SELECT ... ) | [ expr {, expr} ]
//	         | CASE WHEN expr THEN expr { WHEN expr THEN expr } [ ELSE expr ] END

// Values: missingT, nil (NULL), bool, float64 or json.Number, string,
// []any, *object.

type missingT struct{}

var missing = missingT{}

// object is a JSON object that keeps its key order.
type object struct {
	keys []string
	m    map[string]any
}

func newObject() *object { return &object{m: map[string]any{}} }

func (o *object) get(k string) any {
	if v, ok := o.m[k]; ok {
		return v
	}
	return missing
}

func (o *object) set(k string, v any) {
	if _, ok := o.m[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.m[k] = v
}

func (o *object) clone() *object {
	c := &object{keys: append([]string(nil), o.keys...), m: make(map[string]any, len(o.m))}
	for k, v := range o.m {
		c.m[k] = v
	}
	return c
}

func (o *object) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	first := true
	for _, k := range o.keys {
		v := o.m[k]
		if _, ok := v.(missingT); ok {
			continue
		}
		if !first {
			buf.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		buf.Write(kb)
		buf.WriteByte(':')
		vb, err := marshalValue(v)
		if err != nil {
			return nil, err
		}
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func marshalValue(v any) ([]byte, error) {
	switch x := v.(type) {
	case missingT:
		return []byte("null"), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return []byte("null"), nil
		}
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return []byte(strconv.FormatInt(int64(x), 10)), nil
		}
		return json.Marshal(x)
	case []any:
		var buf bytes.Buffer
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			b, err := marshalValue(e)
			if err != nil {
				return nil, err
			}
			buf.Write(b)
		}
		buf.WriteByte(']')
		return buf.Bytes(), nil
	}
	return json.Marshal(v)
}

// decodeJSON parses a document or parameter into values, keeping object
// key order and number text.
func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	v, err := decodeValue(d)
	if err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after JSON value")
	}
	return v, nil
}

func decodeValue(d *json.Decoder) (any, error) {
	t, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch x := t.(type) {
	case json.Delim:
		switch x {
		case '{':
			o := newObject()
			for d.More() {
				kt, err := d.Token()
				if err != nil {
					return nil, err
				}
				v, err := decodeValue(d)
				if err != nil {
					return nil, err
				}
				o.set(kt.(string), v)
			}
			_, err := d.Token()
			return o, err
		case '[':
			arr := []any{}
			for d.More() {
				v, err := decodeValue(d)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			_, err := d.Token()
			return arr, err
		}
		return nil, fmt.Errorf("unexpected %v", x)
	default:
		return x, nil // nil, bool, json.Number, string
	}
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	}
	return 0, false
}

// typeRank is SQL++'s collation order of types.
func typeRank(v any) int {
	switch v.(type) {
	case missingT:
		return 0
	case nil:
		return 1
	case bool:
		return 2
	case float64, json.Number:
		return 3
	case string:
		return 4
	case []any:
		return 5
	default:
		return 6
	}
}

// collate orders any two values (for ORDER BY and comparisons).
func collate(a, b any) int {
	ra, rb := typeRank(a), typeRank(b)
	if ra != rb {
		return cmpInt(ra, rb)
	}
	switch x := a.(type) {
	case bool:
		y := b.(bool)
		switch {
		case x == y:
			return 0
		case !x:
			return -1
		}
		return 1
	case float64, json.Number:
		fa, _ := toFloat(a)
		fb, _ := toFloat(b)
		switch {
		case fa < fb:
			return -1
		case fa > fb:
			return 1
		}
		return 0
	case string:
		return strings.Compare(x, b.(string))
	case []any:
		y := b.([]any)
		for i := 0; i < len(x) && i < len(y); i++ {
			if c := collate(x[i], y[i]); c != 0 {
				return c
			}
		}
		return cmpInt(len(x), len(y))
	case *object:
		y := b.(*object)
		if c := cmpInt(len(x.m), len(y.m)); c != 0 {
			return c
		}
		ka, kb := sortedKeys(x), sortedKeys(y)
		for i := range ka {
			if c := strings.Compare(ka[i], kb[i]); c != 0 {
				return c
			}
			if c := collate(x.m[ka[i]], y.m[kb[i]]); c != 0 {
				return c
			}
		}
	}
	return 0
}

func sortedKeys(o *object) []string {
	k := append([]string(nil), o.keys...)
	sort.Strings(k)
	return k
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func isTrue(v any) bool { b, ok := v.(bool); return ok && b }

// Lexer.

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tQuoted // `identifier`
	tString
	tNumber
	tParam
	tOp
)

type token struct {
	kind tokKind
	text string // identifiers and strings unquoted; ops verbatim
	pos  int
}

func lex(src string) ([]token, error) {
	var out []token
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case unicode.IsSpace(rune(c)):
			i++
		case strings.HasPrefix(src[i:], "/*"):
			j := strings.Index(src[i+2:], "*/")
			if j < 0 {
				return nil, fmt.Errorf("unterminated comment at %d", i)
			}
			i += j + 4
		case strings.HasPrefix(src[i:], "--"):
			j := strings.IndexByte(src[i:], '\n')
			if j < 0 {
				j = len(src) - i
			}
			i += j
		case c == '_' || unicode.IsLetter(rune(c)):
			j := i
			for j < len(src) && (src[j] == '_' || unicode.IsLetter(rune(src[j])) || unicode.IsDigit(rune(src[j]))) {
				j++
			}
			out = append(out, token{tIdent, src[i:j], i})
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(src) && src[i+1] >= '0' && src[i+1] <= '9':
			j := i
			for j < len(src) && (src[j] >= '0' && src[j] <= '9' || src[j] == '.' ||
				src[j] == 'e' || src[j] == 'E' || (src[j] == '+' || src[j] == '-') && (src[j-1] == 'e' || src[j-1] == 'E')) {
				j++
			}
			out = append(out, token{tNumber, src[i:j], i})
			i = j
		case c == '$':
			j := i + 1
			for j < len(src) && (src[j] == '_' || unicode.IsLetter(rune(src[j])) || unicode.IsDigit(rune(src[j]))) {
				j++
			}
			if j == i+1 {
				return nil, fmt.Errorf("bare $ at %d", i)
			}
			out = append(out, token{tParam, src[i+1 : j], i})
			i = j
		case c == '`' || c == '"' || c == '\'':
			s, n, err := unquote(src[i:])
			if err != nil {
				return nil, fmt.Errorf("%v at %d", err, i)
			}
			k := tString
			if c == '`' {
				k = tQuoted
			}
			out = append(out, token{k, s, i})
			i += n
		default:
			op := string(c)
			for _, two := range []string{"==", "!=", "<>", "<=", ">=", "||"} {
				if strings.HasPrefix(src[i:], two) {
					op = two
				}
			}
			if !strings.Contains("=!<>()[],.*+-/%:{}|", op[:1]) || op == "!" || op == "|" {
				return nil, fmt.Errorf("unexpected %q at %d", op, i)
			}
			out = append(out, token{tOp, op, i})
			i += len(op)
		}
	}
	return append(out, token{tEOF, "", len(src)}), nil
}

// unquote reads a quoted token at the start of s and returns its text and
// length. A doubled quote or a backslash escape stands for itself.
func unquote(s string) (string, int, error) {
	q := s[0]
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == q && i+1 < len(s) && s[i+1] == q:
			b.WriteByte(q)
			i++
		case c == q:
			return b.String(), i + 1, nil
		case c == '\\' && q != '`' && i+1 < len(s):
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'u':
				if i+4 < len(s) {
					if r, err := strconv.ParseUint(s[i+1:i+5], 16, 32); err == nil {
						b.WriteRune(rune(r))
						i += 4
						continue
					}
				}
				b.WriteByte('u')
			default:
				b.WriteByte(s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, fmt.Errorf("unterminated %c", q)
}

// AST.

type expr interface{}

type (
	exLit   struct{ v any }
	exParam struct{ name string }
	exIdent struct{ name string }
	exField struct {
		x    expr
		name string
	}
	exIndex struct{ x, i expr }
	exBin   struct {
		op   string
		l, r expr
	}
	exNot struct{ x expr }
	exNeg struct{ x expr }
	exIs  struct {
		x    expr
		what string // MISSING, NULL, VALUED
		not  bool
	}
	exIn struct {
		x, list expr
		not     bool
	}
	exBetween struct {
		x, lo, hi expr
		not       bool
	}
	exFunc struct {
		name string // upper case
		args []expr
		star bool
	}
	exArray struct{ elems []expr }
	// exCase is a searched CASE: the first of thens whose when is TRUE,
	// else els (NULL when absent).
	exCase struct {
		whens, thens []expr
		els          expr
	}
	exSubquery struct {
		text string
		q    *selectStmt
	}
)

type parser struct {
	toks []token
	pos  int
	src  string
	// sub compiles a parenthesised SELECT (set by the statement layer).
	sub func(text string) (*selectStmt, error)
	// params, when set, collects the names of the parameters used.
	params map[string]bool
}

func (p *parser) peek() token { return p.toks[p.pos] }
func (p *parser) next() token { t := p.toks[p.pos]; p.pos++; return t }

func (p *parser) isKw(kw string) bool {
	t := p.peek()
	return t.kind == tIdent && strings.EqualFold(t.text, kw)
}

func (p *parser) acceptKw(kw string) bool {
	if p.isKw(kw) {
		p.pos++
		return true
	}
	return false
}

func (p *parser) isOp(op string) bool { t := p.peek(); return t.kind == tOp && t.text == op }

func (p *parser) acceptOp(op string) bool {
	if p.isOp(op) {
		p.pos++
		return true
	}
	return false
}

func (p *parser) errf(format string, args ...any) error {
	t := p.peek()
	near := p.src[t.pos:]
	if len(near) > 40 {
		near = near[:40] + "..."
	}
	return fmt.Errorf("%s (near %q)", fmt.Sprintf(format, args...), near)
}

func (p *parser) expectOp(op string) error {
	if !p.acceptOp(op) {
		return p.errf("expected %q", op)
	}
	return nil
}

// parseExpr parses src as one whole expression.
func parseExpr(src string, sub func(string) (*selectStmt, error), params map[string]bool) (expr, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks, src: src, sub: sub, params: params}
	e, err := p.expr()
	if err != nil {
		return nil, err
	}
	if p.peek().kind != tEOF {
		return nil, p.errf("unexpected text after expression")
	}
	return e, nil
}

// parseList parses comma-separated items with f until EOF.
func parseList[T any](src string, sub func(string) (*selectStmt, error), params map[string]bool, f func(p *parser) (T, error)) ([]T, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks, src: src, sub: sub, params: params}
	var out []T
	for {
		x, err := f(p)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
		if !p.acceptOp(",") {
			break
		}
	}
	if p.peek().kind != tEOF {
		return nil, p.errf("unexpected text")
	}
	return out, nil
}

func (p *parser) expr() (expr, error) { return p.or() }

func (p *parser) or() (expr, error) {
	l, err := p.and()
	for err == nil && p.acceptKw("OR") {
		var r expr
		if r, err = p.and(); err == nil {
			l = &exBin{"OR", l, r}
		}
	}
	return l, err
}

func (p *parser) and() (expr, error) {
	l, err := p.not()
	for err == nil && p.acceptKw("AND") {
		var r expr
		if r, err = p.not(); err == nil {
			l = &exBin{"AND", l, r}
		}
	}
	return l, err
}

func (p *parser) not() (expr, error) {
	if p.acceptKw("NOT") {
		x, err := p.not()
		return &exNot{x}, err
	}
	return p.cmp()
}

func (p *parser) cmp() (expr, error) {
	l, err := p.concat()
	if err != nil {
		return nil, err
	}
	t := p.peek()
	if t.kind == tOp {
		switch t.text {
		case "=", "==", "!=", "<>", "<", "<=", ">", ">=":
			p.pos++
			r, err := p.concat()
			op := t.text
			switch op {
			case "==":
				op = "="
			case "<>":
				op = "!="
			}
			return &exBin{op, l, r}, err
		}
		return l, nil
	}
	if p.acceptKw("IS") {
		not := p.acceptKw("NOT")
		for _, w := range []string{"MISSING", "NULL", "VALUED", "KNOWN"} {
			if p.acceptKw(w) {
				if w == "KNOWN" {
					w = "VALUED"
				}
				return &exIs{l, w, not}, nil
			}
		}
		return nil, p.errf("expected MISSING, NULL or VALUED after IS")
	}
	not := false
	save := p.pos
	if p.acceptKw("NOT") {
		not = true
	}
	switch {
	case p.acceptKw("LIKE"):
		r, err := p.concat()
		var e expr = &exBin{"LIKE", l, r}
		if not {
			e = &exNot{e}
		}
		return e, err
	case p.acceptKw("IN"):
		r, err := p.concat()
		return &exIn{l, r, not}, err
	case p.acceptKw("BETWEEN"):
		lo, err := p.concat()
		if err != nil {
			return nil, err
		}
		if !p.acceptKw("AND") {
			return nil, p.errf("expected AND in BETWEEN")
		}
		hi, err := p.concat()
		return &exBetween{l, lo, hi, not}, err
	}
	p.pos = save
	return l, nil
}

func (p *parser) concat() (expr, error) {
	l, err := p.add()
	for err == nil && p.acceptOp("||") {
		var r expr
		if r, err = p.add(); err == nil {
			l = &exBin{"||", l, r}
		}
	}
	return l, err
}

func (p *parser) add() (expr, error) {
	l, err := p.mul()
	for err == nil && (p.isOp("+") || p.isOp("-")) {
		op := p.next().text
		var r expr
		if r, err = p.mul(); err == nil {
			l = &exBin{op, l, r}
		}
	}
	return l, err
}

func (p *parser) mul() (expr, error) {
	l, err := p.unary()
	for err == nil && (p.isOp("*") || p.isOp("/") || p.isOp("%")) {
		op := p.next().text
		var r expr
		if r, err = p.unary(); err == nil {
			l = &exBin{op, l, r}
		}
	}
	return l, err
}

func (p *parser) unary() (expr, error) {
	if p.acceptOp("-") {
		x, err := p.unary()
		return &exNeg{x}, err
	}
	return p.postfix()
}

func (p *parser) postfix() (expr, error) {
	x, err := p.primary()
	for err == nil {
		switch {
		case p.isOp(".") && p.toks[p.pos+1].kind == tOp && p.toks[p.pos+1].text == "*":
			return x, nil // alias.* in a projection
		case p.acceptOp("."):
			t := p.next()
			if t.kind != tIdent && t.kind != tQuoted {
				p.pos--
				return nil, p.errf("expected a field name after '.'")
			}
			x = &exField{x, t.text}
		case p.acceptOp("["):
			var i expr
			if i, err = p.expr(); err == nil {
				err = p.expectOp("]")
				x = &exIndex{x, i}
			}
		default:
			return x, nil
		}
	}
	return nil, err
}

// knownFuncs are the functions the evaluator implements.
var knownFuncs = map[string]bool{
	"META": true, "IS_NUMBER": true, "IS_STRING": true, "IS_BOOLEAN": true, "IS_BOOL": true, "IS_ARRAY": true,
	"IS_OBJECT": true, "LOWER": true, "UPPER": true, "LENGTH": true, "ARRAY_LENGTH": true, "IFMISSING": true,
	"IFMISSINGORNULL": true, "TOSTRING": true, "TONUMBER": true, "NOW_MILLIS": true,
	"COUNT": true, "MIN": true, "MAX": true, "SUM": true, "AVG": true,
}

func (p *parser) primary() (expr, error) {
	t := p.next()
	switch t.kind {
	case tNumber:
		f, err := strconv.ParseFloat(t.text, 64)
		if err != nil {
			return nil, fmt.Errorf("bad number %q", t.text)
		}
		return &exLit{f}, nil
	case tString:
		return &exLit{t.text}, nil
	case tParam:
		if p.params != nil {
			p.params[t.text] = true
		}
		return &exParam{t.text}, nil
	case tQuoted:
		return &exIdent{t.text}, nil
	case tIdent:
		switch strings.ToUpper(t.text) {
		case "TRUE":
			return &exLit{true}, nil
		case "FALSE":
			return &exLit{false}, nil
		case "NULL":
			return &exLit{nil}, nil
		case "MISSING":
			return &exLit{missing}, nil
		case "CASE":
			return p.caseExpr()
		}
		if p.isOp("(") {
			p.pos++
			name := strings.ToUpper(t.text)
			if !knownFuncs[name] {
				return nil, fmt.Errorf("function %s is not supported by the cbtest query service", t.text)
			}
			f := &exFunc{name: name}
			if p.acceptOp("*") {
				f.star = true
			} else if !p.isOp(")") {
				for {
					a, err := p.expr()
					if err != nil {
						return nil, err
					}
					f.args = append(f.args, a)
					if !p.acceptOp(",") {
						break
					}
				}
			}
			return f, p.expectOp(")")
		}
		if isReserved(t.text) {
			p.pos--
			return nil, p.errf("unexpected keyword %s", t.text)
		}
		return &exIdent{t.text}, nil
	case tOp:
		switch t.text {
		case "(":
			if p.isKw("SELECT") {
				return p.subquery(t.pos)
			}
			x, err := p.expr()
			if err != nil {
				return nil, err
			}
			return x, p.expectOp(")")
		case "[":
			a := &exArray{}
			for !p.isOp("]") {
				e, err := p.expr()
				if err != nil {
					return nil, err
				}
				a.elems = append(a.elems, e)
				if !p.acceptOp(",") {
					break
				}
			}
			return a, p.expectOp("]")
		}
	}
	p.pos--
	return nil, p.errf("unexpected token")
}

// caseExpr parses a searched CASE after its keyword. The simple form
// (CASE x WHEN v ...) is not supported.
func (p *parser) caseExpr() (expr, error) {
	c := &exCase{}
	if !p.isKw("WHEN") {
		return nil, p.errf("only the searched CASE (CASE WHEN cond THEN value ... END) is supported")
	}
	for p.acceptKw("WHEN") {
		w, err := p.expr()
		if err != nil {
			return nil, err
		}
		if !p.acceptKw("THEN") {
			return nil, p.errf("expected THEN")
		}
		t, err := p.expr()
		if err != nil {
			return nil, err
		}
		c.whens, c.thens = append(c.whens, w), append(c.thens, t)
	}
	if p.acceptKw("ELSE") {
		e, err := p.expr()
		if err != nil {
			return nil, err
		}
		c.els = e
	}
	if !p.acceptKw("END") {
		return nil, p.errf("expected END")
	}
	return c, nil
}

// subquery takes the balanced parenthesised text and compiles it.
func (p *parser) subquery(open int) (expr, error) {
	depth := 1
	for depth > 0 {
		t := p.next()
		switch {
		case t.kind == tEOF:
			return nil, fmt.Errorf("unbalanced parenthesis at %d", open)
		case t.kind == tOp && t.text == "(":
			depth++
		case t.kind == tOp && t.text == ")":
			depth--
			if depth == 0 {
				text := p.src[open+1 : t.pos]
				if p.sub == nil {
					return nil, fmt.Errorf("subqueries are not supported here")
				}
				q, err := p.sub(text)
				if err != nil {
					return nil, err
				}
				return &exSubquery{text: strings.TrimSpace(text), q: q}, nil
			}
		}
	}
	return nil, fmt.Errorf("unbalanced parenthesis at %d", open)
}

var reserved = map[string]bool{
	"SELECT": true, "FROM": true, "WHERE": true, "AND": true, "OR": true, "NOT": true, "AS": true, "ORDER": true,
	"BY": true, "LIMIT": true, "OFFSET": true, "SET": true, "UNSET": true, "RETURNING": true, "RAW": true,
	"ELEMENT": true, "VALUE": true, "UPDATE": true, "DELETE": true, "INSERT": true, "UPSERT": true, "IS": true,
	"IN": true, "LIKE": true, "BETWEEN": true, "ASC": true, "DESC": true, "GROUP": true, "HAVING": true,
	"JOIN": true, "USE": true, "KEYS": true, "DISTINCT": true, "ON": true, "WITH": true, "LET": true,
	"CASE": true, "WHEN": true, "THEN": true, "ELSE": true, "END": true,
}

func isReserved(s string) bool { return reserved[strings.ToUpper(s)] }

// Canonical text, used to match query predicates against index keys and
// conditions. Paths rooted at alias lose that root.

func canon(e expr, alias string) string {
	switch x := e.(type) {
	case *exLit:
		b, _ := marshalValue(x.v)
		if _, ok := x.v.(missingT); ok {
			return "MISSING"
		}
		return string(b)
	case *exParam:
		return "$" + x.name
	case *exIdent:
		return "`" + x.name + "`"
	case *exField:
		if id, ok := x.x.(*exIdent); ok && alias != "" && id.name == alias {
			return "`" + x.name + "`"
		}
		return canon(x.x, alias) + ".`" + x.name + "`"
	case *exIndex:
		return canon(x.x, alias) + "[" + canon(x.i, alias) + "]"
	case *exBin:
		return "(" + canon(x.l, alias) + " " + x.op + " " + canon(x.r, alias) + ")"
	case *exNot:
		return "(NOT " + canon(x.x, alias) + ")"
	case *exNeg:
		return "(-" + canon(x.x, alias) + ")"
	case *exIs:
		n := ""
		if x.not {
			n = "NOT "
		}
		return "(" + canon(x.x, alias) + " IS " + n + x.what + ")"
	case *exIn:
		n := ""
		if x.not {
			n = "NOT "
		}
		return "(" + canon(x.x, alias) + " " + n + "IN " + canon(x.list, alias) + ")"
	case *exBetween:
		n := ""
		if x.not {
			n = "NOT "
		}
		return "(" + canon(x.x, alias) + " " + n + "BETWEEN " + canon(x.lo, alias) + " AND " + canon(x.hi, alias) + ")"
	case *exFunc:
		if x.name == "META" {
			return "META()"
		}
		if x.star {
			return x.name + "(*)"
		}
		var args []string
		for _, a := range x.args {
			args = append(args, canon(a, alias))
		}
		return x.name + "(" + strings.Join(args, ", ") + ")"
	case *exArray:
		var el []string
		for _, a := range x.elems {
			el = append(el, canon(a, alias))
		}
		return "[" + strings.Join(el, ", ") + "]"
	case *exSubquery:
		return "(" + x.text + ")"
	case *exCase:
		var b strings.Builder
		b.WriteString("(CASE")
		for i := range x.whens {
			b.WriteString(" WHEN " + canon(x.whens[i], alias) + " THEN " + canon(x.thens[i], alias))
		}
		if x.els != nil {
			b.WriteString(" ELSE " + canon(x.els, alias))
		}
		b.WriteString(" END)")
		return b.String()
	}
	return fmt.Sprintf("%T", e)
}

// refsKeyspace says whether e reads the document (as opposed to being
// computable from literals and parameters alone).
func refsKeyspace(e expr) bool {
	switch x := e.(type) {
	case *exIdent:
		return true
	case *exField:
		return refsKeyspace(x.x)
	case *exIndex:
		return refsKeyspace(x.x) || refsKeyspace(x.i)
	case *exBin:
		return refsKeyspace(x.l) || refsKeyspace(x.r)
	case *exNot:
		return refsKeyspace(x.x)
	case *exNeg:
		return refsKeyspace(x.x)
	case *exIs:
		return refsKeyspace(x.x)
	case *exIn:
		return refsKeyspace(x.x) || refsKeyspace(x.list)
	case *exBetween:
		return refsKeyspace(x.x) || refsKeyspace(x.lo) || refsKeyspace(x.hi)
	case *exFunc:
		if x.name == "META" {
			return true
		}
		for _, a := range x.args {
			if refsKeyspace(a) {
				return true
			}
		}
	case *exArray:
		for _, a := range x.elems {
			if refsKeyspace(a) {
				return true
			}
		}
	case *exCase:
		for _, a := range x.parts() {
			if refsKeyspace(a) {
				return true
			}
		}
	}
	return false
}

// parts are a CASE's expressions, in order.
func (x *exCase) parts() []expr {
	var ps []expr
	for i := range x.whens {
		ps = append(ps, x.whens[i], x.thens[i])
	}
	if x.els != nil {
		ps = append(ps, x.els)
	}
	return ps
}

func flattenBin(e expr, op string) []expr {
	if b, ok := e.(*exBin); ok && b.op == op {
		return append(flattenBin(b.l, op), flattenBin(b.r, op)...)
	}
	return []expr{e}
}

// Evaluation.

// row is the document a clause is evaluated against.
type row struct {
	alias string
	doc   any     // the document, or missing
	meta  *object // META(): id, cas, expiration, flags, type
}

type evalCtx struct {
	params map[string]any
	now    func() float64 // NOW_MILLIS
	// subquery runs a compiled SELECT (under the server lock).
	subquery func(q *selectStmt) ([]any, error)
	// aggs holds precomputed aggregate values, by node.
	aggs map[*exFunc]any
}

type evalError struct {
	code int
	msg  string
}

func (e *evalError) Error() string { return e.msg }

func (c *evalCtx) eval(e expr, r *row) (any, error) {
	switch x := e.(type) {
	case *exLit:
		return x.v, nil
	case *exParam:
		v, ok := c.params[x.name]
		if !ok {
			return nil, &evalError{5010, fmt.Sprintf("No value for named parameter $%s.", x.name)}
		}
		return v, nil
	case *exIdent:
		if r == nil {
			return missing, nil
		}
		if x.name == r.alias {
			return r.doc, nil
		}
		if o, ok := r.doc.(*object); ok {
			return o.get(x.name), nil
		}
		return missing, nil
	case *exField:
		v, err := c.eval(x.x, r)
		if err != nil {
			return nil, err
		}
		if o, ok := v.(*object); ok {
			return o.get(x.name), nil
		}
		if v == nil {
			return missing, nil
		}
		return missing, nil
	case *exIndex:
		v, err := c.eval(x.x, r)
		if err != nil {
			return nil, err
		}
		i, err := c.eval(x.i, r)
		if err != nil {
			return nil, err
		}
		switch arr := v.(type) {
		case []any:
			f, ok := toFloat(i)
			if !ok {
				return missing, nil
			}
			n := int(f)
			if n < 0 {
				n += len(arr)
			}
			if n < 0 || n >= len(arr) {
				return missing, nil
			}
			return arr[n], nil
		case *object:
			if s, ok := i.(string); ok {
				return arr.get(s), nil
			}
		}
		return missing, nil
	case *exBin:
		return c.evalBin(x, r)
	case *exNot:
		v, err := c.eval(x.x, r)
		if err != nil {
			return nil, err
		}
		if b, ok := v.(bool); ok {
			return !b, nil
		}
		if v == nil {
			return nil, nil
		}
		if _, ok := v.(missingT); ok {
			return missing, nil
		}
		return false, nil
	case *exNeg:
		v, err := c.eval(x.x, r)
		if err != nil {
			return nil, err
		}
		if f, ok := toFloat(v); ok {
			return -f, nil
		}
		return nil, nil
	case *exIs:
		v, err := c.eval(x.x, r)
		if err != nil {
			return nil, err
		}
		var res bool
		switch x.what {
		case "MISSING":
			res = v == any(missing)
		case "NULL":
			res = v == nil
		case "VALUED":
			res = v != any(missing) && v != nil
		}
		if x.not {
			res = !res
		}
		return res, nil
	case *exIn:
		v, err := c.eval(x.x, r)
		if err != nil {
			return nil, err
		}
		l, err := c.eval(x.list, r)
		if err != nil {
			return nil, err
		}
		if v == any(missing) || l == any(missing) {
			return missing, nil
		}
		arr, ok := l.([]any)
		if !ok || v == nil {
			return nil, nil
		}
		found := false
		for _, e := range arr {
			if collate(v, e) == 0 {
				found = true
				break
			}
		}
		return found != x.not, nil
	case *exBetween:
		v, err := c.eval(x.x, r)
		if err != nil {
			return nil, err
		}
		lo, err := c.eval(x.lo, r)
		if err != nil {
			return nil, err
		}
		hi, err := c.eval(x.hi, r)
		if err != nil {
			return nil, err
		}
		a, b := compare(">=", v, lo), compare("<=", v, hi)
		res := and3(a, b)
		if x.not {
			if bv, ok := res.(bool); ok {
				return !bv, nil
			}
		}
		return res, nil
	case *exFunc:
		return c.evalFunc(x, r)
	case *exArray:
		out := make([]any, 0, len(x.elems))
		for _, e := range x.elems {
			v, err := c.eval(e, r)
			if err != nil {
				return nil, err
			}
			if v == any(missing) {
				v = nil
			}
			out = append(out, v)
		}
		return out, nil
	case *exCase:
		for i, w := range x.whens {
			v, err := c.eval(w, r)
			if err != nil {
				return nil, err
			}
			if isTrue(v) {
				return c.eval(x.thens[i], r)
			}
		}
		if x.els == nil {
			return nil, nil
		}
		return c.eval(x.els, r)
	case *exSubquery:
		rows, err := c.subquery(x.q)
		if err != nil {
			return nil, err
		}
		return rows, nil
	}
	return nil, &evalError{3000, fmt.Sprintf("cannot evaluate %T", e)}
}

// and3/or3 are SQL++'s three-valued logic over MISSING, NULL and booleans.
func and3(a, b any) any {
	if a == false || b == false {
		return false
	}
	if a == any(missing) || b == any(missing) {
		return missing
	}
	if a == nil || b == nil {
		return nil
	}
	if a == true && b == true {
		return true
	}
	return nil
}

func or3(a, b any) any {
	if a == true || b == true {
		return true
	}
	if a == nil || b == nil {
		return nil
	}
	if a == any(missing) || b == any(missing) {
		return missing
	}
	if a == false && b == false {
		return false
	}
	return nil
}

func boolish(v any) any {
	switch x := v.(type) {
	case bool, missingT, nil:
		return x
	}
	return nil
}

// compare is a comparison operator; MISSING and NULL propagate, and
// values of different types compare by type order.
func compare(op string, a, b any) any {
	if a == any(missing) || b == any(missing) {
		return missing
	}
	if a == nil || b == nil {
		return nil
	}
	c := collate(a, b)
	switch op {
	case "=":
		return c == 0
	case "!=":
		return c != 0
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	case ">=":
		return c >= 0
	}
	return nil
}

func (c *evalCtx) evalBin(x *exBin, r *row) (any, error) {
	l, err := c.eval(x.l, r)
	if err != nil {
		return nil, err
	}
	if x.op == "AND" && l == false {
		return false, nil
	}
	if x.op == "OR" && l == true {
		return true, nil
	}
	rv, err := c.eval(x.r, r)
	if err != nil {
		return nil, err
	}
	switch x.op {
	case "AND":
		return and3(boolish(l), boolish(rv)), nil
	case "OR":
		return or3(boolish(l), boolish(rv)), nil
	case "=", "!=", "<", "<=", ">", ">=":
		return compare(x.op, l, rv), nil
	case "LIKE":
		ls, ok1 := l.(string)
		ps, ok2 := rv.(string)
		if !ok1 || !ok2 {
			if l == any(missing) || rv == any(missing) {
				return missing, nil
			}
			return nil, nil
		}
		return likeMatch(ls, ps), nil
	case "||":
		ls, ok1 := l.(string)
		rs, ok2 := rv.(string)
		if !ok1 || !ok2 {
			if l == any(missing) || rv == any(missing) {
				return missing, nil // as SQL++'s concatenation: MISSING before NULL
			}
			return nil, nil
		}
		return ls + rs, nil
	case "+", "-", "*", "/", "%":
		a, ok1 := toFloat(l)
		b, ok2 := toFloat(rv)
		if !ok1 || !ok2 {
			if l == any(missing) || rv == any(missing) {
				return missing, nil
			}
			return nil, nil
		}
		switch x.op {
		case "+":
			return a + b, nil
		case "-":
			return a - b, nil
		case "*":
			return a * b, nil
		case "/":
			if b == 0 {
				return nil, nil
			}
			return a / b, nil
		default:
			if b == 0 {
				return nil, nil
			}
			return math.Mod(a, b), nil
		}
	}
	return nil, &evalError{3000, "unknown operator " + x.op}
}

// likeMatch implements LIKE with % and _.
func likeMatch(s, pat string) bool {
	if pat == "" {
		return s == ""
	}
	switch pat[0] {
	case '%':
		for i := 0; i <= len(s); i++ {
			if likeMatch(s[i:], pat[1:]) {
				return true
			}
		}
		return false
	case '_':
		return s != "" && likeMatch(s[1:], pat[1:])
	case '\\':
		if len(pat) > 1 {
			return s != "" && s[0] == pat[1] && likeMatch(s[1:], pat[2:])
		}
	}
	return s != "" && s[0] == pat[0] && likeMatch(s[1:], pat[1:])
}

func (c *evalCtx) evalFunc(f *exFunc, r *row) (any, error) {
	switch f.name {
	case "COUNT", "MIN", "MAX", "SUM", "AVG":
		if v, ok := c.aggs[f]; ok {
			return v, nil
		}
		return nil, &evalError{3000, f.name + " is only supported in a SELECT with FROM"}
	}
	if f.name == "META" {
		if r == nil || r.meta == nil {
			return missing, nil
		}
		return r.meta, nil
	}
	if f.name == "NOW_MILLIS" {
		return c.now(), nil
	}
	args := make([]any, len(f.args))
	for i, a := range f.args {
		v, err := c.eval(a, r)
		if err != nil {
			return nil, err
		}
		args[i] = v
	}
	if len(args) == 0 {
		return nil, &evalError{3000, f.name + " needs an argument"}
	}
	a := args[0]
	if f.name == "IFMISSING" || f.name == "IFMISSINGORNULL" {
		for _, v := range args {
			if v != any(missing) && (f.name == "IFMISSING" || v != nil) {
				return v, nil
			}
		}
		return nil, nil
	}
	if a == any(missing) {
		return missing, nil
	}
	if a == nil {
		return nil, nil
	}
	switch f.name {
	case "IS_NUMBER":
		_, ok := toFloat(a)
		return ok, nil
	case "IS_STRING":
		_, ok := a.(string)
		return ok, nil
	case "IS_BOOLEAN", "IS_BOOL":
		_, ok := a.(bool)
		return ok, nil
	case "IS_ARRAY":
		_, ok := a.([]any)
		return ok, nil
	case "IS_OBJECT":
		_, ok := a.(*object)
		return ok, nil
	case "LOWER", "UPPER":
		s, ok := a.(string)
		if !ok {
			return nil, nil
		}
		if f.name == "LOWER" {
			return strings.ToLower(s), nil
		}
		return strings.ToUpper(s), nil
	case "LENGTH":
		if s, ok := a.(string); ok {
			return float64(len(s)), nil
		}
		return nil, nil
	case "ARRAY_LENGTH":
		if arr, ok := a.([]any); ok {
			return float64(len(arr)), nil
		}
		return nil, nil
	case "TOSTRING":
		switch v := a.(type) {
		case string:
			return v, nil
		case bool:
			return strconv.FormatBool(v), nil
		}
		if fl, ok := toFloat(a); ok {
			b, _ := marshalValue(fl)
			return string(b), nil
		}
		return nil, nil
	case "TONUMBER":
		switch v := a.(type) {
		case string:
			fl, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return nil, nil
			}
			return fl, nil
		case bool:
			if v {
				return 1.0, nil
			}
			return 0.0, nil
		}
		if fl, ok := toFloat(a); ok {
			return fl, nil
		}
		return nil, nil
	}
	return nil, &evalError{3000, "function " + f.name + " is not supported"}
}

// walk calls f on e and every sub-expression (not into subqueries).
func walk(e expr, f func(expr)) {
	f(e)
	switch x := e.(type) {
	case *exField:
		walk(x.x, f)
	case *exIndex:
		walk(x.x, f)
		walk(x.i, f)
	case *exBin:
		walk(x.l, f)
		walk(x.r, f)
	case *exNot:
		walk(x.x, f)
	case *exNeg:
		walk(x.x, f)
	case *exIs:
		walk(x.x, f)
	case *exIn:
		walk(x.x, f)
		walk(x.list, f)
	case *exBetween:
		walk(x.x, f)
		walk(x.lo, f)
		walk(x.hi, f)
	case *exFunc:
		for _, a := range x.args {
			walk(a, f)
		}
	case *exArray:
		for _, a := range x.elems {
			walk(a, f)
		}
	case *exCase:
		for _, a := range x.parts() {
			walk(a, f)
		}
	}
}
