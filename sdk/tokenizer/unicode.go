package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Character classes as Hugging Face tokenizers sees them.
//
// The Rust library takes general categories (control, punctuation, non-spacing
// mark) from the unicode_categories crate, whose tables stop at an old Unicode
// version (about 8.0), while Go's unicode package follows Unicode 15. The
// tables below list the runes Go classifies in a category but the reference
// library does not; they were found by running every rune of Go's Mn, P, Cc
// and Cf tables through the reference library (tokref) inside "a" + r + "b"
// with the uncased BERT tokenizer and keeping the ones it did not strip,
// split or drop. Subtracting them gives token-for-token parity.

// isHFWhitespace reports whether Rust's char::is_whitespace holds for r (the
// White_Space property, the same set as Go's unicode.IsSpace).
func isHFWhitespace(r rune) bool {
	if r < 0x80 {
		return r == ' ' || (r >= '\t' && r <= '\r')
	}
	return unicode.IsSpace(r)
}

// isBertWhitespace is BertNormalizer's whitespace: tab, newline, carriage
// return and everything Rust calls whitespace.
func isBertWhitespace(r rune) bool { return isHFWhitespace(r) }

// isBertControl is BertNormalizer's control class: the "other" categories
// (Cc, Cf, Co, Cs) except tab, newline and carriage return.
func isBertControl(r rune) bool {
	if r < 0x80 {
		return r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0x7f
	}
	if !unicode.In(r, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs) {
		return false
	}
	return !unicode.Is(hfNewControl, r)
}

// isBertPunct is BertPreTokenizer's and Punctuation's class: ASCII
// punctuation (symbols such as $ + < = > ^ ` | ~ included) or a rune in a
// Unicode punctuation category.
func isBertPunct(r rune) bool {
	if r < 0x80 {
		return r >= '!' && r <= '/' || r >= ':' && r <= '@' || r >= '[' && r <= '`' || r >= '{' && r <= '~'
	}
	return unicode.IsPunct(r) && !unicode.Is(hfNewPunct, r)
}

// isNonspacingMark is the Mn category as the reference library sees it (what
// BertNormalizer's strip_accents removes after NFD).
func isNonspacingMark(r rune) bool {
	if r < 0x300 {
		return false // first Mn rune is U+0300
	}
	return unicode.Is(unicode.Mn, r) && !unicode.Is(hfNewMn, r)
}

// isCombiningMark is the StripAccents normalizer's class (any mark, Mn, Mc or
// Me), as of the reference library's older tables.
func isCombiningMark(r rune) bool {
	if r < 0x300 {
		return false // first mark is U+0300
	}
	return unicode.Is(unicode.M, r) && !unicode.Is(hfNewCombining, r)
}

// isChineseChar is BertNormalizer's CJK class: the CJK Unified Ideographs
// blocks and extensions A to E, and the compatibility ideographs.
func isChineseChar(r rune) bool {
	switch {
	case r >= 0x4E00 && r <= 0x9FFF,
		r >= 0x3400 && r <= 0x4DBF,
		r >= 0x20000 && r <= 0x2A6DF,
		r >= 0x2A700 && r <= 0x2B73F,
		r >= 0x2B740 && r <= 0x2B81F,
		r >= 0x2B920 && r <= 0x2CEAF,
		r >= 0xF900 && r <= 0xFAFF,
		r >= 0x2F800 && r <= 0x2FA1F:
		return true
	}
	return false
}

// isNumeric is Rust's char::is_numeric: the Nd, Nl and No categories.
func isNumeric(r rune) bool {
	if r < 0x80 {
		return r >= '0' && r <= '9'
	}
	return unicode.In(r, unicode.Nd, unicode.Nl, unicode.No)
}

// isWordChar is the regex crate's Unicode \w: alphabetic, marks, decimal
// digits, connector punctuation and the joiners.
func isWordChar(r rune) bool {
	if r < 0x80 {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_'
	}
	return unicode.In(r, unicode.L, unicode.M, unicode.Nd, unicode.Nl, unicode.Pc, unicode.Other_Alphabetic) ||
		r == 0x200C || r == 0x200D
}

// lowerAppend appends Rust's char::to_lowercase of r to dst. Go's
// unicode.ToLower agrees with it except for U+0130, the only rune whose
// lowercase is two runes.
func lowerAppend(dst []byte, r rune) []byte {
	if r < 0x80 {
		if r >= 'A' && r <= 'Z' {
			r += 'a' - 'A'
		}
		return append(dst, byte(r))
	}
	if r == 0x130 {
		return append(dst, "i\u0307"...)
	}
	return utf8.AppendRune(dst, unicode.ToLower(r))
}

var hfNewPunct = &unicode.RangeTable{
	R16: []unicode.Range16{
		{0x061D, 0x061D, 1},
		{0x09FD, 0x09FD, 1},
		{0x0A76, 0x0A76, 1},
		{0x0C77, 0x0C77, 1},
		{0x0C84, 0x0C84, 1},
		{0x1B7D, 0x1B7E, 1},
		{0x2E43, 0x2E4F, 1},
		{0x2E52, 0x2E5D, 1},
	},
	R32: []unicode.Range32{
		{0x10EAD, 0x10EAD, 1},
		{0x10F55, 0x10F59, 1},
		{0x10F86, 0x10F89, 1},
		{0x1144B, 0x1144F, 1},
		{0x1145A, 0x1145B, 1},
		{0x1145D, 0x1145D, 1},
		{0x11660, 0x1166C, 1},
		{0x116B9, 0x116B9, 1},
		{0x1183B, 0x1183B, 1},
		{0x11944, 0x11946, 1},
		{0x119E2, 0x119E2, 1},
		{0x11A3F, 0x11A46, 1},
		{0x11A9A, 0x11A9C, 1},
		{0x11A9E, 0x11AA2, 1},
		{0x11B00, 0x11B09, 1},
		{0x11C41, 0x11C45, 1},
		{0x11C70, 0x11C71, 1},
		{0x11EF7, 0x11EF8, 1},
		{0x11F43, 0x11F4F, 1},
		{0x11FFF, 0x11FFF, 1},
		{0x12FF1, 0x12FF2, 1},
		{0x16E97, 0x16E9A, 1},
		{0x16FE2, 0x16FE2, 1},
		{0x1E95E, 0x1E95F, 1},
	},
}

var hfNewMn = &unicode.RangeTable{
	R16: []unicode.Range16{
		{0x07FD, 0x07FD, 1},
		{0x0898, 0x089F, 1},
		{0x08CA, 0x08E1, 1},
		{0x09FE, 0x09FE, 1},
		{0x0AFA, 0x0AFF, 1},
		{0x0B55, 0x0B55, 1},
		{0x0C04, 0x0C04, 1},
		{0x0C3C, 0x0C3C, 1},
		{0x0D00, 0x0D00, 1},
		{0x0D3B, 0x0D3C, 1},
		{0x0D81, 0x0D81, 1},
		{0x0EBA, 0x0EBA, 1},
		{0x0ECE, 0x0ECE, 1},
		{0x180F, 0x180F, 1},
		{0x1885, 0x1886, 1},
		{0x1ABF, 0x1ACE, 1},
		{0x1DF6, 0x1DFB, 1},
		{0xA82C, 0xA82C, 1},
		{0xA8C5, 0xA8C5, 1},
		{0xA8FF, 0xA8FF, 1},
		{0xA9BD, 0xA9BD, 1},
	},
	R32: []unicode.Range32{
		{0x10D24, 0x10D27, 1},
		{0x10EAB, 0x10EAC, 1},
		{0x10EFD, 0x10EFF, 1},
		{0x10F46, 0x10F50, 1},
		{0x10F82, 0x10F85, 1},
		{0x11070, 0x11070, 1},
		{0x11073, 0x11074, 1},
		{0x110C2, 0x110C2, 1},
		{0x111C9, 0x111C9, 1},
		{0x111CF, 0x111CF, 1},
		{0x1123E, 0x1123E, 1},
		{0x11241, 0x11241, 1},
		{0x1133B, 0x1133B, 1},
		{0x11438, 0x1143F, 1},
		{0x11442, 0x11444, 1},
		{0x11446, 0x11446, 1},
		{0x1145E, 0x1145E, 1},
		{0x1182F, 0x11837, 1},
		{0x11839, 0x1183A, 1},
		{0x1193B, 0x1193C, 1},
		{0x1193E, 0x1193E, 1},
		{0x11943, 0x11943, 1},
		{0x119D4, 0x119D7, 1},
		{0x119DA, 0x119DB, 1},
		{0x119E0, 0x119E0, 1},
		{0x11A01, 0x11A0A, 1},
		{0x11A33, 0x11A38, 1},
		{0x11A3B, 0x11A3E, 1},
		{0x11A47, 0x11A47, 1},
		{0x11A51, 0x11A56, 1},
		{0x11A59, 0x11A5B, 1},
		{0x11A8A, 0x11A96, 1},
		{0x11A98, 0x11A99, 1},
		{0x11C30, 0x11C36, 1},
		{0x11C38, 0x11C3D, 1},
		{0x11C3F, 0x11C3F, 1},
		{0x11C92, 0x11CA7, 1},
		{0x11CAA, 0x11CB0, 1},
		{0x11CB2, 0x11CB3, 1},
		{0x11CB5, 0x11CB6, 1},
		{0x11D31, 0x11D36, 1},
		{0x11D3A, 0x11D3A, 1},
		{0x11D3C, 0x11D3D, 1},
		{0x11D3F, 0x11D45, 1},
		{0x11D47, 0x11D47, 1},
		{0x11D90, 0x11D91, 1},
		{0x11D95, 0x11D95, 1},
		{0x11D97, 0x11D97, 1},
		{0x11EF3, 0x11EF4, 1},
		{0x11F00, 0x11F01, 1},
		{0x11F36, 0x11F3A, 1},
		{0x11F40, 0x11F40, 1},
		{0x11F42, 0x11F42, 1},
		{0x13440, 0x13440, 1},
		{0x13447, 0x13455, 1},
		{0x16F4F, 0x16F4F, 1},
		{0x16FE4, 0x16FE4, 1},
		{0x1CF00, 0x1CF2D, 1},
		{0x1CF30, 0x1CF46, 1},
		{0x1E000, 0x1E006, 1},
		{0x1E008, 0x1E018, 1},
		{0x1E01B, 0x1E021, 1},
		{0x1E023, 0x1E024, 1},
		{0x1E026, 0x1E02A, 1},
		{0x1E08F, 0x1E08F, 1},
		{0x1E130, 0x1E136, 1},
		{0x1E2AE, 0x1E2AE, 1},
		{0x1E2EC, 0x1E2EF, 1},
		{0x1E4EC, 0x1E4EF, 1},
		{0x1E944, 0x1E94A, 1},
	},
}

var hfNewControl = &unicode.RangeTable{
	R16: []unicode.Range16{
		{0x0890, 0x0891, 1},
		{0x08E2, 0x08E2, 1},
	},
	R32: []unicode.Range32{
		{0x110CD, 0x110CD, 1},
		{0x13430, 0x1343F, 1},
	},
}

// hfNewCombining lists the marks (Mn, Mc, Me in Go's tables) that the
// StripAccents normalizer keeps: its is_combining_mark comes from the
// unicode-normalization-alignments crate, whose tables are older than Go's
// (and newer than unicode_categories'). Found like the tables above, with a
// StripAccents + WhitespaceSplit variant of the BERT tokenizer.
var hfNewCombining = &unicode.RangeTable{
	R16: []unicode.Range16{
		{0x07FD, 0x07FD, 1},
		{0x0898, 0x089F, 1},
		{0x08CA, 0x08D3, 1},
		{0x09FE, 0x09FE, 1},
		{0x0AFA, 0x0AFF, 1},
		{0x0B55, 0x0B55, 1},
		{0x0C04, 0x0C04, 1},
		{0x0C3C, 0x0C3C, 1},
		{0x0CF3, 0x0CF3, 1},
		{0x0D00, 0x0D00, 1},
		{0x0D3B, 0x0D3C, 1},
		{0x0D81, 0x0D81, 1},
		{0x0EBA, 0x0EBA, 1},
		{0x0ECE, 0x0ECE, 1},
		{0x1715, 0x1715, 1},
		{0x180F, 0x180F, 1},
		{0x1ABF, 0x1ACE, 1},
		{0x1CF7, 0x1CF7, 1},
		{0x1DF6, 0x1DFA, 1},
		{0xA82C, 0xA82C, 1},
		{0xA8FF, 0xA8FF, 1},
	},
	R32: []unicode.Range32{
		{0x10D24, 0x10D27, 1},
		{0x10EAB, 0x10EAC, 1},
		{0x10EFD, 0x10EFF, 1},
		{0x10F46, 0x10F50, 1},
		{0x10F82, 0x10F85, 1},
		{0x11070, 0x11070, 1},
		{0x11073, 0x11074, 1},
		{0x110C2, 0x110C2, 1},
		{0x11145, 0x11146, 1},
		{0x111C9, 0x111C9, 1},
		{0x111CE, 0x111CF, 1},
		{0x11241, 0x11241, 1},
		{0x1133B, 0x1133B, 1},
		{0x1145E, 0x1145E, 1},
		{0x1182C, 0x1183A, 1},
		{0x11930, 0x11935, 1},
		{0x11937, 0x11938, 1},
		{0x1193B, 0x1193E, 1},
		{0x11940, 0x11940, 1},
		{0x11942, 0x11943, 1},
		{0x119D1, 0x119D7, 1},
		{0x119DA, 0x119E0, 1},
		{0x119E4, 0x119E4, 1},
		{0x11A01, 0x11A0A, 1},
		{0x11A33, 0x11A39, 1},
		{0x11A3B, 0x11A3E, 1},
		{0x11A47, 0x11A47, 1},
		{0x11A51, 0x11A5B, 1},
		{0x11A8A, 0x11A99, 1},
		{0x11D31, 0x11D36, 1},
		{0x11D3A, 0x11D3A, 1},
		{0x11D3C, 0x11D3D, 1},
		{0x11D3F, 0x11D45, 1},
		{0x11D47, 0x11D47, 1},
		{0x11D8A, 0x11D8E, 1},
		{0x11D90, 0x11D91, 1},
		{0x11D93, 0x11D97, 1},
		{0x11EF3, 0x11EF6, 1},
		{0x11F00, 0x11F01, 1},
		{0x11F03, 0x11F03, 1},
		{0x11F34, 0x11F3A, 1},
		{0x11F3E, 0x11F42, 1},
		{0x13440, 0x13440, 1},
		{0x13447, 0x13455, 1},
		{0x16F4F, 0x16F4F, 1},
		{0x16F7F, 0x16F87, 1},
		{0x16FE4, 0x16FE4, 1},
		{0x16FF0, 0x16FF1, 1},
		{0x1CF00, 0x1CF2D, 1},
		{0x1CF30, 0x1CF46, 1},
		{0x1E08F, 0x1E08F, 1},
		{0x1E130, 0x1E136, 1},
		{0x1E2AE, 0x1E2AE, 1},
		{0x1E2EC, 0x1E2EF, 1},
		{0x1E4EC, 0x1E4EF, 1},
	},
}
