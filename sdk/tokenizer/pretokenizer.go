package tokenizer

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// word is a piece of normalized text on its way to the model. firstLen is
// how many of its leading bytes come from the first character of the
// original text (0: none); Metaspace's "first" prepend scheme prepends only
// to a word that starts there, as the reference library's
// offsets_original().0 == 0 test does.
type word struct {
	s        string
	firstLen int
}

// sub returns the piece [start, end) of w.
func (w word) sub(start, end int) word {
	return word{w.s[start:end], max(0, w.firstLen-start)}
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
	// held is a delimiter that MergedWithNext keeps back until it knows
	// whether a non-delimiter follows it.
	heldStart, heldEnd int
	held               bool
}

func (sp *splitter) flush() {
	if sp.pending && sp.end > sp.start {
		sp.dst = append(sp.dst, sp.w.sub(sp.start, sp.end))
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
		// The reference folds from the end: a delimiter joins the piece
		// right after it when that piece is not a delimiter; a delimiter
		// followed by another one stands alone.
		if sp.held {
			if match {
				sp.push(sp.heldStart, sp.heldEnd)
			} else {
				sp.push(sp.heldStart, end)
				sp.held = false
				break
			}
		}
		if match {
			sp.heldStart, sp.heldEnd, sp.held = start, end, true
		} else {
			sp.push(start, end)
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
	if sp.held {
		sp.push(sp.heldStart, sp.heldEnd)
		sp.held = false
	}
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
				dst = append(dst, w.sub(start, i))
			}
			start = i + size
		case isBertPunct(r):
			if i > start {
				dst = append(dst, w.sub(start, i))
			}
			dst = append(dst, w.sub(i, i+size))
			start = i + size
		}
		i += size
	}
	if start < len(s) {
		dst = append(dst, w.sub(start, len(s)))
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
	prepend := (m.scheme == prependAlways || m.scheme == prependFirst && w.firstLen > 0) &&
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
	out := word{s: sc.arenaString(start)}
	if w.firstLen > 0 {
		// The prepended replacement and the first character's bytes (spaces
		// grown to replacements) still come from the first character.
		out.firstLen = w.firstLen + strings.Count(w.s[:min(w.firstLen, len(w.s))], " ")*(len(m.replacement)-1)
		if prepend {
			out.firstLen += len(m.replacement)
		}
	}
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
				dst = append(dst, w.sub(start, i))
			}
			state, start = kind, i
		}
	}
	if state != none {
		dst = append(dst, w.sub(start, len(s)))
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
