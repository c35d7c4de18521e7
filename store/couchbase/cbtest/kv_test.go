package cbtest

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// connect opens a gocb cluster on s, closed when the test ends.
func connect(t *testing.T, s *Server) *gocb.Cluster {
	t.Helper()
	c, err := gocb.Connect(s.ConnStr(), gocb.ClusterOptions{
		Authenticator: gocb.PasswordAuthenticator{Username: s.Username(), Password: s.Password()},
		TimeoutsConfig: gocb.TimeoutsConfig{
			ConnectTimeout: 10 * time.Second, KVTimeout: 5 * time.Second,
			QueryTimeout: 10 * time.Second, ManagementTimeout: 10 * time.Second,
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(nil) })
	return c
}

func readyBucket(t *testing.T, c *gocb.Cluster, name string) *gocb.Bucket {
	t.Helper()
	b := c.Bucket(name)
	require.NoError(t, b.WaitUntilReady(10*time.Second, nil))
	return b
}

func TestVBucketOfMatchesGocbcore(t *testing.T) {
	// Vectors from the wire facts §9.1, computed with gocbcore's table.
	for _, tc := range []struct {
		key  string
		n    int
		want uint16
	}{{"foo", 1024, 115}, {"foo", 64, 51}, {"hello", 1024, 528}, {"hello", 64, 16}, {"order_00", 1024, 736}, {"order_00", 64, 32}} {
		assert.Equal(t, tc.want, vbOf([]byte(tc.key), tc.n), "%s/%d", tc.key, tc.n)
	}
}

func TestLEB128(t *testing.T) {
	for v, enc := range map[uint32][]byte{0: {0}, 0x7f: {0x7f}, 0x80: {0x80, 1}, 0x555: {0xd5, 0x0a},
		0xffff: {0xff, 0xff, 3}, 0xffffffff: {0xff, 0xff, 0xff, 0xff, 0x0f}} {
		assert.Equal(t, enc, appendLEB128(nil, v))
		got, n, err := readLEB128(append(enc, 'k'))
		require.NoError(t, err)
		assert.Equal(t, v, got)
		assert.Equal(t, len(enc), n)
	}
	_, _, err := readLEB128([]byte{0x80, 0x00})
	assert.Error(t, err, "non-canonical")
}

func TestKVWithGocb(t *testing.T) {
	for _, nodes := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d nodes", nodes), func(t *testing.T) {
			s := Start(t, Options{Nodes: nodes, VBuckets: 64,
				Buckets: []BucketSpec{{Name: "orders", Collections: []string{"_default.inbound", "app.retry"}}, {Name: "metadata"}}})
			c := connect(t, s)
			b := readyBucket(t, c, "orders")
			for _, coll := range []*gocb.Collection{b.DefaultCollection(), b.Collection("inbound"), b.Scope("app").Collection("retry")} {
				name := coll.ScopeName() + "." + coll.Name()
				for i := 0; i < 20; i++ { // keys over several vBuckets, so every node serves some
					key := fmt.Sprintf("order_%02d", i)
					res, err := coll.Upsert(key, map[string]any{"n": i}, nil)
					require.NoError(t, err, name)
					assert.NotZero(t, res.Cas())
					assert.NotZero(t, res.MutationToken().SequenceNumber(), "mutation tokens are granted")
				}
				get, err := coll.Get("order_07", nil)
				require.NoError(t, err, name)
				var doc map[string]int
				require.NoError(t, get.Content(&doc))
				assert.Equal(t, 7, doc["n"])

				_, err = coll.Insert("order_07", map[string]any{"n": 0}, nil)
				assert.ErrorIs(t, err, gocb.ErrDocumentExists, name)
				ins, err := coll.Insert("fresh", "a string", nil)
				require.NoError(t, err)

				_, err = coll.Replace("fresh", "b", &gocb.ReplaceOptions{Cas: ins.Cas() + 1})
				assert.ErrorIs(t, err, gocb.ErrCasMismatch, name)
				rep, err := coll.Replace("fresh", "b", &gocb.ReplaceOptions{Cas: ins.Cas()})
				require.NoError(t, err)
				assert.NotEqual(t, ins.Cas(), rep.Cas())
				_, err = coll.Replace("missing", "x", nil)
				assert.ErrorIs(t, err, gocb.ErrDocumentNotFound)

				got, err := coll.Get("fresh", nil)
				require.NoError(t, err)
				var str string
				require.NoError(t, got.Content(&str))
				assert.Equal(t, "b", str)
				assert.Equal(t, rep.Cas(), got.Cas())

				_, err = coll.Remove("fresh", &gocb.RemoveOptions{Cas: rep.Cas() + 1})
				assert.ErrorIs(t, err, gocb.ErrCasMismatch)
				_, err = coll.Remove("fresh", &gocb.RemoveOptions{Cas: rep.Cas()})
				require.NoError(t, err)
				_, err = coll.Get("fresh", nil)
				assert.ErrorIs(t, err, gocb.ErrDocumentNotFound)
				_, err = coll.Remove("fresh", nil)
				assert.ErrorIs(t, err, gocb.ErrDocumentNotFound)
				// A removed key can be inserted again.
				_, err = coll.Insert("fresh", "again", nil)
				require.NoError(t, err)
			}
			// The data landed where gocbcore routed it, on the right node.
			raw, _, _, ok := s.Doc("orders", "app", "retry", "order_03")
			require.True(t, ok)
			assert.JSONEq(t, `{"n":3}`, string(raw))

			meta := readyBucket(t, c, "metadata")
			_, err := meta.DefaultCollection().Upsert("checkpoint", json.RawMessage(`{"seqNo":1}`), nil)
			require.NoError(t, err)
		})
	}
}

func TestExpiry(t *testing.T) {
	clock := newFakeClock()
	s := Start(t, Options{VBuckets: 16, Clock: clock.Now, ExpiryPagerInterval: -1})
	c := connect(t, s)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	_, err := coll.Upsert("short", "v", &gocb.UpsertOptions{Expiry: 10 * time.Second})
	require.NoError(t, err)
	_, err = coll.Touch("short", 20*time.Second, nil)
	require.NoError(t, err)
	clock.Advance(15 * time.Second)
	_, err = coll.Get("short", nil)
	require.NoError(t, err, "touch extended the expiry")
	clock.Advance(10 * time.Second)
	_, err = coll.Get("short", nil)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound)
}

func TestUnknownBucketAndBadPassword(t *testing.T) {
	s := Start(t, Options{VBuckets: 16})
	c := connect(t, s)
	err := c.Bucket("nope").WaitUntilReady(500*time.Millisecond, nil)
	assert.ErrorIs(t, err, gocb.ErrUnambiguousTimeout)

	bad, err := gocb.Connect(s.ConnStr(), gocb.ClusterOptions{
		Authenticator: gocb.PasswordAuthenticator{Username: s.Username(), Password: "wrong"},
	})
	require.NoError(t, err)
	defer bad.Close(nil)
	err = bad.Bucket("orders").WaitUntilReady(500*time.Millisecond, nil)
	assert.Error(t, err)
}

func TestRollbackRestoresOlderVersions(t *testing.T) {
	s := Start(t, Options{VBuckets: 1})
	c := connect(t, s)
	coll := readyBucket(t, c, "orders").DefaultCollection()
	_, err := coll.Upsert("k", "v1", nil)
	require.NoError(t, err)
	at := s.HighSeqno("orders", 0)
	_, err = coll.Upsert("k", "v2", nil)
	require.NoError(t, err)
	_, err = coll.Upsert("later", "x", nil)
	require.NoError(t, err)
	require.NoError(t, s.Rollback("orders", 0, at))
	assert.Equal(t, at, s.HighSeqno("orders", 0))
	got, err := coll.Get("k", nil)
	require.NoError(t, err)
	var v string
	require.NoError(t, got.Content(&v))
	assert.Equal(t, "v1", v)
	_, err = coll.Get("later", nil)
	assert.ErrorIs(t, err, gocb.ErrDocumentNotFound)
	res, err := coll.Upsert("next", "y", nil)
	require.NoError(t, err)
	assert.Equal(t, at+1, res.MutationToken().SequenceNumber())
	assert.Equal(t, s.FailoverLog("orders", 0)[0].VBUUID, res.MutationToken().PartitionUUID())
}
