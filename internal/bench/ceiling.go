package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ordermail/ordermail/mailer/mockmail"
)

// maxCeilingTries bounds the sends of one body: an answer that is never 200
// (a permanent error) stops the ceiling instead of looping.
const maxCeilingTries = 1000

// ceilingResult is what the send-only ceiling measured.
type ceilingResult struct {
	perSecond float64 // bodies delivered per second
	requests  int64   // requests made, failed ones included
}

// runCeiling posts every body to the email service from workers goroutines
// over kept-alive connections, each with a distinct idempotency key under
// keyPrefix, sending a failed one again at once, and measures how many
// bodies a second get delivered: the most the service could confirm were
// storing free.
func runCeiling(ctx context.Context, mailURL string, bodies [][]byte, workers int, keyPrefix string) (ceilingResult, error) {
	tr := &http.Transport{MaxIdleConns: workers, MaxIdleConnsPerHost: workers, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	endpoint := strings.TrimRight(mailURL, "/") + mockmail.SendPath

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next, requests atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(bodies) || ctx.Err() != nil {
					return
				}
				if err := deliver(ctx, client, endpoint, keyPrefix+strconv.Itoa(i), bodies[i], &requests); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return ceilingResult{}, fmt.Errorf("ceiling: %w", err)
	}
	return ceilingResult{perSecond: float64(len(bodies)) / elapsed.Seconds(), requests: requests.Load()}, nil
}

func deliver(ctx context.Context, client *http.Client, endpoint, key string, body []byte, requests *atomic.Int64) error {
	for range maxCeilingTries {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := client.Do(req)
		requests.Add(1)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body) // read to the end, so the connection is kept
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
	return fmt.Errorf("%s: no 200 in %d tries", key, maxCeilingTries)
}
