package main

import (
	"io"
	"maps"
	"strings"
	"testing"
)

func TestParseServeBackendOptions(t *testing.T) {
	f := func(args []string, env map[string]string, want map[string]string) {
		t.Helper()
		c, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Fatalf("parseServe(%q, %v): %v", args, env, err)
		}
		if !maps.Equal(map[string]string(c.backendOptions), want) {
			t.Fatalf("parseServe(%q, %v): options %v, want %v", args, env, c.backendOptions, want)
		}
	}
	f(nil, nil, nil)
	f([]string{"--backend-option", "cuda.device_id=1", "--backend-option", "padding=longest"}, nil,
		map[string]string{"cuda.device_id": "1", "padding": "longest"})
	env := map[string]string{"RERANK_BACKEND_OPTIONS": "cuda.gpu_mem_limit=8589934592, cuda.arena_extend_strategy=kSameAsRequested"}
	f(nil, env, map[string]string{"cuda.gpu_mem_limit": "8589934592", "cuda.arena_extend_strategy": "kSameAsRequested"})
	// A flag adds to the environment's options and overrides its keys.
	f([]string{"--backend-option", "cuda.gpu_mem_limit=1"}, env, map[string]string{"cuda.gpu_mem_limit": "1", "cuda.arena_extend_strategy": "kSameAsRequested"})

	for _, bad := range []string{"padding", "=x", "a=1,b"} {
		_, err := parseServe([]string{"--backend-option", bad}, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "KEY=VALUE") {
			t.Fatalf("--backend-option %q: err = %v", bad, err)
		}
	}
}
