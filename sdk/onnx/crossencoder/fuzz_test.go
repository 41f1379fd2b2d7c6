package crossencoder_test

import (
	"os"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// FuzzConfigFromHF feeds arbitrary config.json bytes: ConfigFromHF must
// return an error or a config that validates, never panic.
func FuzzConfigFromHF(f *testing.F) {
	for _, path := range []string{"testdata/ms-marco-MiniLM-L6-v2/config.json", "testdata/bge-reranker-large/config.json"} {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"model_type": "bert", "hidden_size": -8, "num_attention_heads": 0}`))
	f.Add([]byte(`{"model_type": "xlm-roberta", "pad_token_id": 9999999999}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := crossencoder.ConfigFromHF(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ConfigFromHF returned an invalid config %+v: %v", c, err)
		}
		if c.ParamCount() <= 0 {
			t.Fatalf("config %+v has %d parameters", c, c.ParamCount())
		}
	})
}

// FuzzTokenizerVocabSize feeds arbitrary tokenizer.json bytes.
func FuzzTokenizerVocabSize(f *testing.F) {
	f.Add([]byte(`{"model": {"vocab": {"a": 0, "b": 7}}, "added_tokens": [{"id": 9}]}`))
	f.Add([]byte(`{"model": {"vocab": [["a", 0.0], ["b", -1.5]]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := crossencoder.TokenizerVocabSize(b)
		if err == nil && n < 0 {
			t.Fatalf("negative vocabulary size %d", n)
		}
	})
}
