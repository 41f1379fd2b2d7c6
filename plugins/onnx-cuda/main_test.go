package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/plugins/internal/plugintest"
	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/sdktest"
)

// TestPluginProcessWithoutCUDA builds rerank-onnx-cuda and starts it as the
// proxy does. Where the CUDA provider libraries are absent (CI), Load must
// fail with sdk.ErrUnavailable naming what is missing, Health must report
// failed with the same message, and the process must stay up to say so.
// Where they are present, the full conformance checks run on the GPU.
func TestPluginProcessWithoutCUDA(t *testing.T) {
	lib := plugintest.LibDir(t)
	b := plugintest.Launch(t, "rerank-onnx-cuda", lib)
	cfg := sdk.LoadConfig{ModelDir: plugintest.TinyModel(t), ModelName: "tiny-bert"}
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
