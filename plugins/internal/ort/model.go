package ort

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rerank-sidecar/rerank/sdk"
)

// modelFile is the weights file a Load runs, and what it holds. This is the
// seam where other precisions and sources (converted FP16/BF16/INT8 graphs,
// safetensors) plug in: resolveModel decides, the engine only runs the result.
type modelFile struct {
	// Path is the ONNX file handed to ONNX Runtime.
	Path string
	// Precision is the precision the file computes in.
	Precision sdk.Precision
	// Quantization describes the file's quantization, "none" for none.
	Quantization string
	// Source is where the weights came from, as sdk.ModelInfo.Source says.
	Source string
	// Revision is the sha256 of the file, hex encoded, combined with the
	// sha256 of each external data file the graph references when it has
	// any; set by inspect.
	Revision string
	// Details are facts for ModelInfo.Details: the variant file used, the
	// conversion cache entry, what a conversion did.
	Details map[string]string
	// inspected is what inspect found, once it has run: a second call
	// returns it without reading the files again.
	inspected *graphIO
}

// onnxCandidates are the model files looked for, in order, relative to the
// model directory: the layout Hugging Face repositories with ONNX exports use
// (onnx/model.onnx), then a bare model.onnx.
var onnxCandidates = []string{filepath.Join("onnx", "model.onnx"), "model.onnx"}

// resolveModel picks the model file for cfg on provider p. The precision
// (empty: fp32) must be one p executes (supportMatrix), else the error lists
// those it does. Then, in order: a variant file the repository ships for
// that precision (onnx/model_fp16.onnx, …) is used as is; an fp32 ONNX
// export is used as is for fp32 and converted otherwise; a safetensors
// checkpoint with config.json is built into a graph at the precision.
// Converted graphs live in the conversion cache (precision.go).
func resolveModel(cfg sdk.LoadConfig, p Provider) (modelFile, error) {
	if cfg.ModelDir == "" {
		return modelFile{}, fmt.Errorf("ort: no model directory given: %w", sdk.ErrInvalidInput)
	}
	prec, err := checkPrecision(p, cfg.Precision)
	if err != nil {
		return modelFile{}, err
	}
	for _, rel := range variantFiles[prec] {
		path := filepath.Join(cfg.ModelDir, rel)
		ok, err := isFile(path)
		if err != nil {
			return modelFile{}, err
		}
		if ok {
			q := "none"
			if prec == sdk.INT8 {
				q = "int8 (as shipped in " + filepath.Base(rel) + ")"
			}
			return withNote(modelFile{Path: path, Precision: prec, Quantization: q, Source: "variant file",
				Details: map[string]string{"variant_file": rel}}, p), nil
		}
	}
	src, err := findSource(cfg.ModelDir)
	if err != nil {
		return modelFile{}, err
	}
	if src.kind == "onnx" && prec == sdk.FP32 {
		return modelFile{Path: src.onnxPath, Precision: sdk.FP32, Quantization: "none", Source: "onnx"}, nil
	}
	mf, err := convertedModel(cfg, src, prec)
	if err != nil {
		return modelFile{}, err
	}
	return withNote(mf, p), nil
}

// inspect reads the model file once: it hashes it, and every external data
// file its graph references, into m.Revision and returns the graph's
// declared inputs and outputs. New weights behind an unchanged graph are a
// new revision, so nothing keyed on it (the score cache) outlives them.
func (m *modelFile) inspect() (graphIO, error) {
	if m.inspected != nil {
		return *m.inspected, nil
	}
	gio, err := m.readIdentity()
	if err == nil {
		m.inspected = &gio
	}
	return gio, err
}

func (m *modelFile) readIdentity() (graphIO, error) {
	f, err := os.Open(m.Path)
	if err != nil {
		return graphIO{}, fmt.Errorf("ort: cannot open model file: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	gio, err := scanGraphIO(io.TeeReader(f, h))
	if err != nil {
		return graphIO{}, fmt.Errorf("ort: %s is not a readable ONNX model: %v: %w", m.Path, err, sdk.ErrInvalidInput)
	}
	if len(gio.externalData) == 0 {
		m.Revision = hex.EncodeToString(h.Sum(nil))
		return gio, nil
	}
	// The graph's hash, then each data file's name and hash, in a fixed
	// order.
	id := sha256.New()
	id.Write(h.Sum(nil))
	locs := slices.Sorted(slices.Values(gio.externalData))
	for _, loc := range locs {
		sum, err := hashExternalData(filepath.Dir(m.Path), loc)
		if err != nil {
			return graphIO{}, err
		}
		fmt.Fprintf(id, "%s\x00%x\x00", loc, sum)
	}
	m.Revision = hex.EncodeToString(id.Sum(nil))
	if m.Details == nil {
		m.Details = map[string]string{}
	}
	m.Details["external_data"] = strings.Join(locs, ",")
	return gio, nil
}

// externalDataPath is the file an external data location names: a path
// relative to dir, which it must not leave (ONNX Runtime refuses the same).
func externalDataPath(dir, loc string) (string, error) {
	if loc == "" || filepath.IsAbs(loc) || !filepath.IsLocal(filepath.FromSlash(loc)) {
		return "", fmt.Errorf("ort: external data location %q is outside the model directory: %w", loc, sdk.ErrInvalidInput)
	}
	return filepath.Join(dir, filepath.FromSlash(loc)), nil
}

// hashExternalData returns the sha256 of the external data file loc.
func hashExternalData(dir, loc string) ([]byte, error) {
	p, err := externalDataPath(dir, loc)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("ort: the graph's external data %s: %v: %w", loc, err, sdk.ErrInvalidInput)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("ort: cannot read external data %s: %w", p, err)
	}
	return h.Sum(nil), nil
}

// modelConfig is the part of a Hugging Face config.json the engine reads.
type modelConfig struct {
	// ModelType is "bert", "xlm-roberta", ….
	ModelType string `json:"model_type"`
	// MaxPositionEmbeddings is the size of the position embedding table.
	MaxPositionEmbeddings int `json:"max_position_embeddings"`
	// PadTokenID is the padding token; nil when the config has none.
	PadTokenID *int64 `json:"pad_token_id"`
	// ID2Label names the classifier's labels.
	ID2Label map[string]string `json:"id2label"`
	// NumLabels is the label count when id2label is absent.
	NumLabels int `json:"num_labels"`
	// SentenceTransformers holds the activation sentence-transformers 4.x
	// saves into config.json.
	SentenceTransformers struct {
		ActivationFn string `json:"activation_fn"`
	} `json:"sentence_transformers"`
	// LegacyActivation is where sentence-transformers before 4.0 kept it.
	LegacyActivation string `json:"sbert_ce_default_activation_function"`
	// TestModel marks a model written with random weights by rerank
	// testmodel (crossencoder.TestModelKey); its note says scores are
	// meaningless.
	TestModel *struct {
		Note string `json:"note"`
	} `json:"rerank_test_model"`
}

// readModelConfig reads dir/config.json.
func readModelConfig(dir string) (modelConfig, error) {
	var c modelConfig
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("ort: model directory needs config.json: %v: %w", err, sdk.ErrInvalidInput)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("ort: cannot parse %s: %v: %w", path, err, sdk.ErrInvalidInput)
	}
	return c, nil
}

// padID is the token id used for padding: the config's pad_token_id, else 0
// (BERT's [PAD]).
func (c modelConfig) padID() int64 {
	if c.PadTokenID != nil {
		return *c.PadTokenID
	}
	return 0
}

// labelCount is the number of classifier labels the config declares; 0 when
// it declares none.
func (c modelConfig) labelCount() int {
	if len(c.ID2Label) > 0 {
		return len(c.ID2Label)
	}
	return c.NumLabels
}

// positionLimit is the longest sequence the position embeddings cover, or 0
// when the config does not say. RoBERTa-family models (XLM-R among them)
// number positions from padding_idx+1, so they lose that many slots.
func (c modelConfig) positionLimit() int {
	if c.MaxPositionEmbeddings <= 0 {
		return 0
	}
	switch c.ModelType {
	case "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert":
		return c.MaxPositionEmbeddings - int(c.padID()) - 1
	}
	return c.MaxPositionEmbeddings
}

// defaultMaxLength is the pair length applied when the load asks for none:
// the usual cross-encoder limit.
const defaultMaxLength = 512

// maxLength returns the pair length to apply: requested (default 512),
// capped by what the position embeddings cover; capped reports whether the
// cap applied.
func (c modelConfig) maxLength(requested int) (n int, capped bool, err error) {
	if requested < 0 {
		return 0, false, fmt.Errorf("ort: max length %d is negative: %w", requested, sdk.ErrInvalidInput)
	}
	n = requested
	if n == 0 {
		n = defaultMaxLength
	}
	if lim := c.positionLimit(); lim > 0 && n > lim {
		return lim, requested != 0, nil
	}
	return n, false, nil
}
