package main

import (
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/proxy/internal/batch"
	"github.com/rerank-sidecar/rerank/proxy/internal/models"
	"github.com/rerank-sidecar/rerank/sdk"
)

// batchFlags are the serve flags of the micro-batching stage.
type batchFlags struct {
	enabled   optionalBool
	maxSize   int
	windowMS  int
	maxTokens int
	inFlight  int
	maxQueue  int
}

// batchFlagsOn defines the micro-batching flags on fs and records their
// environment variables in env.
func batchFlagsOn(fs *flag.FlagSet, b *batchFlags, env map[string]string) {
	num := func(p *int, name, envName string, def int, help string) {
		fs.IntVar(p, name, def, help+" Environment: "+envName+".")
		env[name] = envName
	}
	fs.Var(&b.enabled, "micro-batch",
		"Coalesce the cache-missing pairs of concurrent requests into shared batches (true or false). Default: on for every backend, chosen from measurements (docs/BENCHMARKS.md (batch section)). Environment: MICRO_BATCH_ENABLED.")
	env["micro-batch"] = "MICRO_BATCH_ENABLED"
	num(&b.maxSize, "micro-batch-max-size", "MICRO_BATCH_MAX_SIZE", 0,
		"The largest number of (query, candidate) pairs in one batch sent to the plugin; bigger requests are split across batches, never rejected for it. It may lower the largest batch the plugin reports, never raise it. Default 0: the plugin's (32 pairs at a max length of 512 for the ONNX Runtime plugins).")
	num(&b.windowMS, "micro-batch-window-ms", "MICRO_BATCH_WINDOW_MS", int(batch.DefaultWindow/time.Millisecond),
		"How long, in milliseconds, the oldest waiting pair waits for others before a partial batch is sent; 0 sends at once whenever the plugin has a free slot. Default 10.")
	num(&b.maxTokens, "micro-batch-max-tokens", "MICRO_BATCH_MAX_TOKENS", 0,
		"The padded token budget of one batch (pairs times the longest pair's tokens, estimated before tokenization at 4 characters per token and capped by the model's max length). It may lower the limit the plugin declares, never raise it. Default 0: the plugin's limit (the ONNX Runtime plugins declare 8192 on cpu and coreml, the batch size × max length on cuda), else per device the plugin reports, the same figures.")
	num(&b.inFlight, "micro-batch-in-flight", "MICRO_BATCH_IN_FLIGHT", 0,
		"The number of batches the plugin may run at once; the next batch forms while they run. Default 0: as many as the plugin prefers (the ONNX Runtime plugins: 2 on cpu, where one batch's runs spread over every core and the next is sent and tokenized meanwhile, 1 on coreml, 2 on cuda), else per device the plugin reports, 1 on cpu and coreml, 2 on cuda.")
	num(&b.maxQueue, "max-queue", "RERANKER_MAX_QUEUE", batch.DefaultMaxQueue,
		"The most (query, candidate) pairs admitted and not yet answered; a request that would pass it is answered 429 with Retry-After. A single request bigger than the bound is still admitted when nothing else waits. Default 1000.")
}

// validate checks the micro-batching flags.
func (b *batchFlags) validate() error {
	switch {
	case b.maxSize < 0:
		return fmt.Errorf("serve: --micro-batch-max-size must not be negative, got %d", b.maxSize)
	case b.windowMS < 0:
		return fmt.Errorf("serve: --micro-batch-window-ms must not be negative, got %d", b.windowMS)
	case b.maxTokens < 0:
		return fmt.Errorf("serve: --micro-batch-max-tokens must not be negative, got %d", b.maxTokens)
	case b.inFlight < 0:
		return fmt.Errorf("serve: --micro-batch-in-flight must not be negative, got %d", b.inFlight)
	case b.maxQueue < 1:
		return fmt.Errorf("serve: --max-queue must be at least 1, got %d", b.maxQueue)
	}
	return nil
}

// batchConfig is the batcher's configuration for a model whose plugin
// reported info (its device, max length, largest batch, token limit and
// preferred batches in flight): the plugin's report, else the measured
// per-device defaults, which the flags may lower (batch size, and the token
// budget below a limit the plugin declares) or tune (window, batches in
// flight, queue bound).
func batchConfig(b *batchFlags, info sdk.ModelInfo) batch.Config {
	cfg := models.PluginBatchConfig(info)
	if b.maxSize > 0 && b.maxSize < cfg.MaxBatchSize {
		cfg.MaxBatchSize = b.maxSize
		if info.Device == backend.CUDA {
			cfg.MaxBatchTokens = cfg.MaxBatchSize * cfg.MaxLength
		}
	}
	if b.enabled.set {
		cfg.Enabled = b.enabled.value
	}
	cfg.Window = time.Duration(b.windowMS) * time.Millisecond
	if b.maxTokens > 0 {
		cfg.MaxBatchTokens = b.maxTokens
	}
	if info.MaxBatchTokens > 0 {
		cfg.MaxBatchTokens = min(cfg.MaxBatchTokens, info.MaxBatchTokens)
	}
	if b.inFlight > 0 {
		cfg.MaxInFlight = b.inFlight
	}
	cfg.MaxQueue = b.maxQueue
	return cfg
}

// optionalBool is a boolean flag that remembers whether it was set, so an
// unset flag keeps the per-backend default.
type optionalBool struct {
	set, value bool
}

func (o *optionalBool) String() string {
	if o == nil || !o.set {
		return "per backend"
	}
	return strconv.FormatBool(o.value)
}

func (o *optionalBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("want true or false, got %q", s)
	}
	o.set, o.value = true, v
	return nil
}

// IsBoolFlag lets --micro-batch stand alone for true.
func (o *optionalBool) IsBoolFlag() bool { return true }
