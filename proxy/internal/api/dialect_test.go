package api

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// optionScorer scores a document by its text (scores), and records the
// options of the last pairs it saw. A raw pair scores ten times its
// activated score, so the tests can tell which one they got.
type optionScorer struct {
	scores map[string]float32
	err    error
	mu     sync.Mutex
	last   []sdk.Pair
}

func (o *optionScorer) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	o.mu.Lock()
	o.last = pairs
	o.mu.Unlock()
	if o.err != nil {
		return nil, o.err
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		out[i] = o.scores[p.Document]
		if p.Options.Raw {
			out[i] *= 10
		}
	}
	return out, nil
}

func (o *optionScorer) lastOptions() sdk.PairOptions {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.last) == 0 {
		return sdk.PairOptions{Strict: true, MaxDocumentTokens: -1} // "never called"
	}
	return o.last[0].Options
}

// uuidRe matches the "id" of Cohere-shaped answers.
var uuidRe = regexp.MustCompile(`"id":"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"`)

func TestDialectAnswers(t *testing.T) {
	scorer := &optionScorer{scores: map[string]float32{"a": 0.25, "b": 0.75, "c": 0.5, "title: t\nbody: b": 0.125}}
	svc := rerank.New(rerank.Single("org/test-model", scorer), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 20}, "org/test-model")
	c := testServer(t, Config{Service: svc})
	f := func(path, body, want string, wantOpts sdk.PairOptions) {
		t.Helper()
		r := do(t, c, "POST", path, body)
		got := uuidRe.ReplaceAllString(r.body, `"id":"ID"`)
		if r.code != 200 || got != want {
			t.Errorf("POST %s %s:\n got %d %s\nwant 200 %s", path, body, r.code, r.body, want)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("POST %s: Content-Type %q", path, ct)
		}
		if o := scorer.lastOptions(); o != wantOpts {
			t.Errorf("POST %s %s: scored with options %+v, want %+v", path, body, o, wantOpts)
		}
	}
	none := sdk.PairOptions{}
	// Cohere v2: no documents in the answer, meta with tokens.
	f("/v2/rerank", `{"model":"org/test-model","query":"q","documents":["a","b","c"],"top_n":2,"priority":3}`,
		`{"id":"ID","results":[{"index":1,"relevance_score":0.75},{"index":2,"relevance_score":0.5}],"meta":{"api_version":{"version":"2"},"billed_units":{"search_units":1},"tokens":{"input_tokens":3}}}`, none)
	f("/v2/rerank", `{"model":"test-model","query":"q","documents":["a","b"],"max_tokens_per_doc":7}`,
		`{"id":"ID","results":[{"index":1,"relevance_score":0.75},{"index":0,"relevance_score":0.25}],"meta":{"api_version":{"version":"2"},"billed_units":{"search_units":1},"tokens":{"input_tokens":2}}}`, sdk.PairOptions{MaxDocumentTokens: 7})
	// Cohere v1 / Jina on /v1/rerank: documents, model, usage, meta v1.
	f("/v1/rerank", `{"query":"q","documents":["a","b"],"return_documents":true}`,
		`{"id":"ID","model":"org/test-model","results":[{"index":1,"relevance_score":0.75,"document":{"text":"b"}},{"index":0,"relevance_score":0.25,"document":{"text":"a"}}],"usage":{"total_tokens":2,"prompt_tokens":2},"meta":{"api_version":{"version":"1"},"billed_units":{"search_units":1}}}`, none)
	// RAGFlow's string boolean; top_n beyond the documents means all.
	f("/v1/rerank", `{"query":"q","documents":["a","b"],"return_documents":"true","top_n":9}`,
		`{"id":"ID","model":"org/test-model","results":[{"index":1,"relevance_score":0.75,"document":{"text":"b"}},{"index":0,"relevance_score":0.25,"document":{"text":"a"}}],"usage":{"total_tokens":2,"prompt_tokens":2},"meta":{"api_version":{"version":"1"},"billed_units":{"search_units":1}}}`, none)
	// Object documents come back as sent; rank_fields picks the text.
	f("/v1/rerank", `{"query":"q","documents":[{"text":"a","id":7},{"text":"c"}],"return_documents":"True","raw_scores":true}`,
		`{"id":"ID","model":"org/test-model","results":[{"index":1,"relevance_score":5.0,"document":{"text":"c"}},{"index":0,"relevance_score":2.5,"document":{"text":"a","id":7}}],"usage":{"total_tokens":2,"prompt_tokens":2},"meta":{"api_version":{"version":"1"},"billed_units":{"search_units":1}}}`, sdk.PairOptions{Raw: true})
	f("/v1/rerank", `{"query":"q","documents":[{"title":"t","body":"b","n":1}],"rank_fields":["title","missing","body"],"use_activation":false}`,
		`{"id":"ID","model":"org/test-model","results":[{"index":0,"relevance_score":1.25}],"usage":{"total_tokens":5,"prompt_tokens":5},"meta":{"api_version":{"version":"1"},"billed_units":{"search_units":1}}}`, sdk.PairOptions{Raw: true})
	// Jina on /rerank: the v1 shape.
	f("/rerank", `{"model":"org/test-model","query":"q","documents":["c","a"],"top_n":1,"return_documents":false}`,
		`{"id":"ID","model":"org/test-model","results":[{"index":0,"relevance_score":0.5}],"usage":{"total_tokens":2,"prompt_tokens":2},"meta":{"api_version":{"version":"1"},"billed_units":{"search_units":1}}}`, none)
	// TEI: a bare array; truncate false is strict; return_text.
	f("/rerank", `{"query":"q","texts":["a","b"],"truncate":false,"raw_scores":true}`,
		`[{"index":1,"score":7.5},{"index":0,"score":2.5}]`, sdk.PairOptions{Raw: true, Strict: true})
	f("/rerank", `{"query":"q","texts":["a","b","x"],"return_text":true,"truncate":true,"truncation_direction":"Right"}`,
		`[{"index":1,"text":"b","score":0.75},{"index":0,"text":"a","score":0.25},{"index":2,"text":"x","score":0.0}]`, none)
	// Empty lists answer without scoring.
	scorer.mu.Lock()
	scorer.last = nil
	scorer.mu.Unlock()
	f("/rerank", `{"query":"q","texts":[]}`, `[]`, sdk.PairOptions{Strict: true, MaxDocumentTokens: -1})
	f("/v2/rerank", `{"query":"q","documents":[]}`,
		`{"id":"ID","results":[],"meta":{"api_version":{"version":"2"},"billed_units":{"search_units":1},"tokens":{"input_tokens":0}}}`, sdk.PairOptions{Strict: true, MaxDocumentTokens: -1})
}

// TestDialectScoresEqualSeed checks that every route gives the seed's score
// for the same pair, written the same way.
func TestDialectScoresEqualSeed(t *testing.T) {
	scorer := &optionScorer{scores: map[string]float32{"a": 0.123456789, "b": 1e-7}}
	svc := rerank.New(rerank.Single("org/test-model", scorer), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 20}, "org/test-model")
	c := testServer(t, Config{Service: svc})
	var seed struct {
		Results []struct {
			Index int             `json:"index"`
			Score json.RawMessage `json:"score"`
		} `json:"results"`
	}
	r := do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["a","b"]}`)
	if err := json.Unmarshal([]byte(r.body), &seed); err != nil || len(seed.Results) != 2 {
		t.Fatalf("seed: %s %v", r.body, err)
	}
	for _, route := range []struct{ path, body, field string }{
		{"/v1/rerank", `{"query":"q","documents":["a","b"]}`, "relevance_score"},
		{"/v2/rerank", `{"query":"q","documents":["a","b"]}`, "relevance_score"},
		{"/rerank", `{"query":"q","documents":["a","b"]}`, "relevance_score"},
		{"/rerank", `{"query":"q","texts":["a","b"]}`, "score"},
	} {
		r := do(t, c, "POST", route.path, route.body)
		for i, s := range seed.Results {
			want := fmt.Sprintf(`{"index":%d,"%s":%s}`, s.Index, route.field, s.Score)
			if !strings.Contains(r.body, want) {
				t.Errorf("POST %s %s: result %d: want %s in %s", route.path, route.body, i, want, r.body)
			}
		}
	}
}

func TestDialectErrors(t *testing.T) {
	scorer := &optionScorer{scores: map[string]float32{}}
	svc := rerank.New(rerank.Single("org/test-model", scorer), rerank.Limits{MaxCandidates: 2, MaxCandidateChars: 5}, "org/test-model")
	c := testServer(t, Config{Service: svc, MaxBodyBytes: 200})
	f := func(path, body string, wantCode int, wantBody string) {
		t.Helper()
		r := do(t, c, "POST", path, body)
		if r.code != wantCode || !regexp.MustCompile(wantBody).MatchString(r.body) {
			t.Errorf("POST %s %s:\n got %d %s\nwant %d matching %s", path, body, r.code, r.body, wantCode, wantBody)
		}
		if r.code == 500 {
			t.Errorf("POST %s %s: 500 for a client's mistake", path, body)
		}
	}
	// Each dialect's shape: Cohere {"message"} with 400, Jina {"detail"}
	// and TEI {"error","error_type"} with 422.
	f("/v2/rerank", `{"documents":["a"]}`, 400, `^\{"message":"invalid request: query: field required"\}$`)
	f("/v2/rerank", `{"query":"q","documents":"a"}`, 400, `^\{"message":"invalid request: documents: must be a list`)
	f("/v2/rerank", `{"query":"q"`, 400, `^\{"message":"invalid request: the body is not valid JSON`)
	f("/v2/rerank", ``, 400, `^\{"message":"invalid request: the body is empty`)
	f("/v2/rerank", `[1]`, 400, `^\{"message":"invalid request: the body must be a JSON object"\}$`)
	f("/v2/rerank", `{"query":"q","documents":["a"],"top_n":0}`, 400, `top_n: must be at least 1`)
	f("/v2/rerank", `{"query":"q","documents":["a"],"top_n":"2"}`, 400, `top_n: must be an integer`)
	f("/v2/rerank", `{"query":"q","documents":["a"],"max_tokens_per_doc":0}`, 400, `max_tokens_per_doc: must be at least 1`)
	f("/v2/rerank", `{"query":"q","documents":["a"],"raw_scores":true,"use_activation":true}`, 400, `use_activation: contradicts raw_scores`)
	f("/v2/rerank", `{"query":"q","documents":["a","b","c"]}`, 400, `^\{"message":"invalid request: documents: too many documents: 3`)
	f("/v2/rerank", `{"query":"q","documents":["a","bbbbbb"]}`, 400, `documents\.1: document 1 is 6 characters long`)
	f("/v2/rerank", `{"model":"other","query":"q","documents":["a"]}`, 422, `^\{"message":"model: unsupported model \\"other\\": this server serves \\"org/test-model\\"\"\}$`)
	f("/v1/rerank", `{"query":"q","documents":[{"title":"x"}]}`, 400, `^\{"message":"invalid request: documents\.0: has no \\"text\\" member`)
	f("/v1/rerank", `{"query":"q","documents":[1]}`, 400, `documents\.0: must be a string or an object`)
	f("/v1/rerank", `{"query":"q","documents":["a"],"return_documents":"yes"}`, 400, `return_documents: must be true or false`)
	f("/v1/rerank", `{"query":"q","documents":[{"a":"x"}],"rank_fields":["b"]}`, 400, `has none of the rank_fields`)
	f("/rerank", `{"query":"q"}`, 422, `^\{"detail":"invalid request: documents: field required"\}$`)
	f("/rerank", `{"query":7,"documents":["a"]}`, 422, `^\{"detail":"invalid request: query: must be a string"\}$`)
	f("/rerank", `{"query":"q","texts":["a","b","c"]}`, 422, `^\{"error":"invalid request: texts: too many texts: 3.*","error_type":"Validation"\}$`)
	f("/rerank", `{"query":"q","texts":["a"],"truncation_direction":"Left"}`, 422, `"error_type":"Validation"`)
	f("/rerank", `{"query":"q","texts":["a"],"truncate":"no"}`, 422, `truncate: must be true or false`)
	// The seed route keeps its own errors, documents or not.
	f("/v1/rerank", `{"query":"q"}`, 422, `^\{"detail":\[\{"type":"missing","loc":\["body","candidates"\]`)
	f("/v1/rerank", `{"query":"q","candidates":["a"],"documents":["b"],"top_k":0}`, 422, `^\{"detail":\[\{"type":"greater_than_equal"`)
	// Too large bodies: 413 in the route's shape.
	big := `{"query":"q","texts":["` + strings.Repeat("x", 300) + `"]}`
	f("/rerank", big, 413, `^\{"detail":"Request body too large`)

	// Backend failures, in each shape, with their status codes.
	g := func(err error, wantCode int, wantV2, wantTEI string) {
		t.Helper()
		scorer.err = err
		f("/v2/rerank", `{"query":"q","documents":["a"]}`, wantCode, wantV2)
		f("/rerank", `{"query":"q","texts":["a"]}`, wantCode, wantTEI)
		f("/rerank", `{"query":"q","documents":["a"]}`, wantCode, `^\{"detail":`)
	}
	g(fmt.Errorf("plugin: pair 0 is 900 tokens: %w", sdk.ErrTooLong), 413, `^\{"message":"Input too long: pair 0 is 900 tokens`, `"error_type":"Validation"`)
	g(fmt.Errorf("x: %w", sdk.ErrOverloaded), 429, `^\{"message":"Server overloaded`, `"error_type":"Overloaded"`)
	g(fmt.Errorf("x: %w", context.DeadlineExceeded), 504, `^\{"message":"Rerank inference timed out"\}$`, `"error_type":"Backend"`)
	g(fmt.Errorf("x: %w", sdk.ErrNotLoaded), 503, `^\{"message":"Model not loaded"\}$`, `"error_type":"Unhealthy"`)
	scorer.err = fmt.Errorf("plugin: cannot tokenize: %w", sdk.ErrInvalidInput)
	f("/v2/rerank", `{"query":"q","documents":["a"]}`, 400, `^\{"message":"cannot tokenize: invalid input"\}$`)
	f("/rerank", `{"query":"q","texts":["a"]}`, 422, `^\{"error":"cannot tokenize: invalid input","error_type":"Validation"\}$`)
	scorer.err = fmt.Errorf("x: %w", sdk.ErrOverloaded)
	if r := do(t, c, "POST", "/v2/rerank", `{"query":"q","documents":["a"]}`); r.header.Get("Retry-After") != "1" {
		t.Errorf("429 without Retry-After: %v", r.header)
	}
	scorer.err = nil
	if r := do(t, c, "GET", "/v2/rerank", ""); r.code != 405 || r.header.Get("Allow") != "POST" {
		t.Errorf("GET /v2/rerank: %d %v", r.code, r.header)
	}
}

func TestInfo(t *testing.T) {
	svc := rerank.New(rerank.Single("org/test-model", &optionScorer{}), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 20}, "org/test-model")
	c := testServer(t, Config{Service: svc, Version: "v9", Status: func() Status { return Status{Ready: true, Device: "cpu"} },
		Info: func() Info {
			return Info{ModelSHA: "abc", ModelDtype: "fp32", MaxInputLength: 512, MaxBatchTokens: 8192, MaxBatchRequests: 32,
				MaxClientBatchSize: 200, MaxConcurrentRequests: 1000, Backend: "onnx-cpu"}
		}})
	r := do(t, c, "GET", "/info", "")
	want := `{"model_id":"org/test-model","model_sha":"abc","model_dtype":"fp32","model_type":{"reranker":{"id2label":{"0":"LABEL_0"},"label2id":{"LABEL_0":0}}},"max_concurrent_requests":1000,"max_input_length":512,"max_batch_tokens":8192,"max_batch_requests":32,"max_client_batch_size":200,"auto_truncate":true,"tokenization_workers":1,"version":"v9","sha":null,"docker_label":null,"device":"cpu","backend":"onnx-cpu","ready":true}`
	if r.code != 200 || r.body != want {
		t.Errorf("GET /info:\n got %d %s\nwant 200 %s", r.code, r.body, want)
	}
}
