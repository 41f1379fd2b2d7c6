package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/sdktest"
)

// TestPluginProcess builds rerank-onnx-cpu, starts it as the proxy does
// (go-plugin handshake, gRPC) and runs the conformance checks against it
// with a tiny BERT model over the real ms-marco tokenizer.
func TestPluginProcess(t *testing.T) {
	lib := ortLibDir(t)
	bin := filepath.Join(t.TempDir(), "rerank-onnx-cpu")
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
	sdktest.RunRemote(t, sdktest.Launch(t, cmd), sdk.LoadConfig{ModelDir: dir, ModelName: "tiny-bert", IntraOpThreads: 1})
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
		if _, err2 := os.Stat(filepath.Join(abs, "libonnxruntime.1.dylib")); err2 != nil {
			if fromEnv {
				t.Fatalf("no ONNX Runtime library in RERANK_ORT_LIB_DIR=%s: %v", dir, err)
			}
			t.Skipf("no ONNX Runtime library in %s (run plugins/ortlib.sh or make test)", abs)
		}
	}
	return abs
}
