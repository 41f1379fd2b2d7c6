package tokenizer

import (
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var benchPairsDir = flag.String("write-bench-pairs", "", "Write the benchmark pairs as bench_128.jsonl and bench_512.jsonl into this directory (for testdata/tokref_bench.js) and exit the test.")

// benchSentences are passage-like sentences, mostly English as in MS MARCO,
// with some other scripts, from which benchmark documents are drawn.
var benchSentences = []string{
	"The Eiffel Tower was completed in 1889 and is 330 metres tall, about the same height as an 81-storey building.",
	"Photosynthesis converts light energy into chemical energy that can later be released to fuel the organism's activities.",
	"In computing, a cache is a hardware or software component that stores data so that future requests can be served faster.",
	"The mitochondrion is a double-membrane-bound organelle found in most eukaryotic organisms.",
	"Symptoms of influenza include fever, cough, sore throat, muscle pain, headache and fatigue; they begin about two days after exposure.",
	"Interest rates on 30-year fixed mortgages averaged 6.8% last week, according to the lender's weekly survey.",
	"To reset your password, open Settings, choose Security, then select \"Forgot password\" and follow the e-mail link.",
	"The Amazon River in South America is the largest river by discharge volume of water in the world.",
	"A cross-encoder reads the query and the passage together and outputs a single relevance score.",
	"Shakespeare's plays include Hamlet, Othello, King Lear and Macbeth, considered among the finest works in English.",
	"Preheat the oven to 200°C (390°F), season the chicken, and roast for 45 minutes until the juices run clear.",
	"The Treaty of Versailles, signed on 28 June 1919, ended the state of war between Germany and the Allied Powers.",
	"Berlin ist die Hauptstadt Deutschlands und mit rund 3,7 Millionen Einwohnern die bevölkerungsreichste Stadt.",
	"La ville de Paris compte environ 2,1 millions d'habitants et reste la capitale économique de la France.",
	"東京都は日本の首都であり、約1400万人が暮らしている。",
	"Москва является крупнейшим городом России и одним из крупнейших городов Европы.",
	"Visit https://example.org/docs/getting-started or write to help@example.org for installation instructions.",
	"GDP grew by 2.4 percent in the third quarter, beating analysts' expectations of 1.9 percent growth.",
}

var benchQueries = []string{
	"how tall is the eiffel tower",
	"what is photosynthesis",
	"define cache in computing",
	"symptoms of the flu",
	"current mortgage interest rates",
	"how to reset my password",
	"largest river in the world",
	"what does a cross encoder do",
}

// benchPairs makes n (query, document) pairs whose documents have about
// docTokens tokens with the uncased BERT tokenizer (a seeded draw, so every
// run and the tokref script see the same pairs).
func benchPairs(tb testing.TB, n, docTokens int) [][2]string {
	tb.Helper()
	bert := loadTok(tb, "minilm")
	rng := rand.New(rand.NewPCG(1, uint64(docTokens))) // fixed seed: the same pairs every run
	pairs := make([][2]string, n)
	for i := range pairs {
		var doc strings.Builder
		for {
			e, _ := bert.Encode(doc.String(), Options{})
			if len(e.IDs)-2 >= docTokens {
				break
			}
			if doc.Len() > 0 {
				doc.WriteByte(' ')
			}
			doc.WriteString(benchSentences[rng.IntN(len(benchSentences))])
		}
		pairs[i] = [2]string{benchQueries[rng.IntN(len(benchQueries))], doc.String()}
	}
	return pairs
}

// TestWriteBenchPairs writes the benchmark pairs for the reference timing
// script when -write-bench-pairs is given.
func TestWriteBenchPairs(t *testing.T) {
	if *benchPairsDir == "" {
		t.Skip("only with -write-bench-pairs DIR")
	}
	for _, n := range []int{128, 512} {
		var b strings.Builder
		for _, p := range benchPairs(t, 1000, n) {
			line, _ := json.Marshal(map[string]string{"query": p[0], "document": p[1]})
			b.Write(line)
			b.WriteByte('\n')
		}
		path := filepath.Join(*benchPairsDir, "bench_"+map[int]string{128: "128", 512: "512"}[n]+".jsonl")
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkEncodePair encodes the same 1,000 pairs the reference script
// times, with max_length 512 (longest_first), one pair per iteration;
// pairs/s and tokens/s are reported besides ns/op and allocs/op (per pair).
func BenchmarkEncodePair(b *testing.B) {
	for _, docTokens := range []int{128, 512} {
		pairs := benchPairs(b, 1000, docTokens)
		for _, name := range goldenTok {
			tok := loadTok(b, name)
			b.Run(name+"/doc"+map[int]string{128: "128", 512: "512"}[docTokens], func(b *testing.B) {
				opt := Options{MaxLength: 512, Truncation: LongestFirst}
				tokens := 0
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					p := pairs[i%len(pairs)]
					e, err := tok.EncodePair(p[0], p[1], opt)
					if err != nil {
						b.Fatal(err)
					}
					tokens += len(e.IDs)
				}
				sec := b.Elapsed().Seconds()
				b.ReportMetric(float64(b.N)/sec, "pairs/s")
				b.ReportMetric(float64(tokens)/sec, "tokens/s")
			})
		}
	}
}
