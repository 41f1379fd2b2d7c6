// Package telemetry sets up OpenTelemetry tracing from the standard OTEL_*
// environment variables, for the proxy and for plugins alike (sdk.Serve
// calls Setup), and carries the trace context over the plugin's gRPC
// connection, so that the spans a plugin records are children of the
// proxy's span of the batch.
//
// Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, and off otherwise (or with
// OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none): then no exporter,
// no span processor and no gRPC stats handler exist, and instrumented code
// skips its spans after one look at the context. The exporter speaks OTLP
// over gRPC or HTTP (OTEL_EXPORTER_OTLP_PROTOCOL or
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: grpc or http/protobuf, the default);
// the OTLP exporters read their other OTEL_EXPORTER_OTLP_* settings
// (headers, timeout, certificates) themselves, the SDK reads
// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on)
// and OTEL_BSP_*, and the resource reads OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES. Propagation is W3C trace context and baggage.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"google.golang.org/grpc"
)

// DefaultServiceName is the service name when OTEL_SERVICE_NAME is unset.
const DefaultServiceName = "rerank"

// backendService is the gRPC service whose calls are traced: go-plugin's
// own services (stdio streaming, the broker, the controller) would each add
// a long-lived root span of no interest.
const backendService = "rerank.v1.Backend"

var enabled atomic.Bool

// Enabled reports whether Setup turned tracing on in this process.
func Enabled() bool { return enabled.Load() }

// Configured reports whether getenv asks for tracing.
func Configured(getenv func(string) string) bool {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || strings.EqualFold(getenv("OTEL_TRACES_EXPORTER"), "none") {
		return false
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup installs the global tracer provider and propagator when the
// environment asks for tracing, and returns the function that flushes and
// stops it; when it does not, it installs nothing and returns a no-op.
func Setup(ctx context.Context) (shutdown func(context.Context) error, err error) {
	nop := func(context.Context) error { return nil }
	if !Configured(os.Getenv) {
		return nop, nil
	}
	protocol := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exp sdktrace.SpanExporter
	switch protocol {
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	default:
		return nop, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL=%q: use grpc or http/protobuf", protocol)
	}
	if err != nil {
		return nop, fmt.Errorf("telemetry: otlp exporter: %w", err)
	}
	// Later sources win: the default name, then the environment's.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(DefaultServiceName)),
		resource.WithTelemetrySDK(),
		resource.WithProcessPID(),
		resource.WithProcessExecutableName(),
		resource.WithFromEnv(),
	)
	if err != nil && res == nil {
		return nop, fmt.Errorf("telemetry: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	enabled.Store(true)
	return func(ctx context.Context) error {
		enabled.Store(false)
		return errors.Join(tp.Shutdown(ctx))
	}, nil
}

// ServerOptions are the plugin's gRPC server options: a stats handler that
// continues the proxy's trace, when tracing is on.
func ServerOptions() []grpc.ServerOption {
	if !Enabled() {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithFilter(filters.ServiceName(backendService))))}
}

// DialOptions are the proxy's gRPC dial options toward a plugin: a stats
// handler that sends the trace context along, when tracing is on.
func DialOptions() []grpc.DialOption {
	if !Enabled() {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithFilter(filters.ServiceName(backendService))))}
}
