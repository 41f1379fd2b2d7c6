package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/clipperhouse/uax29/v2/graphemes"
)

// updateUnigram regenerates the Precompiled and Unigram goldens from the
// Hugging Face tokenizers library (node and @anush008/tokenizers; the
// TOKREF_DIR environment variable names a folder whose node_modules holds it,
// e.g. a copy of ../shared/tools/tokref after `npm install`).
var updateUnigram = flag.Bool("update-unigram", false, "Regenerate testdata/precompiled_xlmr.golden.json and testdata/unigram_xlmr.golden.json with the reference library found through the TOKREF_DIR environment variable.")

// xlmrTokenizerFile is the test tokenizer: the charsmap and 4,000-piece
// vocabulary of the synthetic XLM-R tokenizer, plus <0x00>..<0xEF> byte pieces.
const xlmrTokenizerFile = "testdata/unigram_xlmr.json"

// testTokenizerJSON is the part of a tokenizer.json these tests read.
type testTokenizerJSON struct {
	Normalizer struct {
		Charsmap string `json:"precompiled_charsmap"`
	} `json:"normalizer"`
	Model struct {
		UnkID int                  `json:"unk_id"`
		Vocab [][2]json.RawMessage `json:"vocab"`
	} `json:"model"`
}

// loadTestTokenizer reads the test tokenizer's charsmap and vocabulary.
func loadTestTokenizer(tb testing.TB) (charsmap []byte, vocab []unigramPiece, unkID int) {
	tb.Helper()
	raw, err := os.ReadFile(xlmrTokenizerFile)
	if err != nil {
		tb.Fatal(err)
	}
	var j testTokenizerJSON
	if err := json.Unmarshal(raw, &j); err != nil {
		tb.Fatal(err)
	}
	charsmap, err = base64.StdEncoding.DecodeString(j.Normalizer.Charsmap)
	if err != nil {
		tb.Fatal(err)
	}
	for _, v := range j.Model.Vocab {
		var p unigramPiece
		if err := json.Unmarshal(v[0], &p.Piece); err != nil {
			tb.Fatal(err)
		}
		if err := json.Unmarshal(v[1], &p.Score); err != nil {
			tb.Fatal(err)
		}
		vocab = append(vocab, p)
	}
	return charsmap, vocab, j.Model.UnkID
}

// testPrecompiled is the test tokenizer's normalizer.
func testPrecompiled(tb testing.TB) *precompiled {
	tb.Helper()
	charsmap, _, _ := loadTestTokenizer(tb)
	p, err := newPrecompiled(charsmap)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// readCorpus returns the test strings of testdata/precompiled_corpus.json.
func readCorpus(tb testing.TB) []string {
	tb.Helper()
	raw, err := os.ReadFile("testdata/precompiled_corpus.json")
	if err != nil {
		tb.Fatal(err)
	}
	var texts []string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20) // corpus lines are far below 1 MiB
	for sc.Scan() {
		var line struct{ Text string }
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			tb.Fatal(err)
		}
		texts = append(texts, line.Text)
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return texts
}

// runReference runs testdata/precompiled_ref.js in mode over tokenizerFile
// with one {"text"} line per text and returns its output lines.
func runReference(t *testing.T, mode, tokenizerFile string, texts []string) [][]byte {
	t.Helper()
	dir := os.Getenv("TOKREF_DIR")
	if dir == "" {
		t.Fatal("-update-unigram needs TOKREF_DIR, a folder whose node_modules holds @anush008/tokenizers")
	}
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, s := range texts {
		if err := enc.Encode(map[string]string{"text": s}); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("node", "testdata/precompiled_ref.js", mode, tokenizerFile)
	cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(dir, "node_modules"))
	cmd.Stdin = &in
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference %s: %v", mode, err)
	}
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if len(lines) != len(texts) {
		t.Fatalf("reference %s: %d lines for %d texts", mode, len(lines), len(texts))
	}
	return lines
}

// writeGolden writes cases as a JSON array with one case per line.
func writeGolden[T any](t *testing.T, path string, cases []T) {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteString("[\n")
	for i, c := range cases {
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false) // keep <unk> and <0xNN> readable
		if err := enc.Encode(c); err != nil {
			t.Fatal(err)
		}
		if i < len(cases)-1 {
			buf.Truncate(buf.Len() - 1) // Encode ends the line; put the comma before it
			buf.WriteString(",\n")
		}
	}
	buf.WriteString("]\n")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readGolden decodes the JSON golden at path into v.
func readGolden(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
}

// precompiledGolden is one case of testdata/precompiled_xlmr.golden.json.
type precompiledGolden struct {
	Text       string `json:"text"`
	Normalized string `json:"normalized"`
}

func TestPrecompiledGolden(t *testing.T) {
	const golden = "testdata/precompiled_xlmr.golden.json"
	if *updateUnigram {
		texts := readCorpus(t)
		var cases []precompiledGolden
		for i, line := range runReference(t, "normalize", xlmrTokenizerFile, texts) {
			var out struct {
				Normalized *string
				Error      string
			}
			if err := json.Unmarshal(line, &out); err != nil || out.Normalized == nil {
				t.Fatalf("reference on %q: %s (%v)", texts[i], line, err)
			}
			cases = append(cases, precompiledGolden{Text: texts[i], Normalized: *out.Normalized})
		}
		writeGolden(t, golden, cases)
	}
	var cases []precompiledGolden
	readGolden(t, golden, &cases)
	if len(cases) < 300 {
		t.Fatalf("%s holds %d cases; want at least 300", golden, len(cases))
	}
	p := testPrecompiled(t)
	changed := 0
	for _, c := range cases {
		got := p.normalize(c.Text)
		if got != c.Normalized {
			t.Errorf("normalize(%+q) = %+q; want %+q", c.Text, got, c.Normalized)
		}
		if c.Normalized != c.Text {
			changed++
		}
	}
	// The corpus is chosen so that most cases exercise the charsmap.
	if changed < len(cases)/2 {
		t.Errorf("only %d of %d golden cases change under normalization", changed, len(cases))
	}
}

func TestPrecompiledNormalize(t *testing.T) {
	p := testPrecompiled(t)
	f := func(in, want string) {
		t.Helper()
		if got := p.normalize(in); got != want {
			t.Errorf("normalize(%+q) = %+q; want %+q", in, got, want)
		}
	}
	f("", "")
	f("plain ascii stays", "plain ascii stays")
	f("Ｈｅｌｌｏ", "Hello")
	f("ﬁ", "fi")
	f("①", "1")
	f("㌀", "アパート")
	f("e\u0301", "é")
	// The grapheme's shortest mapped prefix replaces the whole grapheme: the
	// accent after a fullwidth A is dropped, as Hugging Face does.
	f("Ａ\u0301", "A")
	// A grapheme of 6 bytes or more is transformed character by character.
	f("Ａ\u0301\u0301", "A\u0301\u0301")
	// Invalid UTF-8 is read as U+FFFD first.
	f("a\xffb", p.normalize("a\ufffdb"))
	f("\xe3\x81", p.normalize("\ufffd"))
}

// TestGraphemeEndsAfter checks normalize's segmentation shortcut against
// the segmenter's own iterator over every code point: a character outside the
// Prepend list followed by "a" is a grapheme of its own, and each next
// character the shortcut accepts after a first character of each
// Grapheme_Cluster_Break class ends that grapheme (the rules depend on
// classes only).
func TestGraphemeEndsAfter(t *testing.T) {
	first := func(s string) string {
		it := graphemes.FromString(s)
		it.Next()
		return it.Value()
	}
	probes := []rune{
		'a', '\n', 0x01, // Other, LF, Control
		0x0301, 0x200D, 0x0903, // Extend, ZWJ, SpacingMark
		0x1F1E6, 0x1F600, // Regional_Indicator, Extended_Pictographic
		0x1100, 0xA960, 0x1160, 0x11A8, 0xAC00, 0xAC01, // Hangul L (two blocks), V, T, LV, LVT
		0x094D, 0x0915, // Indic linker and consonant (GB9c)
	}
	accepted := 0
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if utf8.RuneLen(r) < 0 {
			continue // surrogates
		}
		c := string(r)
		if r != '\r' && !isPrepend(r) && first(c+"a") != c {
			t.Errorf("U+%04X followed by a: one grapheme, but not in the Prepend list", r)
		}
		if !graphemeEndsAfter('a', c) {
			continue
		}
		accepted++
		for _, p := range probes {
			if !graphemeEndsAfter(p, c) {
				continue
			}
			if g := first(string(p) + c); g != string(p) {
				t.Errorf("U+%04X after U+%04X: grapheme %+q, but graphemeEndsAfter accepts it", r, p, g)
			}
		}
	}
	// The shortcut must cover the common scripts, or it is useless.
	if accepted < 28000 {
		t.Errorf("graphemeEndsAfter accepts %d next characters; want at least 28,000", accepted)
	}
}

func TestPrecompiledUnchangedDoesNotAllocate(t *testing.T) {
	p := testPrecompiled(t)
	s := strings.Repeat("an unchanged ascii sentence, ", 8)
	if got := p.normalize(s); got != s {
		t.Fatalf("normalize changed %q to %q", s, got)
	}
	if n := testing.AllocsPerRun(100, func() { p.normalize(s) }); n != 0 {
		t.Errorf("normalize of unchanged ASCII text: %v allocations; want 0", n)
	}
}

func TestNewPrecompiledErrors(t *testing.T) {
	f := func(charsmap []byte, wantErr string) {
		t.Helper()
		_, err := newPrecompiled(charsmap)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("newPrecompiled(%x) error = %v; want one containing %q", charsmap, err, wantErr)
		}
	}
	f(nil, "shorter than its 4-byte header")
	f([]byte{1, 0}, "shorter than its 4-byte header")
	f([]byte{8, 0, 0, 0, 1, 2, 3, 4}, "declares a 8-byte trie but holds only 4 bytes")
	f([]byte{0xff, 0xff, 0xff, 0xff}, "declares a 4294967295-byte trie")
	f([]byte{0, 0, 0, 0, 'a', 0xff, 0}, "not valid UTF-8")
}

func TestPrecompiledMalformedTrie(t *testing.T) {
	f := func(units []uint32, table, in string) {
		t.Helper()
		charsmap := binary.LittleEndian.AppendUint32(nil, uint32(len(units)*4))
		for _, u := range units {
			charsmap = binary.LittleEndian.AppendUint32(charsmap, u)
		}
		charsmap = append(charsmap, table...)
		p, err := newPrecompiled(charsmap)
		if err != nil {
			t.Fatalf("newPrecompiled: %v", err)
		}
		// No panic, valid UTF-8 out whatever the trie says.
		if got := p.normalize(in); !utf8.ValidString(got) {
			t.Errorf("normalize(%q) = %q: invalid UTF-8", in, got)
		}
	}
	f(nil, "", "empty trie")
	f([]uint32{0xFFFFFFFF}, "", "offsets beyond the array")
	// Root offset 0; unit 'a' (97) is a leaf pointing at a value beyond the table.
	units := make([]uint32, 128)
	units['a'] = 'a' | dartsLeafBit
	units[0] = 0
	f(units, "x\x00", "abc")
	units['a'] = 'a' | dartsLeafBit
	f(units[:98], "", "a at the end of the array")
}

func FuzzPrecompiled(f *testing.F) {
	charsmap, _, _ := loadTestTokenizer(f)
	p, err := newPrecompiled(charsmap)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"", "Ａ\u0301", "👨‍👩‍👧‍👦", "\r\n\x00", "\xff\xfe", "ｶ\u3099"} {
		f.Add(s, []byte{})
	}
	f.Add("abc", []byte{8, 0, 0, 0, 0, 4, 0, 0, 97, 1, 0, 0, 'x', 0})
	f.Fuzz(func(t *testing.T, s string, raw []byte) {
		out := p.normalize(s)
		if !utf8.ValidString(out) {
			t.Errorf("normalize(%+q) = %+q: invalid UTF-8", s, out)
		}
		// Any charsmap either fails to parse or normalizes without panicking.
		if q, err := newPrecompiled(raw); err == nil {
			if out := q.normalize(s); !utf8.ValidString(out) {
				t.Errorf("normalize(%+q) with charsmap %x = %+q: invalid UTF-8", s, raw, out)
			}
		}
	})
}

func BenchmarkPrecompiledNormalize(b *testing.B) {
	p := testPrecompiled(b)
	f := func(name, s string) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(s)))
			b.ReportAllocs()
			for b.Loop() {
				p.normalize(s)
			}
		})
	}
	f("ascii", strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20))
	f("accents", strings.Repeat("Crème brûlée à la carte, naïve café. ", 20))
	f("cjk", strings.Repeat("東京は日本の首都です。北京欢迎你！", 20))
	f("fullwidth", strings.Repeat("Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ　１２３！？", 20))
}

// benchDocuments joins the corpus lines by a space in groups of 8, as
// testdata/precompiled_bench.js does for the reference timing.
func benchDocuments(tb testing.TB) []string {
	tb.Helper()
	const perDoc = 8 // lines per document: about 1.7 KB documents
	lines := readCorpus(tb)
	var docs []string
	for i := 0; i < len(lines); i += perDoc {
		docs = append(docs, strings.Join(lines[i:min(i+perDoc, len(lines))], " "))
	}
	return docs
}

// BenchmarkPrecompiledCorpus normalizes the benchmark documents, one
// document per op; compare with precompiled_bench.js "normalize".
func BenchmarkPrecompiledCorpus(b *testing.B) {
	p := testPrecompiled(b)
	docs := benchDocuments(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p.normalize(docs[i%len(docs)])
	}
}
