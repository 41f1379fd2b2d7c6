// Package batch is the proxy's micro-batcher: it coalesces the cache-missing
// pairs of concurrent requests into batches bounded in pairs and in estimated
// tokens, groups them by length so padding stays small, keeps a configurable
// number of batches in flight per plugin, sheds load beyond a bound on pending
// pairs with sdk.ErrOverloaded, and carries each request's deadline into the
// plugin call. Admission is also deadline-aware: once batches have been
// timed, a request whose deadline the queue ahead of it would make it miss is
// refused at once (429) instead of timing out later (504).
//
// Scheduling is "oldest first, then fill": every batch starts with the oldest
// pending pair (so no request starves, however large or small) and is filled
// with pending pairs of the same length class, then of shorter classes, in
// arrival order, until the pair count or the padded token budget is reached.
// A batch is dispatched as soon as the queue holds a full one, or once its
// oldest pair has waited Window; the pairs a full queue left behind after
// length grouping are due at once. When every in-flight slot is busy, pairs
// keep accumulating and the next batch leaves as soon as a slot frees.
package batch

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/sdk"
)

// Scorer is the next stage: the backend client in production, a fake in tests.
type Scorer interface {
	// Score returns one score per pair, in order; ctx carries the deadline.
	Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error)
}

// Defaults shared by every backend.
const (
	// DefaultMaxBatchSize is MICRO_BATCH_MAX_SIZE's default, from the issue.
	DefaultMaxBatchSize = 32
	// DefaultWindow is MICRO_BATCH_WINDOW_MS's default, from the issue.
	DefaultWindow = 10 * time.Millisecond
	// DefaultMaxQueue is RERANKER_MAX_QUEUE's default in pairs: 50 requests of
	// the default 20-candidate RAG shape, about a second of work for the
	// MiniLM-shaped model on two CPU cores, so a queued request still meets
	// the default 10 s deadline with room to spare.
	DefaultMaxQueue = 1000
	// DefaultCharsPerToken is the estimate of characters per token used to
	// size batches before tokenization: English WordPiece and sentencepiece
	// vocabularies average about four characters (spaces included) per token.
	DefaultCharsPerToken = 4
	// DefaultMaxLength caps a pair's estimate when no max length is given; it
	// is the serve command's default --max-length.
	DefaultMaxLength = 512
	// specialTokens is the number of special tokens a pair adds: XLM-R's
	// "<s> A </s></s> B </s>" has four, BERT's "[CLS] A [SEP] B [SEP]" three.
	specialTokens = 4
	// DefaultMaxBatchBytes is three quarters of the plugin's message
	// limit (sdk.MaxMessageBytes): the rest covers the message's own
	// framing with room to spare.
	DefaultMaxBatchBytes = sdk.MaxMessageBytes / 4 * 3
)

// Config configures a Batcher. Zero fields take the defaults above; see
// ForDevice for the per-backend choices.
type Config struct {
	// Enabled turns coalescing on; when off each request is passed to the
	// next stage as it comes, still under the MaxQueue admission bound.
	Enabled bool
	// MaxBatchSize is the largest number of pairs in one batch.
	MaxBatchSize int
	// MaxBatchTokens bounds a batch's padded size, estimated as its pair
	// count times its longest pair's estimated tokens; a single pair always
	// fits.
	MaxBatchTokens int
	// Window is how long the oldest pending pair waits for company before a
	// partial batch leaves; 0 dispatches at once whenever a slot is free.
	Window time.Duration
	// MaxInFlight is the number of batches the plugin may be running at once;
	// while they run, the next batch forms.
	MaxInFlight int
	// MaxQueue bounds the pairs admitted and not yet answered (queued and in
	// flight); a request that would pass it fails with sdk.ErrOverloaded. A
	// single request larger than the bound is admitted when nothing else is
	// pending, so no request is rejected only for its size.
	MaxQueue int
	// MaxBatchBytes bounds a batch's text in bytes (sdk.PairBytes), so that
	// its message fits the plugin's gRPC limit however long the query: a
	// query is sent once per pair. A single pair always goes, alone. 0
	// means DefaultMaxBatchBytes.
	MaxBatchBytes int
	// MaxLength is the model's maximum tokens per pair; it caps estimates.
	MaxLength int
	// CharsPerToken is the characters-per-token estimate.
	CharsPerToken int
	// Clock tells time and runs the window timer; nil is the real clock.
	Clock Clock
	// Metrics receives queue waits and rejections; nil records nothing.
	Metrics *metrics.Model
	// Up, when set, returns a channel that is closed while the next stage
	// can score and open while it cannot (its plugin crashed and is
	// restarting). Pairs then wait in the queue, under MaxQueue and their
	// deadlines, and the pairs of a batch lost to the crash are queued
	// again, once: a batch that crashes the plugin twice fails its
	// requests with an error wrapping sdk.ErrInvalidInput, so one
	// poisonous input cannot crash it for ever. A request whose deadline
	// passes while the plugin is down fails with sdk.ErrNotLoaded. With
	// coalescing off, each request's call waits for the plugin and is sent
	// again after a crash the same way. nil means always up, and a failed
	// batch fails its requests.
	Up func() <-chan struct{}
}

// ForDevice returns the configuration chosen from measurements for a
// backend device ("cpu", "cuda" or "coreml"); docs/BENCHMARKS.md (batch section) has
// the figures behind each choice.
func ForDevice(device string) Config {
	c := Config{
		Enabled:      true,
		MaxBatchSize: DefaultMaxBatchSize,
		Window:       DefaultWindow,
		MaxQueue:     DefaultMaxQueue,
		MaxLength:    DefaultMaxLength,
	}
	switch device {
	case "cuda":
		// A GPU runs a full 32 × 512 batch in about the time of a small one,
		// so the budget never splits a batch below MaxBatchSize; two batches
		// in flight hide the host-side tokenization and transfer.
		c.MaxBatchTokens = DefaultMaxBatchSize * DefaultMaxLength
		c.MaxInFlight = 2
	case "coreml":
		// CoreML compiles per shape: moderate batches, one at a time, as
		// the ANE/GPU runs a single model instance.
		c.MaxBatchTokens = 8192
		c.MaxInFlight = 1
	default:
		// On CPU time is linear in padded tokens: 8192 (32 pairs of 256
		// tokens) bounds one batch's activations and run time. One batch
		// in flight: ONNX Runtime already spreads a run over every core,
		// and two concurrent runs fight over them (1.1–1.7× the pairs/s
		// and half the p99 with one in flight, docs/BENCHMARKS.md (batch section)).
		c.MaxBatchTokens = 8192
		c.MaxInFlight = 1
	}
	return c
}

func (c Config) withDefaults() Config {
	if c.MaxBatchSize <= 0 {
		c.MaxBatchSize = DefaultMaxBatchSize
	}
	if c.MaxLength <= 0 {
		c.MaxLength = DefaultMaxLength
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.MaxBatchTokens <= 0 {
		c.MaxBatchTokens = c.MaxBatchSize * c.MaxLength
	}
	if c.Window < 0 {
		c.Window = 0
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = DefaultMaxQueue
	}
	if c.CharsPerToken <= 0 {
		c.CharsPerToken = DefaultCharsPerToken
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	return c
}

// Clock is the time source of the window timer.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc runs f in its own goroutine after d.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a scheduled AfterFunc call.
type Timer interface {
	// Stop cancels the call; it reports whether it did.
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Stats is the "micro_batcher" section of /health.
type Stats struct {
	// Enabled says whether coalescing is on.
	Enabled bool `json:"enabled"`
	// TotalRequests counts the requests admitted.
	TotalRequests uint64 `json:"total_requests"`
	// TotalBatches counts the Score calls made to the next stage.
	TotalBatches uint64 `json:"total_batches"`
	// AvgBatchSize is the mean number of pairs per Score call.
	AvgBatchSize float64 `json:"avg_batch_size"`
	// WindowMS is the coalescing window in milliseconds.
	WindowMS float64 `json:"window_ms"`
	// MaxBatchSize is the largest number of pairs per batch.
	MaxBatchSize int `json:"max_batch_size"`
	// PendingRequests counts admitted requests not answered yet.
	PendingRequests int `json:"pending_requests"`
	// PendingPairs counts admitted pairs not answered yet.
	PendingPairs int `json:"pending_pairs"`
	// InFlightBatches counts Score calls running now.
	InFlightBatches int `json:"in_flight_batches"`
	// MaxInFlight is the bound on InFlightBatches.
	MaxInFlight int `json:"max_in_flight"`
	// MaxBatchTokens is the padded token budget of a batch.
	MaxBatchTokens int `json:"max_batch_tokens"`
	// MaxQueue is the bound on PendingPairs.
	MaxQueue int `json:"max_queue"`
	// RejectedRequests counts requests refused with sdk.ErrOverloaded, at
	// the MaxQueue bound or by deadline-aware shedding.
	RejectedRequests uint64 `json:"rejected_requests"`
	// ShedRequests counts the refusals because the estimated wait exceeded
	// the request's deadline.
	ShedRequests uint64 `json:"shed_requests"`
	// TokensPerSec is the measured throughput in estimated tokens per
	// second of busy plugin time; 0 until a batch has finished.
	TokensPerSec float64 `json:"tokens_per_sec"`
	// DroppedPairs counts queued pairs dropped because their request expired
	// or was cancelled before dispatch.
	DroppedPairs uint64 `json:"dropped_pairs"`
	// DuplicatePairs counts pairs answered by an identical pair in the same
	// batch instead of being scored again.
	DuplicatePairs uint64 `json:"duplicate_pairs"`
	// Tokens counts the real tokens of the pairs scored, as the plugin
	// reports them (sdk.Usage; 0 from a plugin that reports nothing).
	Tokens uint64 `json:"tokens"`
	// PaddedTokens counts the padding positions the plugin computed on top
	// of Tokens.
	PaddedTokens uint64 `json:"padded_tokens"`
	// PaddedShare is PaddedTokens over all the positions computed.
	PaddedShare float64 `json:"padded_share"`
	// ResentPairs counts pairs queued again because the plugin crashed
	// while scoring their batch.
	ResentPairs uint64 `json:"resent_pairs"`
	// PoisonPairs counts pairs failed because their batch crashed the
	// plugin a second time.
	PoisonPairs uint64 `json:"poison_pairs"`
}

// Batcher is the micro-batching pipeline stage. It is safe for concurrent use.
type Batcher struct {
	next Scorer
	cfg  Config

	mu           sync.Mutex
	buckets      [nBuckets]queue // pending items by length class
	seq          uint64          // arrival counter of items
	dueSeq       uint64          // items up to this seq are due at once
	pendingPairs int             // admitted, unanswered pairs (queued + in flight)
	queuedPairs  int             // live pairs waiting in buckets
	queuedTokens int             // their estimated tokens
	pendingReqs  int
	inFlight     int
	timerArmed   bool

	// Throughput estimate for deadline-aware admission.
	inFlightTokens int       // estimated tokens of the batches in flight
	busySince      time.Time // last completion, or the start of a busy spell
	rateTok        float64   // decayed estimated tokens completed
	rateDur        float64   // decayed busy seconds they took

	totalRequests uint64
	totalBatches  uint64
	batchedPairs  uint64
	rejected      uint64
	dropped       uint64
	duplicates    uint64
	shed          uint64
	tokens        uint64 // real tokens the plugin reported
	computed      uint64 // positions it computed, padding included
	resent        uint64
	poison        uint64
	waitingUp     bool // a goroutine waits for the next stage to come up

	// afterEnqueue and afterBatch, when set by tests, run after a request
	// is queued and after a finished batch has been accounted for.
	afterEnqueue func()
	afterBatch   func()
}

// New returns a Batcher in front of next.
func New(next Scorer, cfg Config) *Batcher {
	return &Batcher{next: next, cfg: cfg.withDefaults()}
}

// request is one Score call waiting for its pairs.
type request struct {
	ctx       context.Context
	arrival   time.Time
	scores    []float32
	err       error
	remaining int // pairs not answered yet
	queued    int // pairs still in buckets
	queuedTok int // their estimated tokens
	dead      bool
	done      chan struct{}
	batches   []*batchRun
}

// item is one pair of a request waiting in a bucket.
type item struct {
	req    *request
	index  int
	pair   sdk.Pair
	tokens int
	bytes  int // sdk.PairBytes(pair)
	seq    uint64
	// crashed says the plugin already crashed once on a batch holding
	// this pair.
	crashed bool
}

// batchRun is one dispatched batch.
type batchRun struct {
	items   []*item
	pairs   []sdk.Pair // unique pairs sent to the plugin
	slot    []int      // items[i] is answered by pairs[slot[i]]
	live    int        // requests in the batch still waiting
	running bool
	tokens  int // estimated tokens of its items
	cancel  context.CancelFunc
	// parent is the span of the batch's first traced request, links
	// those of the others: a traced batch's span is a child of the one
	// and linked to the rest.
	parent trace.SpanContext
	links  []trace.Link
}

// tracer records the batcher's spans when a request is traced.
var tracer = otel.Tracer("github.com/rerank-sidecar/rerank/proxy/internal/batch")

// Score scores pairs through the batcher. It returns an error wrapping
// sdk.ErrOverloaded when the queue bound is reached, and one wrapping
// ctx.Err() when the request's deadline passes or it is cancelled first.
func (b *Batcher) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	if len(pairs) == 0 {
		return []float32{}, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("batch: request ended before queueing: %w", err)
	}
	if !b.cfg.Enabled {
		return b.passThrough(ctx, pairs)
	}
	if trace.SpanFromContext(ctx).IsRecording() {
		var span trace.Span
		ctx, span = tracer.Start(ctx, "rerank.batch.wait", trace.WithAttributes(
			attribute.String("rerank.model", b.cfg.Metrics.Name()), attribute.Int("rerank.pairs", len(pairs))))
		defer span.End()
	}
	r := &request{
		ctx:       ctx,
		scores:    make([]float32, len(pairs)),
		remaining: len(pairs),
		queued:    len(pairs),
		done:      make(chan struct{}),
	}
	items := make([]item, len(pairs))
	for i := range pairs {
		items[i] = item{req: r, index: i, pair: pairs[i], tokens: b.estimate(pairs[i]), bytes: sdk.PairBytes(pairs[i])}
		r.queuedTok += items[i].tokens
	}

	b.mu.Lock()
	if err := b.admitLocked(len(pairs)); err != nil {
		b.mu.Unlock()
		return nil, err
	}
	r.arrival = b.cfg.Clock.Now()
	if err := b.shedLocked(ctx, r.arrival, r.queuedTok); err != nil {
		b.pendingPairs -= len(pairs)
		b.totalRequests--
		b.mu.Unlock()
		return nil, err
	}
	for i := range items {
		it := &items[i]
		b.seq++
		it.seq = b.seq
		b.buckets[bucketOf(it.tokens)].push(it)
	}
	b.pendingReqs++
	b.queuedPairs += len(pairs)
	b.queuedTokens += r.queuedTok
	b.pumpLocked()
	hook := b.afterEnqueue
	b.mu.Unlock()
	if hook != nil {
		hook()
	}

	select {
	case <-r.done:
		return r.result()
	case <-ctx.Done():
	}
	b.mu.Lock()
	if !r.dead {
		b.killLocked(r, nil)
	}
	b.mu.Unlock()
	select {
	case <-r.done:
		if r.err == nil {
			// Every pair was answered just as the context ended.
			return r.scores, nil
		}
	default:
	}
	if !b.up() {
		return nil, fmt.Errorf("batch: no plugin came up within the request's deadline (%v): %w", ctx.Err(), sdk.ErrNotLoaded)
	}
	return nil, fmt.Errorf("batch: waiting for %d pairs: %w", len(pairs), ctx.Err())
}

// up reports whether the next stage can score now.
func (b *Batcher) up() bool {
	if b.cfg.Up == nil {
		return true
	}
	select {
	case <-b.cfg.Up():
		return true
	default:
		return false
	}
}

// waitUpLocked reports whether the next stage can score now; when it
// cannot, it makes sure the queue is pumped once it can.
func (b *Batcher) waitUpLocked() bool {
	if b.cfg.Up == nil {
		return true
	}
	up := b.cfg.Up()
	select {
	case <-up:
		return true
	default:
	}
	if !b.waitingUp {
		b.waitingUp = true
		go func() {
			<-up
			b.mu.Lock()
			b.waitingUp = false
			b.pumpLocked()
			b.mu.Unlock()
		}()
	}
	return false
}

func (r *request) result() ([]float32, error) {
	if r.err != nil {
		return nil, r.err
	}
	return r.scores, nil
}

// admitLocked applies the MaxQueue bound and counts the request.
func (b *Batcher) admitLocked(n int) error {
	if b.pendingPairs > 0 && b.pendingPairs+n > b.cfg.MaxQueue {
		b.rejected++
		b.cfg.Metrics.Reject(metrics.ReasonQueueFull)
		return fmt.Errorf("batch: queue full (%d pairs pending, %d more asked, limit %d): %w",
			b.pendingPairs, n, b.cfg.MaxQueue, sdk.ErrOverloaded)
	}
	b.pendingPairs += n
	b.totalRequests++
	return nil
}

// shedLocked refuses a request that the queue ahead of it would make miss
// its deadline: the estimated tokens of the pending pairs, with a margin,
// and of its own, at the throughput measured on recent batches, must fit in
// the time left. Failing at once with sdk.ErrOverloaded (429) tells the
// client to back off or go elsewhere, where waiting would only end in a
// timeout (504). A request with nothing ahead of it is never shed: no one
// else's work would be saved, a retry would cost the same, and its deadline
// still bounds it.
func (b *Batcher) shedLocked(ctx context.Context, now time.Time, tokens int) error {
	deadline, ok := ctx.Deadline()
	ahead := b.queuedTokens + b.inFlightTokens
	if !ok || ahead == 0 || b.rateDur <= 0 || b.rateTok <= 0 {
		return nil
	}
	secsPerToken := b.rateDur / b.rateTok
	wait := time.Duration((shedMargin*float64(ahead) + float64(tokens)) * secsPerToken * float64(time.Second))
	if now.Add(wait).Before(deadline) {
		return nil
	}
	b.rejected++
	b.shed++
	b.cfg.Metrics.Reject(metrics.ReasonDeadline)
	return fmt.Errorf("batch: estimated wait %v exceeds the request's remaining %v: %w",
		wait.Round(time.Millisecond), deadline.Sub(now).Round(time.Millisecond), sdk.ErrOverloaded)
}

// shedMargin inflates the estimated time of the work queued ahead of a
// request before it is compared with the time left: the throughput comes
// from recent batches, the token counts are estimates, and a plugin's speed
// can halve from one second to the next on a shared machine. With no
// margin, 31 of 71 admitted requests still timed out in a 10× overload run
// (docs/BENCHMARKS.md (batch section)): queueing at most half a deadline's
// worth of work keeps the plugin busy and the admitted in time. The
// request's own work is not inflated: doubling it refused a lone request on
// a slow plugin (fp16 XLM-R, 9 minutes for 20 pairs) with 15 minutes left
// whose answer would have come in time (docs/BENCHMARKS.md, models section).
const shedMargin = 2

// passThrough serves a request when coalescing is off: one Score call per
// request, under the same admission bound.
func (b *Batcher) passThrough(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	b.mu.Lock()
	if err := b.admitLocked(len(pairs)); err != nil {
		b.mu.Unlock()
		return nil, err
	}
	b.pendingReqs++
	b.inFlight++
	b.totalBatches++
	b.batchedPairs += uint64(len(pairs))
	b.mu.Unlock()
	var usage sdk.Usage
	scores, err := b.scoreSplit(sdk.WithUsage(ctx, &usage), pairs)
	b.mu.Lock()
	b.countUsageLocked(usage, err)
	b.pendingPairs -= len(pairs)
	b.pendingReqs--
	b.inFlight--
	b.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("batch: scoring %d pairs: %w", len(pairs), err)
	}
	if len(scores) != len(pairs) {
		return nil, fmt.Errorf("batch: backend returned %d scores for %d pairs", len(scores), len(pairs))
	}
	return scores, nil
}

// scoreSplit scores pairs in as few calls as MaxBatchBytes allows, in
// order.
func (b *Batcher) scoreSplit(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	var out []float32
	for start := 0; start < len(pairs); {
		end, size := start, 0
		for end < len(pairs) && (end == start || size+sdk.PairBytes(pairs[end]) <= b.cfg.MaxBatchBytes) {
			size += sdk.PairBytes(pairs[end])
			end++
		}
		if start == 0 && end == len(pairs) {
			return b.scoreOnce(ctx, pairs)
		}
		scores, err := b.scoreOnce(ctx, pairs[start:end])
		if err != nil {
			return nil, err
		}
		if len(scores) != end-start {
			return nil, fmt.Errorf("batch: backend returned %d scores for %d pairs", len(scores), end-start)
		}
		out = append(out, scores...)
		start = end
	}
	return out, nil
}

// scoreOnce sends one call of the unbatched path to the next stage, as the
// batched path sends a batch: with Up set, it waits for the plugin to be up
// (within ctx), and a call lost in a plugin crash (sdk.ErrUnavailable) or
// sent while the plugin was down (sdk.ErrNotLoaded) is sent again to the
// plugin that comes back; a call that crashes the plugin a second time
// fails with an error wrapping sdk.ErrInvalidInput.
func (b *Batcher) scoreOnce(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	if b.cfg.Up == nil {
		return b.next.Score(ctx, pairs)
	}
	crashed := false
	for {
		select {
		case <-b.cfg.Up():
		case <-ctx.Done():
			return nil, fmt.Errorf("batch: no plugin came up within the request's deadline (%v): %w", ctx.Err(), sdk.ErrNotLoaded)
		}
		scores, err := b.next.Score(ctx, pairs)
		switch {
		case err == nil || ctx.Err() != nil:
			return scores, err
		case errors.Is(err, sdk.ErrUnavailable) && crashed:
			b.mu.Lock()
			b.poison += uint64(len(pairs))
			b.mu.Unlock()
			return nil, fmt.Errorf("batch: the plugin crashed twice scoring this request's pairs, which are not sent again (%v): %w", err, sdk.ErrInvalidInput)
		case errors.Is(err, sdk.ErrUnavailable):
			crashed = true
			b.mu.Lock()
			b.resent += uint64(len(pairs))
			b.mu.Unlock()
		case errors.Is(err, sdk.ErrNotLoaded) && !b.up():
			// Sent as the plugin went down: wait for the next one. (A
			// plugin that is up and says it has no model is answered.)
		default:
			return nil, err
		}
	}
}

// estimate guesses a pair's token count before tokenization: its characters
// divided by CharsPerToken, rounded up per side, plus the special tokens,
// capped by MaxLength (longer pairs are truncated by the plugin).
func (b *Batcher) estimate(p sdk.Pair) int {
	cpt := b.cfg.CharsPerToken
	q := (utf8.RuneCountInString(p.Query) + cpt - 1) / cpt
	d := (utf8.RuneCountInString(p.Document) + cpt - 1) / cpt
	n := q + d + specialTokens
	if n > b.cfg.MaxLength {
		n = b.cfg.MaxLength
	}
	return n
}

// nBuckets is the number of length classes: powers of two from ≤ 16 tokens
// up to ≥ 4096, which covers every max_length a cross-encoder uses.
const nBuckets = 10

// bucketOf returns the length class of a pair of n estimated tokens: 0 for
// up to 16 tokens, then one class per doubling, so padding within a class is
// less than 2×.
func bucketOf(n int) int {
	const smallest = 16 // shorter pairs cost about the same as 16 tokens
	if n <= smallest {
		return 0
	}
	c := bits.Len(uint(n-1)) - bits.Len(uint(smallest-1))
	if c >= nBuckets {
		c = nBuckets - 1
	}
	return c
}

// pumpLocked dispatches every batch that is due while in-flight slots are
// free and arms the window timer for the rest.
func (b *Batcher) pumpLocked() {
	now := b.cfg.Clock.Now()
	for b.inFlight < b.cfg.MaxInFlight {
		if !b.waitUpLocked() {
			return
		}
		head := b.oldestLocked()
		if head == nil {
			return
		}
		full := b.queuedPairs >= b.cfg.MaxBatchSize || b.queuedTokens >= b.cfg.MaxBatchTokens
		if full {
			// Everything queued now made the queue full: what a
			// length-grouped batch leaves behind goes next, without
			// waiting for another window.
			b.dueSeq = b.seq
		}
		due := head.seq <= b.dueSeq || !now.Before(head.req.arrival.Add(b.cfg.Window))
		if !due {
			if !b.timerArmed {
				b.timerArmed = true
				b.cfg.Clock.AfterFunc(head.req.arrival.Add(b.cfg.Window).Sub(now), b.onTimer)
			}
			return
		}
		run := b.formLocked(head)
		if len(run.items) == 0 {
			// head's request ended between the two looks; try again.
			continue
		}
		b.launchLocked(run)
	}
}

func (b *Batcher) onTimer() {
	b.mu.Lock()
	b.timerArmed = false
	b.pumpLocked()
	b.mu.Unlock()
}

// oldestLocked drops dead items from the bucket fronts and returns the
// oldest live item, or nil when nothing is queued.
func (b *Batcher) oldestLocked() *item {
	var head *item
	for c := range b.buckets {
		it := b.frontLocked(c)
		if it != nil && (head == nil || it.seq < head.seq) {
			head = it
		}
	}
	return head
}

// frontLocked returns the first live item of bucket c, dropping the pairs of
// requests that ended (expired, cancelled or failed) on the way.
func (b *Batcher) frontLocked(c int) *item {
	q := &b.buckets[c]
	for {
		it := q.front()
		if it == nil {
			return nil
		}
		r := it.req
		if !r.dead && r.ctx.Err() != nil {
			b.killLocked(r, nil)
		}
		if !r.dead {
			return it
		}
		q.pop()
	}
}

// formLocked builds a batch that starts with head, then takes items of
// head's length class and of shorter classes, in arrival order, while the
// pair count and padded token budget allow. Longer classes are left for
// their own batch: they would raise the padding of every pair in this one.
func (b *Batcher) formLocked(head *item) *batchRun {
	run := &batchRun{}
	longest, size := 0, 0
	for c := bucketOf(head.tokens); c >= 0 && len(run.items) < b.cfg.MaxBatchSize; c-- {
		for len(run.items) < b.cfg.MaxBatchSize {
			it := b.frontLocked(c)
			if it == nil {
				break
			}
			l := max(longest, it.tokens)
			if len(run.items) > 0 && ((len(run.items)+1)*l > b.cfg.MaxBatchTokens || size+it.bytes > b.cfg.MaxBatchBytes) {
				break
			}
			longest = l
			size += it.bytes
			b.buckets[c].pop()
			run.items = append(run.items, it)
		}
	}
	return run
}

// launchLocked deduplicates the batch's pairs, sets its deadline to the
// latest of its requests' deadlines and runs it.
func (b *Batcher) launchLocked(run *batchRun) {
	index := make(map[sdk.Pair]int, len(run.items))
	run.slot = make([]int, len(run.items))
	var latest time.Time
	bounded := true
	now := b.cfg.Clock.Now()
	for i, it := range run.items {
		r := it.req
		r.queued--
		r.queuedTok -= it.tokens
		b.queuedPairs--
		b.queuedTokens -= it.tokens
		if len(r.batches) == 0 || r.batches[len(r.batches)-1] != run {
			if len(r.batches) == 0 {
				b.cfg.Metrics.QueueWait(now.Sub(r.arrival))
			}
			if sc := trace.SpanContextFromContext(r.ctx); sc.IsSampled() {
				if !run.parent.IsValid() {
					run.parent = sc
				} else {
					run.links = append(run.links, trace.Link{SpanContext: sc})
				}
			}
			r.batches = append(r.batches, run)
			run.live++
			if d, ok := r.ctx.Deadline(); !ok {
				bounded = false
			} else if d.After(latest) {
				latest = d
			}
		}
		s, ok := index[it.pair]
		if !ok {
			s = len(run.pairs)
			index[it.pair] = s
			run.pairs = append(run.pairs, it.pair)
		} else {
			b.duplicates++
		}
		run.slot[i] = s
	}
	ctx, cancel := context.WithCancel(context.Background())
	if bounded {
		ctx, cancel = context.WithDeadline(context.Background(), latest)
	}
	run.cancel = cancel
	run.running = true
	if b.inFlight == 0 {
		b.busySince = now
	}
	for _, it := range run.items {
		run.tokens += it.tokens
	}
	b.inFlightTokens += run.tokens
	b.inFlight++
	b.totalBatches++
	b.batchedPairs += uint64(len(run.pairs))
	go b.execute(ctx, run)
}

// execute calls the next stage and hands each request its scores.
func (b *Batcher) execute(ctx context.Context, run *batchRun) {
	if run.parent.IsValid() {
		var span trace.Span
		ctx, span = tracer.Start(trace.ContextWithSpanContext(ctx, run.parent), "rerank.batch",
			trace.WithLinks(run.links...), trace.WithAttributes(
				attribute.String("rerank.model", b.cfg.Metrics.Name()),
				attribute.Int("rerank.batch_size", len(run.pairs)),
				attribute.Int("rerank.requests", 1+len(run.links))))
		defer span.End()
	}
	var usage sdk.Usage
	scores, err := b.next.Score(sdk.WithUsage(ctx, &usage), run.pairs)
	if err == nil && len(scores) != len(run.pairs) {
		err = fmt.Errorf("batch: backend returned %d scores for %d pairs", len(scores), len(run.pairs))
	} else if err != nil {
		err = fmt.Errorf("batch: scoring %d pairs: %w", len(run.pairs), err)
	}
	b.mu.Lock()
	b.countUsageLocked(usage, err)
	run.running = false
	run.cancel()
	b.inFlight--
	b.inFlightTokens -= run.tokens
	b.measureLocked(run.tokens, err == nil)
	// A batch lost to a plugin crash (the connection broke: ErrUnavailable)
	// or sent while the plugin was down (ErrNotLoaded) is queued again, in
	// front, for the plugin that comes back; a pair whose batch crashed the
	// plugin before fails.
	resend := err != nil && b.cfg.Up != nil && (errors.Is(err, sdk.ErrUnavailable) || errors.Is(err, sdk.ErrNotLoaded))
	crashed := errors.Is(err, sdk.ErrUnavailable)
	if resend && crashed {
		for _, it := range run.items {
			if !it.req.dead && it.crashed {
				b.poison++
				b.killLocked(it.req, fmt.Errorf("batch: the plugin crashed twice scoring a batch holding this request's pairs, which are not sent again (%v): %w", err, sdk.ErrInvalidInput))
			}
		}
	}
	for i := len(run.items) - 1; resend && i >= 0; i-- {
		it := run.items[i]
		r := it.req
		if r.dead {
			continue
		}
		if crashed {
			it.crashed = true
			b.resent++
		}
		r.queued++
		r.queuedTok += it.tokens
		b.queuedPairs++
		b.queuedTokens += it.tokens
		b.buckets[bucketOf(it.tokens)].pushFront(it)
		b.dueSeq = max(b.dueSeq, it.seq)
	}
	for i, it := range run.items {
		r := it.req
		if r.dead || resend {
			continue
		}
		if err != nil {
			b.killLocked(r, err)
			continue
		}
		r.scores[it.index] = scores[run.slot[i]]
		r.remaining--
		b.pendingPairs--
		if r.remaining == 0 {
			b.finishLocked(r, nil)
		}
	}
	b.pumpLocked()
	hook := b.afterBatch
	b.mu.Unlock()
	if hook != nil {
		hook()
	}
}

// countUsageLocked adds a successful call's reported usage to the totals
// /health shows; a report that cannot be right (fewer positions computed
// than real tokens) is left out.
func (b *Batcher) countUsageLocked(u sdk.Usage, err error) {
	if err == nil && u.Tokens >= 0 && u.PaddedTokens >= u.Tokens {
		b.tokens += uint64(u.Tokens)
		b.computed += uint64(u.PaddedTokens)
	}
}

// measureLocked folds a finished batch into the throughput estimate: the
// estimated tokens done over the time the plugin was busy since the last
// completion, both decayed so that recent batches count most.
// A failed batch only restarts the interval.
func (b *Batcher) measureLocked(tokens int, ok bool) {
	now := b.cfg.Clock.Now()
	busy := now.Sub(b.busySince).Seconds()
	b.busySince = now
	if !ok {
		return
	}
	b.rateTok = b.rateTok*rateDecay + float64(tokens)
	b.rateDur = b.rateDur*rateDecay + busy
}

// rateDecay is the weight of the past in the throughput estimate per batch:
// 0.8 forgets a batch's influence by half within three batches, quick
// enough to follow a change of load, slow enough to smooth one odd batch.
const rateDecay = 0.8

// killLocked ends a request that expired, was cancelled (err nil) or whose
// batch failed (err set): its queued pairs are dropped, and batches left with
// no live request are cancelled.
func (b *Batcher) killLocked(r *request, err error) {
	if err == nil {
		b.dropped += uint64(r.queued)
		err = fmt.Errorf("batch: request ended while queued: %w", r.ctx.Err())
	}
	b.finishLocked(r, err)
	for _, run := range r.batches {
		if run.running {
			run.live--
			if run.live == 0 {
				run.cancel()
			}
		}
	}
}

// finishLocked releases a request's accounting and wakes its waiter.
func (b *Batcher) finishLocked(r *request, err error) {
	r.dead = true
	r.err = err
	b.pendingPairs -= r.remaining
	b.queuedPairs -= r.queued
	b.queuedTokens -= r.queuedTok
	r.remaining, r.queued, r.queuedTok = 0, 0, 0
	b.pendingReqs--
	close(r.done)
}

// Stats returns the counters for /health.
func (b *Batcher) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{
		Enabled:          b.cfg.Enabled,
		TotalRequests:    b.totalRequests,
		TotalBatches:     b.totalBatches,
		WindowMS:         float64(b.cfg.Window) / float64(time.Millisecond),
		MaxBatchSize:     b.cfg.MaxBatchSize,
		PendingRequests:  b.pendingReqs,
		PendingPairs:     b.pendingPairs,
		InFlightBatches:  b.inFlight,
		MaxInFlight:      b.cfg.MaxInFlight,
		MaxBatchTokens:   b.cfg.MaxBatchTokens,
		MaxQueue:         b.cfg.MaxQueue,
		RejectedRequests: b.rejected,
		ShedRequests:     b.shed,
		DroppedPairs:     b.dropped,
		DuplicatePairs:   b.duplicates,
		Tokens:           b.tokens,
		PaddedTokens:     b.computed - b.tokens,
		ResentPairs:      b.resent,
		PoisonPairs:      b.poison,
	}
	if b.computed > 0 {
		s.PaddedShare = float64(b.computed-b.tokens) / float64(b.computed)
	}
	if b.rateDur > 0 {
		s.TokensPerSec = b.rateTok / b.rateDur
	}
	if b.totalBatches > 0 {
		s.AvgBatchSize = float64(b.batchedPairs) / float64(b.totalBatches)
	}
	return s
}

// queue is a FIFO of items.
type queue struct {
	items []*item
	head  int
}

func (q *queue) push(it *item) {
	if q.head > 0 && len(q.items) == cap(q.items) {
		// Full backing array with consumed slots in front: slide the live
		// items down instead of growing, so a queue that never drains
		// stays bounded by its live length.
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, it)
}

// pushFront puts it before every queued item: a pair sent again goes
// before those that arrived after it.
func (q *queue) pushFront(it *item) {
	if q.head > 0 {
		q.head--
		q.items[q.head] = it
		return
	}
	q.items = append(q.items, nil)
	copy(q.items[1:], q.items)
	q.items[0] = it
}

func (q *queue) front() *item {
	if q.head == len(q.items) {
		return nil
	}
	return q.items[q.head]
}

func (q *queue) pop() {
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
}
