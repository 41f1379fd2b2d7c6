package tokenizer

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// word is a piece of normalized text on its way to the model. first tells
// whether it starts at offset 0 of the original text (Metaspace's "first"
// prepend scheme needs it).
type word struct {
	s     string
	first bool
}

// preTokenizer splits a piece of normalized text into words, appending the
// non-empty ones to dst.
type preTokenizer interface {
	preTokenize(dst []word, w word, sc *scratch) []word
}

// splitBehavior is what a split does with the delimiters it matches, as
// Hugging Face's SplitDelimiterBehavior.
type splitBehavior int

const (
	removed splitBehavior = iota
	isolated
	mergedWithPrevious
	mergedWithNext
	contiguous
)

// splitter folds a stream of (segment, is-delimiter) pairs into words with
// Hugging Face's rules for each behavior, then drops empty words.
type splitter struct {
	dst      []word
	w        word
	behavior splitBehavior
	// the pending word, not yet appended: [start, end) of w.s.
	start, end int
	pending    bool
	prevMatch  bool
}

func (sp *splitter) flush() {
	if sp.pending && sp.end > sp.start {
		sp.dst = append(sp.dst, word{sp.w.s[sp.start:sp.end], sp.w.first && sp.start == 0})
	}
	sp.pending = false
}

func (sp *splitter) push(start, end int) {
	sp.flush()
	sp.start, sp.end, sp.pending = start, end, true
}

func (sp *splitter) extend(start, end int) {
	if sp.pending {
		sp.end = end
		return
	}
	sp.push(start, end)
}

// add takes the next segment [start, end) of the text.
func (sp *splitter) add(start, end int, match bool) {
	switch sp.behavior {
	case removed:
		if !match {
			sp.push(start, end)
		}
	case isolated:
		sp.push(start, end)
	case mergedWithPrevious:
		if match && !sp.prevMatch {
			sp.extend(start, end)
		} else {
			sp.push(start, end)
		}
	case mergedWithNext:
		if match && !sp.prevMatch {
			sp.push(start, end)
		} else {
			sp.extend(start, end)
		}
	case contiguous:
		if match == sp.prevMatch {
			sp.extend(start, end)
		} else {
			sp.push(start, end)
		}
	}
	sp.prevMatch = match
}

func (sp *splitter) done() []word {
	sp.flush()
	return sp.dst
}

// splitRunes splits w where isDelim holds, each delimiter rune being its own
// match; invert swaps matches and the rest.
func splitRunes(dst []word, w word, isDelim func(rune) bool, behavior splitBehavior, invert bool) []word {
	sp := splitter{dst: dst, w: w, behavior: behavior}
	s := w.s
	runStart := 0
	for i, r := range s {
		if isDelim(r) {
			if i > runStart {
				sp.add(runStart, i, invert)
			}
			end := i + utf8.RuneLen(r)
			if r == utf8.RuneError {
				_, size := utf8.DecodeRuneInString(s[i:])
				end = i + size
			}
			sp.add(i, end, !invert)
			runStart = end
		}
	}
	if runStart < len(s) {
		sp.add(runStart, len(s), invert)
	}
	return sp.done()
}

// splitMatches splits w on the matches of a regular expression or of a
// literal (lit, when re is nil).
func splitMatches(dst []word, w word, re *regexp.Regexp, lit string, behavior splitBehavior, invert bool) []word {
	sp := splitter{dst: dst, w: w, behavior: behavior}
	s := w.s
	prev := 0
	emit := func(start, end int) {
		if start > prev {
			sp.add(prev, start, invert)
		}
		sp.add(start, end, !invert)
		prev = end
	}
	if re != nil {
		for _, m := range re.FindAllStringIndex(s, -1) {
			emit(m[0], m[1])
		}
	} else if lit != "" {
		for i := 0; i < len(s); {
			j := strings.Index(s[i:], lit)
			if j < 0 {
				break
			}
			emit(i+j, i+j+len(lit))
			i += j + len(lit)
		}
	}
	if prev < len(s) {
		sp.add(prev, len(s), invert)
	}
	return sp.done()
}

// bertPreTokenizer is BertPreTokenizer: split on whitespace (removed), then
// isolate every punctuation character.
type bertPreTokenizer struct{}

func (bertPreTokenizer) preTokenize(dst []word, w word, _ *scratch) []word {
	s := w.s
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		var r rune
		size := 1
		if c < utf8.RuneSelf {
			r = rune(c)
		} else {
			r, size = utf8.DecodeRuneInString(s[i:])
		}
		switch {
		case isHFWhitespace(r):
			if i > start {
				dst = append(dst, word{s[start:i], w.first && start == 0})
			}
			start = i + size
		case isBertPunct(r):
			if i > start {
				dst = append(dst, word{s[start:i], w.first && start == 0})
			}
			dst = append(dst, word{s[i : i+size], w.first && i == 0})
			start = i + size
		}
		i += size
	}
	if start < len(s) {
		dst = append(dst, word{s[start:], w.first && start == 0})
	}
	return dst
}

// Metaspace prepend schemes.
const (
	prependAlways = "always"
	prependFirst  = "first"
	prependNever  = "never"
)

// metaspacePreTokenizer is Metaspace: spaces become the replacement
// character (▁), which is prepended as the scheme says and, with split,
// starts every word.
type metaspacePreTokenizer struct {
	replacement string
	scheme      string
	split       bool
}

func (m *metaspacePreTokenizer) preTokenize(dst []word, w word, sc *scratch) []word {
	start := len(sc.arena)
	prepend := (m.scheme == prependAlways || m.scheme == prependFirst && w.first) &&
		!strings.HasPrefix(w.s, m.replacement) && !strings.HasPrefix(w.s, " ")
	if prepend {
		sc.arena = append(sc.arena, m.replacement...)
	}
	s := w.s
	for {
		i := strings.IndexByte(s, ' ')
		if i < 0 {
			break
		}
		sc.arena = append(sc.arena, s[:i]...)
		sc.arena = append(sc.arena, m.replacement...)
		s = s[i+1:]
	}
	sc.arena = append(sc.arena, s...)
	out := word{sc.arenaString(start), w.first}
	if !m.split {
		if out.s != "" {
			dst = append(dst, out)
		}
		return dst
	}
	return splitMatches(dst, out, nil, m.replacement, mergedWithNext, false)
}

// whitespacePreTokenizer is Whitespace: words are runs of \w characters or
// runs of characters that are neither \w nor whitespace.
type whitespacePreTokenizer struct{}

func (whitespacePreTokenizer) preTokenize(dst []word, w word, _ *scratch) []word {
	s := w.s
	const (
		none = iota
		wordRun
		otherRun
	)
	state, start := none, 0
	for i, r := range s {
		kind := otherRun
		if isHFWhitespace(r) {
			kind = none
		} else if isWordChar(r) {
			kind = wordRun
		}
		if kind != state {
			if state != none {
				dst = append(dst, word{s[start:i], w.first && start == 0})
			}
			state, start = kind, i
		}
	}
	if state != none {
		dst = append(dst, word{s[start:], w.first && start == 0})
	}
	return dst
}

// runePreTokenizer splits on a rune class with a behavior: WhitespaceSplit,
// Punctuation, Digits.
type runePreTokenizer struct {
	isDelim  func(rune) bool
	behavior splitBehavior
}

func (p *runePreTokenizer) preTokenize(dst []word, w word, _ *scratch) []word {
	return splitRunes(dst, w, p.isDelim, p.behavior, false)
}

// splitPreTokenizer is Split: a literal or regex pattern with a behavior.
type splitPreTokenizer struct {
	re       *regexp.Regexp
	literal  string
	behavior splitBehavior
	invert   bool
}

func (p *splitPreTokenizer) preTokenize(dst []word, w word, _ *scratch) []word {
	return splitMatches(dst, w, p.re, p.literal, p.behavior, p.invert)
}

// sequencePreTokenizer applies its pre-tokenizers in order, each to every
// word the previous one made.
type sequencePreTokenizer []preTokenizer

func (seq sequencePreTokenizer) preTokenize(dst []word, w word, sc *scratch) []word {
	cur := []word{w}
	var next []word
	for _, p := range seq {
		next = next[:0]
		for _, x := range cur {
			next = p.preTokenize(next, x, sc)
		}
		cur, next = next, cur
	}
	return append(dst, cur...)
}
