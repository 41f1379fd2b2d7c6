package rerank

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
)

// scoreByLength is a fake next stage: a document's score is its length in
// bytes, so tests know the expected order; it records the pairs it saw.
type scoreByLength struct {
	calls [][]sdk.Pair
	err   error
}

func (s *scoreByLength) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	s.calls = append(s.calls, pairs)
	if s.err != nil {
		return nil, s.err
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		out[i] = float32(len(p.Document))
	}
	return out, nil
}

var testLimits = Limits{MaxCandidates: 5, MaxCandidateChars: 10, MaxQueryChars: 20}

func TestRerankOrder(t *testing.T) {
	f := func(candidates []string, topK int, want []Result) {
		t.Helper()
		next := &scoreByLength{}
		s := New(Single("org/model", next), testLimits, "org/model")
		resp, err := s.Rerank(context.Background(), &Request{Query: "q", Candidates: candidates, TopK: topK, HasTopK: topK != 0})
		if err != nil {
			t.Fatalf("Rerank(%q, top_k=%d): %v", candidates, topK, err)
		}
		got := resp.Results
		if resp.Model != "org/model" {
			t.Fatalf("Rerank reports model %q, want org/model", resp.Model)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Rerank(%q, top_k=%d) = %v, want %v", candidates, topK, got, want)
		}
		if len(next.calls) != 1 || len(next.calls[0]) != len(candidates) {
			t.Fatalf("next stage saw %v, want one call with %d pairs", next.calls, len(candidates))
		}
		for i, p := range next.calls[0] {
			if p.Query != "q" || p.Document != candidates[i] {
				t.Fatalf("pair %d = %+v, want (q, %q)", i, p, candidates[i])
			}
		}
	}
	f([]string{"a", "ccc", "bb"}, 0, []Result{{1, 3}, {2, 2}, {0, 1}})
	// Ties keep input order.
	f([]string{"xx", "a", "yy", "zz"}, 0, []Result{{0, 2}, {2, 2}, {3, 2}, {1, 1}})
	f([]string{"a", "ccc", "bb"}, 2, []Result{{1, 3}, {2, 2}})
	// top_k above the candidate count keeps everything.
	f([]string{"a", "bb"}, 5, []Result{{1, 2}, {0, 1}})
	f([]string{"a"}, 1, []Result{{0, 1}})
}

func TestRerankEmptyCandidatesSkipsInference(t *testing.T) {
	next := &scoreByLength{}
	s := New(Single("m", next), testLimits, "m")
	resp, err := s.Rerank(context.Background(), &Request{Query: "q", Candidates: nil, TopK: 3, HasTopK: true})
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Results
	if got == nil || len(got) != 0 {
		t.Fatalf("got %#v, want an empty non-nil slice", got)
	}
	if len(next.calls) != 0 {
		t.Fatalf("next stage called %d times for no candidates", len(next.calls))
	}
}

func TestRerankValidation(t *testing.T) {
	f := func(req Request, wantType string, wantLoc []any, wantMsg string) {
		t.Helper()
		next := &scoreByLength{}
		s := New(Single("BAAI/bge-reranker-v2-m3", next), testLimits, "BAAI/bge-reranker-v2-m3")
		_, err := s.Rerank(context.Background(), &req)
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("Rerank(%+v) error = %v, want a ValidationError", req, err)
		}
		if !errors.Is(err, sdk.ErrInvalidInput) {
			t.Fatalf("error %v does not wrap sdk.ErrInvalidInput", err)
		}
		fe := ve.Fields[0]
		if fe.Type != wantType || !reflect.DeepEqual(fe.Loc, wantLoc) || !strings.Contains(fe.Msg, wantMsg) {
			t.Fatalf("Rerank(%+v) = %+v, want type %q loc %v msg containing %q", req, fe, wantType, wantLoc, wantMsg)
		}
		if len(next.calls) != 0 {
			t.Fatalf("next stage called for an invalid request")
		}
	}
	six := []string{"a", "b", "c", "d", "e", "f"}
	f(Request{Candidates: six}, "too_long", []any{"body", "candidates"}, "max_candidates=5")
	f(Request{Candidates: []string{"ok", "ééééééééééé"}}, "string_too_long", []any{"body", "candidates", 1}, "max_candidate_chars=10")
	// Issue 13, failure 1: a query had no limit.
	f(Request{Query: strings.Repeat("é", 21), Candidates: []string{"a"}}, "string_too_long", []any{"body", "query"}, "max_query_chars=20")
	f(Request{Candidates: []string{"a"}, TopK: 0, HasTopK: true}, "greater_than_equal", []any{"body", "top_k"}, "greater than or equal to 1")
	f(Request{Candidates: []string{"a"}, TopK: -3, HasTopK: true}, "greater_than_equal", []any{"body", "top_k"}, "greater than or equal to 1")
	f(Request{Candidates: []string{"a"}, TopK: 6, HasTopK: true}, "less_than_equal", []any{"body", "top_k"}, "less than or equal to 5")
}

func TestRerankUnknownModel(t *testing.T) {
	f := func(asked string) {
		t.Helper()
		next := &scoreByLength{}
		s := New(Single("BAAI/bge-reranker-v2-m3", next), testLimits, "BAAI/bge-reranker-v2-m3")
		// An unknown model is refused before the limits are checked, and
		// with no candidates too.
		for _, cands := range [][]string{{"a"}, nil, {"a", "b", "c", "d", "e", "f"}} {
			_, err := s.Rerank(context.Background(), &Request{Candidates: cands, Model: asked})
			var um *UnknownModelError
			if !errors.Is(err, ErrUnknownModel) || !errors.As(err, &um) {
				t.Fatalf("model %q: error %v, want an UnknownModelError", asked, err)
			}
			if um.Name != asked || um.Error() != `unsupported model "`+asked+`": this server serves "BAAI/bge-reranker-v2-m3"` {
				t.Fatalf("model %q: %+v says %q", asked, um, um.Error())
			}
		}
		if len(next.calls) != 0 {
			t.Fatalf("next stage called for an unknown model")
		}
	}
	f("other")
	f("BAAI/bge")
	f("bge-reranker-v2-m3/")
}

// twoModels routes "a" (and its alias "alpha") and "b" to their own scorers.
type twoModels struct{ a, b Scorer }

func (m twoModels) Route(_ context.Context, name string) (Scorer, string, error) {
	switch name {
	case "", "a", "alpha":
		return m.a, "a", nil
	case "b":
		return m.b, "b", nil
	}
	return nil, "", &UnknownModelError{Name: name, Served: []string{"a", "alpha", "b"}}
}

type constant float32

func (c constant) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	out := make([]float32, len(pairs))
	for i := range out {
		out[i] = float32(c)
	}
	return out, nil
}

func TestRerankRoutesByModel(t *testing.T) {
	s := New(twoModels{a: constant(1), b: constant(2)}, testLimits, "a")
	f := func(asked, wantModel string, wantScore float32) {
		t.Helper()
		resp, err := s.Rerank(context.Background(), &Request{Candidates: []string{"x"}, Model: asked})
		if err != nil {
			t.Fatalf("model %q: %v", asked, err)
		}
		if resp.Model != wantModel || resp.Results[0].Score != wantScore {
			t.Fatalf("model %q: %+v, want model %s score %v", asked, resp, wantModel, wantScore)
		}
	}
	f("", "a", 1)
	f("a", "a", 1)
	f("alpha", "a", 1)
	f("b", "b", 2)
	// Empty candidates report the routed model too.
	resp, err := s.Rerank(context.Background(), &Request{Model: "b"})
	if err != nil || resp.Model != "b" || resp.Results == nil {
		t.Fatalf("empty candidates on b: %+v %v", resp, err)
	}
	_, err = s.Rerank(context.Background(), &Request{Candidates: []string{"x"}, Model: "c"})
	if err == nil || err.Error() != `rerank: unsupported model "c": this server serves "a", "alpha", "b"` {
		t.Fatalf("unknown model: %v", err)
	}
}

func TestRerankAcceptsModelNames(t *testing.T) {
	f := func(served, asked string) {
		t.Helper()
		s := New(Single(served, &scoreByLength{}), testLimits, served)
		if _, err := s.Rerank(context.Background(), &Request{Candidates: []string{"a"}, Model: asked}); err != nil {
			t.Fatalf("serving %q, model %q refused: %v", served, asked, err)
		}
	}
	f("BAAI/bge-reranker-v2-m3", "BAAI/bge-reranker-v2-m3")
	f("BAAI/bge-reranker-v2-m3", "bge-reranker-v2-m3")
	f("local-model", "local-model")
	f("local-model", "")
	// Exactly max_candidate_chars code points is allowed, though longer in bytes.
	s := New(Single("m", &scoreByLength{}), testLimits, "m")
	if _, err := s.Rerank(context.Background(), &Request{Candidates: []string{"éééééééééé"}}); err != nil {
		t.Fatalf("10 code points refused: %v", err)
	}
}

func TestRerankNextStageErrors(t *testing.T) {
	next := &scoreByLength{err: sdk.ErrOverloaded}
	s := New(Single("m", next), testLimits, "m")
	_, err := s.Rerank(context.Background(), &Request{Candidates: []string{"a"}})
	if !errors.Is(err, sdk.ErrOverloaded) {
		t.Fatalf("error %v does not wrap the next stage's", err)
	}
	s = New(Single("m", nonFinite{}), testLimits, "m")
	if _, err := s.Rerank(context.Background(), &Request{Candidates: []string{"a", "b"}}); err == nil || !strings.Contains(err.Error(), "non-finite") {
		t.Fatalf("non-finite score: error %v", err)
	}
	s = New(Single("m", short{}), testLimits, "m")
	if _, err := s.Rerank(context.Background(), &Request{Candidates: []string{"a", "b"}}); err == nil {
		t.Fatalf("a short score list was accepted")
	}
}

type nonFinite struct{}

func (nonFinite) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	out := make([]float32, len(pairs))
	out[len(out)-1] = float32(math.NaN())
	return out, nil
}

type short struct{}

func (short) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	return make([]float32, len(pairs)-1), nil
}

// TestSortResults checks both sorts (insertion up to insertionSortMax,
// the library's above) against a reference on lists with many ties.
func TestSortResults(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 2, 3, 20, insertionSortMax, insertionSortMax + 1, 200} {
		for range 50 {
			r := make([]Result, n)
			for i := range r {
				r[i] = Result{Index: i, Score: float32(rng.IntN(5)) - 2}
			}
			want := slices.Clone(r)
			// Reference: best first, then by input position.
			slices.SortFunc(want, func(a, b Result) int {
				if a.Score != b.Score {
					if a.Score > b.Score {
						return -1
					}
					return 1
				}
				return a.Index - b.Index
			})
			sortResults(r)
			if !slices.Equal(r, want) {
				t.Fatalf("n=%d: sortResults gave %v, want %v", n, r, want)
			}
		}
	}
}
