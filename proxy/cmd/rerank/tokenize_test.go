package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tokenizerTestdata is where sdk/tokenizer keeps its test tokenizers and the
// reference library's answers for them.
var tokenizerTestdata = filepath.Join("..", "..", "..", "sdk", "tokenizer", "testdata")

// TestTokenizeMatchesReference feeds the golden inputs of each setting to
// the command and expects the reference tool's output lines byte for byte
// (ids, type ids, masks), or an error line where tokref gave one.
func TestTokenizeMatchesReference(t *testing.T) {
	f := func(name string, maxLen int, truncation string, limit int) {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(tokenizerTestdata, name+".golden.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		var in, want bytes.Buffer
		n := 0
		for line := range bytes.Lines(data) {
			var c struct {
				Query         string  `json:"query"`
				Document      string  `json:"document"`
				MaxLength     int     `json:"max_length"`
				Truncation    string  `json:"truncation"`
				InputIDs      []int32 `json:"input_ids"`
				TokenTypeIDs  []int32 `json:"token_type_ids"`
				AttentionMask []int32 `json:"attention_mask"`
				Error         string  `json:"error"`
			}
			if err := json.Unmarshal(line, &c); err != nil {
				t.Fatal(err)
			}
			if c.MaxLength != maxLen || maxLen > 0 && c.Truncation != truncation || n == limit {
				continue
			}
			n++
			q, _ := json.Marshal(map[string]string{"query": c.Query, "document": c.Document})
			in.Write(append(q, '\n'))
			if c.Error != "" {
				want.WriteString("error\n")
				continue
			}
			w, _ := json.Marshal(tokenizeOutput{c.InputIDs, c.TokenTypeIDs, c.AttentionMask})
			want.Write(append(w, '\n'))
		}
		if n == 0 {
			t.Fatalf("%s: no golden cases for max %d %s", name, maxLen, truncation)
		}
		var out bytes.Buffer
		flags := tokenizeFlags{tokenizer: filepath.Join(tokenizerTestdata, name+".tokenizer.json"), maxLength: maxLen, truncation: truncation}
		if err := tokenizeStream(&in, &out, flags); err != nil {
			t.Fatal(err)
		}
		got := bufio.NewScanner(&out)
		exp := bufio.NewScanner(&want)
		for i := 0; exp.Scan(); i++ {
			if !got.Scan() {
				t.Fatalf("%s: output stops at line %d", name, i)
			}
			if exp.Text() == "error" {
				if !strings.HasPrefix(got.Text(), `{"error":`) {
					t.Fatalf("%s line %d: got %s, want an error", name, i, got.Text())
				}
				continue
			}
			if got.Text() != exp.Text() {
				t.Fatalf("%s line %d:\n got %s\nwant %s", name, i, got.Text(), exp.Text())
			}
		}
		if got.Scan() {
			t.Fatalf("%s: extra output %s", name, got.Text())
		}
	}
	f("minilm", 0, "", 80)
	f("xlmr_new", 0, "", 80)
	f("xlmr_classic", 16, "only_second", -1)
	f("minilm", 64, "longest_first", -1)
}

func TestTokenizeBadInput(t *testing.T) {
	tok := filepath.Join(tokenizerTestdata, "minilm.tokenizer.json")
	var out bytes.Buffer
	in := strings.NewReader("{\"query\":\"a\",\"document\":\"b\"}\nnot json\n\n{\"query\":\"x\"}\n")
	if err := tokenizeStream(in, &out, tokenizeFlags{tokenizer: tok}); err != nil {
		t.Fatal(err)
	}
	want := `{"input_ids":[101,1037,102,1038,102],"token_type_ids":[0,0,0,1,1],"attention_mask":[1,1,1,1,1]}` + "\n"
	lines := strings.SplitAfter(out.String(), "\n")
	if len(lines) != 4 || lines[0] != want || !strings.HasPrefix(lines[1], `{"error":"invalid input line`) ||
		lines[2] != `{"input_ids":[101,1060,102,102],"token_type_ids":[0,0,0,1],"attention_mask":[1,1,1,1]}`+"\n" {
		t.Fatalf("got %q", out.String())
	}
	f := func(flags tokenizeFlags, want string) {
		t.Helper()
		err := tokenizeStream(strings.NewReader(""), &out, flags)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%+v: got %v, want an error containing %q", flags, err, want)
		}
	}
	f(tokenizeFlags{tokenizer: "no/such/file.json"}, "cannot read")
	f(tokenizeFlags{tokenizer: tok, truncation: "sideways", maxLength: 8}, "unknown truncation")
	f(tokenizeFlags{tokenizer: tok, maxLength: -3}, "negative")
	if code := runTokenize([]string{"--max-length", "8"}); code != 2 {
		t.Fatalf("missing --tokenizer: exit %d, want 2", code)
	}
}
