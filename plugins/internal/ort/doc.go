// Package ort is the ONNX Runtime engine shared by the onnx-cpu, onnx-cuda
// and onnx-coreml plugins.
//
// An Engine implements sdk.Backend: Load resolves the model file in a
// Hugging Face model directory (model.go), reads the graph's declared inputs
// and outputs while hashing the file (graphio.go), creates exactly one ONNX
// Runtime session on the chosen execution provider (provider.go), and loads
// the tokenizer; Score tokenizes the pairs, groups them into length-matched
// runs each padded to its longest pair (runs.go), feeds exactly the inputs
// the graph declares from pooled buffers, runs the session (on cpu several
// single-threaded runs at once, one per CPU) and applies the model's
// activation (activation.go) in float64. With the CPU arena off, freed
// memory is kept for the next run and given back once the engine is idle
// (release.go).
//
// The ONNX Runtime shared library is loaded once per process (runtime.go)
// from RERANK_ORT_LIB_DIR, from next to the executable, or from
// ../lib/onnxruntime relative to the executable's directory. A missing
// library or execution provider makes Load fail with an error wrapping
// sdk.ErrUnavailable, and Health then reports StateFailed with the reason;
// nothing here panics on a missing dependency.
package ort
