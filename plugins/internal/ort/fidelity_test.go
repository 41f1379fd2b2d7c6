package ort

import (
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

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
			g, err := crossencoder.ReadGolden(path)
			if err != nil {
				t.Fatal(err)
			}
			c, err := g.Config()
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
			if g.Model.SHA256 != "" && info.Details["model_sha256"] != g.Model.SHA256 {
				t.Fatalf("rebuilt model has sha256 %s; the golden was recorded on %s", info.Details["model_sha256"], g.Model.SHA256)
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
