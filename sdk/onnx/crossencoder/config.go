// Package crossencoder writes the ONNX graphs of Hugging Face
// BertForSequenceClassification and XLMRobertaForSequenceClassification in
// inference mode, from weights named as the PyTorch checkpoints name them.
//
// Build turns a Config and a Weights source into an fp32 graph with inputs
// input_ids, attention_mask (and token_type_ids for BERT), all int64
// [batch, sequence], and the output logits, float32 [batch, num_labels].
// RandomWeights gives seeded, platform-independent weights for test models,
// and WriteModelDir writes a complete Hugging Face style model directory.
//
// Linear weights arrive in PyTorch layout [out, in]; the graph stores them
// transposed, [in, out], under the same name, because MatMul takes the
// weight as its right operand (the tensor's doc_string says so).
package crossencoder

import (
	"encoding/json"
	"fmt"
)

// The architectures Build supports.
const (
	// ArchBERT is BertForSequenceClassification (model_type "bert").
	ArchBERT = "bert"
	// ArchXLMRoberta is XLMRobertaForSequenceClassification (model_type
	// "xlm-roberta"; RobertaForSequenceClassification has the same graph).
	ArchXLMRoberta = "xlm-roberta"
)

// maxParams caps a Config's parameter count: 2^31 float32s (8 GiB) is far
// above the largest reranker served (bge-reranker-v2-m3, 568M parameters)
// and keeps a typo in a flag from allocating the machine away.
const maxParams = 1 << 31

// maxDim caps each dimension so that ParamCount cannot overflow int64:
// 2^24 is far above any real vocabulary (XLM-R has 250,002 ids) or width.
const maxDim = 1 << 24

// ParamCount returns the number of parameters of c.
func (c Config) ParamCount() int64 {
	h, i := int64(c.Hidden), int64(c.Intermediate)
	emb := (int64(c.VocabSize)+int64(c.MaxPositions)+int64(c.TypeVocabSize))*h + 2*h
	layer := 4*(h*h+h) + (i*h + i) + (h*i + h) + 2*2*h
	head := (h*h + h) + int64(c.NumLabels)*h + int64(c.NumLabels)
	return emb + int64(c.Layers)*layer + head
}

// Config is the shape of a cross-encoder, in Hugging Face config.json terms.
type Config struct {
	// Arch is ArchBERT or ArchXLMRoberta.
	Arch string
	// VocabSize is the number of rows of the word embedding.
	VocabSize int
	// Hidden is the model width (hidden_size).
	Hidden int
	// Layers is the number of encoder layers (num_hidden_layers).
	Layers int
	// Heads is the number of attention heads; it must divide Hidden.
	Heads int
	// Intermediate is the feed-forward width (intermediate_size).
	Intermediate int
	// MaxPositions is the number of rows of the position embedding
	// (max_position_embeddings); XLM-R uses the first PadTokenID+1 rows for
	// nothing, so it serves MaxPositions-PadTokenID-1 tokens.
	MaxPositions int
	// TypeVocabSize is the number of token types (2 for BERT, 1 for XLM-R).
	TypeVocabSize int
	// PadTokenID is the padding token id (0 for BERT, 1 for XLM-R).
	PadTokenID int
	// NumLabels is the number of logits per pair (1 for rerankers).
	NumLabels int
	// LayerNormEps is the LayerNorm epsilon (1e-12 BERT, 1e-5 XLM-R).
	LayerNormEps float64
}

// MaxTokens is the longest sequence the model's position embedding covers.
func (c Config) MaxTokens() int {
	if c.Arch == ArchXLMRoberta {
		return c.MaxPositions - c.PadTokenID - 1
	}
	return c.MaxPositions
}

// Validate reports the first inconsistency in c.
func (c Config) Validate() error {
	if c.Arch != ArchBERT && c.Arch != ArchXLMRoberta {
		return fmt.Errorf("crossencoder: unknown architecture %q (want %q or %q)", c.Arch, ArchBERT, ArchXLMRoberta)
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"vocab size", c.VocabSize}, {"hidden size", c.Hidden}, {"layers", c.Layers},
		{"heads", c.Heads}, {"intermediate size", c.Intermediate}, {"max positions", c.MaxPositions},
		{"type vocab size", c.TypeVocabSize}, {"labels", c.NumLabels},
	} {
		if f.v <= 0 {
			return fmt.Errorf("crossencoder: %s must be positive, got %d", f.name, f.v)
		}
	}
	if c.Hidden%c.Heads != 0 {
		return fmt.Errorf("crossencoder: hidden size %d is not a multiple of the %d heads", c.Hidden, c.Heads)
	}
	if c.PadTokenID < 0 || c.PadTokenID >= c.VocabSize {
		return fmt.Errorf("crossencoder: pad token id %d outside the vocabulary of %d", c.PadTokenID, c.VocabSize)
	}
	if c.MaxTokens() < 2 {
		return fmt.Errorf("crossencoder: %d max positions leave no room for a sequence (pad token id %d)", c.MaxPositions, c.PadTokenID)
	}
	if !(c.LayerNormEps > 0 && c.LayerNormEps < 1) {
		return fmt.Errorf("crossencoder: layer norm epsilon %g outside (0, 1)", c.LayerNormEps)
	}
	for _, d := range []int{c.VocabSize, c.Hidden, c.Layers, c.Intermediate, c.MaxPositions, c.TypeVocabSize, c.NumLabels} {
		if d > maxDim {
			return fmt.Errorf("crossencoder: a dimension of %d is over the limit of %d", d, maxDim)
		}
	}
	if n := c.ParamCount(); n > maxParams {
		return fmt.Errorf("crossencoder: %d parameters, over the limit of %d", n, int64(maxParams))
	}
	return nil
}

// ArchDefaults returns the Hugging Face defaults of an architecture's
// reranker configs: BERT type_vocab_size 2, pad 0, epsilon 1e-12 and 512
// positions; XLM-R type_vocab_size 1, pad 1, epsilon 1e-5 and 514 positions
// (512 tokens past padding_idx); one label. The caller fills in the sizes.
func ArchDefaults(arch string) (Config, error) {
	switch arch {
	case ArchBERT:
		return Config{Arch: arch, TypeVocabSize: 2, PadTokenID: 0, LayerNormEps: 1e-12, MaxPositions: 512, NumLabels: 1}, nil
	case ArchXLMRoberta:
		return Config{Arch: arch, TypeVocabSize: 1, PadTokenID: 1, LayerNormEps: 1e-5, MaxPositions: 514, NumLabels: 1}, nil
	}
	return Config{}, fmt.Errorf("crossencoder: unknown architecture %q (want %q or %q)", arch, ArchBERT, ArchXLMRoberta)
}

// hfConfig is the subset of a Hugging Face config.json that Build needs.
type hfConfig struct {
	ModelType             string            `json:"model_type"`
	Architectures         []string          `json:"architectures"`
	VocabSize             int               `json:"vocab_size"`
	HiddenSize            int               `json:"hidden_size"`
	NumHiddenLayers       int               `json:"num_hidden_layers"`
	NumAttentionHeads     int               `json:"num_attention_heads"`
	IntermediateSize      int               `json:"intermediate_size"`
	MaxPositionEmbeddings int               `json:"max_position_embeddings"`
	TypeVocabSize         *int              `json:"type_vocab_size"`
	PadTokenID            *int              `json:"pad_token_id"`
	LayerNormEps          *float64          `json:"layer_norm_eps"`
	NumLabels             int               `json:"num_labels"`
	ID2Label              map[string]string `json:"id2label"`
	HiddenAct             string            `json:"hidden_act"`
	PositionEmbeddingType string            `json:"position_embedding_type"`
}

// ConfigFromHF reads a Hugging Face config.json of a BERT, RoBERTa or
// XLM-RoBERTa sequence classifier. Missing optional fields take Hugging
// Face's defaults (type_vocab_size 2, pad_token_id 0 or 1, layer_norm_eps
// 1e-12, two labels); what the graph cannot compute (another activation,
// relative positions) is an error.
func ConfigFromHF(configJSON []byte) (Config, error) {
	var h hfConfig
	if err := json.Unmarshal(configJSON, &h); err != nil {
		return Config{}, fmt.Errorf("crossencoder: parse config.json: %w", err)
	}
	c := Config{
		VocabSize:     h.VocabSize,
		Hidden:        h.HiddenSize,
		Layers:        h.NumHiddenLayers,
		Heads:         h.NumAttentionHeads,
		Intermediate:  h.IntermediateSize,
		MaxPositions:  h.MaxPositionEmbeddings,
		TypeVocabSize: 2, // BertConfig's default
		PadTokenID:    0, // BertConfig's default
		NumLabels:     2, // PretrainedConfig's default
		LayerNormEps:  1e-12,
	}
	switch h.ModelType {
	case "bert":
		c.Arch = ArchBERT
	case "xlm-roberta", "roberta":
		c.Arch = ArchXLMRoberta
		c.PadTokenID = 1 // XLMRobertaConfig's default
	default:
		return Config{}, fmt.Errorf("crossencoder: model_type %q is not supported (want bert, roberta or xlm-roberta)", h.ModelType)
	}
	if h.TypeVocabSize != nil {
		c.TypeVocabSize = *h.TypeVocabSize
	}
	if h.PadTokenID != nil {
		c.PadTokenID = *h.PadTokenID
	}
	if h.LayerNormEps != nil {
		c.LayerNormEps = *h.LayerNormEps
	}
	if len(h.ID2Label) > 0 {
		c.NumLabels = len(h.ID2Label)
	} else if h.NumLabels > 0 {
		c.NumLabels = h.NumLabels
	}
	if h.HiddenAct != "" && h.HiddenAct != "gelu" {
		return Config{}, fmt.Errorf("crossencoder: hidden_act %q is not supported (the graph computes exact gelu)", h.HiddenAct)
	}
	if h.PositionEmbeddingType != "" && h.PositionEmbeddingType != "absolute" {
		return Config{}, fmt.Errorf("crossencoder: position_embedding_type %q is not supported (want absolute)", h.PositionEmbeddingType)
	}
	for _, a := range h.Architectures {
		switch a {
		case "BertForSequenceClassification", "XLMRobertaForSequenceClassification", "RobertaForSequenceClassification":
		default:
			return Config{}, fmt.Errorf("crossencoder: architecture %q is not a supported sequence classifier", a)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// architecture is the Hugging Face class name for c.Arch.
func (c Config) architecture() string {
	if c.Arch == ArchXLMRoberta {
		return "XLMRobertaForSequenceClassification"
	}
	return "BertForSequenceClassification"
}

// HFConfig returns config.json for c as Hugging Face writes it, with
// id2label/label2id for NumLabels labels. extra fields are merged in last.
func (c Config) HFConfig(extra map[string]any) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	id2label := map[string]string{}
	label2id := map[string]int{}
	for i := 0; i < c.NumLabels; i++ {
		l := fmt.Sprintf("LABEL_%d", i)
		id2label[fmt.Sprint(i)] = l
		label2id[l] = i
	}
	m := map[string]any{
		"architectures":                []string{c.architecture()},
		"model_type":                   c.Arch,
		"attention_probs_dropout_prob": 0.1,
		"hidden_dropout_prob":          0.1,
		"classifier_dropout":           nil,
		"hidden_act":                   "gelu",
		"hidden_size":                  c.Hidden,
		"id2label":                     id2label,
		"label2id":                     label2id,
		"initializer_range":            0.02,
		"intermediate_size":            c.Intermediate,
		"layer_norm_eps":               c.LayerNormEps,
		"max_position_embeddings":      c.MaxPositions,
		"num_attention_heads":          c.Heads,
		"num_hidden_layers":            c.Layers,
		"pad_token_id":                 c.PadTokenID,
		"position_embedding_type":      "absolute",
		"torch_dtype":                  "float32",
		"type_vocab_size":              c.TypeVocabSize,
		"use_cache":                    true,
		"vocab_size":                   c.VocabSize,
	}
	if c.Arch == ArchXLMRoberta {
		m["bos_token_id"] = 0 // <s> in XLM-R's vocabulary
		m["eos_token_id"] = 2 // </s>
	}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("crossencoder: encode config.json: %w", err)
	}
	return append(b, '\n'), nil
}
