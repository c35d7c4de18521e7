package cbtest

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/internal/later"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClusterReadyAndPing(t *testing.T) {
	s := Start(t, Options{Nodes: 2, VBuckets: 32})
	c := connect(t, s)
	require.NoError(t, c.WaitUntilReady(10*time.Second, &gocb.WaitUntilReadyOptions{
		ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeManagement, gocb.ServiceTypeQuery}}))
	b := readyBucket(t, c, "orders")
	res, err := b.Ping(&gocb.PingOptions{ServiceTypes: []gocb.ServiceType{gocb.ServiceTypeKeyValue, gocb.ServiceTypeManagement, gocb.ServiceTypeQuery}})
	require.NoError(t, err)
	for svc, n := range map[gocb.ServiceType]int{gocb.ServiceTypeKeyValue: 2, gocb.ServiceTypeManagement: 2, gocb.ServiceTypeQuery: 2} {
		require.Len(t, res.Services[svc], n, "service %v", svc)
		for _, r := range res.Services[svc] {
			assert.Equal(t, gocb.PingStateOk, r.State, "%v %s: %v", svc, r.Remote, r.Error)
		}
	}
}

func TestBucketManager(t *testing.T) {
	s := Start(t, Options{Nodes: 3, VBuckets: 64})
	c := connect(t, s)
	bm := c.Buckets()
	require.NoError(t, bm.CreateBucket(gocb.CreateBucketSettings{BucketSettings: gocb.BucketSettings{
		Name: "extra", RAMQuotaMB: 128, BucketType: gocb.CouchbaseBucketType, FlushEnabled: true}}, nil))
	err := bm.CreateBucket(gocb.CreateBucketSettings{BucketSettings: gocb.BucketSettings{
		Name: "extra", RAMQuotaMB: 128, BucketType: gocb.CouchbaseBucketType}}, nil)
	assert.ErrorIs(t, err, gocb.ErrBucketExists)

	got, err := bm.GetBucket("extra", nil)
	require.NoError(t, err)
	assert.Equal(t, uint64(128), got.RAMQuotaMB)
	assert.True(t, got.FlushEnabled)
	assert.Equal(t, gocb.CouchbaseBucketType, got.BucketType)
	_, err = bm.GetBucket("nope", nil)
	assert.ErrorIs(t, err, gocb.ErrBucketNotFound)
	all, err := bm.GetAllBuckets(nil)
	require.NoError(t, err)
	assert.Len(t, all, 3)

	// The new bucket is usable at once.
	coll := readyBucket(t, c, "extra").DefaultCollection()
	_, err = coll.Upsert("k", "v", nil)
	require.NoError(t, err)
	require.NoError(t, bm.FlushBucket("extra", nil))
	_, err = coll.Get("k", nil)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound)
	assert.ErrorIs(t, bm.FlushBucket("orders", nil), gocb.ErrBucketNotFlushable)

	require.NoError(t, bm.DropBucket("extra", nil))
	_, err = bm.GetBucket("extra", nil)
	assert.ErrorIs(t, err, gocb.ErrBucketNotFound)
}

func TestCollectionManager(t *testing.T) {
	s := Start(t, Options{Nodes: 2, VBuckets: 32})
	c := connect(t, s)
	b := readyBucket(t, c, "orders")
	cm := b.CollectionsV2()
	require.NoError(t, cm.CreateScope("app", nil))
	assert.ErrorIs(t, cm.CreateScope("app", nil), gocb.ErrScopeExists)
	for _, name := range []string{"inbound", "retry", "deadletter"} {
		require.NoError(t, cm.CreateCollection("app", name, nil, nil))
	}
	require.NoError(t, cm.CreateCollection("_default", "inbound", &gocb.CreateCollectionSettings{MaxExpiry: time.Hour}, nil))
	assert.ErrorIs(t, cm.CreateCollection("app", "retry", nil, nil), gocb.ErrCollectionExists)
	assert.ErrorIs(t, cm.CreateCollection("nope", "x", nil, nil), gocb.ErrScopeNotFound)

	scopes, err := cm.GetAllScopes(nil)
	require.NoError(t, err)
	names := map[string][]string{}
	for _, sc := range scopes {
		for _, col := range sc.Collections {
			names[sc.Name] = append(names[sc.Name], col.Name)
		}
	}
	assert.Equal(t, map[string][]string{"_default": {"_default", "inbound"}, "app": {"inbound", "retry", "deadletter"}}, names)

	// The new collections are usable by KV at once.
	_, err = b.Scope("app").Collection("retry").Upsert("k", "v", nil)
	require.NoError(t, err)

	require.NoError(t, cm.DropCollection("app", "retry", nil))
	assert.ErrorIs(t, cm.DropCollection("app", "retry", nil), gocb.ErrCollectionNotFound)
	require.NoError(t, cm.DropScope("app", nil))
	assert.ErrorIs(t, cm.DropScope("app", nil), gocb.ErrScopeNotFound)

	// Manifest uids are hex strings at every level.
	req, _ := http.NewRequest("GET", s.MgmtURL(1)+"/pools/default/buckets/orders/scopes", nil)
	req.SetBasicAuth(s.Username(), s.Password())
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var man struct {
		UID    string `json:"uid"`
		Scopes []struct {
			UID         string `json:"uid"`
			Collections []struct {
				UID string `json:"uid"`
			} `json:"collections"`
		} `json:"scopes"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&man))
	assert.Equal(t, "7", man.UID, "one bump per change: 1 scope, 4 collections, 1 drop, 1 scope drop")
}

func TestConfigStream(t *testing.T) {
	s := Start(t, Options{Nodes: 2, VBuckets: 16})
	req, _ := http.NewRequest("GET", s.MgmtURL(0)+"/pools/default/bs/orders", nil)
	req.SetBasicAuth(s.Username(), s.Password())
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	var cfg struct {
		Rev  int64 `json:"rev"`
		Name string
		UID  string `json:"collectionsManifestUid"`
	}
	require.NoError(t, dec.Decode(&cfg))
	assert.Equal(t, "orders", cfg.Name)
	first := cfg.Rev
	require.NoError(t, s.CreateCollection("orders", "_default", "c1"))
	require.NoError(t, dec.Decode(&cfg))
	assert.Greater(t, cfg.Rev, first)
	assert.Equal(t, "1", cfg.UID)

	// Unauthenticated requests are refused.
	resp2, err := http.Get(s.MgmtURL(0) + "/pools/default/buckets")
	require.NoError(t, err)
	resp2.Body.Close()
	assert.Equal(t, 401, resp2.StatusCode)
}

// A bucket's maxTTL is its settings' and the expiry of what a collection
// of maxTTL 0 stores without one of its own, as on Couchbase.
func TestABucketsMaxTTLIsInherited(t *testing.T) {
	s := Start(t, Options{Nodes: 1, VBuckets: 16})
	c := connect(t, s)
	b := readyBucket(t, c, "orders")
	bm := c.Buckets()
	settings, err := bm.GetBucket("orders", nil)
	require.NoError(t, err)
	assert.Zero(t, settings.MaxExpiry)
	settings.MaxExpiry = time.Second
	require.NoError(t, bm.UpdateBucket(*settings, nil))
	settings, err = bm.GetBucket("orders", nil)
	require.NoError(t, err)
	assert.Equal(t, time.Second, settings.MaxExpiry)

	coll := b.DefaultCollection()
	_, err = coll.Upsert("k", "v", nil)
	require.NoError(t, err)
	var last error
	require.Eventually(t, func() bool {
		_, last = coll.Get("k", nil)
		return errors.Is(last, gocb.ErrDocumentNotFound)
	}, 30*time.Second, 50*time.Millisecond, "expired by the bucket's maxTTL; the last read: %v", later.Value(func() any { return last }))
}

// A maxTTL past 30 days is a length all the same (a KV expiry field that
// long is a Unix time): a document written under it is there.
func TestALongMaxTTLIsALength(t *testing.T) {
	s := Start(t, Options{Nodes: 1, VBuckets: 16})
	c := connect(t, s)
	b := readyBucket(t, c, "orders")
	settings, err := c.Buckets().GetBucket("orders", nil)
	require.NoError(t, err)
	settings.MaxExpiry = 31 * 24 * time.Hour
	require.NoError(t, c.Buckets().UpdateBucket(*settings, nil))
	_, err = b.DefaultCollection().Upsert("k", "v", nil)
	require.NoError(t, err)
	_, err = b.DefaultCollection().Get("k", nil)
	require.NoError(t, err, "expired at once")
}

// A maxTTL bounds every expiry, as kv_engine's processExpiryTime does: a
// document written to expire in an hour under a maxTTL of a minute
// expires in a minute. A collection of maxTTL -1 (never, Couchbase 7.6)
// inherits none from its bucket, and says -1.
func TestAMaxTTLBoundsEveryExpiryAndMinusOneNone(t *testing.T) {
	var ahead atomic.Int64 // the server's clock ahead of the wall's
	s := Start(t, Options{Nodes: 1, VBuckets: 16, Clock: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }})
	c := connect(t, s)
	b := readyBucket(t, c, "orders")
	cm := b.CollectionsV2()
	require.NoError(t, cm.CreateCollection("_default", "kept", &gocb.CreateCollectionSettings{MaxExpiry: -time.Second}, nil))
	settings, err := c.Buckets().GetBucket("orders", nil)
	require.NoError(t, err)
	settings.MaxExpiry = time.Minute
	require.NoError(t, c.Buckets().UpdateBucket(*settings, nil))
	scopes, err := cm.GetAllScopes(nil)
	require.NoError(t, err)
	var kept *gocb.CollectionSpec
	for _, sc := range scopes {
		for i, col := range sc.Collections {
			if col.Name == "kept" {
				kept = &sc.Collections[i]
			}
		}
	}
	require.NotNil(t, kept)
	assert.Equal(t, -time.Second, kept.MaxExpiry)

	capped := b.DefaultCollection()
	_, err = capped.Upsert("k", "v", &gocb.UpsertOptions{Expiry: time.Hour})
	require.NoError(t, err)
	never := b.Scope("_default").Collection("kept")
	require.Eventually(t, func() bool {
		_, err := never.Upsert("k", "v", nil)
		return err == nil // the collection known to the client
	}, 30*time.Second, 50*time.Millisecond)
	_, err = capped.Get("k", nil)
	require.NoError(t, err, "not expired yet")

	_, err = capped.Upsert("touched", "v", nil)
	require.NoError(t, err)
	_, err = capped.Touch("touched", time.Hour, nil)
	require.NoError(t, err)

	ahead.Store(int64(2 * time.Minute))
	_, err = capped.Get("k", nil)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound, "an hour's expiry bounded by the bucket's maxTTL of a minute")
	_, err = capped.Get("touched", nil)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound, "a touch's hour bounded too")
	_, err = never.Get("k", nil)
	assert.NoError(t, err, "a collection of maxTTL -1 inherits no maxTTL")
}
