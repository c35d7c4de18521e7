package couchbase

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/couchbase/gocbcore/v10"
	"github.com/couchbase/gocbcore/v10/memd"
	"github.com/ordermail/ordermail/store"
)

// dcpClient is the real dcpAgent, on gocbcore's DCP agent.
type dcpClient struct {
	agent     *gocbcore.DCPAgent
	timeout   time.Duration
	closeOnce sync.Once // gocbcore panics on a second Close
	closeErr  error
}

var _ dcpAgent = (*dcpClient)(nil)

// security adds the credentials and the CA to what the connection string
// set (couchbases:// sets TLS).
func security(cfg Config, creds *credentials, sec gocbcore.SecurityConfig) (gocbcore.SecurityConfig, error) {
	sec.Auth = coreAuth{creds}
	pool, err := cfg.caPool()
	if err != nil {
		return sec, err
	}
	if pool != nil {
		sec.UseTLS = true
		sec.TLSRootCAProvider = func() *x509.CertPool { return pool }
	}
	return sec, nil
}

// await turns one of gocbcore's callback calls into a blocking one that
// gives up after timeout or when ctx ends.
func await[T any](ctx context.Context, timeout time.Duration, call func(cb func(T, error)) (gocbcore.PendingOp, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	op, err := call(func(v T, err error) { ch <- result{v, err} })
	if err != nil {
		var zero T
		return zero, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	var why error
	select {
	case r := <-ch:
		return r.v, r.err
	case <-t.C:
		why = fmt.Errorf("%w: no answer in %s", store.ErrUnavailable, timeout)
	case <-ctx.Done():
		why = ctx.Err()
	}
	op.Cancel()
	r := <-ch // a cancelled op still calls back
	if r.err == nil {
		return r.v, nil
	}
	var zero T
	return zero, why
}

// failFast makes gocbcore answer at once instead of retrying until the
// deadline (an unknown collection, for one, is retried by default).
type failFast struct{}

func (failFast) RetryAfter(gocbcore.RetryRequest, gocbcore.RetryReason) gocbcore.RetryAction {
	return &gocbcore.NoRetryRetryAction{}
}

func newDCPClient(ctx context.Context, cfg Config, creds *credentials, streamName string) (*dcpClient, error) {
	ac := &gocbcore.DCPAgentConfig{}
	if err := ac.FromConnStr(cfg.ConnStr); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var err error
	if ac.SecurityConfig, err = security(cfg, creds, ac.SecurityConfig); err != nil {
		return nil, err
	}
	ac.BucketName = cfg.Bucket
	ac.UserAgent = "ordermail"
	ac.IoConfig.UseCollections = true
	ac.DCPConfig.UseExpiryOpcode = true
	// Values arrive as stored: no snappy to undo.
	ac.CompressionConfig.Enabled = false
	agent, err := gocbcore.CreateDcpAgent(ac, streamName, memd.DcpOpenFlagProducer)
	if err != nil {
		return nil, fmt.Errorf("dcp agent: %w", err)
	}
	c := &dcpClient{agent: agent, timeout: cfg.Timeout}
	_, err = await(ctx, 3*cfg.Timeout, func(cb func(*gocbcore.WaitUntilReadyResult, error)) (gocbcore.PendingOp, error) {
		return agent.WaitUntilReady(time.Now().Add(3*cfg.Timeout), gocbcore.WaitUntilReadyOptions{}, cb)
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("dcp agent on bucket %s: %w", cfg.Bucket, err)
	}
	return c, nil
}

func (c *dcpClient) OpenStream(vb uint16, from position, ids []uint32, obs gocbcore.StreamObserver, cb func(uint64, error)) (func(), error) {
	opts := gocbcore.OpenStreamOptions{FilterOptions: &gocbcore.OpenStreamFilterOptions{CollectionIDs: ids}}
	op, err := c.agent.OpenStream(vb, 0, gocbcore.VbUUID(from.UUID), gocbcore.SeqNo(from.Seq), gocbcore.SeqNo(math.MaxUint64),
		gocbcore.SeqNo(from.SnapStart), gocbcore.SeqNo(from.SnapEnd), obs, opts,
		func(entries []gocbcore.FailoverEntry, err error) {
			var uuid uint64
			if err == nil && len(entries) > 0 {
				uuid = uint64(entries[0].VbUUID)
			}
			cb(uuid, err)
		})
	if err != nil {
		return nil, err
	}
	return op.Cancel, nil
}

func (c *dcpClient) CloseStream(ctx context.Context, vb uint16) error {
	_, err := await(ctx, c.timeout, func(cb func(struct{}, error)) (gocbcore.PendingOp, error) {
		return c.agent.CloseStream(vb, gocbcore.CloseStreamOptions{}, func(err error) { cb(struct{}{}, err) })
	})
	if errors.Is(err, gocbcore.ErrDocumentNotFound) {
		return nil // no stream was open
	}
	return err
}

func (c *dcpClient) FailoverLog(ctx context.Context, vb uint16) ([]gocbcore.FailoverEntry, error) {
	return await(ctx, c.timeout, func(cb func([]gocbcore.FailoverEntry, error)) (gocbcore.PendingOp, error) {
		return c.agent.GetFailoverLog(vb, cb)
	})
}

func (c *dcpClient) numVbuckets() (int, error) {
	snap, err := c.agent.ConfigSnapshot()
	if err != nil {
		return 0, err
	}
	return snap.NumVbuckets()
}

// HighSeqnos asks each node that holds some of vbs, and only those, for
// its active vBuckets' high seqnos.
func (c *dcpClient) HighSeqnos(ctx context.Context, vbs []uint16) (map[uint16]uint64, error) {
	got, err := c.vbSeqnos(ctx, vbs, nil)
	if err != nil {
		return nil, err
	}
	out := make(map[uint16]uint64, len(vbs))
	for _, vb := range vbs {
		s, ok := got[vb]
		if !ok {
			return nil, fmt.Errorf("no node reported vb %d as active (rebalance under way?)", vb)
		}
		out[vb] = s
	}
	return out, nil
}

// ServerOf names the node holding vb's active copy: its index in the
// cluster map, with the map's revision (a failover renumbers the nodes:
// an index alone would name another node in a later map).
func (c *dcpClient) ServerOf(vb uint16) int {
	snap, err := c.agent.ConfigSnapshot()
	if err != nil {
		return -1
	}
	i, err := snap.VbucketToServer(vb, 0)
	if err != nil || i < 0 {
		return -1
	}
	return int(snap.RevID())<<10 | i&1023
}

// CollectionHighSeqnos asks each node that holds some of vbs for the high
// seqno of each of ids on its active vBuckets (GET_ALL_VB_SEQNOS with a
// collection id: kv_engine's ep_engine.cc, collectVBucketSequenceNumbers,
// which leaves out a vBucket the collection is not on), and keeps the
// highest for each vBucket.
func (c *dcpClient) CollectionHighSeqnos(ctx context.Context, vbs []uint16, ids []uint32) (map[uint16]uint64, error) {
	out := map[uint16]uint64{}
	for _, id := range ids {
		got, err := c.vbSeqnos(ctx, vbs, &gocbcore.GetVbucketSeqnoFilterOptions{CollectionID: id})
		if err != nil {
			return nil, fmt.Errorf("collection %#x: %w", id, err)
		}
		for _, vb := range vbs {
			if s, ok := got[vb]; ok {
				out[vb] = max(out[vb], s)
			}
		}
	}
	return out, nil
}

// vbSeqnos asks the nodes that hold vbs for their active vBuckets' high
// seqnos, or a collection's with filter. gocbcore numbers servers from 1
// here: its GetVbucketSeqnos routes to server index serverIdx-1 (0 means
// "the node of vBucket 0").
func (c *dcpClient) vbSeqnos(ctx context.Context, vbs []uint16, filter *gocbcore.GetVbucketSeqnoFilterOptions) (map[uint16]uint64, error) {
	snap, err := c.agent.ConfigSnapshot()
	if err != nil {
		return nil, err
	}
	byServer := map[int][]uint16{}
	for _, vb := range vbs {
		srv, err := snap.VbucketToServer(vb, 0)
		if err != nil || srv < 0 {
			return nil, fmt.Errorf("vb %d has no active node: %v", vb, err)
		}
		byServer[srv] = append(byServer[srv], vb)
	}
	servers := make([]int, 0, len(byServer))
	for srv := range byServer {
		servers = append(servers, srv)
	}
	sort.Ints(servers)
	opts := gocbcore.GetVbucketSeqnoOptions{FilterOptions: filter}
	if filter != nil {
		opts.RetryStrategy = failFast{} // a dropped collection: retried until the timeout by default
	}
	var mu sync.Mutex
	got := map[uint16]uint64{}
	errs := parallel(ctx, servers, func(ctx context.Context, srv int) error {
		entries, err := await(ctx, c.timeout, func(cb func([]gocbcore.VbSeqNoEntry, error)) (gocbcore.PendingOp, error) {
			return c.agent.GetVbucketSeqnos(srv+1, memd.VbucketStateActive, opts, cb)
		})
		if err != nil {
			return fmt.Errorf("vbucket seqnos of server %d: %w", srv, err)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range entries {
			got[e.VbID] = uint64(e.SeqNo)
		}
		return nil
	})
	if err := joinErrs(errs, len(servers)); err != nil {
		return nil, err
	}
	return got, nil
}

func (c *dcpClient) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.agent.Close() })
	return c.closeErr
}

// collectionIDs asks a short-lived KV agent for the IDs of the collections
// the DCP streams filter on. A missing collection is an error naming it
// that wraps gocbcore.ErrCollectionNotFound (or ErrScopeNotFound).
func collectionIDs(ctx context.Context, cfg Config, creds *credentials, names []string) (map[uint32]string, error) {
	ac := &gocbcore.AgentConfig{}
	if err := ac.FromConnStr(cfg.ConnStr); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var err error
	if ac.SecurityConfig, err = security(cfg, creds, ac.SecurityConfig); err != nil {
		return nil, err
	}
	ac.BucketName = cfg.Bucket
	ac.UserAgent = "ordermail"
	ac.IoConfig.UseCollections = true
	agent, err := gocbcore.CreateAgent(ac)
	if err != nil {
		return nil, fmt.Errorf("kv agent: %w", err)
	}
	defer agent.Close()
	_, err = await(ctx, 3*cfg.Timeout, func(cb func(*gocbcore.WaitUntilReadyResult, error)) (gocbcore.PendingOp, error) {
		return agent.WaitUntilReady(time.Now().Add(3*cfg.Timeout), gocbcore.WaitUntilReadyOptions{
			ServiceTypes: []gocbcore.ServiceType{gocbcore.MemdService}}, cb)
	})
	if err != nil {
		return nil, fmt.Errorf("kv agent on bucket %s: %w", cfg.Bucket, err)
	}
	ids := map[uint32]string{}
	for _, name := range names {
		res, err := await(ctx, 3*cfg.Timeout, func(cb func(*gocbcore.GetCollectionIDResult, error)) (gocbcore.PendingOp, error) {
			return agent.GetCollectionID(cfg.Scope, name, gocbcore.GetCollectionIDOptions{
				Deadline: time.Now().Add(3 * cfg.Timeout), RetryStrategy: failFast{}}, cb)
		})
		if err != nil {
			return nil, fmt.Errorf("collection %s.%s.%s: %w", cfg.Bucket, cfg.Scope, name, err)
		}
		ids[res.CollectionID] = name
	}
	return ids, nil
}

// Subscribe opens DCP streams on the vBuckets this instance owns, filtered
// to colls, resuming from the checkpoints saved under name. The
// subscription also has a Stats() FeedStats method.
func (s *Store) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	ids, err := collectionIDs(ctx, s.cfg, s.creds, colls)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	stream := fmt.Sprintf("ordermail-%s-%s-%d", name, s.member, time.Now().UnixNano())
	if s.cfg.static() {
		stream = fmt.Sprintf("ordermail-%s-%d-of-%d-%d", name, s.cfg.Instance, s.cfg.Instances, time.Now().UnixNano())
	}
	client, err := newDCPClient(ctx, s.cfg, s.creds, stream)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	n, err := client.numVbuckets()
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	vbs := ownedVbuckets(s.cfg, n)
	var own *ownership
	if s.cfg.static() {
		s.log.Info("streaming", "feed", name, "vbuckets", len(vbs), "of", n, "instance", s.cfg.Instance, "instances", s.cfg.Instances)
	} else {
		now := s.feedOpts.now
		if now == nil {
			now = s.now
		}
		own = newOwnership(s, name, s.member, s.cfg.MemberTTL, now)
		if opts.SendsHeld != nil {
			own.step = newStepper(s.cfg.StepAsideAfter, opts.SendsHeld, s.log)
		}
		s.log.Info("streaming as a member", "feed", name, "member", s.member, "vbuckets", n, "member_ttl", s.cfg.MemberTTL)
	}
	resolve := func(ctx context.Context) (map[uint32]string, error) { return collectionIDs(ctx, s.cfg, s.creds, colls) }
	fo := s.feedOpts
	fo.allVBuckets = n
	fo.locusHeld = opts.LocusHeld
	if fo.openTimeout == 0 {
		fo.openTimeout = s.cfg.Timeout
	}
	if fo.opTimeout == 0 {
		fo.opTimeout = s.cfg.Timeout
	}
	f, err := newFeed(ctx, client, metaCheckpoints{s}, resolve, name, ids, vbs, opts.FromNow, fo, s.log, own)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	if err := f.waitReady(ctx); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	if own != nil {
		s.groups.Store(name, own.group)
	}
	return f, nil
}

// ownedVbuckets is the vBuckets an instance streams in static mode, and
// those it may claim (all of them) in membership mode.
func ownedVbuckets(cfg Config, n int) []uint16 {
	var vbs []uint16
	for vb := range n {
		if !cfg.static() || cfg.owns(uint16(vb)) {
			vbs = append(vbs, uint16(vb))
		}
	}
	return vbs
}
