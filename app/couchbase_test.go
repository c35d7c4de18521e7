package app_test

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/metrics"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCouchbaseFeedMetrics: on Couchbase the feed reports its streams and
// lag; the backlog gauges come from the cached counts.
func TestCouchbaseFeedMetrics(t *testing.T) {
	r := newRunOn(t, backend{"couchbase-3nodes", cbtestCluster(3)}, mockmail.Config{})
	r.cfg.Metrics.Listen = "127.0.0.1:0"
	var m *metrics.Server
	a, st := r.start(t, &m)
	defer stop(t, a)
	keys := r.placeOrders(t, st, 20)
	waitConfirmed(t, st, keys)
	url := "http://" + m.Addr().String() + "/metrics"
	var v map[string]string
	var lastScrape atomic.Value // v, for the message: the condition runs in a goroutine of its own
	require.Eventually(t, func() bool {
		v = scrape(t, url)
		lastScrape.Store(v)
		return v["ordermail_feed_streams_open"] == "64" && v["ordermail_orders_confirmed"] == "20"
	}, 60*time.Second, 50*time.Millisecond, "ordermail_feed_streams_open 64 and ordermail_orders_confirmed 20; last scrape: %v",
		later.Value(lastScrape.Load))
	for _, name := range []string{"ordermail_feed_lag_changes", "ordermail_feed_lag_max_changes", "ordermail_feed_rollbacks_total",
		"ordermail_feed_reopens_total", "ordermail_feed_checkpoint_save_failures_total"} {
		assert.Contains(t, v, name)
	}
	assert.Equal(t, "1", v["ordermail_store_up"])

	// A lone member: it owns every vBucket, and the members are shown.
	assert.Equal(t, "64", v["ordermail_feed_vbuckets_owned"])
	assert.Equal(t, "64", v["ordermail_feed_vbuckets_claimed_total"])
	assert.Equal(t, "0", v["ordermail_feed_vbuckets_fenced_total"])
	assert.Equal(t, "1", v[`ordermail_members{state="live"}`])
	assert.Equal(t, "0", v[`ordermail_members{state="stale"}`])
	ages := 0
	for name := range v {
		if strings.HasPrefix(name, "ordermail_member_heartbeat_age_seconds{member=") {
			ages++
		}
	}
	assert.Equal(t, 1, ages, "one member's heartbeat age: %v", v)
}

// TestCouchbaseFeedMetricsOfAFixedSplit: with --instance i/n the vBuckets
// owned are said too (half of the test server's 64 for 1/2), so that
// streams not open are seen there as well; the members' figures are not.
func TestCouchbaseFeedMetricsOfAFixedSplit(t *testing.T) {
	r := newRunOn(t, backend{"couchbase-1node", cbtestCluster(1)}, mockmail.Config{})
	r.cfg.Store.Couchbase.Instance, r.cfg.Store.Couchbase.Instances = 1, 2
	r.cfg.Metrics.Listen = "127.0.0.1:0"
	var m *metrics.Server
	a, _ := r.start(t, &m)
	defer stop(t, a)
	url := "http://" + m.Addr().String() + "/metrics"
	var lastScrape atomic.Value
	require.Eventually(t, func() bool {
		v := scrape(t, url)
		lastScrape.Store(v)
		return v["ordermail_feed_streams_open"] == "32"
	}, 60*time.Second, 50*time.Millisecond, "ordermail_feed_streams_open 32; last scrape: %v", later.Value(lastScrape.Load))
	v := lastScrape.Load().(map[string]string)
	assert.Equal(t, "32", v["ordermail_feed_vbuckets_owned"])
	assert.NotContains(t, v, `ordermail_members{state="live"}`)
}

// TestDroppedCollectionStopsTheService: a watched collection dropped
// under the service stops it with its own exit code, instead of a feed
// that retries forever and confirms nothing.
func TestDroppedCollectionStopsTheService(t *testing.T) {
	sc, srv := startCBTest(t, 1)
	r := newRunOn(t, backend{"couchbase-1node", func(testing.TB) app.StoreConfig { return sc }}, mockmail.Config{})
	a, st := r.start(t)
	keys := r.placeOrders(t, st, 5)
	waitConfirmed(t, st, keys)
	require.NoError(t, srv.DropCollection("orders", "_default", "inbound"))
	select {
	case sig := <-a.Wait():
		assert.Equal(t, app.ExitFeedFailed, sig.ExitCode)
	case <-time.After(60 * time.Second):
		t.Fatal("the service did not stop after its collection was dropped")
	}
	stop(t, a)
}

// A cluster set up by an earlier release lacks the indexes added since:
// run says which, and what to run, and works without them.
func TestRunWarnsOfAMissingIndex(t *testing.T) {
	sc, srv := startCBTest(t, 1)
	require.True(t, srv.DropIndex("orders", "_default", "retry", "ix_retry_fire"))
	r := newRunOn(t, backend{"couchbase-1node", func(testing.TB) app.StoreConfig { return sc }}, mockmail.Config{})
	logs := &logBuffer{}
	r.log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, st := r.start(t)
	defer stop(t, a)
	keys := r.placeOrders(t, st, 20)
	waitAllConfirmed(t, st, keys)
	require.Eventually(t, func() bool {
		return len(logs.Lines("index missing: run `ordermail setup`", "ix_retry_fire on retry (the counts, the backlog and the sweep's pace read every retry document; without a primary index, the sweep flags one batch a tick, unpaced)")) > 0
	}, 60*time.Second, 10*time.Millisecond, "no warning; logs:\n%s", logs)
	assert.Len(t, logs.Lines("index missing"), 1, "only that one; logs:\n%s", logs.String())
}

// A retry collection that would expire its documents (here by its bucket's
// maxTTL, which it inherits) is refused as run starts, not when a tool
// opens the store: an operator may still look at it.
func TestRunRefusesARetryCollectionThatExpires(t *testing.T) {
	sc, srv := startCBTest(t, 1)
	cluster, err := gocb.Connect(sc.URL, gocb.ClusterOptions{Username: srv.Username(), Password: srv.Password()})
	require.NoError(t, err)
	defer cluster.Close(nil)
	settings, err := cluster.Buckets().GetBucket("orders", nil)
	require.NoError(t, err)
	settings.MaxExpiry = time.Hour
	require.NoError(t, cluster.Buckets().UpdateBucket(*settings, nil))

	r := newRunOn(t, backend{"couchbase-1node", func(testing.TB) app.StoreConfig { return sc }}, mockmail.Config{})
	require.NoError(t, r.cfg.Validate())
	a := app.New(context.Background(), r.cfg, r.log)
	require.Error(t, a.Err())
	assert.Contains(t, a.Err().Error(), "retry expires its documents after 1h0m0s (the maxTTL of bucket orders")

	st, err := app.OpenStore(context.Background(), sc, quiet)
	require.NoError(t, err, "a tool opens it")
	require.NoError(t, st.Close())
}
