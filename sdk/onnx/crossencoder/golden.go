package crossencoder

import (
	"encoding/json"
	"fmt"
	"os"
)

// Golden is a fidelity golden file (plugins/internal/ort/testdata/fidelity/
// *.golden.json, made by testdata/reference/make-goldens.sh): the generated
// test model it was recorded on and, per set, an independent reference's
// scores (transformers.js on onnxruntime-node). Backend authors can check
// their backend against it by rebuilding the model with Config and Seed.
type Golden struct {
	// Model describes the generated model the scores were recorded on.
	Model GoldenModel `json:"model"`
	// MaxLength is the token budget the reference encoded pairs with.
	MaxLength int `json:"max_length"`
	// Reference names the implementation that produced the scores.
	Reference string `json:"reference"`
	// Sets are the query/candidate sets with their reference outputs.
	Sets []GoldenSet `json:"sets"`
}

// GoldenModel is the shape, seed and identity of a golden's model.
type GoldenModel struct {
	Arch          string   `json:"arch"`
	Layers        int      `json:"layers"`
	Hidden        int      `json:"hidden"`
	Heads         int      `json:"heads"`
	Intermediate  int      `json:"intermediate"`
	VocabSize     int      `json:"vocab_size"`
	MaxPositions  int      `json:"max_positions"`
	Labels        int      `json:"labels"`
	TypeVocabSize *int     `json:"type_vocab_size"`
	PadTokenID    *int     `json:"pad_token_id"`
	LayerNormEps  *float64 `json:"layer_norm_eps"`
	// Seed is the RandomWeights seed.
	Seed uint64 `json:"seed"`
	// Tokenizer is the tokenizer.json path relative to the repository root.
	Tokenizer string `json:"tokenizer"`
	// SHA256 is the hex sha256 of the serialized model, to detect a changed
	// builder before comparing scores.
	SHA256 string `json:"model_sha256"`
}

// GoldenSet is one query with its candidates and the reference's outputs.
type GoldenSet struct {
	Query      string    `json:"query"`
	Candidates []string  `json:"candidates"`
	Scores     []float64 `json:"scores"`
	Logits     []float64 `json:"logits"`
	// Encodings are the reference tokenizer's unpadded ids per candidate, so
	// the graph can be checked without a tokenizer.
	Encodings []GoldenEncoding `json:"encodings"`
}

// GoldenEncoding is one pair's token ids as the reference encoded them.
type GoldenEncoding struct {
	InputIDs     []int64 `json:"input_ids"`
	TokenTypeIDs []int64 `json:"token_type_ids"`
}

// ReadGolden reads a golden file.
func ReadGolden(path string) (*Golden, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("crossencoder: %w", err)
	}
	g := &Golden{}
	if err := json.Unmarshal(b, g); err != nil {
		return nil, fmt.Errorf("crossencoder: golden %s: %w", path, err)
	}
	return g, nil
}

// Config rebuilds the model's configuration: the architecture's Hugging
// Face defaults, the golden's sizes, and its explicit overrides.
func (g *Golden) Config() (Config, error) {
	m := g.Model
	c, err := ArchDefaults(m.Arch)
	if err != nil {
		return c, err
	}
	c.VocabSize, c.Hidden, c.Layers, c.Heads, c.Intermediate = m.VocabSize, m.Hidden, m.Layers, m.Heads, m.Intermediate
	if m.MaxPositions > 0 {
		c.MaxPositions = m.MaxPositions
	}
	if m.Labels > 0 {
		c.NumLabels = m.Labels
	}
	if m.TypeVocabSize != nil {
		c.TypeVocabSize = *m.TypeVocabSize
	}
	if m.PadTokenID != nil {
		c.PadTokenID = *m.PadTokenID
	}
	if m.LayerNormEps != nil {
		c.LayerNormEps = *m.LayerNormEps
	}
	return c, nil
}
