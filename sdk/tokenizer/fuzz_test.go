package tokenizer

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// templateSeq returns, for an encoding laid out by template tmpl, the ids
// of the sequence (A, or B when seqB) and whether the layout around them is
// the template's: every special piece where the template has it, with the
// template's type ids. la and lb are the sequences' lengths.
func templateSeq(e Encoding, tmpl []templatePiece, la, lb int, seqB bool) ([]int32, bool) {
	var seq []int32
	pos := 0
	for _, p := range tmpl {
		n := len(p.special)
		if p.special == nil {
			n = la
			if p.seqB {
				n = lb
			}
		}
		if pos+n > len(e.IDs) {
			return nil, false
		}
		if p.special != nil && !slices.Equal(e.IDs[pos:pos+n], p.special) {
			return nil, false
		}
		for _, ty := range e.TypeIDs[pos : pos+n] {
			if ty != p.typeID {
				return nil, false
			}
		}
		if p.special == nil && p.seqB == seqB {
			seq = e.IDs[pos : pos+n]
		}
		pos += n
	}
	return seq, pos == len(e.IDs)
}

// checkEncoding checks what every encoding must be: three slices of one
// length, ids in the vocabulary, a mask of ones.
func checkEncoding(t *testing.T, tok *Tokenizer, e Encoding) {
	t.Helper()
	if len(e.IDs) != len(e.TypeIDs) || len(e.IDs) != len(e.AttentionMask) {
		t.Fatalf("lengths %d %d %d", len(e.IDs), len(e.TypeIDs), len(e.AttentionMask))
	}
	for i, id := range e.IDs {
		if id < 0 || int(id) >= tok.VocabSize() {
			t.Fatalf("id %d at %d outside the vocabulary of %d: %v", id, i, tok.VocabSize(), e.IDs)
		}
		if e.AttentionMask[i] != 1 {
			t.Fatalf("mask %v", e.AttentionMask)
		}
	}
}

// seqOf returns the ids of text as one sequence, without special tokens.
func seqOf(t *testing.T, tok *Tokenizer, text string) []int32 {
	t.Helper()
	e, err := tok.Encode(text, Options{})
	if err != nil {
		t.Fatalf("Encode(%q): %v", text, err)
	}
	checkEncoding(t, tok, e)
	n := len(e.IDs) - tok.AddedTokens(false)
	a, ok := templateSeq(e, tok.post.single, n, 0, false)
	if !ok || len(a) != n {
		t.Fatalf("Encode(%q) = %v %v: not the single template's layout", text, e.IDs, e.TypeIDs)
	}
	return slices.Clone(a)
}

// isPrefix reports whether p is a prefix of s.
func isPrefix(p, s []int32) bool { return len(p) <= len(s) && slices.Equal(p, s[:len(p)]) }

// FuzzEncodePair encodes any pair with any options with each golden
// tokenizer (WordPiece/BERT and both XLM-R Unigram/SentencePiece files) and
// checks the result against the sequences encoded alone:
//   - the three slices have one length, the ids are in the vocabulary, the
//     mask is all ones;
//   - the layout is the pair template's, around the query's and the
//     document's own tokens, each a prefix of the sequence encoded alone
//     (the document's first cut to MaxSecondLength);
//   - nothing is cut when the pair fits; otherwise the pair is exactly
//     MaxLength long, only_first and only_second cut only their side (or
//     fail with ErrTooShort exactly when that side is too short), and
//     longest_first keeps the shorter side (the query on a tie) whole when
//     it fills at most half of the budget and cuts the longer to the rest,
//     and otherwise gives the shorter side the smaller half of the budget
//     and the longer the larger;
//   - Strict fails with ErrTooLong exactly when the pair does not fit, and
//     options are refused only when MaxLength is below the special tokens;
//   - the result does not change when the tokenizer encodes something else.
func FuzzEncodePair(f *testing.F) {
	toks := make([]*Tokenizer, len(goldenTok))
	for i, name := range goldenTok {
		toks[i] = loadTok(f, name)
	}
	f.Add("what is the capital of France?", "Paris is the capital.", uint16(16), uint8(0), uint8(0), uint8(0))
	f.Add("", "", uint16(0), uint8(0), uint8(1), uint8(1))
	f.Add("<mask> <s>x</s>", "[CLS] 東京\u200d👩‍💻", uint16(5), uint8(1), uint8(2), uint8(2))
	f.Add("e\u0301\xff", strings.Repeat("ab ", 300), uint16(512), uint8(0), uint8(2), uint8(0))
	f.Add("a b c d e f g", "h i", uint16(6), uint8(0), uint8(0), uint8(0))
	f.Add("a b", "h i j k l m n", uint16(7), uint8(3), uint8(4), uint8(1))
	f.Add("a b c", "h i j", uint16(4), uint8(0), uint8(3), uint8(2))
	f.Add("a b c", "h i j", uint16(3), uint8(0), uint8(1), uint8(0))
	f.Add("a b c", "h i j k", uint16(2), uint8(0), uint8(0), uint8(0))
	strategies := []Truncation{LongestFirst, OnlyFirst, OnlySecond}
	f.Fuzz(func(t *testing.T, q, d string, maxLen uint16, maxSecond, flags, which uint8) {
		tok := toks[int(which)%len(toks)]
		added := tok.AddedTokens(true)
		opt := Options{
			MaxLength:       int(maxLen % 1024),
			Truncation:      strategies[int(flags&3)%3],
			MaxSecondLength: int(maxSecond % 64),
			Strict:          flags&4 != 0,
		}
		a, b := seqOf(t, tok, q), seqOf(t, tok, d)
		full, err := tok.EncodePair(q, d, Options{})
		if err != nil {
			t.Fatalf("EncodePair without options: %v", err)
		}
		checkEncoding(t, tok, full)
		if fa, ok := templateSeq(full, tok.post.pair, len(a), len(b), false); !ok || !slices.Equal(fa, a) {
			t.Fatalf("pair %v: the query's part is not %v", full.IDs, a)
		} else if fb, _ := templateSeq(full, tok.post.pair, len(a), len(b), true); !slices.Equal(fb, b) {
			t.Fatalf("pair %v: the document's part is not %v", full.IDs, b)
		}

		e, err := tok.EncodePair(q, d, opt)
		b0 := b
		if opt.MaxSecondLength > 0 && len(b0) > opt.MaxSecondLength {
			b0 = b0[:opt.MaxSecondLength]
		}
		total := len(a) + len(b0)
		budget := opt.MaxLength - added
		fits := opt.MaxLength == 0 || total <= budget
		switch {
		case opt.MaxLength > 0 && opt.MaxLength < added:
			if err == nil || errors.Is(err, ErrTooShort) || errors.Is(err, ErrTooLong) {
				t.Fatalf("max_length %d below %d special tokens: %v", opt.MaxLength, added, err)
			}
			return
		case opt.Strict && !fits:
			if !errors.Is(err, ErrTooLong) {
				t.Fatalf("strict, %d tokens over max_length %d: %v", total+added, opt.MaxLength, err)
			}
			return
		case err != nil:
			side := len(a)
			if opt.Truncation == OnlySecond {
				side = len(b0)
			}
			if !errors.Is(err, ErrTooShort) || opt.Truncation == LongestFirst || fits || budget == 0 || side > total-budget {
				t.Fatalf("unexpected error %v (query %d, document %d, budget %d)", err, len(a), len(b0), budget)
			}
			return
		}
		checkEncoding(t, tok, e)
		saved := Encoding{IDs: slices.Clone(e.IDs), TypeIDs: slices.Clone(e.TypeIDs), AttentionMask: slices.Clone(e.AttentionMask)}
		n := len(e.IDs) - added
		// Find the cut: the query's part is a prefix of a, the document's
		// of b0, and the layout around them is the template's.
		var ta, tb []int32
		found := false
		for la := 0; la <= min(len(a), n); la++ {
			pa, ok := templateSeq(e, tok.post.pair, la, n-la, false)
			pb, _ := templateSeq(e, tok.post.pair, la, n-la, true)
			if ok && isPrefix(pa, a) && isPrefix(pb, b0) {
				ta, tb, found = pa, pb, true
				break
			}
		}
		if !found {
			t.Fatalf("%+v: %v is not the template around prefixes of %v and %v", opt, e.IDs, a, b0)
		}
		if fits {
			if len(ta) != len(a) || len(tb) != len(b0) {
				t.Fatalf("%+v: a pair of %d+%d tokens that fits was cut to %d+%d", opt, len(a), len(b0), len(ta), len(tb))
			}
		} else {
			if len(ta)+len(tb) != budget {
				t.Fatalf("%+v: cut to %d+%d tokens, want %d in all", opt, len(ta), len(tb), budget)
			}
			cutA, cutB := len(ta) < len(a), len(tb) < len(b0)
			switch opt.Truncation {
			case OnlyFirst:
				if cutB && budget > 0 {
					t.Fatalf("only_first cut the document: %d of %d", len(tb), len(b0))
				}
			case OnlySecond:
				if cutA && budget > 0 {
					t.Fatalf("only_second cut the query: %d of %d", len(ta), len(a))
				}
			default:
				// The shorter side (the query on a tie) keeps all its
				// tokens when they fill at most half of the budget, and the
				// longer side gets the rest; otherwise the shorter side gets
				// the smaller half and the longer the larger.
				s, ts, tl := len(a), len(ta), len(tb)
				if len(a) > len(b0) {
					s, ts, tl = len(b0), tl, ts
				}
				wantS, wantL := s, budget-s
				if 2*s > budget {
					wantS, wantL = budget/2, budget-budget/2
				}
				if ts != wantS || tl != wantL {
					t.Fatalf("longest_first cut %d+%d to %d+%d, budget %d: want the shorter side %d, the longer %d",
						len(a), len(b0), len(ta), len(tb), budget, wantS, wantL)
				}
			}
		}
		// The result is the caller's: encoding again must not touch it.
		again, err := tok.EncodePair(d, q, opt)
		if err == nil {
			checkEncoding(t, tok, again)
		}
		if !slices.Equal(saved.IDs, e.IDs) || !slices.Equal(saved.TypeIDs, e.TypeIDs) || !slices.Equal(saved.AttentionMask, e.AttentionMask) {
			t.Fatalf("the encoding changed when the tokenizer was used again")
		}
	})
}

// FuzzEncode encodes any single text with each golden tokenizer: the
// single template around a prefix of the text's tokens, cut to MaxLength
// exactly when it does not fit (only_second fails then, and Strict fails
// with ErrTooLong).
func FuzzEncode(f *testing.F) {
	toks := make([]*Tokenizer, len(goldenTok))
	for i, name := range goldenTok {
		toks[i] = loadTok(f, name)
	}
	f.Add("Hello, [MASK] wörld! 東京 123", uint16(8), uint8(0), uint8(0))
	f.Add("▁▁ <s> </s>\u3000\t\x00", uint16(3), uint8(2), uint8(1))
	f.Add("ﬁ Ǻ e\u0301 \U0001F468\u200d\U0001F469", uint16(0), uint8(4), uint8(2))
	f.Fuzz(func(t *testing.T, text string, maxLen uint16, flags, which uint8) {
		tok := toks[int(which)%len(toks)]
		added := tok.AddedTokens(false)
		opt := Options{MaxLength: int(maxLen % 1024), Truncation: []Truncation{LongestFirst, OnlyFirst, OnlySecond}[int(flags&3)%3], Strict: flags&4 != 0}
		a := seqOf(t, tok, text)
		e, err := tok.Encode(text, opt)
		fits := opt.MaxLength == 0 || len(a)+added <= opt.MaxLength
		switch {
		case opt.MaxLength > 0 && opt.MaxLength < added:
			if err == nil {
				t.Fatalf("max_length %d below %d special tokens accepted", opt.MaxLength, added)
			}
			return
		case opt.Strict && !fits:
			if !errors.Is(err, ErrTooLong) {
				t.Fatalf("strict, %d tokens over %d: %v", len(a)+added, opt.MaxLength, err)
			}
			return
		case !fits && opt.Truncation == OnlySecond:
			if !errors.Is(err, ErrTooShort) {
				t.Fatalf("only_second on one sequence: %v", err)
			}
			return
		case err != nil:
			t.Fatalf("Encode(%q, %+v): %v", text, opt, err)
		}
		checkEncoding(t, tok, e)
		want := len(a)
		if !fits {
			want = opt.MaxLength - added
		}
		got, ok := templateSeq(e, tok.post.single, want, 0, false)
		if !ok || !slices.Equal(got, a[:want]) {
			t.Fatalf("Encode(%q, %+v) = %v: want the template around %v", text, opt, e.IDs, a[:want])
		}
	})
}

// FuzzWordPiece checks the WordPiece model of the BERT tokenizer on any
// word: a word is one unk token or pieces that spell it (the first without
// the continuation prefix, every other with it), each the longest piece of
// the vocabulary at its place; a word is unk only when it is too long or
// some place has no piece.
func FuzzWordPiece(f *testing.F) {
	tok := loadTok(f, "minilm")
	wp := tok.model.(*wordPiece)
	pieces := make(map[int32]string, len(wp.vocab))
	for s, id := range wp.vocab {
		pieces[id] = s
	}
	for _, s := range []string{"", "hello", "unaffable", "##ing", "東京", "ab\xff", "[UNK]", "x" + strings.Repeat("y", 120), "ﬁ"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, w string) {
		sc := new(scratch)
		ids := wp.appendTokens(nil, w, sc)
		if w == "" {
			if len(ids) != 0 {
				t.Fatalf("empty word: %v", ids)
			}
			return
		}
		// longest is the longest piece of the vocabulary at byte start.
		longest := func(start int) int {
			for end := len(w); end > start; end-- {
				p := w[start:end]
				if start > 0 {
					p = wp.prefix + p
				}
				if _, ok := wp.vocab[p]; ok {
					return end
				}
			}
			return -1
		}
		if len(ids) == 1 && ids[0] == wp.unkID && w != "[UNK]" {
			if utf8.RuneCountInString(w) > wp.maxChars {
				return
			}
			for start := 0; start < len(w); {
				end := longest(start)
				if end < 0 {
					return
				}
				start = end
			}
			t.Fatalf("%q is unk, but pieces cover it", w)
		}
		start := 0
		for i, id := range ids {
			p, ok := pieces[id]
			if !ok {
				t.Fatalf("%q: id %d is not a piece", w, id)
			}
			if i > 0 {
				if !strings.HasPrefix(p, wp.prefix) {
					t.Fatalf("%q: continuation piece %q without %q", w, p, wp.prefix)
				}
				p = p[len(wp.prefix):]
			}
			if !strings.HasPrefix(w[start:], p) || p == "" {
				t.Fatalf("%q: piece %d %q does not spell the word at %d", w, i, p, start)
			}
			if end := longest(start); end != start+len(p) {
				t.Fatalf("%q: piece %d %q is not the longest at %d (%d)", w, i, p, start, end)
			}
			start += len(p)
		}
		if start != len(w) {
			t.Fatalf("%q: pieces %v spell only %d bytes", w, ids, start)
		}
	})
}

// FuzzFromBytes loads the BERT tokenizer with one component (normalizer,
// pre-tokenizer, post-processor, added tokens, or the model, with a small
// vocabulary) replaced by any JSON: loading never panics, and a tokenizer
// that loads encodes pairs and single texts to well-formed encodings (ids
// in the vocabulary, three slices of one length, MaxLength respected, the
// special tokens counted by AddedTokens).
func FuzzFromBytes(f *testing.F) {
	base, err := os.ReadFile(tokenizerPath("minilm"))
	if err != nil {
		f.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(base, &doc); err != nil {
		f.Fatal(err)
	}
	// The first 2,000 ids of the vocabulary (the special tokens, the single
	// characters and the commonest words) keep every path of the model
	// while making each load about fifteen times cheaper than the full
	// 30,522, so that the fuzzer (and its corpus, run as seeds in every
	// test run) tries more.
	const keepIDs = 2000
	var model map[string]json.RawMessage
	var vocab map[string]int
	if err := json.Unmarshal(doc["model"], &model); err != nil {
		f.Fatal(err)
	}
	if err := json.Unmarshal(model["vocab"], &vocab); err != nil {
		f.Fatal(err)
	}
	for tok, id := range vocab {
		if id >= keepIDs {
			delete(vocab, tok)
		}
	}
	if model["vocab"], err = json.Marshal(vocab); err != nil {
		f.Fatal(err)
	}
	if doc["model"], err = json.Marshal(model); err != nil {
		f.Fatal(err)
	}
	keys := []string{"normalizer", "pre_tokenizer", "post_processor", "added_tokens", "model"}
	for _, v := range variants {
		for i, k := range keys {
			if p, ok := v.patch[k]; ok {
				f.Add(uint8(i), p, "Hello, [MASK] wörld! 東京 123")
			}
		}
	}
	f.Add(uint8(1), `{"type":"Split","pattern":{"Regex":"[\\s\\d]+\\"},"behavior":"Isolated","invert":true}`, "a1 b2")
	f.Add(uint8(2), `{"type":"BertProcessing","sep":null,"cls":["x"]}`, "")
	f.Add(uint8(2), `{"type":"TemplateProcessing","single":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{}}`, "a b c d e f g h i j k l m n o p q r")
	f.Add(uint8(2), `{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"X","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{"X":{"id":"X","ids":[999999],"tokens":["X"]}}}`, "a")
	f.Add(uint8(4), `{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,"vocab":{"[UNK]":0,"[CLS]":1,"[SEP]":2,"hello":3,"##lo":4,"hel":5,",":6,"!":7}}`, "Hello, hello!")
	f.Add(uint8(4), `{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"","max_input_chars_per_word":0,"vocab":{"[UNK]":7,"[CLS]":101,"[SEP]":102}}`, "abc")
	f.Add(uint8(4), `{"type":"Unigram","unk_id":0,"byte_fallback":false,"vocab":[["<unk>",0],["▁hello",-1],["▁",-2],["h",-3],["e",-3],["l",-3],["o",-3]]}`, "hello hoe")
	f.Add(uint8(4), `{"type":"Unigram","unk_id":null,"byte_fallback":true,"vocab":[["<0x61>",-1],["▁",-2],["b",-3]]}`, "ab c")
	f.Fuzz(func(t *testing.T, which uint8, component, text string) {
		if !json.Valid([]byte(component)) {
			return
		}
		patched := make(map[string]json.RawMessage, len(doc))
		for k, v := range doc {
			patched[k] = v
		}
		patched[keys[int(which)%len(keys)]] = json.RawMessage(component)
		data, err := json.Marshal(patched)
		if err != nil {
			return
		}
		tok, err := FromBytes(data)
		if err != nil {
			return
		}
		for _, maxLen := range []int{0, 16} {
			if maxLen > 0 && maxLen < tok.AddedTokens(true) {
				continue
			}
			e, err := tok.EncodePair(text, "  a b\tc [SEP] ", Options{MaxLength: maxLen})
			if err != nil {
				t.Fatalf("EncodePair(max_length %d): %v", maxLen, err)
			}
			checkEncoding(t, tok, e)
			if maxLen > 0 && len(e.IDs) > maxLen || len(e.IDs) < tok.AddedTokens(true) {
				t.Fatalf("pair of %d tokens, max_length %d, %d special", len(e.IDs), maxLen, tok.AddedTokens(true))
			}
		}
		e, err := tok.Encode(text, Options{MaxLength: 16})
		if 16 >= tok.AddedTokens(false) {
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			checkEncoding(t, tok, e)
			if len(e.IDs) > 16 || len(e.IDs) < tok.AddedTokens(false) {
				t.Fatalf("single of %d tokens, max_length 16, %d special", len(e.IDs), tok.AddedTokens(false))
			}
		}
	})
}

// FuzzBertNormalizer compares BertNormalizer, which works byte by byte on
// ASCII and rune by rune (with its own NFD) on the rest, with the plain
// algorithm on the whole text: clean_text and handle_chinese_chars rune by
// rune, then NFD of the whole text with the non-spacing marks dropped
// (strip_accents), then lowercase; for every combination of the options.
func FuzzBertNormalizer(f *testing.F) {
	for _, s := range []string{"", "Héllo Wörld", "x\U0001D165\u0301\U0001D16D\u0300y", "ḗ\u0328 e\u0301\u0327 Ǻ",
		"한국어 ᄀ 갃 힣", "Ω Å K ﬁ İ", "\u0F73\u0F75\u0F81", "a\x00b\x7f\u200bc\td\u3000e\xff", "東京は日本", "\u0345\u0300Σ"} {
		f.Add(s, uint8(15))
		f.Add(s, uint8(5))
	}
	f.Fuzz(func(t *testing.T, s string, flags uint8) {
		n := &bertNormalizer{cleanText: flags&1 != 0, chinese: flags&2 != 0, stripAccents: flags&4 != 0, lowercase: flags&8 != 0}
		var b []byte
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
				b = append(b, ' ')
				b = utf8.AppendRune(b, r)
				b = append(b, ' ')
				continue
			}
			b = utf8.AppendRune(b, r)
		}
		if n.stripAccents {
			var kept []byte
			for _, r := range norm.NFD.String(string(b)) {
				if !isNonspacingMark(r) {
					kept = utf8.AppendRune(kept, r)
				}
			}
			b = kept
		}
		if n.lowercase {
			var lower []byte
			for _, r := range string(b) {
				lower = lowerAppend(lower, r)
			}
			b = lower
		}
		if got := n.normalize(s, new(scratch)); got != string(b) {
			t.Fatalf("%+v: normalize(%+q) = %+q, want %+q", *n, s, got, b)
		}
	})
}
