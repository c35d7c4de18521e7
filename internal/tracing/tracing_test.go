package tracing

import (
	"context"
	"log/slog"
	"testing"

	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAHeaderValueIsNeverLogged: a mistyped OTEL_EXPORTER_OTLP_HEADERS
// (an escape that does not decode, a header without "=") was printed to
// stderr by OpenTelemetry's default logger, API key and all. Its messages
// now go to the service's log without their values.
func TestAHeaderValueIsNeverLogged(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=hcSECRETkey%zz,hcOTHERSECRET")
	out := logsOfARun(t)
	assert.Contains(t, out, "escape header value", "the message is kept")
	assert.Contains(t, out, "parse headers")
	assert.NotContains(t, out, "SECRET")
}

// TestAnEndpointsPasswordIsNeverLogged: an OTLP endpoint that does not
// parse was quoted whole in OpenTelemetry's message, its password too.
func TestAnEndpointsPasswordIsNeverLogged(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:pwSECRET@127.0.0.1:1/%zz")
	out := logsOfARun(t)
	assert.Contains(t, out, "127.0.0.1:1", "the endpoint is named")
	assert.NotContains(t, out, "SECRET")
}

// logsOfARun is what tracing logs from its start to its flush, as a
// command's run has it.
func logsOfARun(t *testing.T) string {
	t.Helper()
	var logs syncbuf.Buffer
	flush, err := Start(context.Background(), "test", slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	flush()
	return logs.String()
}
