package tokenizer

import (
	"regexp"
	"strings"
	"unicode/utf8"
	"unsafe"

	"golang.org/x/text/unicode/norm"
)

// normalizer is one normalization step. Implementations may build their
// result in sc's arena; the returned string is valid until the encoding ends.
type normalizer interface {
	normalize(s string, sc *scratch) string
}

// arenaString returns the bytes the arena grew by since start as a string.
// The arena is only appended to until the encoding ends, so the bytes never
// change while the string is in use.
func (sc *scratch) arenaString(start int) string {
	if len(sc.arena) == start {
		return ""
	}
	return unsafe.String(&sc.arena[start], len(sc.arena)-start)
}

// isASCII reports whether s has only ASCII bytes.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// bertNormalizer is BertNormalizer: drop control characters and map
// whitespace to spaces (clean_text), surround CJK ideographs with spaces
// (handle_chinese_chars), NFD then drop non-spacing marks (strip_accents,
// which defaults to lowercase when null), lowercase.
type bertNormalizer struct {
	cleanText, chinese, stripAccents, lowercase bool
}

func (n *bertNormalizer) normalize(s string, sc *scratch) string {
	start := len(sc.arena)
	if isASCII(s) {
		// NFD and accent stripping are the identity on ASCII.
		for i := 0; i < len(s); i++ {
			c := s[i]
			if n.cleanText {
				if c == 0 || isBertControl(rune(c)) {
					continue
				}
				if c == ' ' || c >= '\t' && c <= '\r' {
					c = ' '
				}
			}
			if n.lowercase && c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			sc.arena = append(sc.arena, c)
		}
		return sc.arenaString(start)
	}
	// Pass 1: clean_text and handle_chinese_chars, and lowercase when no NFD
	// has to come between.
	lowerNow := n.lowercase && !n.stripAccents
	for _, r := range s {
		if n.cleanText {
			if r == 0 || r == utf8.RuneError || isBertControl(r) {
				continue
			}
			if isBertWhitespace(r) {
				r = ' '
			}
		}
		if n.chinese && isChineseChar(r) {
			sc.arena = append(sc.arena, ' ')
			sc.arena = utf8.AppendRune(sc.arena, r)
			sc.arena = append(sc.arena, ' ')
			continue
		}
		if lowerNow {
			sc.arena = lowerAppend(sc.arena, r)
		} else {
			sc.arena = utf8.AppendRune(sc.arena, r)
		}
	}
	if !n.stripAccents {
		return sc.arenaString(start)
	}
	// Pass 2: NFD; pass 3: drop non-spacing marks, lowercase.
	cleaned := sc.arenaString(start)
	mid := len(sc.arena)
	sc.arena = norm.NFD.AppendString(sc.arena, cleaned)
	decomposed := sc.arenaString(mid)
	out := len(sc.arena)
	for _, r := range decomposed {
		if isNonspacingMark(r) {
			continue
		}
		if n.lowercase {
			sc.arena = lowerAppend(sc.arena, r)
		} else {
			sc.arena = utf8.AppendRune(sc.arena, r)
		}
	}
	return sc.arenaString(out)
}

// precompiledNormalizer is the sentencepiece charsmap normalizer.
type precompiledNormalizer struct{ p *precompiled }

func (n precompiledNormalizer) normalize(s string, _ *scratch) string { return n.p.normalize(s) }

// replaceNormalizer is Replace: every match of a literal or a regular
// expression is replaced by a literal content.
type replaceNormalizer struct {
	literal string
	re      *regexp.Regexp // nil: literal pattern
	content string
}

func (n *replaceNormalizer) normalize(s string, _ *scratch) string {
	if n.re == nil {
		if n.literal == "" {
			return s
		}
		return strings.ReplaceAll(s, n.literal, n.content)
	}
	if !n.re.MatchString(s) {
		return s // MatchString does not allocate; most texts have no match
	}
	return n.re.ReplaceAllLiteralString(s, n.content)
}

// unicodeNormalizer is NFC, NFD, NFKC or NFKD.
type unicodeNormalizer struct{ form norm.Form }

func (n unicodeNormalizer) normalize(s string, sc *scratch) string {
	if isASCII(s) {
		return s // every form is the identity on ASCII
	}
	start := len(sc.arena)
	sc.arena = n.form.AppendString(sc.arena, s)
	return sc.arenaString(start)
}

// lowercaseNormalizer is Lowercase (Rust's char-by-char to_lowercase).
type lowercaseNormalizer struct{}

func (lowercaseNormalizer) normalize(s string, sc *scratch) string {
	start := len(sc.arena)
	for _, r := range s {
		sc.arena = lowerAppend(sc.arena, r)
	}
	return sc.arenaString(start)
}

// stripAccentsNormalizer is StripAccents: drops combining marks (it does not
// decompose; pair it with NFD/NFKD as Hugging Face documents).
type stripAccentsNormalizer struct{}

func (stripAccentsNormalizer) normalize(s string, sc *scratch) string {
	if isASCII(s) {
		return s
	}
	start := len(sc.arena)
	for _, r := range s {
		if !isCombiningMark(r) {
			sc.arena = utf8.AppendRune(sc.arena, r)
		}
	}
	return sc.arenaString(start)
}

// stripNormalizer is Strip: trims whitespace on the left and/or the right.
type stripNormalizer struct{ left, right bool }

func (n stripNormalizer) normalize(s string, _ *scratch) string {
	if n.left {
		s = strings.TrimLeftFunc(s, isHFWhitespace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, isHFWhitespace)
	}
	return s
}

// prependNormalizer is Prepend: a prefix before any non-empty text.
type prependNormalizer struct{ prefix string }

func (n prependNormalizer) normalize(s string, sc *scratch) string {
	if s == "" {
		return s
	}
	start := len(sc.arena)
	sc.arena = append(sc.arena, n.prefix...)
	sc.arena = append(sc.arena, s...)
	return sc.arenaString(start)
}

// sequenceNormalizer applies its normalizers in order.
type sequenceNormalizer []normalizer

func (seq sequenceNormalizer) normalize(s string, sc *scratch) string {
	for _, n := range seq {
		s = n.normalize(s, sc)
	}
	return s
}
