// Package window splits a document too long for a cross-encoder's input into
// overlapping windows of whole words, each of which fits the model's max
// length together with the query, so that a long document can be scored as
// the best of its windows instead of by its truncated beginning.
//
// The proxy owns requests, so it splits them: it loads the model's own
// tokenizer.json through sdk/tokenizer and counts tokens exactly as the
// plugin will. A window holds as many whole words as fit the budget (the max
// length less the query's tokens and the pair's special tokens); the next
// window starts a quarter of a budget before the previous one ends (stride
// three quarters of a window), so a passage cut by one window's edge lies
// whole inside the next. At most MaxWindows windows are made per document;
// text beyond them is not scored.
package window

import (
	"fmt"
	"unicode"

	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// DefaultMaxWindows is the default cap on windows per document: a document
// of the default 4,000-character limit is about 1,000 tokens, three windows
// of a 512-token model; 16 leave room for longer limits and shorter models
// while bounding one document's cost to 16 pairs.
const DefaultMaxWindows = 16

// minBudget is the fewest document tokens a window may hold: below it (a
// query that fills nearly the whole input) windows would be mostly query,
// and the document is truncated as usual instead.
const minBudget = 16

// Splitter splits documents for one model. It is safe for concurrent use.
type Splitter struct {
	tok        *tokenizer.Tokenizer
	maxLength  int
	pairAdded  int
	maxWindows int
}

// New returns a Splitter for the model whose tokenizer.json is tokenizerJSON
// and whose max length (special tokens included) is maxLength; maxWindows
// caps the windows of one document (0: DefaultMaxWindows).
func New(tokenizerJSON []byte, maxLength, maxWindows int) (*Splitter, error) {
	tok, err := tokenizer.FromBytes(tokenizerJSON)
	if err != nil {
		return nil, fmt.Errorf("window: %w", err)
	}
	if maxWindows <= 0 {
		maxWindows = DefaultMaxWindows
	}
	if maxLength < 1 {
		return nil, fmt.Errorf("window: max length %d must be positive", maxLength)
	}
	return &Splitter{tok: tok, maxLength: maxLength, pairAdded: tok.AddedTokens(true), maxWindows: maxWindows}, nil
}

// MaxWindows is the cap on windows per document.
func (s *Splitter) MaxWindows() int { return s.maxWindows }

// tokens counts text's tokens without special tokens.
func (s *Splitter) tokens(text string) int {
	e, err := s.tok.Encode(text, tokenizer.Options{})
	if err != nil {
		return 0
	}
	return max(0, len(e.IDs)-s.tok.AddedTokens(false))
}

// Split returns the windows of doc for query, or nil when the pair fits the
// max length as it is (or the query leaves too little room for windows):
// such a document is scored as one pair, as without windows.
func (s *Splitter) Split(query, doc string) []string {
	budget := s.maxLength - s.pairAdded - s.tokens(query)
	if budget < minBudget || s.tokens(doc) <= budget {
		return nil
	}
	words := wordSpans(doc)
	counts := make([]int, len(words))
	for i, w := range words {
		counts[i] = s.tokens(doc[w.start:w.end])
	}
	// overlap is how many tokens a window repeats from the one before.
	overlap := budget / 4
	var out []string
	for i := 0; i < len(words) && len(out) < s.maxWindows; {
		j, n := i, 0
		for j < len(words) && (j == i || n+counts[j] <= budget) {
			n += counts[j]
			j++
		}
		out = append(out, doc[words[i].start:words[j-1].end])
		if j == len(words) {
			break
		}
		// The next window starts overlap tokens before this one ended,
		// and always at least one word later.
		k, back := j, 0
		for k-1 > i && back+counts[k-1] <= overlap {
			back += counts[k-1]
			k--
		}
		i = k
	}
	return out
}

// span is a word's byte range.
type span struct{ start, end int }

// wordSpans returns the byte ranges of doc's runs of non-space characters.
func wordSpans(doc string) []span {
	var out []span
	start := -1
	for i, r := range doc {
		if unicode.IsSpace(r) {
			if start >= 0 {
				out = append(out, span{start, i})
				start = -1
			}
		} else if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		out = append(out, span{start, len(doc)})
	}
	return out
}
