package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config of the metrics endpoint.
type Config struct {
	// Listen is the address of GET /metrics, e.g. :9464; empty: no endpoint.
	Listen string
}

// Server serves /metrics while the app runs.
type Server struct {
	cfg  Config
	reg  *prometheus.Registry
	m    *mailer.Client
	log  *slog.Logger
	srv  *http.Server
	addr net.Addr
	done chan error
}

// New registers the metrics of w, t, m and st.
func New(cfg Config, w *watcher.Watcher, t *timer.Timer, m *mailer.Client, st store.Store, log *slog.Logger) (*Server, error) {
	reg := prometheus.NewRegistry()
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ordermail_" + name, Help: help}, f)
	}
	stat := func(f func(watcher.Stats) int64) func() float64 {
		return func() float64 { return float64(f(w.Stats())) }
	}
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		counter("events_handled_total", "Feed events whose outcome was written and acknowledged.", stat(func(s watcher.Stats) int64 { return s.Handled })),
		counter("sends_total", "Calls to the email service.", stat(func(s watcher.Stats) int64 { return s.Sends })),
		counter("sends_succeeded_total", "Calls answered 200.", stat(func(s watcher.Stats) int64 { return s.Sent })),
		counter("send_failures_total", "Calls that failed or were held back by the breaker.", stat(func(s watcher.Stats) int64 { return s.SendFailures })),
		counter("dead_lettered_total", "Confirmations moved to the dead letters.", stat(func(s watcher.Stats) int64 { return s.DeadLettered })),
		counter("events_ignored_total", "Feed events that needed nothing (not paid, own writes...).", stat(func(s watcher.Stats) int64 { return s.Ignored })),
		counter("timer_ticks_total", "Retry timer ticks.", func() float64 { return float64(t.Ticks()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ordermail_breaker_open", Help: "1 while the circuit breaker holds sends back (open or half-open)."},
			func() float64 {
				if m.BreakerState() == "closed" {
					return 0
				}
				return 1
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ordermail_mail_misconfigured",
			Help: "1 while the email service refuses ordermail's configuration (401/403, TLS, an unreadable settings file) and sends are held; /readyz says why."},
			func() float64 {
				if m.Misconfigured() == "" {
					return 0
				}
				return 1
			}),
		&backlog{st: st, log: log},
		&feed{w: w},
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return &Server{cfg: cfg, reg: reg, m: m, log: log.With("component", "metrics")}, nil
}

// ready answers GET /readyz: 200 while ordermail can send, 503 with the
// reason while the email service refuses its configuration, which a person
// must fix (an orchestrator should not route to, or count on, it).
func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if why := s.m.Misconfigured(); why != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(map[string]string{"status": "misconfigured", "reason": why})
		return
	}
	json.NewEncoder(w).Encode(map[string]string{"status": "ready"})
}

// Handler serves the metrics, for tests and for embedding.
func (s *Server) Handler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)})
}

// Addr is where the endpoint listens, once started; nil without one.
func (s *Server) Addr() net.Addr { return s.addr }

// Start listens, if an address is set; it does not block.
func (s *Server) Start(context.Context) error {
	if s.cfg.Listen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.Handler())
	mux.HandleFunc("GET /readyz", s.ready)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.addr = ln.Addr()
	s.done = make(chan error, 1)
	go func() { s.done <- s.srv.Serve(ln) }()
	s.log.Info("serving metrics", "addr", s.addr.String())
	if a, ok := s.addr.(*net.TCPAddr); ok && !a.IP.IsLoopback() {
		s.log.Warn("the metrics endpoint is reachable from other machines; give --metrics-listen a loopback address (127.0.0.1:9464) unless that is meant", "addr", s.addr.String())
	}
	return nil
}

// Stop stops the endpoint and waits for it.
func (s *Server) Stop(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return err
}

// feed reports the subscription's own figures, where it keeps any (the
// Couchbase feed: streams, lag per vBucket, rollbacks, reopens).
type feed struct{ w *watcher.Watcher }

var (
	descStreams    = prometheus.NewDesc("ordermail_feed_streams_open", "Change feed streams open (vBuckets on Couchbase).", nil, nil)
	descLag        = prometheus.NewDesc("ordermail_feed_lag_changes", "Changes the store has past the feed's checkpoints, summed over the partitions.", nil, nil)
	descMaxLag     = prometheus.NewDesc("ordermail_feed_lag_max_changes", "The largest lag of one partition.", nil, nil)
	descRollbacks  = prometheus.NewDesc("ordermail_feed_rollbacks_total", "Rollbacks the store asked the feed for.", nil, nil)
	descReopens    = prometheus.NewDesc("ordermail_feed_reopens_total", "Streams reopened (ended, refused or unanswered).", nil, nil)
	descCkptFailed = prometheus.NewDesc("ordermail_feed_checkpoint_save_failures_total", "Checkpoint documents that could not be saved.", nil, nil)
)

func (f *feed) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStreams, descLag, descMaxLag, descRollbacks, descReopens, descCkptFailed} {
		ch <- d
	}
}

func (f *feed) Collect(ch chan<- prometheus.Metric) {
	st, ok := f.w.FeedStats()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(st.StreamsOpen))
	ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(st.Lag))
	ch <- prometheus.MustNewConstMetric(descMaxLag, prometheus.GaugeValue, float64(st.MaxLag))
	ch <- prometheus.MustNewConstMetric(descRollbacks, prometheus.CounterValue, float64(st.Rollbacks))
	ch <- prometheus.MustNewConstMetric(descReopens, prometheus.CounterValue, float64(st.Reopens))
	ch <- prometheus.MustNewConstMetric(descCkptFailed, prometheus.CounterValue, float64(st.CheckpointSaveFailures))
}

// backlog reads the store's counts at each scrape.
type backlog struct {
	st  store.Store
	log *slog.Logger
}

var (
	descUp        = prometheus.NewDesc("ordermail_store_up", "1 when the store answered the last scrape's counts.", nil, nil)
	descPaid      = prometheus.NewDesc("ordermail_orders_paid", "Orders whose paymentStatus is paid.", nil, nil)
	descConfirmed = prometheus.NewDesc("ordermail_orders_confirmed", "Paid orders whose confirmation went out.", nil, nil)
	descRetries   = prometheus.NewDesc("ordermail_retry_documents", "Pending retries (allow_retrys not counted).", nil, nil)
	descFlagged   = prometheus.NewDesc("ordermail_retry_documents_flagged", "Retries flagged fireRetry, about to be sent.", nil, nil)
	descDead      = prometheus.NewDesc("ordermail_dead_letters", "Confirmations given up on, waiting for a redrive.", nil, nil)
)

func (b *backlog) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descPaid, descConfirmed, descRetries, descFlagged, descDead} {
		ch <- d
	}
}

func (b *backlog) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := b.st.Counts(ctx)
	if err != nil {
		b.log.Warn("metrics: store counts", "error", err)
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	for d, v := range map[*prometheus.Desc]int{descPaid: c.OrdersPaid, descConfirmed: c.OrdersConfirmed,
		descRetries: c.RetryDocs, descFlagged: c.RetryFlagged, descDead: c.DeadLetters} {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
}
