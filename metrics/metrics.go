package metrics

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ordermail/ordermail/internal/buildinfo"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// What to alert on, with the metrics below, is in
// deploy/prometheus/ordermail-alerts.yml (rules Prometheus loads, checked
// by scripts/check-alerts.sh) and README.md's table of them. /healthz
// failing is for the orchestrator (restart); /readyz failing says why sends
// cannot go out (misconfigured, store unreachable).

// Config of the metrics endpoint.
type Config struct {
	// Listen is the address of GET /metrics, /healthz and /readyz, e.g.
	// :9464; empty: no endpoint (Healthz and Readyz can still be mounted
	// elsewhere). On a loopback address, only requests to a loopback name
	// are answered (HostCheck).
	Listen string
	// AllowedHosts are the host names requests may name besides loopback
	// ones (HostCheck); empty: any, unless Listen is a loopback address.
	AllowedHosts []string
	// RefreshInterval is how often the backlog figures are read from the
	// store, off the scrape path. Default 3s.
	RefreshInterval time.Duration
	// RefreshTimeout bounds one read of them. Default 5s.
	RefreshTimeout time.Duration
	// Version is ordermail_build_info's version. Default: the module's
	// version from the build.
	Version string
}

func (c Config) withDefaults() Config {
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = 3 * time.Second
	}
	if c.RefreshTimeout <= 0 {
		c.RefreshTimeout = 5 * time.Second
	}
	return c
}

// Server serves /metrics, /healthz and /readyz while the app runs, and
// keeps the backlog figures read from the store.
type Server struct {
	cfg  Config
	reg  *prometheus.Registry
	cs   []prometheus.Collector // what reg holds, for Names
	w    *watcher.Watcher
	t    *timer.Timer
	m    *mailer.Client
	st   store.Store
	log  *slog.Logger
	srv  *http.Server
	addr net.Addr
	done chan error

	mu      sync.Mutex
	backlog Backlog

	stopRefresh context.CancelFunc
	refreshing  sync.WaitGroup

	// phase is the service's, for /readyz: starting until every start
	// hook has run (Started), stopping once the stop begins (Stopping).
	phase atomic.Int32
}

const (
	phaseStarting int32 = iota
	phaseStarted
	phaseStopping
)

// Started says the service has started: /readyz may answer ready.
func (s *Server) Started() { s.phase.CompareAndSwap(phaseStarting, phaseStarted) }

// Stopping says the service's stop has begun: /readyz answers 503.
func (s *Server) Stopping() { s.phase.Store(phaseStopping) }

// Backlog is the store's figures as the last refresh read them.
type Backlog struct {
	Counts    store.Counts
	Due       int
	OldestDue time.Time // zero: none is due
	// ReadAt is when the figures were read; zero when never.
	ReadAt time.Time
	// Checked says a refresh has finished; Up that the last one read the
	// figures, Err why it did not.
	Checked, Up bool
	Err         error
}

// Label values, every one of which is exported from the start, so that a
// rate() over them has its zero.
var (
	sendResults   = []string{"sent", "transient", "permanent", "config", "invalid"}
	statusClasses = []string{"2xx", "3xx", "4xx", "5xx", "none"}
	heldWhy       = []string{"breaker", "config", "rate"}
	outcomes      = []string{"sent", "retry", "dead_letter"}
	deadReasons   = order.Reasons()
)

// New registers the metrics of w, t, m and st, and sets w's and t's hooks.
func New(cfg Config, w *watcher.Watcher, t *timer.Timer, m *mailer.Client, st store.Store, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg.withDefaults(), reg: prometheus.NewRegistry(), w: w, t: t, m: m, st: st, log: log.With("component", "metrics")}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ordermail_" + name, Help: help}, f)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ordermail_" + name, Help: help}, f)
	}
	stat := func(f func(watcher.Stats) int64) func() float64 {
		return func() float64 { return float64(f(w.Stats())) }
	}
	vec := func(name, help, label string, values []string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ordermail_" + name, Help: help}, []string{label})
		for _, l := range values {
			v.WithLabelValues(l)
		}
		return v
	}
	sendDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ordermail_send_duration_seconds",
		Help:    "Calls of the email service, by result (held-back sends, which make no request, are not observed).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"result"})
	for _, r := range sendResults {
		sendDur.WithLabelValues(r)
	}
	eventDur := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ordermail_event_handling_duration_seconds",
		Help:    "Feed events from the moment a worker takes one up to its acknowledgement (outcome written).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}})
	sweepDur := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ordermail_sweep_duration_seconds",
		Help:    "Sweeps that ran (all their batches), on the instance holding the sweep lease.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}})
	sends := vec("sends_total", "Requests made to the email service, by the class of their answer's status (none: no answer). Sends held back are not requests.",
		"status_class", statusClasses)
	held := vec("sends_held_total", "Sends held back without a request: by the circuit breaker, while the service refuses the configuration, or by the rate limit. Each becomes a retry without spending an attempt.",
		"why", heldWhy)
	outs := vec("outcomes_total", "Outcomes written after a send (or a send held back).", "outcome", outcomes)
	dead := vec("dead_lettered_total", "Confirmations moved to the dead letters, by reason.", "reason", deadReasons)

	w.SetHooks(watcher.Hooks{
		Send: func(took time.Duration, err error) {
			why, result, class := classify(err)
			if why != "" {
				held.WithLabelValues(why).Inc()
				return
			}
			if result != "" {
				sendDur.WithLabelValues(result).Observe(took.Seconds())
			}
			if class != "" {
				sends.WithLabelValues(class).Inc()
			}
		},
		Event:         func(took time.Duration) { eventDur.Observe(took.Seconds()) },
		Outcome:       func(result string) { outs.WithLabelValues(result).Inc() },
		DeadLettered:  func(reason string) { dead.WithLabelValues(reason).Inc() },
		RetriesPaused: func() bool { return t.Status().Role == timer.RolePaused },
	})
	t.SetHooks(timer.Hooks{Sweep: func(took time.Duration, _ int) { sweepDur.Observe(took.Seconds()) }})

	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		sendDur, eventDur, sweepDur, sends, held, outs, dead,
		counter("events_handled_total", "Feed events finished and acknowledged: their outcome written, or nothing to do (ignored ones included).", stat(func(s watcher.Stats) int64 { return s.Handled })),
		counter("sends_succeeded_total", "Requests made to the email service answered 2xx.", stat(func(s watcher.Stats) int64 { return s.Sent })),
		counter("send_failures_total", "Requests made to the email service that failed (no answer, or not 2xx). Sends held back are not counted.", stat(func(s watcher.Stats) int64 { return s.SendFailures })),
		counter("events_ignored_total", "Feed events that needed nothing (not paid, own writes...).", stat(func(s watcher.Stats) int64 { return s.Ignored })),
		counter("events_given_up_total", "Feed events given up on after --max-event-failures whose dead letter could not be written either (logged): the order waits for its next change.", stat(func(s watcher.Stats) int64 { return s.GivenUp })),
		gauge("store_nodes_unreachable", "Nodes of the store (Couchbase data nodes that hang or are down; the embedded store counts as one, busy with another process's write) that last answered unavailable: the changes of their keys wait apart, one probe at a time, while the others go on.", func() float64 {
			return float64(w.Stats().Unreachable)
		}),
		counter("timer_ticks_total", "Retry timer ticks that succeeded (paused and standby ones included; not those of an instance standing aside after its sweeps failed).", func() float64 { return float64(t.Status().Ticks) }),
		counter("timer_sweep_errors_total", "Retry timer ticks that failed (reading allow_retrys, the sweep lease, or the sweep).", func() float64 { return float64(t.Status().SweepErrors) }),
		gauge("breaker_open", "1 while the circuit breaker holds sends back (open or half-open).", func() float64 {
			return b2f(m.BreakerState() != "closed")
		}),
		gauge("mail_misconfigured", "1 while the email service refuses ordermail's configuration (401/403, TLS, an unreadable settings file) and sends are held; /readyz says why.", func() float64 {
			return b2f(m.Misconfigured() != "")
		}),
		gauge("timer_active", "1 while this instance holds the sweep lease and sweeps; 0 on a standby, or while retries are paused.", func() float64 {
			return b2f(t.Status().Role == timer.RoleActive)
		}),
		gauge("timer_held", "1 while this instance's sends are held back (its circuit breaker open): it flags no retry, which would only be held again, and leaves the sweep lease to another; a probe a cooldown.", func() float64 {
			return b2f(t.Status().Role == timer.RoleHeld)
		}),
		gauge("timer_last_sweep_timestamp_seconds", "When this instance last swept successfully (Unix seconds); 0 when it has not.", func() float64 {
			if at := t.Status().LastSweep; !at.IsZero() {
				return float64(at.UnixNano()) / 1e9
			}
			return 0
		}),
		&timerState{t: t},
		buildInfo(s.cfg.Version),
		&backlogCollector{s: s},
		&feed{w: w},
		undurable{st: st},
	}
	for _, c := range cs {
		if err := s.reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	s.cs = cs
	return s, nil
}

// Names are the names of the ordermail_ metrics the server can expose,
// those of other stores and settings than its own included: what
// documents and alerting rules may name.
func (s *Server) Names() []string {
	ch := make(chan *prometheus.Desc)
	go func() {
		defer close(ch)
		for _, c := range s.cs {
			c.Describe(ch)
		}
	}()
	var names []string
	for d := range ch {
		// A Desc tells its name only in its String form.
		if m := descName.FindStringSubmatch(d.String()); m != nil && strings.HasPrefix(m[1], "ordermail_") {
			names = append(names, m[1])
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

var descName = regexp.MustCompile(`fqName: "([^"]+)"`)

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// classify reads a send's error: what held it back ("" when nothing did),
// its result for the duration histogram and its status class for
// sends_total ("" when it made no request: held, invalid, ended by our
// shutdown).
func classify(err error) (held, result, class string) {
	if err == nil {
		return "", "sent", "2xx"
	}
	se, ok := errors.AsType[*mailer.SendError](err)
	if !ok {
		return "", "", "" // ctx ended: our shutdown
	}
	if why := se.Held(); why != "" {
		return why, "", ""
	}
	result = se.Class.String()
	switch {
	case se.Class == mailer.Invalid:
		return "", result, ""
	case se.Status >= 100 && se.Status <= 599:
		return "", result, strconv.Itoa(se.Status/100) + "xx"
	}
	return "", result, "none"
}

// timerState reports what is only known once a tick has told: whether
// retries are paused, and on a standby the sweeper's heartbeat.
type timerState struct{ t *timer.Timer }

var (
	descPaused    = prometheus.NewDesc("ordermail_retries_paused", "1 while allow_retrys is absent: retry documents wait, first sends go on.", nil, nil)
	descHeartbeat = prometheus.NewDesc("ordermail_timer_sweeper_heartbeat_age_seconds",
		"On a standby: how long ago the instance holding the sweep lease last renewed it.", nil, nil)
)

func (c *timerState) Describe(ch chan<- *prometheus.Desc) { ch <- descPaused; ch <- descHeartbeat }

func (c *timerState) Collect(ch chan<- prometheus.Metric) {
	st := c.t.Status()
	if !st.ArmedKnown {
		return
	}
	// From the last read of allow_retrys, whatever the role: a sweeper
	// whose lease renewal failed (role unknown) dropped the series, and
	// with it OrdermailNoSweeper, which needs it.
	ch <- prometheus.MustNewConstMetric(descPaused, prometheus.GaugeValue, b2f(!st.Armed))
	if st.Role == timer.RoleStandby && st.Holder.Owner != "" {
		ch <- prometheus.MustNewConstMetric(descHeartbeat, prometheus.GaugeValue, st.HeartbeatAge.Seconds())
	}
}

// buildInfo is ordermail_build_info{version,goversion,revision} 1.
func buildInfo(version string) prometheus.Collector {
	b := buildinfo.Read()
	if version == "" {
		version = b.Version
	}
	revision := b.Revision
	switch {
	case revision == "":
		revision = "unknown"
	case b.Modified:
		revision += "-dirty"
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ordermail_build_info",
		Help:        "1, labelled with the build: ordermail's version, the Go version, the VCS revision.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": b.GoVersion, "revision": revision}},
		func() float64 { return 1 })
}

// Backlog returns the store's figures as the last refresh read them: a
// scrape, a status page or a probe never waits on the store.
func (s *Server) Backlog() Backlog {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backlog
}

// refreshLoop reads the backlog figures every RefreshInterval until ctx
// ends, each read bounded by RefreshTimeout.
func (s *Server) refreshLoop(ctx context.Context) {
	defer s.refreshing.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.refresh(ctx)
		t.Reset(s.cfg.RefreshInterval)
	}
}

// refresh reads the figures once; it logs when the store stops answering
// and when it answers again, not at each failure.
func (s *Server) refresh(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RefreshTimeout)
	defer cancel()
	now := time.Now()
	quantum := s.t.Status().Quantum
	c, b, err := store.ReadFigures(rctx, s.st, now, quantum)
	if ctx.Err() != nil {
		return // stopping: the last figures stand
	}
	s.mu.Lock()
	was := s.backlog
	s.backlog.Checked, s.backlog.Up, s.backlog.Err = true, err == nil, err
	if err == nil {
		s.backlog.Counts, s.backlog.Due, s.backlog.OldestDue, s.backlog.ReadAt = c, b.Due, b.OldestDue, now
	}
	s.mu.Unlock()
	// Logged after the lock is let go: every scrape and /readyz wait on
	// it, and a log write may block.
	switch {
	case err != nil && (was.Up || !was.Checked):
		s.log.Warn("the store does not answer the backlog figures; /readyz fails until it does", "error", err)
	case err == nil && was.Checked && !was.Up:
		s.log.Info("the store answers the backlog figures again")
	}
}

// backlogCollector serves the figures the last refresh read.
type backlogCollector struct{ s *Server }

var (
	descUp        = prometheus.NewDesc("ordermail_store_up", "1 when the store answered the last refresh of the backlog figures (every few seconds, off the scrape).", nil, nil)
	descAge       = prometheus.NewDesc("ordermail_backlog_age_seconds", "How old the backlog figures served are: time since the store last answered them.", nil, nil)
	descPaid      = prometheus.NewDesc("ordermail_orders_paid", "Orders whose paymentStatus is paid (on Couchbase counted at most every --cb-order-counts-ttl: the count goes over an index entry for every paid order).", nil, nil)
	descConfirmed = prometheus.NewDesc("ordermail_orders_confirmed", "Paid orders whose confirmation went out (on Couchbase counted with ordermail_orders_paid).", nil, nil)
	descRetries   = prometheus.NewDesc("ordermail_retry_documents", "Paid orders waiting for a confirmation that ordermail retries: their retry documents (allow_retrys not counted). First sends in flight and dead letters are not counted, so a purge of dead letters does not skew it.", nil, nil)
	descFlagged   = prometheus.NewDesc("ordermail_retry_documents_flagged", "Retries flagged fireRetry, about to be sent.", nil, nil)
	descDue       = prometheus.NewDesc("ordermail_retry_documents_due", "Retries due now: flagged, or due by nextAttemptAt (or the quantum, for the sample's documents).", nil, nil)
	descOldest    = prometheus.NewDesc("ordermail_oldest_due_retry_age_seconds", "How long the longest-waiting due retry, flagged or not, has been due; 0 when none is.", nil, nil)
	descDead      = prometheus.NewDesc("ordermail_dead_letters", "Confirmations given up on, waiting for a redrive.", nil, nil)
	descCounted   = prometheus.NewDesc("ordermail_orders_counted_timestamp_seconds", "When ordermail_orders_paid and ordermail_orders_confirmed were counted (Unix seconds): on Couchbase the last count that succeeded, served while the next ones fail.", nil, nil)
)

func (b *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descAge, descPaid, descConfirmed, descRetries, descFlagged, descDue, descOldest, descDead, descCounted} {
		ch <- d
	}
}

func (b *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	bl := b.s.Backlog()
	if !bl.Checked {
		return // not read yet: nothing rather than zeros
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, b2f(bl.Up))
	if bl.ReadAt.IsZero() {
		return
	}
	now := time.Now()
	ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, now.Sub(bl.ReadAt).Seconds())
	// While the store does not answer, the figures it last answered, as
	// they were then: the oldest due retry's age counted on from them
	// would grow for a retry long sent (and page for it), and figures
	// dropped would end the series, resetting every alert's `for`.
	at := now
	if !bl.Up {
		at = bl.ReadAt
	}
	oldest := 0.0
	if !bl.OldestDue.IsZero() {
		oldest = max(0, at.Sub(bl.OldestDue).Seconds())
	}
	c := bl.Counts
	counted := cmp.Or(c.OrdersCountedAt, bl.ReadAt) // the embedded store counts them with the rest
	ch <- prometheus.MustNewConstMetric(descCounted, prometheus.GaugeValue, float64(counted.UnixNano())/1e9)
	for d, v := range map[*prometheus.Desc]float64{descPaid: float64(c.OrdersPaid), descConfirmed: float64(c.OrdersConfirmed),
		descRetries: float64(c.RetryDocs), descFlagged: float64(c.RetryFlagged),
		descDue: float64(bl.Due), descOldest: oldest, descDead: float64(c.DeadLetters)} {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
}

// Healthz answers GET /healthz, the liveness check: 200 while the feed
// reader, the workers and the timer make progress within their bounds (see
// watcher.Stalled and timer.Stalled); 503 naming what is stale otherwise,
// e.g. after the process was stopped (SIGSTOP) for longer than they allow.
// It asks nothing of the store or the email service: their failures are
// /readyz's, and restarting ordermail would not mend them.
func (s *Server) Healthz(w http.ResponseWriter, _ *http.Request) {
	var stale []string
	for _, why := range s.w.Stalled() {
		stale = append(stale, "watcher: "+why)
	}
	if why := s.t.Stalled(); why != "" {
		stale = append(stale, "timer: "+why)
	}
	feed := "running"
	if !s.w.Running() {
		feed = "standby" // not reading the feed: nothing of it to check
	}
	body := map[string]any{"status": "ok", "feed": feed}
	code := http.StatusOK
	if len(stale) > 0 {
		body["status"], body["stale"] = "stale", stale
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, body)
}

// Readyz answers GET /readyz: 200 while ordermail can send; 503 with the
// reason while the email service refuses its configuration (a person must
// fix it) or the store did not answer the last refresh, and while the
// service starts or stops. The body names the
// instance's roles: the sweep ("active", "standby", "paused") with, on a
// standby, who sweeps and how long ago it renewed its lease; the feed
// ("running", or "standby" while another process holds the embedded
// store's lock).
func (s *Server) Readyz(w http.ResponseWriter, _ *http.Request) {
	switch s.phase.Load() {
	case phaseStarting:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "starting"})
		return
	case phaseStopping:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "stopping"})
		return
	}
	body := map[string]any{"status": "ready"}
	code := http.StatusOK
	bl := s.Backlog()
	switch {
	case !bl.Checked:
		body["store"] = "unknown" // not read yet: not held against readiness
	case bl.Up:
		body["store"] = "up"
	default:
		body["store"] = "down"
	}
	if !bl.ReadAt.IsZero() {
		body["store_read_ago"] = time.Since(bl.ReadAt).Round(time.Millisecond).String()
	}
	if why := s.m.Misconfigured(); why != "" {
		body["status"], body["reason"] = "misconfigured", why
		code = http.StatusServiceUnavailable
	} else if bl.Checked && !bl.Up {
		body["status"], body["reason"] = "store_unreachable", bl.Err.Error()
		code = http.StatusServiceUnavailable
	}
	st := s.t.Status()
	role := string(st.Role)
	if role == "" {
		role = "unknown"
	}
	body["role"] = role
	if st.Role == timer.RoleStandby && st.Holder.Owner != "" {
		body["sweeper"] = st.Holder.Owner
		body["sweeper_heartbeat_age"] = st.HeartbeatAge.Round(time.Millisecond).String()
	}
	body["feed"] = "running"
	if !s.w.Running() {
		body["feed"] = "standby"
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
}

// Handler serves the metrics, for tests and for embedding.
func (s *Server) Handler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)})
}

// Addr is where the endpoint listens, once started; nil without one.
func (s *Server) Addr() net.Addr { return s.addr }

// Start starts refreshing the backlog figures and listens, if an address is
// set; it does not block.
func (s *Server) Start(context.Context) error {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopRefresh = cancel
	s.refreshing.Add(1)
	go s.refreshLoop(ctx)
	if s.cfg.Listen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		cancel()
		s.refreshing.Wait()
		return fmt.Errorf("metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.Handler())
	mux.HandleFunc("GET /healthz", s.Healthz)
	mux.HandleFunc("GET /readyz", s.Readyz)
	s.addr = ln.Addr()
	// Bounds on every connection, so that no client holds one, and its
	// goroutine, for good: a scrape sends no body and is answered at once.
	s.srv = &http.Server{Handler: HostCheck(s.cfg.Listen, s.cfg.AllowedHosts, s.addr, mux), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	s.done = make(chan error, 1)
	go func() { s.done <- s.srv.Serve(ln) }()
	s.log.Info("serving metrics", "addr", s.addr.String())
	if a, ok := s.addr.(*net.TCPAddr); ok && !a.IP.IsLoopback() {
		s.log.Warn("the metrics endpoint is reachable from other machines; give --metrics-listen a loopback address (127.0.0.1:9464) unless that is meant", "addr", s.addr.String())
	}
	return nil
}

// Stop stops the endpoint and the refresh, and waits for them. Requests
// in progress (a scrape, a probe) get half of what ctx leaves, then their
// connections are closed: a connection whose request never ended kept the
// whole stop, and fx then skipped the stops after this one (the store's
// close).
func (s *Server) Stop(ctx context.Context) error {
	var err error
	if s.srv != nil {
		sctx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok {
			sctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
		}
		if serr := s.srv.Shutdown(sctx); serr != nil {
			// A scrape cut short is no failure of the stop.
			s.log.Warn("metrics: connections still open at the stop were closed", "error", serr)
			s.srv.Close()
		}
		cancel()
		if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
			err = errors.Join(err, serveErr)
		}
	}
	if s.stopRefresh != nil {
		s.stopRefresh()
		s.refreshing.Wait()
	}
	return err
}

// undurable reports, of a store that writes outcomes durably
// (Couchbase), those it wrote without: a vBucket's copies could not meet
// the level.
type undurable struct{ st store.Store }

var descUndurable = prometheus.NewDesc("ordermail_store_writes_without_durability_total",
	"Writes (of outcomes, and of the sweep's flags) made without --cb-durability, which their vBucket's copies could not meet (a node failed over and not rebalanced, a one-node cluster whose bucket has replicas): a failover there may lose them (Couchbase).", nil, nil)

func (u undurable) Describe(ch chan<- *prometheus.Desc) { ch <- descUndurable }

func (u undurable) Collect(ch chan<- prometheus.Metric) {
	if c, ok := u.st.(interface{ WritesWithoutDurability() uint64 }); ok {
		ch <- prometheus.MustNewConstMetric(descUndurable, prometheus.CounterValue, float64(c.WritesWithoutDurability()))
	}
}

// feed reports the subscription's own figures, where it keeps any (the
// Couchbase feed: streams, lag per vBucket, rollbacks, reopens); of the
// embedded store's feed, its lag as the reader sees it.
type feed struct{ w *watcher.Watcher }

var (
	descStreams    = prometheus.NewDesc("ordermail_feed_streams_open", "Change feed streams open (vBuckets on Couchbase).", nil, nil)
	descLag        = prometheus.NewDesc("ordermail_feed_lag_changes", "Changes the store has past the feed's checkpoints, summed over the partitions (the embedded store: past the change last read; 0 when the reader is idle).", nil, nil)
	descMaxLag     = prometheus.NewDesc("ordermail_feed_lag_max_changes", "The largest lag of one partition.", nil, nil)
	descRollbacks  = prometheus.NewDesc("ordermail_feed_rollbacks_total", "Rollbacks the store asked the feed for.", nil, nil)
	descReopens    = prometheus.NewDesc("ordermail_feed_reopens_total", "Streams reopened (ended, refused, unanswered, or restarted from their checkpoints after a late heartbeat).", nil, nil)
	descCkptFailed = prometheus.NewDesc("ordermail_feed_checkpoint_save_failures_total", "Checkpoint documents that could not be saved.", nil, nil)

	// Couchbase without --instance: the instances share the vBuckets.
	descOwned     = prometheus.NewDesc("ordermail_feed_vbuckets_owned", "vBuckets this instance owns (Couchbase: shared by heartbeats, or by --instance i/n).", nil, nil)
	descAside     = prometheus.NewDesc("ordermail_feed_aside", "1 while this instance stands aside: its sends were held back while another member's went out, and it handed its vBuckets to the others.", nil, nil)
	descClaimed   = prometheus.NewDesc("ordermail_feed_vbuckets_claimed_total", "vBuckets this instance claimed: free ones, or those of a member taken for dead.", nil, nil)
	descReleased  = prometheus.NewDesc("ordermail_feed_vbuckets_released_total", "vBuckets this instance handed over to another member.", nil, nil)
	descFenced    = prometheus.NewDesc("ordermail_feed_vbuckets_fenced_total", "vBuckets this instance lost: another member claimed them while it was taken for dead, and its checkpoint writes were refused.", nil, nil)
	descMembers   = prometheus.NewDesc("ordermail_members", "The feed's members by state, as this instance's last heartbeat read them: live, aside (live, but its sends were held back while another's went out: it handed its vBuckets over), stale (heartbeat expired: stopped or cut off), leaving (stopped cleanly).", []string{"state"}, nil)
	descMemberAge = prometheus.NewDesc("ordermail_member_heartbeat_age_seconds", "Time since each member's last heartbeat, by this instance's clock.", []string{"member"}, nil)
	descMemberVBs = prometheus.NewDesc("ordermail_member_vbuckets", "vBuckets each member said it owns at its last heartbeat.", []string{"member"}, nil)
)

func (f *feed) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStreams, descLag, descMaxLag, descRollbacks, descReopens, descCkptFailed,
		descOwned, descAside, descClaimed, descReleased, descFenced, descMembers, descMemberAge, descMemberVBs} {
		ch <- d
	}
}

func (f *feed) Collect(ch chan<- prometheus.Metric) {
	st, ok := f.w.FeedStats()
	if !ok {
		// The embedded store's feed: its lag as the reader sees it, and
		// nothing else it does not count.
		if lag, ok := f.w.ReadLag(); ok {
			ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(lag))
		}
		return
	}
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(st.StreamsOpen))
	ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(st.Lag))
	ch <- prometheus.MustNewConstMetric(descMaxLag, prometheus.GaugeValue, float64(st.MaxLag))
	ch <- prometheus.MustNewConstMetric(descRollbacks, prometheus.CounterValue, float64(st.Rollbacks))
	ch <- prometheus.MustNewConstMetric(descReopens, prometheus.CounterValue, float64(st.Reopens))
	ch <- prometheus.MustNewConstMetric(descCkptFailed, prometheus.CounterValue, float64(st.CheckpointSaveFailures))
	// Owned whichever way the vBuckets are shared (by heartbeats, or a
	// fixed split with --instance i/n): the streams not open are told by it.
	ch <- prometheus.MustNewConstMetric(descOwned, prometheus.GaugeValue, float64(st.Partitions))
	if st.Member == "" {
		return
	}
	aside := 0.0
	if st.Aside {
		aside = 1
	}
	ch <- prometheus.MustNewConstMetric(descAside, prometheus.GaugeValue, aside)
	ch <- prometheus.MustNewConstMetric(descClaimed, prometheus.CounterValue, float64(st.Claimed))
	ch <- prometheus.MustNewConstMetric(descReleased, prometheus.CounterValue, float64(st.Released))
	ch <- prometheus.MustNewConstMetric(descFenced, prometheus.CounterValue, float64(st.Fenced))
	states := map[string]int{"live": 0, "aside": 0, "stale": 0, "leaving": 0}
	for _, m := range st.Members {
		states[m.State()]++
		ch <- prometheus.MustNewConstMetric(descMemberAge, prometheus.GaugeValue, m.HeartbeatAge.Seconds(), m.Name)
		ch <- prometheus.MustNewConstMetric(descMemberVBs, prometheus.GaugeValue, float64(m.Partitions), m.Name)
	}
	for state, n := range states {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(n), state)
	}
}
