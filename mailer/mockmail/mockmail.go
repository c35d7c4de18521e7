package mockmail

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Config of the mock.
type Config struct {
	FailRate   float64       // share of first deliveries answered with FailStatus, 0 to 1
	FailStatus int           // default 503; the sample's mock answers 406, a permanent error by default
	Latency    time.Duration // added before every answer
	Seed       uint64        // 0: a random seed
	// Script, when set, decides the answer to the n-th request (from 1)
	// carrying key; a zero Reply falls back to the random behaviour.
	Script func(key string, n int) Reply
}

// Reply is a scripted answer.
type Reply struct {
	Status     int
	RetryAfter string // Retry-After header value
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if c.FailRate < 0 || c.FailRate > 1 {
		return fmt.Errorf("fail-rate: %v is not between 0 and 1", c.FailRate)
	}
	if c.FailStatus != 0 && (c.FailStatus < 100 || c.FailStatus > 599 || c.FailStatus == http.StatusOK) {
		return fmt.Errorf("fail-status: %d is not an HTTP status other than 200", c.FailStatus)
	}
	if c.Latency < 0 {
		return fmt.Errorf("latency: %s is negative", c.Latency)
	}
	return nil
}

// Stats is what GET /stats serves.
type Stats struct {
	Requests          int `json:"requests"`          // every POST /sendConfirmation
	Deliveries        int `json:"deliveries"`        // distinct keys answered 200
	Failures          int `json:"failures"`          // answers other than 200
	DuplicateRequests int `json:"duplicateRequests"` // a key seen again after its 200
	UnkeyedRequests   int `json:"unkeyedRequests"`   // requests without Idempotency-Key
}

// Server is the mock; it is an http.Handler.
type Server struct {
	cfg Config
	mux *http.ServeMux

	mu        sync.Mutex
	rng       *rand.Rand
	stats     Stats
	requests  map[string]int // per key
	delivered map[string]int // per key: requests answered 200 (1 + duplicates)
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
		cfg:       cfg,
		mux:       http.NewServeMux(),
		rng:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		requests:  map[string]int{},
		delivered: map[string]int{},
	}
	s.mux.HandleFunc("POST /sendConfirmation", s.send)
	s.mux.HandleFunc("GET /stats", s.serveStats)
	return s, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) send(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Latency > 0 {
		t := time.NewTimer(s.cfg.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	var body map[string]any
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.UseNumber() // any valid JSON number, 1e999 included
	decodeErr := dec.Decode(&body)
	key := r.Header.Get("Idempotency-Key")

	reply := s.decide(key, decodeErr)
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

func (s *Server) decide(key string, decodeErr error) Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	if key == "" {
		s.stats.UnkeyedRequests++
	}
	s.requests[key]++
	n := s.requests[key]

	var reply Reply
	switch {
	case key != "" && s.delivered[key] > 0:
		// Idempotent replay: the confirmation went out already.
		s.delivered[key]++
		s.stats.DuplicateRequests++
		return Reply{Status: http.StatusOK}
	case decodeErr != nil:
		reply = Reply{Status: http.StatusBadRequest}
	case s.cfg.Script != nil:
		reply = s.cfg.Script(key, n)
	}
	if reply.Status == 0 {
		reply.Status = http.StatusOK
		if s.rng.Float64() < s.cfg.FailRate {
			reply.Status = s.cfg.FailStatus
		}
	}
	if reply.Status != http.StatusOK {
		s.stats.Failures++
		return reply
	}
	s.stats.Deliveries++
	if key != "" {
		s.delivered[key]++
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
	return maps.Clone(s.requests)
}

// Delivered returns, per idempotency key delivered, how many requests carrying
// it were answered 200: 1, plus its duplicate requests.
func (s *Server) Delivered() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.delivered)
}

// FetchStats reads GET /stats of a mock running elsewhere.
func FetchStats(ctx context.Context, baseURL string) (Stats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(baseURL, "/")+"/stats", nil)
	if err != nil {
		return Stats{}, fmt.Errorf("mock stats: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Stats{}, fmt.Errorf("mock stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Stats{}, fmt.Errorf("mock stats: answered %s", resp.Status)
	}
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return Stats{}, fmt.Errorf("mock stats: %w", err)
	}
	return st, nil
}

// Listening is the mock served on a TCP address.
type Listening struct {
	addr net.Addr
	srv  *http.Server
	done chan error
}

// Listen serves the mock on addr (127.0.0.1:0 for any free port) until
// Close, for `ordermail mockmail` and the demo.
func (s *Server) Listen(addr string) (*Listening, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	l := &Listening{addr: ln.Addr(), srv: &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}, done: make(chan error, 1)}
	go func() { l.done <- l.srv.Serve(ln) }()
	return l, nil
}

// Addr is the address it listens on; URL, the base URL to send to.
func (l *Listening) Addr() net.Addr { return l.addr }
func (l *Listening) URL() string    { return "http://" + l.addr.String() }

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
