package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
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

// QUANTIZATION=bf16, the replaced server's setting, on the default CPU
// backend runs the precision the backend has (fp32) and says so in /health
// and the log, instead of listening with a permanent 503 (issue 13, failure
// 3: bf16 has no CPU kernels and a failed load was final).
func TestQuantizationBF16OnCPU(t *testing.T) {
	requireRuntime(t)
	s := startServer(t, []string{"QUANTIZATION=bf16", "RERANK_PRECISION="}, "--model", modelDir(t, "tiny-bert"))
	limit := time.Now().Add(3 * time.Minute)
	var h health
	for {
		_, h = s.health(t)
		if h.Status == "ok" {
			break
		}
		if h.Status == "failed" || time.Now().After(limit) {
			t.Fatalf("/health %+v, want ok", h)
		}
		time.Sleep(50 * time.Millisecond)
	}
	note, _ := h.ModelInfo["precision_alias"].(string)
	if h.ModelInfo["precision"] != "fp32" || !strings.Contains(note, "QUANTIZATION=bf16 runs as fp32") {
		t.Fatalf("model_info %v: want fp32 and a precision_alias saying QUANTIZATION=bf16 runs as fp32", h.ModelInfo)
	}
	if !strings.Contains(s.logs.String(), "QUANTIZATION=bf16: the cpu backend has no bf16 kernels") {
		t.Fatalf("the log does not say what QUANTIZATION=bf16 became:\n%s", s.logs.String())
	}
	if r := s.post(t, `{"query":"q","candidates":["a","b"]}`); r.code != http.StatusOK {
		t.Fatalf("rerank: %d %s", r.code, r.body)
	}
}
