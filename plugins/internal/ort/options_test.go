package ort

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// optionsEncoder is wordEncoder that honours the per-request tokenizer
// options as the real tokenizer does (its own tests check those), and
// records the options it was given.
type optionsEncoder struct {
	mu   sync.Mutex
	seen []tokenizer.Options
}

func (o *optionsEncoder) EncodePair(q, d string, opt tokenizer.Options) (tokenizer.Encoding, error) {
	o.mu.Lock()
	o.seen = append(o.seen, opt)
	o.mu.Unlock()
	if words := strings.Fields(d); opt.MaxSecondLength > 0 && len(words) > opt.MaxSecondLength {
		d = strings.Join(words[:opt.MaxSecondLength], " ")
	}
	if n := len(strings.Fields(q)) + len(strings.Fields(d)) + 3; opt.Strict && opt.MaxLength > 0 && n > opt.MaxLength {
		return tokenizer.Encoding{}, fmt.Errorf("%w: %d tokens", tokenizer.ErrTooLong, n)
	}
	return wordEncoder{}.EncodePair(q, d, opt)
}

// TestScoreOptions checks that each pair's options reach the tokenizer and
// the activation: raw pairs get the logit, the others the activation of the
// same logit; the document cut changes the encoding; a strict pair over the
// max length fails with sdk.ErrTooLong, not a truncated score.
func TestScoreOptions(t *testing.T) {
	requireRuntime(t)
	g := sumGraph{mask: true, types: true, labels: 1}
	dir := writeSumModelDir(t, g, "onnx/model.onnx", nil, "Sigmoid")
	enc := &optionsEncoder{}
	e := newSumEngine()
	e.newEncoder = func([]byte) (pairEncoder, error) { return enc, nil }
	const maxLength = 16
	if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, MaxLength: maxLength, IntraOpThreads: 1}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("w ", 30)
	pairs := []sdk.Pair{
		{Query: "a b", Document: "c d e"},
		{Query: "a b", Document: "c d e", Options: sdk.PairOptions{Raw: true}},
		{Query: "a b", Document: long, Options: sdk.PairOptions{MaxDocumentTokens: 4}},
		{Query: "a b", Document: long, Options: sdk.PairOptions{MaxDocumentTokens: 4, Raw: true, Strict: true}},
		{Query: "a b", Document: long},
	}
	got, err := e.Score(context.Background(), pairs)
	if err != nil {
		t.Fatal(err)
	}
	logit := func(q, d string, opt tokenizer.Options) float64 {
		en, err := enc.EncodePair(q, d, opt)
		if err != nil {
			t.Fatal(err)
		}
		return g.sumLogit(en)
	}
	sigmoid := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
	want := []float64{
		sigmoid(logit("a b", "c d e", tokenizer.Options{MaxLength: maxLength})),
		logit("a b", "c d e", tokenizer.Options{MaxLength: maxLength}),
		sigmoid(logit("a b", "w w w w", tokenizer.Options{MaxLength: maxLength})),
		logit("a b", "w w w w", tokenizer.Options{MaxLength: maxLength}),
		sigmoid(logit("a b", long, tokenizer.Options{MaxLength: maxLength})),
	}
	for i := range pairs {
		if math.Abs(float64(got[i])-want[i]) > 1e-6*math.Max(1, math.Abs(want[i])) {
			t.Errorf("pair %d (%+v): score %v, want %v", i, pairs[i].Options, got[i], want[i])
		}
	}
	if got[2] == got[4] {
		t.Errorf("the document cut changed nothing: %v", got)
	}
	enc.mu.Lock()
	if o := enc.seen[3]; o.MaxSecondLength != 4 || !o.Strict || o.MaxLength != maxLength {
		t.Errorf("pair 3 was encoded with %+v", o)
	}
	enc.mu.Unlock()

	_, err = e.Score(context.Background(), []sdk.Pair{pairs[0], {Query: "a b", Document: long, Options: sdk.PairOptions{Strict: true}}})
	if !errors.Is(err, sdk.ErrTooLong) || !errors.Is(err, sdk.ErrInvalidInput) {
		t.Errorf("strict pair over the max length: %v, want sdk.ErrTooLong", err)
	}
	if _, err := e.Score(context.Background(), []sdk.Pair{{Query: "a", Document: "b", Options: sdk.PairOptions{MaxDocumentTokens: -1}}}); !errors.Is(err, sdk.ErrInvalidInput) {
		t.Errorf("negative max document tokens: %v", err)
	}
}
