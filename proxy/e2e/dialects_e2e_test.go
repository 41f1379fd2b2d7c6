package e2e

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// dialectDocs are the documents of the dialect tests: two short ones and
// one far longer than the tests' max length of 32 tokens.
var dialectDocs = []string{
	"The giant panda is a bear species endemic to China.",
	"Paris is the capital of France.",
	strings.Repeat("bamboo forests cover the mountains of sichuan ", 30),
}

// scoresByIndex decodes a rerank answer's results (under "results", or a
// bare array) into the score of each document index.
func scoresByIndex(t *testing.T, r reply, field string, n int) []float64 {
	t.Helper()
	if r.code != 200 {
		t.Fatalf("answered %d %s", r.code, r.body)
	}
	var items []map[string]any
	if len(r.body) > 0 && r.body[0] == '[' {
		if err := json.Unmarshal(r.body, &items); err != nil {
			t.Fatalf("%s: %v", r.body, err)
		}
	} else {
		var v struct {
			Results []map[string]any `json:"results"`
		}
		if err := json.Unmarshal(r.body, &v); err != nil {
			t.Fatalf("%s: %v", r.body, err)
		}
		items = v.Results
	}
	out := make([]float64, n)
	seen := 0
	for _, it := range items {
		i, ok1 := it["index"].(float64)
		s, ok2 := it[field].(float64)
		if !ok1 || !ok2 || int(i) < 0 || int(i) >= n {
			t.Fatalf("bad result %v in %s", it, r.body)
		}
		out[int(i)] = s
		seen++
	}
	if seen != n {
		t.Fatalf("%d results for %d documents: %s", seen, n, r.body)
	}
	return out
}

// TestDialectsScoreAsSeed serves a real model and checks that every
// dialect's route gives the seed route's score for the same pair, that raw
// scores are the logits under the model's activation, that the options are
// cached apart, that max_tokens_per_doc cuts the document, that TEI's
// truncate: false answers 413 for a pair over the max length, and /info.
func TestDialectsScoreAsSeed(t *testing.T) {
	s := startServer(t, nil, "--model", modelDir(t, "tiny-bert"), "--model-name", "org/tiny-bert", "--max-length", "32")
	h, _ := s.waitHealth(t, "ok")
	if act := h.ModelInfo["activation"]; act != "sigmoid" {
		t.Fatalf("the test model's activation is %v; the raw-score check assumes sigmoid", act)
	}
	query := "what do pandas eat?"
	n := len(dialectDocs)
	body := func(v map[string]any) []byte {
		v["query"] = query
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	seed := scoresByIndex(t, s.do(t, "POST", "/v1/rerank", body(map[string]any{"candidates": dialectDocs})), "score", n)

	routes := []struct {
		path, field string
		req         map[string]any
	}{
		{"/v1/rerank", "relevance_score", map[string]any{"documents": dialectDocs, "model": "org/tiny-bert"}},
		{"/v1/rerank", "relevance_score", map[string]any{"documents": []map[string]any{{"text": dialectDocs[0]}, {"text": dialectDocs[1]}, {"text": dialectDocs[2]}}, "return_documents": "true"}},
		{"/v2/rerank", "relevance_score", map[string]any{"documents": dialectDocs, "model": "tiny-bert", "top_n": 10}},
		{"/rerank", "relevance_score", map[string]any{"documents": dialectDocs}},
		{"/rerank", "score", map[string]any{"texts": dialectDocs, "truncate": true}},
	}
	for _, r := range routes {
		got := scoresByIndex(t, s.do(t, "POST", r.path, body(r.req)), r.field, n)
		for i := range got {
			if got[i] != seed[i] {
				t.Errorf("POST %s %v: document %d scored %v, the seed route %v", r.path, r.req, i, got[i], seed[i])
			}
		}
	}

	// Raw scores: the logit, whose sigmoid is the seed's score; asked the
	// three ways the dialects spell it, all cached apart from the default.
	for _, r := range []struct {
		path string
		req  map[string]any
	}{
		{"/rerank", map[string]any{"texts": dialectDocs, "raw_scores": true}},
		{"/v1/rerank", map[string]any{"documents": dialectDocs, "use_activation": false}},
		{"/v2/rerank", map[string]any{"documents": dialectDocs, "raw_scores": true}},
	} {
		field := "relevance_score"
		if r.path == "/rerank" {
			field = "score"
		}
		raw := scoresByIndex(t, s.do(t, "POST", r.path, body(r.req)), field, n)
		for i := range raw {
			if sig := 1 / (1 + math.Exp(-raw[i])); math.Abs(sig-seed[i]) > 1e-6 {
				t.Errorf("POST %s %v: document %d: raw %v, sigmoid %v, activated score %v", r.path, r.req, i, raw[i], sig, seed[i])
			}
			if raw[i] == seed[i] {
				t.Errorf("POST %s: document %d: the raw score equals the activated one (%v): served from the default's cache entry?", r.path, i, raw[i])
			}
		}
	}
	again := scoresByIndex(t, s.do(t, "POST", "/v1/rerank", body(map[string]any{"candidates": dialectDocs})), "score", n)
	for i := range again {
		if again[i] != seed[i] {
			t.Errorf("after the raw requests, the seed route scores document %d %v, first %v", i, again[i], seed[i])
		}
	}

	// max_tokens_per_doc cuts the long document only, the same way twice.
	cut := scoresByIndex(t, s.do(t, "POST", "/v2/rerank", body(map[string]any{"documents": dialectDocs, "max_tokens_per_doc": 3})), "relevance_score", n)
	cut2 := scoresByIndex(t, s.do(t, "POST", "/v2/rerank", body(map[string]any{"documents": dialectDocs, "max_tokens_per_doc": 3})), "relevance_score", n)
	if cut[2] == seed[2] || cut[2] != cut2[2] {
		t.Errorf("max_tokens_per_doc 3: long document scored %v then %v, default %v", cut[2], cut2[2], seed[2])
	}

	// TEI's truncate: false refuses the long pair with 413; the short
	// ones alone still score.
	r := s.do(t, "POST", "/rerank", body(map[string]any{"texts": dialectDocs, "truncate": false}))
	var teiErr struct {
		Error     string `json:"error"`
		ErrorType string `json:"error_type"`
	}
	if r.code != 413 || json.Unmarshal(r.body, &teiErr) != nil || teiErr.ErrorType != "Validation" || !strings.Contains(teiErr.Error, "limit is 32") {
		t.Errorf("truncate false with a long text: %d %s, want 413 in TEI's shape naming the limit", r.code, r.body)
	}
	short := scoresByIndex(t, s.do(t, "POST", "/rerank", body(map[string]any{"texts": dialectDocs[:2], "truncate": false})), "score", 2)
	if short[0] != seed[0] || short[1] != seed[1] {
		t.Errorf("truncate false, short texts: %v, seed %v", short, seed[:2])
	}
	// An unknown model: 422 in Cohere's shape, naming the served model.
	r = s.do(t, "POST", "/v2/rerank", body(map[string]any{"documents": dialectDocs, "model": "rerank-v3.5"}))
	if r.code != 422 || !strings.HasPrefix(string(r.body), `{"message":`) || !strings.Contains(string(r.body), "this server serves") {
		t.Errorf("unknown model: %d %s", r.code, r.body)
	}

	var info map[string]any
	r = s.do(t, "GET", "/info", nil)
	if err := json.Unmarshal(r.body, &info); err != nil || r.code != 200 {
		t.Fatalf("GET /info: %d %s", r.code, r.body)
	}
	if info["model_id"] != "org/tiny-bert" || info["max_input_length"] != 32.0 || info["model_dtype"] != "fp32" || info["model_sha"] == nil {
		t.Errorf("GET /info: %s", r.body)
	}
}
