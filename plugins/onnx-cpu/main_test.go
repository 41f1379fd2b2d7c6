package main

import (
	"testing"

	"github.com/rerank-sidecar/rerank/plugins/internal/plugintest"
	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/sdktest"
)

// TestPluginProcess builds rerank-onnx-cpu, starts it as the proxy does
// (go-plugin handshake, gRPC) and runs the conformance checks against it
// with a tiny BERT model over the real ms-marco tokenizer.
func TestPluginProcess(t *testing.T) {
	b := plugintest.Launch(t, "rerank-onnx-cpu", plugintest.LibDir(t))
	sdktest.RunRemote(t, b, sdk.LoadConfig{ModelDir: plugintest.TinyModel(t), ModelName: "tiny-bert", IntraOpThreads: 1})
}
