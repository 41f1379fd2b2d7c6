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
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			// NFD and accent stripping are the identity on ASCII.
			i++
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
			continue
		}
		// A run of non-ASCII characters. ASCII characters are starters
		// without decomposition, so NFD of the whole text is the NFD of its
		// runs put together.
		j := i + 1
		for j < len(s) && s[j] >= utf8.RuneSelf {
			j++
		}
		n.normalizeRun(s[i:j], sc)
		i = j
	}
	return sc.arenaString(start)
}

// normalizeRun appends the normalized form of a run of non-ASCII text to
// the arena, in the reference library's order: clean_text and
// handle_chinese_chars, then NFD and non-spacing marks dropped, then lowercase.
func (n *bertNormalizer) normalizeRun(s string, sc *scratch) {
	lowerNow := n.lowercase && !n.stripAccents
	out := sc.arena
	if n.stripAccents {
		out = sc.norm[:0]
	}
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
			out = append(out, ' ')
			out = utf8.AppendRune(out, r)
			out = append(out, ' ')
			continue
		}
		if lowerNow {
			out = lowerAppend(out, r)
		} else {
			out = utf8.AppendRune(out, r)
		}
	}
	if !n.stripAccents {
		sc.arena = out
		return
	}
	sc.norm = out
	// NFD rune by rune (table decompositions, Hangul by arithmetic), which
	// allocates nothing. It equals the NFD of the run unless canonical
	// reordering matters, i.e. unless a combining character that survives
	// (not a non-spacing mark) has a non-zero combining class; then the run
	// is redone with the full algorithm.
	mark := len(sc.arena)
	reorder := false
	emit := func(r rune) {
		if isNonspacingMark(r) {
			return
		}
		if r >= 0x300 && !reorder {
			var buf [utf8.UTFMax]byte
			reorder = norm.NFD.Properties(buf[:utf8.EncodeRune(buf[:], r)]).CCC() != 0
		}
		if n.lowercase {
			sc.arena = lowerAppend(sc.arena, r)
		} else {
			sc.arena = utf8.AppendRune(sc.arena, r)
		}
	}
	for i := 0; i < len(out); {
		r, size := utf8.DecodeRune(out[i:])
		src := out[i : i+size]
		i += size
		if r >= hangulBase && r < hangulBase+hangulCount {
			si := r - hangulBase
			emit(0x1100 + si/588)     // leading consonant: LBase + SIndex/(VCount*TCount)
			emit(0x1161 + si%588/28)  // vowel: VBase + (SIndex%NCount)/TCount
			if t := si % 28; t != 0 { // trailing consonant, if any: TBase + SIndex%TCount
				emit(0x11A7 + t)
			}
			continue
		}
		var dec []byte
		if r >= 0xC0 { // the first rune with a canonical decomposition is U+00C0
			dec = norm.NFD.Properties(src).Decomposition()
		}
		if dec == nil {
			emit(r)
			continue
		}
		for len(dec) > 0 {
			d, dsize := utf8.DecodeRune(dec)
			dec = dec[dsize:]
			emit(d)
		}
	}
	if !reorder {
		return
	}
	sc.arena = sc.arena[:mark]
	sc.nfd = norm.NFD.Append(sc.nfd[:0], out...)
	for i := 0; i < len(sc.nfd); {
		r, size := utf8.DecodeRune(sc.nfd[i:])
		i += size
		if isNonspacingMark(r) {
			continue
		}
		if n.lowercase {
			sc.arena = lowerAppend(sc.arena, r)
		} else {
			sc.arena = utf8.AppendRune(sc.arena, r)
		}
	}
}

// The Hangul syllable block, decomposed algorithmically by NFD (Unicode
// 3.12): 11,172 precomposed syllables from U+AC00.
const (
	hangulBase  = 0xAC00
	hangulCount = 11172
)

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
