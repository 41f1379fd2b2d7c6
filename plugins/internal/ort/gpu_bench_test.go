package ort

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// gpuOutEnv names the file BenchmarkGPU appends its figures to, one JSON
// object per line (make gpu-check sets it under $OUT).
const gpuOutEnv = "RERANK_GPU_OUT"

// bgeM3Shape is BAAI/bge-reranker-v2-m3's architecture (XLM-RoBERTa large:
// 24 layers × 1024, 16 heads, 4096, vocabulary 250,002, 514 positions)
// with generated weights, over the synthetic Unigram tokenizer.
var bgeM3Shape = crossencoder.Config{Arch: crossencoder.ArchXLMRoberta, VocabSize: 250002, Hidden: 1024, Layers: 24, Heads: 16,
	Intermediate: 4096, MaxPositions: 514, TypeVocabSize: 1, PadTokenID: 1, NumLabels: 1, LayerNormEps: 1e-5}

// gpuMemoryMiB reads the memory in use on GPU 0 from nvidia-smi; -1 when
// it cannot.
func gpuMemoryMiB() float64 {
	out, err := exec.Command("nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0").Output()
	if err != nil {
		return -1
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil {
		return -1
	}
	return v
}

// BenchmarkGPU measures the bge-reranker-v2-m3 shape on the CUDA provider
// at fp32, fp16 and bf16 and 128, 256 and 512 tokens per pair: pairs/s with
// two Score calls in flight (as the proxy's batcher runs CUDA), the GPU
// memory in use after the runs, and each precision's deviation from fp32
// (mean and max |Δ| of the scores, top-5 agreement over 64 sets of 8). It
// skips where the CUDA provider cannot load. Each row is also appended as
// JSON to $RERANK_GPU_OUT when set.
func BenchmarkGPU(b *testing.B) {
	requireRuntime(b)
	probe := New(CUDA, "onnx-cuda", WithLogger(hclog.NewNullLogger()))
	if err := probe.probeProvider(nil); err != nil {
		b.Skipf("no CUDA provider: %v", err)
	}
	dir := b.TempDir()
	if err := crossencoder.WriteModelDir(dir, bgeM3Shape, crossencoder.RandomWeights(bgeM3Shape, benchSeed), tokXLMR, crossencoder.DirOptions{}); err != nil {
		b.Fatal(err)
	}
	cache := b.TempDir()
	var outFile *os.File
	if path := os.Getenv(gpuOutEnv); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		outFile = f
	}
	emit := func(row map[string]any) {
		if outFile != nil {
			line, _ := json.Marshal(row)
			fmt.Fprintln(outFile, string(line))
		}
	}
	doc := strings.Repeat("the river bank near the old city holds music history and science ", 120)
	sets := deviationSets(64, 8)
	var flat []sdk.Pair
	for _, s := range sets {
		flat = append(flat, s...)
	}
	var ref []float32
	for _, p := range []sdk.Precision{sdk.FP32, sdk.FP16, sdk.BF16} {
		for _, seq := range []int{128, 256, 512} {
			e := New(CUDA, "onnx-cuda", WithLogger(hclog.NewNullLogger()))
			start := time.Now()
			info, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, Precision: p, MaxLength: seq, CacheDir: cache})
			if err != nil {
				if errors.Is(err, sdk.ErrUnavailable) {
					b.Skipf("CUDA provider unavailable: %v", err)
				}
				b.Fatalf("load %s: %v", p, err)
			}
			loadTime := time.Since(start)
			batch := info.MaxBatchSize
			pairs := make([]sdk.Pair, batch)
			for i := range pairs {
				pairs[i] = sdk.Pair{Query: fmt.Sprintf("what does the river bank hold %d", i), Document: doc}
			}
			b.Run(fmt.Sprintf("%s/seq=%d/batch=%d", p, seq, batch), func(b *testing.B) {
				if _, err := e.Score(context.Background(), pairs); err != nil { // warm up
					b.Fatal(err)
				}
				// Two calls in flight, for about 5 s (at least 4 calls each).
				const inFlight = 2
				var mu sync.Mutex
				done := 0
				var firstErr error
				t0 := time.Now()
				var wg sync.WaitGroup
				for w := 0; w < inFlight; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for n := 0; n < 4 || time.Since(t0) < 5*time.Second; n++ {
							if _, err := e.Score(context.Background(), pairs); err != nil {
								mu.Lock()
								firstErr = err
								mu.Unlock()
								return
							}
							mu.Lock()
							done += len(pairs)
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				if firstErr != nil {
					b.Fatal(firstErr)
				}
				rate := float64(done) / time.Since(t0).Seconds()
				mem := gpuMemoryMiB()
				row := map[string]any{"precision": string(p), "tokens": seq, "batch": batch, "pairs_per_s": rate,
					"gpu_memory_mib": mem, "load_s": loadTime.Seconds(), "in_flight": inFlight}
				if seq == 512 {
					got := make([]float32, 0, len(flat))
					for i := 0; i < len(flat); i += batch {
						s, err := e.Score(context.Background(), flat[i:min(i+batch, len(flat))])
						if err != nil {
							b.Fatal(err)
						}
						got = append(got, s...)
					}
					if p == sdk.FP32 {
						ref = got
					} else if ref != nil {
						maxAbs, mean := deviation(got, ref)
						agreeMin := 5
						for s := range sets {
							tg, tr := topK(got[s*8:(s+1)*8], 5), topK(ref[s*8:(s+1)*8], 5)
							agree := 0
							for i := range tg {
								if tr[i] {
									agree++
								}
							}
							agreeMin = min(agreeMin, agree)
						}
						row["max_abs_dev"], row["mean_abs_dev"], row["top5_min"] = maxAbs, mean, agreeMin
						b.ReportMetric(mean, "mean|Δ|")
						b.ReportMetric(float64(agreeMin), "top5_min")
					}
				}
				b.ReportMetric(rate, "pairs/s")
				b.ReportMetric(mem, "gpu_MiB")
				emit(row)
			})
			e.model.session.Destroy()
		}
	}
}
