package sdk

import (
	"context"
	"errors"
	"fmt"
)

// Pair is one (query, document) pair to score.
type Pair struct {
	// Query is the search query.
	Query string
	// Document is the candidate passage.
	Document string
	// Options change how the pair is scored; the zero value is the
	// defaults. Two pairs with different options are different pairs: they
	// may score differently and are cached apart.
	Options PairOptions
}

// PairOptions are the per-request scoring options a client may ask for.
// They travel to the plugin from protocol minor version 1 on; a plugin of an
// older minor version cannot honour them, and the proxy refuses to send them
// to one (see Client.Score).
type PairOptions struct {
	// Raw asks for the raw logit instead of the score with the model's
	// activation applied.
	Raw bool
	// MaxDocumentTokens, when positive, cuts the document to at most this
	// many tokens (special tokens not counted) before the pair is truncated
	// to the model's max length; the query is never cut by it.
	MaxDocumentTokens int
	// Strict refuses a pair that does not fit the model's max length with
	// ErrTooLong instead of truncating it.
	Strict bool
}

// IsZero reports whether o asks for nothing but the defaults.
func (o PairOptions) IsZero() bool { return o == PairOptions{} }

// Precision names the numeric format the model runs at.
type Precision string

// The precisions a backend may offer.
const (
	FP32 Precision = "fp32"
	FP16 Precision = "fp16"
	BF16 Precision = "bf16"
	INT8 Precision = "int8"
)

// LoadConfig tells a backend which model to load and how.
type LoadConfig struct {
	// ModelDir is a local directory in Hugging Face layout: config.json,
	// tokenizer.json, onnx/model.onnx (or model.onnx, or model.safetensors).
	ModelDir string
	// ModelName is the name the proxy reports for the model.
	ModelName string
	// Precision is the requested precision; empty means the backend's default.
	Precision Precision
	// MaxLength is the maximum number of tokens per pair, truncation included.
	MaxLength int
	// IntraOpThreads is the number of threads one inference may use; 0 lets
	// the backend choose.
	IntraOpThreads int
	// DisableArena turns the runtime's memory arena off (true), which
	// returns memory freed after a batch to the system, or on (false),
	// which keeps it reserved for the next batch. Nil leaves the choice to
	// the backend, which picks per device.
	DisableArena *bool
	// DisableMemPattern turns memory-pattern planning off (true) or on
	// (false), the same trade as DisableArena; nil leaves it to the backend.
	DisableMemPattern *bool
	// CacheDir, when set, is where a backend may keep converted models.
	CacheDir string
	// Options carries backend-specific settings as key/value strings.
	Options map[string]string
}

// ModelInfo describes a loaded model and the device it runs on.
type ModelInfo struct {
	// Name is the model name as the proxy reports it.
	Name string
	// Revision identifies the model's weights (for example the sha256 of the
	// model file); two models with the same revision give the same scores.
	Revision string
	// Device is where inference runs: "cpu", "cuda" or "coreml".
	Device string
	// Backend names the plugin, for example "onnx-cpu".
	Backend string
	// Precision is the precision the model actually runs at.
	Precision Precision
	// Quantization describes the quantization, "none" when there is none.
	Quantization string
	// Source is where the weights came from: "onnx", "safetensors" or
	// "variant file".
	Source string
	// MaxLength is the maximum number of tokens per pair the backend applies.
	MaxLength int
	// MaxBatchSize is the largest batch the backend accepts in one Score call;
	// 0 means no limit.
	MaxBatchSize int
	// MaxBatchTokens is the most tokens one Score call should hold, counted
	// as its pairs times its longest pair's tokens, padding included; 0
	// declares no limit. The proxy's batcher never sizes a batch above it
	// (from minor version 3; an older plugin reports 0).
	MaxBatchTokens int
	// PreferredInFlight is how many Score calls the backend wants running at
	// once for its best throughput, for example one per batch it can
	// compute while the next is sent and tokenized; 0 states no preference
	// and leaves the proxy's per-device default (minor version 3).
	PreferredInFlight int
	// Activation is applied to the logit: "sigmoid", "identity", ….
	Activation string
	// SDKMinorVersion is the additive protocol version the plugin speaks.
	SDKMinorVersion uint32
	// Details are extra facts worth logging, such as the model file used.
	Details map[string]string
}

// State is a backend's loading state.
type State int

// The loading states.
const (
	StateLoading State = iota + 1
	StateReady
	StateFailed
)

// String returns the state's lowercase name.
func (s State) String() string {
	switch s {
	case StateLoading:
		return "loading"
	case StateReady:
		return "ready"
	case StateFailed:
		return "failed"
	}
	return "unknown"
}

// Health is a backend's answer to a health check.
type Health struct {
	// State is the loading state.
	State State
	// Message says why the state is what it is, for example the load error.
	Message string
	// Model is set once State is StateReady.
	Model *ModelInfo
}

// Backend is what a plugin implements.
type Backend interface {
	// Load loads the model and returns when it is ready. It is called once.
	Load(ctx context.Context, cfg LoadConfig) (ModelInfo, error)
	// Score returns one score per pair, in order, with the model's activation
	// applied unless the pair's options ask for the raw logit. It returns
	// ErrNotLoaded before Load succeeded, ErrTooLong for a strict pair over
	// the max length and ErrInvalidInput for pairs it cannot encode. It
	// honours ctx's deadline.
	Score(ctx context.Context, pairs []Pair) ([]float32, error)
	// Health reports the loading state.
	Health(ctx context.Context) (Health, error)
}

// Sentinel errors travel between plugin and proxy as gRPC status codes; test
// for them with errors.Is.
var (
	// ErrInvalidInput means the request cannot be served as given.
	ErrInvalidInput = errors.New("invalid input")
	// ErrTooLong means a pair does not fit the model's max length and the
	// request asked for an error instead of truncation (PairOptions.Strict).
	// It wraps ErrInvalidInput: the client's input is at fault.
	ErrTooLong = fmt.Errorf("input too long: %w", ErrInvalidInput)
	// ErrNotLoaded means the model is not loaded (yet, or it failed).
	ErrNotLoaded = errors.New("model not loaded")
	// ErrOverloaded means the backend refuses work for now.
	ErrOverloaded = errors.New("backend overloaded")
	// ErrUnavailable means the backend cannot run at all here, for example
	// because its execution provider is missing.
	ErrUnavailable = errors.New("backend unavailable")
)
