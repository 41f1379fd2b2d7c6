package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/loadgen"
)

// BenchmarkCachedDialects measures the Cohere v2 route's cached-request
// throughput side by side with the seed route's: one server (the L1 cache
// warm for both, as the routes share it), the same 20 documents of 60 words
// from a pool of 20, 2 clients, the two routes alternated in rounds (each
// going first in every other round) so that the machine's other load falls
// on both alike. It reports each route's
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
	const rounds = 6
	var reqs, secs [2]float64
	var steal float64
	b.ResetTimer()
	for round := range rounds {
		for k := range routes {
			// Odd rounds go v2 first, so neither route always runs on
			// the heels of the other.
			i := (k + round) % len(routes)
			r := routes[i]
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

// BenchmarkLongDocumentWindows measures long-document windows on the
// MiniLM-shaped model at --max-length 128 with the score cache off: 8
// documents of about 300 words per request, each ending in a planted
// passage that repeats the query, scored with "windows": false (truncated
// to their first 128 tokens) and true (overlapping windows), alternated in
// rounds on one server. It reports each mode's documents/s and the pairs/s
// the plugin computed, and the planted document's score both ways (the
// test model's weights are random: the scores show what each mode reads,
// not relevance).
func BenchmarkLongDocumentWindows(b *testing.B) {
	requireRuntime(b)
	const maxLength, docsPerRequest = 128, 8
	// A generous --timeout: the batcher's deadline-aware admission would
	// otherwise refuse (429) a request of 40 window pairs on a loaded
	// machine, and the benchmark measures scoring, not admission.
	s := startServer(b, []string{"ENABLE_PREDICTION_CACHE=false"}, "--model", modelDir(b, "minilm"), "--max-length", fmt.Sprint(maxLength), "--timeout", "300")
	s.waitHealth(b, "ok")
	query := "which animal eats bamboo in the mountains of sichuan"
	// Every sentence names its document, so that no two documents share
	// a window (identical pairs would be scored once).
	docs := make([]string, docsPerRequest)
	for i := range docs {
		sentence := fmt.Sprintf("the quarterly report %d lists revenue costs and the outlook for the coming year in some detail ", i)
		docs[i] = strings.Repeat(sentence, 17) + "the giant panda eats bamboo in the mountains of sichuan"
	}
	body := func(windows bool) []byte {
		out, _ := json.Marshal(map[string]any{"query": query, "documents": docs, "windows": windows})
		return out
	}
	pairsNow := func() uint64 {
		r := s.do(b, "GET", "/health", nil)
		var h struct {
			Backend struct {
				PairsScored uint64 `json:"pairs_scored"`
			} `json:"backend"`
		}
		if err := json.Unmarshal(r.body, &h); err != nil {
			b.Fatal(err)
		}
		return h.Backend.PairsScored
	}
	var planted [2]float64
	var docsDone, pairs [2]uint64
	var secs [2]float64
	const rounds = 3
	b.ResetTimer()
	for range rounds {
		for mode, windows := range []bool{false, true} {
			p0, t0 := pairsNow(), time.Now()
			for range max(b.N, 1) {
				r := s.do(b, "POST", "/v2/rerank", body(windows))
				if r.code != 200 {
					b.Fatalf("windows %v: %d %s", windows, r.code, r.body)
				}
				var v struct {
					Results []struct {
						Index int     `json:"index"`
						Score float64 `json:"relevance_score"`
					} `json:"results"`
				}
				if err := json.Unmarshal(r.body, &v); err != nil {
					b.Fatal(err)
				}
				for _, res := range v.Results {
					if res.Index == 0 {
						planted[mode] = res.Score
					}
				}
			}
			secs[mode] += time.Since(t0).Seconds()
			pairs[mode] += pairsNow() - p0
			docsDone[mode] += uint64(max(b.N, 1) * docsPerRequest)
		}
	}
	b.StopTimer()
	for mode, name := range []string{"off", "on"} {
		b.ReportMetric(float64(docsDone[mode])/secs[mode], "docs/s-windows-"+name)
		b.ReportMetric(float64(pairs[mode])/secs[mode], "pairs/s-windows-"+name)
		b.ReportMetric(float64(pairs[mode])/float64(docsDone[mode]), "pairs/doc-windows-"+name)
		b.ReportMetric(planted[mode], "planted-score-windows-"+name)
	}
}
