package ort

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
)

func TestResolveActivation(t *testing.T) {
	f := func(name, stJSON string, c modelConfig, want, wantSource string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if stJSON != "" {
				if err := os.WriteFile(filepath.Join(dir, "config_sentence_transformers.json"), []byte(stJSON), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			a, source, err := resolveActivation(dir, c)
			if err != nil {
				t.Fatal(err)
			}
			if a.name != want || source != wantSource {
				t.Errorf("activation %s from %q, want %s from %q", a.name, source, want, wantSource)
			}
		})
	}
	var st4, legacy modelConfig
	st4.SentenceTransformers.ActivationFn = "torch.nn.modules.activation.Tanh"
	legacy.LegacyActivation = "torch.nn.modules.linear.Identity"
	// The real ms-marco-MiniLM-L6-v2 file (sentence-transformers 5).
	msMarco := `{"__version__": {"sentence_transformers": "5.4.1"}, "activation_fn": "torch.nn.modules.linear.Identity", "model_type": "CrossEncoder"}`
	f("no files: sigmoid", "", modelConfig{}, "sigmoid", "default for one-label models")
	f("ms-marco identity", msMarco, modelConfig{}, "identity", "config_sentence_transformers.json")
	f("st5 file wins over config.json", `{"activation_fn": "torch.nn.modules.activation.Sigmoid"}`, st4, "sigmoid", "config_sentence_transformers.json")
	f("st5 file without activation", `{"model_type": "CrossEncoder"}`, st4, "tanh", "config.json sentence_transformers.activation_fn")
	f("st4 config.json", "", st4, "tanh", "config.json sentence_transformers.activation_fn")
	f("legacy config.json", "", legacy, "identity", "config.json sbert_ce_default_activation_function")
}

func TestResolveActivationErrors(t *testing.T) {
	f := func(name, stJSON string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "config_sentence_transformers.json"), []byte(stJSON), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, _, err := resolveActivation(dir, modelConfig{}); !errors.Is(err, sdk.ErrInvalidInput) {
				t.Errorf("resolveActivation: %v, want ErrInvalidInput", err)
			}
		})
	}
	f("not JSON", "{")
	f("softmax", `{"activation_fn": "torch.nn.modules.activation.Softmax"}`)
	f("activation_fn not a string", `{"activation_fn": 3}`)
}

func TestActivations(t *testing.T) {
	f := func(name string, x, want float64) {
		t.Helper()
		a, err := activationByName(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := a.fn(x); math.Abs(got-want) > 1e-15 {
			t.Errorf("%s(%v) = %v, want %v", name, x, got, want)
		}
	}
	f("torch.nn.modules.activation.Sigmoid", 0, 0.5)
	f("Sigmoid", 2, 1/(1+math.Exp(-2)))
	f("sigmoid", -800, 0) // exp overflow to +Inf gives exactly 0, not NaN
	f("torch.nn.modules.linear.Identity", -3.25, -3.25)
	f("Tanh", 0.5, math.Tanh(0.5))
}
