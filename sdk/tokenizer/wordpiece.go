package tokenizer

import "unicode/utf8"

// wordPiece is the WordPiece model: greedy longest-match-first over the
// vocabulary, continuation pieces carrying a prefix (##); a word with a part
// that matches nothing, or longer than maxChars characters, is one unk token.
type wordPiece struct {
	vocab    map[string]int32
	prefix   string
	maxChars int
	unkID    int32
}

func (m *wordPiece) appendTokens(dst []int32, w string, sc *scratch) []int32 {
	if w == "" {
		return dst
	}
	if id, ok := m.vocab[w]; ok {
		return append(dst, id) // the common case: the whole word is a piece
	}
	if utf8.RuneCountInString(w) > m.maxChars {
		return append(dst, m.unkID)
	}
	base := len(dst)
	for start := 0; start < len(w); {
		end := len(w)
		found := false
		for start < end {
			var id int32
			var ok bool
			if start == 0 {
				id, ok = m.vocab[w[:end]]
			} else {
				sc.subtok = append(append(sc.subtok[:0], m.prefix...), w[start:end]...)
				id, ok = m.vocab[string(sc.subtok)] // no allocation: map lookup by converted bytes
			}
			if ok {
				dst = append(dst, id)
				found = true
				break
			}
			_, size := utf8.DecodeLastRuneInString(w[start:end])
			end -= size
		}
		if !found {
			return append(dst[:base], m.unkID)
		}
		start = end
	}
	return dst
}

// unigramModel adapts the Unigram model to the model interface.
type unigramModel struct{ u *unigram }

func (m unigramModel) appendTokens(dst []int32, w string, _ *scratch) []int32 {
	return m.u.appendTokens(dst, w)
}
