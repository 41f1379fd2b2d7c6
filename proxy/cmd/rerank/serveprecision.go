package main

import (
	"flag"
	"strings"

	"github.com/rerank-sidecar/rerank/sdk"
)

// quantizationEnv is the environment variable the server this one replaces
// (and its successor) read for the model's precision.
const quantizationEnv = "QUANTIZATION"

// quantizationAlias maps a QUANTIZATION value to a --precision value: none
// is the backend's default (an empty precision), bf16 and int8 are
// themselves.
func quantizationAlias(v string) (string, bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "none":
		return "", true
	case "bf16":
		return string(sdk.BF16), true
	case "int8":
		return string(sdk.INT8), true
	}
	return "", false
}

// memoryFlagsOn defines the plugin's memory trade-off flags on fs. Left
// unset, each is the plugin's choice for its device.
func memoryFlagsOn(fs *flag.FlagSet, c *serveConfig, env map[string]string) {
	fs.Var(&c.disableArena, "no-arena",
		"Turn off ONNX Runtime's CPU memory arena in the plugin: memory freed after a batch goes back to the system instead of staying reserved for the next one. --no-arena=false keeps the arena. Default: the plugin's choice for its device; the ONNX Runtime plugins turn it off on cpu and coreml (on the CPU it held 600 MB more at rest for no measurable speed, docs/BENCHMARKS.md) and keep it on cuda. Environment: RERANK_DISABLE_ARENA.")
	env["no-arena"] = "RERANK_DISABLE_ARENA"
	fs.Var(&c.disableMemPattern, "no-mem-pattern",
		"Turn off ONNX Runtime's memory-pattern planning in the plugin, which pre-allocates one block sized for the largest batch shape seen; the same trade as --no-arena, and --no-mem-pattern=false keeps it. Default: the plugin's choice for its device; the ONNX Runtime plugins turn it off on cpu and coreml and keep it on cuda. Environment: RERANK_DISABLE_MEM_PATTERN.")
	env["no-mem-pattern"] = "RERANK_DISABLE_MEM_PATTERN"
}

// ptr returns the value, nil while unset.
func (o *optionalBool) ptr() *bool {
	if !o.set {
		return nil
	}
	return &o.value
}
