package ort

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// fidelityGolden is a testdata/fidelity/*.golden.json file: the generated
// model it was recorded on and, per set, the reference scores of an
// independent implementation (transformers.js on onnxruntime-node).
type fidelityGolden struct {
	Model struct {
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
		Seed          uint64   `json:"seed"`
		// Tokenizer is the tokenizer.json path relative to the repository root.
		Tokenizer   string `json:"tokenizer"`
		ModelSHA256 string `json:"model_sha256"`
	} `json:"model"`
	MaxLength int    `json:"max_length"`
	Reference string `json:"reference"`
	Sets      []struct {
		Query      string    `json:"query"`
		Candidates []string  `json:"candidates"`
		Scores     []float64 `json:"scores"`
	} `json:"sets"`
}

// config rebuilds the crossencoder configuration: the architecture's
// Hugging Face defaults, the golden's sizes, and its explicit overrides.
func (g *fidelityGolden) config() (crossencoder.Config, error) {
	m := g.Model
	c, err := crossencoder.ArchDefaults(m.Arch)
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

// TestFidelity rebuilds each golden's model from its recorded shape and
// seed, scores every set as one batch through the engine, and compares with
// the reference scores.
func TestFidelity(t *testing.T) {
	requireRuntime(t)
	paths, err := filepath.Glob(filepath.Join("testdata", "fidelity", "*.golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no testdata/fidelity/*.golden.json files")
	}
	for _, path := range paths {
		name := strings.TrimSuffix(filepath.Base(path), ".golden.json")
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var g fidelityGolden
			if err := json.Unmarshal(b, &g); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			c, err := g.config()
			if err != nil {
				t.Fatal(err)
			}
			if testing.Short() && c.Hidden*c.Layers > 256 {
				t.Skipf("-short: %d×%d model", c.Layers, c.Hidden)
			}
			dir := t.TempDir()
			tok := filepath.Join("..", "..", "..", filepath.FromSlash(g.Model.Tokenizer))
			if err := crossencoder.WriteModelDir(dir, c, crossencoder.RandomWeights(c, g.Model.Seed), tok, crossencoder.DirOptions{}); err != nil {
				t.Fatal(err)
			}
			e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
			info, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, MaxLength: g.MaxLength})
			if err != nil {
				t.Fatal(err)
			}
			if g.Model.ModelSHA256 != "" && info.Details["model_sha256"] != g.Model.ModelSHA256 {
				t.Fatalf("rebuilt model has sha256 %s; the golden was recorded on %s", info.Details["model_sha256"], g.Model.ModelSHA256)
			}
			compared := 0
			for i, set := range g.Sets {
				pairs := make([]sdk.Pair, len(set.Candidates))
				for j, d := range set.Candidates {
					pairs[j] = sdk.Pair{Query: set.Query, Document: d}
				}
				got, err := e.Score(context.Background(), pairs)
				if err != nil {
					t.Fatalf("set %d: %v", i, err)
				}
				if len(got) != len(set.Scores) {
					t.Fatalf("set %d: %d scores, golden has %d", i, len(got), len(set.Scores))
				}
				for j := range got {
					// 1e-5: FP32 against an independent reference, as
					// the fidelity requirement states.
					if d := math.Abs(float64(got[j]) - set.Scores[j]); d > 1e-5 {
						t.Errorf("set %d candidate %d: score %v, reference %v (|Δ| %.3g)", i, j, got[j], set.Scores[j], d)
					}
					compared++
				}
			}
			t.Logf("%d sets, %d scores within 1e-5 of %s", len(g.Sets), compared, g.Reference)
		})
	}
}
