package telemetry

import (
	"context"
	"testing"
)

func TestConfigured(t *testing.T) {
	f := func(env map[string]string, want bool) {
		t.Helper()
		if got := Configured(func(k string) string { return env[k] }); got != want {
			t.Fatalf("Configured(%v) = %v, want %v", env, got, want)
		}
	}
	f(nil, false)
	f(map[string]string{"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, false)
	f(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, true)
	f(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true)
	f(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"}, false)
	f(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}, false)
}

func TestSetup(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		t.Setenv(k, "")
	}
	shutdown, err := Setup(context.Background())
	if err != nil || Enabled() || len(ServerOptions()) != 0 || len(DialOptions()) != 0 {
		t.Fatalf("without OTEL_* tracing must stay off: err %v, enabled %v", err, Enabled())
	}
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
	if _, err := Setup(context.Background()); err == nil || Enabled() {
		t.Fatalf("an unknown protocol: err %v, enabled %v", err, Enabled())
	}

	for _, protocol := range []string{"grpc", "http/protobuf", ""} {
		t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
		shutdown, err := Setup(context.Background())
		if err != nil || !Enabled() || len(ServerOptions()) != 1 || len(DialOptions()) != 1 {
			t.Fatalf("protocol %q: err %v, enabled %v", protocol, err, Enabled())
		}
		// Nothing listens there: shutdown has no span to send and ends.
		if err := shutdown(context.Background()); err != nil {
			t.Fatalf("protocol %q: shutdown: %v", protocol, err)
		}
		if Enabled() {
			t.Fatalf("protocol %q: still enabled after shutdown", protocol)
		}
	}
}
