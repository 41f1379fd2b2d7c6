package main

import (
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/batch"
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
	num(&b.maxSize, "micro-batch-max-size", "MICRO_BATCH_MAX_SIZE", batch.DefaultMaxBatchSize,
		"The largest number of (query, candidate) pairs in one batch sent to the plugin; bigger requests are split across batches, never rejected for it. Default 32.")
	num(&b.windowMS, "micro-batch-window-ms", "MICRO_BATCH_WINDOW_MS", int(batch.DefaultWindow/time.Millisecond),
		"How long, in milliseconds, the oldest waiting pair waits for others before a partial batch is sent; 0 sends at once whenever the plugin has a free slot. Default 10.")
	num(&b.maxTokens, "micro-batch-max-tokens", "MICRO_BATCH_MAX_TOKENS", 0,
		"The padded token budget of one batch (pairs times the longest pair's tokens, estimated before tokenization at 4 characters per token and capped by --max-length). Default 0: per backend, 8192 on cpu and coreml, 32 × max-length on cuda.")
	num(&b.inFlight, "micro-batch-in-flight", "MICRO_BATCH_IN_FLIGHT", 0,
		"The number of batches the plugin may run at once; the next batch forms while they run. Default 0: per backend, 1 on cpu and coreml (one run already uses every core), 2 on cuda.")
	num(&b.maxQueue, "max-queue", "RERANKER_MAX_QUEUE", batch.DefaultMaxQueue,
		"The most (query, candidate) pairs admitted and not yet answered; a request that would pass it is answered 429 with Retry-After. A single request bigger than the bound is still admitted when nothing else waits. Default 1000.")
}

// validate checks the micro-batching flags.
func (b *batchFlags) validate() error {
	switch {
	case b.maxSize < 1:
		return fmt.Errorf("serve: --micro-batch-max-size must be at least 1, got %d", b.maxSize)
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

// batchConfig turns the flags into the batcher's configuration over the
// per-backend defaults. Under --backend auto the cpu defaults apply, the
// backend that auto falls back to last.
func batchConfig(b *batchFlags, backendKind string, maxLength int) batch.Config {
	cfg := batch.ForDevice(backendKind)
	cfg.MaxLength = maxLength
	if backendKind == "cuda" {
		cfg.MaxBatchTokens = b.maxSize * maxLength
	}
	if b.enabled.set {
		cfg.Enabled = b.enabled.value
	}
	cfg.MaxBatchSize = b.maxSize
	cfg.Window = time.Duration(b.windowMS) * time.Millisecond
	if b.maxTokens > 0 {
		cfg.MaxBatchTokens = b.maxTokens
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
