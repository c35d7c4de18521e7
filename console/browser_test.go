package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/console"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
)

// chromium finds a Chromium or Chrome binary, or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium, chromium-browser or google-chrome on PATH: the console's browser test needs one " +
		"(apt-get install chromium)")
	return ""
}

// TestBrowser drives the console of a real ordermail (the fx app on an
// embedded store, the mock email service in process) with a headless
// Chromium: open the overview, log in with the token, redrive a dead letter
// from its list, pause retries from the overview, and check the store
// changed. Screenshots go to ORDERMAIL_SCREENSHOTS (default a temporary
// directory).
func TestBrowser(t *testing.T) {
	bin := chromium(t)
	shots := os.Getenv("ORDERMAIL_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(shots, 0o755))

	// bad_* orders are refused once (406: permanent, dead-lettered), then
	// accepted; slow_* are answered 503 for a long while, so they wait as
	// retries; the others are accepted.
	mock, err := mockmail.New(mockmail.Config{Script: func(key string, n int) mockmail.Reply {
		k := order.OrderKeyOf(key)
		switch {
		case strings.HasPrefix(k, "bad_") && n == 1:
			return mockmail.Reply{Status: 406}
		case strings.HasPrefix(k, "slow_") && n < 1000:
			return mockmail.Reply{Status: 503}
		}
		return mockmail.Reply{Status: 200}
	}})
	require.NoError(t, err)
	mailSrv := httptest.NewServer(mock)
	defer mailSrv.Close()

	policy := order.DefaultPolicy()
	policy.MinDelay = time.Minute // the slow ones stay in the list
	cfg := app.Config{
		Store:   app.StoreConfig{URL: "file:" + filepath.Join(t.TempDir(), "ordermail.db")},
		Mail:    mailer.Config{URL: mailSrv.URL, Timeout: 5 * time.Second},
		Watcher: watcher.Config{Workers: 4, Policy: policy},
		Timer:   timer.Config{Interval: 100 * time.Millisecond},
		Console: console.Config{Listen: "127.0.0.1:0", Token: token},
	}
	require.NoError(t, cfg.Validate())
	var st store.Store
	var c *console.Console
	a := app.New(context.Background(), cfg, quiet, fx.Populate(&st, &c))
	require.NoError(t, a.Err())
	require.NoError(t, a.Start(context.Background()))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, a.Stop(ctx))
	}()
	base := "http://" + c.Addr().String()

	ctx := context.Background()
	var keys []string
	for i := range 24 {
		keys = append(keys, fmt.Sprintf("order_%03d", 140+i))
	}
	keys = append(keys, "bad_1", "bad_2", "bad_3", "slow_1", "slow_2")
	for _, k := range keys {
		_, err := st.Upsert(ctx, order.Inbound, k, fmt.Appendf(nil, `{"email":"%s@example.com","paymentStatus":"paid","total":42}`, k))
		require.NoError(t, err)
	}
	_, _, _, err = ops.StartRetries(ctx, st, order.Control{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		n, err := st.Counts(ctx)
		return err == nil && n.DeadLetters == 3 && n.OrdersConfirmed == 24 && n.RetryDocs == 2
	}, 20*time.Second, 20*time.Millisecond, "3 dead letters, 24 confirmed, 2 retries")

	alloc := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.WindowSize(1280, 900))
	if os.Geteuid() == 0 {
		alloc = append(alloc, chromedp.NoSandbox) // Chromium refuses to sandbox as root
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, alloc...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	bctx, cancelTimeout := context.WithTimeout(bctx, 90*time.Second)
	defer cancelTimeout()

	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		p := filepath.Join(shots, name+".png")
		require.NoError(t, os.WriteFile(p, png, 0o644))
		t.Logf("screenshot %s", p)
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(sel)))
		require.NoError(t, err)
		return s
	}

	// The overview, before logging in: readable, with no actions.
	require.NoError(t, chromedp.Do(bctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#dead-letters"))))
	assert.Equal(t, "3", text("#dead-letters"))
	assert.Equal(t, "armed", text("#retries-state"))
	shot("01-overview-not-logged-in")

	// Log in with the token.
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
	))
	shot("02-login")
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#flash")),
	))
	assert.Contains(t, text("#flash"), "Logged in")
	shot("03-overview-logged-in")

	// Redrive one dead letter from the list.
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(base+"/deadletters"),
		chromedp.WaitVisible(chromedp.CSS(`button[data-redrive="bad_2"]`)),
	))
	shot("04-deadletters")
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Click(chromedp.CSS(`button[data-redrive="bad_2"]`)),
		chromedp.WaitVisible(chromedp.CSS("#flash")),
	))
	assert.Contains(t, text("#flash"), "Redrove 1 of the dead letter of bad_2")
	_, err = st.Get(ctx, order.DeadLetter, "bad_2")
	assert.ErrorIs(t, err, store.ErrNotFound, "the dead letter is gone")
	require.Eventually(t, func() bool {
		s, err := ops.OrderStory(ctx, st, "bad_2", time.Now(), 15*time.Second)
		return err == nil && s.State == ops.StateConfirmed
	}, 20*time.Second, 20*time.Millisecond, "the redriven order is confirmed")
	shot("05-deadletters-after-redrive")

	// The order's story: both attempts.
	require.NoError(t, chromedp.Do(bctx, chromedp.Navigate(base+"/order?key=bad_2"), chromedp.WaitVisible(chromedp.CSS("#attempts"))))
	assert.Equal(t, "confirmed", text("#order-state"))
	attempts := text("#attempts")
	assert.Contains(t, attempts, "406")
	assert.Contains(t, attempts, "dead_letter")
	assert.Contains(t, attempts, "sent")
	shot("06-order")

	// The retries waiting, and the step before purging every dead letter.
	require.NoError(t, chromedp.Do(bctx, chromedp.Navigate(base+"/retries"), chromedp.WaitVisible(chromedp.CSS("table.list"))))
	assert.Contains(t, text("table.list"), "slow_1")
	shot("07-retries")
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(base+"/deadletters"),
		chromedp.WaitVisible(chromedp.CSS("#purge-all")),
		chromedp.Click(chromedp.CSS("#purge-all")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
	))
	shot("08-confirm-purge")
	_, err = st.Get(ctx, order.DeadLetter, "bad_1")
	require.NoError(t, err, "nothing purged before the confirmation")

	// Pause retries from the overview.
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#pause")),
		chromedp.Click(chromedp.CSS("#pause")),
		chromedp.WaitVisible(chromedp.CSS("#resume")),
	))
	assert.Contains(t, text("#flash"), "Retries paused")
	assert.Equal(t, "paused", text("#retries-state"))
	_, err = st.Get(ctx, order.Retry, order.ControlKey)
	assert.ErrorIs(t, err, store.ErrNotFound, "allow_retrys is gone")
	shot("09-overview-paused")
}

// TestInTheApp runs the console in the real app, without a browser: the
// health checks are the metrics server's.
func TestInTheApp(t *testing.T) {
	mailSrv := httptest.NewServer(must(mockmail.New(mockmail.Config{})))
	defer mailSrv.Close()
	cfg := app.Config{
		Store:   app.StoreConfig{URL: "file:" + filepath.Join(t.TempDir(), "ordermail.db")},
		Mail:    mailer.Config{URL: mailSrv.URL, Timeout: 5 * time.Second},
		Timer:   timer.Config{Interval: 100 * time.Millisecond},
		Console: console.Config{Listen: "127.0.0.1:0"},
	}
	var c *console.Console
	a := app.New(context.Background(), cfg, quiet, fx.Populate(&c))
	require.NoError(t, a.Err())
	require.NoError(t, a.Start(context.Background()))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, a.Stop(ctx))
	}()
	require.NotNil(t, c.Addr())
	assert.True(t, c.ReadOnly())
	base := "http://" + c.Addr().String()
	for path, want := range map[string]string{"/": "read-only", "/healthz": `"status":"ok"`, "/readyz": `"status":"ready"`} {
		require.Eventually(t, func() bool {
			resp, err := http.Get(base + path)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == http.StatusOK && strings.Contains(string(body), want)
		}, 10*time.Second, 20*time.Millisecond, path)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
