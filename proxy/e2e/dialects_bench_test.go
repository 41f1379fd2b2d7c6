package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/rerank-sidecar/rerank/proxy/internal/loadgen"
)

// BenchmarkCachedDialects measures the Cohere v2 route's cached-request
// throughput side by side with the seed route's: one server (the L1 cache
// warm for both, as the routes share it), the same 20 documents of 60 words
// from a pool of 20, 2 clients, the two routes alternated in rounds so that
// the machine's other load falls on both alike. It reports each route's
// req/s and the ratio v2/seed over all rounds.
func BenchmarkCachedDialects(b *testing.B) {
	requireRuntime(b)
	s := startServer(b, nil, "--model", modelDir(b, "minilm"), "--max-length", fmt.Sprint(benchMaxLength))
	s.waitHealth(b, "ok")
	lengths, err := loadgen.ParseLengths("fixed:60")
	if err != nil {
		b.Fatal(err)
	}
	base := loadgen.Config{
		Candidates: benchCandidates, Lengths: lengths, Pool: benchCandidates,
		Query: benchQuery, Seed: 1, ServerPID: s.cmd.Process.Pid, Concurrency: 2,
	}
	routes := []struct {
		name, path, field string
	}{
		{"seed", "/v1/rerank", "candidates"},
		{"cohere-v2", "/v2/rerank", "documents"},
	}
	for _, r := range routes {
		warm := base
		warm.URL, warm.ListField, warm.Concurrency, warm.Requests = s.url+r.path, r.field, 1, 50
		if _, err := loadgen.Run(context.Background(), warm); err != nil {
			b.Fatal(err)
		}
	}
	// rounds alternate the routes; each round sends b.N requests per route.
	const rounds = 5
	var reqs, secs [2]float64
	var steal float64
	b.ResetTimer()
	for range rounds {
		for i, r := range routes {
			run := base
			run.URL, run.ListField, run.Requests = s.url+r.path, r.field, max(b.N, 2)
			rep, err := loadgen.Run(context.Background(), run)
			if err != nil {
				b.Fatal(err)
			}
			if rep.Outcomes["200"] != rep.Requests || rep.BadResponses != 0 {
				b.Fatalf("%s: answers %v, %d bad (first error %q)", r.name, rep.Outcomes, rep.BadResponses, rep.FirstError)
			}
			reqs[i] += float64(rep.Requests)
			secs[i] += float64(rep.Requests) / rep.RequestsPerSec
			steal = max(steal, rep.MachineSteal)
		}
	}
	b.StopTimer()
	seed, v2 := reqs[0]/secs[0], reqs[1]/secs[1]
	b.ReportMetric(seed, "seed-req/s")
	b.ReportMetric(v2, "v2-req/s")
	b.ReportMetric(v2/seed, "v2/seed")
	b.ReportMetric(100*steal, "max-steal-%")
}
