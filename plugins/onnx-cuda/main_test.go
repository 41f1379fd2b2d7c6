package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/sdktest"
)

// TestPluginProcessWithoutCUDA builds rerank-onnx-cuda and starts it as the
// proxy does. Where the CUDA provider libraries are absent (CI), Load must
// fail with sdk.ErrUnavailable naming what is missing, Health must report
// failed with the same message, and the process must stay up to say so.
// Where they are present, the full conformance checks run on the GPU.
func TestPluginProcessWithoutCUDA(t *testing.T) {
	lib := ortLibDir(t)
	bin := filepath.Join(t.TempDir(), "rerank-onnx-cuda")
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
	if _, err := os.Stat(filepath.Join(lib, "libonnxruntime_providers_cuda.so")); err == nil {
		sdktest.RunRemote(t, b, cfg)
		return
	}
	_, err := b.Load(context.Background(), cfg)
	if !errors.Is(err, sdk.ErrUnavailable) || !strings.Contains(err.Error(), "CUDA execution provider unavailable") {
		t.Fatalf("Load: %v; want ErrUnavailable saying the CUDA provider is unavailable", err)
	}
	h, err := b.Health(context.Background())
	if err != nil {
		t.Fatalf("Health after the failed Load: %v", err)
	}
	if h.State != sdk.StateFailed || !strings.Contains(h.Message, "libonnxruntime_providers_cuda.so") {
		t.Errorf("Health = %+v; want failed, naming the missing provider library", h)
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
	if _, err := os.Stat(filepath.Join(abs, "libonnxruntime.so.1")); err != nil {
		if fromEnv {
			t.Fatalf("no ONNX Runtime library in RERANK_ORT_LIB_DIR=%s: %v", dir, err)
		}
		t.Skipf("no ONNX Runtime library in %s (run plugins/ortlib.sh or make test)", abs)
	}
	return abs
}
