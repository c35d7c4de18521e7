package mockmail

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ordermail/ordermail/internal/webhook"
	"golang.org/x/net/http/httpguts"
)

// Config of the mock.
type Config struct {
	FailRate   float64       // share of first deliveries answered with FailStatus, 0 to 1
	FailStatus int           // default 503; the sample's mock answers 406, a permanent error by default
	Latency    time.Duration // added before every answer
	Seed       uint64        // 0: a random seed
	// FailOnce applies FailRate to a key's first request only: a retry is
	// answered 200. Without it a retry fails as often as a first send.
	FailOnce bool
	// HoldEvery, when set, answers nothing to the first request of every
	// HoldEvery-th key seen: the request is held until the sender gives up,
	// as a service that never answers some requests; the key's later
	// requests are answered as usual.
	HoldEvery int
	// Script, when set, decides the answer to the n-th request (from 1)
	// carrying key; a zero Reply falls back to the random behaviour.
	Script func(key string, n int) Reply
	// Now is the clock of the timings; default time.Now. Signature
	// timestamps are checked against the real clock, as the library does.
	Now func() time.Time

	// AuthValue, when set, is the exact value AuthHeader must carry, as a
	// real email API wants an API key; other requests are answered 401.
	AuthValue string
	// AuthHeader names the header of the credentials; default Authorization.
	AuthHeader string
	// Signing, when set, are the secrets a request's Standard Webhooks
	// signature must verify with; its webhook-id must then equal its
	// Idempotency-Key, the contract ordermail promises.
	Signing *webhook.Secrets
}

// SendPath is where confirmations are posted.
const SendPath = "/sendConfirmation"

// Reply is a scripted answer.
type Reply struct {
	Status     int
	RetryAfter string // Retry-After header value
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	// Written so that NaN, which every comparison fails, is out of range.
	if !(c.FailRate >= 0 && c.FailRate <= 1) {
		return fmt.Errorf("fail-rate: %v is not between 0 and 1", c.FailRate)
	}
	if c.FailStatus != 0 && (c.FailStatus < 300 || c.FailStatus > 599) {
		// A 1xx or 2xx is a delivery to the client: not a failure.
		return fmt.Errorf("fail-status: %d is not an HTTP status of a failure (300-599)", c.FailStatus)
	}
	if c.Latency < 0 {
		return fmt.Errorf("latency: %s is negative", c.Latency)
	}
	if c.HoldEvery < 0 {
		return fmt.Errorf("hold-every: %d is negative", c.HoldEvery)
	}
	if c.AuthHeader != "" && !httpguts.ValidHeaderFieldName(c.AuthHeader) {
		return fmt.Errorf("auth-header: %q is not an HTTP header name", c.AuthHeader)
	}
	// Never the value in the error: it is a secret.
	if !httpguts.ValidHeaderFieldValue(c.AuthValue) {
		return errors.New("auth value: holds a character an HTTP header value cannot")
	}
	if c.Signing != nil && c.Signing.Len() == 0 {
		return errors.New("signing: no secret")
	}
	return nil
}

// Stats is what GET /stats serves.
type Stats struct {
	Requests          int `json:"requests"`          // every POST /sendConfirmation
	Deliveries        int `json:"deliveries"`        // distinct keys answered 200
	Failures          int `json:"failures"`          // answers other than 200 to requests let in
	DuplicateRequests int `json:"duplicateRequests"` // a key seen again after its 200
	UnkeyedRequests   int `json:"unkeyedRequests"`   // requests let in without Idempotency-Key
	// Requests not let in, which leave no trace in the keys' state: 401s
	// for credentials or signature, and of those the signature's.
	Unauthorized  int `json:"unauthorized"`
	BadSignatures int `json:"badSignatures"`
	Traced        int `json:"traced"` // requests with a valid W3C traceparent header
	Held          int `json:"held"`   // requests answered nothing (HoldEvery), counted in Requests
}

// Timings is what GET /timings serves: when each key was first requested
// and delivered, and how long senders waited after a failure before they
// tried a key again. Times are Unix nanoseconds on the mock's clock.
type Timings struct {
	// Keys maps every idempotency key seen to [first request, delivery,
	// requests not answered 200]; delivery is 0 while the key is not
	// delivered. The third counts failure answers and requests held
	// unanswered (HoldEvery): each made its sender wait before it tried
	// again.
	Keys      map[string][3]int64 `json:"keys"`
	RetryGaps GapSummary          `json:"retryGaps"`
}

// GapSummary sums up the gaps between a failure answer and the next request
// carrying the same key, in milliseconds; the figures are absent when
// Count is 0.
type GapSummary struct {
	Count  int     `json:"count"`
	MinMs  float64 `json:"min,omitempty"`
	MeanMs float64 `json:"mean,omitempty"`
	P99Ms  float64 `json:"p99,omitempty"`
	MaxMs  float64 `json:"max,omitempty"`
}

// Server is the mock; it is an http.Handler.
type Server struct {
	cfg        Config
	mux        *http.ServeMux
	authHeader string
	// What the mock accepts, swapped while it serves by tests that rotate
	// credentials; nil accepts anything.
	auth    atomic.Pointer[authValue]
	signing atomic.Pointer[webhook.Secrets]

	mu    sync.Mutex
	rng   *rand.Rand
	stats Stats
	// One small struct per key, no pointers, so that a million keys cost
	// about 100 MB and nothing for the garbage collector to scan.
	keys map[string]keyState
	gaps []int64 // ns from a failure answer to the next request with its key
	seen int     // keys seen, for HoldEvery
}

// keyState is what the mock knows about one idempotency key.
type keyState struct {
	requests    int32
	delivered   int32 // requests answered 200: 1 + duplicates
	firstAt     int64 // ns of the first request's arrival
	deliveredAt int64 // ns of the answer that delivered it
	failedAt    int64 // ns of the last failure answer not yet followed by a request
}

// New returns a mock; cfg must be valid.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.FailStatus == 0 {
		cfg.FailStatus = http.StatusServiceUnavailable
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	s := &Server{
		cfg:  cfg,
		mux:  http.NewServeMux(),
		rng:  rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		keys: map[string]keyState{},
	}
	if s.cfg.Now == nil {
		s.cfg.Now = time.Now
	}
	s.authHeader = cmp.Or(cfg.AuthHeader, "Authorization")
	s.SetAuthValue(cfg.AuthValue)
	s.SetSigning(cfg.Signing)
	s.mux.HandleFunc("POST "+SendPath, s.send)
	s.mux.HandleFunc("GET /stats", s.serveStats)
	s.mux.HandleFunc("GET /timings", s.serveTimings)
	s.mux.HandleFunc("POST /reset", s.serveReset)
	return s, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// authValue is a required credential and its hash, which the comparison
// uses so that its time depends on neither value's length.
type authValue struct {
	value string
	sum   [sha256.Size]byte
}

// SetAuthValue sets the exact value the auth header must carry from now
// on; "" lets every request in.
func (s *Server) SetAuthValue(v string) {
	if v == "" {
		s.auth.Store(nil)
		return
	}
	s.auth.Store(&authValue{value: v, sum: sha256.Sum256([]byte(v))})
}

// SetSigning sets the secrets a request's signature must verify with from
// now on; nil lets unsigned requests in.
func (s *Server) SetSigning(secrets *webhook.Secrets) { s.signing.Store(secrets) }

// authorize says whether r carries the credentials; if not, it sets the
// WWW-Authenticate header of the answer.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	want := s.auth.Load()
	if want == nil {
		return true
	}
	got := sha256.Sum256([]byte(r.Header.Get(s.authHeader)))
	if subtle.ConstantTimeCompare(got[:], want.sum[:]) == 1 {
		return true
	}
	if http.CanonicalHeaderKey(s.authHeader) == "Authorization" {
		// Only a known scheme is echoed: the rest of the value is secret.
		scheme := "Bearer"
		if first, _, _ := strings.Cut(want.value, " "); strings.EqualFold(first, "Basic") {
			scheme = "Basic"
		}
		w.Header().Set("WWW-Authenticate", scheme+` realm="mockmail"`)
	}
	return false
}

// isObject says whether raw is one valid JSON object, which the decoder
// would accept, found without building it.
func isObject(raw []byte) bool {
	t := bytes.TrimLeft(raw, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && json.Valid(t)
}

func (s *Server) send(w http.ResponseWriter, r *http.Request) {
	arrived := s.cfg.Now().UnixNano()
	if s.cfg.Latency > 0 {
		t := time.NewTimer(s.cfg.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			// The sender gone, or Close: dropped unanswered, where a
			// return would answer 200 to what was never recorded.
			t.Stop()
			panic(http.ErrAbortHandler)
		}
	}
	traced := validTraceparent(r.Header.Get("traceparent"))
	if !s.authorize(w, r) {
		s.refuse(w, http.StatusUnauthorized, "unauthorized", traced, false)
		return
	}
	raw, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	key := r.Header.Get("Idempotency-Key")
	if signing := s.signing.Load(); signing != nil {
		// A body cut short at the size limit verifies as forged.
		if signing.Verify(raw, r.Header) != nil {
			s.refuse(w, http.StatusUnauthorized, "invalid signature", traced, true)
			return
		}
		if r.Header.Get(webhook.HeaderID) != key {
			s.refuse(w, http.StatusBadRequest, "webhook-id is not the Idempotency-Key", traced, false)
			return
		}
	}
	decodeErr := readErr
	if decodeErr == nil && !isObject(raw) {
		// Decoded only to say what is wrong: a valid object needs no more.
		var body map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber() // any valid JSON number, 1e999 included
		decodeErr = dec.Decode(&body)
	}

	if s.hold(key, traced, arrived) {
		// Until the sender gives up (the body is read: net/http watches the
		// connection) or Close; then the connection is dropped unanswered,
		// where a return would answer 200.
		<-r.Context().Done()
		panic(http.ErrAbortHandler)
	}
	reply := s.decide(key, traced, decodeErr, arrived)
	if reply.RetryAfter != "" {
		w.Header().Set("Retry-After", reply.RetryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(reply.Status)
	if reply.Status == http.StatusOK {
		fmt.Fprintln(w, `{"status":"sent"}`)
		return
	}
	msg := http.StatusText(reply.Status)
	if decodeErr != nil {
		msg = "body is not a JSON object: " + decodeErr.Error()
	}
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// refuse answers a request not let in. It counts the request but leaves the
// keys alone: a sender with the wrong credentials has not tried to deliver.
func (s *Server) refuse(w http.ResponseWriter, status int, msg string, traced, badSignature bool) {
	s.mu.Lock()
	s.stats.Requests++
	if traced {
		s.stats.Traced++
	}
	if status == http.StatusUnauthorized {
		s.stats.Unauthorized++
	}
	if badSignature {
		s.stats.BadSignatures++
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// validTraceparent says whether v is a W3C trace context traceparent of
// version 00: 00-<trace id>-<parent id>-<flags> in lowercase hex, neither
// id all zeros.
func validTraceparent(v string) bool {
	if len(v) != 55 || v[:3] != "00-" || v[35] != '-' || v[52] != '-' {
		return false
	}
	traceID, parentID, flags := v[3:35], v[36:52], v[53:]
	return lowerHex(traceID) && lowerHex(parentID) && lowerHex(flags) &&
		strings.Trim(traceID, "0") != "" && strings.Trim(parentID, "0") != ""
}

func lowerHex(s string) bool {
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// hold says whether the request is one HoldEvery holds: the first of a
// key that is the HoldEvery-th seen. It counts the request.
func (s *Server) hold(key string, traced bool, arrived int64) bool {
	if s.cfg.HoldEvery == 0 || key == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[key]
	if ok {
		return false
	}
	if s.seen++; s.seen%s.cfg.HoldEvery != 0 {
		return false
	}
	k.requests, k.firstAt = 1, arrived
	s.keys[key] = k
	s.stats.Requests++
	s.stats.Held++
	if traced {
		s.stats.Traced++
	}
	return true
}

// decide answers a request that arrived at arrived (ns), after the latency.
func (s *Server) decide(key string, traced bool, decodeErr error, arrived int64) Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	if traced {
		s.stats.Traced++
	}
	if key == "" {
		s.stats.UnkeyedRequests++
	}
	k := s.keys[key]
	defer func() { s.keys[key] = k }()
	k.requests++
	n := int(k.requests)
	if k.firstAt == 0 {
		k.firstAt = arrived
	}
	// A request that set out before the failure was answered is not the
	// sender's reaction to it.
	if k.failedAt != 0 && arrived >= k.failedAt {
		s.gaps = append(s.gaps, arrived-k.failedAt)
		k.failedAt = 0
	}

	var reply Reply
	switch {
	case key != "" && k.delivered > 0:
		// Idempotent replay: the confirmation went out already.
		k.delivered++
		s.stats.DuplicateRequests++
		return Reply{Status: http.StatusOK}
	case decodeErr != nil:
		reply = Reply{Status: http.StatusBadRequest}
	case s.cfg.Script != nil:
		reply = s.cfg.Script(key, n)
	}
	if reply.Status == 0 {
		reply.Status = http.StatusOK
		if (!s.cfg.FailOnce || n == 1) && s.rng.Float64() < s.cfg.FailRate {
			reply.Status = s.cfg.FailStatus
		}
	}
	if reply.Status != http.StatusOK {
		s.stats.Failures++
		if key != "" {
			k.failedAt = s.cfg.Now().UnixNano()
		}
		return reply
	}
	s.stats.Deliveries++
	if key != "" {
		k.delivered++
		k.deliveredAt = s.cfg.Now().UnixNano()
	}
	return reply
}

func (s *Server) serveStats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s.Stats())
}

// Stats returns the counts so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Requests returns how many requests carried each idempotency key.
func (s *Server) Requests() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.keys))
	for key, k := range s.keys {
		m[key] = int(k.requests)
	}
	return m
}

// Delivered returns, per idempotency key delivered, how many requests carrying
// it were answered 200: 1, plus its duplicate requests.
func (s *Server) Delivered() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]int{}
	for key, k := range s.keys {
		if k.delivered > 0 {
			m[key] = int(k.delivered)
		}
	}
	return m
}

// Timings returns the timings so far.
func (s *Server) Timings() Timings {
	keys, gaps := s.timings()
	t := Timings{Keys: make(map[string][3]int64, len(keys)), RetryGaps: summarize(gaps)}
	for _, k := range keys {
		t.Keys[k.key] = [3]int64{k.firstAt, k.deliveredAt, k.unanswered}
	}
	return t
}

type keyTiming struct {
	key                  string
	firstAt, deliveredAt int64
	unanswered           int64 // requests not answered 200
}

// timings copies what Timings needs, so that the lock is not held while a
// large answer is written.
func (s *Server) timings() ([]keyTiming, []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]keyTiming, 0, len(s.keys))
	for key, k := range s.keys {
		if key != "" {
			keys = append(keys, keyTiming{key, k.firstAt, k.deliveredAt, int64(k.requests - k.delivered)})
		}
	}
	return keys, slices.Clone(s.gaps)
}

func summarize(gaps []int64) GapSummary {
	if len(gaps) == 0 {
		return GapSummary{}
	}
	slices.Sort(gaps)
	var sum float64
	for _, g := range gaps {
		sum += float64(g)
	}
	ms := func(ns float64) float64 { return ns / 1e6 }
	p99 := gaps[(len(gaps)*99+99)/100-1] // nearest rank
	return GapSummary{Count: len(gaps), MinMs: ms(float64(gaps[0])), MeanMs: ms(sum / float64(len(gaps))),
		P99Ms: ms(float64(p99)), MaxMs: ms(float64(gaps[len(gaps)-1]))}
}

// serveTimings writes Timings as it goes: with a million keys a map built
// for encoding/json would double the mock's memory for a moment.
func (s *Server) serveTimings(w http.ResponseWriter, _ *http.Request) {
	keys, gaps := s.timings()
	summary, err := json.Marshal(summarize(gaps))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	buf := make([]byte, 0, 64<<10)
	buf = append(buf, `{"retryGaps":`...)
	buf = append(buf, summary...)
	buf = append(buf, `,"keys":{`...)
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ',')
		}
		quoted, _ := json.Marshal(k.key) // a string always encodes
		buf = append(buf, quoted...)
		buf = append(buf, ":["...)
		buf = strconv.AppendInt(buf, k.firstAt, 10)
		buf = append(buf, ',')
		buf = strconv.AppendInt(buf, k.deliveredAt, 10)
		buf = append(buf, ',')
		buf = strconv.AppendInt(buf, k.unanswered, 10)
		buf = append(buf, ']')
		if len(buf) > 60<<10 {
			if _, err := w.Write(buf); err != nil {
				return
			}
			buf = buf[:0]
		}
	}
	buf = append(buf, "}}\n"...)
	w.Write(buf)
}

// Reset forgets every key, timing and count, as if the mock had just
// started: a benchmark's figures then cover its run alone.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = Stats{}
	s.keys = map[string]keyState{}
	s.gaps = nil
	s.seen = 0
}

// serveReset wants the credentials sends want: a reset wipes the record
// of deliveries that tells a duplicate request from a first one.
func (s *Server) serveReset(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	s.Reset()
	w.WriteHeader(http.StatusNoContent)
}

// FetchStats reads GET /stats of a mock running elsewhere.
func FetchStats(ctx context.Context, baseURL string) (Stats, error) {
	var st Stats
	if err := call(ctx, http.MethodGet, baseURL, "/stats", &st, ""); err != nil {
		return Stats{}, fmt.Errorf("mock stats: %w", err)
	}
	return st, nil
}

// FetchTimings reads GET /timings of a mock running elsewhere.
func FetchTimings(ctx context.Context, baseURL string) (Timings, error) {
	var t Timings
	if err := call(ctx, http.MethodGet, baseURL, "/timings", &t, ""); err != nil {
		return Timings{}, fmt.Errorf("mock timings: %w", err)
	}
	return t, nil
}

// ResetRemote calls POST /reset of a mock running elsewhere, with the
// Authorization value it wants ("" when it wants none).
func ResetRemote(ctx context.Context, baseURL, authorization string) error {
	if err := call(ctx, http.MethodPost, baseURL, "/reset", nil, authorization); err != nil {
		return fmt.Errorf("mock reset: %w", err)
	}
	return nil
}

// JoinURL is path under the base URL, as the service joins them: a query
// such as ?key= kept (it went after the path, and every request to /).
func JoinURL(baseURL, path string) (string, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return "", err
	}
	return u.JoinPath(path).String(), nil
}

// call makes one request to the mock and decodes its answer into out (nil:
// no answer expected), with an Authorization header unless "".
func call(ctx context.Context, method, baseURL, path string, out any, authorization string) error {
	endpoint, err := JoinURL(baseURL, path)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, endpoint, nil)
	if err != nil {
		return err
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Listening is the mock served on a TCP address.
type Listening struct {
	addr   net.Addr
	scheme string
	srv    *http.Server
	done   chan error
}

// Listen serves the mock on addr (127.0.0.1:0 for any free port) until
// Close, for `ordermail mockmail` and the demo.
func (s *Server) Listen(addr string) (*Listening, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	l := s.listening(ln, "http")
	go func() { l.done <- l.srv.Serve(ln) }()
	return l, nil
}

// ListenTLS is Listen over HTTPS with cfg, which holds the server
// certificate and, to require client certificates, ClientAuth and
// ClientCAs. TLS below 1.2 is refused whatever cfg says.
func (s *Server) ListenTLS(addr string, cfg *tls.Config) (*Listening, error) {
	if cfg == nil || len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil {
		return nil, errors.New("listen tls: no server certificate in the TLS config")
	}
	cfg = cfg.Clone()
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	l := s.listening(ln, "https")
	l.srv.TLSConfig = cfg
	go func() { l.done <- l.srv.ServeTLS(ln, "", "") }()
	return l, nil
}

func (s *Server) listening(ln net.Listener, scheme string) *Listening {
	// Requests' contexts end when the server shuts down, so that the ones
	// HoldEvery holds do not keep Close waiting for its whole deadline.
	base, stop := context.WithCancel(context.Background())
	// No write bound: a held request (HoldEvery) is answered when released.
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return base }}
	srv.RegisterOnShutdown(stop)
	return &Listening{addr: ln.Addr(), scheme: scheme, done: make(chan error, 1), srv: srv}
}

// Addr is the address it listens on; URL, the base URL to send to.
func (l *Listening) Addr() net.Addr { return l.addr }
func (l *Listening) URL() string    { return l.scheme + "://" + l.addr.String() }

// Failed delivers the error that stopped serving before Close was called.
func (l *Listening) Failed() <-chan error { return l.done }

// Close lets requests in progress finish until ctx ends, then stops.
func (l *Listening) Close(ctx context.Context) error {
	err := l.srv.Shutdown(ctx)
	if serveErr := <-l.done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return err
}
