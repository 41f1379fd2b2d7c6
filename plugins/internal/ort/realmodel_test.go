package ort

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/sdktest"
	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// Tokenizers kept in the repository (copies of ../shared with their
// NOTICE files) by the crossencoder package's tests.
var (
	tokMsMarco = filepath.Join("..", "..", "..", "sdk", "onnx", "crossencoder", "testdata", "ms-marco-MiniLM-L6-v2", "tokenizer.json")
	tokXLMR    = filepath.Join("..", "..", "..", "sdk", "onnx", "crossencoder", "testdata", "xlmr-synthetic", "tokenizer_classic.json")
)

// testModel is a generated cross-encoder: an architecture shape, a seed for
// its random weights and the tokenizer it is written with.
type testModel struct {
	name      string
	config    crossencoder.Config
	seed      uint64
	tokenizer string
}

// tinyBERT is a 2-layer BERT over the real ms-marco WordPiece vocabulary.
var tinyBERT = testModel{name: "tiny-bert", seed: 1, tokenizer: tokMsMarco, config: crossencoder.Config{
	Arch: crossencoder.ArchBERT, VocabSize: 30522, Hidden: 32, Layers: 2, Heads: 4, Intermediate: 64,
	MaxPositions: 512, TypeVocabSize: 2, PadTokenID: 0, NumLabels: 1, LayerNormEps: 1e-12,
}}

// tinyXLMR is a 2-layer XLM-R over the synthetic 4,000-piece Unigram
// vocabulary (4,002 ids with its added tokens); 130 positions leave 128
// tokens after XLM-R's offset.
var tinyXLMR = testModel{name: "tiny-xlmr", seed: 2, tokenizer: tokXLMR, config: crossencoder.Config{
	Arch: crossencoder.ArchXLMRoberta, VocabSize: 4002, Hidden: 32, Layers: 2, Heads: 4, Intermediate: 64,
	MaxPositions: 130, TypeVocabSize: 1, PadTokenID: 1, NumLabels: 1, LayerNormEps: 1e-5,
}}

// miniLM has the shape of cross-encoder/ms-marco-MiniLM-L6-v2 (6 layers,
// hidden 384, 12 heads, intermediate 1536) with random weights.
var miniLM = testModel{name: "minilm-l6", seed: 3, tokenizer: tokMsMarco, config: crossencoder.Config{
	Arch: crossencoder.ArchBERT, VocabSize: 30522, Hidden: 384, Layers: 6, Heads: 12, Intermediate: 1536,
	MaxPositions: 512, TypeVocabSize: 2, PadTokenID: 0, NumLabels: 1, LayerNormEps: 1e-12,
}}

// write writes the model directory into dir.
func (m testModel) write(t testing.TB, dir string) string {
	t.Helper()
	if err := crossencoder.WriteModelDir(dir, m.config, crossencoder.RandomWeights(m.config, m.seed), m.tokenizer, crossencoder.DirOptions{}); err != nil {
		t.Fatalf("write %s: %v", m.name, err)
	}
	return dir
}

func TestConformance(t *testing.T) {
	requireRuntime(t)
	for _, m := range []testModel{tinyBERT, tinyXLMR} {
		t.Run(m.name, func(t *testing.T) {
			dir := m.write(t, t.TempDir())
			e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
			sdktest.Run(t, e, sdk.LoadConfig{ModelDir: dir, ModelName: m.name, IntraOpThreads: 1})
		})
	}
}

// TestScoresMatchForward holds the engine (real tokenizer, batching,
// padding, ONNX Runtime) against crossencoder.Forward, a plain-Go float64
// implementation of the same model fed the same token ids one pair at a
// time.
func TestScoresMatchForward(t *testing.T) {
	requireRuntime(t)
	for _, m := range []testModel{tinyBERT, tinyXLMR} {
		t.Run(m.name, func(t *testing.T) {
			dir := m.write(t, t.TempDir())
			e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
			info, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, MaxLength: 64, IntraOpThreads: 1})
			if err != nil {
				t.Fatal(err)
			}
			if info.Details["test_model"] != crossencoder.TestModelNote {
				t.Errorf("Details[test_model] = %q, want %q", info.Details["test_model"], crossencoder.TestModelNote)
			}
			got, err := e.Score(context.Background(), sdktest.Pairs)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := tokenizer.FromFile(filepath.Join(dir, "tokenizer.json"))
			if err != nil {
				t.Fatal(err)
			}
			seqs := make([]crossencoder.Sequence, len(sdktest.Pairs))
			for i, p := range sdktest.Pairs {
				enc, err := tok.EncodePair(p.Query, p.Document, tokenizer.Options{MaxLength: info.MaxLength, Truncation: tokenizer.LongestFirst})
				if err != nil {
					t.Fatal(err)
				}
				for j := range enc.IDs {
					seqs[i].InputIDs = append(seqs[i].InputIDs, int64(enc.IDs[j]))
					seqs[i].TokenTypeIDs = append(seqs[i].TokenTypeIDs, int64(enc.TypeIDs[j]))
				}
			}
			logits, err := crossencoder.Forward(m.config, crossencoder.RandomWeights(m.config, m.seed), seqs)
			if err != nil {
				t.Fatal(err)
			}
			for i := range logits {
				want := 1 / (1 + math.Exp(-logits[i][0]))
				// 1e-5: the fp32-versus-reference tolerance.
				if d := math.Abs(float64(got[i]) - want); d > 1e-5 {
					t.Errorf("pair %d: engine %v, plain-Go forward %v (|Δ| %.3g)", i, got[i], want, d)
				}
			}
		})
	}
}

// TestRunTerminatesOnCancel shows a context that ends during an ONNX
// Runtime run stops the run through the run options' terminate flag, rather
// than waiting for it to finish: the run of 64 pairs of 512 tokens is given
// a context that is already canceled, past the checks Score makes before
// running, and must fail with ONNX Runtime's terminate error.
func TestRunTerminatesOnCancel(t *testing.T) {
	requireRuntime(t)
	dir := tinyBERT.write(t, t.TempDir())
	e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
	if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, Options: map[string]string{MaxBatchSizeOption: "64"}}); err != nil {
		t.Fatal(err)
	}
	m := e.model
	doc := strings.Repeat("the quick brown fox jumps over the lazy dog ", 200)
	encs := make([]tokenizer.Encoding, 64)
	for i := range encs {
		enc, err := m.enc.EncodePair("query", doc, tokenizer.Options{MaxLength: m.maxLength, Truncation: tokenizer.LongestFirst})
		if err != nil {
			t.Fatal(err)
		}
		encs[i] = enc
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := m.run(ctx, encs, make([]float32, len(encs)))
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "terminate flag") {
		t.Fatalf("run with a canceled context: %v; want context.Canceled from a terminated run", err)
	}
	// The session is still usable afterwards.
	if _, err := e.Score(context.Background(), sdktest.Pairs[:2]); err != nil {
		t.Fatalf("Score after a terminated run: %v", err)
	}
}

// TestConcurrentScore runs Score from several goroutines on one engine (one
// session, pooled buffers); every call must give the scores a lone call
// gives. Run with -race.
func TestConcurrentScore(t *testing.T) {
	requireRuntime(t)
	dir := tinyBERT.write(t, t.TempDir())
	e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
	if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, MaxLength: 64, IntraOpThreads: 1}); err != nil {
		t.Fatal(err)
	}
	want, err := e.Score(context.Background(), sdktest.Pairs)
	if err != nil {
		t.Fatal(err)
	}
	const workers = 8 // more goroutines than the box's cores, so calls overlap
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		go func(w int) {
			// Each worker scores a different-sized prefix, so buffers of
			// different shapes go through the pool.
			pairs := sdktest.Pairs[:1+w%len(sdktest.Pairs)]
			for i := 0; i < 5; i++ {
				got, err := e.Score(context.Background(), pairs)
				if err != nil {
					errs <- err
					return
				}
				for j := range got {
					if d := math.Abs(float64(got[j] - want[j])); d > sdktest.Tolerance {
						errs <- fmt.Errorf("worker %d: pair %d scored %v, alone %v", w, j, got[j], want[j])
						return
					}
				}
			}
			errs <- nil
		}(w)
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
