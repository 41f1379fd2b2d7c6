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

// TestBatchFlagsPluginLimits checks that a plugin's declared token limit and
// preferred batches in flight (protocol minor version 3) set the pipeline's
// defaults, that --micro-batch-max-tokens lowers the limit but never raises
// it, and that --micro-batch-in-flight still overrides the preference.
func TestBatchFlagsPluginLimits(t *testing.T) {
	f := func(args []string, info sdk.ModelInfo, wantTokens, wantInFlight int) {
		t.Helper()
		c, err := parseServe(args, func(string) string { return "" }, io.Discard)
		if err != nil {
			t.Fatalf("parseServe(%q): %v", args, err)
		}
		info.MaxLength = c.maxLength
		info.MaxBatchSize = 16384 / c.maxLength
		cfg := batchConfig(&c.batch, info)
		if cfg.MaxBatchTokens != wantTokens || cfg.MaxInFlight != wantInFlight {
			t.Fatalf("parseServe(%q) with %+v: %d tokens, %d in flight; want %d, %d",
				args, info, cfg.MaxBatchTokens, cfg.MaxInFlight, wantTokens, wantInFlight)
		}
	}
	cpu := sdk.ModelInfo{Device: "cpu", MaxBatchTokens: 6000, PreferredInFlight: 2}
	f(nil, cpu, 6000, 2)
	f([]string{"--micro-batch-max-tokens", "4096"}, cpu, 4096, 2)
	f([]string{"--micro-batch-max-tokens", "20000"}, cpu, 6000, 2) // never above the plugin's limit
	f([]string{"--micro-batch-in-flight", "1"}, cpu, 6000, 1)
	// A larger limit than the device default is the plugin's to declare.
	f(nil, sdk.ModelInfo{Device: "cpu", MaxBatchTokens: 12000}, 12000, 1)
	// A plugin before minor version 3 declares neither: the per-device
	// defaults, and the flag alone sets the budget.
	f(nil, sdk.ModelInfo{Device: "cpu"}, 8192, 1)
	f([]string{"--micro-batch-max-tokens", "20000"}, sdk.ModelInfo{Device: "cpu"}, 20000, 1)
	f(nil, sdk.ModelInfo{Device: "cuda"}, 32*512, 2)
	// On cuda a lowered batch size lowers the budget, within the limit.
	f([]string{"--micro-batch-max-size", "16"}, sdk.ModelInfo{Device: "cuda", MaxBatchTokens: 4096, PreferredInFlight: 3}, 4096, 3)
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
