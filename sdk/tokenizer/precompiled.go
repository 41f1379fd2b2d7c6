package tokenizer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/clipperhouse/uax29/v2/graphemes"
)

// precompiled is sentencepiece's precompiled character map normalizer (the
// "Precompiled" normalizer of a tokenizer.json), with the semantics of Hugging
// Face tokenizers (normalizers/precompiled.rs over the spm_precompiled crate).
//
// The charsmap is a little-endian u32 trie size in bytes, a darts-clone
// double-array trie of that many bytes mapping UTF-8 byte strings to offsets,
// and a table of NUL-terminated replacement strings those offsets point into.
//
// A precompiled is immutable after newPrecompiled and safe for concurrent use.
type precompiled struct {
	// units is the double-array trie, one darts-clone unit per element.
	units []uint32
	// table holds the NUL-terminated replacement strings.
	table string
	// ascii caches the replacement of every one-byte (ASCII) grapheme,
	// the common case, so that ASCII text never walks the trie.
	ascii [utf8.RuneSelf]asciiRule
}

// asciiRule is the cached transform of one ASCII byte.
type asciiRule struct {
	repl string
	ok   bool
}

// graphemeLimit is the grapheme length in bytes, exclusive, up to which Hugging
// Face transforms a grapheme as a whole before falling back to its characters
// (`grapheme.len() < 6` in precompiled.rs).
const graphemeLimit = 6

// Darts-clone unit layout, as spm_precompiled decodes it.
const (
	dartsLeafBit    = 1 << 8         // the unit's node has a leaf child holding a value
	dartsExtBit     = 1 << 9         // the offset is stored shifted left by 8 more bits
	dartsValueMask  = 1<<31 - 1      // value bits of a leaf unit
	dartsLabelMask  = 1<<31 | 0xFF   // label bits; bit 31 set marks a leaf, never a label
	dartsOffsetBits = 10             // the offset starts at bit 10
	dartsUnitBytes  = 4              // a unit is a little-endian u32
	dartsHeaderSize = dartsUnitBytes // the charsmap starts with the trie size in bytes
	dartsExtShift   = 6              // (unit & dartsExtBit) >> 6 is the extra shift, 0 or 8
)

// newPrecompiled parses a precompiled charsmap (the base64-decoded
// "precompiled_charsmap" of a tokenizer.json).
func newPrecompiled(charsmap []byte) (*precompiled, error) {
	if len(charsmap) < dartsHeaderSize {
		return nil, fmt.Errorf("tokenizer: precompiled charsmap of %d bytes is shorter than its %d-byte header", len(charsmap), dartsHeaderSize)
	}
	trieSize := uint64(binary.LittleEndian.Uint32(charsmap))
	n := trieSize / dartsUnitBytes
	body := charsmap[dartsHeaderSize:]
	if n*dartsUnitBytes > uint64(len(body)) {
		return nil, fmt.Errorf("tokenizer: precompiled charsmap declares a %d-byte trie but holds only %d bytes after its header", trieSize, len(body))
	}
	p := &precompiled{units: make([]uint32, n)}
	for i := range p.units {
		p.units[i] = binary.LittleEndian.Uint32(body[i*dartsUnitBytes:])
	}
	table := body[n*dartsUnitBytes:]
	if !utf8.Valid(table) {
		return nil, errors.New("tokenizer: precompiled charsmap's normalized string table is not valid UTF-8")
	}
	p.table = string(table)
	for c := range p.ascii {
		p.ascii[c].repl, p.ascii[c].ok = p.transform(string(rune(c)))
	}
	return p, nil
}

// transform returns the replacement of chunk's SHORTEST prefix in the trie,
// as spm_precompiled's Precompiled::transform does (it takes the first result
// of common_prefix_search); ok is false when no prefix of chunk is mapped.
// A NUL byte ends the search. A malformed trie yields no match, never a panic.
func (p *precompiled) transform(chunk string) (repl string, ok bool) {
	units := p.units
	if len(units) == 0 {
		return "", false
	}
	pos := uint64(dartsOffset(units[0]))
	for i := 0; i < len(chunk); i++ {
		c := chunk[i]
		if c == 0 {
			break
		}
		pos ^= uint64(c)
		if pos >= uint64(len(units)) {
			return "", false
		}
		unit := units[pos]
		if unit&dartsLabelMask != uint32(c) {
			return "", false
		}
		pos ^= uint64(dartsOffset(unit))
		if unit&dartsLeafBit != 0 {
			if pos >= uint64(len(units)) {
				return "", false
			}
			return p.at(int(units[pos] & dartsValueMask))
		}
	}
	return "", false
}

// at returns the NUL-terminated string at offset in the table.
func (p *precompiled) at(offset int) (string, bool) {
	// An offset past the table or inside a character would make Hugging Face
	// panic; here it is no match, so the output stays valid UTF-8.
	if offset > len(p.table) || offset < len(p.table) && !utf8.RuneStart(p.table[offset]) {
		return "", false
	}
	s := p.table[offset:]
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return s, true
}

// dartsOffset decodes the offset field of a darts-clone unit.
func dartsOffset(unit uint32) uint32 {
	return (unit >> dartsOffsetBits) << ((unit & dartsExtBit) >> dartsExtShift)
}

// normalize applies the charsmap to s with Hugging Face's semantics: s is cut
// into extended grapheme clusters; a cluster shorter than 6 bytes whose
// shortest mapped prefix is found is replaced as a whole by that prefix's
// replacement; otherwise each character of the cluster is replaced by its own
// transform, or kept. Invalid UTF-8 bytes are first replaced by U+FFFD (Hugging
// Face only ever sees valid UTF-8). When nothing changes s itself is returned.
func (p *precompiled) normalize(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, string(utf8.RuneError))
	}
	var out []byte // nil until the first change, so an unchanged s costs no allocation
	for i := 0; i < len(s); {
		// Fast path: an ASCII byte followed by an ASCII byte (or the end) is a
		// grapheme of its own, except CR LF (UAX #29 GB3); no ASCII character
		// is Extend, ZWJ, SpacingMark or Prepend.
		if c := s[i]; c < utf8.RuneSelf && (i+1 == len(s) || s[i+1] < utf8.RuneSelf && !(c == '\r' && s[i+1] == '\n')) {
			r := &p.ascii[c]
			if r.ok && out == nil {
				out = startOutput(s, i)
			}
			if out != nil {
				if r.ok {
					out = append(out, r.repl...)
				} else {
					out = append(out, c)
				}
			}
			i++
			continue
		}
		// Second fast path: a character that cannot start a longer grapheme
		// when followed by this next one is a grapheme of its own.
		if c, size := utf8.DecodeRuneInString(s[i:]); i+size == len(s) || graphemeEndsAfter(c, s[i+size:]) {
			ch := s[i : i+size]
			if repl, ok := p.transform(ch); ok {
				if out == nil {
					out = startOutput(s, i)
				}
				out = append(out, repl...)
			} else if out != nil {
				out = append(out, ch...)
			}
			i += size
			continue
		}
		g := firstGrapheme(s[i:])
		if len(g) < graphemeLimit {
			if repl, ok := p.transform(g); ok {
				if out == nil {
					out = startOutput(s, i)
				}
				out = append(out, repl...)
				i += len(g)
				continue
			}
		}
		for j := 0; j < len(g); {
			_, size := utf8.DecodeRuneInString(g[j:])
			ch := g[j : j+size]
			if repl, ok := p.transform(ch); ok {
				if out == nil {
					out = startOutput(s, i+j)
				}
				out = append(out, repl...)
			} else if out != nil {
				out = append(out, ch...)
			}
			j += size
		}
		i += len(g)
	}
	if out == nil {
		return s
	}
	return unsafe.String(unsafe.SliceData(out), len(out)) // out is never written again
}

// startOutput starts the normalized output at the first change, at byte i of
// s, with room for s's length plus slack for replacements that grow.
func startOutput(s string, i int) []byte {
	const slack = 16 // bytes of headroom for replacements longer than their source
	out := make([]byte, i, len(s)+slack)
	copy(out, s[:i])
	return out
}

// graphemeEndsAfter reports, cheaply and conservatively, that a grapheme
// starting with c ends before rest's first character: c is not CR or a
// Prepend character, and that next character is from a run of a block that
// has no character continuing a grapheme (no Extend, ZWJ, SpacingMark, Hangul
// jamo, or regional indicator: UAX #29 GB3-GB13 then all break), or is a
// Hangul syllable after anything but a leading jamo.
// A false answer only sends the text through full segmentation. The tests
// check both halves against the segmenter over every code point.
func graphemeEndsAfter(c rune, rest string) bool {
	if c == '\r' || isPrepend(c) {
		return false
	}
	n := rune(rest[0])
	if n >= utf8.RuneSelf {
		n, _ = utf8.DecodeRuneInString(rest)
	}
	switch {
	case n < 0x300: // ASCII, Latin-1, Latin Extended-A/B, IPA, spacing modifiers
		return true
	case n < 0x370: // combining diacritical marks
		return false
	case n < 0x483: // Greek, Coptic, Cyrillic letters (0x483.. are combining)
		return true
	case n >= 0x5D0 && n < 0x5EB: // Hebrew letters
		return true
	case n >= 0x620 && n < 0x64B: // Arabic letters (0x64B.. are combining)
		return true
	case n >= 0x904 && n < 0x93A: // Devanagari vowels and consonants
		return true
	case n >= 0xE01 && n < 0xE31: // Thai consonants
		return true
	case n >= 0xAC00 && n < 0xD7A4: // Hangul syllables join only a leading jamo (GB6)
		return !(c >= 0x1100 && c < 0x1160 || c >= 0xA960 && c < 0xA980)
	case n >= 0x3041 && n < 0x3097: // hiragana letters (0x3099, 0x309A combine)
		return true
	case n >= 0x30A1 && n < 0x30FB: // katakana letters
		return true
	case n >= 0x3400 && n < 0x4DC0: // CJK unified ideographs extension A
		return true
	case n >= 0x4E00 && n < 0xA000: // CJK unified ideographs
		return true
	case n >= 0xFF01 && n < 0xFF9E: // fullwidth forms, halfwidth katakana (0xFF9E, 0xFF9F combine)
		return true
	}
	return false
}

// isPrepend reports whether c has the Grapheme_Cluster_Break property
// Prepend (in Unicode 16.0), which joins a grapheme with
// the character after it (UAX #29 GB9b).
func isPrepend(c rune) bool {
	if c < 0x600 {
		return false
	}
	switch {
	case c >= 0x600 && c <= 0x605, c == 0x6DD, c == 0x70F, c == 0x890, c == 0x891, c == 0x8E2, c == 0xD4E,
		c == 0x110BD, c == 0x110CD, c == 0x111C2, c == 0x111C3, c == 0x1193F, c == 0x11941, c == 0x11A3A,
		c >= 0x11A84 && c <= 0x11A89, c == 0x11D46, c == 0x11F02, c == 0x113D1:
		return true
	}
	return false
}

// firstGrapheme returns the extended grapheme cluster at the start of s
// (non-empty, valid UTF-8), with Unicode 16.0 rules including GB9c (Indic
// conjuncts), the version of unicode-segmentation 1.12 that Hugging Face
// tokenizers 0.22 uses. The segmenter only reads the bytes it is given, so
// they are viewed in place, without a copy.
func firstGrapheme(s string) string {
	advance, _, err := graphemes.SplitFunc(unsafe.Slice(unsafe.StringData(s), len(s)), true)
	if err != nil || advance <= 0 || advance > len(s) {
		// Not expected with valid UTF-8; fall back to one character.
		_, advance = utf8.DecodeRuneInString(s)
	}
	return s[:advance]
}
