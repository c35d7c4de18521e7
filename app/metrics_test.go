package app_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/metrics"
	"github.com/ordermail/ordermail/order"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrape reads the ordermail_ metrics; a failed scrape is logged and reads
// as none, so that it can be polled.
func scrape(t *testing.T, url string) map[string]string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Logf("scrape: %v", err)
		return nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Logf("scrape: %s %v", resp.Status, err)
		return nil
	}
	values := map[string]string{}
	for _, line := range strings.Split(string(body), "\n") {
		if name, value, ok := strings.Cut(line, " "); ok && strings.HasPrefix(name, "ordermail_") {
			values[name] = value
		}
	}
	return values
}

func TestMetricsEndpoint(t *testing.T) {
	r := newScriptedRun(t, mockmail.Config{})
	r.cfg.Metrics.Listen = "127.0.0.1:0"
	var m *metrics.Server
	a, st := r.start(t, &m)
	defer stop(t, a)
	url := "http://" + m.Addr().String() + "/metrics"

	placeNamed(t, st, "m1", "m2", "m3")
	_, err := st.Upsert(context.Background(), order.Inbound, "m_no_email", []byte(`{"paymentStatus":"paid"}`))
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		v := scrape(t, url)
		return v["ordermail_orders_confirmed"] == "3" && v["ordermail_dead_letters"] == "1"
	}, 20*time.Second, 20*time.Millisecond)
	v := scrape(t, url)
	assert.Equal(t, "1", v["ordermail_store_up"])
	assert.Equal(t, "4", v["ordermail_orders_paid"])
	assert.Equal(t, "0", v["ordermail_retry_documents"])
	assert.Equal(t, "3", v[`ordermail_sends_total{status_class="2xx"}`])
	assert.Equal(t, "3", v["ordermail_sends_succeeded_total"])
	assert.Equal(t, "1", v[`ordermail_dead_lettered_total{reason="no_email"}`])
	assert.Equal(t, "0", v["ordermail_breaker_open"])
	assert.NotEmpty(t, v["ordermail_timer_ticks_total"])

	// Started: ready (its last start hook says so).
	resp, err := http.Get("http://" + m.Addr().String() + "/readyz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, string(body))
}
