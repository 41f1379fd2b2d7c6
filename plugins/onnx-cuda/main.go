// Command rerank-onnx-cuda is the rerank backend plugin that runs
// cross-encoders in ONNX Runtime on an NVIDIA GPU through CUDA. The proxy starts it as a
// child process (hashicorp/go-plugin); run by hand it only says so and exits.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/plugins/internal/ort"
	"github.com/rerank-sidecar/rerank/sdk"
)

func main() {
	// stdout belongs to the go-plugin handshake: log JSON to stderr.
	log := hclog.New(&hclog.LoggerOptions{Name: "onnx-cuda", Output: os.Stderr, JSONFormat: true, Level: hclog.Info})
	sdk.Serve(ort.New(ort.CUDA, "onnx-cuda", ort.WithLogger(log)), sdk.WithLogger(log))
}
