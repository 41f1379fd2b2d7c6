// Package plugintest holds what the three plugin mains' process tests share:
// finding the ONNX Runtime library, building the plugin binary under test,
// and writing a tiny test model. It is imported by tests only.
package plugintest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/sdktest"
)

// repoRoot is the checkout's root as seen from a plugin main's directory
// (plugins/onnx-*), where `go test` runs its tests.
var repoRoot = filepath.Join("..", "..")

// LibDir returns the ONNX Runtime library directory: $RERANK_ORT_LIB_DIR
// (make test sets it; a missing library there fails the test) or the
// checkout's lib/onnxruntime (a plain go test skips, saying why, when it is
// not there).
func LibDir(t *testing.T) string {
	t.Helper()
	dir, fromEnv := os.Getenv("RERANK_ORT_LIB_DIR"), true
	if dir == "" {
		dir, fromEnv = filepath.Join(repoRoot, "lib", "onnxruntime"), false
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"libonnxruntime.so.1", "libonnxruntime.1.dylib"} {
		if _, err := os.Stat(filepath.Join(abs, name)); err == nil {
			return abs
		}
	}
	if fromEnv {
		t.Fatalf("no ONNX Runtime library in RERANK_ORT_LIB_DIR=%s", dir)
	}
	t.Skipf("no ONNX Runtime library in %s (run plugins/ortlib.sh or make test)", abs)
	return ""
}

// PrebuiltEnv names a directory of prebuilt plugin binaries Launch uses
// instead of building: a GPU machine without a Go toolchain runs the
// conformance tests from binaries built elsewhere (make gpu-check).
const PrebuiltEnv = "RERANK_PLUGIN_BIN_DIR"

// Launch builds the plugin main in the current directory as name (or takes
// it from PrebuiltEnv's directory), starts it as the proxy does (go-plugin
// handshake, gRPC) with the library in lib, and returns the proxy-side
// Backend; the process ends with the test.
func Launch(t *testing.T, name, lib string) sdk.Backend {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if dir := os.Getenv(PrebuiltEnv); dir != "" {
		bin = filepath.Join(dir, name)
	} else {
		build := exec.Command("go", "build", "-o", bin, ".")
		build.Env = append(os.Environ(), "CGO_ENABLED=1") // onnxruntime_go needs cgo
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "RERANK_ORT_LIB_DIR="+lib)
	return sdktest.Launch(t, cmd)
}

// TinyModel writes a tiny BERT cross-encoder (2 layers × 32, seeded random
// weights) over the real ms-marco tokenizer and returns its model dir.
func TinyModel(t *testing.T) string {
	t.Helper()
	c := crossencoder.Config{Arch: crossencoder.ArchBERT, VocabSize: 30522, Hidden: 32, Layers: 2, Heads: 4, Intermediate: 64,
		MaxPositions: 512, TypeVocabSize: 2, PadTokenID: 0, NumLabels: 1, LayerNormEps: 1e-12}
	dir := t.TempDir()
	tok := filepath.Join(repoRoot, "sdk", "onnx", "crossencoder", "testdata", "ms-marco-MiniLM-L6-v2", "tokenizer.json")
	if err := crossencoder.WriteModelDir(dir, c, crossencoder.RandomWeights(c, 1), tok, crossencoder.DirOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}
