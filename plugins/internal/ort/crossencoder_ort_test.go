package ort_test

// Tests of the cross-encoder graphs of sdk/onnx/crossencoder in ONNX
// Runtime itself, using only onnxruntime_go and the sdk packages: fidelity
// against transformers.js goldens, agreement with the plain-Go reference
// forward pass, padding invariance, shapes, determinism and external data.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// ortOnce loads the ONNX Runtime library once for the tests in this file.
var ortOnce struct {
	sync.Once
	err error
}

// requireORT initialises ONNX Runtime (unless the engine's tests already
// did: the library loads once per process) or skips when no library is in
// the checkout. When make test named the library directory, a library that
// does not load is a failure, not a skip.
func requireORT(t testing.TB) {
	t.Helper()
	ortOnce.Do(func() {
		if ortgo.IsInitialized() {
			return
		}
		dir := os.Getenv("RERANK_ORT_LIB_DIR")
		if dir == "" {
			dir = filepath.Join("..", "..", "..", "lib", "onnxruntime")
		}
		lib := filepath.Join(dir, "libonnxruntime.so.1")
		if _, err := os.Stat(lib); err != nil {
			ortOnce.err = err
			return
		}
		ortgo.SetSharedLibraryPath(lib)
		ortOnce.err = ortgo.InitializeEnvironment(ortgo.WithLogLevelError())
	})
	if ortOnce.err != nil {
		t.Skipf("ONNX Runtime library not available (run plugins/ortlib.sh or make test): %v", ortOnce.err)
	}
}

// session is an ORT session over one cross-encoder graph.
type session struct {
	s    *ortgo.DynamicAdvancedSession
	c    crossencoder.Config
	opts *ortgo.SessionOptions
}

// newSession creates a session from model bytes (or from a file when path
// is set), with one intra-op thread: the box is shared and one thread also
// makes reductions run in a fixed order.
func newSession(t testing.TB, c crossencoder.Config, model []byte, path string) *session {
	t.Helper()
	requireORT(t)
	opts, err := ortgo.NewSessionOptions()
	if err != nil {
		t.Fatal(err)
	}
	if err := opts.SetIntraOpNumThreads(1); err != nil {
		t.Fatal(err)
	}
	inputs := []string{crossencoder.InputIDs, crossencoder.AttentionMask}
	if c.Arch == crossencoder.ArchBERT {
		inputs = append(inputs, crossencoder.TokenTypeIDs)
	}
	var s *ortgo.DynamicAdvancedSession
	if path != "" {
		s, err = ortgo.NewDynamicAdvancedSession(path, inputs, []string{crossencoder.Logits}, opts)
	} else {
		s, err = ortgo.NewDynamicAdvancedSessionWithONNXData(model, inputs, []string{crossencoder.Logits}, opts)
	}
	if err != nil {
		opts.Destroy()
		t.Fatalf("create session: %v", err)
	}
	ss := &session{s: s, c: c, opts: opts}
	t.Cleanup(func() { s.Destroy(); opts.Destroy() })
	return ss
}

// run pads encs on the right to the longest (pad id, mask 0, type 0, as
// Hugging Face tokenizers pad) and returns the logits, [len(encs)][labels].
func (s *session) run(t testing.TB, encs []crossencoder.GoldenEncoding) [][]float32 {
	t.Helper()
	seq := 0
	for _, e := range encs {
		seq = max(seq, len(e.InputIDs))
	}
	n := len(encs) * seq
	ids, mask, types := make([]int64, n), make([]int64, n), make([]int64, n)
	for i, e := range encs {
		for j := 0; j < seq; j++ {
			k := i*seq + j
			ids[k] = int64(s.c.PadTokenID)
			if j < len(e.InputIDs) {
				ids[k], mask[k] = e.InputIDs[j], 1
				if j < len(e.TokenTypeIDs) {
					types[k] = e.TokenTypeIDs[j]
				}
			}
		}
	}
	shape := ortgo.NewShape(int64(len(encs)), int64(seq))
	var values []ortgo.Value
	for _, data := range [][]int64{ids, mask, types}[:2+btoi(s.c.Arch == crossencoder.ArchBERT)] {
		v, err := ortgo.NewTensor(shape, data)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Destroy()
		values = append(values, v)
	}
	out := []ortgo.Value{nil}
	if err := s.s.Run(values, out); err != nil {
		t.Fatalf("run: %v", err)
	}
	defer out[0].Destroy()
	logits, ok := out[0].(*ortgo.Tensor[float32])
	if !ok {
		t.Fatalf("logits are %T, want float32", out[0])
	}
	if got := logits.GetShape(); len(got) != 2 || got[0] != int64(len(encs)) || got[1] != int64(s.c.NumLabels) {
		t.Fatalf("logits shape %v, want [%d %d]", got, len(encs), s.c.NumLabels)
	}
	data := logits.GetData()
	res := make([][]float32, len(encs))
	for i := range res {
		res[i] = append([]float32(nil), data[i*s.c.NumLabels:(i+1)*s.c.NumLabels]...)
	}
	return res
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// loadGolden reads testdata/fidelity/NAME.golden.json and the config it
// describes.
func loadGolden(t testing.TB, name string) (*crossencoder.Golden, crossencoder.Config) {
	t.Helper()
	g, err := crossencoder.ReadGolden(filepath.Join("testdata", "fidelity", name+".golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := g.Config()
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Sets) < 50 {
		t.Fatalf("%s has %d sets, want at least 50", name, len(g.Sets))
	}
	return g, c
}

// buildModel builds the seeded test model and its serialized bytes.
func buildModel(t testing.TB, c crossencoder.Config, seed uint64) []byte {
	t.Helper()
	m, err := crossencoder.Build(c, crossencoder.RandomWeights(c, seed))
	if err != nil {
		t.Fatal(err)
	}
	b, err := onnx.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// TestCrossEncoderFidelity rebuilds each golden's model from its seed,
// checks it is byte-identical to the model transformers.js scored (sha256),
// runs every set through ONNX Runtime as one padded batch and compares with
// the reference. Tolerance: 1e-5 on scores, the FP32 bound; the
// logits get 1e-4 absolute, because they are the calibrated head's amplified
// fp32 sums (up to ±18) and the reference ran another ORT release.
func TestCrossEncoderFidelity(t *testing.T) {
	f := func(name string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			requireORT(t)
			g, c := loadGolden(t, name)
			model := buildModel(t, c, g.Model.Seed)
			sum := sha256.Sum256(model)
			if got := hex.EncodeToString(sum[:]); got != g.Model.SHA256 {
				t.Errorf("model bytes differ from the golden's: sha256 %s, want %s", got, g.Model.SHA256)
			}
			s := newSession(t, c, model, "")
			var worstScore, worstLogit float64
			for i, set := range g.Sets {
				if len(set.Encodings) != len(set.Candidates) || len(set.Scores) != len(set.Candidates) || len(set.Logits) != len(set.Candidates) {
					t.Fatalf("set %d is malformed", i)
				}
				got := s.run(t, set.Encodings)
				for j := range got {
					dl := math.Abs(float64(got[j][0]) - set.Logits[j])
					ds := math.Abs(sigmoid(float64(got[j][0])) - set.Scores[j])
					worstLogit, worstScore = max(worstLogit, dl), max(worstScore, ds)
					if ds > 1e-5 || dl > 1e-4 {
						t.Errorf("set %d (%q) candidate %d: logit %v score %v, reference logit %v score %v",
							i, set.Query, j, got[j][0], sigmoid(float64(got[j][0])), set.Logits[j], set.Scores[j])
					}
				}
			}
			t.Logf("%d sets: largest difference from the reference: score %.2g, logit %.2g", len(g.Sets), worstScore, worstLogit)
		})
	}
	f("tiny-bert")
	f("tiny-xlmr")
	if testing.Short() {
		t.Log("skipping minilm in -short mode (a 90 MB model)")
		return
	}
	f("minilm")
}

// TestCrossEncoderMatchesForward holds the ONNX graph in ORT against
// crossencoder.Forward, the plain-Go float64 implementation written from
// the PyTorch modules, on golden encodings of several lengths, singly and
// padded into one batch. Tolerance 1e-4 on logits: the graph runs in fp32
// (about 1e-7 relative per operation) and the calibrated head multiplies
// feature differences by up to a few tens.
func TestCrossEncoderMatchesForward(t *testing.T) {
	f := func(name string, labels int) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			requireORT(t)
			g, c := loadGolden(t, name)
			c.NumLabels = labels
			w := crossencoder.RandomWeights(c, 7)
			m, err := crossencoder.Build(c, w)
			if err != nil {
				t.Fatal(err)
			}
			b, err := onnx.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			s := newSession(t, c, b, "")
			var encs []crossencoder.GoldenEncoding
			var seqs []crossencoder.Sequence
			for _, i := range []int{0, 1, 5, 17, len(g.Sets) - 1} {
				e := g.Sets[i].Encodings[0]
				encs = append(encs, e)
				seqs = append(seqs, crossencoder.Sequence{InputIDs: e.InputIDs, TokenTypeIDs: e.TokenTypeIDs})
			}
			want, err := crossencoder.Forward(c, w, seqs)
			if err != nil {
				t.Fatal(err)
			}
			batched := s.run(t, encs)
			var spread []float64
			for i, e := range encs {
				single := s.run(t, []crossencoder.GoldenEncoding{e})
				for l := 0; l < labels; l++ {
					if d := math.Abs(float64(batched[i][l]) - want[i][l]); d > 1e-4 {
						t.Errorf("sequence %d label %d: ORT %v, Forward %v", i, l, batched[i][l], want[i][l])
					}
					// Padding must not change a result: padded keys get
					// exp(-1e4) = 0 weight. 1e-5 allows for the different
					// matrix shapes the kernels see.
					if d := math.Abs(float64(batched[i][l] - single[0][l])); d > 1e-5 {
						t.Errorf("sequence %d label %d: %v in a padded batch, %v alone", i, l, batched[i][l], single[0][l])
					}
				}
				spread = append(spread, want[i][0])
			}
			if lo, hi := minMax(spread); hi-lo < 1 {
				t.Errorf("logits %v span %.3g: the head should spread them over several units", spread, hi-lo)
			}
		})
	}
	f("tiny-bert", 1)
	f("tiny-xlmr", 1)
	f("tiny-bert", 3)
	f("tiny-xlmr", 2)
}

func minMax(x []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, v := range x {
		lo, hi = min(lo, v), max(hi, v)
	}
	return lo, hi
}

// TestCrossEncoderExternalData writes a model with its tensors in an
// external data file and checks ORT loads it from disk with the same
// results as the inline model.
func TestCrossEncoderExternalData(t *testing.T) {
	requireORT(t)
	g, c := loadGolden(t, "tiny-xlmr")
	m, err := crossencoder.Build(c, crossencoder.RandomWeights(c, g.Model.Seed))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := onnx.WriteModel(dir, m, onnx.WriteOptions{ExternalData: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "model.onnx_data")); err != nil {
		t.Fatalf("no external data file: %v", err)
	}
	inline := newSession(t, c, buildModel(t, c, g.Model.Seed), "")
	external := newSession(t, c, nil, filepath.Join(dir, "model.onnx"))
	encs := g.Sets[3].Encodings
	a, b := inline.run(t, encs), external.run(t, encs)
	for i := range a {
		if a[i][0] != b[i][0] {
			t.Errorf("candidate %d: inline %v, external %v", i, a[i][0], b[i][0])
		}
	}
}

// TestCrossEncoderShapes runs batches of several sizes and lengths, checks
// the output shape, that every logit is finite, and that different inputs
// get different logits.
func TestCrossEncoderShapes(t *testing.T) {
	f := func(name string, batch, length int) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			requireORT(t)
			g, c := loadGolden(t, name)
			s := newSession(t, c, buildModel(t, c, g.Model.Seed), "")
			// Golden pairs cut to length tokens, each prefix once (many
			// pairs share a query, so short prefixes repeat).
			var encs []crossencoder.GoldenEncoding
			seen := map[string]bool{}
			for _, set := range g.Sets {
				for _, e := range set.Encodings {
					if len(encs) == batch || len(e.InputIDs) < length {
						continue
					}
					e.InputIDs, e.TokenTypeIDs = e.InputIDs[:length], e.TokenTypeIDs[:min(length, len(e.TokenTypeIDs))]
					if key := fmt.Sprint(e.InputIDs); !seen[key] {
						seen[key] = true
						encs = append(encs, e)
					}
				}
			}
			if len(encs) < batch {
				t.Fatalf("only %d distinct golden encodings of %d tokens", len(encs), length)
			}
			got := s.run(t, encs)
			distinct := map[float32]bool{}
			for i, l := range got {
				if math.IsNaN(float64(l[0])) || math.IsInf(float64(l[0]), 0) {
					t.Errorf("pair %d: logit %v", i, l[0])
				}
				distinct[l[0]] = true
			}
			if len(distinct) < batch {
				t.Errorf("%d pairs got only %d distinct logits: %v", batch, len(distinct), got)
			}
		})
	}
	f("tiny-bert", 1, 4)
	f("tiny-bert", 16, 8)
	f("tiny-bert", 4, 200)
	f("tiny-xlmr", 1, 3)
	f("tiny-xlmr", 32, 16)
	f("tiny-xlmr", 2, 400)
}
