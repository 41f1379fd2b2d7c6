package crossencoder

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
)

// TestModelNote is the sentence a model dir with random weights carries in
// config.json (and that servers repeat in their logs and health output).
const TestModelNote = "test model with random weights: scores are meaningless"

// TestModelKey is the config.json key marking a model with random weights:
// {"rerank_test_model": {"seed": S, "note": TestModelNote}}.
const TestModelKey = "rerank_test_model"

// DirOptions adjusts WriteModelDir.
type DirOptions struct {
	// TokenizerConfig is a tokenizer_config.json to copy; empty means the
	// one next to the tokenizer.json if there is one, else a generated one.
	TokenizerConfig string
	// SpecialTokensMap is a special_tokens_map.json to copy, found and
	// generated the same way.
	SpecialTokensMap string
	// Write adjusts how onnx/model.onnx is written (external data).
	Write onnx.WriteOptions
	// OpByOp writes the graph as AsOpByOpExport rewrites it: unnamed
	// nodes, LayerNorm spelled out op by op, exporter-style weight names.
	OpByOp bool
}

// seeded is implemented by the weights of RandomWeights.
type seeded interface{ Seed() uint64 }

// WriteModelDir writes a complete Hugging Face style model dir for c and w:
// config.json (HF fields, architectures, id2label, and the TestModelKey
// marker when w came from RandomWeights), tokenizer.json (copied from
// tokenizerJSON), tokenizer_config.json, special_tokens_map.json and
// onnx/model.onnx. model_max_length in tokenizer_config.json is capped at
// what the position embedding covers.
func WriteModelDir(dir string, c Config, w Weights, tokenizerJSON string, opt DirOptions) error {
	tok, err := os.ReadFile(tokenizerJSON)
	if err != nil {
		return fmt.Errorf("crossencoder: read tokenizer: %w", err)
	}
	if n, err := TokenizerVocabSize(tok); err != nil {
		return err
	} else if n > c.VocabSize {
		return fmt.Errorf("crossencoder: tokenizer %s has %d ids but the model's vocabulary is %d", tokenizerJSON, n, c.VocabSize)
	}
	m, err := Build(c, w)
	if err != nil {
		return err
	}
	if opt.OpByOp {
		if err := AsOpByOpExport(m); err != nil {
			return err
		}
	}
	var extra map[string]any
	if s, ok := w.(seeded); ok {
		extra = map[string]any{TestModelKey: map[string]any{"seed": s.Seed(), "note": TestModelNote}}
	}
	cfgJSON, err := c.HFConfig(extra)
	if err != nil {
		return err
	}
	tokCfg, err := tokenizerFile(opt.TokenizerConfig, tokenizerJSON, "tokenizer_config.json", func() map[string]any {
		return defaultTokenizerConfig(c)
	})
	if err != nil {
		return err
	}
	if v, ok := tokCfg["model_max_length"].(float64); !ok || v > float64(c.MaxTokens()) {
		tokCfg["model_max_length"] = c.MaxTokens()
	}
	special, err := tokenizerFile(opt.SpecialTokensMap, tokenizerJSON, "special_tokens_map.json", func() map[string]any {
		return specialTokens(c)
	})
	if err != nil {
		return err
	}
	tokCfgJSON, err := json.MarshalIndent(tokCfg, "", "  ")
	if err != nil {
		return fmt.Errorf("crossencoder: encode tokenizer_config.json: %w", err)
	}
	specialJSON, err := json.MarshalIndent(special, "", "  ")
	if err != nil {
		return fmt.Errorf("crossencoder: encode special_tokens_map.json: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("crossencoder: create model dir: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"config.json", cfgJSON},
		{"tokenizer.json", tok},
		{"tokenizer_config.json", append(tokCfgJSON, '\n')},
		{"special_tokens_map.json", append(specialJSON, '\n')},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o644); err != nil {
			return fmt.Errorf("crossencoder: write %s: %w", f.name, err)
		}
	}
	if err := onnx.WriteModel(filepath.Join(dir, "onnx", "model.onnx"), m, opt.Write); err != nil {
		return fmt.Errorf("crossencoder: %w", err)
	}
	return nil
}

// tokenizerFile reads a JSON object from path, else from name next to the
// tokenizer.json, else returns def().
func tokenizerFile(path, tokenizerJSON, name string, def func() map[string]any) (map[string]any, error) {
	explicit := path != ""
	if !explicit {
		path = filepath.Join(filepath.Dir(tokenizerJSON), name)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return def(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("crossencoder: read %s: %w", name, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("crossencoder: parse %s: %w", path, err)
	}
	if m == nil {
		return nil, fmt.Errorf("crossencoder: %s is not a JSON object", path)
	}
	return m, nil
}

// specialTokens returns special_tokens_map.json for the architecture's
// usual vocabulary.
func specialTokens(c Config) map[string]any {
	if c.Arch == ArchXLMRoberta {
		return map[string]any{"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
			"pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
	}
	return map[string]any{"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]"}
}

// defaultTokenizerConfig returns tokenizer_config.json for the
// architecture's usual tokenizer class.
func defaultTokenizerConfig(c Config) map[string]any {
	m := specialTokens(c)
	m["model_max_length"] = c.MaxTokens()
	m["clean_up_tokenization_spaces"] = true
	if c.Arch == ArchXLMRoberta {
		m["tokenizer_class"] = "XLMRobertaTokenizer"
	} else {
		m["tokenizer_class"] = "BertTokenizer"
		m["do_lower_case"] = true
	}
	return m
}

// TokenizerVocabSize returns one more than the largest token id in a
// tokenizer.json (its model's vocabulary and its added tokens): the least
// vocab_size a model using it needs.
func TokenizerVocabSize(tokenizerJSON []byte) (int, error) {
	var t struct {
		AddedTokens []struct {
			ID int `json:"id"`
		} `json:"added_tokens"`
		Model struct {
			Vocab json.RawMessage `json:"vocab"`
		} `json:"model"`
	}
	if err := json.Unmarshal(tokenizerJSON, &t); err != nil {
		return 0, fmt.Errorf("crossencoder: parse tokenizer.json: %w", err)
	}
	n := 0
	var byToken map[string]int // WordPiece, BPE
	var pieces []json.RawMessage
	switch {
	case len(t.Model.Vocab) == 0:
		return 0, errors.New("crossencoder: tokenizer.json has no model vocabulary")
	case json.Unmarshal(t.Model.Vocab, &byToken) == nil:
		for _, id := range byToken {
			n = max(n, id+1)
		}
	case json.Unmarshal(t.Model.Vocab, &pieces) == nil: // Unigram: [[piece, score], …]
		n = len(pieces)
	default:
		return 0, errors.New("crossencoder: tokenizer.json model vocabulary is neither a map nor a list")
	}
	for _, a := range t.AddedTokens {
		n = max(n, a.ID+1)
	}
	return n, nil
}
