package tokenizer

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// loadTok loads one of the golden tokenizers.
func loadTok(tb testing.TB, name string) *Tokenizer {
	tb.Helper()
	tok, err := FromFile(tokenizerPath(name))
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// patched returns a golden tokenizer's JSON with top-level keys replaced.
func patched(tb testing.TB, base string, patch map[string]string) []byte {
	tb.Helper()
	data, err := os.ReadFile(tokenizerPath(base))
	if err != nil {
		tb.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		tb.Fatal(err)
	}
	for k, v := range patch {
		doc[k] = json.RawMessage(v)
	}
	out, err := json.Marshal(doc)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func TestLoadErrors(t *testing.T) {
	f := func(patch map[string]string, want string) {
		t.Helper()
		_, err := FromBytes(patched(t, "minilm", patch))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("patch %v: got error %v, want one containing %q", patch, err, want)
		}
	}
	f(map[string]string{"model": `{"type":"BPE","vocab":{},"merges":[]}`}, `unsupported model "BPE"`)
	f(map[string]string{"model": `{"vocab":{"a":0},"merges":[]}`}, `unsupported model "BPE"`)
	f(map[string]string{"model": `{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}`}, `unsupported model "WordLevel"`)
	f(map[string]string{"model": `null`}, "has no model")
	f(map[string]string{"model": `{"type":"WordPiece","vocab":{"a":0},"unk_token":"[UNK]"}`}, `unk_token "[UNK]" is not in the vocabulary`)
	f(map[string]string{"model": `{"type":"Unigram","vocab":[["a",0.0]],"unk_id":null}`}, "unk_id")
	f(map[string]string{"pre_tokenizer": `{"type":"ByteLevel","add_prefix_space":false}`}, `unsupported pre_tokenizer "ByteLevel"`)
	f(map[string]string{"pre_tokenizer": `{"type":"Sequence","pretokenizers":[{"type":"UnicodeScripts"}]}`}, `unsupported pre_tokenizer "UnicodeScripts"`)
	f(map[string]string{"pre_tokenizer": `{"type":"Split","pattern":{"Regex":"\\s+(?!\\S)"},"behavior":"Removed","invert":false}`}, "unsupported Split regex")
	f(map[string]string{"pre_tokenizer": `{"type":"Split","pattern":{"Regex":"\\bx"},"behavior":"Removed","invert":false}`}, "word boundary")
	f(map[string]string{"pre_tokenizer": `{"type":"Split","pattern":{"String":"x"},"behavior":"Sideways","invert":false}`}, `unsupported Split behavior "Sideways"`)
	f(map[string]string{"pre_tokenizer": `{"type":"Metaspace","prepend_scheme":"sometimes"}`}, "prepend_scheme")
	f(map[string]string{"normalizer": `{"type":"ByteLevel"}`}, `unsupported normalizer "ByteLevel"`)
	f(map[string]string{"normalizer": `{"type":"Sequence","normalizers":[{"type":"Nmt"}]}`}, `unsupported normalizer "Nmt"`)
	f(map[string]string{"normalizer": `{"type":"Precompiled","precompiled_charsmap":"!!!"}`}, "invalid Precompiled charsmap")
	f(map[string]string{"normalizer": `{"type":"Replace","pattern":{},"content":""}`}, "neither String nor Regex")
	f(map[string]string{"post_processor": `{"type":"ByteLevel","trim_offsets":true}`}, `unsupported post_processor "ByteLevel"`)
	f(map[string]string{"post_processor": `{"type":"Sequence","processors":[{"type":"ByteLevel"},{"type":"RobertaProcessing","sep":["</s>",2],"cls":["<s>",0]}]}`}, "Sequence of 2 processors")
	f(map[string]string{"post_processor": `{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"[X]","type_id":0}}],"pair":[],"special_tokens":{}}`}, `special token "[X]" missing`)
	f(map[string]string{"added_tokens": `[{"content":"x"}]`}, "no valid id")
	if _, err := FromBytes([]byte("{not json")); err == nil {
		t.Fatal("invalid JSON loaded")
	}
	if _, err := FromFile("testdata/does-not-exist.json"); err == nil {
		t.Fatal("missing file loaded")
	}
}

func TestOptionErrors(t *testing.T) {
	tok := loadTok(t, "minilm")
	f := func(opt Options, want string) {
		t.Helper()
		_, err := tok.EncodePair("query", "document", opt)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%+v: got %v, want an error containing %q", opt, err, want)
		}
	}
	f(Options{MaxLength: -1}, "negative")
	f(Options{MaxLength: 16, Truncation: "middle_out"}, `unknown truncation strategy "middle_out"`)
	f(Options{MaxLength: 2}, "shorter than the 3 special tokens")
	// The reference library refuses this pair too ("Sequence to truncate too short").
	f(Options{MaxLength: 4, Truncation: OnlySecond}, "too short")
	_, err := tok.EncodePair(strings.Repeat("long query ", 20), "doc", Options{MaxLength: 16, Truncation: OnlySecond})
	if !errors.Is(err, ErrTooShort) {
		t.Fatalf("got %v, want ErrTooShort", err)
	}
}

// TestTruncatePair is the reference library's own truncate_encodings table
// (max_length 7), applied to sequence lengths.
func TestTruncatePair(t *testing.T) {
	f := func(n1, n2, budget int, strategy Truncation, w1, w2 int) {
		t.Helper()
		a, b, err := truncatePair(make([]int32, n1), make([]int32, n2), budget, strategy)
		if err != nil {
			t.Fatalf("%d+%d in %d %s: %v", n1, n2, budget, strategy, err)
		}
		if len(a) != w1 || len(b) != w2 {
			t.Fatalf("%d+%d in %d %s: got %d+%d, want %d+%d", n1, n2, budget, strategy, len(a), len(b), w1, w2)
		}
	}
	lengths := []int{0, 2, 4, 8} // empty, short, medium, long
	want := [4][4][2]int{
		{{0, 0}, {0, 2}, {0, 4}, {0, 7}},
		{{2, 0}, {2, 2}, {2, 4}, {2, 5}},
		{{4, 0}, {4, 2}, {3, 4}, {3, 4}},
		{{7, 0}, {5, 2}, {4, 3}, {3, 4}},
	}
	for i, n1 := range lengths {
		for j, n2 := range lengths {
			f(n1, n2, 7, LongestFirst, want[i][j][0], want[i][j][1])
		}
	}
	f(4, 4, 0, LongestFirst, 0, 0)
	f(8, 8, 0, OnlySecond, 0, 0)
	f(8, 3, 7, OnlyFirst, 4, 3)
	f(3, 8, 7, OnlySecond, 3, 4)
	if _, _, err := truncatePair(make([]int32, 8), make([]int32, 2), 7, OnlySecond); !errors.Is(err, ErrTooShort) {
		t.Fatalf("only_second with a long first: got %v, want ErrTooShort", err)
	}
}

func TestEncodeSingle(t *testing.T) {
	tok := loadTok(t, "minilm")
	e, err := tok.Encode("Hello, World!", Options{})
	if err != nil {
		t.Fatal(err)
	}
	// [CLS] hello , world ! [SEP] with the ids of the uncased BERT vocabulary.
	want := []int32{101, 7592, 1010, 2088, 999, 102}
	if !slices.Equal(e.IDs, want) || !slices.Equal(e.TypeIDs, make([]int32, 6)) {
		t.Fatalf("got %v %v, want %v", e.IDs, e.TypeIDs, want)
	}
	e, err = tok.Encode("Hello, World!", Options{MaxLength: 4})
	if err != nil || !slices.Equal(e.IDs, []int32{101, 7592, 1010, 102}) {
		t.Fatalf("truncated: got %v %v", e.IDs, err)
	}
	if _, err := tok.Encode("Hello, World!", Options{MaxLength: 4, Truncation: OnlySecond}); !errors.Is(err, ErrTooShort) {
		t.Fatalf("only_second on a single sequence: got %v", err)
	}
}

func TestVocabAndTokenID(t *testing.T) {
	f := func(name string, vocab int, tokens map[string]int32) {
		t.Helper()
		tok := loadTok(t, name)
		if tok.VocabSize() != vocab {
			t.Fatalf("%s: VocabSize %d, want %d", name, tok.VocabSize(), vocab)
		}
		for s, want := range tokens {
			if id, ok := tok.TokenID(s); !ok || id != want {
				t.Fatalf("%s: TokenID(%q) = %d %v, want %d", name, s, id, ok, want)
			}
		}
		if _, ok := tok.TokenID("no such token ✗"); ok {
			t.Fatalf("%s: found a token that does not exist", name)
		}
	}
	f("minilm", 30522, map[string]int32{"[PAD]": 0, "[CLS]": 101, "[SEP]": 102, "hello": 7592})
	f("xlmr_classic", 4002, map[string]int32{"<s>": 0, "<pad>": 1, "</s>": 2, "<mask>": 4001})
	if n := loadTok(t, "xlmr_new").AddedTokens(true); n != 4 {
		t.Fatalf("RobertaProcessing adds %d tokens to a pair, want 4", n)
	}
}

func TestAddedMatcher(t *testing.T) {
	m := &addedMatcher{tokens: []addedToken{
		{content: "<mask>", id: 1, lstrip: true},
		{content: "<m", id: 2},
		{content: "[X]", id: 3, rstrip: true},
		{content: "tok", id: 4, singleWord: true},
	}}
	f := func(s string, want ...string) {
		t.Helper()
		var got []string
		m.split(s, func(start, end int, id int32) {
			if id >= 0 {
				got = append(got, "#"+s[start:end])
			} else {
				got = append(got, s[start:end])
			}
		})
		if !slices.Equal(got, want) {
			t.Fatalf("split(%q) = %q, want %q", s, got, want)
		}
	}
	f("")
	f("plain", "plain")
	f("a  <mask> b", "a", "#  <mask>", " b")            // lstrip takes the spaces before
	f("a <mx", "a ", "#<m", "x")                        // leftmost-longest: <m where <mask> is absent
	f("x[X]  y", "x", "#[X]  ", "y")                    // rstrip takes the spaces after
	f("tok mytok tok.", "#tok", " mytok ", "#tok", ".") // single_word needs word boundaries
}

// TestConcurrentEncode encodes the same pairs from several goroutines; with
// -race it also checks the pooled scratch buffers are not shared.
func TestConcurrentEncode(t *testing.T) {
	for _, name := range goldenTok {
		tok := loadTok(t, name)
		pairs := goldenCases()[:60]
		want := make([]Encoding, len(pairs))
		for i, p := range pairs {
			var err error
			if want[i], err = tok.EncodePair(p.Query, p.Document, Options{MaxLength: 64}); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		errs := make(chan string, 4)
		for g := range 4 {
			wg.Go(func() {
				for k := range pairs {
					i := (k + g*13) % len(pairs)
					got, err := tok.EncodePair(pairs[i].Query, pairs[i].Document, Options{MaxLength: 64})
					if err != nil || !slices.Equal(got.IDs, want[i].IDs) || !slices.Equal(got.TypeIDs, want[i].TypeIDs) {
						errs <- name + ": concurrent encoding differs"
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
	}
}

// TestHostileInput: invalid UTF-8, control and zero-width characters and a
// 100 KB document encode without panicking and within max_length.
func TestHostileInput(t *testing.T) {
	big := strings.Repeat("The quick brown fox 狐狸 jumps; ", 100<<10/32)
	inputs := []string{
		"", "\xff\xfe\xfd", "abc\xc3", "\xe2\x82", "\x00\x01\x02", "\u200b\u200c\u200d\ufeff",
		strings.Repeat("\u0301", 500), strings.Repeat("a", 100<<10), big,
		"<s><s></s><mask><mask>", "[CLS][SEP][MASK]", strings.Repeat(" ", 1000),
	}
	for _, name := range goldenTok {
		tok := loadTok(t, name)
		var pairs [][2]string
		for _, x := range inputs {
			pairs = append(pairs, [2]string{x, "short document"}, [2]string{"short query", x})
		}
		pairs = append(pairs, [2]string{big, big})
		for _, p := range pairs {
			q, d := p[0], p[1]
			{
				for _, max := range []int{0, 8, 512} {
					e, err := tok.EncodePair(q, d, Options{MaxLength: max})
					if err != nil {
						t.Fatalf("%s: %q/%q: %v", name, clip(q), clip(d), err)
					}
					if len(e.IDs) != len(e.TypeIDs) || len(e.IDs) != len(e.AttentionMask) || max > 0 && len(e.IDs) > max {
						t.Fatalf("%s: bad lengths %d %d %d (max %d)", name, len(e.IDs), len(e.TypeIDs), len(e.AttentionMask), max)
					}
				}
			}
		}
	}
	// Invalid UTF-8 encodes as its U+FFFD replacement would.
	tok := loadTok(t, "xlmr_new")
	a, _ := tok.EncodePair("x\xffy", "", Options{})
	b, _ := tok.EncodePair("x\uFFFDy", "", Options{})
	if !slices.Equal(a.IDs, b.IDs) {
		t.Fatalf("invalid UTF-8: %v, U+FFFD: %v", a.IDs, b.IDs)
	}
}

// TestEncodePairAllocations keeps the hot path lean: the result's one
// allocation plus a few for the normalizers that cannot use the arena.
func TestEncodePairAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop objects, so allocations are not counted")
	}
	f := func(name string, limit float64) {
		t.Helper()
		tok := loadTok(t, name)
		q, d := goldenTexts[1], goldenTexts[2]+" "+goldenTexts[42]
		tok.EncodePair(q, d, Options{MaxLength: 512}) // warm the pool
		n := testing.AllocsPerRun(100, func() {
			if _, err := tok.EncodePair(q, d, Options{MaxLength: 512}); err != nil {
				t.Fatal(err)
			}
		})
		if n > limit {
			t.Fatalf("%s: %.1f allocations per pair, want at most %.0f", name, n, limit)
		}
	}
	f("minilm", 1)
	f("xlmr_classic", 3)
	f("xlmr_new", 5)
}

// TestBertNormalizerRuneNFD checks the allocation-free, rune-by-rune NFD of
// BertNormalizer against the plain algorithm (whole-text NFD, drop
// non-spacing marks, lowercase), including texts where canonical
// reordering matters (spacing marks with a combining class).
func TestBertNormalizerRuneNFD(t *testing.T) {
	n := &bertNormalizer{cleanText: true, chinese: true, stripAccents: true, lowercase: true}
	plain := func(s string) string {
		cleaned := (&bertNormalizer{cleanText: true, chinese: true}).normalize(s, new(scratch))
		var b []byte
		for _, r := range norm.NFD.String(cleaned) {
			if !isNonspacingMark(r) {
				b = lowerAppend(b, r)
			}
		}
		return string(b)
	}
	inputs := append([]string{
		"x\U0001D165\u0301\U0001D16D\u0300y", "\U0001D15F\U0001D16E", "ḗ\u0328 e\u0301\u0327 Ǻ",
		"한국어 ᄀ 갃 힣", "Ω Å K ﬁ", "\u0F73\u0F75\u0F81",
	}, goldenTexts...)
	for _, s := range inputs {
		if got, want := n.normalize(s, new(scratch)), plain(s); got != want {
			t.Fatalf("%q: got %q, want %q", s, got, want)
		}
	}
}

// TestMaxSecondLengthAndStrict checks the per-request options: the document
// side alone is cut to MaxSecondLength (the query keeps every token), and
// Strict refuses what MaxLength would otherwise truncate, after the document
// cut.
func TestMaxSecondLengthAndStrict(t *testing.T) {
	tok := loadTok(t, "minilm")
	// [CLS] hello , world ! [SEP] a b c d [SEP]
	full, err := tok.EncodePair("Hello, World!", "a b c d", Options{})
	if err != nil || len(full.IDs) != 11 {
		t.Fatalf("full pair: %v %v", full.IDs, err)
	}
	f := func(opt Options, wantLen int, wantErr error) {
		t.Helper()
		e, err := tok.EncodePair("Hello, World!", "a b c d", opt)
		if wantErr != nil {
			if !errors.Is(err, wantErr) {
				t.Errorf("%+v: err %v, want %v", opt, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Errorf("%+v: %v", opt, err)
			return
		}
		if len(e.IDs) != wantLen || !slices.Equal(e.IDs[:len(e.IDs)-1], full.IDs[:len(e.IDs)-1]) || e.IDs[len(e.IDs)-1] != 102 {
			t.Errorf("%+v: got %v, want the first %d-1 ids of %v and [SEP]", opt, e.IDs, wantLen, full.IDs)
		}
	}
	f(Options{MaxSecondLength: 2}, 9, nil)
	f(Options{MaxSecondLength: 4}, 11, nil)
	f(Options{MaxSecondLength: 100}, 11, nil)
	f(Options{MaxSecondLength: 2, MaxLength: 512}, 9, nil)
	f(Options{MaxLength: 10, Strict: true}, 0, ErrTooLong)
	f(Options{MaxLength: 11, Strict: true}, 11, nil)
	f(Options{MaxLength: 10, Strict: true, MaxSecondLength: 3}, 10, nil)
	f(Options{MaxLength: 5, Strict: true, MaxSecondLength: 1}, 0, ErrTooLong)
	if _, err := tok.Encode("Hello, World!", Options{MaxLength: 4, Strict: true}); !errors.Is(err, ErrTooLong) {
		t.Errorf("strict single sequence: %v", err)
	}
}
