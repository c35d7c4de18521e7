package couchbase

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/couchbase/gocbcore/v10"
	"github.com/couchbase/gocbcore/v10/memd"
	"github.com/ordermail/ordermail/store"
)

// dcpClient is the real dcpAgent, on gocbcore's DCP agent.
type dcpClient struct {
	agent   *gocbcore.DCPAgent
	timeout time.Duration
}

var _ dcpAgent = (*dcpClient)(nil)

// security adds the credentials and the CA to what the connection string
// set (couchbases:// sets TLS).
func security(cfg Config, pw string, sec gocbcore.SecurityConfig) (gocbcore.SecurityConfig, error) {
	sec.Auth = gocbcore.PasswordAuthProvider{Username: cfg.Username, Password: pw}
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

// await turns one of gocbcore's callback calls into a blocking one.
func await[T any](timeout time.Duration, call func(cb func(T, error)) (gocbcore.PendingOp, error)) (T, error) {
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
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(timeout):
		op.Cancel()
		r := <-ch // a cancelled op still calls back
		if r.err == nil {
			return r.v, nil
		}
		var zero T
		return zero, fmt.Errorf("%w: no answer in %s", store.ErrUnavailable, timeout)
	}
}

func newDCPClient(cfg Config, pw, streamName string) (*dcpClient, error) {
	ac := &gocbcore.DCPAgentConfig{}
	if err := ac.FromConnStr(cfg.ConnStr); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var err error
	if ac.SecurityConfig, err = security(cfg, pw, ac.SecurityConfig); err != nil {
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
	_, err = await(3*cfg.Timeout, func(cb func(*gocbcore.WaitUntilReadyResult, error)) (gocbcore.PendingOp, error) {
		return agent.WaitUntilReady(time.Now().Add(3*cfg.Timeout), gocbcore.WaitUntilReadyOptions{}, cb)
	})
	if err != nil {
		agent.Close()
		return nil, fmt.Errorf("dcp agent on bucket %s: %w", cfg.Bucket, err)
	}
	return c, nil
}

func (c *dcpClient) OpenStream(vb uint16, from position, ids []uint32, obs gocbcore.StreamObserver, cb func(uint64, error)) error {
	opts := gocbcore.OpenStreamOptions{FilterOptions: &gocbcore.OpenStreamFilterOptions{CollectionIDs: ids}}
	_, err := c.agent.OpenStream(vb, 0, gocbcore.VbUUID(from.UUID), gocbcore.SeqNo(from.Seq), gocbcore.SeqNo(math.MaxUint64),
		gocbcore.SeqNo(from.SnapStart), gocbcore.SeqNo(from.SnapEnd), obs, opts,
		func(entries []gocbcore.FailoverEntry, err error) {
			var uuid uint64
			if err == nil && len(entries) > 0 {
				uuid = uint64(entries[0].VbUUID)
			}
			cb(uuid, err)
		})
	return err
}

func (c *dcpClient) CloseStream(vb uint16) error {
	_, err := await(c.timeout, func(cb func(struct{}, error)) (gocbcore.PendingOp, error) {
		return c.agent.CloseStream(vb, gocbcore.CloseStreamOptions{}, func(err error) { cb(struct{}{}, err) })
	})
	return err
}

func (c *dcpClient) FailoverLog(vb uint16) ([]gocbcore.FailoverEntry, error) {
	return await(c.timeout, func(cb func([]gocbcore.FailoverEntry, error)) (gocbcore.PendingOp, error) {
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

func (c *dcpClient) HighSeqnos() (map[uint16]position, error) {
	snap, err := c.agent.ConfigSnapshot()
	if err != nil {
		return nil, err
	}
	servers, err := snap.NumServers()
	if err != nil {
		return nil, err
	}
	out := map[uint16]position{}
	for i := range servers {
		entries, err := await(c.timeout, func(cb func([]gocbcore.VbSeqNoEntry, error)) (gocbcore.PendingOp, error) {
			return c.agent.GetVbucketSeqnos(i, memd.VbucketStateActive, gocbcore.GetVbucketSeqnoOptions{}, cb)
		})
		if err != nil {
			return nil, fmt.Errorf("vbucket seqnos of server %d: %w", i, err)
		}
		for _, e := range entries {
			log, err := c.FailoverLog(e.VbID)
			if err != nil {
				return nil, fmt.Errorf("failover log of vb %d: %w", e.VbID, err)
			}
			var uuid uint64
			if len(log) > 0 {
				uuid = uint64(log[0].VbUUID)
			}
			s := uint64(e.SeqNo)
			out[e.VbID] = position{UUID: uuid, Seq: s, SnapStart: s, SnapEnd: s}
		}
	}
	return out, nil
}

func (c *dcpClient) Close() error { return c.agent.Close() }

// collectionIDs asks a short-lived KV agent for the IDs of the collections
// the DCP streams filter on.
func collectionIDs(cfg Config, pw string, names []string) (map[uint32]string, error) {
	ac := &gocbcore.AgentConfig{}
	if err := ac.FromConnStr(cfg.ConnStr); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var err error
	if ac.SecurityConfig, err = security(cfg, pw, ac.SecurityConfig); err != nil {
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
	ids := map[uint32]string{}
	for _, name := range names {
		res, err := await(3*cfg.Timeout, func(cb func(*gocbcore.GetCollectionIDResult, error)) (gocbcore.PendingOp, error) {
			return agent.GetCollectionID(cfg.Scope, name, gocbcore.GetCollectionIDOptions{Deadline: time.Now().Add(3 * cfg.Timeout)}, cb)
		})
		if err != nil {
			return nil, fmt.Errorf("collection %s.%s.%s: %w", cfg.Bucket, cfg.Scope, name, err)
		}
		ids[res.CollectionID] = name
	}
	return ids, nil
}

// Subscribe opens DCP streams on the vBuckets this instance owns, filtered
// to collections, resuming from the checkpoints saved under name.
func (s *Store) Subscribe(ctx context.Context, name string, colls []string, opts store.FeedOptions) (store.Subscription, error) {
	ids, err := collectionIDs(s.cfg, s.pw, colls)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	stream := fmt.Sprintf("ordermail-%s-%d-of-%d-%d", name, s.cfg.Instance, s.cfg.Instances, time.Now().UnixNano())
	client, err := newDCPClient(s.cfg, s.pw, stream)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	n, err := client.numVbuckets()
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("subscribe %s: %w", name, err)
	}
	vbs := ownedVbuckets(s.cfg, n)
	s.log.Info("streaming", "feed", name, "vbuckets", len(vbs), "of", n, "instance", s.cfg.Instance, "instances", s.cfg.Instances)
	f, err := newFeed(ctx, client, metaCheckpoints{s}, name, ids, vbs, opts.FromNow, feedOptions{}, s.log)
	if err != nil {
		client.Close()
		return nil, err
	}
	return f, nil
}

func ownedVbuckets(cfg Config, n int) []uint16 {
	var vbs []uint16
	for vb := range n {
		if cfg.owns(uint16(vb)) {
			vbs = append(vbs, uint16(vb))
		}
	}
	return vbs
}

// metaCheckpoints keeps one document per feed and vBucket in the metadata
// bucket, so that instances owning different vBuckets never write the same
// document.
type metaCheckpoints struct{ s *Store }

func checkpointKey(name string, vb uint16) string {
	return "checkpoint:" + name + ":" + strconv.Itoa(int(vb))
}

func (m metaCheckpoints) Load(ctx context.Context, name string, vbs []uint16) (map[uint16]position, error) {
	out := map[uint16]position{}
	for _, vb := range vbs {
		d, err := m.s.Get(ctx, store.Meta, checkpointKey(name, vb))
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var p position
		if err := json.Unmarshal(d.Value, &p); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", checkpointKey(name, vb), err)
		}
		out[vb] = p
	}
	return out, nil
}

func (m metaCheckpoints) Save(ctx context.Context, name string, positions map[uint16]position) error {
	for vb, p := range positions {
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		if _, err := m.s.Upsert(ctx, store.Meta, checkpointKey(name, vb), b); err != nil {
			return err
		}
	}
	return nil
}
