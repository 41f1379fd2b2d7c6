package window

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// tokenizerPath is the MiniLM (BERT WordPiece) tokenizer of the generated
// test model.
const tokenizerPath = "../../cmd/rerank/testmodeldata/tokenizer.json"

func load(t *testing.T, maxLength, maxWindows int) (*Splitter, *tokenizer.Tokenizer) {
	t.Helper()
	b, err := os.ReadFile(tokenizerPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(b, maxLength, maxWindows)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.FromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return s, tok
}

// longDoc is n numbered words, so that every window's place in the
// document can be read off its first and last words.
func longDoc(n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = fmt.Sprintf("w%d", i)
	}
	return strings.Join(w, " \n ")
}

func TestSplit(t *testing.T) {
	const maxLength = 48
	s, tok := load(t, maxLength, 100)
	query := "where is the needle"
	if w := s.Split(query, "a short document"); w != nil {
		t.Errorf("a document that fits was split: %q", w)
	}
	doc := longDoc(200)
	ws := s.Split(query, doc)
	if len(ws) < 3 {
		t.Fatalf("%d windows for a document several times the max length", len(ws))
	}
	end := 0
	for i, w := range ws {
		e, err := tok.EncodePair(query, w, tokenizer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(e.IDs) > maxLength {
			t.Errorf("window %d is %d tokens with the query, over %d", i, len(e.IDs), maxLength)
		}
		at := strings.Index(doc, w)
		if at < 0 {
			t.Fatalf("window %d %q is not a slice of the document", i, w)
		}
		if i > 0 && at >= end {
			t.Errorf("window %d starts at byte %d, after the previous one ended (%d): no overlap", i, at, end)
		}
		if i > 0 && at+len(w) <= end {
			t.Errorf("window %d does not advance", i)
		}
		end = at + len(w)
	}
	if end != len(doc) {
		t.Errorf("the windows end at byte %d of %d", end, len(doc))
	}

	capped, _ := load(t, maxLength, 2)
	if ws := capped.Split(query, doc); len(ws) != 2 || !strings.HasPrefix(ws[0], "w0 ") {
		t.Errorf("max 2 windows: got %d", len(ws))
	}
	if w := s.Split(strings.Repeat("query ", 40), doc); w != nil {
		t.Errorf("a query filling the input still split the document into %d windows", len(w))
	}
	// A single word (no spaces, 120 tokens) longer than a window makes a
	// window of its own, truncated when scored; the split still ends.
	if ws := s.Split(query, strings.Repeat("a,", 60)+" tail"); len(ws) != 2 || ws[1] != "tail" {
		t.Errorf("an overlong word: windows %q", ws)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New([]byte("{"), 512, 0); err == nil {
		t.Errorf("a broken tokenizer.json was accepted")
	}
	b, err := os.ReadFile(tokenizerPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(b, 0, 0); err == nil {
		t.Errorf("max length 0 was accepted")
	}
}
