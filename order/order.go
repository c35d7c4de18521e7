package order

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"
)

// Collection names, as in the sample's bucket `orders`, scope `_default`.
const (
	Inbound    = "inbound"    // one document per customer order
	Retry      = "retry"      // one retry document per failed confirmation, plus ControlKey
	DeadLetter = "deadletter" // confirmations given up on, until redriven
)

// ControlKey is the document in Retry whose existence arms the retry timer.
const ControlKey = "allow_retrys"

// StatusPaid is the payment status that triggers a confirmation.
const StatusPaid = "paid"

// FarFuture is how far ahead a retry's due time stops being plausible
// (seconds taken for milliseconds, say): the watcher warns about one.
const FarFuture = 366 * 24 * time.Hour

// TypeConfirmation names the kind of notification a retry document is for.
const TypeConfirmation = "confirmation"

// ErrMalformed marks a document that cannot be understood. It is never
// retried: the same bytes will fail the same way.
var ErrMalformed = errors.New("malformed document")

// Order is the part of an order document that ordermail decides on. The
// document itself is kept as bytes so that it is sent and written back whole.
type Order struct {
	Email                 string `json:"email"`
	PaymentStatus         string `json:"paymentStatus"`
	ConfirmationEmailSent bool   `json:"confirmationEmailSent"`
}

// DecodeOrder reads an order document. A document that is not a JSON object
// or whose known fields have the wrong types is ErrMalformed, with the reason.
func DecodeOrder(raw []byte) (Order, error) {
	var o Order
	if err := decodeObject(raw, &o); err != nil {
		return Order{}, err
	}
	return o, nil
}

// HasEmail says whether the order names an address to send to: a blank
// one is none.
func (o Order) HasEmail() bool { return strings.TrimSpace(o.Email) != "" }

// knownPaymentStates are the payment states order systems commonly write;
// any other is worth a warning, since a typo ("PAID", " paid") would
// otherwise silently keep a paid order from its confirmation.
var knownPaymentStates = map[string]bool{
	"": true, "initiated": true, "pending": true, "authorized": true, "authorised": true, StatusPaid: true,
	"failed": true, "declined": true, "cancelled": true, "canceled": true, "refunded": true,
	"partially_refunded": true, "expired": true, "voided": true, "chargeback": true,
}

// UnknownPaymentState says whether the order's payment state is not one
// of the usual ones.
func (o Order) UnknownPaymentState() bool { return !knownPaymentStates[o.PaymentStatus] }

// MarkConfirmed returns the order document with confirmationEmailSent set to
// true, every other field kept as it was.
func MarkConfirmed(raw []byte) ([]byte, error) {
	return setField(raw, "confirmationEmailSent", true)
}

// MarkDecodedConfirmed is MarkConfirmed of a document DecodeOrder accepted,
// without the checks DecodeOrder made already: the watcher marks every order
// it confirms, and checking it again was 3.5% of its CPU in the CPU-bound
// benchmark.
func MarkDecodedConfirmed(raw []byte) []byte {
	return splice(bytes.TrimSpace(raw), "confirmationEmailSent", []byte("true"))
}

// SetFireRetry returns the retry document with fireRetry set to true, every
// other field kept as it was: the timer's flag.
func SetFireRetry(raw []byte) ([]byte, error) {
	return setField(raw, "fireRetry", true)
}

// SetPaymentStatus returns the order document with paymentStatus replaced.
func SetPaymentStatus(raw []byte, status string) ([]byte, error) {
	return setField(raw, "paymentStatus", status)
}

// setField sets a top-level field of the JSON object raw, editing the bytes
// in place: every other field stays as it was, byte for byte, and no map is
// decoded and encoded again (this runs for every confirmed order).
func setField(raw []byte, name string, value any) ([]byte, error) {
	obj := bytes.TrimSpace(raw)
	if err := checkObject(obj); err != nil {
		return nil, err
	}
	v, err := json.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", name, err)
	}
	return splice(obj, name, v), nil
}

// splice sets the top-level member name of obj, a JSON object checkObject
// accepts, to the JSON value v.
func splice(obj []byte, name string, v []byte) []byte {
	out := make([]byte, 0, len(obj)+len(name)+len(v)+4)
	if start, end, ok := memberValue(obj, name); ok {
		return append(append(append(out, obj[:start]...), v...), obj[end:]...)
	}
	closing := len(obj) - 1 // a valid object ends with its brace
	out = append(out, obj[:closing]...)
	if len(bytes.TrimSpace(obj[1:closing])) > 0 {
		out = append(out, ',')
	}
	n, _ := json.Marshal(name)
	out = append(append(append(out, n...), ':'), v...)
	return append(out, '}')
}

// checkObject is decodeObject's checks without decoding: a JSON object, in
// UTF-8, with no name twice.
func checkObject(obj []byte) error {
	if len(obj) == 0 || obj[0] != '{' {
		return fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	if !utf8.Valid(obj) {
		return fmt.Errorf("%w: not valid UTF-8", ErrMalformed)
	}
	if !json.Valid(obj) {
		var v any
		return fmt.Errorf("%w: %v", ErrMalformed, json.Unmarshal(obj, &v)) // for the reason
	}
	if dup, _, _ := checkNames(obj, nil); dup != "" {
		return fmt.Errorf("%w: field %s appears more than once", ErrMalformed, dup)
	}
	return nil
}

// memberValue finds the value of the top-level member name in the valid
// JSON object obj: obj[start:end].
func memberValue(obj []byte, name string) (start, end int, ok bool) {
	eachName(obj, func(quoted []byte, after int) bool {
		if !nameIs(quoted, name) {
			return true
		}
		k := after + bytes.IndexByte(obj[after:], ':') + 1
		for k < len(obj) && isSpace(obj[k]) {
			k++
		}
		start, end, ok = k, valueEnd(obj, k), true
		return false
	})
	return start, end, ok
}

// eachName calls fn with each top-level member name of the JSON object obj,
// quoted as it stands there, and the index just past its closing quote,
// until fn returns false. It only scans: on bad syntax what it finds does
// not matter (a decoder or json.Valid judges the syntax).
func eachName(obj []byte, fn func(quoted []byte, after int) bool) {
	depth, expectName := 0, false
	for i := 0; i < len(obj); i++ {
		switch c := obj[i]; c {
		case '"':
			j := stringEnd(obj, i)
			if depth == 1 && expectName && j < len(obj) {
				expectName = false
				if !fn(obj[i:j+1], j+1) {
					return
				}
			}
			i = j
		case '{', '[':
			depth++
			expectName = depth == 1 && c == '{'
		case '}', ']':
			depth--
		case ',':
			expectName = depth == 1
		}
	}
}

// stringEnd returns the index of the quote that closes the string opening
// at obj[i].
func stringEnd(obj []byte, i int) int {
	j := i + 1
	for ; j < len(obj) && obj[j] != '"'; j++ {
		if obj[j] == '\\' {
			j++
		}
	}
	return j
}

// nameIs says whether the quoted member name is name, without a copy when
// it has no escape.
func nameIs(quoted []byte, name string) bool {
	if bytes.IndexByte(quoted, '\\') < 0 {
		return string(quoted[1:len(quoted)-1]) == name
	}
	return memberName(quoted) == name
}

func memberName(quoted []byte) string {
	if bytes.IndexByte(quoted, '\\') < 0 {
		return string(quoted[1 : len(quoted)-1])
	}
	var s string
	if json.Unmarshal(quoted, &s) != nil {
		return string(quoted) // a bad escape: the decoder reports it
	}
	return s
}

// valueEnd returns the index just past the value starting at obj[k].
func valueEnd(obj []byte, k int) int {
	switch obj[k] {
	case '"':
		return stringEnd(obj, k) + 1
	case '{', '[':
		depth := 0
		for i := k; i < len(obj); i++ {
			switch obj[i] {
			case '"':
				i = stringEnd(obj, i)
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(obj)
	}
	i := k
	for i < len(obj) && obj[i] != ',' && obj[i] != '}' && !isSpace(obj[i]) {
		i++
	}
	return i
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// RetryDoc is the retry document, stored in Retry under the order's key.
// The first five fields are the sample's; documents the sample's functions
// wrote (without nextAttemptAt) are retried once ts is a quantum old.
type RetryDoc struct {
	Type      string `json:"type"`
	DocID     string `json:"docId"`
	Attempt   int    `json:"attempt"` // attempts made in the current budget
	TS        int64  `json:"ts"`      // milliseconds since the epoch of the last attempt
	FireRetry bool   `json:"fireRetry"`

	NextAttemptAt  int64  `json:"nextAttemptAt,omitempty"`  // ms; when the timer flags it
	FirstAttemptAt int64  `json:"firstAttemptAt,omitempty"` // ms
	LastStatus     int    `json:"lastStatus,omitempty"`     // HTTP status of the last request that failed, 0: no answer
	LastError      string `json:"lastError,omitempty"`      // why the last request failed
	// HeldBack says why the last try made no request (the circuit breaker
	// open, the send rate limit, a settings file the mailer could not
	// use); empty once a request is made. lastStatus and lastError stay
	// those of the last request: during an outage they say what the email
	// service answered, not that the breaker held the sends back.
	HeldBack     string `json:"heldBack,omitempty"`
	RedriveCount int    `json:"redriveCount,omitempty"`
	// RedrivenFrom is the deadAt of the dead letter a redrive made this
	// document of: a redrive that finds it beside that same dead letter
	// (the other's second write not made yet, or lost to a crash) leaves it.
	RedrivenFrom int64 `json:"redrivenFrom,omitempty"`
	// IdempotencyKey is the key of the first attempt, kept for every later
	// one. Empty in the sample's documents: the order's current one is used.
	IdempotencyKey string `json:"idempotencyKey,omitempty"`
}

// NotAttemptedPrefix begins the lastError of a send held back without a
// request, as documents written before heldBack existed have it.
const NotAttemptedPrefix = "not attempted: "

// Why says, in a few words from a short list, why the retry waits: "HTTP
// 503" (the last request's answer), "no answer" (the last request got
// none), "held back" (no request was made yet: the circuit breaker, the
// rate limit or a settings file held every try back); "" when the
// document records no failure (the sample's). The status counts retries
// by it, so it must stay a short list.
func (r RetryDoc) Why() string {
	switch {
	case r.LastStatus > 0:
		return "HTTP " + strconv.Itoa(r.LastStatus)
	case r.LastError != "" && !strings.HasPrefix(r.LastError, NotAttemptedPrefix):
		return WhyNoAnswer
	case r.HeldBack != "" || r.LastError != "":
		return WhyHeldBack
	}
	return ""
}

// DueAt is when the sweep takes r as due: its nextAttemptAt, or for the
// sample's documents, which have none, a quantum after ts (the sweep wants
// ts strictly before now less the quantum: Due).
func (r RetryDoc) DueAt(quantum time.Duration) time.Time {
	if r.NextAttemptAt != 0 {
		return time.UnixMilli(r.NextAttemptAt)
	}
	return time.UnixMilli(r.TS).Add(quantum)
}

// Due says whether the sweep takes r as due at now, flagged or not: the
// rule both stores' sweeps apply on their indexes (nextAttemptAt <= now,
// or without one ts < now - quantum), for what shows it to a person. A
// document with neither is never due: the sweeps want a number in one.
func (r RetryDoc) Due(now time.Time, quantum time.Duration) bool {
	if r.NextAttemptAt != 0 {
		return r.NextAttemptAt <= now.UnixMilli()
	}
	return r.TS != 0 && r.TS < now.Add(-quantum).UnixMilli()
}

// Reasons Why gives besides an HTTP status.
const (
	WhyNoAnswer = "no answer"
	WhyHeldBack = "held back"
)

// Incr adds one to a counter, stopping at the largest int instead of
// wrapping around to a negative number.
func Incr(n int) int {
	if n >= math.MaxInt {
		return math.MaxInt
	}
	return n + 1
}

// Failed is the document after another failed attempt: the sample's
// attempt+1, fireRetry=false, ts=now. On RetryDoc{Type, DocID} it is the
// document function 1 writes after a first failed send.
func (r RetryDoc) Failed(now time.Time) RetryDoc {
	if r.FirstAttemptAt == 0 { // the sample's documents: ts is the earliest known
		r.FirstAttemptAt = r.TS
	}
	r.Attempt = Incr(r.Attempt)
	r.FireRetry = false
	r.TS = now.UnixMilli()
	if r.FirstAttemptAt == 0 {
		r.FirstAttemptAt = r.TS
	}
	return r
}

// Redriven is the retry document that brings a dead letter back: a fresh
// attempt budget, due now.
func Redriven(d DeadLetterDoc, now time.Time) RetryDoc {
	ms := now.UnixMilli()
	return RetryDoc{Type: TypeConfirmation, DocID: d.DocID, TS: ms, FireRetry: true, NextAttemptAt: ms,
		FirstAttemptAt: d.FirstAttemptAt, LastStatus: d.LastStatus, LastError: d.LastError,
		RedriveCount: Incr(d.RedriveCount), RedrivenFrom: d.DeadAt, IdempotencyKey: d.IdempotencyKey}
}

// DeadLetterDoc records a confirmation given up on, stored in DeadLetter
// under the order's key. The order itself is left unconfirmed.
type DeadLetterDoc struct {
	Type           string `json:"type"`
	DocID          string `json:"docId"`
	Reason         string `json:"reason"`
	LastStatus     int    `json:"lastStatus"`
	LastError      string `json:"lastError"`
	Attempts       int    `json:"attempts"`
	FirstAttemptAt int64  `json:"firstAttemptAt,omitempty"` // ms; 0 when never attempted
	LastAttemptAt  int64  `json:"lastAttemptAt,omitempty"`  // ms
	DeadAt         int64  `json:"deadAt"`                   // ms
	RedriveCount   int    `json:"redriveCount"`
	IdempotencyKey string `json:"idempotencyKey,omitempty"` // of the attempts made, for a redrive
}

// DecodeDeadLetter reads a dead-letter document.
func DecodeDeadLetter(raw []byte) (DeadLetterDoc, error) {
	var d DeadLetterDoc
	if err := decodeObject(raw, &d); err != nil {
		return DeadLetterDoc{}, err
	}
	if d.DocID == "" {
		return DeadLetterDoc{}, fmt.Errorf("%w: docId is missing or empty", ErrMalformed)
	}
	return d, nil
}

// Encode returns the document's JSON.
func (d DeadLetterDoc) Encode() []byte { return mustMarshal(d) }

// DecodeRetryDoc reads a retry document and checks what the retry needs.
func DecodeRetryDoc(raw []byte) (RetryDoc, error) {
	var r RetryDoc
	if err := decodeObject(raw, &r); err != nil {
		return RetryDoc{}, err
	}
	if r.DocID == "" {
		return RetryDoc{}, fmt.Errorf("%w: docId is missing or empty", ErrMalformed)
	}
	if r.Attempt < 0 {
		return RetryDoc{}, fmt.Errorf("%w: attempt %d is negative", ErrMalformed, r.Attempt)
	}
	if r.RedriveCount < 0 {
		return RetryDoc{}, fmt.Errorf("%w: redriveCount %d is negative", ErrMalformed, r.RedriveCount)
	}
	if r.NextAttemptAt == 0 || bytes.Contains(raw, []byte("null")) {
		if err := checkDueTimes(raw, r.FireRetry); err != nil {
			return RetryDoc{}, err
		}
	}
	return r, nil
}

// checkDueTimes refuses a retry document that no sweep would ever find due,
// where the decoder took an absent or null value for 0 or false: a
// fireRetry that is null (Couchbase's sweep finds a retry whose fireRetry
// is missing or not true, and null is neither), a nextAttemptAt that is
// null (neither store's sweep reads it as absent alike: Couchbase's index
// of the sample's documents holds those without one), or, unflagged and
// without nextAttemptAt, a ts that is missing or null. Decoded again, on
// the three fields, only for documents without a nextAttemptAt or with a
// null somewhere.
func checkDueTimes(raw []byte, flagged bool) error {
	var d struct {
		FireRetry     json.RawMessage `json:"fireRetry"`
		NextAttemptAt json.RawMessage `json:"nextAttemptAt"`
		TS            json.RawMessage `json:"ts"`
	}
	if json.Unmarshal(raw, &d) != nil {
		return nil // decoded once already: not ours to judge
	}
	switch {
	case string(d.FireRetry) == "null":
		return fmt.Errorf("%w: fireRetry is null; leave it out (the sweep sets it) or give true or false", ErrMalformed)
	case len(d.NextAttemptAt) > 0 && string(d.NextAttemptAt) == "null":
		return fmt.Errorf("%w: nextAttemptAt is null; leave it out (due a quantum after ts) or give a time in milliseconds", ErrMalformed)
	case len(d.NextAttemptAt) == 0 && !flagged && (len(d.TS) == 0 || string(d.TS) == "null"):
		return fmt.Errorf("%w: neither nextAttemptAt nor ts says when the retry is due", ErrMalformed)
	}
	return nil
}

// Encode returns the document's JSON.
func (r RetryDoc) Encode() []byte { return mustMarshal(r) }

// mustMarshal encodes our own structs of strings and numbers, which always
// encode.
func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// IdempotencyKey is the key every attempt at one order's confirmation
// sends, so that the email service can drop a replayed request. incarnation
// is the order document's (store.Doc.Incarnation): it changes only when the
// key is created anew, so an order deleted and created again under the same
// key gets a new idempotency key, while every attempt at one order, and a
// replay after a crash, sends the same one. Retry documents keep the key of
// the first attempt, so later attempts send it whatever happens to the
// incarnation.
func IdempotencyKey(orderKey string, incarnation uint64) string {
	k := TypeConfirmation + ":" + orderKey
	if incarnation != 0 {
		k += "@" + strconv.FormatUint(incarnation, 10)
	}
	return k
}

// IsKeyOf says whether idempotencyKey was made for the order orderKey (by
// IdempotencyKey, of any incarnation): "confirmation:o@5" is order o@5's
// (no incarnation) and order o's (incarnation 5), never order o@x's.
func IsKeyOf(idempotencyKey, orderKey string) bool {
	rest, ok := strings.CutPrefix(idempotencyKey, IdempotencyKey(orderKey, 0))
	if !ok || rest == "" {
		return ok
	}
	inc, ok := strings.CutPrefix(rest, "@")
	n, err := strconv.ParseUint(inc, 10, 64)
	return ok && err == nil && n != 0 && strconv.FormatUint(n, 10) == inc // as IdempotencyKey writes it
}

// OfAnotherIncarnation says whether idempotency key k was made for another
// order than the one of incarnation inc under key (one deleted since, and
// created again): known only where the store keeps incarnations (inc != 0).
func OfAnotherIncarnation(k, key string, inc uint64) bool {
	if inc == 0 {
		return false
	}
	rest, ok := strings.CutPrefix(k, IdempotencyKey(key, 0)+"@")
	return ok && rest != strconv.FormatUint(inc, 10)
}

// HoldsBack says whether dead letter d holds back the confirmation of the
// order of incarnation inc under key, so that only a redrive sends it: a
// dead letter of what an edit of the order mends does not (the edit
// sends), nor one of an order deleted since (this one is another).
func (d DeadLetterDoc) HoldsBack(key string, inc uint64) bool {
	return !d.ClearedByOrderChange() && !OfAnotherIncarnation(d.IdempotencyKey, key, inc)
}

// OrderKeyOf returns the order key an idempotency key was made for.
func OrderKeyOf(idempotencyKey string) string {
	k := strings.TrimPrefix(idempotencyKey, TypeConfirmation+":")
	if i := strings.LastIndexByte(k, '@'); i >= 0 {
		if _, err := strconv.ParseUint(k[i+1:], 10, 64); err == nil {
			return k[:i]
		}
	}
	return k
}

func decodeObject(raw []byte, into any) error {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	// JSON is UTF-8 (RFC 8259); the decoder would quietly replace bad bytes,
	// in an email address among others.
	if !utf8.Valid(trimmed) {
		return fmt.Errorf("%w: not valid UTF-8", ErrMalformed)
	}
	// Decoders disagree on a repeated name (Go keeps the last, SQLite's
	// JSON functions the first): one reading everywhere means none.
	// Go's decoders also match a field's name in any case, the sample's
	// JavaScript and N1QL in its own: {"PAYMENTSTATUS":"paid"} is paid to
	// one and not to the others, and beside "paymentStatus" it decides.
	dup, miscased, field := checkNames(trimmed, fieldsFor(into))
	if dup != "" {
		return fmt.Errorf("%w: field %s appears more than once", ErrMalformed, dup)
	}
	if miscased != "" {
		return fmt.Errorf("%w: field %s is %s in another case", ErrMalformed, miscased, field)
	}
	if fastUnmarshal(trimmed, into) {
		return nil
	}
	// encoding/json says why, and is the authority should the two decoders
	// ever disagree.
	reflect.ValueOf(into).Elem().SetZero()
	if err := json.Unmarshal(trimmed, into); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return fmt.Errorf("%w: field %s is a JSON %s, want %s", ErrMalformed, typeErr.Field, typeErr.Value, typeErr.Type)
		}
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// fastUnmarshal decodes data into into with goccy/go-json: DecodeOrder, its
// checks included, takes 0.45-0.57µs with it against 2.2µs with
// encoding/json (BenchmarkDecodeOrder), and each order is decoded three
// times on its way, by the order system's write, the watcher and the
// outcome's write. It says whether it succeeded; a panic counts as a
// failure, so that no document can stop the watcher. FuzzDecodersAgree pins
// that it accepts, and decodes to, what encoding/json does.
func fastUnmarshal(data []byte, into any) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return gojson.Unmarshal(data, into) == nil
}

// The JSON names of the fields of the documents read for every change.
var (
	orderFields      = jsonFields(reflect.TypeFor[Order]())
	retryFields      = jsonFields(reflect.TypeFor[RetryDoc]())
	deadLetterFields = jsonFields(reflect.TypeFor[DeadLetterDoc]())
)

// fieldsFor are the JSON names of the fields of the struct into points to.
func fieldsFor(into any) [][]byte {
	switch into.(type) {
	case *Order:
		return orderFields
	case *RetryDoc:
		return retryFields
	case *DeadLetterDoc:
		return deadLetterFields
	}
	return jsonFields(reflect.TypeOf(into).Elem())
}

// jsonFields are the JSON names of struct type t's fields, read once.
func jsonFields(t reflect.Type) [][]byte {
	if f, ok := fieldsOf.Load(t); ok {
		return f.([][]byte)
	}
	var names [][]byte
	if t.Kind() == reflect.Struct {
		for i := range t.NumField() {
			if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
				names = append(names, []byte(name))
			}
		}
	}
	fieldsOf.Store(t, names)
	return names
}

var fieldsOf sync.Map // reflect.Type -> [][]byte

// AmbiguousNames says whether the JSON object raw has a top-level name
// twice, or one of fields in another case: documents that readers
// disagree on (Go matches names in any case and keeps a repeated one's
// last value; N1QL and SQLite do neither), which only the reader that
// decides may judge.
func AmbiguousNames(raw []byte, fields ...string) bool {
	fs := make([][]byte, len(fields))
	for i, f := range fields {
		fs[i] = []byte(f)
	}
	dup, miscased, _ := checkNames(bytes.TrimSpace(raw), fs)
	return dup != "" || miscased != ""
}

// checkNames returns the first top-level name that appears twice in the
// JSON object raw (dup), else the first that is one of fields in another
// case (miscased), and that field.
// An order has a handful of names, none escaped: they are compared as they
// stand, with no copy and no map (this runs for every order, twice).
func checkNames(raw []byte, fields [][]byte) (dup, miscased, field string) {
	var few [16][]byte
	plain := few[:0] // names without escapes, while there are few
	var seen map[string]bool
	eachName(raw, func(quoted []byte, _ int) bool {
		if miscased == "" && len(fields) > 0 {
			n := quoted[1 : len(quoted)-1]
			if bytes.IndexByte(n, '\\') >= 0 {
				n = []byte(memberName(quoted))
			}
			for _, f := range fields {
				if !bytes.Equal(n, f) && bytes.EqualFold(n, f) {
					miscased, field = string(n), string(f)
				}
			}
		}
		if seen == nil && len(plain) < len(few) && bytes.IndexByte(quoted, '\\') < 0 {
			for _, p := range plain {
				if bytes.Equal(p, quoted) {
					dup = memberName(quoted)
					return false
				}
			}
			plain = append(plain, quoted)
			return true
		}
		if seen == nil {
			seen = make(map[string]bool, 2*len(few))
			for _, p := range plain {
				seen[memberName(p)] = true
			}
		}
		name := memberName(quoted)
		if seen[name] {
			dup = name
			return false
		}
		seen[name] = true
		return true
	})
	return dup, miscased, field
}

// ClearedByOrderChange says whether the dead letter was about the order's
// content (malformed, no email address, too large) or its absence (a retry
// whose order was missing), so that a corrected order, or one created
// (again), is sent without a redrive. Dead letters about sending need a
// redrive.
func (d DeadLetterDoc) ClearedByOrderChange() bool {
	switch d.Reason {
	case ReasonMalformedOrder, ReasonNoEmail, ReasonTooLarge, ReasonOrderMissing:
		return true
	}
	return false
}
