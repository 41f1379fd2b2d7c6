package main

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/plugins/internal/plugintest"
	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/sdktest"
)

// TestPluginProcess builds rerank-onnx-coreml and starts it as the proxy
// does. On macOS the full conformance checks run on CoreML; elsewhere Load
// must fail with sdk.ErrUnavailable saying CoreML needs macOS, and Health
// must report failed with the same message.
func TestPluginProcess(t *testing.T) {
	b := plugintest.Launch(t, "rerank-onnx-coreml", plugintest.LibDir(t))
	cfg := sdk.LoadConfig{ModelDir: plugintest.TinyModel(t), ModelName: "tiny-bert"}
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
