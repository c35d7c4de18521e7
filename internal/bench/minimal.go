package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
)

// minimalSettling bounds the outcomes waiting for their commit, as the
// service's watcher does (its maxSettling).
const minimalSettling = 256

// minimalResult is what the minimal pipeline measured.
type minimalResult struct {
	perSecond   float64       // orders delivered and their outcomes committed, a second
	cpuPerOrder float64       // µs of the bench process's CPU an order; 0: unknown
	meanSend    time.Duration // a request, as the ceiling's meanSend
}

// runMinimal measures the minimal pipeline, the floor of what the engine
// adds to the sends: the ceiling's senders, each handing the outcome of a
// delivered order (the order marked confirmed and its attempt record, what
// the service writes) to ordermail's embedded store, whose writer commits
// the outcomes of all of them in groups, as the service's does. It runs on
// a store of its own in dir, with the orders written before the clock
// starts: no change feed, no decisions, no order system writing meanwhile.
// The service's rate beside it says what those cost on this machine.
func runMinimal(ctx context.Context, dir string, to target, bodies [][]byte, workers int, keyPrefix string) (minimalResult, error) {
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(dir, "minimal.db")})
	if err != nil {
		return minimalResult{}, fmt.Errorf("minimal pipeline: %w", err)
	}
	defer st.Close()
	key := func(i int) string { return keyPrefix + strconv.Itoa(i) }
	inserts := make([]store.Write, len(bodies))
	for i, body := range bodies {
		inserts[i] = store.Write{Op: store.OpInsert, Collection: order.Inbound, Key: key(i), Value: body}
	}
	cas := make([]uint64, 0, len(bodies))
	for w := range slices.Chunk(inserts, historyBatch) {
		got, err := st.Apply(ctx, w)
		if err != nil {
			return minimalResult{}, fmt.Errorf("minimal pipeline: write the orders: %w", err)
		}
		cas = append(cas, got...)
	}

	// Its senders' outcomes share commits, as the service's workers' do.
	ctx, cancel := context.WithCancelCause(store.WithSharedCommit(ctx))
	defer cancel(nil)
	settling := make(chan struct{}, minimalSettling)
	var wg sync.WaitGroup
	cpuBefore, cpuOK := selfCPUSeconds()
	start := time.Now()
	sent, err := sendAll(ctx, to, bodies, workers, keyPrefix, func(i int) error {
		now := time.Now()
		marked, err := order.MarkConfirmed(bodies[i])
		if err != nil {
			return err
		}
		rec := order.AttemptsDoc{DocID: key(i)}.Add(order.Attempt{At: now.UnixMilli(), Class: "sent", Outcome: "sent", Instance: "bench"}, 20, now)
		writes := []store.Write{
			{Op: store.OpReplace, Collection: order.Inbound, Key: key(i), Value: marked, CAS: cas[i]},
			{Op: store.OpUpsert, Collection: order.Attempts, Key: key(i), Value: rec.Encode(), Expiry: now.Add(7 * 24 * time.Hour)},
		}
		select {
		case settling <- struct{}{}:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		wg.Add(1)
		go func() { // the sender goes on meanwhile, as the service's workers do
			defer wg.Done()
			defer func() { <-settling }()
			if _, err := st.Apply(ctx, writes); err != nil {
				cancel(fmt.Errorf("write the outcome of %s: %w", key(i), err))
			}
		}()
		return nil
	})
	wg.Wait()
	elapsed := time.Since(start)
	if cause := context.Cause(ctx); cause != nil {
		err = cause // a failed write, rather than the sends it stopped
	}
	if err != nil {
		return minimalResult{}, fmt.Errorf("minimal pipeline: %w", err)
	}
	res := minimalResult{perSecond: float64(len(bodies)) / elapsed.Seconds(), meanSend: sent.meanSend}
	if cpuAfter, ok := selfCPUSeconds(); ok && cpuOK {
		res.cpuPerOrder = (cpuAfter - cpuBefore) * 1e6 / float64(len(bodies))
	}
	return res, nil
}
