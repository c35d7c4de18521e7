package console

import (
	"context"
	"crypto/sha256"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/ordermail/ordermail/internal/watchfile"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/metrics"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/realclientip/realclientip-go"
	"golang.org/x/time/rate"
)

//go:embed templates/*.html static
var assets embed.FS

// Deps are the parts of the service the console shows and acts through.
type Deps struct {
	Store   store.Store
	Watcher *watcher.Watcher
	Mail    *mailer.Client
	// Timer tells this process's part in sweeping; nil: not told.
	Timer *timer.Timer
	// TimerConfig is the timer's settings: its interval sets the sweep
	// lease's TTL, its quantum when the sample's retries are due.
	TimerConfig timer.Config
	// Health serves /healthz and /readyz (metrics.Server does); nil: the
	// console serves its own /readyz (the store answers) and no /healthz.
	Health Health
}

// Health is what serves the health checks.
type Health interface {
	Healthz(http.ResponseWriter, *http.Request)
	Readyz(http.ResponseWriter, *http.Request)
}

// Console serves the operator's console while the app runs.
type Console struct {
	cfg      Config
	st       store.Store
	w        *watcher.Watcher
	mail     *mailer.Client
	tm       *timer.Timer // nil: not told
	timer    timer.Config
	health   Health
	log      *slog.Logger
	now      func() time.Time
	embedded bool // one process at a time runs the feed (the file's lock)

	tokenHash atomic.Pointer[[32]byte] // nil: no token, read-only; see token
	tokenFile *watchfile.File          // cfg.TokenFile, read again when it changes
	tokenMu   sync.Mutex
	tokenAt   time.Time // when the file's content that tokenHash is of changed
	tokenWarn rate.Sometimes
	sessions  *sessions
	logins    *lru.Cache[string, *rate.Limiter] // login attempts by address, right or wrong
	proxies   realclientip.Strategy             // X-Forwarded-For past the trusted proxies; nil: none trusted
	samples   *sampler
	pages     map[string]*template.Template
	routed    http.Handler // the pages and actions
	handler   http.Handler // routed, behind the Host check of cfg.Listen

	srv  *http.Server
	addr net.Addr
	done chan error
	stop chan struct{}
	wg   sync.WaitGroup
	// life ends when Stop has let requests finish: actions run in it, not
	// in their requests, so that a browser gone (a tab closed, a proxy's
	// timeout) does not cut a redrive of a million short.
	life    context.Context
	endLife context.CancelFunc
	// acting counts the actions under way, which Stop waits for once it
	// has ended life; stopping (under actMu) lets none start after that.
	actMu    sync.Mutex
	stopping bool
	acting   sync.WaitGroup
	// bulk is the redrive or purge of all or of a reason under way, one
	// at a time: a second, asked from a page that showed none (a proxy
	// gave up on the first's answer), would find every dead letter
	// changed under it, and its message would hide the first's.
	bulk bulkAction
	// cookie names the session cookie (sessionCookieName).
	cookie string
}

// actionsEndWait bounds how long Stop waits for actions that life's end
// cut short to return.
const actionsEndWait = 5 * time.Second

// loginAddresses bounds the addresses whose login attempts are kept.
const loginAddresses = 4096

// loginLimit is the login attempts of one address: five at once, then one
// a second. A token of 16 characters or more, 8 of them different, is not
// guessed at that pace if it is random (README says to make it so).
// An IPv6 address counts by its /64, which one machine has whole.
func (c *Console) loginLimit(r *http.Request) *rate.Limiter {
	addr := c.client(r)
	if ip, err := netip.ParseAddr(addr); err == nil && ip.Is6() && !ip.Is4In6() {
		addr = netip.PrefixFrom(ip, 64).Masked().String()
	}
	if l, ok := c.logins.Get(addr); ok { // seen now: the last to go
		return l
	}
	l := rate.NewLimiter(rate.Every(time.Second), 5)
	if prev, ok, _ := c.logins.PeekOrAdd(addr, l); ok {
		return prev // added meanwhile
	}
	return l
}

// client is the address r came from: the connection's, or, when that is
// a trusted proxy (Config.TrustedProxies), the rightmost address of
// X-Forwarded-For that is not one (the addresses left of it the client
// may have written itself). A trusted proxy that names no client is the
// client.
func (c *Console) client(r *http.Request) string {
	addr := r.RemoteAddr
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	if c.proxies == nil {
		return addr
	}
	if ip, ok := peer(r); !ok || !c.trusted(ip) {
		return addr
	}
	if from := c.proxies.ClientIP(r.Header, r.RemoteAddr); from != "" {
		return from
	}
	return addr
}

// peer is the address r's connection came from, IPv4 unmapped.
func peer(r *http.Request) (netip.Addr, bool) {
	addr := r.RemoteAddr
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	ip, err := netip.ParseAddr(addr)
	return ip.Unmap(), err == nil
}

func (c *Console) trusted(ip netip.Addr) bool {
	for _, p := range c.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// sampleEvery is how often the chart's counters are sampled: a bar of the
// chart.
const sampleEvery = time.Minute

// New builds the console of d; now may be nil for time.Now. It reads the
// admin token, failing with a message naming its setting when it is
// unusable.
func New(cfg Config, d Deps, log *slog.Logger, now func() time.Time) (*Console, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if now == nil {
		now = time.Now
	}
	c := &Console{cookie: sessionCookieName(cfg.Listen), cfg: cfg, st: d.Store, w: d.Watcher, mail: d.Mail, tm: d.Timer, timer: d.TimerConfig, health: d.Health,
		now: now, log: log.With("component", "console"),
		sessions: newSessions(cfg.SessionTTL, now),
		samples:  newSampler(d.Watcher.Stats),
	}
	c.life, c.endLife = context.WithCancel(context.Background())
	// Login attempts are limited by address, so that nobody locks the
	// operator out by guessing wrong; the least recently seen addresses
	// go first when there are more (their next try starts afresh).
	var err error
	if c.logins, err = lru.New[string, *rate.Limiter](loginAddresses); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	if len(cfg.TrustedProxies) > 0 {
		ranges := make([]string, len(cfg.TrustedProxies))
		for i, p := range cfg.TrustedProxies {
			ranges[i] = p.String()
		}
		nets, err := realclientip.AddressesAndRangesToIPNets(ranges...)
		if err == nil {
			c.proxies, err = realclientip.NewRightmostTrustedRangeStrategy("X-Forwarded-For", nets)
		}
		if err != nil {
			return nil, fmt.Errorf("admin-trusted-proxies: %w", err)
		}
	}
	_, c.embedded = d.Store.(*embedded.Store)
	if cfg.Listen == "" {
		return c, nil
	}
	tok, err := cfg.token()
	if err != nil {
		return nil, err
	}
	if tok != nil {
		h := sha256.Sum256(tok)
		c.tokenHash.Store(&h)
		if c.tokenFile = watchfile.New("admin-token-file", cfg.TokenFile); c.tokenFile != nil {
			// The token as of this read, with its time: one rotated since
			// the read above is taken now, not left for the next change.
			var b []byte
			b, c.tokenAt, err = c.tokenFile.Read(now())
			if err == nil && checkToken(string(b), "") == nil {
				h := sha256.Sum256([]byte(strings.TrimSpace(string(b))))
				c.tokenHash.Store(&h)
			}
			c.tokenWarn = rate.Sometimes{Interval: time.Minute}
		}
	}
	if c.pages, err = parsePages(now); err != nil {
		return nil, err
	}
	c.samples.take(now())
	c.routed = c.routes()
	c.handler = metrics.HostCheck(cfg.Listen, cfg.AllowedHosts, nil, c.routed)
	return c, nil
}

func parsePages(now func() time.Time) (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"ms":         msTime,
		"when":       when,
		"ago":        func(t time.Time) string { return ago(now(), t) },
		"reltime":    func(t time.Time) string { return reltime(now(), t) },
		"stateClass": stateClass,
		"formKey":    formKey,
		"shown":      ops.Shown,
	}
	pages := map[string]*template.Template{}
	for _, name := range []string{"overview", "list", "order", "confirm", "login", "message"} {
		t, err := template.New(name).Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console templates: %w", err)
		}
		pages[name] = t
	}
	return pages, nil
}

// ReadOnly says whether the console has no admin token, so no actions.
func (c *Console) ReadOnly() bool { return c.tokenHash.Load() == nil }

// Handler serves the console, for tests and for embedding; nil when
// there is no address to listen on. While that address is a loopback one,
// it answers requests to loopback names only (metrics.HostCheck).
func (c *Console) Handler() http.Handler { return c.handler }

// Addr is where the console listens, once started; nil without one.
func (c *Console) Addr() net.Addr { return c.addr }

func (c *Console) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", c.overview)
	mux.HandleFunc("GET /retries", c.listRetries)
	mux.HandleFunc("GET /deadletters", c.listDeadLetters)
	mux.HandleFunc("GET /order", c.order)
	mux.HandleFunc("GET /login", c.loginPage)
	mux.HandleFunc("POST /login", c.login)
	if c.health != nil {
		mux.HandleFunc("GET /healthz", c.health.Healthz)
		mux.HandleFunc("GET /readyz", c.health.Readyz)
	} else {
		mux.HandleFunc("GET /readyz", c.ready)
	}
	mux.Handle("POST /logout", c.action(c.logout))
	mux.Handle("POST /retries/pause", c.action(c.pause))
	mux.Handle("POST /retries/resume", c.action(c.resume))
	mux.Handle("POST /retries/run", c.action(c.runRetry))
	mux.Handle("POST /retries/drop", c.action(c.dropRetry))
	mux.Handle("POST /deadletters/redrive", c.action(c.redrive))
	mux.Handle("POST /deadletters/purge", c.action(c.purge))

	// Every POST comes from a page of the console itself: a browser says
	// where a request comes from (Sec-Fetch-Site, Origin), and a request
	// from elsewhere is refused before any handler sees it.
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.refuse(w, r, http.StatusForbidden, "Refused: this request came from another site. Actions are taken from the console's own pages.")
	}))
	return securityHeaders(cop.Handler(mux))
}

// Start listens, if an address is set, and samples the counters every
// minute; it does not block.
func (c *Console) Start(context.Context) error {
	if c.cfg.Listen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", c.cfg.Listen)
	if err != nil {
		return fmt.Errorf("admin-listen: %w", err)
	}
	c.addr = ln.Addr()
	c.cookie = sessionCookieName(c.addr.String()) // the port bound: ":0" names none of its own
	// Checked against the address listened on: a host name that resolved
	// to loopback is guarded as loopback is.
	c.srv = &http.Server{Handler: metrics.HostCheck(c.cfg.Listen, c.cfg.AllowedHosts, c.addr, c.routed), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelWarn)}
	c.done = make(chan error, 1)
	c.stop = make(chan struct{})
	go func() { c.done <- c.srv.Serve(ln) }()
	c.wg.Add(1)
	go c.sample()
	c.log.Info("serving the console", "addr", c.addr.String(), "read_only", c.ReadOnly())
	if a, ok := c.addr.(*net.TCPAddr); ok && !a.IP.IsLoopback() {
		c.log.Warn("the console is reachable from other machines; give --admin-listen a loopback address (127.0.0.1:9465) unless that is meant; "+
			"logging in there needs HTTPS (a proxy that sets X-Forwarded-Proto: https) or a loopback name", "addr", c.addr.String())
	}
	return nil
}

// sample takes a sample on every minute of the clock, so that each bar of
// the chart is one minute of the clock.
func (c *Console) sample() {
	defer c.wg.Done()
	for {
		now := time.Now()
		t := time.NewTimer(now.Truncate(sampleEvery).Add(sampleEvery).Sub(now))
		select {
		case <-c.stop:
			t.Stop()
			return
		case <-t.C:
			c.samples.take(c.now())
		}
	}
}

// Stop stops serving, lets requests in progress finish for half of the
// time ctx leaves, then ends the actions still running and waits for them
// (half of what is left, 5s at most: they must not use the store once Stop
// returns), and waits for the sampler.
func (c *Console) Stop(ctx context.Context) error {
	if c.srv == nil {
		return nil
	}
	close(c.stop)
	c.wg.Wait()
	// Requests get half of what is left of the stop, so that actions
	// still running are ended, and waited for, within it: the stops after
	// the console's (the store's close) must have their turn.
	sctx, cancel := ctx, context.CancelFunc(func() {})
	if dl, ok := ctx.Deadline(); ok {
		sctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
	}
	err := c.srv.Shutdown(sctx)
	cancel()
	c.actMu.Lock()
	c.stopping = true
	c.actMu.Unlock()
	c.endLife() // actions still running end
	if err != nil {
		c.srv.Close()
	}
	// An action outlives its request, and must not use the store once Stop
	// returns (the store is closed after). Waited for half of what is left
	// again, 5s at most: ctx must not have ended when Stop returns, or fx
	// skips the stops after the console's.
	wait := actionsEndWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	ended := make(chan struct{})
	go func() { c.acting.Wait(); close(ended) }()
	waited := time.NewTimer(wait)
	defer waited.Stop()
	select {
	case <-ended:
	case <-waited.C:
		err = errors.Join(err, fmt.Errorf("console: an action did not end within %s of the stop", wait.Round(time.Millisecond)))
	}
	if serveErr := <-c.done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return err
}
