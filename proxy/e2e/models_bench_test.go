package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/proxy/internal/loadgen"
)

// BenchmarkReloadAfterUnload measures the first request after a model was
// unloaded for idleness (keep_alive): starting the plugin process, loading
// the MiniLM-L6-shaped model at the precision, building its pipeline, and
// answering 20 candidates of 128 tokens, through the whole server; and,
// untimed, the same request once more on the loaded model (loaded-answer-ms),
// the cost of the answer alone. Each iteration waits (untimed) until the
// plugin of the previous one is gone.
// It also reports the memory the unload gives back: the plugin's resident
// memory while loaded, and the resident memory of the server's process tree
// loaded and unloaded.
func BenchmarkReloadAfterUnload(b *testing.B) {
	requireRuntime(b)
	for _, precision := range []string{"fp32", "int8"} {
		b.Run("precision="+precision, func(b *testing.B) {
			// No score cache: every request is scored by the model.
			s := startServer(b, []string{"ENABLE_PREDICTION_CACHE=false"}, "--model", modelDir(b, "minilm"),
				"--precision", precision, "--max-length", fmt.Sprint(benchMaxLength), "--keep-alive", "1s", "--timeout", "600")
			s.waitHealth(b, "ok")
			body := rerankBody(b, map[string]any{"query": benchQuery, "candidates": benchDocs()})
			// The first load converts int8 once; later loads read the
			// converted graph from the cache dir, as a reload does.
			decodeRerank(b, s.post(b, body))
			var pluginRSS, loadedTree, unloadedTree int64
			var answer time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				waitUnloaded(b, s)
				unloadedTree += processTreeRSS(b, s.cmd.Process.Pid)
				b.StartTimer()
				decodeRerank(b, s.post(b, body))
				b.StopTimer()
				// The same request on the loaded model, for the ratio.
				start := time.Now()
				decodeRerank(b, s.post(b, body))
				answer += time.Since(start)
				pids := pluginPIDs(b, s.cmd.Process.Pid)
				if len(pids) == 1 {
					rss, _ := backend.ResidentBytes(pids[0])
					pluginRSS += rss
				}
				loadedTree += processTreeRSS(b, s.cmd.Process.Pid)
				b.StartTimer()
			}
			b.StopTimer()
			mib := func(v int64) float64 { return float64(v) / float64(b.N) / (1 << 20) }
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "reload+answer-ms")
			b.ReportMetric(float64(answer.Milliseconds())/float64(b.N), "loaded-answer-ms")
			b.ReportMetric(mib(pluginRSS), "plugin-MiB")
			b.ReportMetric(mib(loadedTree), "tree-loaded-MiB")
			b.ReportMetric(mib(unloadedTree), "tree-unloaded-MiB")
			b.ReportMetric(mib(loadedTree-unloadedTree), "returned-MiB")
		})
	}
}

// waitUnloaded waits until the server has no plugin process left; the
// limit only stops a broken build from hanging.
func waitUnloaded(b *testing.B, s *server) {
	b.Helper()
	for limit := time.Now().Add(time.Minute); len(pluginPIDs(b, s.cmd.Process.Pid)) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(limit) {
			b.Fatalf("the plugin was never unloaded")
		}
	}
}

// BenchmarkCachedRequestsModels is BenchmarkCachedRequests (score-cache
// hits of 20 candidates, 2 clients) against a server of one model and one of
// two (the MiniLM-shaped model and tiny-bert, both loaded), requests naming
// the MiniLM-shaped model: the registry's routing and a second resident
// model must cost nothing measurable. Run it with -count so that the two
// alternate.
func BenchmarkCachedRequestsModels(b *testing.B) {
	requireRuntime(b)
	args := []string{"--max-length", fmt.Sprint(benchMaxLength)}
	one := startServer(b, nil, append([]string{"--model", modelDir(b, "minilm"), "--model-name", "minilm"}, args...)...)
	file := fmt.Sprintf("models:\n  - {name: minilm, model: %s}\n  - {name: tiny, model: %s}\n", modelDir(b, "minilm"), modelDir(b, "tiny-bert"))
	path := b.TempDir() + "/models.yaml"
	if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
		b.Fatal(err)
	}
	two := startServer(b, nil, append([]string{"--models-file", path}, args...)...)
	for _, s := range []*server{one, two} {
		s.waitHealth(b, "ok")
	}
	lengths, err := loadgen.ParseLengths("fixed:60")
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		s    *server
	}{{"models=1", one}, {"models=2", two}} {
		cfg := loadgen.Config{
			URL: c.s.url + "/v1/rerank", Candidates: benchCandidates, Lengths: lengths, Pool: benchCandidates,
			Query: benchQuery, Seed: 1, ServerPID: c.s.cmd.Process.Pid, Model: "minilm",
		}
		warm := cfg
		warm.Concurrency, warm.Requests = 1, 50
		if _, err := loadgen.Run(context.Background(), warm); err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			run := cfg
			run.Concurrency, run.Requests = 2, max(b.N, 2)
			runLoad(b, run)
		})
	}
}
