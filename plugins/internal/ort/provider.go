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

// memoryDefaults says whether the CPU memory arena and memory-pattern
// planning are on when the load leaves them to the backend.
//   - cpu: both off. Measured on the XLM-R 24×1024 shape after two
//     20-candidate requests (docs/BENCHMARKS.md, "Memory at rest"): the
//     arena keeps a batch's activations reserved (int8, 128-token pairs:
//     894 MB resident with both on, 675 MB with both off; issue 12's run
//     with longer pairs: 1,358 and 748 MB) and buys no measurable speed,
//     since one batch's inference dwarfs its allocations.
//   - coreml: both off, as on cpu: CoreML runs its partitions in its own
//     memory, and what the arena would hold is the CPU provider's share on
//     a machine (the Mac sidecar) whose memory belongs to the LLM beside
//     it. Not measured: no Mac here.
//   - cuda: both on, ONNX Runtime's defaults: the CPU arena there holds
//     only the host-side inputs and outputs (kilobytes per batch) and GPU
//     hosts are sized for throughput. Not measured: no GPU here.
func (p Provider) memoryDefaults() (arena, pattern bool) {
	if p == CUDA {
		return true, true
	}
	return false, false
}

// threadSettings returns the intra-op threads of one inference run (0:
// ONNX Runtime's default) and how many runs the engine executes at once,
// for a load asking for threads per run (0: the backend's choice) with cpus
// CPUs to use (GOMAXPROCS: the CPUs of the machine, or of the container's
// CPU limit).
//   - cpu: one thread per run and one run per CPU by default; threads > 1
//     per run leave cpus/threads runs at once. Measured on the 2-core
//     development VM (docs/BENCHMARKS.md, "Speed (issue 14)"): ONNX
//     Runtime's default pool kept one core busy (the machine half idle
//     under load), two single-threaded runs side by side scored 1.8–2×
//     its pairs/s at fp32 and int8, and beat one run on two threads, whose
//     small length-matched GEMMs split badly across the pool.
//   - cuda, coreml: one run at a time on ONNX Runtime's threads (the
//     device computes; the host threads only launch work).
func (p Provider) threadSettings(threads, cpus int) (intraOp, parallel int) {
	if p != CPU {
		return threads, 1
	}
	if threads == 0 {
		return 1, max(1, cpus)
	}
	return threads, max(1, cpus/threads)
}

// batchLimits returns what the engine declares to the proxy's batcher
// (sdk.ModelInfo): the most tokens one Score call should hold (pairs × the
// longest pair, padding included) and how many calls it wants in flight,
// given its largest run (maxBatch pairs of maxLength tokens).
//   - cpu: 8,192 tokens (32 pairs of 256), which bounds one call's
//     activations and run time (docs/BENCHMARKS.md, batch section), and two
//     calls in flight: the runs of one call spread over every core
//     (threadSettings), and the second call is sent and tokenized while
//     the first one's last runs finish (docs/BENCHMARKS.md, "Speed (issue
//     14)").
//   - cuda: a full run (maxBatch × maxLength): a GPU runs it in about the
//     time of a small one; two in flight hide the host-side tokenization
//     and transfers.
//   - coreml: 8,192 tokens, one call at a time: CoreML compiles per shape
//     and runs one model instance.
func (p Provider) batchLimits(maxBatch, maxLength int) (maxTokens, inFlight int) {
	switch p {
	case CUDA:
		return maxBatch * maxLength, 2
	case CoreML:
		return cpuBatchTokens, 1
	}
	return cpuBatchTokens, 2
}

// cpuBatchTokens is the token limit of one Score call on the CPU and
// CoreML providers (batchLimits).
const cpuBatchTokens = 8192

// memorySettings is how a session treats memory: the CPU arena and
// memory-pattern planning on or off, and whether each came from the load's
// configuration or the provider's default.
type memorySettings struct {
	arena, pattern             bool
	arenaForced, patternForced bool
}

// memorySettings resolves cfg's arena and memory-pattern settings against
// p's defaults.
func (p Provider) memorySettings(cfg sdk.LoadConfig) memorySettings {
	var m memorySettings
	m.arena, m.pattern = p.memoryDefaults()
	if cfg.DisableArena != nil {
		m.arena, m.arenaForced = !*cfg.DisableArena, true
	}
	if cfg.DisableMemPattern != nil {
		m.pattern, m.patternForced = !*cfg.DisableMemPattern, true
	}
	return m
}

// details describes the settings for ModelInfo.Details: "on" or "off",
// followed by " (default)" where the provider's default applied.
func (m memorySettings) details() (arena, pattern string) {
	f := func(on, forced bool) string {
		s := "off"
		if on {
			s = "on"
		}
		if !forced {
			s += " (default)"
		}
		return s
	}
	return f(m.arena, m.arenaForced), f(m.pattern, m.patternForced)
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
