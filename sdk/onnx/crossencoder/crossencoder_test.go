package crossencoder_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

const (
	bertTokenizer = "testdata/ms-marco-MiniLM-L6-v2/tokenizer.json"
	xlmrTokenizer = "testdata/xlmr-synthetic/tokenizer_classic.json"
)

// tiny returns the 2×32 test shape of arch with vocab ids.
func tiny(t testing.TB, arch string, vocab int) crossencoder.Config {
	t.Helper()
	c, err := crossencoder.ArchDefaults(arch)
	if err != nil {
		t.Fatal(err)
	}
	c.VocabSize, c.Hidden, c.Layers, c.Heads, c.Intermediate = vocab, 32, 2, 2, 64
	return c
}

func modelSHA(t testing.TB, c crossencoder.Config, w crossencoder.Weights) string {
	t.Helper()
	m, err := crossencoder.Build(c, w)
	if err != nil {
		t.Fatal(err)
	}
	b, err := onnx.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestConfigFromHF(t *testing.T) {
	f := func(path string, want crossencoder.Config) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := crossencoder.ConfigFromHF(b)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if got != want {
			t.Fatalf("%s:\ngot  %+v\nwant %+v", path, got, want)
		}
	}
	f("testdata/ms-marco-MiniLM-L6-v2/config.json", crossencoder.Config{Arch: "bert", VocabSize: 30522, Hidden: 384,
		Layers: 6, Heads: 12, Intermediate: 1536, MaxPositions: 512, TypeVocabSize: 2, PadTokenID: 0, NumLabels: 1, LayerNormEps: 1e-12})
	f("testdata/bge-reranker-large/config.json", crossencoder.Config{Arch: "xlm-roberta", VocabSize: 250002, Hidden: 1024,
		Layers: 24, Heads: 16, Intermediate: 4096, MaxPositions: 514, TypeVocabSize: 1, PadTokenID: 1, NumLabels: 1, LayerNormEps: 1e-5})
}

func TestConfigFromHFErrors(t *testing.T) {
	base := `"vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 20`
	f := func(body, want string) {
		t.Helper()
		_, err := crossencoder.ConfigFromHF([]byte(body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: error %v, want one containing %q", body, err, want)
		}
	}
	f(`{`, "parse config.json")
	f(`[]`, "parse config.json")
	f(`{"model_type": "gpt2", `+base+`}`, `model_type "gpt2"`)
	f(`{"model_type": "bert", "hidden_act": "gelu_new", `+base+`}`, `hidden_act "gelu_new"`)
	f(`{"model_type": "bert", "position_embedding_type": "relative_key", `+base+`}`, "relative_key")
	f(`{"model_type": "bert", "architectures": ["BertModel"], `+base+`}`, `"BertModel"`)
	f(`{"model_type": "bert", "vocab_size": 100, "hidden_size": 9, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 20}`, "not a multiple")
	f(`{"model_type": "bert"}`, "must be positive")
	f(`{"model_type": "bert", "pad_token_id": 100, `+base+`}`, "pad token id 100")
	f(`{"model_type": "bert", "layer_norm_eps": 0, `+base+`}`, "epsilon")
	f(`{"model_type": "xlm-roberta", "max_position_embeddings": 3, "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}`, "no room")
	f(`{"model_type": "bert", "vocab_size": 1000000000, "hidden_size": 4096, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 20}`, "over the limit")
}

func TestHFConfigRoundTrip(t *testing.T) {
	for _, c := range []crossencoder.Config{tiny(t, "bert", 30522), tiny(t, "xlm-roberta", 4002)} {
		c.NumLabels = 3
		b, err := c.HFConfig(map[string]any{"extra": 1})
		if err != nil {
			t.Fatal(err)
		}
		got, err := crossencoder.ConfigFromHF(b)
		if err != nil {
			t.Fatal(err)
		}
		if got != c {
			t.Fatalf("round trip:\ngot  %+v\nwant %+v", got, c)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		if m["extra"] != float64(1) {
			t.Fatalf("extra field lost: %s", b)
		}
	}
}

// TestRandomWeightsDeterministic checks that a seed fixes the model bytes,
// here and against the sha256 recorded in the fidelity goldens (made on
// another run, possibly another machine).
func TestRandomWeightsDeterministic(t *testing.T) {
	c := tiny(t, "bert", 30522)
	a := modelSHA(t, c, crossencoder.RandomWeights(c, 1))
	if b := modelSHA(t, c, crossencoder.RandomWeights(c, 1)); a != b {
		t.Fatalf("same seed, different models: %s, %s", a, b)
	}
	if b := modelSHA(t, c, crossencoder.RandomWeights(c, 2)); a == b {
		t.Fatal("seeds 1 and 2 gave the same model")
	}
	f := func(arch string, vocab int, want string) {
		t.Helper()
		c := tiny(t, arch, vocab)
		if got := modelSHA(t, c, crossencoder.RandomWeights(c, 1)); got != want {
			t.Errorf("%s seed 1: sha256 %s, want %s (the fidelity goldens' model)", arch, got, want)
		}
	}
	f("bert", 30522, goldenSHA(t, "tiny-bert"))
	f("xlm-roberta", 4002, goldenSHA(t, "tiny-xlmr"))

	// The order of Tensor calls does not matter: draw everything forwards
	// from one source and backwards from another.
	w1, w2 := crossencoder.RandomWeights(c, 5), crossencoder.RandomWeights(c, 5)
	ps := crossencoder.Params(c)
	back := map[string]crossencoder.Tensor{}
	for i := len(ps) - 1; i >= 0; i-- {
		back[ps[i].Name], _ = w2.Tensor(ps[i].Name)
	}
	for _, p := range ps {
		x, _ := w1.Tensor(p.Name)
		for k := range x.Data {
			if x.Data[k] != back[p.Name].Data[k] {
				t.Fatalf("%s differs with call order", p.Name)
			}
		}
	}
}

// goldenSHA reads the model sha256 recorded in a fidelity golden.
func goldenSHA(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "plugins", "internal", "ort", "testdata", "fidelity", name+".golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Model struct {
			SHA string `json:"model_sha256"`
		} `json:"model"`
	}
	if err := json.Unmarshal(b, &g); err != nil || g.Model.SHA == "" {
		t.Fatalf("%s: no model_sha256 (%v)", name, err)
	}
	return g.Model.SHA
}

func TestRandomWeightsScales(t *testing.T) {
	c := tiny(t, "bert", 30522)
	c.Hidden, c.Heads, c.Intermediate = 256, 4, 512 // enough values for tight moments
	w := crossencoder.RandomWeights(c, 3)
	f := func(name string, wantMean, wantStd float64) {
		t.Helper()
		x, err := w.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		var s, s2 float64
		for _, v := range x.Data {
			s += float64(v)
			s2 += float64(v) * float64(v)
		}
		n := float64(len(x.Data))
		mean, std := s/n, math.Sqrt(s2/n-(s/n)*(s/n))
		// Four standard errors: the sample mean's is std/sqrt(n), the
		// sample std's about std/sqrt(2n).
		if math.Abs(mean-wantMean) > 4*wantStd/math.Sqrt(n)+1e-12 || math.Abs(std-wantStd) > 4*wantStd/math.Sqrt(2*n)+1e-12 {
			t.Errorf("%s: mean %.4g std %.4g, want %.4g and %.4g", name, mean, std, wantMean, wantStd)
		}
	}
	f("bert.embeddings.word_embeddings.weight", 0, 0.02)
	f("bert.embeddings.LayerNorm.weight", 1, 0)
	f("bert.embeddings.LayerNorm.bias", 0, 0)
	f("bert.encoder.layer.1.attention.self.key.weight", 0, 1/math.Sqrt(256))
	f("bert.encoder.layer.1.output.dense.weight", 0, 1/math.Sqrt(512))
	f("bert.encoder.layer.0.intermediate.dense.bias", 0, 0.02)
	if _, err := w.Tensor("bert.encoder.layer.2.output.dense.weight"); err == nil {
		t.Error("a layer past the last one has weights")
	}
}

// weightsFunc adapts a function to crossencoder.Weights.
type weightsFunc func(name string) (crossencoder.Tensor, error)

func (f weightsFunc) Tensor(name string) (crossencoder.Tensor, error) { return f(name) }

func TestBuildRejectsBadWeights(t *testing.T) {
	c := tiny(t, "xlm-roberta", 4002)
	good := crossencoder.RandomWeights(c, 1)
	const victim = "roberta.encoder.layer.1.attention.self.value.weight"
	f := func(name string, edit func(crossencoder.Tensor) (crossencoder.Tensor, error), want string) {
		t.Helper()
		w := weightsFunc(func(n string) (crossencoder.Tensor, error) {
			x, err := good.Tensor(n)
			if n == victim {
				return edit(x)
			}
			return x, err
		})
		_, err := crossencoder.Build(c, w)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: error %v, want one containing %q", name, err, want)
		}
		if _, err := crossencoder.Forward(c, w, []crossencoder.Sequence{{InputIDs: []int64{0, 5, 2}}}); err == nil {
			t.Fatalf("%s: Forward accepted the weights", name)
		}
	}
	f("missing", func(crossencoder.Tensor) (crossencoder.Tensor, error) {
		return crossencoder.Tensor{}, errors.New("gone")
	}, "gone")
	f("transposed shape", func(x crossencoder.Tensor) (crossencoder.Tensor, error) {
		x.Shape = []int64{32, 16}
		return x, nil
	}, "has shape")
	f("short data", func(x crossencoder.Tensor) (crossencoder.Tensor, error) {
		x.Data = x.Data[:10]
		return x, nil
	}, "values for shape")
	if _, err := crossencoder.Build(crossencoder.Config{Arch: "gpt"}, good); err == nil {
		t.Fatal("unknown architecture built")
	}
}

func TestBuildGraph(t *testing.T) {
	f := func(arch string, vocab int, inputs []string) {
		t.Helper()
		c := tiny(t, arch, vocab)
		w := crossencoder.RandomWeights(c, 1)
		m, err := crossencoder.Build(c, w)
		if err != nil {
			t.Fatal(err)
		}
		if m.GetIrVersion() != onnx.IRVersion || len(m.GetOpsetImport()) != 1 || m.GetOpsetImport()[0].GetVersion() != 17 {
			t.Fatalf("%s: ir %d opsets %v", arch, m.GetIrVersion(), m.GetOpsetImport())
		}
		g := m.GetGraph()
		var names []string
		for _, in := range g.GetInput() {
			names = append(names, in.GetName())
			if in.GetType().GetTensorType().GetElemType() != int32(onnx.Int64) {
				t.Errorf("%s: input %s is not int64", arch, in.GetName())
			}
		}
		if strings.Join(names, ",") != strings.Join(inputs, ",") {
			t.Fatalf("%s: inputs %v, want %v", arch, names, inputs)
		}
		if len(g.GetOutput()) != 1 || g.GetOutput()[0].GetName() != "logits" {
			t.Fatalf("%s: outputs %v", arch, g.GetOutput())
		}
		// Topological order: every node input is defined earlier.
		defined := map[string]bool{}
		for _, in := range g.GetInput() {
			defined[in.GetName()] = true
		}
		inits := map[string]*onnxpb.TensorProto{}
		for _, in := range g.GetInitializer() {
			defined[in.GetName()] = true
			inits[in.GetName()] = in
		}
		for _, n := range g.GetNode() {
			for _, in := range n.GetInput() {
				if !defined[in] {
					t.Fatalf("%s: node %s reads %s before it is defined", arch, n.GetName(), in)
				}
			}
			for _, out := range n.GetOutput() {
				if defined[out] {
					t.Fatalf("%s: %s defined twice", arch, out)
				}
				defined[out] = true
			}
		}
		if !defined["logits"] {
			t.Fatalf("%s: no node writes logits", arch)
		}
		var total int64
		for _, p := range crossencoder.Params(c) {
			n := int64(1)
			for _, d := range p.Shape {
				n *= d
			}
			total += n
		}
		if total != c.ParamCount() {
			t.Fatalf("%s: Params hold %d values, ParamCount says %d", arch, total, c.ParamCount())
		}
		// Every parameter is an initializer; linear weights are transposed.
		for _, p := range crossencoder.Params(c) {
			in := inits[p.Name]
			if in == nil {
				t.Fatalf("%s: no initializer %s", arch, p.Name)
			}
			orig, _ := w.Tensor(p.Name)
			vals, err := onnx.Floats(in)
			if err != nil {
				t.Fatal(err)
			}
			if p.Role == crossencoder.RoleLinear || p.Role == crossencoder.RoleHead {
				out, inn := p.Shape[0], p.Shape[1]
				if in.GetDims()[0] != inn || in.GetDims()[1] != out {
					t.Fatalf("%s: %s dims %v, want [%d %d]", arch, p.Name, in.GetDims(), inn, out)
				}
				if vals[1*out+0] != orig.Data[0*inn+1] {
					t.Fatalf("%s: %s is not the transpose", arch, p.Name)
				}
			} else if vals[len(vals)-1] != orig.Data[len(orig.Data)-1] {
				t.Fatalf("%s: %s values differ", arch, p.Name)
			}
		}
	}
	f("bert", 30522, []string{"input_ids", "attention_mask", "token_type_ids"})
	f("xlm-roberta", 4002, []string{"input_ids", "attention_mask"})
}

func TestForward(t *testing.T) {
	c := tiny(t, "xlm-roberta", 4002)
	w := crossencoder.RandomWeights(c, 1)
	// Padding behind a sequence (masked, pad id) leaves its logits alone.
	seq := crossencoder.Sequence{InputIDs: []int64{0, 57, 812, 2, 2, 99, 2}}
	padded := crossencoder.Sequence{InputIDs: append(append([]int64(nil), seq.InputIDs...), 1, 1), AttentionMask: []int64{1, 1, 1, 1, 1, 1, 1, 0, 0}}
	other := crossencoder.Sequence{InputIDs: []int64{0, 57, 812, 2, 2, 98, 2}}
	got, err := crossencoder.Forward(c, w, []crossencoder.Sequence{seq, padded, other})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got[0][0]-got[1][0]) > 1e-9 {
		t.Errorf("padding changed the logit: %v vs %v", got[0][0], got[1][0])
	}
	if got[0][0] == got[2][0] {
		t.Errorf("different documents, same logit %v", got[0][0])
	}
	f := func(name string, s crossencoder.Sequence) {
		t.Helper()
		if _, err := crossencoder.Forward(c, w, []crossencoder.Sequence{s}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	f("empty", crossencoder.Sequence{})
	f("id past vocabulary", crossencoder.Sequence{InputIDs: []int64{0, 4002, 2}})
	f("negative id", crossencoder.Sequence{InputIDs: []int64{0, -1, 2}})
	f("too long", crossencoder.Sequence{InputIDs: make([]int64, 513)})
	f("mask length", crossencoder.Sequence{InputIDs: []int64{0, 2}, AttentionMask: []int64{1}})
	cb := tiny(t, "bert", 30522)
	if _, err := crossencoder.Forward(cb, crossencoder.RandomWeights(cb, 1), []crossencoder.Sequence{{InputIDs: []int64{101, 102}, TokenTypeIDs: []int64{0, 2}}}); err == nil {
		t.Error("token type 2 accepted with type_vocab_size 2")
	}
}

func TestWriteModelDir(t *testing.T) {
	c := tiny(t, "bert", 30522)
	c.MaxPositions = 64
	dir := filepath.Join(t.TempDir(), "m")
	if err := crossencoder.WriteModelDir(dir, c, crossencoder.RandomWeights(c, 9), bertTokenizer, crossencoder.DirOptions{}); err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	marker, _ := cfg[crossencoder.TestModelKey].(map[string]any)
	if marker["seed"] != float64(9) || marker["note"] != crossencoder.TestModelNote {
		t.Fatalf("marker %v", cfg[crossencoder.TestModelKey])
	}
	if got, err := crossencoder.ConfigFromHF(b); err != nil || got != c {
		t.Fatalf("config.json reads back as %+v, %v", got, err)
	}
	var tc map[string]any
	b, _ = os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	json.Unmarshal(b, &tc)
	if tc["model_max_length"] != float64(64) || tc["tokenizer_class"] != "BertTokenizer" {
		t.Fatalf("tokenizer_config.json %s", b)
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	orig, _ := os.ReadFile(bertTokenizer)
	if string(tok) != string(orig) {
		t.Fatal("tokenizer.json not copied verbatim")
	}
	for _, name := range []string{"special_tokens_map.json", "onnx/model.onnx"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := onnx.ReadModel(filepath.Join(dir, "onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if m.GetGraph().GetOutput()[0].GetName() != "logits" {
		t.Fatal("model.onnx has no logits")
	}

	// Weights that are not random carry no marker; generated tokenizer
	// files when none sit next to tokenizer.json.
	tmp := t.TempDir()
	lone := filepath.Join(tmp, "tokenizer.json")
	xb, _ := os.ReadFile(xlmrTokenizer)
	os.WriteFile(lone, xb, 0o644)
	cx := tiny(t, "xlm-roberta", 4002)
	rw := crossencoder.RandomWeights(cx, 1)
	plain := weightsFunc(rw.Tensor)
	dir2 := filepath.Join(tmp, "x")
	if err := crossencoder.WriteModelDir(dir2, cx, plain, lone, crossencoder.DirOptions{}); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir2, "config.json"))
	if strings.Contains(string(b), crossencoder.TestModelKey) {
		t.Fatal("marker on weights that are not RandomWeights")
	}
	b, _ = os.ReadFile(filepath.Join(dir2, "tokenizer_config.json"))
	json.Unmarshal(b, &tc)
	if tc["tokenizer_class"] != "XLMRobertaTokenizer" || tc["model_max_length"] != float64(512) {
		t.Fatalf("generated tokenizer_config.json %s", b)
	}

	// A tokenizer with more ids than the model's vocabulary is refused.
	small := tiny(t, "bert", 1000)
	if err := crossencoder.WriteModelDir(t.TempDir(), small, crossencoder.RandomWeights(small, 1), bertTokenizer, crossencoder.DirOptions{}); err == nil {
		t.Fatal("a 30522-id tokenizer accepted for a 1000-id model")
	}
}

func TestTokenizerVocabSize(t *testing.T) {
	f := func(path string, want int) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := crossencoder.TokenizerVocabSize(b); err != nil || got != want {
			t.Fatalf("%s: %d, %v; want %d", path, got, err, want)
		}
	}
	f(bertTokenizer, 30522)
	f(xlmrTokenizer, 4002)
	for _, bad := range []string{`{`, `{}`, `{"model": {"vocab": 5}}`, `{"model": {"vocab": "x"}}`} {
		if _, err := crossencoder.TokenizerVocabSize([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
