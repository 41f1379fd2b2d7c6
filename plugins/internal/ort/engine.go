package ort

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	ortgo "github.com/yalue/onnxruntime_go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// Engine runs cross-encoder models in ONNX Runtime on one execution
// provider. It implements sdk.Backend; Score is safe for concurrent use.
type Engine struct {
	provider Provider
	backend  string
	log      hclog.Logger
	// newEncoder loads the tokenizer; tests replace it to isolate the
	// engine from the tokenizer.
	newEncoder func(tokenizerJSON []byte) (pairEncoder, error)

	loadMu sync.Mutex // serialises Load calls

	mu      sync.RWMutex // guards the fields below
	state   sdk.State
	message string
	model   *model
}

var _ sdk.Backend = (*Engine)(nil)

// pairEncoder is the part of the tokenizer the engine uses.
type pairEncoder interface {
	EncodePair(query, document string, opt tokenizer.Options) (tokenizer.Encoding, error)
}

// Option configures an Engine.
type Option func(*Engine)

// WithLogger sets the logger; it must write to stderr, as a plugin's stdout
// belongs to the go-plugin handshake. The default writes JSON to stderr at
// info level.
func WithLogger(l hclog.Logger) Option {
	return func(e *Engine) { e.log = l }
}

// New returns an Engine that runs models on provider p and reports itself as
// backend (for example "onnx-cpu"). Nothing is loaded until Load.
func New(p Provider, backend string, opts ...Option) *Engine {
	e := &Engine{
		provider:   p,
		backend:    backend,
		newEncoder: func(b []byte) (pairEncoder, error) { return tokenizer.FromBytes(b) },
		state:      sdk.StateLoading,
		message:    "waiting for a model to load",
	}
	for _, o := range opts {
		o(e)
	}
	if e.log == nil {
		e.log = hclog.New(&hclog.LoggerOptions{Name: backend, Output: os.Stderr, JSONFormat: true, Level: hclog.Info})
	}
	return e
}

// inputKind says which encoding field feeds a graph input.
type inputKind int

const (
	inputIDs inputKind = iota
	attentionMask
	tokenTypeIDs
	inputKinds // the number of kinds
)

// inputKindByName maps the input names cross-encoder exports use.
var inputKindByName = map[string]inputKind{
	"input_ids":      inputIDs,
	"attention_mask": attentionMask,
	"token_type_ids": tokenTypeIDs,
}

// graphInput is one input the session is fed, in session order.
type graphInput struct {
	name  string
	kind  inputKind
	int32 bool // int32 elements; int64 otherwise
}

// model is a loaded model: one session, its tokenizer and how to feed it.
type model struct {
	info      sdk.ModelInfo
	session   *ortgo.DynamicAdvancedSession
	enc       pairEncoder
	inputs    []graphInput
	numLabels int
	act       activation
	maxLength int
	maxBatch  int
	padID     int64
	// padLongest runs arrival-order chunks padded to their longest pair
	// instead of length-matched runs (PaddingOption "longest").
	padLongest bool
	// slots holds one token per inference run allowed at once, across
	// every Score call (Provider.threadSettings); its capacity is the
	// number of runs a Score call spreads its work over.
	slots chan struct{}
	// idle gives the memory malloc keeps for the next run back to the
	// system once no Score call has run for a while; nil with the CPU
	// arena on, which holds its memory itself.
	idle *releaser
	// feeds pools the buffers behind the input and output tensors, so a
	// steady stream of batches allocates nothing per batch once warm.
	feeds sync.Pool
}

// feed holds one batch's tensor buffers; they grow to the largest batch
// shape seen and are reused for every smaller one.
type feed struct {
	i64    [inputKinds][]int64
	i32    [inputKinds][]int32
	logits []float32
}

// tokenBudget is the default number of tokens one inference may hold:
// 32 pairs of 512 tokens, which keeps a BERT-base attention tensor
// (batch × heads × length²) to a few hundred MiB. Longer max lengths get
// proportionally smaller batches.
const tokenBudget = 32 * 512

// MaxBatchSizeOption is the LoadConfig.Options key that overrides the
// largest batch run in one inference.
const MaxBatchSizeOption = "max_batch_size"

// ParallelRunsOption is the LoadConfig.Options key that overrides how many
// inference runs the engine executes at once (Provider.threadSettings): a
// positive integer.
const ParallelRunsOption = "parallel_runs"

// PaddingOption is the LoadConfig.Options key that chooses how a Score
// call's pairs are grouped into runs: "split" (the default) sorts them by
// length and runs length-matched groups (planRuns), "longest" runs them in
// arrival order in chunks of MaxBatchSize, each padded to its longest pair,
// as before issue 14; it is kept to measure what splitting buys.
const PaddingOption = "padding"

// Load loads the model in cfg.ModelDir and creates its session. It fails
// with an error wrapping sdk.ErrUnavailable when the ONNX Runtime library or
// the execution provider is missing, and sdk.ErrInvalidInput when the model
// directory or the configuration is unusable; Health then reports
// StateFailed with the reason. A failed Load may be retried.
func (e *Engine) Load(ctx context.Context, cfg sdk.LoadConfig) (sdk.ModelInfo, error) {
	e.loadMu.Lock()
	defer e.loadMu.Unlock()
	e.mu.Lock()
	if e.model != nil {
		e.mu.Unlock()
		return sdk.ModelInfo{}, fmt.Errorf("%s: a model is already loaded (%s): %w", e.backend, e.model.info.Name, sdk.ErrInvalidInput)
	}
	e.state, e.message = sdk.StateLoading, "loading "+cfg.ModelDir
	e.mu.Unlock()

	m, err := e.load(ctx, cfg)

	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("%s: %w", e.backend, err)
		e.state, e.message = sdk.StateFailed, err.Error()
		e.log.Error("model load failed", "model_dir", cfg.ModelDir, "error", err)
		return sdk.ModelInfo{}, err
	}
	e.state, e.message, e.model = sdk.StateReady, "", m
	if why := m.info.Details["rebuilt"]; why != "" {
		e.log.Warn("conversion cache entry was damaged and has been rebuilt", "entry", m.info.Details["conversion_cache"], "reason", why)
	}
	e.log.Info("model loaded", "model", m.info.Name, "file", m.info.Details["model_file"], "revision", m.info.Revision,
		"device", m.info.Device, "precision", m.info.Precision, "source", m.info.Source, "activation", m.info.Activation,
		"max_length", m.info.MaxLength, "max_batch_size", m.info.MaxBatchSize,
		"intra_op_threads", m.info.Details["intra_op_threads"], "parallel_runs", m.info.Details["parallel_runs"], "inputs", m.info.Details["inputs"])
	return m.info, nil
}

func (e *Engine) load(ctx context.Context, cfg sdk.LoadConfig) (*model, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	// phases times the load's steps for the "model loaded" log line: what
	// a restart spends where (docs/RELIABILITY.md).
	phases := make([]any, 0, 10)
	mark := time.Now()
	phase := func(name string) {
		now := time.Now()
		phases = append(phases, name, now.Sub(mark).Round(100*time.Microsecond).String())
		mark = now
	}
	libPath, err := initRuntime()
	if err != nil {
		return nil, err
	}
	phase("runtime_init")
	// A missing execution provider is reported before the model is read
	// (hashing a large model file takes seconds), so a proxy choosing a
	// backend automatically can fall back at once.
	if err := e.probeProvider(cfg.Options); err != nil {
		return nil, err
	}
	mf, err := resolveModel(cfg, e.provider)
	if err != nil {
		return nil, err
	}
	phase("resolve")
	mc, err := readModelConfig(cfg.ModelDir)
	if err != nil {
		return nil, err
	}
	act, actSource, err := resolveActivation(cfg.ModelDir, mc)
	if err != nil {
		return nil, err
	}
	maxLength, capped, err := mc.maxLength(cfg.MaxLength)
	if err != nil {
		return nil, err
	}
	if capped {
		e.log.Warn("max length capped by the model's position embeddings", "requested", cfg.MaxLength, "applied", maxLength)
	}
	maxBatch := max(1, tokenBudget/maxLength)
	if v, ok := cfg.Options[MaxBatchSizeOption]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("ort: option %s=%q is not a positive integer: %w", MaxBatchSizeOption, v, sdk.ErrInvalidInput)
		}
		maxBatch = n
	}
	if cfg.IntraOpThreads < 0 {
		return nil, fmt.Errorf("ort: intra-op threads %d is negative: %w", cfg.IntraOpThreads, sdk.ErrInvalidInput)
	}
	intraOp, parallel := e.provider.threadSettings(cfg.IntraOpThreads, runtime.GOMAXPROCS(0))
	if v, ok := cfg.Options[ParallelRunsOption]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("ort: option %s=%q is not a positive integer: %w", ParallelRunsOption, v, sdk.ErrInvalidInput)
		}
		parallel = n
	}
	padLongest := false
	switch v := cfg.Options[PaddingOption]; v {
	case "", "split":
	case "longest":
		padLongest = true
	default:
		return nil, fmt.Errorf("ort: option %s=%q is not split or longest: %w", PaddingOption, v, sdk.ErrInvalidInput)
	}
	tokPath := filepath.Join(cfg.ModelDir, "tokenizer.json")
	tokJSON, err := os.ReadFile(tokPath)
	if err != nil {
		return nil, fmt.Errorf("ort: cannot load tokenizer: %v: %w", err, sdk.ErrInvalidInput)
	}
	enc, err := e.newEncoder(tokJSON)
	if err != nil {
		return nil, fmt.Errorf("ort: cannot load tokenizer: %v (in %q): %w", err, tokPath, sdk.ErrInvalidInput)
	}
	phase("tokenizer")
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	gio, err := mf.inspect()
	if err != nil {
		return nil, err
	}
	phase("inspect")
	inputs, err := feedInputs(gio)
	if err != nil {
		return nil, err
	}
	output, numLabels, err := logitsOutput(gio, mc)
	if err != nil {
		return nil, err
	}
	if numLabels != 1 {
		// A reranker gives one score per pair; which label of a
		// multi-label classifier means "relevant" is not something the
		// engine can know, so it refuses rather than guess.
		return nil, fmt.Errorf("ort: model has %d labels; only one-label (reranker) models are supported: %w", numLabels, sdk.ErrInvalidInput)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	mem := e.provider.memorySettings(cfg)
	session, threads, err := e.newSession(mf.Path, inputs, output, intraOp, cfg, mem)
	if err != nil {
		return nil, err
	}
	phase("session")
	e.log.Info("load phases", phases...)
	arena, pattern := mem.details()
	maxTokens, inFlight := e.provider.batchLimits(maxBatch, maxLength)
	names := make([]string, len(inputs))
	for i, in := range inputs {
		typ := "int64"
		if in.int32 {
			typ = "int32"
		}
		names[i] = in.name + ":" + typ
	}
	name := cfg.ModelName
	if name == "" {
		name = filepath.Base(filepath.Clean(cfg.ModelDir))
	}
	m := &model{
		session:    session,
		enc:        enc,
		inputs:     inputs,
		numLabels:  numLabels,
		act:        act,
		maxLength:  maxLength,
		maxBatch:   maxBatch,
		padID:      mc.padID(),
		padLongest: padLongest,
		slots:      make(chan struct{}, parallel),
		info: sdk.ModelInfo{
			Name:              name,
			Revision:          revision(mf.Revision, tokJSON),
			Device:            string(e.provider),
			Backend:           e.backend,
			Precision:         mf.Precision,
			Quantization:      mf.Quantization,
			Source:            mf.Source,
			MaxLength:         maxLength,
			MaxBatchSize:      maxBatch,
			MaxBatchTokens:    maxTokens,
			PreferredInFlight: inFlight,
			Activation:        act.name,
			SDKMinorVersion:   sdk.MinorVersion,
			Details: map[string]string{
				"model_file":        mf.Path,
				"model_sha256":      mf.Revision,
				"ort_library":       libPath,
				"ort_version":       ortgo.GetVersion(),
				"intra_op_threads":  threads,
				"parallel_runs":     strconv.Itoa(parallel),
				"inputs":            strings.Join(names, ","),
				"output":            output,
				"activation_source": actSource,
				"cpu_mem_arena":     arena,
				"mem_pattern":       pattern,
			},
		},
	}
	for k, v := range mf.Details {
		m.info.Details[k] = v
	}
	if mc.TestModel != nil {
		// Said in words wherever the model is reported: a stand-in with
		// random weights must never pass for a real reranker.
		m.info.Details["test_model"] = mc.TestModel.Note
		e.log.Warn("serving a test model", "note", mc.TestModel.Note)
	}
	m.feeds.New = func() any { return &feed{} }
	if !mem.arena {
		keepFreedMemory()
		m.idle = &releaser{after: releaseAfter, release: releaseFreedMemory}
	}
	return m, nil
}

// feedInputs checks the graph's declared inputs and returns how to feed
// them: input_ids is required, attention_mask and token_type_ids are fed
// only where declared, as int64 or int32 as typed.
func feedInputs(g graphIO) ([]graphInput, error) {
	var inputs []graphInput
	seen := map[inputKind]bool{}
	for _, vi := range g.inputs {
		name := vi.GetName()
		if g.initializers[name] {
			continue // IR < 4 lists initializers among the inputs.
		}
		kind, ok := inputKindByName[name]
		if !ok {
			return nil, fmt.Errorf("ort: graph input %q not supported (supported: input_ids, attention_mask, token_type_ids): %w", name, sdk.ErrInvalidInput)
		}
		var is32 bool
		switch et := vi.GetType().GetTensorType().GetElemType(); et {
		case int32(ortgo.TensorElementDataTypeInt64):
		case int32(ortgo.TensorElementDataTypeInt32):
			is32 = true
		default:
			return nil, fmt.Errorf("ort: graph input %q has element type %s; only int64 and int32 are supported: %w", name, ortgo.TensorElementDataType(et), sdk.ErrInvalidInput)
		}
		seen[kind] = true
		inputs = append(inputs, graphInput{name: name, kind: kind, int32: is32})
	}
	if !seen[inputIDs] {
		return nil, fmt.Errorf("ort: graph has no input_ids input: %w", sdk.ErrInvalidInput)
	}
	return inputs, nil
}

// logitsOutput picks the output named "logits", or the graph's only output,
// and the number of labels: the output's second dimension where the graph
// fixes it, else the config's label count, else 1.
func logitsOutput(g graphIO, c modelConfig) (string, int, error) {
	pick := -1
	for i, vi := range g.outputs {
		if vi.GetName() == "logits" {
			pick = i
		}
	}
	if pick < 0 {
		if len(g.outputs) != 1 {
			names := make([]string, len(g.outputs))
			for i, vi := range g.outputs {
				names[i] = vi.GetName()
			}
			return "", 0, fmt.Errorf("ort: graph has no \"logits\" output and %d outputs (%s): %w", len(names), strings.Join(names, ", "), sdk.ErrInvalidInput)
		}
		pick = 0
	}
	vi := g.outputs[pick]
	if et := vi.GetType().GetTensorType().GetElemType(); et != int32(ortgo.TensorElementDataTypeFloat) {
		return "", 0, fmt.Errorf("ort: output %q has element type %s; only float32 logits are supported: %w", vi.GetName(), ortgo.TensorElementDataType(et), sdk.ErrInvalidInput)
	}
	dims := vi.GetType().GetTensorType().GetShape().GetDim()
	labels := 0
	switch len(dims) {
	case 1: // [batch]: one logit per pair.
		labels = 1
	case 2:
		labels = int(dims[1].GetDimValue())
	default:
		if vi.GetType().GetTensorType().GetShape() != nil {
			return "", 0, fmt.Errorf("ort: output %q has rank %d; want [batch, labels]: %w", vi.GetName(), len(dims), sdk.ErrInvalidInput)
		}
	}
	if labels <= 0 {
		labels = c.labelCount()
	}
	if labels <= 0 {
		labels = 1
	}
	return vi.GetName(), labels, nil
}

// newSession creates the model's one session: all graph optimizations,
// intraOp threads per run (0: ONNX Runtime's default, one per physical
// core), the CPU arena and memory patterns as cfg sets them or else as the
// provider's defaults (memorySettings), on the engine's execution provider.
func (e *Engine) newSession(path string, inputs []graphInput, output string, intraOp int, cfg sdk.LoadConfig, mem memorySettings) (*ortgo.DynamicAdvancedSession, string, error) {
	so, err := ortgo.NewSessionOptions()
	if err != nil {
		return nil, "", fmt.Errorf("ort: cannot create session options: %v: %w", err, sdk.ErrUnavailable)
	}
	defer so.Destroy()
	if err := so.SetGraphOptimizationLevel(ortgo.GraphOptimizationLevelEnableAll); err != nil {
		return nil, "", fmt.Errorf("ort: cannot enable graph optimizations: %w", err)
	}
	threads := "auto"
	if intraOp > 0 {
		if err := so.SetIntraOpNumThreads(intraOp); err != nil {
			return nil, "", fmt.Errorf("ort: cannot set %d intra-op threads: %w", intraOp, err)
		}
		threads = strconv.Itoa(intraOp)
	}
	if err := so.SetCpuMemArena(mem.arena); err != nil {
		return nil, "", fmt.Errorf("ort: cannot set the CPU arena: %w", err)
	}
	if err := so.SetMemPattern(mem.pattern); err != nil {
		return nil, "", fmt.Errorf("ort: cannot set memory patterns: %w", err)
	}
	if err := e.provider.appendTo(so, cfg.Options); err != nil {
		return nil, "", err
	}
	names := make([]string, len(inputs))
	for i, in := range inputs {
		names[i] = in.name
	}
	s, err := ortgo.NewDynamicAdvancedSession(path, names, []string{output}, so)
	if err != nil {
		return nil, "", fmt.Errorf("ort: cannot create session for %s: %v: %w", path, err, sdk.ErrInvalidInput)
	}
	return s, threads, nil
}

// probeProvider appends the engine's execution provider to throwaway
// session options, which loads the provider's libraries: it fails where
// the provider cannot run here.
func (e *Engine) probeProvider(opts map[string]string) error {
	so, err := ortgo.NewSessionOptions()
	if err != nil {
		return fmt.Errorf("ort: cannot create session options: %v: %w", err, sdk.ErrUnavailable)
	}
	defer so.Destroy()
	return e.provider.appendTo(so, opts)
}

// Health reports the loading state, and the model once it is ready.
func (e *Engine) Health(context.Context) (sdk.Health, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	h := sdk.Health{State: e.state, Message: e.message}
	if e.model != nil {
		info := e.model.info
		h.Model = &info
	}
	return h, nil
}

// Score returns one score per pair with the model's activation applied, or
// the raw logit for pairs whose options ask for it. It tokenizes every pair
// (cutting the document to the pair's MaxDocumentTokens, then truncating to
// the model's max length, longest first, or refusing a strict pair that does
// not fit with sdk.ErrTooLong), splits the pairs into runs of at most
// MaxBatchSize pairs of similar real length (planRuns: padding within 4% of
// the real tokens; PaddingOption "longest" restores arrival-order runs), runs
// each padded to its longest pair, as many at once as the engine runs in
// parallel (on cpu one single-threaded run per CPU, shared with concurrent
// calls; spreadRuns splits a run that would leave CPUs idle), adds what it
// computed to ctx's sdk.Usage,
// and honours ctx: it checks it before each run, and a context that ends
// during a run terminates the run through ONNX Runtime's run options (ONNX
// Runtime stops between graph nodes, so the run ends soon after, not at
// once).
func (e *Engine) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	e.mu.RLock()
	m, msg := e.model, e.message
	e.mu.RUnlock()
	if m == nil {
		return nil, fmt.Errorf("%s: %s: %w", e.backend, msg, sdk.ErrNotLoaded)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: score: %w", e.backend, err)
	}
	if m.idle != nil {
		m.idle.begin()
		defer m.idle.end()
	}
	scores := make([]float32, len(pairs))
	if len(pairs) == 0 {
		return scores, nil
	}
	// With the proxy tracing this call, tokenization and each run get a
	// span under the gRPC server span.
	traced := trace.SpanFromContext(ctx).IsRecording()
	var span trace.Span
	if traced {
		_, span = tracer.Start(ctx, "ort.tokenize", trace.WithAttributes(attribute.Int("rerank.pairs", len(pairs))))
	}
	encs, lengths, err := m.encode(pairs, e.backend)
	if traced {
		tokens := 0
		for _, n := range lengths {
			tokens += n
		}
		span.SetAttributes(attribute.Int("rerank.tokens", tokens))
		if err != nil {
			span.RecordError(err)
		}
		span.End()
	}
	if err != nil {
		return nil, err
	}
	var runs []runPlan
	if m.padLongest {
		runs, _ = chunkRuns(lengths, m.maxBatch)
	} else {
		runs, _ = planRuns(lengths, m.maxBatch)
	}
	if p := cap(m.slots); p > 1 && !m.padLongest {
		runs = spreadRuns(runs, lengths, p)
	}
	if err := m.runAll(ctx, runs, encs, lengths, scores, traced); err != nil {
		return nil, fmt.Errorf("%s: %w", e.backend, err)
	}
	// run left logits; each pair gets the model's activation unless it asks
	// for the raw logit.
	for i, x := range scores {
		s := float64(x)
		if !pairs[i].Options.Raw {
			s = m.act.fn(s)
		}
		if math.IsNaN(s) || math.IsInf(s, 0) {
			return nil, fmt.Errorf("%s: model produced a non-finite score (%v from logit %v)", e.backend, s, x)
		}
		scores[i] = float32(s)
	}
	return scores, nil
}

// runAll executes runs, writing each pair's logit into scores, on up to
// cap(m.slots) goroutines that take the runs in order (spreadRuns puts the
// costliest first) and hold a slot for each run, so that concurrent Score
// calls together never run more than cap(m.slots) at once. It adds what the
// finished runs computed to ctx's sdk.Usage and returns the first error; the
// other workers then stop before their next run.
func (m *model) runAll(ctx context.Context, runs []runPlan, encs []tokenizer.Encoding, lengths []int, scores []float32, traced bool) error {
	usage := sdk.UsageFrom(ctx)
	var (
		next     atomic.Int64
		failed   atomic.Bool
		usageMu  sync.Mutex
		errOnce  sync.Once
		firstErr error
	)
	work := func() {
		batch := make([]tokenizer.Encoding, 0, m.maxBatch)
		out := make([]float32, m.maxBatch)
		for {
			i := int(next.Add(1)) - 1
			if i >= len(runs) || failed.Load() {
				return
			}
			r := runs[i]
			tokens, err := m.runOne(ctx, r, encs, lengths, batch, out, traced)
			if err != nil {
				errOnce.Do(func() { firstErr = err })
				failed.Store(true)
				return
			}
			for k, p := range r.pairs {
				scores[p] = out[k]
			}
			if usage != nil {
				usageMu.Lock()
				usage.Tokens += int64(tokens)
				usage.PaddedTokens += int64(r.seq * len(r.pairs))
				usageMu.Unlock()
			}
		}
	}
	workers := min(cap(m.slots), len(runs))
	var wg sync.WaitGroup
	for range workers - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
	return firstErr
}

// runOne runs one planned run in a free slot, leaving its logits in
// out[:len(r.pairs)], and returns its real tokens. batch is the caller's
// scratch slice.
func (m *model) runOne(ctx context.Context, r runPlan, encs []tokenizer.Encoding, lengths []int, batch []tokenizer.Encoding, out []float32, traced bool) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("score: %w", err)
	}
	select {
	case m.slots <- struct{}{}:
	case <-ctx.Done():
		return 0, fmt.Errorf("score: %w", ctx.Err())
	}
	defer func() { <-m.slots }()
	batch = batch[:0]
	tokens := 0
	for _, p := range r.pairs {
		batch = append(batch, encs[p])
		tokens += lengths[p]
	}
	rctx := ctx
	var span trace.Span
	if traced {
		rctx, span = tracer.Start(ctx, "ort.run", trace.WithAttributes(
			attribute.Int("rerank.batch_size", len(batch)), attribute.Int("rerank.sequence_length", r.seq),
			attribute.Int("rerank.tokens", tokens), attribute.Int("rerank.padded_tokens", r.seq*len(batch))))
	}
	err := m.run(rctx, batch, out[:len(batch)])
	if traced {
		if err != nil {
			span.RecordError(err)
		}
		span.End()
	}
	return tokens, err
}

// tracer records the engine's spans when the proxy traces the call.
var tracer = otel.Tracer("github.com/rerank-sidecar/rerank/plugins/internal/ort")

// encode tokenizes every pair under its options and returns the encodings
// and their lengths.
func (m *model) encode(pairs []sdk.Pair, backend string) ([]tokenizer.Encoding, []int, error) {
	encs := make([]tokenizer.Encoding, len(pairs))
	lengths := make([]int, len(pairs))
	for i, p := range pairs {
		if !utf8.ValidString(p.Query) || !utf8.ValidString(p.Document) {
			return nil, nil, fmt.Errorf("%s: pair %d is not valid UTF-8: %w", backend, i, sdk.ErrInvalidInput)
		}
		if p.Options.MaxDocumentTokens < 0 {
			return nil, nil, fmt.Errorf("%s: pair %d: max document tokens %d is negative: %w", backend, i, p.Options.MaxDocumentTokens, sdk.ErrInvalidInput)
		}
		// The pair's options: the document side cut first, then the
		// whole pair truncated (or, strict, refused) at the max length.
		opt := tokenizer.Options{MaxLength: m.maxLength, Truncation: tokenizer.LongestFirst,
			MaxSecondLength: p.Options.MaxDocumentTokens, Strict: p.Options.Strict}
		enc, err := m.enc.EncodePair(p.Query, p.Document, opt)
		if errors.Is(err, tokenizer.ErrTooLong) {
			return nil, nil, fmt.Errorf("%s: pair %d: %v: %w", backend, i, err, sdk.ErrTooLong)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: cannot tokenize pair %d: %v: %w", backend, i, err, sdk.ErrInvalidInput)
		}
		if n := len(enc.IDs); n == 0 || n > m.maxLength {
			return nil, nil, fmt.Errorf("%s: pair %d encodes to %d tokens, outside 1..%d: %w", backend, i, n, m.maxLength, sdk.ErrInvalidInput)
		}
		encs[i] = enc
		lengths[i] = len(enc.IDs)
	}
	return encs, lengths, nil
}

// grow returns buf resliced to n elements, reallocated when too small.
func grow[T int64 | int32 | float32](buf []T, n int) []T {
	if cap(buf) < n {
		return make([]T, n)
	}
	return buf[:n]
}

// run writes one batch's logits into out; the caller checks ctx first and
// applies the activation.
func (m *model) run(ctx context.Context, encs []tokenizer.Encoding, out []float32) error {
	batch, seq := len(encs), 0
	for _, enc := range encs {
		seq = max(seq, len(enc.IDs))
	}
	f := m.feeds.Get().(*feed)
	defer m.feeds.Put(f)
	shape := ortgo.NewShape(int64(batch), int64(seq))
	values := make([]ortgo.Value, 0, len(m.inputs)+1)
	defer func() {
		for _, v := range values {
			v.Destroy()
		}
	}()
	for _, in := range m.inputs {
		var v ortgo.Value
		var err error
		if in.int32 {
			f.i32[in.kind] = grow(f.i32[in.kind], batch*seq)
			fillInput(f.i32[in.kind], in.kind, encs, seq, int32(m.padID))
			v, err = ortgo.NewTensor(shape, f.i32[in.kind])
		} else {
			f.i64[in.kind] = grow(f.i64[in.kind], batch*seq)
			fillInput(f.i64[in.kind], in.kind, encs, seq, m.padID)
			v, err = ortgo.NewTensor(shape, f.i64[in.kind])
		}
		if err != nil {
			return fmt.Errorf("cannot create input tensor %s: %w", in.name, err)
		}
		values = append(values, v)
	}
	f.logits = grow(f.logits, batch*m.numLabels)
	logits, err := ortgo.NewTensor(ortgo.NewShape(int64(batch), int64(m.numLabels)), f.logits)
	if err != nil {
		return fmt.Errorf("cannot create output tensor: %w", err)
	}
	values = append(values, logits)
	if err := m.runSession(ctx, values[:len(m.inputs)], values[len(m.inputs):]); err != nil {
		return err
	}
	for i := range out {
		out[i] = f.logits[i*m.numLabels]
	}
	return nil
}

// runSession runs the session; when ctx can end, a context that ends during
// the run sets the run's terminate flag.
func (m *model) runSession(ctx context.Context, inputs, outputs []ortgo.Value) error {
	if ctx.Done() == nil {
		if err := m.session.Run(inputs, outputs); err != nil {
			return fmt.Errorf("inference failed: %w", err)
		}
		return nil
	}
	ro, err := ortgo.NewRunOptions()
	if err != nil {
		return fmt.Errorf("cannot create run options: %w", err)
	}
	// terminateMu keeps the terminate callback from touching ro after it
	// is destroyed.
	var terminateMu sync.Mutex
	destroyed := false
	stop := context.AfterFunc(ctx, func() {
		terminateMu.Lock()
		defer terminateMu.Unlock()
		if !destroyed {
			ro.Terminate()
		}
	})
	defer func() {
		stop()
		terminateMu.Lock()
		destroyed = true
		ro.Destroy()
		terminateMu.Unlock()
	}()
	err = m.session.RunWithOptions(inputs, outputs, ro)
	if ctxErr := ctx.Err(); ctxErr != nil {
		if err != nil {
			return fmt.Errorf("score: run terminated (%v): %w", err, ctxErr)
		}
		return fmt.Errorf("score: %w", ctxErr)
	}
	if err != nil {
		return fmt.Errorf("inference failed: %w", err)
	}
	return nil
}

// fillInput writes one input's rows, padded to seq: token ids padded with
// padID, the attention mask with 0 (1 for every real token where the
// encoding has no mask), token type ids with 0.
func fillInput[T int64 | int32](dst []T, kind inputKind, encs []tokenizer.Encoding, seq int, padID T) {
	for r, enc := range encs {
		row := dst[r*seq : (r+1)*seq]
		n := len(enc.IDs)
		var src []int32
		pad := T(0)
		switch kind {
		case inputIDs:
			src, pad = enc.IDs, padID
		case attentionMask:
			src = enc.AttentionMask
		case tokenTypeIDs:
			src = enc.TypeIDs
		}
		for i := 0; i < n; i++ {
			switch {
			case i < len(src):
				row[i] = T(src[i])
			case kind == attentionMask:
				row[i] = 1
			default:
				row[i] = 0
			}
		}
		for i := n; i < seq; i++ {
			row[i] = pad
		}
	}
}

// revision identifies what decides the scores: the model file's sha256 and
// the tokenizer's (the bytes the tokenizer was built from), so a changed
// tokenizer.json never reuses cached scores of the old one.
func revision(modelSHA256 string, tokenizerJSON []byte) string {
	tok := sha256.Sum256(tokenizerJSON)
	both := sha256.Sum256([]byte(modelSHA256 + ":" + hex.EncodeToString(tok[:])))
	return hex.EncodeToString(both[:])
}
