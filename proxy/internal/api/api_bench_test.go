package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
)

// BenchmarkRerankHandler measures the API's own cost per request of 20
// candidates of 1,000 characters (decode, validate, fan out, sort, encode)
// over a scorer that costs nothing, calling the handler directly.
func BenchmarkRerankHandler(b *testing.B) {
	cands := make([]string, 20)
	for i := range cands {
		cands[i] = fmt.Sprintf("%d %s", i, strings.Repeat("Paris is the capital of France. ", 31))
	}
	body, err := json.Marshal(map[string]any{"query": "what is the capital of france", "candidates": cands, "top_k": 10})
	if err != nil {
		b.Fatal(err)
	}
	svc := rerank.New(rerank.Single("m", &fakeScorer{scores: map[string]float32{}}), rerank.Limits{MaxCandidates: 200, MaxCandidateChars: 4000}, "m")
	// metrics=off is the handler without a registry; metrics=on counts
	// every request as the server does by default (issue 11's cost).
	for _, on := range []bool{false, true} {
		name, cfg := "metrics=off", Config{Service: svc}
		if on {
			name, cfg.Metrics = "metrics=on", metrics.New("bench")
		}
		b.Run(name, func(b *testing.B) {
			s := New(cfg)
			var ctx fasthttp.RequestCtx
			ctx.Request.Header.SetMethod("POST")
			ctx.Request.SetRequestURI("/v1/rerank")
			ctx.Request.SetBody(body)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				ctx.Response.Reset()
				s.Handle(&ctx)
				if ctx.Response.StatusCode() != 200 {
					b.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
		})
	}
}
