package ort

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/rerank-sidecar/rerank/sdk"
)

// activation maps a model's logit to its score, in float64.
type activation struct {
	// name is what ModelInfo.Activation reports.
	name string
	fn   func(float64) float64
}

// The activations sentence-transformers cross-encoders name, by the last
// segment of their torch class path.
var activations = map[string]activation{
	"identity": {"identity", func(x float64) float64 { return x }},
	"sigmoid":  {"sigmoid", func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }},
	"tanh":     {"tanh", math.Tanh},
}

// activationByName resolves a torch class path such as
// "torch.nn.modules.activation.Sigmoid" (or just "Sigmoid").
func activationByName(class string) (activation, error) {
	short := class
	if i := strings.LastIndexByte(class, '.'); i >= 0 {
		short = class[i+1:]
	}
	if a, ok := activations[strings.ToLower(short)]; ok {
		return a, nil
	}
	return activation{}, fmt.Errorf("ort: activation %q not supported (supported: Identity, Sigmoid, Tanh): %w", class, sdk.ErrInvalidInput)
}

// resolveActivation decides the activation as sentence-transformers'
// CrossEncoder does: config_sentence_transformers.json's activation_fn
// (sentence-transformers 5), else config.json's
// sentence_transformers.activation_fn (4.x), else config.json's
// sbert_ce_default_activation_function (before 4.0), else sigmoid, the
// default for one-label models. source says which file decided.
func resolveActivation(dir string, c modelConfig) (a activation, source string, err error) {
	path := filepath.Join(dir, "config_sentence_transformers.json")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var st struct {
			ActivationFn string `json:"activation_fn"`
		}
		if err := json.Unmarshal(b, &st); err != nil {
			return activation{}, "", fmt.Errorf("ort: cannot parse %s: %v: %w", path, err, sdk.ErrInvalidInput)
		}
		if st.ActivationFn != "" {
			a, err := activationByName(st.ActivationFn)
			return a, "config_sentence_transformers.json", err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return activation{}, "", fmt.Errorf("ort: cannot read %s: %w", path, err)
	}
	if name := c.SentenceTransformers.ActivationFn; name != "" {
		a, err := activationByName(name)
		return a, "config.json sentence_transformers.activation_fn", err
	}
	if name := c.LegacyActivation; name != "" {
		a, err := activationByName(name)
		return a, "config.json sbert_ce_default_activation_function", err
	}
	return activations["sigmoid"], "default for one-label models", nil
}
