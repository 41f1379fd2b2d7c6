package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// windowsDoc is a long document whose last sentence is the query's answer:
// filler far beyond a 32-token max length, then the planted passage.
func windowsDoc(query string) string {
	return strings.Repeat("the weather report for the coastal region stays mild and dry this week ", 12) + query + " they eat bamboo"
}

// TestLongDocumentWindows checks long-document windows end to end: off by
// default, a long document scores as its truncated beginning; asked for
// ("windows": true) it is scored as several pairs and gets another score,
// the same every time; a short document scores the same either way; and a
// server started with --long-document-windows applies them to the seed
// route too, unless a request says "windows": false.
func TestLongDocumentWindows(t *testing.T) {
	dir := modelDir(t, "tiny-bert")
	query := "what do pandas eat"
	long := windowsDoc(query)
	short := "pandas eat bamboo"
	v2 := func(s *server, windows any) []float64 {
		t.Helper()
		req := map[string]any{"query": query, "documents": []string{long, short}}
		if windows != nil {
			req["windows"] = windows
		}
		b, _ := json.Marshal(req)
		return scoresByIndex(t, s.do(t, "POST", "/v2/rerank", b), "relevance_score", 2)
	}
	seed := func(s *server) []float64 {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"query": query, "candidates": []string{long, short}})
		return scoresByIndex(t, s.do(t, "POST", "/v1/rerank", b), "score", 2)
	}

	off := startServer(t, []string{"ENABLE_PREDICTION_CACHE=false"}, "--model", dir, "--max-length", "32")
	off.waitHealth(t, "ok")
	truncated := seed(off)
	if got := v2(off, nil); got[0] != truncated[0] {
		t.Errorf("windows are on by default: %v, seed %v", got, truncated)
	}
	before := backendPairs(t, off)
	on := v2(off, true)
	if n := backendPairs(t, off) - before; n < 4 {
		t.Errorf("windows: true scored %d pairs for a document of about 170 tokens at max length 32 and a short one", n)
	}
	if on[0] == truncated[0] {
		t.Errorf("windows: true gave the truncated score %v", on[0])
	}
	if on[1] != truncated[1] {
		t.Errorf("a short document scored %v with windows, %v without", on[1], truncated[1])
	}
	if again := v2(off, "true"); again[0] != on[0] {
		t.Errorf("windows: the same document scored %v, then %v", on[0], again[0])
	}

	def := startServer(t, nil, "--model", dir, "--max-length", "32", "--long-document-windows")
	def.waitHealth(t, "ok")
	if got := seed(def); got[0] != on[0] || got[1] != on[1] {
		t.Errorf("--long-document-windows: the seed route scores %v, windows %v", got, on)
	}
	if got := v2(def, false); got[0] != truncated[0] {
		t.Errorf("windows: false on a server with windows on: %v, want the truncated %v", got[0], truncated[0])
	}
}
