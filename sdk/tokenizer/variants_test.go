package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// variant is a test tokenizer made from one of the golden tokenizers by
// replacing some of its components, so that every supported component is
// checked against the reference library, not only the ones real models use.
type variant struct {
	name  string
	base  string            // a goldenTok name
	patch map[string]string // top-level key → replacement JSON
}

var variants = []variant{
	{"nfkc-lower-whitespace-bertproc", "minilm", map[string]string{
		"normalizer":     `{"type":"Sequence","normalizers":[{"type":"NFKC"},{"type":"Lowercase"}]}`,
		"pre_tokenizer":  `{"type":"Whitespace"}`,
		"post_processor": `{"type":"BertProcessing","sep":["[SEP]",102],"cls":["[CLS]",101]}`,
	}},
	{"nfd-strip-seq-template", "minilm", map[string]string{
		"normalizer": `{"type":"Sequence","normalizers":[{"type":"NFD"},{"type":"StripAccents"},{"type":"Lowercase"},` +
			`{"type":"Strip","strip_left":true,"strip_right":true},{"type":"Replace","pattern":{"String":"-"},"content":" dash "}]}`,
		"pre_tokenizer": `{"type":"Sequence","pretokenizers":[{"type":"WhitespaceSplit"},{"type":"Punctuation","behavior":"Isolated"},{"type":"Digits","individual_digits":true}]}`,
		"post_processor": `{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}],` +
			`"pair":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}},{"SpecialToken":{"id":"[MASK]","type_id":1}},{"Sequence":{"id":"B","type_id":1}},{"SpecialToken":{"id":"[SEP]","type_id":1}}],` +
			`"special_tokens":{"[CLS]":{"id":"[CLS]","ids":[101],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[102],"tokens":["[SEP]"]},"[MASK]":{"id":"[MASK]","ids":[103],"tokens":["[MASK]"]}}}`,
	}},
	{"nfkd-regex-split-digits", "minilm", map[string]string{
		"normalizer":     `{"type":"Sequence","normalizers":[{"type":"NFKD"},{"type":"Lowercase"},{"type":"Replace","pattern":{"Regex":"[0-9]+"},"content":"7"}]}`,
		"pre_tokenizer":  `{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\s+"},"behavior":"Removed","invert":false},{"type":"Digits","individual_digits":false},{"type":"Punctuation","behavior":"MergedWithPrevious"}]}`,
		"post_processor": `{"type":"Sequence","processors":[{"type":"BertProcessing","sep":["[SEP]",102],"cls":["[CLS]",101]}]}`,
	}},
	{"punct-next-contiguous-nopost", "minilm", map[string]string{
		"normalizer":     `{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":false,"strip_accents":false,"lowercase":true}`,
		"pre_tokenizer":  `{"type":"Sequence","pretokenizers":[{"type":"WhitespaceSplit"},{"type":"Punctuation","behavior":"MergedWithNext"},{"type":"Split","pattern":{"String":"e"},"behavior":"Contiguous","invert":false}]}`,
		"post_processor": `null`,
	}},
	{"split-invert-added", "minilm", map[string]string{
		"normalizer":    `{"type":"BertNormalizer","clean_text":false,"handle_chinese_chars":true,"strip_accents":true,"lowercase":true}`,
		"pre_tokenizer": `{"type":"Split","pattern":{"Regex":"[a-z]+|[0-9]+"},"behavior":"Removed","invert":true}`,
		"added_tokens": `[{"id":0,"content":"[PAD]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":100,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":101,"content":"[CLS]","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":true},` +
			`{"id":102,"content":"[SEP]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":103,"content":"[MASK]","single_word":false,"lstrip":true,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":30522,"content":"paris","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false},` +
			`{"id":30523,"content":"Emoji","single_word":false,"lstrip":false,"rstrip":true,"normalized":true,"special":false}]`,
	}},
	{"metaspace-first-nosplit", "xlmr_new", map[string]string{
		"pre_tokenizer": `{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}`,
	}},
	{"metaspace-first-after-split", "xlmr_new", map[string]string{
		"normalizer":    `{"type":"Sequence","normalizers":[{"type":"NFKC"},{"type":"Prepend","prepend":"x"}]}`,
		"pre_tokenizer": `{"type":"Sequence","pretokenizers":[{"type":"Punctuation","behavior":"Isolated"},{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":true}]}`,
	}},
	{"cased-bert-singleword-strip", "minilm", map[string]string{
		"normalizer":    `{"type":"Sequence","normalizers":[{"type":"Strip","strip_left":true,"strip_right":false},{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":false}]}`,
		"pre_tokenizer": `{"type":"BertPreTokenizer"}`,
		"added_tokens": `[{"id":0,"content":"[PAD]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":100,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":101,"content":"[CLS]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":102,"content":"[SEP]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":103,"content":"[MASK]","single_word":true,"lstrip":false,"rstrip":false,"normalized":false,"special":true},` +
			`{"id":30522,"content":"is","single_word":true,"lstrip":false,"rstrip":false,"normalized":true,"special":false},` +
			`{"id":30523,"content":"the","single_word":true,"lstrip":false,"rstrip":true,"normalized":false,"special":false}]`,
	}},
	{"metaspace-never-legacy", "xlmr_classic", map[string]string{
		"pre_tokenizer": `{"type":"Metaspace","replacement":"▁","add_prefix_space":false,"prepend_scheme":"never"}`,
	}},
}

func variantGoldenPath() string { return filepath.Join("testdata", "variants.golden.jsonl") }

// variantJSON builds a variant's tokenizer.json.
func variantJSON(t *testing.T, v variant) []byte {
	t.Helper()
	data, err := os.ReadFile(tokenizerPath(v.base))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for k, p := range v.patch {
		if !json.Valid([]byte(p)) {
			t.Fatalf("variant %s: invalid %s JSON", v.name, k)
		}
		doc[k] = json.RawMessage(p)
	}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// variantCases are the inputs each variant is checked on: every golden text
// as a query against another, plus a few truncated pairs.
func variantCases() []goldenCase {
	n := len(goldenTexts)
	var cases []goldenCase
	for i := range n {
		cases = append(cases, goldenCase{Query: goldenTexts[i], Document: goldenTexts[(i*5+2)%n]})
	}
	cases = append(cases,
		goldenCase{Query: "Paris [CLS]  [MASK] paris PARIS Emoji   x", Document: " [CLS] Emoji\t[MASK][SEP]"},
		goldenCase{Query: "this is the thesis; is it theirs? the", Document: "x[MASK]y [MASK] (is) _is_ is\u00e9 the\tend"},
		goldenCase{Query: goldenTexts[2], Document: goldenTexts[42], MaxLength: 16, Truncation: "longest_first"},
		goldenCase{Query: goldenTexts[2], Document: goldenTexts[42], MaxLength: 21, Truncation: "only_second"},
		goldenCase{Query: goldenTexts[2], Document: goldenTexts[42], MaxLength: 33, Truncation: "only_first"})
	return cases
}

type variantGolden struct {
	Variant string `json:"variant"`
	goldenCase
}

// TestVariantsGolden checks the component variants against the reference
// library's answers.
func TestVariantsGolden(t *testing.T) {
	if *update {
		regenerateVariants(t)
	}
	data, err := os.ReadFile(variantGoldenPath())
	if err != nil {
		t.Fatalf("%v (regenerate with -update -tokref PATH)", err)
	}
	byName := map[string][]goldenCase{}
	for line := range bytes.Lines(data) {
		var c variantGolden
		if err := json.Unmarshal(line, &c); err != nil {
			t.Fatal(err)
		}
		byName[c.Variant] = append(byName[c.Variant], c.goldenCase)
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			tok, err := FromBytes(variantJSON(t, v))
			if err != nil {
				t.Fatal(err)
			}
			cases := byName[v.name]
			if len(cases) == 0 {
				t.Fatal("no golden cases (regenerate with -update)")
			}
			for i, c := range cases {
				got, err := tok.EncodePair(c.Query, c.Document, Options{MaxLength: c.MaxLength, Truncation: Truncation(c.Truncation)})
				if (err != nil) != (c.Error != "") {
					t.Fatalf("case %d: error %v, want %q", i, err, c.Error)
				}
				if err != nil {
					continue
				}
				if !slices.Equal(got.IDs, c.InputIDs) || !slices.Equal(got.TypeIDs, c.TokenTypeIDs) || !slices.Equal(got.AttentionMask, c.AttentionMask) {
					t.Fatalf("case %d query %q document %q:\n got ids %v types %v\nwant ids %v types %v",
						i, clip(c.Query), clip(c.Document), got.IDs, got.TypeIDs, c.InputIDs, c.TokenTypeIDs)
				}
			}
		})
	}
}

func regenerateVariants(t *testing.T) {
	t.Helper()
	if *tokrefJS == "" {
		t.Fatal("-update needs -tokref PATH/tokref.js")
	}
	dir := t.TempDir()
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	for _, v := range variants {
		path := filepath.Join(dir, v.name+".json")
		if err := os.WriteFile(path, variantJSON(t, v), 0o644); err != nil {
			t.Fatal(err)
		}
		cases := variantCases()
		for start := 0; start < len(cases); {
			// One tokref run per stretch of cases with the same settings.
			end := start + 1
			for end < len(cases) && cases[end].MaxLength == cases[start].MaxLength && cases[end].Truncation == cases[start].Truncation {
				end++
			}
			var in bytes.Buffer
			for _, c := range cases[start:end] {
				line, _ := json.Marshal(map[string]string{"query": c.Query, "document": c.Document})
				in.Write(append(line, '\n'))
			}
			args := []string{*tokrefJS, path}
			if c := cases[start]; c.MaxLength > 0 {
				args = append(args, "--max-length", fmt.Sprint(c.MaxLength), "--truncation", c.Truncation)
			}
			cmd := exec.Command("node", args...)
			cmd.Stdin = &in
			cmd.Stderr = os.Stderr
			res, err := cmd.Output()
			if err != nil {
				t.Fatalf("variant %s: tokref: %v", v.name, err)
			}
			lines := bytes.Split(bytes.TrimSpace(res), []byte("\n"))
			if len(lines) != end-start {
				t.Fatalf("variant %s: tokref answered %d of %d lines", v.name, len(lines), end-start)
			}
			for i, line := range lines {
				g := variantGolden{Variant: v.name, goldenCase: cases[start+i]}
				if err := json.Unmarshal(line, &g.goldenCase); err != nil {
					t.Fatalf("variant %s: %v", v.name, err)
				}
				if err := enc.Encode(g); err != nil {
					t.Fatal(err)
				}
			}
			start = end
		}
	}
	if err := os.WriteFile(variantGoldenPath(), out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
