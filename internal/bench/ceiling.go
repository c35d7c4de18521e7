package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ordermail/ordermail/internal/secretfile"
	"github.com/ordermail/ordermail/internal/webhook"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
)

// maxCeilingTries bounds the sends of one body: an answer that is never 200
// (a permanent error) stops the ceiling instead of looping.
const maxCeilingTries = 1000

// ceilingResult is what the send-only ceiling measured.
type ceilingResult struct {
	perSecond float64       // bodies delivered per second
	requests  int64         // requests made, failed ones included
	meanSend  time.Duration // a request, from the call to the end of its answer
}

// runCeiling posts every body to the email service from workers goroutines
// over kept-alive connections, each with a distinct idempotency key under
// keyPrefix, sending a failed one again at once, and measures how many
// bodies a second get delivered: the most the service could confirm were
// storing free.
func runCeiling(ctx context.Context, to target, bodies [][]byte, workers int, keyPrefix string) (ceilingResult, error) {
	c, err := sendAll(ctx, to, bodies, workers, keyPrefix, nil)
	if err != nil {
		return c, fmt.Errorf("ceiling: %w", err)
	}
	return c, nil
}

// sendAll is runCeiling, calling delivered (when not nil) in the sender's
// goroutine after each body is delivered; an error from it stops the run.
func sendAll(ctx context.Context, to target, bodies [][]byte, workers int, keyPrefix string, delivered func(i int) error) (ceilingResult, error) {
	tr := &http.Transport{MaxIdleConns: workers, MaxIdleConnsPerHost: workers, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	endpoint, err := mockmail.JoinURL(to.url, mockmail.SendPath)
	if err != nil {
		return ceilingResult{}, err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next, requests, sending atomic.Int64
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
				err := deliver(ctx, client, endpoint, keyPrefix+strconv.Itoa(i), bodies[i], to, &requests, &sending)
				if err == nil && delivered != nil {
					err = delivered(i)
				}
				if err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return ceilingResult{}, err
	}
	n := requests.Load()
	return ceilingResult{perSecond: float64(len(bodies)) / elapsed.Seconds(), requests: n,
		meanSend: time.Duration(sending.Load() / max(n, 1))}, nil
}

// target is where the senders post, and how: the email service's URL, the
// credentials of a --secure run (nil: none), and which answers to send
// again, as the service would (nil: as a service of default settings).
type target struct {
	url     string
	creds   *credentials
	resends func(status int) bool
}

func (t target) resend(status int) bool {
	if t.resends == nil {
		return mailer.Config{}.Resends(status)
	}
	return t.resends(status)
}

// deliver posts body until it is answered 200, counting the requests and
// the time they took (ns) into requests and sending. An answer the service
// would not send again (to.resend) ends the run, saying it: sent again at
// once from every sender, a 401 of a service that wants credentials was
// thousands of requests a second.
func deliver(ctx context.Context, client *http.Client, endpoint, key string, body []byte, to target, requests, sending *atomic.Int64) error {
	creds := to.creds
	for range maxCeilingTries {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		creds.sign(req, key, body)
		start := time.Now()
		resp, err := client.Do(req)
		requests.Add(1)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body) // read to the end, so the connection is kept
		resp.Body.Close()
		sending.Add(int64(time.Since(start)))
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		if !to.resend(resp.StatusCode) {
			return fmt.Errorf("%s: answered %s, which the service would not send again", key, resp.Status)
		}
	}
	return fmt.Errorf("%s: no 200 in %d tries", key, maxCeilingTries)
}

// credentials are the bearer token and signing secret of a --secure run, in
// private files of the run's directory; nil: none.
type credentials struct {
	tokenFile, secretsFile string
	token                  string
	secrets                *webhook.Secrets
}

func newCredentials(dir string) (*credentials, error) {
	secret := webhook.NewSecret()
	secrets, err := webhook.ParseSecrets([]byte(secret))
	if err != nil {
		return nil, err
	}
	c := &credentials{tokenFile: filepath.Join(dir, "mail-token"), secretsFile: filepath.Join(dir, "mail-secrets"),
		token: "Bearer " + strings.TrimPrefix(webhook.NewSecret(), "whsec_"), secrets: secrets}
	if err := secretfile.Write(c.tokenFile, c.token); err != nil {
		return nil, fmt.Errorf("bench credentials: %w", err)
	}
	if err := secretfile.Write(c.secretsFile, secret); err != nil {
		return nil, fmt.Errorf("bench credentials: %w", err)
	}
	return c, nil
}

func (c *credentials) mockArgs() []string {
	if c == nil {
		return nil
	}
	return []string{"--auth-file", c.tokenFile, "--signing-secret-file", c.secretsFile}
}

// authorization is the token's header value; "" when there is none.
func (c *credentials) authorization() string {
	if c == nil {
		return ""
	}
	return c.token
}

func (c *credentials) serviceArgs() []string {
	if c == nil {
		return nil
	}
	return []string{"--mail-auth-file", c.tokenFile, "--mail-signing-secret-file", c.secretsFile}
}

// sign puts on req what the service puts on its requests: the same work.
func (c *credentials) sign(req *http.Request, key string, body []byte) {
	if c == nil {
		return
	}
	req.Header.Set("Authorization", c.token)
	c.secrets.SetHeaders(req.Header, key, time.Now(), body)
}
