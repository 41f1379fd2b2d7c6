package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/proxy/internal/models"
	"github.com/rerank-sidecar/rerank/sdk/telemetry"
)

// obsFlags are the serve flags of metrics and logging per request.
type obsFlags struct {
	metricsAddr string
	noMetrics   bool
	accessLog   bool
}

// obsFlagsOn defines the observability flags on fs and records their
// environment variables in env.
func obsFlagsOn(fs *flag.FlagSet, o *obsFlags, env map[string]string) {
	fs.StringVar(&o.metricsAddr, "metrics-addr", "",
		"An address such as 0.0.0.0:9464 on which to serve GET /metrics (Prometheus text format) instead of on the main port. Default empty: /metrics is served on the main port. Environment: RERANK_METRICS_ADDR.")
	env["metrics-addr"] = "RERANK_METRICS_ADDR"
	fs.BoolVar(&o.noMetrics, "no-metrics", false,
		"Serve no /metrics and count nothing for it. Default false: metrics on. Environment: RERANK_NO_METRICS.")
	env["no-metrics"] = "RERANK_NO_METRICS"
	fs.BoolVar(&o.accessLog, "access-log", false,
		"Log one line per request (request id, method, route, dialect, model, status, duration, pairs, cached pairs) at info level, as JSON with --log-json. Default false. Environment: RERANK_ACCESS_LOG.")
	env["access-log"] = "RERANK_ACCESS_LOG"
}

// registry returns the metrics registry, nil when metrics are off.
func (o *obsFlags) registry() *metrics.Registry {
	if o.noMetrics {
		return nil
	}
	return metrics.New(version)
}

// startTracing turns tracing on when the OTEL_* environment asks for it
// (package telemetry), and returns the function that flushes the last spans.
func startTracing(ctx context.Context, logger hclog.Logger) (func(), error) {
	shutdown, err := telemetry.Setup(ctx)
	if err != nil {
		return nil, fmt.Errorf("serve: tracing: %w", err)
	}
	if telemetry.Enabled() {
		logger.Info("tracing on: spans go to the OTLP endpoint of OTEL_EXPORTER_OTLP_ENDPOINT", "protocol", os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL"))
	}
	return func() {
		// Flushing the last spans gets a few seconds, not the whole
		// shutdown's budget: a dead collector must not hold the exit.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			logger.Warn("tracing: the last spans were not all sent", "error", err)
		}
	}, nil
}

// tracerProvider is the API's tracer provider: the global one when tracing
// is on, else nil.
func tracerProvider() trace.TracerProvider {
	if !telemetry.Enabled() {
		return nil
	}
	return otel.GetTracerProvider()
}

// accessLogger is the access log's logger, nil when it is off.
func (o *obsFlags) accessLogger(logger hclog.Logger) hclog.Logger {
	if !o.accessLog {
		return nil
	}
	return logger.Named("access")
}

// serveMetrics serves reg's /metrics on addr until ctx ends; the listener
// is bound before it returns, so that a bad address fails the start.
func serveMetrics(ctx context.Context, addr string, reg *metrics.Registry, logger hclog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg.Gatherer(), promhttp.HandlerOpts{}))
	// The headers of a scrape arrive at once; a slow client is cut off.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	logger.Info("serving metrics", "addr", ln.Addr().String())
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics listener stopped", "addr", addr, "error", err)
		}
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return nil
}

// modelState reads a model's state for /metrics from the same status and
// counters /health and /v1/models show.
func modelState(m *models.Model) func() metrics.ModelState {
	return func() metrics.ModelState {
		st := m.Status()
		ms := metrics.ModelState{
			Backend:      st.Kind,
			Loaded:       st.State == models.Loaded,
			LoadDuration: st.LoadDuration,
			Restarts:     uint64(st.Restarts),
			PluginPID:    st.PID,
		}
		if st.Model != nil {
			ms.Precision, ms.Device = string(st.Model.Precision), st.Model.Device
		}
		bs := m.BatchStats()
		ms.QueuePairs, ms.QueueRequests, ms.InFlightBatches = bs.PendingPairs, bs.PendingRequests, bs.InFlightBatches
		if d := m.CacheStats().Distributed; d.Enabled {
			ms.Redis = &metrics.RedisState{Errors: d.Errors, Skipped: d.Skipped, BreakerOpen: d.BreakerOpen,
				BreakerOpened: d.BreakerOpened, BreakerClosed: d.BreakerClosed}
		}
		return ms
	}
}
