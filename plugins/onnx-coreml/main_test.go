package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/sdktest"
)

// TestPluginProcess builds rerank-onnx-coreml and starts it as the proxy
// does. On macOS the full conformance checks run on CoreML; elsewhere Load
// must fail with sdk.ErrUnavailable saying CoreML needs macOS, and Health
// must report failed with the same message.
func TestPluginProcess(t *testing.T) {
	lib := ortLibDir(t)
	bin := filepath.Join(t.TempDir(), "rerank-onnx-coreml")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=1") // onnxruntime_go needs cgo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	c := crossencoder.Config{Arch: crossencoder.ArchBERT, VocabSize: 30522, Hidden: 32, Layers: 2, Heads: 4, Intermediate: 64,
		MaxPositions: 512, TypeVocabSize: 2, PadTokenID: 0, NumLabels: 1, LayerNormEps: 1e-12}
	dir := t.TempDir()
	tok := filepath.Join("..", "..", "sdk", "onnx", "crossencoder", "testdata", "ms-marco-MiniLM-L6-v2", "tokenizer.json")
	if err := crossencoder.WriteModelDir(dir, c, crossencoder.RandomWeights(c, 1), tok, crossencoder.DirOptions{}); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "RERANK_ORT_LIB_DIR="+lib)
	b := sdktest.Launch(t, cmd)
	cfg := sdk.LoadConfig{ModelDir: dir, ModelName: "tiny-bert"}
	if runtime.GOOS == "darwin" {
		sdktest.RunRemote(t, b, cfg)
		return
	}
	_, err := b.Load(context.Background(), cfg)
	if !errors.Is(err, sdk.ErrUnavailable) || !strings.Contains(err.Error(), "needs macOS") {
		t.Fatalf("Load: %v; want ErrUnavailable saying CoreML needs macOS", err)
	}
	h, err := b.Health(context.Background())
	if err != nil {
		t.Fatalf("Health after the failed Load: %v", err)
	}
	if h.State != sdk.StateFailed || !strings.Contains(h.Message, "needs macOS") {
		t.Errorf("Health = %+v; want failed, saying CoreML needs macOS", h)
	}
}

// ortLibDir returns the ONNX Runtime library directory: $RERANK_ORT_LIB_DIR
// (make test sets it; a missing library there fails the test) or the
// checkout's lib/onnxruntime (a plain go test skips, saying why, when it is
// not there).
func ortLibDir(t *testing.T) string {
	t.Helper()
	dir, fromEnv := os.Getenv("RERANK_ORT_LIB_DIR"), true
	if dir == "" {
		dir, fromEnv = filepath.Join("..", "..", "lib", "onnxruntime"), false
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	name := "libonnxruntime.so.1"
	if runtime.GOOS == "darwin" {
		name = "libonnxruntime.1.dylib"
	}
	if _, err := os.Stat(filepath.Join(abs, name)); err != nil {
		if fromEnv {
			t.Fatalf("no ONNX Runtime library in RERANK_ORT_LIB_DIR=%s: %v", dir, err)
		}
		t.Skipf("no ONNX Runtime library in %s (run plugins/ortlib.sh or make test)", abs)
	}
	return abs
}
