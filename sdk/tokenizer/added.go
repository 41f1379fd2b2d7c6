package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// addedToken is an entry of a tokenizer.json's added_tokens.
type addedToken struct {
	content                    string
	id                         int32
	singleWord, lstrip, rstrip bool
}

// addedMatcher finds added tokens in a text with the Hugging Face
// AddedVocabulary rules: leftmost-longest, non-overlapping matches (its
// Aho-Corasick automaton), single_word matches only between word
// boundaries, lstrip/rstrip extend a match over the whitespace beside it.
type addedMatcher struct {
	tokens []addedToken
}

// split calls fn for each consecutive piece of s: id is the added token's id,
// or -1 for text between added tokens. Empty pieces are skipped.
func (m *addedMatcher) split(s string, fn func(start, end int, id int32)) {
	// next[i] is the position of the next occurrence of token i at or after
	// the cursor, -1 when there is none left; positions are recomputed only
	// once the cursor passes them, so the search is linear in len(s) per token.
	var nextBuf [8]int // on the stack: tokenizers have a handful of added tokens
	next := nextBuf[:0]
	if len(m.tokens) > len(nextBuf) {
		next = make([]int, 0, len(m.tokens))
	}
	for _, t := range m.tokens {
		next = append(next, strings.Index(s, t.content))
	}
	cursor, emitted := 0, 0
	for {
		best := -1
		for i, t := range m.tokens {
			p := next[i]
			if p >= 0 && p < cursor {
				if j := strings.Index(s[cursor:], t.content); j >= 0 {
					p = cursor + j
				} else {
					p = -1
				}
				next[i] = p
			}
			if p < 0 {
				continue
			}
			if best < 0 || p < next[best] || p == next[best] && len(t.content) > len(m.tokens[best].content) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		t := m.tokens[best]
		start := next[best]
		stop := start + len(t.content)
		cursor = stop // the automaton resumes after the match, even a rejected one
		if t.singleWord && (start > 0 && endsWithWordChar(s[:start]) || stop < len(s) && startsWithWordChar(s[stop:])) {
			continue
		}
		if t.lstrip {
			start = max(len(strings.TrimRightFunc(s[:start], isHFWhitespace)), emitted)
		}
		if t.rstrip {
			stop = len(s) - len(strings.TrimLeftFunc(s[stop:], isHFWhitespace))
		}
		if start > emitted {
			fn(emitted, start, -1)
		}
		fn(start, stop, t.id)
		emitted = stop
	}
	if emitted < len(s) {
		fn(emitted, len(s), -1)
	}
}

func endsWithWordChar(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return isWordChar(r)
}

func startsWithWordChar(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return isWordChar(r)
}
