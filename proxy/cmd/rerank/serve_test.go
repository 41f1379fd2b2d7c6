package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseServe(t *testing.T) {
	f := func(args []string, env map[string]string, check func(*serveConfig) bool) {
		t.Helper()
		c, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Fatalf("parseServe(%q, %v): %v", args, env, err)
		}
		if !check(c) {
			t.Fatalf("parseServe(%q, %v) = %+v", args, env, *c)
		}
	}
	f(nil, nil, func(c *serveConfig) bool {
		return c.port == 8080 && c.host == "0.0.0.0" && c.backend == "cpu" && c.precision == "fp32" &&
			c.maxLength == 512 && c.maxCandidates == 200 && c.maxCandidateChars == 4000 && c.maxQueryChars == 32768 &&
			c.timeout == 10*time.Second && c.maxBodyBytes == 2<<20 && c.model == ""
	})
	env := map[string]string{
		"RERANK_MODEL": "BAAI/bge-reranker-v2-m3", "RERANK_MODEL_NAME": "bge", "RERANK_BACKEND": "auto",
		"RERANK_PRECISION": "int8", "HOST": "127.0.0.1", "PORT": "9000", "RERANK_MAX_LENGTH": "256",
		"RERANK_MAX_CANDIDATES": "50", "RERANK_MAX_CANDIDATE_LENGTH": "100", "RERANK_SERVER_TIMEOUT": "2.5",
		"RERANK_PLUGIN_DIR": "/p", "RERANK_THREADS": "3", "RERANK_MAX_QUERY_LENGTH": "1000",
	}
	f(nil, env, func(c *serveConfig) bool {
		return c.model == "BAAI/bge-reranker-v2-m3" && c.modelName == "bge" && c.backend == "auto" &&
			c.precision == "int8" && c.host == "127.0.0.1" && c.port == 9000 && c.maxLength == 256 &&
			c.maxCandidates == 50 && c.maxCandidateChars == 100 && c.timeout == 2500*time.Millisecond &&
			c.pluginDir == "/p" && c.threads == 3 && c.maxQueryChars == 1000
	})
	// Flags win over the environment.
	f([]string{"--port", "9100", "--timeout", "500ms", "--backend", "cuda"}, env, func(c *serveConfig) bool {
		return c.port == 9100 && c.timeout == 500*time.Millisecond && c.backend == "cuda" && c.maxLength == 256
	})
}

func TestParseServeErrors(t *testing.T) {
	f := func(args []string, env map[string]string, want string) {
		t.Helper()
		_, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("parseServe(%q, %v) error = %v, want one containing %q", args, env, err, want)
		}
	}
	f(nil, map[string]string{"PORT": "http"}, `PORT="http"`)
	f(nil, map[string]string{"RERANK_SERVER_TIMEOUT": "soon"}, "RERANK_SERVER_TIMEOUT")
	f([]string{"--timeout", "0"}, nil, "positive")
	f([]string{"--backend", "tpu", "--plugin-dir", t.TempDir()}, nil, `unknown backend "tpu": no plugin rerank-tpu in the plugin directory; use one of auto`)
	f([]string{"--max-loaded-models", "-1"}, nil, "--max-loaded-models")
	f([]string{"--keep-alive", "soon"}, nil, "flag -keep-alive")
	f([]string{"--models-file", "/nonexistent/models.yaml"}, nil, "--models-file")
	f([]string{"--models-file", "m.yaml", "--model", "org/x"}, nil, "--models-file and --model")
	f([]string{"--max-candidates", "0"}, nil, "--max-candidates")
	f([]string{"--port", "70000"}, nil, "not a TCP port")
	f([]string{"extra"}, nil, "unexpected arguments")
}

func TestModelSourceName(t *testing.T) {
	dir := t.TempDir()
	f := func(spec, want string) {
		t.Helper()
		if got := (modelSource{spec: spec}).name(); got != want {
			t.Fatalf("name(%q) = %q, want %q", spec, got, want)
		}
	}
	f("", testModelName)
	f("BAAI/bge-reranker-v2-m3", "BAAI/bge-reranker-v2-m3")
	f(dir+"/", dir[strings.LastIndexByte(dir, '/')+1:])
}
