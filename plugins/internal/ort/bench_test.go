package ort

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// benchDir is the MiniLM-shaped model directory, written once per test
// binary (about 90 MB) and removed by TestMain.
var benchDir struct {
	once sync.Once
	path string
	err  error
}

func miniLMDir(b *testing.B) string {
	b.Helper()
	benchDir.once.Do(func() {
		benchDir.path, benchDir.err = os.MkdirTemp("", "ort-bench-minilm-")
		if benchDir.err == nil {
			miniLM.write(b, filepath.Join(benchDir.path, "model"))
		}
	})
	if benchDir.err != nil {
		b.Fatal(benchDir.err)
	}
	return filepath.Join(benchDir.path, "model")
}

// benchText is varied English prose; documents are cut from it at
// different offsets so no two pairs in a batch are alike.
var benchText = strings.Repeat("Paris is the capital and most populous city of France, with an estimated population "+
	"of two million residents. The city is a major railway, highway and air-transport hub served by two "+
	"international airports. Photosynthesis is the process plants use to convert light energy into chemical "+
	"energy that fuels their activities. The mitochondrion is the powerhouse of the cell. ", 20)

// BenchmarkScore measures in-process pairs/s of Engine.Score (tokenization,
// padding, ONNX Runtime on the CPU provider, activation) on the
// MiniLM-L6-shaped model, for batches of 1, 8 and 32 pairs that each encode
// to exactly 128 or 256 tokens. Intra-op threads are ONNX Runtime's default
// (one per physical core).
func BenchmarkScore(b *testing.B) {
	requireRuntime(b)
	dir := miniLMDir(b)
	tok, err := tokenizer.FromFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		b.Fatal(err)
	}
	for _, tokens := range []int{128, 256} {
		e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
		if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, MaxLength: tokens}); err != nil {
			b.Fatal(err)
		}
		for _, batch := range []int{1, 8, 32} {
			pairs := make([]sdk.Pair, batch)
			for i := range pairs {
				pairs[i] = sdk.Pair{Query: "what is the capital of france", Document: benchText[i*7:]}
				enc, err := tok.EncodePair(pairs[i].Query, pairs[i].Document, tokenizer.Options{MaxLength: tokens, Truncation: tokenizer.LongestFirst})
				if err != nil {
					b.Fatal(err)
				}
				if len(enc.IDs) != tokens {
					b.Fatalf("pair %d encodes to %d tokens, want %d", i, len(enc.IDs), tokens)
				}
			}
			b.Run(fmt.Sprintf("tokens=%d/batch=%d", tokens, batch), func(b *testing.B) {
				n := 0
				for b.Loop() {
					if _, err := e.Score(context.Background(), pairs); err != nil {
						b.Fatal(err)
					}
					n++
				}
				b.ReportMetric(float64(n*batch)/b.Elapsed().Seconds(), "pairs/s")
			})
		}
	}
}
