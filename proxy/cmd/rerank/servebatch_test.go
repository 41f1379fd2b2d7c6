package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk"
)

func TestBatchFlags(t *testing.T) {
	f := func(args []string, env map[string]string, backend string, check func(cfgEnabled bool, size, tokens, inFlight, queue int, window time.Duration) bool) {
		t.Helper()
		c, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Fatalf("parseServe(%q, %v): %v", args, env, err)
		}
		// What the ONNX Runtime plugins report: 16,384 tokens per batch.
		info := sdk.ModelInfo{Device: backend, MaxLength: c.maxLength, MaxBatchSize: 16384 / c.maxLength}
		cfg := batchConfig(&c.batch, info)
		if !check(cfg.Enabled, cfg.MaxBatchSize, cfg.MaxBatchTokens, cfg.MaxInFlight, cfg.MaxQueue, cfg.Window) {
			t.Fatalf("parseServe(%q, %v) on %s: %+v", args, env, backend, cfg)
		}
	}
	// Defaults per backend.
	f(nil, nil, "cpu", func(on bool, size, tokens, inFlight, queue int, w time.Duration) bool {
		return on && size == 32 && tokens == 8192 && inFlight == 1 && queue == 1000 && w == 10*time.Millisecond
	})
	f(nil, nil, "cuda", func(on bool, size, tokens, inFlight, queue int, w time.Duration) bool {
		return on && size == 32 && tokens == 32*512 && inFlight == 2
	})
	// The plugin's batch size follows its max length: 64 pairs of 256.
	f([]string{"--max-length", "256"}, nil, "cuda", func(on bool, size, tokens, _, _ int, _ time.Duration) bool {
		return size == 64 && tokens == 64*256
	})
	// The flag lowers the plugin's batch size, never raises it.
	f([]string{"--max-length", "256", "--micro-batch-max-size", "16"}, nil, "cuda", func(on bool, size, tokens, _, _ int, _ time.Duration) bool {
		return size == 16 && tokens == 16*256
	})
	f([]string{"--micro-batch-max-size", "64"}, nil, "cpu", func(on bool, size, tokens, _, _ int, _ time.Duration) bool {
		return size == 32 && tokens == 8192
	})
	f(nil, nil, "coreml", func(on bool, _, tokens, inFlight, _ int, _ time.Duration) bool {
		return on && tokens == 8192 && inFlight == 1
	})
	// The environment variables.
	env := map[string]string{
		"MICRO_BATCH_ENABLED": "false", "MICRO_BATCH_MAX_SIZE": "16", "MICRO_BATCH_WINDOW_MS": "3",
		"MICRO_BATCH_MAX_TOKENS": "4096", "MICRO_BATCH_IN_FLIGHT": "3", "RERANKER_MAX_QUEUE": "77",
	}
	f(nil, env, "cpu", func(on bool, size, tokens, inFlight, queue int, w time.Duration) bool {
		return !on && size == 16 && tokens == 4096 && inFlight == 3 && queue == 77 && w == 3*time.Millisecond
	})
	// A bare --micro-batch wins over the environment.
	f([]string{"--micro-batch"}, env, "cpu", func(on bool, _, _, _, _ int, _ time.Duration) bool { return on })
	f([]string{"--micro-batch=false"}, nil, "cpu", func(on bool, _, _, _, _ int, _ time.Duration) bool { return !on })
}

func TestBatchFlagErrors(t *testing.T) {
	f := func(args []string, env map[string]string, want string) {
		t.Helper()
		_, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("parseServe(%q, %v) error = %v, want one containing %q", args, env, err, want)
		}
	}
	f(nil, map[string]string{"MICRO_BATCH_ENABLED": "maybe"}, "MICRO_BATCH_ENABLED")
	f([]string{"--micro-batch-max-size", "-1"}, nil, "--micro-batch-max-size")
	f([]string{"--micro-batch-window-ms", "-1"}, nil, "--micro-batch-window-ms")
	f([]string{"--micro-batch-max-tokens", "-1"}, nil, "--micro-batch-max-tokens")
	f([]string{"--micro-batch-in-flight", "-2"}, nil, "--micro-batch-in-flight")
	f(nil, map[string]string{"RERANKER_MAX_QUEUE": "0"}, "--max-queue")
}
