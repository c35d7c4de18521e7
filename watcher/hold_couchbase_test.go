package watcher_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermail/ordermail/internal/later"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAHungNodesBacklogHoldsUpNoOtherNodeOnCouchbase is
// TestAHeldNodesEventsLeaveTheReaderItsSlots on the Couchbase store (the
// project's cbtest server, three nodes, through gocb and gocbcore), as the
// service runs there: one worker, so 64 read-ahead slots. A node hung with
// a backlog of orders the feed had already read: their events, each
// waiting apart for the node, kept their slots, and 64 of them stopped the
// reader, and with it every order of the two nodes that answer, until the
// node came back. Now they wait in a room of their own, and the feed reads
// no more of the node's until it answers.
//
// The backlog is made by the email service holding the worker's first
// send: the watcher's reader stops a few events in (the worker's queue),
// and the feed reads ahead the hung node's orders, the only ones written
// yet, as far as it reads ahead (256). Then the other nodes' orders are
// written, behind them, the node hangs, and the email service answers:
// the events read ahead come to the watcher, each to wait for the node.
// The orders of the nodes that answer must all go out while the node
// still hangs, and the hung node's once it is back, each order mailed
// once.
func TestAHungNodesBacklogHoldsUpNoOtherNodeOnCouchbase(t *testing.T) {
	const perSide = 300 // orders on the hung node, and on the two others
	ctx := context.Background()

	srv := cbtest.Start(t, cbtest.Options{Nodes: 3, VBuckets: 64})
	// Setup and the shop's writes (all to nodes that answer) get a
	// generous bound, for a machine whose cores are busy; the watcher's
	// store a short one, so that a read of the hung node fails soon.
	cfg := couchbase.Config{ConnStr: srv.ConnStr(), Username: srv.Username(), Password: srv.Password(),
		Timeout: 30 * time.Second, MemberTTL: 2 * time.Second}
	setupCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	require.NoError(t, couchbase.Setup(setupCtx, cfg, couchbase.SetupOptions{}, quiet), "setup")
	cancel()
	shopCfg := cfg
	shopCfg.Member = "shop"
	shop, err := couchbase.Open(ctx, shopCfg, quiet)
	require.NoError(t, err)
	t.Cleanup(func() { shop.Close() })

	// The node to hang keeps none of the feed's members document (its key
	// is the store's: members:<feed>): a lone member whose heartbeat
	// cannot be written is another story (store/couchbase's tests).
	hung := 1
	if srv.NodeOf(srv.VBucketOf("members:"+store.DefaultFeed)) == hung {
		hung = 2
	}
	nodeOf := func(key string) int { return srv.NodeOf(srv.VBucketOf(key)) }
	keysOn := func(prefix string, onHung bool) []string {
		var keys []string
		for i := 0; len(keys) < perSide; i++ {
			if k := fmt.Sprint(prefix, i); (nodeOf(k) == hung) == onHung {
				keys = append(keys, k)
			}
		}
		return keys
	}
	hungKeys, upKeys := keysOn("held-", true), keysOn("up-", false)
	putAll := func(keys []string) {
		for _, k := range keys {
			_, err := shop.Upsert(ctx, order.Inbound, k, []byte(paidOrder))
			require.NoError(t, err, "write %s", k)
		}
	}
	putAll(hungKeys)

	// The email service holds every request until released: the worker's
	// first send waits there, and nothing of the read-ahead is handled.
	mock, err := mockmail.New(mockmail.Config{})
	require.NoError(t, err)
	gate := make(chan struct{})
	var arrived atomic.Int64
	mailSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == mockmail.SendPath {
			arrived.Add(1)
			<-gate
		}
		mock.ServeHTTP(w, r)
	}))
	t.Cleanup(mailSrv.Close)
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before the server's Close, which waits for the held request
	// The held send must not give up before the node has hung.
	mail, err := mailer.New(mailer.Config{URL: mailSrv.URL, Timeout: 2 * time.Minute}, quiet)
	require.NoError(t, err)

	wcfg := cfg
	wcfg.Member = "w"
	wcfg.Timeout = time.Second // --cb-timeout: a read of the hung node fails after it
	ws, err := couchbase.Open(ctx, wcfg, quiet)
	require.NoError(t, err)
	t.Cleanup(func() { ws.Close() })
	feed := &countedFeed{Store: ws, hung: func(vb uint16) bool { return srv.NodeOf(vb) == hung }}
	// As app wires the watcher for Couchbase (neither a single consumer nor
	// atomic outcomes), with one worker.
	w, err := watcher.New(watcher.Config{Workers: 1, Policy: noJitter}, feed, mail, quiet, nil)
	require.NoError(t, err)
	require.NoError(t, w.Start(ctx))
	t.Cleanup(func() {
		release()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		assert.NoError(t, w.Stop(sctx))
	})

	// Every vBucket streamed (its checkpoint claimed: one on the hung node
	// could not be, later), the worker held in its first send, and the
	// feed's read-ahead full of the hung node's orders: well more than the
	// 64 slots, which they filled before. The feed asks the watcher
	// whether a change's node is held back as it reads the change from its
	// stream, before its read-ahead: while none is, once a change, so the
	// asks count what it read.
	streams := func() int {
		if r := feed.reporter.Load(); r != nil {
			return (*r).FeedStats().StreamsOpen
		}
		return 0
	}
	readAhead := func() int64 { return feed.read.Load() - feed.handed.Load() }
	require.Eventually(t, func() bool {
		return streams() == 64 && arrived.Load() >= 1 && readAhead() >= 2*64
	}, 2*time.Minute, 5*time.Millisecond,
		"no backlog of the node to hang read ahead: %v streams open of 64, %v sends held, %v changes read ahead (%v read, %v handed out)",
		later.Value(func() any { return streams() }), later.Value(func() any { return arrived.Load() }),
		later.Value(func() any { return readAhead() }), later.Value(func() any { return feed.read.Load() }),
		later.Value(func() any { return feed.handed.Load() }))
	require.Equal(t, feed.handed.Load(), feed.handedHung.Load(), "only the node to hang has orders yet")

	// The other nodes' orders wait in their streams, behind the read-ahead.
	putAll(upKeys)
	srv.HangNode(hung)
	t.Cleanup(func() { srv.ResumeNode(hung) }) // on a failure
	release()

	// Delivered orders, by the node of their key.
	delivered := func() (onHung, up int) {
		for key := range mock.Delivered() {
			if nodeOf(order.OrderKeyOf(key)) == hung {
				onHung++
			} else {
				up++
			}
		}
		return onHung, up
	}
	upSent := func() any { _, up := delivered(); return up }
	hungSent := func() any { onHung, _ := delivered(); return onHung }
	require.Eventually(t, func() bool { _, up := delivered(); return up == perSide }, 2*time.Minute, 10*time.Millisecond,
		"orders of the nodes that answer not all sent while node %d hangs: %v of %d; of the hung node %v; held back %v nodes; stalled %v",
		hung, later.Value(upSent), perSide, later.Value(hungSent),
		later.Value(func() any { return w.Stats().Unreachable }), later.Value(func() any { return w.Stalled() }))
	// The one send under way as the node hung (its order read before) may
	// go out; no other order of the node can be read.
	onHung, _ := delivered()
	assert.LessOrEqual(t, onHung, 1, "orders of node %d sent while it hangs", hung)
	assert.Equal(t, int64(1), w.Stats().Unreachable, "node %d held back", hung)
	t.Logf("node %d: %d of its events handed out to the watcher, of %d in all, by the time the others' orders were sent",
		hung, feed.handedHung.Load(), feed.handed.Load())

	srv.ResumeNode(hung)
	require.Eventually(t, func() bool { onHung, _ := delivered(); return onHung == perSide }, 2*time.Minute, 10*time.Millisecond,
		"orders of node %d not all sent after it came back: %v of %d", hung, later.Value(hungSent), perSide)
	// Their outcomes are written after the sends the mock counts; read on
	// the server itself.
	unconfirmed := func() (n int) {
		for _, k := range append(append([]string(nil), hungKeys...), upKeys...) {
			if v, _, _, ok := srv.Doc("orders", "_default", order.Inbound, k); !ok || !strings.Contains(string(v), `"confirmationEmailSent":true`) {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return unconfirmed() == 0 }, 2*time.Minute, 10*time.Millisecond,
		"orders sent and not marked confirmed: %v of %d", later.Value(func() any { return unconfirmed() }), 2*perSide)

	// Each order mailed once: one key delivered per order. A request again
	// with a key delivered (an outcome whose write timed out on the hung
	// node, sent again) is a replay, no email.
	st := mock.Stats()
	assert.Equal(t, 2*perSide, st.Deliveries, "deliveries: one per order")
	orders := map[string]bool{}
	for key := range mock.Delivered() {
		orders[order.OrderKeyOf(key)] = true
	}
	assert.Len(t, orders, 2*perSide, "orders delivered")
	assert.Zero(t, w.Stats().DeadLettered)
	t.Logf("mock: %+v", st)
}

// countedFeed counts the changes the feed read from its streams (it asks
// FeedOptions.LocusHeld of each), the events the watcher's reader took
// from it, and those of the node to hang; it hands on the feed's stats,
// for the streams open.
type countedFeed struct {
	store.Store
	hung               func(vb uint16) bool
	read               atomic.Int64
	handed, handedHung atomic.Int64
	reporter           atomic.Pointer[store.StatsReporter]
}

func (c *countedFeed) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	if held := opts.LocusHeld; held != nil {
		opts.LocusHeld = func(locus int) bool {
			c.read.Add(1)
			return held(locus)
		}
	}
	sub, err := c.Store.Subscribe(ctx, name, colls, opts)
	if err != nil {
		return nil, err
	}
	if r, ok := sub.(store.StatsReporter); ok {
		c.reporter.Store(&r)
	}
	return countedSub{sub, c}, nil
}

type countedSub struct {
	store.Subscription
	c *countedFeed
}

func (s countedSub) Next(ctx context.Context) (store.Event, error) {
	ev, err := s.Subscription.Next(ctx)
	if err == nil {
		s.c.handed.Add(1)
		if s.c.hung(ev.Partition) {
			s.c.handedHung.Add(1)
		}
	}
	return ev, err
}

// FeedStats is the feed's, for the watcher's metrics as without the count.
func (s countedSub) FeedStats() store.FeedStats {
	if r, ok := s.Subscription.(store.StatsReporter); ok {
		return r.FeedStats()
	}
	return store.FeedStats{}
}
