package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// The pre-tokenizations the Unigram goldens compose with normalize and
// tokenize. The real ones belong to the tokenizer's pre-tokenizer code; these
// small copies keep the goldens about the normalizer and the model.
const (
	splitWhitespace = "whitespace" // WhitespaceSplit
	splitMetaspace  = "metaspace"  // Metaspace, replacement ▁, add_prefix_space true
)

// testSplit splits normalized text into words as the named pre-tokenizer does.
func testSplit(mode, s string) []string {
	if mode == splitWhitespace {
		return strings.FieldsFunc(s, unicode.IsSpace)
	}
	const meta = "▁"
	s = strings.ReplaceAll(s, " ", meta)
	if s == "" {
		return nil
	}
	if !strings.HasPrefix(s, meta) {
		s = meta + s
	}
	// Split with the delimiter merged into the following word.
	var words []string
	for len(s) > 0 {
		i := strings.Index(s[len(meta):], meta)
		if i < 0 {
			words = append(words, s)
			break
		}
		words = append(words, s[:len(meta)+i])
		s = s[len(meta)+i:]
	}
	return words
}

// testEncode normalizes, splits and tokenizes text.
func testEncode(p *precompiled, u *unigram, mode, text string) []int32 {
	ids := []int32{}
	for _, w := range testSplit(mode, p.normalize(text)) {
		ids = u.appendTokens(ids, w)
	}
	return ids
}

// unigramGolden is one case of testdata/unigram_xlmr.golden.json: the
// reference ids of a text under three configurations of the test tokenizer.
type unigramGolden struct {
	Text         string  `json:"text"`
	Whitespace   []int32 `json:"whitespace"`    // WhitespaceSplit, no byte fallback
	Metaspace    []int32 `json:"metaspace"`     // Metaspace, no byte fallback
	ByteFallback []int32 `json:"byte_fallback"` // WhitespaceSplit, byte fallback
}

// referenceVariant writes the test tokenizer with the given pre-tokenizer and
// byte fallback into dir and returns its path.
func referenceVariant(t *testing.T, dir string, preTokenizer map[string]any, byteFallback bool) string {
	t.Helper()
	raw, err := os.ReadFile(xlmrTokenizerFile)
	if err != nil {
		t.Fatal(err)
	}
	var j map[string]any
	if err := json.Unmarshal(raw, &j); err != nil {
		t.Fatal(err)
	}
	j["pre_tokenizer"] = preTokenizer
	j["model"].(map[string]any)["byte_fallback"] = byteFallback
	out, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("variant-%s-%t.json", preTokenizer["type"], byteFallback))
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// referenceIDs runs the reference encoder over texts.
func referenceIDs(t *testing.T, tokenizerFile string, texts []string) [][]int32 {
	t.Helper()
	var all [][]int32
	for i, line := range runReference(t, "encode", tokenizerFile, texts) {
		var out struct {
			IDs   []int32
			Error string
		}
		if err := json.Unmarshal(line, &out); err != nil || out.Error != "" {
			t.Fatalf("reference on %q: %s (%v)", texts[i], line, err)
		}
		if out.IDs == nil {
			out.IDs = []int32{}
		}
		all = append(all, out.IDs)
	}
	return all
}

func TestUnigramGolden(t *testing.T) {
	const golden = "testdata/unigram_xlmr.golden.json"
	if *updateUnigram {
		texts := readCorpus(t)
		dir := t.TempDir()
		ws := referenceIDs(t, referenceVariant(t, dir, map[string]any{"type": "WhitespaceSplit"}, false), texts)
		ms := referenceIDs(t, referenceVariant(t, dir, map[string]any{"type": "Metaspace", "replacement": "▁", "add_prefix_space": true}, false), texts)
		bf := referenceIDs(t, referenceVariant(t, dir, map[string]any{"type": "WhitespaceSplit"}, true), texts)
		cases := make([]unigramGolden, len(texts))
		for i, s := range texts {
			cases[i] = unigramGolden{Text: s, Whitespace: ws[i], Metaspace: ms[i], ByteFallback: bf[i]}
		}
		writeGolden(t, golden, cases)
	}
	var cases []unigramGolden
	readGolden(t, golden, &cases)
	if len(cases) < 300 {
		t.Fatalf("%s holds %d cases; want at least 300", golden, len(cases))
	}
	charsmap, vocab, unkID := loadTestTokenizer(t)
	p, err := newPrecompiled(charsmap)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := newUnigram(vocab, unkID, false)
	if err != nil {
		t.Fatal(err)
	}
	fallback, err := newUnigram(vocab, unkID, true)
	if err != nil {
		t.Fatal(err)
	}
	f := func(name, text string, u *unigram, mode string, want []int32) {
		t.Helper()
		if got := testEncode(p, u, mode, text); !slices.Equal(got, want) {
			t.Errorf("%s(%+q) = %v; want %v", name, text, got, want)
		}
	}
	unks, bytePieces := 0, 0
	for _, c := range cases {
		f(splitWhitespace, c.Text, plain, splitWhitespace, c.Whitespace)
		f(splitMetaspace, c.Text, plain, splitMetaspace, c.Metaspace)
		f("byte_fallback", c.Text, fallback, splitWhitespace, c.ByteFallback)
		if slices.Contains(c.Whitespace, int32(unkID)) {
			unks++
		}
		if slices.ContainsFunc(c.ByteFallback, func(id int32) bool { return strings.HasPrefix(vocab[id].Piece, "<0x") }) {
			bytePieces++
		}
	}
	// The corpus must exercise unknown characters and byte fallback.
	if unks < 50 || bytePieces < 50 {
		t.Errorf("%d cases with <unk>, %d with byte pieces; want at least 50 each", unks, bytePieces)
	}
}

// pieces makes a vocabulary from alternating pieces and scores.
func pieces(kv ...any) []unigramPiece {
	var v []unigramPiece
	for i := 0; i+1 < len(kv); i += 2 {
		v = append(v, unigramPiece{Piece: kv[i].(string), Score: kv[i+1].(float64)})
	}
	return v
}

func TestUnigramTokenize(t *testing.T) {
	f := func(vocab []unigramPiece, byteFallback bool, word string, want ...int32) {
		t.Helper()
		u, err := newUnigram(vocab, 0, byteFallback)
		if err != nil {
			t.Fatal(err)
		}
		if got := u.tokenize(word); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("tokenize(%+q) = %v; want %v", word, got, want)
		}
		if got := newRefUnigram(vocab, 0, byteFallback).tokenize(word); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("reference tokenize(%+q) = %v; want %v", word, got, want)
		}
	}
	// Hugging Face's doc example: "abcdacdxx" -> abcd, a, cd, xx (fused unk).
	hf := pieces("<unk>", 0.0, "a", 0.0, "b", 0.0, "c", 0.0, "d", 0.0, "cd", 1.0, "ab", 2.0, "abc", 5.0, "abcd", 10.0)
	f(hf, false, "abcdacdxx", 8, 1, 5, 0)
	f(hf, false, "")
	f(hf, false, "x", 0)
	f(hf, false, "xéy", 0)
	f(hf, false, "xay", 0, 1, 0)
	// Ties keep the first candidate: the path found from the earliest start.
	ties := pieces("<unk>", 0.0, "a", -1.0, "b", -1.0, "ab", -2.0, "bc", -2.0, "c", -1.0)
	f(ties, false, "ab", 3)
	f(ties, false, "abc", 1, 4)
	// The <unk> piece itself is fused with the unknown characters around it,
	// and the fused text is looked up as a piece.
	lit := pieces("<unk>", -1.0, "<", -2.0, "u", -2.0, "n", -2.0, "k", -2.0, ">", -2.0, "a", -1.0)
	f(lit, false, "<unk>", 0)
	f(lit, false, "<unk>☃a", 0, 6)
	// Byte fallback: an unknown run becomes its bytes when all have pieces...
	bytes := pieces("<unk>", 0.0, "a", -1.0, "<0xE2>", -5.0, "<0x98>", -5.0, "<0x83>", -5.0, "<0xC3>", -5.0)
	f(bytes, true, "a☃a", 1, 2, 3, 4, 1)
	f(bytes, true, "☃☃", 2, 3, 4, 2, 3, 4)
	// ... and <unk> when one is missing (é is C3 A9; A9 has no piece).
	f(bytes, true, "é☃", 0)
	f(bytes, false, "a☃a", 1, 0, 1)
	// Invalid UTF-8: each invalid byte is an unknown character.
	f(hf, false, "a\xffb", 1, 0, 2)
	f(bytes, true, "\xe2\x98", 2, 3)
	// A later duplicate piece wins.
	dup := pieces("<unk>", 0.0, "a", -1.0, "a", -3.0)
	f(dup, false, "aa", 2, 2)
}

func TestUnigramTokenToID(t *testing.T) {
	u, err := newUnigram(pieces("<unk>", 0.0, "▁the", -1.0, "<0x41>", -2.0), 0, true)
	if err != nil {
		t.Fatal(err)
	}
	f := func(tok string, want int32, wantOK bool) {
		t.Helper()
		if id, ok := u.tokenToID(tok); id != want || ok != wantOK {
			t.Errorf("tokenToID(%q) = %d, %t; want %d, %t", tok, id, ok, want, wantOK)
		}
	}
	f("<unk>", 0, true)
	f("▁the", 1, true)
	f("<0x41>", 2, true)
	f("the", 0, false)
	f("", 0, false)
}

func TestNewUnigramErrors(t *testing.T) {
	f := func(vocab []unigramPiece, unkID int, wantErr string) {
		t.Helper()
		_, err := newUnigram(vocab, unkID, false)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("newUnigram(%v, %d) error = %v; want one containing %q", vocab, unkID, err, wantErr)
		}
	}
	f(nil, 0, "vocabulary is empty")
	f(pieces("a", 0.0), 1, "unk_id 1 is not in the vocabulary")
	f(pieces("a", 0.0), -1, "unk_id -1 is not in the vocabulary")
}

func TestUnigramTokenizeAllocations(t *testing.T) {
	_, vocab, unkID := loadTestTokenizer(t)
	u, err := newUnigram(vocab, unkID, false)
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]int32, 0, 64)
	u.appendTokens(dst, "▁internationalization") // warm the scratch pool
	if n := testing.AllocsPerRun(100, func() { dst = u.appendTokens(dst[:0], "▁internationalization") }); n != 0 {
		t.Errorf("appendTokens into a large enough slice: %v allocations; want 0", n)
	}
}

// refUnigram is a direct, slow transcription of Hugging Face's
// Unigram::encode_optimized and tokenize, with map lookups of every substring
// instead of a trie, to check the real one against.
type refUnigram struct {
	vocab        []unigramPiece
	ids          map[string]int
	minScore     float64
	unkID        int
	byteFallback bool
}

// newRefUnigram indexes vocab for refUnigram.tokenize.
func newRefUnigram(vocab []unigramPiece, unkID int, byteFallback bool) *refUnigram {
	r := &refUnigram{vocab: vocab, ids: map[string]int{}, minScore: vocab[0].Score, unkID: unkID, byteFallback: byteFallback}
	for id, p := range vocab {
		r.ids[p.Piece] = id
		r.minScore = min(r.minScore, p.Score)
	}
	return r
}

// tokenize returns the ids of word.
func (r *refUnigram) tokenize(word string) []int32 {
	vocab, ids, minScore, unkID, byteFallback := r.vocab, r.ids, r.minScore, r.unkID, r.byteFallback
	type node struct {
		id    int
		score float64
		start int
	}
	best := make([]node, len(word)+1)
	for i := range best {
		best[i].start = -1
	}
	charLen := func(i int) int {
		_, n := utf8.DecodeRuneInString(word[i:])
		return n
	}
	for start := 0; start < len(word); start += charLen(start) {
		single := false
		for end := start + 1; end <= len(word); end++ {
			id, ok := ids[word[start:end]]
			if !ok || word[start:end] == "" {
				continue
			}
			score := vocab[id].Score + best[start].score
			if best[end].start < 0 || score > best[end].score {
				best[end] = node{id: id, score: score, start: start}
			}
			single = single || end-start == charLen(start)
		}
		if !single {
			end := start + charLen(start)
			score := minScore - unkPenalty + best[start].score
			if best[end].start < 0 || score > best[end].score {
				best[end] = node{id: unkID, score: score, start: start}
			}
		}
	}
	var pieces []string
	fused := ""
	for end := len(word); end > 0; end = best[end].start {
		n := best[end]
		if n.id == unkID {
			fused = word[n.start:end] + fused
			continue
		}
		if fused != "" {
			pieces = append(pieces, fused)
			fused = ""
		}
		pieces = append(pieces, word[n.start:end])
	}
	if fused != "" {
		pieces = append(pieces, fused)
	}
	slices.Reverse(pieces)
	var out []int32
	for _, p := range pieces {
		if id, ok := ids[p]; ok {
			out = append(out, int32(id))
			continue
		}
		var bs []int32
		for i := 0; byteFallback && i < len(p); i++ {
			id, ok := ids[fmt.Sprintf("<0x%02X>", p[i])]
			if !ok {
				bs = nil
				break
			}
			bs = append(bs, int32(id))
		}
		if bs != nil {
			out = append(out, bs...)
		} else {
			out = append(out, int32(unkID))
		}
	}
	return out
}

func FuzzUnigram(f *testing.F) {
	_, vocab, unkID := loadTestTokenizer(f)
	var models [2]*unigram
	var refs [2]*refUnigram
	for i := range models {
		u, err := newUnigram(vocab, unkID, i == 1)
		if err != nil {
			f.Fatal(err)
		}
		models[i] = u
		refs[i] = newRefUnigram(vocab, unkID, i == 1)
	}
	for _, s := range []string{"", "▁hello", "<unk>☃", "東京", "\xff\xfe", "👨‍👩‍👧‍👦", strings.Repeat("▁a", 40)} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, word string, byteFallback bool) {
		if len(word) > 512 { // the reference is quadratic in the word's length
			word = word[:512]
		}
		u, ref := models[0], refs[0]
		if byteFallback {
			u, ref = models[1], refs[1]
		}
		got := u.tokenize(word)
		if want := ref.tokenize(word); !slices.Equal(got, want) && len(got)+len(want) > 0 {
			t.Fatalf("tokenize(%+q, byte fallback %t) = %v; reference %v", word, byteFallback, got, want)
		}
		for _, id := range got {
			if id < 0 || int(id) >= len(vocab) {
				t.Fatalf("tokenize(%+q) gave id %d outside the vocabulary", word, id)
			}
		}
	})
}

func BenchmarkUnigramTokenize(b *testing.B) {
	charsmap, vocab, unkID := loadTestTokenizer(b)
	p, err := newPrecompiled(charsmap)
	if err != nil {
		b.Fatal(err)
	}
	u, err := newUnigram(vocab, unkID, false)
	if err != nil {
		b.Fatal(err)
	}
	f := func(name, text string) {
		words := testSplit(splitMetaspace, p.normalize(text))
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			dst := make([]int32, 0, 4*len(text))
			for b.Loop() {
				dst = dst[:0]
				for _, w := range words {
					dst = u.appendTokens(dst, w)
				}
			}
		})
	}
	f("english", strings.Repeat("The quick brown fox jumps over the lazy dog near the riverbank. ", 16))
	f("mixed", strings.Repeat("Crème brûlée, 東京は日本の首都です, Привет мир! ", 16))
}

func BenchmarkNewUnigram(b *testing.B) {
	_, vocab, unkID := loadTestTokenizer(b)
	// A vocabulary of XLM-R's size (250,002 pieces): the real one plus
	// generated pieces, to measure load time and trie build.
	const xlmrVocab = 250002
	big := slices.Clone(vocab)
	for i := 0; len(big) < xlmrVocab; i++ {
		big = append(big, unigramPiece{Piece: fmt.Sprintf("▁%s%d", vocab[4+i%(len(vocab)-4)].Piece, i), Score: -20})
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := newUnigram(big, unkID, false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnigramCorpus normalizes, splits on whitespace and tokenizes the
// benchmark documents, one document per op; compare with
// precompiled_bench.js "encode".
func BenchmarkUnigramCorpus(b *testing.B) {
	charsmap, vocab, unkID := loadTestTokenizer(b)
	p, err := newPrecompiled(charsmap)
	if err != nil {
		b.Fatal(err)
	}
	u, err := newUnigram(vocab, unkID, false)
	if err != nil {
		b.Fatal(err)
	}
	docs := benchDocuments(b)
	dst := make([]int32, 0, 4096) // more than any document's tokens
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		dst = dst[:0]
		for _, w := range strings.FieldsFunc(p.normalize(docs[i%len(docs)]), unicode.IsSpace) {
			dst = u.appendTokens(dst, w)
		}
	}
}

// TestUnigramConcurrent encodes the corpus from several goroutines at once
// (run it with -race): the normalizer and the model are shared, read-only,
// and the Viterbi scratch comes from a pool.
func TestUnigramConcurrent(t *testing.T) {
	charsmap, vocab, unkID := loadTestTokenizer(t)
	p, err := newPrecompiled(charsmap)
	if err != nil {
		t.Fatal(err)
	}
	u, err := newUnigram(vocab, unkID, true)
	if err != nil {
		t.Fatal(err)
	}
	texts := readCorpus(t)
	want := make([][]int32, len(texts))
	for i, s := range texts {
		want[i] = testEncode(p, u, splitMetaspace, s)
	}
	const workers = 4 // more goroutines than the test machine's cores
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range texts {
				k := (i + w*len(texts)/workers) % len(texts) // each worker starts elsewhere
				if got := testEncode(p, u, splitMetaspace, texts[k]); !slices.Equal(got, want[k]) {
					errs <- fmt.Errorf("worker %d, %+q: %v; want %v", w, texts[k], got, want[k])
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestUnigramLongWord tokenizes 100 KB words (a document without spaces):
// the pieces must spell the word back, and unknown characters must come out
// as byte pieces with byte fallback.
func TestUnigramLongWord(t *testing.T) {
	_, vocab, unkID := loadTestTokenizer(t)
	u, err := newUnigram(vocab, unkID, true)
	if err != nil {
		t.Fatal(err)
	}
	f := func(word string) {
		t.Helper()
		var sb strings.Builder
		for _, id := range u.tokenize(word) {
			p := vocab[id].Piece
			if len(p) == 6 && strings.HasPrefix(p, "<0x") {
				var b byte
				if _, err := fmt.Sscanf(p, "<0x%02X>", &b); err != nil {
					t.Fatal(err)
				}
				sb.WriteByte(b)
				continue
			}
			if id == int32(unkID) {
				t.Fatalf("unk in a word whose characters all have byte pieces or pieces")
			}
			sb.WriteString(p)
		}
		if sb.String() != word {
			t.Errorf("pieces of a %d-byte word spell a %d-byte text", len(word), sb.Len())
		}
	}
	const size = 100 << 10 // 100 KiB, the largest document
	f("▁" + strings.Repeat("internationalization", size/20))
	f(strings.Repeat("東京は日本の首都です", size/30))
}
