package rerank

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
)

// commaSplitter splits documents with a comma at their commas.
type commaSplitter struct{ models []string }

func (c *commaSplitter) Split(_, doc string) []string {
	if !strings.Contains(doc, ",") {
		return nil
	}
	return strings.Split(doc, ",")
}

// TestRerankWindows checks long-document windows: each window is an
// ordinary pair (with the request's options), a document scores as its best
// window, the request's choice wins over the server default, and no
// splitter (model not loaded yet) means no windows.
func TestRerankWindows(t *testing.T) {
	f := func(src WindowSource, byDefault bool, req Request, wantPairs []string, want []Result) {
		t.Helper()
		next := &scoreByLength{}
		s := New(Single("org/model", next), Limits{MaxCandidates: 5, MaxCandidateChars: 100}, "org/model")
		s.SetWindows(src, byDefault)
		req.Query = "q"
		resp, err := s.Rerank(context.Background(), &req)
		if err != nil {
			t.Fatal(err)
		}
		var docs []string
		for _, p := range next.calls[0] {
			docs = append(docs, p.Document)
			if p.Options != req.Options {
				t.Errorf("window pair %q has options %+v, want the request's %+v", p.Document, p.Options, req.Options)
			}
		}
		if !reflect.DeepEqual(docs, wantPairs) {
			t.Errorf("pairs scored %q, want %q", docs, wantPairs)
		}
		if !reflect.DeepEqual(resp.Results, want) {
			t.Errorf("results %v, want %v", resp.Results, want)
		}
	}
	split := func(string) Splitter { return &commaSplitter{} }
	none := func(string) Splitter { return nil }
	cands := []string{"aa,bbbbb,c", "dddd", "eee,ff"}
	windowed := []string{"aa", "bbbbb", "c", "dddd", "eee", "ff"}
	// Max of the windows: 5, 4, 3.
	wantWin := []Result{{0, 5}, {1, 4}, {2, 3}}
	// Without windows, whole lengths: 10, 4, 6.
	wantWhole := []Result{{0, 10}, {2, 6}, {1, 4}}
	opts := sdk.PairOptions{Raw: true}
	f(split, true, Request{Candidates: cands, Options: opts}, windowed, wantWin)
	f(split, false, Request{Candidates: cands}, cands, wantWhole)
	f(split, false, Request{Candidates: cands, Windows: true, HasWindows: true}, windowed, wantWin)
	f(split, true, Request{Candidates: cands, Windows: false, HasWindows: true}, cands, wantWhole)
	f(none, true, Request{Candidates: cands}, cands, wantWhole)
	f(nil, true, Request{Candidates: cands}, cands, wantWhole)
	f(split, true, Request{Candidates: cands, TopK: 1, HasTopK: true}, windowed, wantWin[:1])
}
