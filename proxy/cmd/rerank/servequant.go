package main

import (
	"fmt"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/sdk"
)

// QUANTIZATION=bf16 comes from the server this one replaces, where it meant
// "compute in bfloat16 where that is faster". Only the CUDA backend has bf16
// kernels: on the CPU and CoreML backends a bf16 graph cannot even be built,
// and a failed load is final, so the alias used to leave the server
// listening with a permanent 503. The alias therefore resolves per backend
// to what the backend runs: bf16 on cuda, fp32 (the precision bf16
// approximates) elsewhere, said in the log and in /health's
// model_info.precision_alias. An explicit --precision/RERANK_PRECISION is
// taken as asked.

// aliasBF16Kinds are the backend kinds that run the bf16 alias as bf16.
var aliasBF16Kinds = map[string]bool{backend.CUDA: true}

// aliasPrecision returns the supervisor's PrecisionFor for the QUANTIZATION
// value quantization (empty: the precision was not set by the alias).
func aliasPrecision(quantization string, logger hclog.Logger) func(kind string, p sdk.Precision) sdk.Precision {
	if quantization != string(sdk.BF16) {
		return nil
	}
	return func(kind string, p sdk.Precision) sdk.Precision {
		if aliasBF16Kinds[kind] {
			return p
		}
		logger.Warn("QUANTIZATION=bf16: the "+kind+" backend has no bf16 kernels, so the model runs at fp32, the precision bf16 approximates; set RERANK_PRECISION to choose another (int8 is the fast CPU precision)",
			"backend", kind, "precision", sdk.FP32)
		return sdk.FP32
	}
}

// aliasNote is /health's model_info.precision_alias: what QUANTIZATION
// asked for and what the backend runs, when the alias set the precision.
func aliasNote(quantization, backendName string, running sdk.Precision) string {
	if quantization == "" || quantization == "none" {
		return ""
	}
	if string(running) == quantization {
		return fmt.Sprintf("QUANTIZATION=%s runs as %s", quantization, running)
	}
	return fmt.Sprintf("QUANTIZATION=%s runs as %s: the %s backend has no %s kernels", quantization, running, backendName, quantization)
}
