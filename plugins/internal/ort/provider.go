package ort

import (
	"fmt"
	"runtime"
	"sort"
	"strings"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/rerank-sidecar/rerank/sdk"
)

// Provider names an ONNX Runtime execution provider; its value is also the
// device the engine reports.
type Provider string

// The execution providers the engine can run on.
const (
	// CPU is ONNX Runtime's default CPU execution provider.
	CPU Provider = "cpu"
	// CUDA runs on an NVIDIA GPU through the CUDA execution provider.
	CUDA Provider = "cuda"
	// CoreML runs on Apple silicon through the CoreML execution provider.
	CoreML Provider = "coreml"
)

// optionPrefix marks LoadConfig.Options keys passed to the execution
// provider as provider options, for example "cuda.device_id" = "1" or
// "coreml.MLComputeUnits" = "ALL".
func (p Provider) optionPrefix() string { return string(p) + "." }

// providerOptions returns the LoadConfig.Options entries meant for p, with
// the prefix removed.
func (p Provider) providerOptions(opts map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range opts {
		if name, ok := strings.CutPrefix(k, p.optionPrefix()); ok && name != "" {
			out[name] = v
		}
	}
	return out
}

// appendTo adds the execution provider to the session options. The CPU
// provider is always present in ONNX Runtime, so nothing is appended for it;
// for the others a failure wraps sdk.ErrUnavailable and says what is missing.
func (p Provider) appendTo(so *ortgo.SessionOptions, opts map[string]string) error {
	switch p {
	case CPU:
		return nil
	case CUDA:
		co, err := ortgo.NewCUDAProviderOptions()
		if err != nil {
			return cudaUnavailable(err)
		}
		defer co.Destroy()
		if po := p.providerOptions(opts); len(po) > 0 {
			if err := co.Update(po); err != nil {
				return fmt.Errorf("ort: invalid CUDA provider options %s: %v: %w", formatOptions(po), err, sdk.ErrInvalidInput)
			}
		}
		if err := so.AppendExecutionProviderCUDA(co); err != nil {
			return cudaUnavailable(err)
		}
		return nil
	case CoreML:
		if runtime.GOOS != "darwin" {
			return fmt.Errorf("ort: CoreML execution provider unavailable: it needs macOS, this is %s/%s: %w", runtime.GOOS, runtime.GOARCH, sdk.ErrUnavailable)
		}
		if err := so.AppendExecutionProviderCoreMLV2(p.providerOptions(opts)); err != nil {
			return fmt.Errorf("ort: CoreML execution provider unavailable (needs the macOS ONNX Runtime %s library built with CoreML): %v: %w", Version, err, sdk.ErrUnavailable)
		}
		return nil
	}
	return fmt.Errorf("ort: unknown execution provider %q (supported: cpu, cuda, coreml): %w", string(p), sdk.ErrUnavailable)
}

// cudaUnavailable says what the CUDA execution provider needs.
func cudaUnavailable(err error) error {
	return fmt.Errorf("ort: CUDA execution provider unavailable (needs libonnxruntime_providers_cuda.so and libonnxruntime_providers_shared.so from the ONNX Runtime %s GPU build next to the ONNX Runtime library, plus CUDA 13 and cuDNN 9): %v: %w", Version, err, sdk.ErrUnavailable)
}

// formatOptions renders options as sorted key=value pairs for messages.
func formatOptions(opts map[string]string) string {
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + opts[k]
	}
	return strings.Join(keys, ",")
}
