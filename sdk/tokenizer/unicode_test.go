package tokenizer

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"unicode"
)

func TestUnicodeClassesSpotChecks(t *testing.T) {
	f := func(name string, class func(rune) bool, yes, no []rune) {
		t.Helper()
		for _, r := range yes {
			if !class(r) {
				t.Fatalf("%s(%U) = false, want true", name, r)
			}
		}
		for _, r := range no {
			if class(r) {
				t.Fatalf("%s(%U) = true, want false", name, r)
			}
		}
	}
	// U+1ABF (Unicode 14), U+061D (14), U+0890 (14) are newer than the
	// reference library's tables; the others are old.
	f("isNonspacingMark", isNonspacingMark, []rune{0x301, 0x5B0, 0x302A}, []rune{'a', 0x1ABF, 0x903})
	f("isCombiningMark", isCombiningMark, []rune{0x301, 0x903, 0x20DD}, []rune{'a', 0x1ABF})
	f("isBertPunct", isBertPunct, []rune{'$', '~', '.', 0x3002, 0xFF01, 0x2E42}, []rune{'a', ' ', 0x61D, 0x2E50})
	f("isBertControl", isBertControl, []rune{0, 0x7F, 0x85, 0xAD, 0x200B, 0xE000}, []rune{'\t', '\n', '\r', ' ', 0x890, 0x378})
	f("isChineseChar", isChineseChar, []rune{0x4E2D, 0x3400, 0x20000, 0xF900}, []rune{0x3042, 0xAC00, 'a'})
	f("isWordChar", isWordChar, []rune{'a', '_', 0x4E2D, 0x301, 0x200D, 0x24B6}, []rune{' ', '-', 0x3002})
}

// TestUnicodeClassesAgainstTokref re-derives the tables of unicode.go:
// every rune Go puts in a class is run through the reference library inside
// "a" + r + "b" and must be treated as this package's class says. It needs
// node, so it only runs with -tokref.
func TestUnicodeClassesAgainstTokref(t *testing.T) {
	if *tokrefJS == "" {
		t.Skip("needs -tokref PATH/tokref.js (node and the reference library)")
	}
	base := patched(t, "minilm", nil)
	strip := patched(t, "minilm", map[string]string{
		"normalizer": `{"type":"StripAccents"}`, "pre_tokenizer": `{"type":"WhitespaceSplit"}`,
	})
	dir := t.TempDir()
	run := func(tokJSON []byte, runes []rune) [][]int32 {
		t.Helper()
		path := filepath.Join(dir, "tok.json")
		if err := os.WriteFile(path, tokJSON, 0o644); err != nil {
			t.Fatal(err)
		}
		var in bytes.Buffer
		for _, r := range runes {
			line, _ := json.Marshal(map[string]string{"query": "a" + string(r) + "b", "document": ""})
			in.Write(append(line, '\n'))
		}
		cmd := exec.Command("node", *tokrefJS, path)
		cmd.Stdin = &in
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		var res [][]int32
		for line := range bytes.Lines(out) {
			var e struct {
				IDs []int32 `json:"input_ids"`
			}
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatal(err)
			}
			res = append(res, e.IDs[1:len(e.IDs)-2]) // drop [CLS] … [SEP] [SEP]
		}
		return res
	}
	collect := func(tables ...*unicode.RangeTable) []rune {
		var rs []rune
		for r := rune(0x80); r <= unicode.MaxRune; r++ {
			if r < 0xD800 || r > 0xDFFF {
				if unicode.In(r, tables...) {
					rs = append(rs, r)
				}
			}
		}
		return rs
	}
	ab := []int32{11113} // "ab": the rune was removed
	check := func(name string, runes []rune, ids [][]int32, hf func(ids []int32) bool, ours func(rune) bool) {
		t.Helper()
		for i, r := range runes {
			if hf(ids[i]) != ours(r) {
				t.Errorf("%s(%U): reference %v, ours %v", name, r, hf(ids[i]), ours(r))
			}
		}
	}
	removed := func(ids []int32) bool { return slices.Equal(ids, ab) }
	mn := collect(unicode.Mn)
	check("isNonspacingMark", mn, run(base, mn), removed, isNonspacingMark)
	c := collect(unicode.Cc, unicode.Cf, unicode.Co)
	check("isBertControl", c, run(base, c), removed, isBertControl)
	p := collect(unicode.P)
	// Split off as its own word: "a", r, "b" ("a" = 1037, "b" = 1038).
	check("isBertPunct", p, run(base, p), func(ids []int32) bool {
		return len(ids) >= 3 && ids[0] == 1037 && ids[len(ids)-1] == 1038
	}, isBertPunct)
	m := collect(unicode.M)
	check("isCombiningMark", m, run(strip, m), removed, isCombiningMark)
}
