package ort

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// mixedPairs returns n pairs of one query and documents of 20–60 words,
// the RAG workload, deterministically.
func mixedPairs(n int) []sdk.Pair {
	words := strings.Fields(`the a of and to in is was for on that with as by at from his her their it this which
		city river music history science energy market health water school game law film war space food art house
		capital population language system computer network model data engine protein cell climate ocean`)
	r := rand.New(rand.NewPCG(14, 14))
	pairs := make([]sdk.Pair, n)
	for i := range pairs {
		doc := make([]string, 20+r.IntN(41))
		for j := range doc {
			doc[j] = words[r.IntN(len(words))]
		}
		pairs[i] = sdk.Pair{Query: "how do rerankers order search results", Document: strings.Join(doc, " ")}
	}
	return pairs
}

// BenchmarkPaddingFree scores batches of 32 mixed-length pairs on the
// MiniLM shape with length-matched runs ("split") and with one run padded
// to the longest pair ("longest"), alternating the two in every round so
// that both see the same load; ONNX Runtime's default threads, as served.
// It reports pairs/s and the padded share of the tokens computed.
func BenchmarkPaddingFree(b *testing.B) {
	requireRuntime(b)
	m := benchModels[0]
	dir := writeONNXDir(b, m.cfg, crossencoder.RandomWeights(m.cfg, benchSeed), m.tok)
	pairs := mixedPairs(32)
	for _, p := range []sdk.Precision{sdk.FP32, sdk.INT8} {
		engines := map[string]*Engine{}
		for _, mode := range []string{"longest", "split"} {
			e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
			if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, Precision: p, MaxLength: 512,
				CacheDir: b.TempDir(), Options: map[string]string{PaddingOption: mode}}); err != nil {
				b.Fatal(err)
			}
			if _, err := e.Score(context.Background(), pairs); err != nil { // warm up
				b.Fatal(err)
			}
			engines[mode] = e
		}
		for round := 0; round < 3; round++ {
			for _, mode := range []string{"longest", "split"} {
				b.Run(fmt.Sprintf("%s/%s/round=%d", p, mode, round), func(b *testing.B) {
					var u sdk.Usage
					start := time.Now()
					for i := 0; i < b.N; i++ {
						u = sdk.Usage{}
						if _, err := engines[mode].Score(sdk.WithUsage(context.Background(), &u), pairs); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(len(pairs)*b.N)/time.Since(start).Seconds(), "pairs/s")
					b.ReportMetric(100*float64(u.PaddedTokens-u.Tokens)/float64(u.PaddedTokens), "padded_%")
				})
			}
		}
	}
}

// BenchmarkXLMRLargeCPU measures the bge-reranker-v2-m3 shape (bgeM3Shape:
// XLM-R 24 × 1024, vocabulary 250,002, generated weights) on the CPU at
// fp32 and int8, 128 and 512 tokens per pair (every pair truncated to
// exactly that), ONNX Runtime's default threads. The two precisions
// alternate in each of two rounds, one warm-up call and one timed call of
// a few pairs per cell: the model costs seconds per pair here.
func BenchmarkXLMRLargeCPU(b *testing.B) {
	requireRuntime(b)
	dir := b.TempDir()
	if err := crossencoder.WriteModelDir(dir, bgeM3Shape, crossencoder.RandomWeights(bgeM3Shape, benchSeed), tokXLMR, crossencoder.DirOptions{}); err != nil {
		b.Fatal(err)
	}
	cache := b.TempDir()
	doc := strings.Repeat("the river bank near the old city holds music history and science ", 120)
	for _, seq := range []int{128, 512} {
		n := 4
		if seq == 512 {
			n = 2
		}
		pairs := make([]sdk.Pair, n)
		for i := range pairs {
			pairs[i] = sdk.Pair{Query: fmt.Sprintf("what does the river bank hold %d", i), Document: doc}
		}
		engines := map[sdk.Precision]*Engine{}
		for _, p := range []sdk.Precision{sdk.FP32, sdk.INT8} {
			e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
			if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, Precision: p, MaxLength: seq, CacheDir: cache}); err != nil {
				b.Fatal(err)
			}
			var u sdk.Usage
			if _, err := e.Score(sdk.WithUsage(context.Background(), &u), pairs); err != nil { // warm up
				b.Fatal(err)
			}
			if u.Tokens != int64(n*seq) {
				b.Fatalf("%d pairs encode to %d tokens, want %d each", n, u.Tokens, seq)
			}
			engines[p] = e
		}
		for round := 0; round < 2; round++ {
			for _, p := range []sdk.Precision{sdk.FP32, sdk.INT8} {
				b.Run(fmt.Sprintf("%s/seq=%d/round=%d", p, seq, round), func(b *testing.B) {
					start := time.Now()
					for i := 0; i < b.N; i++ {
						if _, err := engines[p].Score(context.Background(), pairs); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "pairs/s")
				})
			}
		}
		for _, e := range engines {
			e.model.session.Destroy()
		}
	}
}
