package couchbase

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/internal/testpki"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/store/storetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The integration tests run against cbtest, an in-process Couchbase that
// gocb and gocbcore talk to over TCP, or, when ORDERMAIL_TEST_COUCHBASE
// names one, against that real cluster instead
// (ORDERMAIL_TEST_COUCHBASE_USERNAME and _PASSWORD default to
// Administrator and password). The tests that inject faults need cbtest
// and skip on a real cluster.

// testVBuckets keeps cbtest's feeds small: 64 streams instead of 1024.
const testVBuckets = 64

// realCluster is the configuration of the cluster the environment names,
// if it names one.
func realCluster() (Config, bool) {
	conn := os.Getenv("ORDERMAIL_TEST_COUCHBASE")
	if conn == "" {
		return Config{}, false
	}
	cfg := Config{ConnStr: conn, Username: "Administrator", Password: "password"}
	if v := os.Getenv("ORDERMAIL_TEST_COUCHBASE_USERNAME"); v != "" {
		cfg.Username = v
	}
	if v := os.Getenv("ORDERMAIL_TEST_COUCHBASE_PASSWORD"); v != "" {
		cfg.Password = v
	}
	return cfg, true
}

// testCluster is a set-up cluster: the real one, or a cbtest one of nodes
// nodes (srv is nil on a real cluster).
func testCluster(t testing.TB, nodes int) (Config, *cbtest.Server) {
	t.Helper()
	cfg, real := realCluster()
	var srv *cbtest.Server
	if !real {
		srv = cbtest.Start(t, cbtest.Options{Nodes: nodes, VBuckets: testVBuckets})
		// No fault is injected here, so no operation should time out: the
		// bound is generous, for a machine whose cores are all busy (an
		// EXPLAIN took over 5s under scripts/test-under-load.sh, 0.3s idle).
		cfg = Config{ConnStr: srv.ConnStr(), Username: srv.Username(), Password: srv.Password(), Timeout: 30 * time.Second,
			MemberTTL: 2 * time.Second}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, Setup(ctx, cfg, SetupOptions{}, quietLog), "setup")
	return cfg, srv
}

// tlsCluster is a set-up cbtest cluster of one node that lets clients in
// over TLS only, its CA in a file as --cb-ca-cert names one; pki signed
// its certificate. With clientCert, the cluster requires a client
// certificate ("mandatory") and cfg logs in with pki's, with no password.
// tune may change the server's options.
func tlsCluster(t *testing.T, clientCert bool, tune ...func(*cbtest.Options)) (cfg Config, srv *cbtest.Server, pki *testpki.PKI) {
	t.Helper()
	if _, real := realCluster(); real {
		t.Skip("a cluster of its own, with a CA of its own: runs on cbtest only")
	}
	pki, err := testpki.New()
	require.NoError(t, err)
	files, err := pki.WriteFiles(t.TempDir())
	require.NoError(t, err)
	opts := cbtest.Options{VBuckets: testVBuckets, TLS: pki.ServerTLS(clientCert)}
	if clientCert {
		opts.Username = "ordermail test client" // the subject of pki's client certificate
	}
	for _, f := range tune {
		f(&opts)
	}
	srv = cbtest.Start(t, opts)
	cfg = Config{ConnStr: srv.ConnStr(), Username: srv.Username(), Password: srv.Password(), CACertFile: files.CA,
		Timeout: 30 * time.Second, MemberTTL: 2 * time.Second}
	if clientCert {
		cfg.Username, cfg.Password, cfg.CertFile, cfg.KeyFile = "", "", files.ClientCert, files.ClientKey
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, Setup(ctx, cfg, SetupOptions{}, quietLog), "setup over TLS")
	return cfg, srv, pki
}

// fakeCluster is a set-up cbtest cluster, for the tests that inject
// faults; they skip on a real cluster.
func fakeCluster(t *testing.T, opts cbtest.Options) (Config, *cbtest.Server) {
	t.Helper()
	if _, real := realCluster(); real {
		t.Skip("injects faults: runs on cbtest only")
	}
	if opts.VBuckets == 0 {
		opts.VBuckets = testVBuckets
	}
	srv := cbtest.Start(t, opts)
	cfg := Config{ConnStr: srv.ConnStr(), Username: srv.Username(), Password: srv.Password(), Timeout: 5 * time.Second,
		MemberTTL: 2 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, Setup(ctx, cfg, SetupOptions{}, quietLog), "setup")
	return cfg, srv
}

// Setup run again on a cluster whose RAM the buckets already take: asked
// to create a bucket that exists, the cluster answers both errors (the
// name taken, the quota too large) and gocb keeps one at random; setup
// failed a quarter of the time with "invalid argument". A bucket there is
// now never created again.
func TestSetupAgainOnAFullCluster(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{ClusterRAMMB: 200}) // orders and metadata, 100MB each: full
	for i := range 12 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := Setup(ctx, cfg, SetupOptions{}, quietLog)
		cancel()
		require.NoError(t, err, "setup run %d", i+2)
	}
}

// Two setups at once on a fresh cluster both looked for a bucket, found
// none and created it: the second's create is answered "exists" and, on a
// cluster with no RAM left, "invalid argument" (the quota), which gocb
// keeps at random; setup failed then. The bucket there, it goes on.
func TestSetupBeatenToABucketGoesOn(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{ClusterRAMMB: 200}) // orders and metadata, 100MB each: full
	for i := range 12 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := Setup(ctx, cfg, SetupOptions{lookedTooSoon: true}, quietLog)
		cancel()
		require.NoError(t, err, "setup run %d", i+2)
	}
}

// A retry document the cluster expired (a maxTTL on its collection) was
// a deletion the service ignores: its paid order was left unconfirmed,
// with neither a retry nor a dead letter. Such a collection is refused.
func TestACollectionThatExpiresRetriesIsRefused(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	full := cfg.withDefaults()
	require.NoError(t, srv.DropCollection(full.Bucket, full.Scope, order.Retry))
	cluster, _, err := connect(full, quietLog)
	require.NoError(t, err)
	defer cluster.Close(nil)
	require.NoError(t, cluster.Bucket(full.Bucket).CollectionsV2().CreateCollection(full.Scope, order.Retry,
		&gocb.CreateCollectionSettings{MaxExpiry: time.Hour}, nil))
	// Opened (the tools may look at such a store); refused for run.
	st := openStore(t, cfg)
	err = st.CheckRetention(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "collection orders."+full.Scope+".retry expires its documents after 1h0m0s (its maxTTL)")
}

// So is one of maxTTL 0 in a bucket with a maxTTL, which it inherits (the
// test server expires its documents so, as Couchbase does).
func TestACollectionThatInheritsTheBucketsMaxTTLIsRefused(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	full := cfg.withDefaults()
	cluster, _, err := connect(full, quietLog)
	require.NoError(t, err)
	defer cluster.Close(nil)
	settings, err := cluster.Buckets().GetBucket(full.Bucket, nil)
	require.NoError(t, err)
	st := openStore(t, cfg)
	require.NoError(t, st.CheckRetention(context.Background()), "no maxTTL")
	settings.MaxExpiry = 2 * time.Hour
	require.NoError(t, cluster.Buckets().UpdateBucket(*settings, nil))
	err = st.CheckRetention(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "collection orders."+full.Scope+".retry expires its documents after 2h0m0s (the maxTTL of bucket orders, which a collection of maxTTL 0 inherits)")
	// As the error says: the collections' maxTTL set to -1, never.
	for _, coll := range []string{order.Retry, order.DeadLetter} {
		require.NoError(t, cluster.Bucket(full.Bucket).CollectionsV2().UpdateCollection(full.Scope, coll,
			gocb.UpdateCollectionSettings{MaxExpiry: -time.Second}, nil))
	}
	require.NoError(t, openStore(t, cfg).CheckRetention(context.Background()), "retry and dead letters of maxTTL -1 in a bucket of 2h")

	// The metadata bucket's (on another cluster: an update cannot set a
	// bucket's maxTTL back to 0): the checkpoints would expire.
	cfg, _ = fakeCluster(t, cbtest.Options{})
	other, _, err := connect(cfg.withDefaults(), quietLog)
	require.NoError(t, err)
	defer other.Close(nil)
	meta, err := other.Buckets().GetBucket(full.MetadataBucket, nil)
	require.NoError(t, err)
	meta.MaxExpiry = time.Hour
	require.NoError(t, other.Buckets().UpdateBucket(*meta, nil))
	err = openStore(t, cfg).CheckRetention(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "bucket "+full.MetadataBucket+" expires its documents after 1h0m0s (a maxTTL): the feed's checkpoints")
}

// A collection whose maxTTL is its own says so over its bucket's: -1 (never,
// Couchbase 7.6 and later) expires nothing, whatever the bucket's.
func TestExpiringTakesACollectionsOwnMaxTTLFirst(t *testing.T) {
	scopes := func(ttl time.Duration) []gocb.ScopeSpec {
		return []gocb.ScopeSpec{{Name: "_default", Collections: []gocb.CollectionSpec{
			{Name: "_default", ScopeName: "_default", MaxExpiry: ttl},
			{Name: order.Retry, ScopeName: "_default", MaxExpiry: ttl}, {Name: order.DeadLetter, ScopeName: "_default", MaxExpiry: ttl}}}}
	}
	bucket := func(ttl time.Duration) func() time.Duration { return func() time.Duration { return ttl } }
	unread := func() time.Duration { t.Error("the bucket's settings read, not needed"); return 0 }
	assert.NoError(t, expiring(scopes(-time.Second), "b", "_default", unread), "never")
	assert.NoError(t, expiring(scopes(0), "b", "_default", bucket(0)), "none")
	assert.ErrorContains(t, expiring(scopes(0), "b", "_default", bucket(time.Hour)), "the maxTTL of bucket b, which a collection of maxTTL 0 inherits")
	assert.ErrorContains(t, expiring(scopes(time.Minute), "b", "_default", unread), "after 1m0s (its maxTTL)")
	for _, tt := range []struct {
		give time.Duration
		ttl  time.Duration
		own  bool
	}{{-time.Second, 0, true}, {0, 0, false}, {time.Minute, time.Minute, true}} {
		ttl, own := defaultExpiry(scopes(tt.give))
		assert.Equal(t, tt.ttl, ttl, "%v", tt.give)
		assert.Equal(t, tt.own, own, "%v", tt.give)
	}
}

// A wrong password shows to setup only as a timeout (the SDK retries a
// refused login as a connection failure): the message asks about it.
func TestSetupWithAWrongPasswordAsksAboutIt(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	cfg.Password, cfg.Timeout = "wrong", 500*time.Millisecond
	err := Setup(context.Background(), cfg, SetupOptions{}, quietLog)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "are the username")
	assert.Contains(t, err.Error(), "and the password right")
	assert.NotContains(t, err.Error(), "wrong", "the password is not in the message")
}

// openStore opens a store on cfg, closed when the test ends; tune may set
// its test knobs before use.
func openStore(t *testing.T, cfg Config, tune ...func(*Store)) *Store {
	t.Helper()
	s, err := Open(context.Background(), cfg, testLog)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	for _, f := range tune {
		f(s)
	}
	return s
}

func TestIntegrationContract(t *testing.T) {
	run := func(t *testing.T, nodes int) {
		cfg, _ := testCluster(t, nodes)
		cfg.CountsTTL = -1 // the contract reads counts right after writing
		storetest.Run(t, func(t *testing.T) store.Store { return openStore(t, cfg) })
	}
	if _, real := realCluster(); real {
		run(t, 0)
		return
	}
	t.Run("OneNode", func(t *testing.T) { run(t, 1) })
	t.Run("ThreeNodes", func(t *testing.T) { run(t, 3) })
	// couchbases:// with --cb-ca-cert: KV, DCP, query and management
	// all over TLS (the cluster has no other port).
	t.Run("OneNodeOverTLS", func(t *testing.T) {
		cfg, _, _ := tlsCluster(t, false)
		cfg.CountsTTL = -1
		storetest.Run(t, func(t *testing.T) store.Store { return openStore(t, cfg) })
	})
	// --cb-cert-file and --cb-key-file: the client certificate logs in,
	// with no SASL, on a cluster that requires one.
	t.Run("OneNodeWithAClientCertificate", func(t *testing.T) {
		cfg, _, _ := tlsCluster(t, true)
		cfg.CountsTTL = -1
		storetest.Run(t, func(t *testing.T) store.Store { return openStore(t, cfg) })
	})
}

// What goes wrong with TLS shows to the SDK only as a timeout: Open and
// Setup say what it was (a CA that did not sign the cluster's
// certificate, none given, a port that does not speak TLS, a client
// certificate missing or refused) rather than ask whether the bucket
// exists or the password is right.
func TestTLSTroubleIsSaidAsItIs(t *testing.T) {
	cfg, _, _ := tlsCluster(t, false)
	cfg.Timeout = 500 * time.Millisecond
	certCfg, _, certPKI := tlsCluster(t, true)
	certCfg.Timeout = 500 * time.Millisecond
	nobody := certCfg // its certificate, from a CA the cluster trusts, names no user of this one
	nobody.ConnStr = cbtest.Start(t, cbtest.Options{VBuckets: testVBuckets, Username: "someone else",
		TLS: certPKI.ServerTLS(true)}).ConnStr()
	noCert := certCfg
	noCert.CertFile, noCert.KeyFile, noCert.Username, noCert.Password = "", "", "ordermail test client", "any"
	stranger, err := testpki.New()
	require.NoError(t, err)
	strangerFiles, err := stranger.WriteFiles(t.TempDir())
	require.NoError(t, err)
	otherCert := certCfg
	otherCert.CertFile, otherCert.KeyFile = strangerFiles.ClientCert, strangerFiles.ClientKey
	other, err := testpki.New()
	require.NoError(t, err)
	files, err := other.WriteFiles(t.TempDir())
	require.NoError(t, err)
	_, plain := fakeCluster(t, cbtest.Options{})

	wrongCA, noCA, notTLS := cfg, cfg, cfg
	wrongCA.CACertFile = files.CA
	noCA.CACertFile = ""
	notTLS.ConnStr = strings.Replace(plain.ConnStr(), "couchbase://", "couchbases://", 1)
	notTLS.CACertFile = files.CA
	for _, tt := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"a CA that did not sign it", wrongCA, []string{"signed by a CA not trusted here", files.CA + " (--cb-ca-cert)"}},
		{"no CA given", noCA, []string{"signed by a CA not trusted here", "with --cb-ca-cert"}},
		{"no TLS on the port", notTLS, []string{"does not answer in TLS", "couchbase://"}},
		{"no client certificate where one is required", noCert, []string{"refused the TLS login", "with --cb-cert-file and --cb-key-file"}},
		{"a client certificate of no user", nobody, []string{"hung up once it had the client certificate", "name one of its users"}},
		{"a client certificate of a CA it does not trust", otherCert,
			[]string{"refused the TLS login", strangerFiles.ClientCert + " (--cb-cert-file)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each waits out the SDK's timeouts
			s, err := Open(context.Background(), tt.cfg, testLog)
			if err == nil {
				s.Close()
			}
			require.Error(t, err, "open")
			for _, want := range tt.want {
				assert.ErrorContains(t, err, want, "open")
			}
			assert.NotContains(t, err.Error(), "run ordermail setup", "open")
			err = Setup(context.Background(), tt.cfg, SetupOptions{}, quietLog)
			require.Error(t, err, "setup")
			for _, want := range tt.want {
				assert.ErrorContains(t, err, want, "setup")
			}
			assert.NotContains(t, err.Error(), "password right", "setup")
		})
	}
	// TLS that works is not blamed: a bucket missing is said as before,
	// with a password and with a client certificate.
	for _, c := range []Config{cfg, certCfg} {
		c.Bucket = "nope"
		s, err := Open(context.Background(), c, testLog)
		if err == nil {
			s.Close()
		}
		require.Error(t, err)
		assert.ErrorContains(t, err, "bucket nope on couchbases://")
		assert.ErrorContains(t, err, "missing? run ordermail setup")
	}
}

// TestAClusterNotReachedIsSaidAsItIs: where the SDK tells only of a
// timeout, Open and Setup say that nothing listens at the node's data port,
// or that the port there does not speak as a data port (plain to a TLS
// port), instead of asking about the bucket or the password.
func TestAClusterNotReachedIsSaidAsItIs(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := l.Addr().String()
	require.NoError(t, l.Close())
	tlsCfg, _, _ := tlsCluster(t, false)
	toTLSPort := tlsCfg
	toTLSPort.ConnStr = strings.Replace(tlsCfg.ConnStr, "couchbases://", "couchbase://", 1)
	toTLSPort.CACertFile = ""
	banner := greeter(t, "SSH-2.0-OpenSSH_9.6\r\n") // a service that speaks first
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"nothing listening", Config{ConnStr: "couchbase://" + closedAddr, Username: "u", Password: "p"},
			"nothing listens at " + closedAddr + " (connection refused): is Couchbase running there"},
		{"nothing listening, over TLS", Config{ConnStr: "couchbases://" + closedAddr, Username: "u", Password: "p"},
			"nothing listens at " + closedAddr + " (connection refused)"},
		{"plain to a TLS port", toTLSPort, "does not answer as a Couchbase data port"},
		{"plain to another service", Config{ConnStr: "couchbase://" + banner, Username: "u", Password: "p"},
			`does not answer as a Couchbase data port (no memcached answer: its answer begins "SSH-")`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each waits out the SDK's timeouts
			cfg := tt.cfg
			cfg.Timeout = 500 * time.Millisecond
			s, err := Open(context.Background(), cfg, testLog)
			if err == nil {
				s.Close()
			}
			require.Error(t, err, "open")
			assert.ErrorContains(t, err, tt.want, "open")
			assert.NotContains(t, err.Error(), "run ordermail setup", "open")
			err = Setup(context.Background(), cfg, SetupOptions{}, quietLog)
			require.Error(t, err, "setup")
			assert.ErrorContains(t, err, tt.want, "setup")
			assert.NotContains(t, err.Error(), "password right", "setup")
		})
	}
}

// greeter listens on loopback and writes hello to every connection, then
// hangs up; it returns the address.
func greeter(t *testing.T, hello string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(hello + strings.Repeat(" ", 24)))
			c.Close()
		}
	}()
	return l.Addr().String()
}

// TestOneNodeDownOfSeveralIsNotBlamed: with the first node of the
// connection string down and a live one after it, a missing bucket is said
// as a missing bucket, not as the node down.
func TestOneNodeDownOfSeveralIsNotBlamed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := l.Addr().String()
	require.NoError(t, l.Close())
	cfg, _ := fakeCluster(t, cbtest.Options{})
	cfg.ConnStr = strings.Replace(cfg.ConnStr, "couchbase://", "couchbase://"+closedAddr+",", 1)
	cfg.Bucket, cfg.Timeout = "nope", 500*time.Millisecond
	s, err := Open(context.Background(), cfg, testLog)
	if err == nil {
		s.Close()
	}
	require.Error(t, err)
	assert.ErrorContains(t, err, "missing? run ordermail setup")
	assert.NotContains(t, err.Error(), "nothing listens")
}

func TestUnreachableNamesWhy(t *testing.T) {
	err := unreachable("db1.example:11210", &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "db1.example", IsNotFound: true}})
	assert.EqualError(t, err, "db1.example:11210: the name does not resolve (lookup db1.example: no such host): is the host in the connection string right?")
	err = unreachable("10.0.0.9:11210", context.DeadlineExceeded)
	assert.EqualError(t, err, "10.0.0.9:11210 does not answer a connection: is the host right, and does a firewall let its data port through?")
}

func TestIntegrationSetupTwice(t *testing.T) {
	cfg, srv := testCluster(t, 1) // once
	var before map[string][]string
	if srv != nil {
		before = indexes(srv)
	}
	require.NoError(t, Setup(context.Background(), cfg, SetupOptions{}, quietLog), "and again")
	if srv != nil {
		assert.Equal(t, before, indexes(srv), "the second run changes nothing")
		assert.Contains(t, before["inbound"], "#primary", "Scan on inbound has its primary index")
	}
}

func indexes(srv *cbtest.Server) map[string][]string {
	out := map[string][]string{}
	for _, c := range collections {
		out[c] = srv.Indexes("orders", "_default", c)
	}
	return out
}

// explain returns the plan of stmt.
func explain(t *testing.T, s *Store, stmt string, params map[string]interface{}) string {
	t.Helper()
	res, err := s.cluster.Query("EXPLAIN "+stmt, &gocb.QueryOptions{NamedParameters: params, Adhoc: true})
	require.NoError(t, err)
	var plan json.RawMessage
	require.NoError(t, res.One(&plan))
	return string(plan)
}

func TestIntegrationSweepUsesItsIndexes(t *testing.T) {
	cfg, _ := testCluster(t, 1)
	s := openStore(t, cfg)
	plan := explain(t, s, sweepStatement(s.keyspace("retry")), sweepParams(time.Now(), 15*time.Second, 1000))
	assert.Contains(t, plan, "ix_retry_due_next")
	assert.Contains(t, plan, "ix_retry_due_ts")
	assert.NotContains(t, plan, "PrimaryScan", "the sweep does not read every retry document")

	// The probe's: each branch on its own index, in its order.
	params := sweepParams(time.Now(), 15*time.Second, 1)
	params["quantum"] = 15000
	for i, ix := range []string{"ix_retry_due_next", "ix_retry_due_ts"} {
		plan := explain(t, s, oldestDueStatements(s.keyspace("retry"))[i], params)
		assert.Contains(t, plan, ix)
		assert.NotContains(t, plan, "#primary")
	}
}

func TestIntegrationScanUsesThePrimaryIndex(t *testing.T) {
	cfg, _ := testCluster(t, 1)
	s := openStore(t, cfg)
	for _, c := range collections {
		plan := explain(t, s, scanStatement(s.keyspace(c)), map[string]interface{}{"after": "", "limit": 500})
		assert.Contains(t, plan, "#primary", "scan of %s", c)
		assert.NotContains(t, plan, "SequentialScan", "scan of %s needs no sequential scan (nor its role)", c)
	}
}

// The backlog and the counts read the flagged and due retries on their
// indexes: their cost grows with those, not with every retry (the
// flagged ones were counted by fetching each retry document).
func TestIntegrationBacklogReadsOnlyDueRetries(t *testing.T) {
	cfg, _ := testCluster(t, 1)
	s := openStore(t, cfg)
	retry := s.keyspace(order.Retry)
	params := map[string]interface{}{"control": order.ControlKey, "now": 0, "cutoff": 0}
	from := "SELECT RAW COUNT(*) FROM " + retry + " AS r WHERE "
	for _, c := range []struct{ stmt, index string }{
		{flaggedCountStatement(retry), "ix_retry_fire"},
		{from + flaggedRetries, "ix_retry_fire"},
		{from + dueByNext, "ix_retry_due_next"},
		{from + dueByTS, "ix_retry_due_ts"},
	} {
		plan := explain(t, s, c.stmt, params)
		assert.Contains(t, plan, c.index, c.stmt)
		assert.NotContains(t, plan, "#primary", "%s: not every retry", c.stmt)
		for _, other := range []string{"ix_retry_fire", "ix_retry_due_next", "ix_retry_due_ts"} {
			if other != c.index {
				assert.NotContains(t, plan, other, "%s: on its own index alone, which holds what it counts", c.stmt)
			}
		}
	}
}

func TestIntegrationDeadLettersOfAReasonUseTheirIndex(t *testing.T) {
	cfg, _ := testCluster(t, 1)
	s := openStore(t, cfg)
	plan := explain(t, s, deadLettersStatement(s.keyspace(order.DeadLetter)), map[string]interface{}{"reason": "exhausted", "after": "", "limit": 500})
	assert.Contains(t, plan, "ix_deadletter_reason")
	assert.NotContains(t, plan, "#primary", "the dead letters of one reason are read without the others")
	reasons := explain(t, s, deadReasonsStatement(s.keyspace(order.DeadLetter)), nil)
	assert.Contains(t, reasons, "ix_deadletter_why", "the top reasons are counted on the index")
	assert.NotContains(t, reasons, "#primary")
}

// The retries of one reason are read on ix_retry_why, and the status's
// reasons counted on it: their cost grows with them, not with every retry
// (both read every retry document before).
func TestIntegrationRetriesOfAReasonUseTheirIndex(t *testing.T) {
	cfg, _ := testCluster(t, 1)
	s := openStore(t, cfg)
	retry := s.keyspace(order.Retry)
	plan := explain(t, s, retriesStatement(retry), map[string]interface{}{"why": "HTTP 503", "after": "", "limit": 500})
	assert.Contains(t, plan, "ix_retry_why")
	assert.NotContains(t, plan, "#primary", "the retries of one reason are read without the others")
	reasons := explain(t, s, retryReasonsStatement(retry), map[string]interface{}{"control": order.ControlKey})
	assert.Contains(t, reasons, "ix_retry_why", "the reasons are counted on the index")
	assert.NotContains(t, reasons, "#primary")
}

// The reasons on Couchbase (the status's and the console's) are the
// retries' and the dead letters' together (a dead letter's with its last
// HTTP status), named as the embedded store names them, which is given
// the same documents, the five most common first.
func TestIntegrationReasonsOfRetriesAndDeadLetters(t *testing.T) {
	cfg, _ := testCluster(t, 1)
	s := openStore(t, cfg)
	ctx := context.Background()
	emb, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(t.TempDir(), "ordermail.db")})
	require.NoError(t, err)
	defer emb.Close()
	put := func(coll, key string, v any) {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		_, err = s.Upsert(ctx, coll, key, b)
		require.NoError(t, err)
		_, err = emb.Upsert(ctx, coll, key, b)
		require.NoError(t, err)
	}
	for i := range 4 {
		put(order.Retry, fmt.Sprintf("s%d", i), order.RetryDoc{DocID: "x", Attempt: 1, TS: 1, NextAttemptAt: 1 << 50, LastStatus: 503})
	}
	for i := range 3 {
		put(order.Retry, fmt.Sprintf("n%d", i), order.RetryDoc{DocID: "x", Attempt: 1, TS: 1, NextAttemptAt: 1 << 50, LastError: "timeout"})
	}
	put(order.Retry, "h", order.RetryDoc{DocID: "x", Attempt: 1, TS: 1, NextAttemptAt: 1 << 50, HeldBack: "breaker open"})
	put(order.Retry, "plain", order.RetryDoc{DocID: "x", Attempt: 1, TS: 1})
	put(order.Retry, order.ControlKey, map[string]any{})
	for i := range 2 {
		put(order.DeadLetter, fmt.Sprintf("d%d", i), order.DeadLetterDoc{DocID: "x", Reason: order.ReasonExhausted})
	}
	for i := range 5 {
		put(order.DeadLetter, fmt.Sprintf("p%d", i), order.DeadLetterDoc{DocID: "x", Reason: order.ReasonPermanent, LastStatus: 400})
	}
	put(order.DeadLetter, "q", order.DeadLetterDoc{DocID: "x", Reason: order.ReasonPermanent, LastStatus: 422})
	put(order.DeadLetter, "n", order.DeadLetterDoc{DocID: "x", Reason: order.ReasonPermanent, LastStatus: -1}) // no status an answer has
	reasons, err := s.Reasons(ctx)
	require.NoError(t, err)
	want := []store.Tally{
		{Reason: "dead: " + order.ReasonPermanent + " (HTTP 400)", Count: 5},
		{Reason: "retrying: HTTP 503", Count: 4},
		{Reason: "retrying: no answer", Count: 3},
		{Reason: "dead: " + order.ReasonExhausted, Count: 2},
		{Reason: "dead: " + order.ReasonPermanent, Count: 1}, // first of the four of 1, by name
	}
	assert.Equal(t, want, reasons)
	named, err := emb.Reasons(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, named, "the embedded store's names")
}

// BenchmarkScan: reading a collection page by page, per document.
func BenchmarkScan(b *testing.B) {
	const n = 2000
	cfg, _ := testCluster(b, 1)
	s, err := Open(context.Background(), cfg, testLog)
	require.NoError(b, err)
	defer s.Close()
	ctx := context.Background()
	for i := range n {
		_, err := s.Insert(ctx, order.DeadLetter, fmt.Sprintf("k%05d", i), []byte(`{"docId":"k"}`))
		require.NoError(b, err)
	}
	b.ResetTimer()
	for range b.N {
		seen := 0
		require.NoError(b, s.Scan(ctx, order.DeadLetter, "", func(store.Doc) error { seen++; return nil }))
		require.Equal(b, n, seen)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/doc")
}

// A --cb-scope mistyped said the bucket lacked the collections there,
// and to run setup: which would make the mistyped scope. It says the
// scope is not there, and names those that are.
func TestIntegrationMissingScopeIsAClearError(t *testing.T) {
	cfg, _ := testCluster(t, 1)
	cfg.Scope = "no_such_scope"
	_, err := Open(context.Background(), cfg, quietLog)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "has no scope no_such_scope (it has ")
	assert.Contains(t, err.Error(), "is --cb-scope right?")
}

func TestIntegrationMissingCollectionIsAClearError(t *testing.T) {
	cfg, srv := testCluster(t, 1)
	if srv == nil {
		t.Skip("drops a collection: runs on cbtest only")
	}
	require.NoError(t, srv.DropCollection(cfg.withDefaults().Bucket, cfg.withDefaults().Scope, order.DeadLetter))
	_, err := Open(context.Background(), cfg, quietLog)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lacks collections [deadletter]")
	assert.Contains(t, err.Error(), "run ordermail setup")
}

func TestIntegrationWrongPasswordIsAClearError(t *testing.T) {
	cfg, _ := testCluster(t, 1)
	cfg.Password = "definitely-wrong"
	cfg.Timeout = time.Second
	_, err := Open(context.Background(), cfg, quietLog)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "definitely-wrong", "the password is never in a message")
	assert.Contains(t, strings.ToLower(err.Error()), "credentials", "says what may be wrong")
}

// The rest of the suite checks the feed against cbtest's faults. They use
// order.Inbound and order.Retry like the watcher does.
var watched = []string{order.Inbound, order.Retry}

// A cluster set up by an earlier release lacks the indexes added since:
// MissingIndexes names each, with what goes without it, and none once
// setup has run.
// A cluster set up by a release before the sweep's partial indexes has
// indexes that hold the flagged retries too: the new ones are named as
// missing, and setup makes them and drops the old.
func TestSetupReplacesTheSweepsEarlierIndexes(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := context.Background()
	retry := s.keyspace(order.Retry)
	runStatements(t, s, "DROP INDEX ix_retry_due_next ON "+retry, "DROP INDEX ix_retry_due_ts ON "+retry,
		"CREATE INDEX ix_retry_next ON "+retry+"(nextAttemptAt)",
		"CREATE INDEX ix_retry_ts ON "+retry+"(ts) WHERE nextAttemptAt IS MISSING")
	missing, err := s.MissingIndexes(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"ix_retry_due_next on retry (the sweep reads every retry document)",
		"ix_retry_due_ts on retry (the sweep reads every retry document)"}, missing)

	require.NoError(t, Setup(ctx, cfg, SetupOptions{}, quietLog), "setup again")
	ixs := srv.Indexes("orders", "_default", order.Retry)
	assert.Subset(t, ixs, []string{"ix_retry_due_next", "ix_retry_due_ts"})
	assert.NotContains(t, ixs, "ix_retry_next")
	assert.NotContains(t, ixs, "ix_retry_ts")
	missing, err = s.MissingIndexes(ctx)
	require.NoError(t, err)
	assert.Empty(t, missing)
}

// runStatements runs each statement, as an operator would by hand.
func runStatements(t *testing.T, s *Store, stmts ...string) {
	t.Helper()
	for _, stmt := range stmts {
		res, err := s.cluster.Query(stmt, nil)
		require.NoError(t, err, stmt)
		require.NoError(t, res.Close(), stmt)
	}
}

// Setup builds its indexes itself (deferred, then one BUILD per
// collection) and waits until they are online: a build over millions of
// documents outlasts any statement's timeout. Past --cb-index-wait, or
// stopped, it fails naming those still building, which a second setup
// waits for.
func TestSetupWaitsForItsIndexesToBeBuilt(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := context.Background()
	runStatements(t, s, "DROP INDEX ix_retry_fire ON "+s.keyspace(order.Retry),
		"DROP INDEX ix_inbound_paid ON "+s.keyspace(order.Inbound))
	release := srv.HoldIndexBuilds()
	err := Setup(ctx, cfg, SetupOptions{IndexWait: time.Nanosecond}, quietLog)
	require.Error(t, err, "the indexes are still building")
	assert.ErrorContains(t, err, "ix_retry_fire on retry (building)")
	assert.ErrorContains(t, err, "ix_inbound_paid on inbound (building)")
	assert.ErrorContains(t, err, "the cluster goes on building them: run setup again")
	assert.NotContains(t, err.Error(), "#primary", "only those not built are named")
	missing, err := s.MissingIndexes(ctx)
	require.NoError(t, err)
	assert.Len(t, missing, 2, "a statement reads no index before it is built: %v", missing)

	// Setup looks at the states twice after the build started: it waits.
	waiting := func(done chan error) {
		t.Helper()
		looks := srv.IndexStateReads()
		require.Eventually(t, func() bool { return srv.IndexStateReads() >= looks+2*4 }, time.Minute, 10*time.Millisecond,
			"setup looks at the four collections' indexes again")
		select {
		case err := <-done:
			t.Fatalf("setup returned while its indexes were building: %v", err)
		default:
		}
	}
	// Stopped (Ctrl-C), it names those it last saw building, and those only.
	stopped, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Setup(stopped, cfg, SetupOptions{}, quietLog) }()
	waiting(done)
	stop()
	select {
	case err := <-done:
		require.Error(t, err)
		assert.ErrorContains(t, err, "stopped waiting for ix_inbound_paid on inbound (building), ix_retry_fire on retry (building);")
	case <-time.After(time.Minute):
		t.Fatal("setup did not return within a minute of being stopped")
	}

	go func() { done <- Setup(ctx, cfg, SetupOptions{}, quietLog) }()
	waiting(done)
	release()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatal("setup did not return within a minute of the indexes being built")
	}
	missing, err = s.MissingIndexes(ctx)
	require.NoError(t, err)
	assert.Empty(t, missing)
}

// Setups run at once (two operators, two deploy jobs) build the same
// deferred indexes: the one whose BUILD comes second is told they are
// built or building already, and waits as the first does.
func TestSetupsAtOnceAllSucceed(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	for round := range 3 {
		runStatements(t, s, "DROP INDEX ix_retry_fire ON "+s.keyspace(order.Retry), "DROP INDEX ix_deadletter_why ON "+s.keyspace(order.DeadLetter))
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- Setup(context.Background(), cfg, SetupOptions{}, quietLog) }()
		}
		for range 4 {
			require.NoError(t, <-errs, "round %d", round)
		}
	}
	missing, err := s.MissingIndexes(context.Background())
	require.NoError(t, err)
	assert.Empty(t, missing)
}

// An index of a name setup uses, made with another definition (by an
// operator, or a release before the definition's change), is left as it
// is, which IF NOT EXISTS goes by: setup says that its statements do not
// read it, and what to do.
func TestSetupSaysWhichOfItsIndexesAStatementDoesNotRead(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := context.Background()
	dead := s.keyspace(order.DeadLetter)
	runStatements(t, s, "DROP INDEX ix_deadletter_why ON "+dead, "CREATE INDEX ix_deadletter_why ON "+dead+"((reason || lastStatus))")
	var logs bytes.Buffer
	require.NoError(t, Setup(ctx, cfg, SetupOptions{}, slog.New(slog.NewTextHandler(&logs, nil))))
	assert.Contains(t, logs.String(), "online, yet not read by the statement it is for")
	assert.Contains(t, logs.String(), "ix_deadletter_why on deadletter")
	assert.Equal(t, 1, strings.Count(logs.String(), "not read by"), "that one only:\n%s", logs.String())
	assert.Contains(t, srv.Indexes("orders", "_default", order.DeadLetter), "ix_deadletter_why", "left as it is")

	runStatements(t, s, "DROP INDEX ix_deadletter_why ON "+dead)
	logs.Reset()
	require.NoError(t, Setup(ctx, cfg, SetupOptions{}, slog.New(slog.NewTextHandler(&logs, nil))))
	assert.NotContains(t, logs.String(), "not read by")
	missing, err := s.MissingIndexes(ctx)
	require.NoError(t, err)
	assert.Empty(t, missing, "dropped, it is made again")
}

// A user who may make indexes but not collections (query_manage_index
// and the data roles, the buckets and collections made by an
// administrator) runs setup again after an upgrade: the cluster refuses
// the collections before it looks whether they are there, and setup goes
// on to the indexes.
func TestSetupGoesOnPastCollectionsItMayNotMakeButAreThere(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	cfg.Scope = "_default"
	srv.RefuseManagement(true)
	s := openStore(t, cfg)
	require.True(t, srv.DropIndex("orders", "_default", order.Retry, "ix_retry_fire"))
	require.NoError(t, Setup(context.Background(), cfg, SetupOptions{}, quietLog))
	assert.Contains(t, srv.Indexes("orders", "_default", order.Retry), "ix_retry_fire")
	missing, err := s.MissingIndexes(context.Background())
	require.NoError(t, err)
	assert.Empty(t, missing)

	// A collection that is not there is still said to need the right.
	cfg.Scope = "elsewhere"
	err = Setup(context.Background(), cfg, SetupOptions{}, quietLog)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lacks the rights")
}

func TestIntegrationMissingIndexesAreNamed(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := context.Background()
	missing, err := s.MissingIndexes(ctx)
	require.NoError(t, err)
	assert.Empty(t, missing, "setup creates every index")

	runStatements(t, s, "DROP INDEX ix_retry_fire ON "+s.keyspace(order.Retry),
		"DROP INDEX ix_deadletter_reason ON "+s.keyspace(order.DeadLetter), "DROP INDEX ix_retry_why ON "+s.keyspace(order.Retry),
		"DROP INDEX ix_deadletter_why ON "+s.keyspace(order.DeadLetter))
	missing, err = s.MissingIndexes(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"ix_retry_fire on retry (the counts, the backlog and the sweep's pace read every retry document; without a primary index, the sweep flags one batch a tick, unpaced)",
		"ix_retry_why on retry (the console's retries of one reason and the status's reasons read every retry document)",
		"ix_deadletter_reason on deadletter (--reason and the console's filter read every dead letter)",
		"ix_deadletter_why on deadletter (the status's reasons read every dead letter)",
	}, missing, "each once")

	require.NoError(t, Setup(ctx, cfg, SetupOptions{}, quietLog), "setup again")
	missing, err = s.MissingIndexes(ctx)
	require.NoError(t, err)
	assert.Empty(t, missing)

	// Without a primary index a scan has no plan at all.
	require.True(t, srv.DropIndex("orders", "_default", order.DeadLetter, "#primary"))
	missing, err = s.MissingIndexes(ctx)
	require.NoError(t, err)
	require.Len(t, missing, 1)
	assert.Contains(t, missing[0], "#primary on deadletter (the tools and the console cannot list deadletter")
}
