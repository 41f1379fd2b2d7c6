package e2e

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/proxy/internal/loadgen"
)

// BenchmarkReloadAfterUnload measures the first request after a model was
// unloaded for idleness (keep_alive): starting the plugin process, loading
// the model at the precision, building its pipeline, and answering 20
// candidates of 128 tokens, through the whole server; and, untimed, the
// same request once more on the loaded model (loaded-answer-ms), the cost of
// the answer alone. Each iteration waits (untimed) until the plugin of the
// previous one is gone.
// It also reports the memory the unload gives back: the plugin's resident
// memory while loaded, and the resident memory of the server's process tree
// loaded and unloaded.
//
// model=minilm is the MiniLM-L6 shape; model=xlmr-large the XLM-R 24×1024
// shape (bge-reranker-v2-m3's encoder, 1.2 GB of fp32 weights), written
// once per run (minutes) unless RERANK_BENCH_XLMR_DIR names a model dir of
// that shape to serve instead (`rerank testmodel --arch xlm-roberta
// --layers 24 --hidden 1024 --heads 16 --intermediate 4096`; the commands
// are in docs/BENCHMARKS.md). Select one with -bench
// 'BenchmarkReloadAfterUnload/model=xlmr-large'.
func BenchmarkReloadAfterUnload(b *testing.B) {
	requireRuntime(b)
	for _, m := range []struct {
		name       string
		precisions []string
		dir        func(b *testing.B) string
	}{
		{"minilm", []string{"fp32", "int8"}, func(b *testing.B) string { return modelDir(b, "minilm") }},
		{"xlmr-large", []string{"fp32", "int8"}, xlmrLargeDir},
	} {
		b.Run("model="+m.name, func(b *testing.B) {
			dir := m.dir(b)
			for _, precision := range m.precisions {
				b.Run("precision="+precision, func(b *testing.B) { benchReload(b, dir, precision) })
			}
		})
	}
}

// xlmrLargeDir returns RERANK_BENCH_XLMR_DIR, or writes the XLM-R 24×1024
// test model once per test binary.
func xlmrLargeDir(b *testing.B) string {
	if d := os.Getenv("RERANK_BENCH_XLMR_DIR"); d != "" {
		return d
	}
	return modelDir(b, "xlmr-large")
}

// benchReload is BenchmarkReloadAfterUnload on one model dir and precision.
func benchReload(b *testing.B, dir, precision string) {
	// No score cache: every request is scored by the model.
	s := startServer(b, []string{"ENABLE_PREDICTION_CACHE=false"}, "--model", dir,
		"--precision", precision, "--max-length", fmt.Sprint(benchMaxLength), "--keep-alive", "1s", "--timeout", "900")
	// The XLM-R shape's first load (a conversion of 1.2 GB at int8) and
	// its answers take minutes on a loaded 2-core box: longer limits than
	// the tests' (waitHealth's 3 minutes, the client's 5), which only stop
	// a broken build from hanging.
	for limit := time.Now().Add(30 * time.Minute); ; time.Sleep(time.Second) {
		if _, h := s.health(b); h.Status == "ok" {
			break
		}
		if time.Now().After(limit) {
			b.Fatalf("the model never loaded")
		}
	}
	slow := &http.Client{Timeout: 30 * time.Minute}
	post := func(body string) reply {
		b.Helper()
		r, err := slow.Post(s.url+"/v1/rerank", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		defer r.Body.Close()
		out, err := io.ReadAll(r.Body)
		if err != nil {
			b.Fatal(err)
		}
		return reply{code: r.StatusCode, header: r.Header, body: out}
	}
	body := rerankBody(b, map[string]any{"query": benchQuery, "candidates": benchDocs()})
	// The first load converts int8 once; later loads read the
	// converted graph from the cache dir, as a reload does.
	decodeRerank(b, post(body))
	var pluginRSS, loadedTree, unloadedTree int64
	var answer time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		waitUnloaded(b, s)
		unloadedTree += processTreeRSS(b, s.cmd.Process.Pid)
		b.StartTimer()
		decodeRerank(b, post(body))
		b.StopTimer()
		// The same request on the loaded model, for the ratio.
		start := time.Now()
		decodeRerank(b, post(body))
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

// pairedWindow is the length of one measuring window of
// BenchmarkCachedRequestsModelsPaired: about 18,000 cached requests on a
// quiet 2-core box, so a window's own noise (connection set-up, a GC
// cycle) is small, and short enough that the machine's other load changes
// little between the two windows of a pair.
const pairedWindow = time.Second

// BenchmarkCachedRequestsModelsPaired resolves what
// BenchmarkCachedRequestsModels cannot on a shared machine: whether a
// server with two models loaded answers cached requests as fast as one with
// one. Both servers run at once, idle but for the window measuring them;
// each iteration is a pair of 1-second windows of the cached-request load
// (2 clients, 20 candidates, every pair an L1 hit, requests naming the
// model), one per server, in an order drawn for each pair (AB or BA, from
// a fixed seed) so that a drift in the machine's speed cancels. Slow spells hit both
// windows of a pair alike, so the ratio within each pair is far steadier
// than either rate; the benchmark reports the median of the per-pair
// ratios two ÷ one, of requests/s and of the server's CPU time per request,
// with the distribution-free 95% interval of each median (order statistics
// of the binomial), and logs every pair. Run with -benchtime Nx for N pairs
// (at least 10; 20 gives an interval from the 6th to the 15th ratio, 40
// from the 14th to the 27th).
func BenchmarkCachedRequestsModelsPaired(b *testing.B) {
	requireRuntime(b)
	args := []string{"--max-length", fmt.Sprint(benchMaxLength)}
	one := startServer(b, nil, append([]string{"--model", modelDir(b, "minilm"), "--model-name", "minilm"}, args...)...)
	// RERANK_BENCH_PAIRED_CONTROL=1 makes the second server another
	// one-model server (from a models file): an A/A run whose ratios show
	// the method's own bias and spread on the machine of the day.
	control := os.Getenv("RERANK_BENCH_PAIRED_CONTROL") == "1"
	file := fmt.Sprintf("models:\n  - {name: minilm, model: %s}\n", modelDir(b, "minilm"))
	if !control {
		file += fmt.Sprintf("  - {name: tiny, model: %s}\n", modelDir(b, "tiny-bert"))
	}
	path := b.TempDir() + "/models.yaml"
	if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
		b.Fatal(err)
	}
	two := startServer(b, nil, append([]string{"--models-file", path}, args...)...)
	lengths, err := loadgen.ParseLengths("fixed:60")
	if err != nil {
		b.Fatal(err)
	}
	cfgs := make([]loadgen.Config, 2)
	for i, s := range []*server{one, two} {
		s.waitHealth(b, "ok")
		cfgs[i] = loadgen.Config{
			URL: s.url + "/v1/rerank", Candidates: benchCandidates, Lengths: lengths, Pool: benchCandidates,
			Query: benchQuery, Seed: 1, ServerPID: s.cmd.Process.Pid, Model: "minilm", Concurrency: 2,
		}
		warm := cfgs[i]
		warm.Concurrency, warm.Requests = 1, 300
		if _, err := loadgen.Run(context.Background(), warm); err != nil {
			b.Fatal(err)
		}
		// The second model must be resident, not merely listed.
		if i == 1 && !control {
			decodeRerank(b, s.post(b, `{"model": "tiny", "query": "q", "candidates": ["a"]}`))
		}
	}
	b.Run("pairs", func(b *testing.B) {
		window := func(cfg loadgen.Config) loadgen.Report {
			cfg.Duration = pairedWindow
			rep, err := loadgen.Run(context.Background(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			if rep.Outcomes["200"] != rep.Requests || rep.BadResponses != 0 {
				b.Fatalf("answers %v, %d bad (first error %q)", rep.Outcomes, rep.BadResponses, rep.FirstError)
			}
			return rep
		}
		var rate, cpu []float64
		var steal float64
		// The order within a pair is drawn, not alternated: a strict
		// ABBA… pattern aliases with any periodic load of the machine.
		coin := rand.New(rand.NewPCG(1, 2))
		for i := range b.N {
			var reps [2]loadgen.Report
			for _, k := range [][2]int{{0, 1}, {1, 0}}[coin.IntN(2)] {
				reps[k] = window(cfgs[k])
			}
			us := func(r loadgen.Report) float64 { return float64(r.ServerCPUPerRequest) / float64(time.Microsecond) }
			rate = append(rate, reps[1].RequestsPerSec/reps[0].RequestsPerSec)
			cpu = append(cpu, us(reps[1])/us(reps[0]))
			steal = max(steal, reps[0].MachineSteal, reps[1].MachineSteal)
			b.Logf("pair %2d: one %6.0f req/s %5.1f µs/req, two %6.0f req/s %5.1f µs/req: req/s ×%.3f, CPU ×%.3f",
				i+1, reps[0].RequestsPerSec, us(reps[0]), reps[1].RequestsPerSec, us(reps[1]), rate[i], cpu[i])
		}
		for _, m := range []struct {
			name string
			x    []float64
		}{{"req/s", rate}, {"cpu", cpu}} {
			med, lo, hi := medianInterval(m.x)
			b.ReportMetric(med, m.name+"-ratio")
			b.ReportMetric(lo, m.name+"-ratio-lo95")
			b.ReportMetric(hi, m.name+"-ratio-hi95")
		}
		b.ReportMetric(100*steal, "max-steal-%")
	})
}

// medianInterval returns the median of x and a distribution-free interval
// holding the population's median with at least 95% confidence: the k-th
// smallest and k-th largest values, k the largest with P(Binomial(n, ½) <
// k) ≤ 2.5%. With fewer than six values no such k exists and the interval
// is the whole range.
func medianInterval(x []float64) (median, lo, hi float64) {
	s := slices.Clone(x)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0, 0, 0
	}
	median = s[n/2]
	if n%2 == 0 {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	// cdf is P(Binomial(n, ½) ≤ j), built up term by term.
	k, term, cdf := 0, math.Pow(0.5, float64(n)), 0.0
	for j := 0; j < n; j++ {
		cdf += term
		if cdf > 0.025 {
			break
		}
		k = j + 1
		term *= float64(n-j) / float64(j+1)
	}
	if k == 0 {
		return median, s[0], s[n-1]
	}
	return median, s[k-1], s[n-k]
}
