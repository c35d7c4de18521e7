package cbtest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Options configure a Server. The zero value is a one-node cluster with
// 1024 vBuckets, user Administrator/password and the buckets orders and
// metadata.
type Options struct {
	// Nodes is the number of nodes, 1 to 3. Default 1.
	Nodes int
	// VBuckets per bucket. Default 1024; fewer (e.g. 64) make DCP tests
	// faster. gocbcore accepts any count.
	VBuckets int
	// Username and Password are the only credentials accepted.
	// Defaults Administrator and password.
	Username, Password string
	// Buckets created at start. Default: orders and metadata with only
	// _default._default.
	Buckets []BucketSpec
	// ScramIterations is the PBKDF2 iteration count offered to clients.
	// Default 1024 (the client runs PBKDF2 on every connection).
	ScramIterations int
	// Clock is the server's time, for expiry and CAS. Default time.Now.
	Clock func() time.Time
	// DurabilityImpossible answers durable writes DURABILITY_IMPOSSIBLE
	// (0xa1), as a cluster with fewer data nodes than the bucket has
	// copies does.
	DurabilityImpossible bool
	// MajorityOnly answers durable writes of a level that persists
	// (majorityAndPersistActive, persistToMajority)
	// DURABILITY_INVALID_LEVEL (0xa0), as an ephemeral bucket does.
	MajorityOnly bool
	// MajorityOnlyBuckets are buckets answered as MajorityOnly answers
	// every one: ephemeral buckets among persistent ones.
	MajorityOnlyBuckets []string
	// SequentialScans runs a query that no index serves as a sequential
	// scan, as 7.6 does for a user with the role for it. Default: it
	// fails with 4120 ("No index available"), as 7.1 and 7.2 always do
	// and 7.6 does without that role.
	SequentialScans bool
	// ExpiryPagerInterval is how often expired documents are turned into
	// expirations in the background. Default 1s; negative disables the
	// pager (expiry then happens on access and on ExpireNow).
	ExpiryPagerInterval time.Duration
	// DCPNoopInterval overrides the DCP noop interval the client asks
	// for with set_noop_interval (seconds).
	DCPNoopInterval time.Duration
	// Logf, if set, receives a line per connection-level problem.
	Logf func(format string, args ...any)
	// Trace, if set, receives a line per DCP stream request (with the
	// position asked for and the answer) and per STREAM_END.
	Trace func(format string, args ...any)
	// ClusterRAMMB is the data service's RAM quota that the buckets' RAM
	// quotas share; 0: no limit. ns_server checks every field of a bucket
	// creation and answers all that are wrong at once: a bucket named as
	// one that exists, on a cluster with no room left, gets both errors.
	ClusterRAMMB uint64
	// SyncDCP makes a KV write answer only once every DCP connection of
	// its bucket has sent it (or is held back by flow control; at most
	// 1s), so that changes made one after another reach a client that
	// streams from several nodes in that order. Real servers answer
	// first; this is for tests that depend on that order.
	SyncDCP bool
	// TLS, when set, is the server side of TLS (its Certificates at
	// least) on every port, as on a cluster that lets clients in only
	// encrypted: no plain port listens, the configs name each node's
	// ports kvSSL, mgmtSSL and n1qlSSL, and ConnStr is couchbases://.
	// Over TLS the client logs in with PLAIN (§1.9). Its ClientAuth is
	// the cluster's client certificate authentication: with
	// VerifyClientCertIfGiven ("enable") or RequireAndVerifyClientCert
	// ("mandatory") and ClientCAs, a verified certificate whose subject's
	// common name is Username logs the connection in, with no SASL (a
	// SASL command then answers NOT_SUPPORTED, SDK-RFC 0036), and an HTTP
	// request whatever basic auth it carries; a certificate naming anyone
	// else is refused. Other ClientAuth modes, which do not verify the
	// certificate, are refused by New.
	TLS *tls.Config
}

// BucketSpec is a bucket created at start.
type BucketSpec struct {
	Name string
	// Collections to create, each "scope.collection"; scopes are created
	// as needed. _default._default always exists.
	Collections  []string
	FlushEnabled bool
}

// Server is an in-process Couchbase cluster of 1 to 3 nodes speaking the
// memcached binary protocol (KV and DCP), the management REST API and the
// query service on loopback.
type Server struct {
	opts Options
	// durabilityImpossible: Options.DurabilityImpossible, and then
	// SetDurabilityImpossible.
	durabilityImpossible atomic.Bool
	refuseManagement     atomic.Bool // RefuseManagement
	slow                 sync.Map    // SlowBucket: bucket name -> time.Duration

	mu         sync.Mutex // guards the data and config state below
	rev        int64
	buckets    map[string]*bucket
	order      []string // bucket names in creation order
	cfgChanged chan struct{}
	httpDrop   chan struct{} // closed by DropConnections: ends config streams
	lastCAS    uint64
	query      queryState
	decodes    int // documents queries decoded: each is decoded once (docLocked)
	work       workCounts

	nodes  []*node
	secret atomic.Pointer[secret] // the password accepted; SetPassword swaps it

	done   chan struct{}
	lifeMu sync.Mutex
	closed bool
	wg     sync.WaitGroup

	dcpMu    sync.Mutex
	dcpConns map[*dcpConn]struct{}

	streams streamCounts // open DCP streams per vBucket (streams.go)

	faultMu sync.Mutex // guards faults, updateConflicts and streamReqs
	faults  []*kvFault
	// updateConflicts are the writes ConflictOnUpdate injects.
	updateConflicts []updateConflict
	streamReqs      []StreamRequest

	dcpSigMu sync.Mutex
	dcpSig   chan struct{} // closed and replaced when a DCP producer catches up or blocks

	// passPaused, when set (by this package's tests), is called by a DCP
	// producer's pass between taking its list of streams and locking
	// the bucket, with the number of streams listed.
	passPaused atomic.Pointer[func(streams int)]
}

type node struct {
	idx                        int
	kvLn, mgmtLn, n1qlLn       net.Listener
	kvPort, mgmtPort, n1qlPort int
	mgmtSrv, n1qlSrv           *http.Server

	connMu   sync.Mutex
	conns    map[*kvConn]struct{}
	dcpNames map[string]*kvConn

	hangMu sync.Mutex
	resume chan struct{} // non-nil while the node hangs; closed by Resume
}

// Start starts a server and closes it when the test ends. It fails the
// test if the server cannot start.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := New(opts)
	if err != nil {
		tb.Fatalf("cbtest: %v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

// New starts a server; Close stops it.
func New(opts Options) (*Server, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 1
	}
	if t := opts.TLS; t != nil && (t.ClientAuth == tls.RequestClientCert || t.ClientAuth == tls.RequireAnyClientCert) {
		return nil, errors.New("TLS: a client certificate that logs in must be verified: ClientAuth " +
			"VerifyClientCertIfGiven or RequireAndVerifyClientCert, with ClientCAs")
	}
	if opts.Nodes < 1 || opts.Nodes > 3 {
		return nil, fmt.Errorf("%d nodes: 1 to 3 are supported", opts.Nodes)
	}
	if opts.VBuckets == 0 {
		opts.VBuckets = 1024
	}
	if opts.VBuckets < opts.Nodes || opts.VBuckets > 1024 {
		return nil, fmt.Errorf("%d vBuckets: %d to 1024 are supported", opts.VBuckets, opts.Nodes)
	}
	if opts.Username == "" {
		opts.Username = "Administrator"
	}
	if opts.Password == "" {
		opts.Password = "password"
	}
	if opts.Buckets == nil {
		opts.Buckets = []BucketSpec{{Name: "orders"}, {Name: "metadata"}}
	}
	if opts.ScramIterations <= 0 {
		opts.ScramIterations = 1024
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.ExpiryPagerInterval == 0 {
		opts.ExpiryPagerInterval = time.Second
	}
	s := &Server{
		opts:       opts,
		rev:        1,
		buckets:    map[string]*bucket{},
		cfgChanged: make(chan struct{}),
		httpDrop:   make(chan struct{}),
		done:       make(chan struct{}),
		dcpConns:   map[*dcpConn]struct{}{},
		dcpSig:     make(chan struct{}),
	}
	s.query.init()
	s.durabilityImpossible.Store(opts.DurabilityImpossible)
	if err := s.SetPassword(opts.Password); err != nil {
		return nil, err
	}
	for _, spec := range opts.Buckets {
		if _, err := s.createBucket(bucketParams{name: spec.Name, ramQuotaMB: 100, bucketType: "membase", flush: spec.FlushEnabled}); err != nil {
			return nil, err
		}
		b := s.buckets[spec.Name]
		for _, sc := range spec.Collections {
			scope, coll, ok := strings.Cut(sc, ".")
			if !ok {
				return nil, fmt.Errorf("bucket %s: collection %q is not scope.collection", spec.Name, sc)
			}
			s.mu.Lock()
			if scope != "_default" && b.man.scope(scope) == nil {
				if _, err := s.createScopeLocked(b, scope); err != nil {
					s.mu.Unlock()
					return nil, err
				}
			}
			_, err := s.createCollectionLocked(b, scope, coll, 0, false)
			s.mu.Unlock()
			if err != nil {
				return nil, err
			}
		}
	}
	for i := 0; i < opts.Nodes; i++ {
		n, err := s.listen(i)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.nodes = append(s.nodes, n)
	}
	for _, n := range s.nodes {
		n := n
		s.spawn(func() { s.acceptKV(n) })
		s.spawn(func() { _ = n.mgmtSrv.Serve(n.mgmtLn) })
		s.spawn(func() { _ = n.n1qlSrv.Serve(n.n1qlLn) })
	}
	if opts.ExpiryPagerInterval > 0 {
		s.spawn(s.expiryPager)
	}
	return s, nil
}

func (s *Server) listen(i int) (*node, error) {
	n := &node{idx: i, conns: map[*kvConn]struct{}{}, dcpNames: map[string]*kvConn{}}
	var err error
	port := func(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }
	for _, l := range []*net.Listener{&n.kvLn, &n.mgmtLn, &n.n1qlLn} {
		if *l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			n.closeListeners()
			return nil, err
		}
	}
	n.kvPort, n.mgmtPort, n.n1qlPort = port(n.kvLn), port(n.mgmtLn), port(n.n1qlLn)
	if s.opts.TLS != nil {
		for _, l := range []*net.Listener{&n.kvLn, &n.mgmtLn, &n.n1qlLn} {
			*l = tls.NewListener(*l, s.opts.TLS)
		}
	}
	n.mgmtSrv = &http.Server{Handler: s.httpHandler(n, s.mgmtRoutes(n)), ReadHeaderTimeout: 10 * time.Second}
	n.n1qlSrv = &http.Server{Handler: s.httpHandler(n, s.queryRoutes(n)), ReadHeaderTimeout: 10 * time.Second}
	return n, nil
}

func (n *node) closeListeners() {
	for _, l := range []net.Listener{n.kvLn, n.mgmtLn, n.n1qlLn} {
		if l != nil {
			l.Close()
		}
	}
}

// Close stops every listener, connection and goroutine of the server.
// It is safe to call more than once.
func (s *Server) Close() {
	s.lifeMu.Lock()
	if s.closed {
		s.lifeMu.Unlock()
		s.wg.Wait()
		return
	}
	s.closed = true
	close(s.done)
	s.lifeMu.Unlock()
	for _, n := range s.nodes {
		n.closeListeners()
		n.mgmtSrv.Close()
		n.n1qlSrv.Close()
		n.closeConns(nil)
	}
	s.wg.Wait()
}

// spawn runs f on a goroutine that Close waits for; it reports false,
// without running f, once the server is closing.
func (s *Server) spawn(f func()) bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// enter registers the calling goroutine (an HTTP handler) with Close;
// it reports false once the server is closing. Call s.wg.Done after.
func (s *Server) enter() bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *Server) tracef(format string, args ...any) {
	if s.opts.Trace != nil {
		s.opts.Trace(format, args...)
	}
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// ConnStr is the connection string of every node's KV port, e.g.
// couchbase://127.0.0.1:40001,127.0.0.1:40002 (couchbases:// with
// Options.TLS).
func (s *Server) ConnStr() string {
	var hosts []string
	for _, n := range s.nodes {
		hosts = append(hosts, "127.0.0.1:"+strconv.Itoa(n.kvPort))
	}
	return s.scheme("couchbase") + "://" + strings.Join(hosts, ",")
}

// scheme is plain, or plain+"s" with Options.TLS.
func (s *Server) scheme(plain string) string {
	if s.opts.TLS != nil {
		return plain + "s"
	}
	return plain
}

// Username and Password are the credentials the server accepts.
func (s *Server) Username() string { return s.opts.Username }
func (s *Server) Password() string { return s.secret.Load().password }

// secret is the password the server accepts and its SCRAM credentials by
// mechanism.
type secret struct {
	password string
	creds    map[string]*scramCreds
}

// SetPassword changes the user's password, as an administrator rotating
// it does: every login from now on (KV SASL, HTTP basic) needs the new
// one; connections already logged in stay so.
func (s *Server) SetPassword(password string) error {
	creds, err := newScramCreds(password, s.opts.ScramIterations)
	if err != nil {
		return err
	}
	s.secret.Store(&secret{password: password, creds: creds})
	return nil
}

// NumVBuckets is the vBucket count of every bucket.
func (s *Server) NumVBuckets() int { return s.opts.VBuckets }

// Nodes is the number of nodes.
func (s *Server) Nodes() int { return len(s.nodes) }

// KVAddr, MgmtURL and QueryURL address node i's services.
func (s *Server) KVAddr(i int) string { return "127.0.0.1:" + strconv.Itoa(s.nodes[i].kvPort) }
func (s *Server) MgmtURL(i int) string {
	return s.scheme("http") + "://127.0.0.1:" + strconv.Itoa(s.nodes[i].mgmtPort)
}
func (s *Server) QueryURL(i int) string {
	return s.scheme("http") + "://127.0.0.1:" + strconv.Itoa(s.nodes[i].n1qlPort)
}

// VBucketOf is the vBucket of key, as gocbcore computes it.
func (s *Server) VBucketOf(key string) uint16 { return vbOf([]byte(key), s.opts.VBuckets) }

// NodeOf is the index of the node that holds vBucket vb.
func (s *Server) NodeOf(vb uint16) int { return s.vbNode(vb) }

// vbNode spreads the vBuckets over the nodes in contiguous ranges.
func (s *Server) vbNode(vb uint16) int {
	return int(vb) * s.opts.Nodes / s.opts.VBuckets
}

// bumpRevLocked publishes a new config revision.
func (s *Server) bumpRevLocked() {
	s.rev++
	close(s.cfgChanged)
	s.cfgChanged = make(chan struct{})
}

// expiryPager turns expired documents into expirations periodically.
func (s *Server) expiryPager() {
	t := time.NewTicker(s.opts.ExpiryPagerInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.ExpireNow()
		}
	}
}

// ExpireNow runs the expiry pager once: every document whose expiry has
// passed (by Options.Clock) becomes an expiration tombstone, which DCP
// streams send as EXPIRATION. It returns how many expired.
func (s *Server) ExpireNow() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expireLocked()
}

// bucketParams are the settings of a bucket to create.
type bucketParams struct {
	name       string
	ramQuotaMB uint64
	bucketType string
	replicas   int
	flush      bool
	maxTTL     uint32
}

var errBucketExists = errors.New("Bucket with given name already exists")

func (s *Server) createBucket(p bucketParams) (*bucket, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.name == "" {
		return nil, errors.New("bucket name is empty")
	}
	if _, ok := s.buckets[p.name]; ok {
		return nil, errBucketExists
	}
	b := newBucket(p.name, s.opts.VBuckets)
	b.ramQuotaMB, b.bucketType, b.replicas, b.flushEnabled, b.maxTTL = p.ramQuotaMB, p.bucketType, p.replicas, p.flush, p.maxTTL
	s.buckets[p.name] = b
	s.order = append(s.order, p.name)
	s.bumpRevLocked()
	return b, nil
}

// waitRunning blocks while the node hangs; it reports false if the
// server closes or stop fires first.
func (n *node) waitRunning(done <-chan struct{}, stop <-chan struct{}) bool {
	n.hangMu.Lock()
	ch := n.resume
	n.hangMu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-done:
		return false
	case <-stop:
		return false
	}
}

// closeConns closes the node's KV connections, those selected on bucket
// b only when b is not nil.
func (n *node) closeConns(b *bucket) {
	n.connMu.Lock()
	var cs []*kvConn
	for c := range n.conns {
		cs = append(cs, c)
	}
	n.connMu.Unlock()
	for _, c := range cs {
		if b == nil || c.selectedBucket() == b.name {
			c.close()
		}
	}
}
