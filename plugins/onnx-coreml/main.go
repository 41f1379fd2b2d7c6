// Command rerank-onnx-coreml is the rerank backend plugin that runs
// cross-encoders in ONNX Runtime on Apple silicon through CoreML. The proxy starts it as a
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
	log := hclog.New(&hclog.LoggerOptions{Name: "onnx-coreml", Output: os.Stderr, JSONFormat: true, Level: hclog.Info})
	sdk.Serve(ort.New(ort.CoreML, "onnx-coreml", ort.WithLogger(log)), sdk.WithLogger(log))
}
