// Package tracing sets up OpenTelemetry for ordermail: a W3C traceparent on
// every request to the email service always, and spans exported over OTLP
// only when the standard OTEL_* environment asks for it.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ordermail/ordermail/internal/redact"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
)

// Name is the instrumentation scope of ordermail's spans.
const Name = "github.com/ordermail/ordermail"

// exporterVars are the variables that ask for an OTLP exporter; with none
// of them set, nothing is exported.
var exporterVars = []string{
	"OTEL_EXPORTER_OTLP_ENDPOINT",
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
}

// Exporting says whether the environment asks for spans to be exported:
// an OTLP endpoint is set, or OTEL_TRACES_EXPORTER is otlp.
func Exporting(getenv func(string) string) bool {
	if getenv("OTEL_SDK_DISABLED") == "true" || getenv("OTEL_TRACES_EXPORTER") == "none" {
		return false
	}
	for _, v := range exporterVars {
		if getenv(v) != "" {
			return true
		}
	}
	return getenv("OTEL_TRACES_EXPORTER") == "otlp"
}

// Setup installs the global tracer provider and the W3C trace-context
// propagator, and returns the provider, to be shut down at exit (which
// exports what is left). Without an exporter asked for, spans are created
// unsampled and never recorded: requests still carry a traceparent (with
// the sampled flag off), at the cost of two random IDs per send.
func Setup(ctx context.Context, version string, log *slog.Logger) (*sdktrace.TracerProvider, error) {
	// OpenTelemetry's own messages go to the service's log, without their
	// values: the exporter's, for one, quotes an OTEL_EXPORTER_OTLP_HEADERS
	// value it cannot parse, an API key (its default logger printed it).
	log = log.With("component", "otel")
	otel.SetLogger(logr.New(valuelessSink{log}))
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("opentelemetry", "error", scrub(err)) }))
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(serviceResource(version))}
	if Exporting(os.Getenv) {
		// The exporter reads OTEL_EXPORTER_OTLP_* (endpoint, headers, TLS,
		// timeout) itself; the provider reads OTEL_TRACES_SAMPLER and
		// OTEL_BSP_*.
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTLP trace exporter (OTEL_EXPORTER_OTLP_*): %s", scrub(err))
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	} else {
		opts = append(opts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	Install(tp)
	return tp, nil
}

// FlushTimeout bounds the export of the spans still buffered at exit.
const FlushTimeout = 5 * time.Second

// Start is Setup for a command: it returns the function to call at exit,
// which exports the spans still buffered, for at most FlushTimeout.
func Start(ctx context.Context, version string, log *slog.Logger) (flush func(), err error) {
	tp, err := Setup(ctx, version, log)
	if err != nil {
		return nil, err
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), FlushTimeout)
		defer cancel()
		_ = tp.Shutdown(ctx)
	}, nil
}

// Install makes tp the global provider, with the W3C propagators; tests
// install one with an in-memory exporter.
func Install(tp *sdktrace.TracerProvider) {
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
}

// serviceResource names the service; OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES override it.
func serviceResource(version string) *resource.Resource {
	base := resource.NewSchemaless(semconv.ServiceName("ordermail"), semconv.ServiceVersion(version))
	r, err := resource.Merge(base, resource.Environment())
	if err != nil {
		return base // a malformed OTEL_RESOURCE_ATTRIBUTES: keep the name
	}
	return r
}

// valuelessSink logs OpenTelemetry's messages, and its errors, but none of
// the values that come with them; its debug levels are off.
type valuelessSink struct{ log *slog.Logger }

func (valuelessSink) Init(logr.RuntimeInfo)  {}
func (valuelessSink) Enabled(level int) bool { return level <= 0 }
func (s valuelessSink) Info(_ int, msg string, _ ...any) {
	s.log.Info(msg)
}
func (s valuelessSink) Error(err error, msg string, _ ...any) {
	s.log.Warn(msg, "error", scrub(err))
}

// scrub is err's text with the URLs it quotes (an OTLP endpoint that does
// not parse is quoted whole, a password in it too) redacted, and the
// OTLP headers' value, API keys, masked wherever it appears.
func scrub(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	var urls []string
	for _, v := range exporterVars {
		urls = append(urls, os.Getenv(v))
	}
	for e := []error{err}; len(e) > 0; {
		next := e[0]
		e = e[1:]
		if ue, ok := next.(*url.Error); ok {
			urls = append(urls, ue.URL)
		}
		switch w := next.(type) {
		case interface{ Unwrap() error }:
			if u := w.Unwrap(); u != nil {
				e = append(e, u)
			}
		case interface{ Unwrap() []error }:
			e = append(e, w.Unwrap()...)
		}
	}
	for _, u := range urls {
		if u == "" {
			continue
		}
		quoted := strconv.Quote(u)
		msg = strings.ReplaceAll(msg, quoted[1:len(quoted)-1], redact.URL(u))
		msg = strings.ReplaceAll(msg, u, redact.URL(u))
	}
	return redact.String(msg, os.Getenv("OTEL_EXPORTER_OTLP_HEADERS"), os.Getenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS"))
}
func (s valuelessSink) WithValues(...any) logr.LogSink { return s }
func (s valuelessSink) WithName(string) logr.LogSink   { return s }
