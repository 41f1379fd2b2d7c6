package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// A long query with many candidates is answered, its pairs sent to the
// plugin in messages under the gRPC limit; one over --max-query-chars gets a
// 422 naming the limit (issue 13, failure 1: a 300 KB query with 20
// candidates made a 6 MB plugin message, whose refusal was answered 429 with
// Retry-After for ever).
func TestLongQuery(t *testing.T) {
	requireRuntime(t)
	s := startServer(t, []string{"ENABLE_PREDICTION_CACHE=false"},
		"--model", modelDir(t, "tiny-bert"), "--max-body-bytes", "8388608", "--max-query-chars", "400000", "--timeout", "120")
	s.waitHealth(t, "ok")
	candidates := make([]string, 20)
	for i := range candidates {
		candidates[i] = fmt.Sprintf("candidate number %d", i)
	}
	r := s.post(t, rerankBody(t, map[string]any{"query": strings.Repeat("long query ", 300<<10/11), "candidates": candidates}))
	if r.code != http.StatusOK {
		t.Fatalf("300 KB query, 20 candidates: %d %s", r.code, r.body)
	}
	if got := decodeRerank(t, r); len(got.Results) != 20 {
		t.Fatalf("%d results, want 20", len(got.Results))
	}
	r = s.post(t, rerankBody(t, map[string]any{"query": strings.Repeat("q", 400001), "candidates": []string{"a"}}))
	var detail struct {
		Detail []struct {
			Loc []any  `json:"loc"`
			Msg string `json:"msg"`
		} `json:"detail"`
	}
	if r.code != http.StatusUnprocessableEntity || json.Unmarshal(r.body, &detail) != nil || len(detail.Detail) != 1 ||
		!strings.Contains(detail.Detail[0].Msg, "max_query_chars=400000") || fmt.Sprint(detail.Detail[0].Loc) != "[body query]" {
		t.Fatalf("query over the limit: %d %.300s", r.code, r.body)
	}
}
