package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

const (
	testBertTokenizer = "../../../sdk/onnx/crossencoder/testdata/ms-marco-MiniLM-L6-v2/tokenizer.json"
	testXLMRTokenizer = "../../../sdk/onnx/crossencoder/testdata/xlmr-synthetic/tokenizer_classic.json"
)

func TestTestmodel(t *testing.T) {
	f := func(args []string, arch string, layers int, vocab int) string {
		t.Helper()
		out := filepath.Join(t.TempDir(), "model")
		var stdout, stderr bytes.Buffer
		if code := testmodel(append(args, "--out", out), &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr.String())
		}
		if !strings.Contains(stdout.String(), crossencoder.TestModelNote) {
			t.Errorf("output does not say the scores are meaningless: %q", stdout.String())
		}
		b, err := os.ReadFile(filepath.Join(out, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := crossencoder.ConfigFromHF(b)
		if err != nil {
			t.Fatal(err)
		}
		if c.Arch != arch || c.Layers != layers || c.VocabSize != vocab {
			t.Errorf("%v: config %+v", args, c)
		}
		var raw map[string]any
		json.Unmarshal(b, &raw)
		if _, ok := raw[crossencoder.TestModelKey]; !ok {
			t.Errorf("%v: config.json lacks %s", args, crossencoder.TestModelKey)
		}
		if _, err := onnx.ReadModel(filepath.Join(out, "onnx", "model.onnx")); err != nil {
			t.Fatal(err)
		}
		model, _ := os.ReadFile(filepath.Join(out, "onnx", "model.onnx"))
		return string(model)
	}
	a := f([]string{"--tokenizer", testBertTokenizer, "--seed", "4"}, "bert", 2, 30522)
	b := f([]string{"--tokenizer", testBertTokenizer, "--seed", "4"}, "bert", 2, 30522)
	if a != b {
		t.Error("the same flags wrote different model bytes")
	}
	if c := f([]string{"--tokenizer", testBertTokenizer, "--seed", "5"}, "bert", 2, 30522); c == a {
		t.Error("seeds 4 and 5 wrote the same model")
	}
	f([]string{"--arch", "xlm-roberta", "--tokenizer", testXLMRTokenizer, "--layers", "1", "--hidden", "24",
		"--heads", "3", "--intermediate", "48", "--labels", "2", "--max-positions", "130"}, "xlm-roberta", 1, 4002)
}

func TestTestmodelErrors(t *testing.T) {
	f := func(args []string, code int, want string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if got := testmodel(args, &stdout, &stderr); got != code || !strings.Contains(stderr.String(), want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", args, got, stderr.String(), code, want)
		}
	}
	out := filepath.Join(t.TempDir(), "m")
	f([]string{"--out", out}, 2, "--tokenizer and --out are required")
	f([]string{"--tokenizer", testBertTokenizer}, 2, "--tokenizer and --out are required")
	f([]string{"--tokenizer", testBertTokenizer, "--out", out, "--arch", "gpt2"}, 2, `unknown architecture "gpt2"`)
	f([]string{"--tokenizer", testBertTokenizer, "--out", out, "--hidden", "30", "--heads", "4"}, 2, "not a multiple")
	f([]string{"--tokenizer", testBertTokenizer, "--out", out, "--layers", "-1"}, 2, "must be positive")
	f([]string{"--tokenizer", testBertTokenizer, "--out", out, "--vocab-size", "100"}, 1, "vocabulary is 100")
	f([]string{"--tokenizer", "/nonexistent/tokenizer.json", "--out", out}, 1, "no such file")
	f([]string{"--tokenizer", testBertTokenizer, "--out", out, "extra"}, 2, "unexpected arguments")
	f([]string{"--layers", "x"}, 2, "invalid value")
	f([]string{"-h"}, 0, "--tokenizer")
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed run left a model dir behind")
	}
}
