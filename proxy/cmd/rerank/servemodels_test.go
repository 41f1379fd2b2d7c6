package main

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/models"
)

func TestModelsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "models.yaml")
	err := os.WriteFile(path, []byte(`
models:
  - name: minilm
    model: cross-encoder/ms-marco-MiniLM-L6-v2
    aliases: [en, english]
    precision: int8
    keep_alive: 5m
  - name: bge
    model: /models/bge-reranker-v2-m3
    backend: auto
    max_length: 1024
    threads: 4
    keep_alive: -1
    revision: v2
  - name: quick
    model: org/quick
    keep_alive: 0
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseServe([]string{"--models-file", path, "--precision", "fp16", "--keep-alive", "90", "--max-length", "256"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []modelEntry{
		{name: "minilm", model: "cross-encoder/ms-marco-MiniLM-L6-v2", revision: "main", aliases: []string{"en", "english"},
			backend: "cpu", precision: "int8", maxLength: 256, keepAlive: 5 * time.Minute},
		{name: "bge", model: "/models/bge-reranker-v2-m3", revision: "v2", backend: "auto", precision: "fp16",
			maxLength: 1024, threads: 4, keepAlive: models.Never},
		{name: "quick", model: "org/quick", revision: "main", backend: "cpu", precision: "fp16", maxLength: 256, keepAlive: 0},
	}
	if !reflect.DeepEqual(c.entries, want) {
		t.Fatalf("entries\n got %+v\nwant %+v", c.entries, want)
	}

	// Without a file the single-model flags are a one-entry list, kept
	// loaded by default.
	c, err = parseServe([]string{"--model", "org/m", "--model-name", "m"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.entries) != 1 || c.entries[0].name != "m" || c.entries[0].model != "org/m" || c.entries[0].keepAlive != models.Never {
		t.Fatalf("single-model entries %+v", c.entries)
	}
	c, err = parseServe(nil, func(k string) string { return map[string]string{"RERANK_KEEP_ALIVE": "5m"}[k] }, io.Discard)
	if err != nil || c.entries[0].keepAlive != 5*time.Minute || c.entries[0].name != testModelName {
		t.Fatalf("RERANK_KEEP_ALIVE=5m: %+v, %v", c.entries, err)
	}
}

func TestModelsFileErrors(t *testing.T) {
	f := func(yaml, want string) {
		t.Helper()
		_, err := parseModelsFile([]byte(yaml), &serveConfig{backend: "cpu", precision: "fp32", maxLength: 512, pluginDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("models file %q: error %v, want one containing %q", yaml, err, want)
		}
	}
	f(``, "empty")
	f(`models: []`, "no models")
	f(`model: [x]`, "field model not found in the file")
	f("models:\n  - name: a\n    model: x\n    precison: int8\n", "line 4: field precison not found in a model entry")
	f("models:\n  - name: a\n", "models[0] (a), field model: missing")
	f("models:\n  - model: x\n", "models[0], field name: missing")
	f("models:\n  - {name: a, model: x}\n  - {name: b, model: y, precision: fp8}\n", `models[1] (b), field precision: "fp8": use fp32, fp16, bf16 or int8`)
	f("models:\n  - {name: a, model: x, backend: tpu}\n", `models[0] (a), field backend: backend: unknown backend "tpu"`)
	f("models:\n  - {name: a, model: x, max_length: 0}\n", "models[0] (a), field max_length: must be at least 1")
	f("models:\n  - {name: a, model: x, threads: -1}\n", "models[0] (a), field threads: must not be negative")
	f("models:\n  - {name: a, model: x, keep_alive: soon}\n", "models[0] (a), field keep_alive: want a duration")
	f("models:\n  - {name: a, model: x, aliases: [b]}\n  - {name: b, model: y}\n", `models[1] (b), field name: "b" is already a name or alias of models[0]`)
	f("models:\n  - {name: a, model: x, aliases: [c, c]}\n", `models[0] (a), field aliases[1]: "c" is already`)
	f("models:\n  - {name: a, model: x, aliases: ['']}\n", `models[0] (a), field aliases[0]: empty`)
	f("models:\n  - {name: a, model: x, max_length: many}\n", "cannot unmarshal")
}

func TestKeepAliveValue(t *testing.T) {
	f := func(in string, want time.Duration) {
		t.Helper()
		var v keepAliveValue
		if err := v.Set(in); err != nil || time.Duration(v) != want {
			t.Fatalf("Set(%q) = %v, %v; want %v", in, time.Duration(v), err, want)
		}
	}
	f("5m", 5*time.Minute)
	f("300", 300*time.Second)
	f("0.5", 500*time.Millisecond)
	f("0", 0)
	f("-1", models.Never)
	f("-5m", models.Never)
	f("never", models.Never)
	var v keepAliveValue
	if err := v.Set("later"); err == nil {
		t.Fatal("Set(later) accepted")
	}
	if v = keepAliveValue(models.Never); v.String() != "never" {
		t.Fatalf("String() = %s", v.String())
	}
}
