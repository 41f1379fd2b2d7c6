package ort

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// scorePairs are varied pairs: empty sides, repeated words, a document
// longer than the tests' max length.
var scorePairs = []sdk.Pair{
	{Query: "what is a cat", Document: "a cat is a small animal"},
	{Query: "", Document: ""},
	{Query: "rust", Document: strings.Repeat("iron oxide forms on steel ", 40)},
	{Query: "go", Document: "go"},
	{Query: "a b c d e f g", Document: "h"},
}

func TestScoreFeedsDeclaredInputs(t *testing.T) {
	requireRuntime(t)
	f := func(name string, s sumGraph, st string, maxLength, maxBatch int) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			dir := writeSumModelDir(t, s, "onnx/model.onnx", nil, st)
			e := newSumEngine()
			cfg := sdk.LoadConfig{ModelDir: dir, MaxLength: maxLength, IntraOpThreads: 1}
			if maxBatch > 0 {
				cfg.Options = map[string]string{MaxBatchSizeOption: strconv.Itoa(maxBatch)}
			}
			info, err := e.Load(context.Background(), cfg)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			got, err := e.Score(context.Background(), scorePairs)
			if err != nil {
				t.Fatalf("Score: %v", err)
			}
			act, err := activationByName(info.Activation)
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range scorePairs {
				enc, _ := wordEncoder{}.EncodePair(p.Query, p.Document, tokenizer.Options{MaxLength: info.MaxLength})
				want := act.fn(s.sumLogit(enc))
				// 1e-6 relative: the graph sums up to a few hundred
				// float32 terms, each rounding at float32's 6e-8.
				if math.Abs(float64(got[i])-want) > 1e-6*math.Max(1, math.Abs(want)) {
					t.Errorf("pair %d: score %v, want %v", i, got[i], want)
				}
			}
		})
	}
	f("int64 all inputs", sumGraph{mask: true, types: true, labels: 1}, "", 0, 0)
	f("int32 all inputs", sumGraph{int32Inputs: true, mask: true, types: true, labels: 1}, "", 0, 0)
	f("no token_type_ids (XLM-R style)", sumGraph{mask: true, labels: 1}, "torch.nn.modules.linear.Identity", 0, 0)
	f("input_ids only", sumGraph{labels: 1}, "", 0, 0)
	f("symbolic label dim", sumGraph{mask: true, types: true}, "Tanh", 0, 0)
	f("truncated to 16 tokens", sumGraph{mask: true, types: true, labels: 1}, "Identity", 16, 0)
	f("batches of 2", sumGraph{mask: true, types: true, labels: 1}, "Identity", 0, 2)
}

func TestLoadReportsModel(t *testing.T) {
	requireRuntime(t)
	dir := writeSumModelDir(t, sumGraph{mask: true, types: true, labels: 1}, "model.onnx",
		map[string]any{"model_type": "xlm-roberta", "max_position_embeddings": 130, "pad_token_id": 1}, "")
	e := newSumEngine()
	h, err := e.Health(context.Background())
	if err != nil || h.State != sdk.StateLoading || h.Model != nil {
		t.Fatalf("Health before Load = %+v, %v; want loading without a model", h, err)
	}
	info, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, ModelName: "org/tiny", IntraOpThreads: 2})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The revision covers the model file and the tokenizer.
	wantRevision := sha256Hex([]byte(sha256Hex(b) + ":" + sha256Hex(tok)))
	want := sdk.ModelInfo{Name: "org/tiny", Device: "cpu", Backend: "onnx-cpu", Precision: sdk.FP32, Quantization: "none",
		Source: "onnx", MaxLength: 128, MaxBatchSize: tokenBudget / 128, MaxBatchTokens: cpuBatchTokens, PreferredInFlight: 2,
		Activation: "sigmoid", Revision: wantRevision}
	gotCore := info
	gotCore.Details, gotCore.SDKMinorVersion = nil, 0
	if !reflect.DeepEqual(gotCore, want) {
		t.Errorf("info = %+v\nwant %+v", gotCore, want)
	}
	for k, v := range map[string]string{
		"model_file":       filepath.Join(dir, "model.onnx"),
		"model_sha256":     sha256Hex(b),
		"intra_op_threads": "2",
		"parallel_runs":    strconv.Itoa(max(1, runtime.GOMAXPROCS(0)/2)),
		"inputs":           "input_ids:int64,token_type_ids:int64,attention_mask:int64",
		"output":           "logits",
		"cpu_mem_arena":    "off (default)",
		"mem_pattern":      "off (default)",
	} {
		if info.Details[k] != v {
			t.Errorf("Details[%s] = %q, want %q", k, info.Details[k], v)
		}
	}
	h, err = e.Health(context.Background())
	if err != nil || h.State != sdk.StateReady || h.Model == nil || h.Model.Revision != want.Revision {
		t.Fatalf("Health after Load = %+v, %v; want ready with the model", h, err)
	}
	if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir}); !errors.Is(err, sdk.ErrInvalidInput) {
		t.Errorf("second Load: %v, want ErrInvalidInput", err)
	}
}

func TestLoadRefusesUnusableModels(t *testing.T) {
	requireRuntime(t)
	good := sumGraph{mask: true, types: true, labels: 1}
	f := func(name string, dir string, cfg sdk.LoadConfig, wantMsg string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			e := newSumEngine()
			cfg.ModelDir = dir
			_, err := e.Load(context.Background(), cfg)
			if !errors.Is(err, sdk.ErrInvalidInput) {
				t.Fatalf("Load: %v, want ErrInvalidInput", err)
			}
			if !strings.Contains(err.Error(), wantMsg) {
				t.Errorf("Load error %q does not mention %q", err, wantMsg)
			}
			h, _ := e.Health(context.Background())
			if h.State != sdk.StateFailed || h.Message != err.Error() {
				t.Errorf("Health = %+v, want failed with the load error", h)
			}
			if _, err := e.Score(context.Background(), scorePairs); !errors.Is(err, sdk.ErrNotLoaded) {
				t.Errorf("Score after failed Load: %v, want ErrNotLoaded", err)
			}
		})
	}
	f("no directory", "", sdk.LoadConfig{}, "no model directory")
	f("no model file", writeSumModelDir(t, good, "", nil, ""), sdk.LoadConfig{}, "no ONNX model")
	f("bf16 on cpu", writeSumModelDir(t, good, "model.onnx", nil, ""), sdk.LoadConfig{Precision: sdk.BF16}, "supported on cpu: fp32, fp16, int8")
	f("unknown activation", writeSumModelDir(t, good, "model.onnx", nil, "torch.nn.modules.activation.Softmax"), sdk.LoadConfig{}, "Softmax")
	f("two labels", writeSumModelDir(t, sumGraph{mask: true, labels: 2}, "model.onnx", nil, ""), sdk.LoadConfig{}, "2 labels")
	f("two labels in config", writeSumModelDir(t, sumGraph{mask: true}, "model.onnx",
		map[string]any{"model_type": "bert", "id2label": map[string]string{"0": "no", "1": "yes"}}, ""), sdk.LoadConfig{}, "2 labels")
	f("unknown input", writeSumModelDir(t, sumGraph{mask: true, labels: 1, extraInput: "position_ids"}, "model.onnx", nil, ""), sdk.LoadConfig{}, "position_ids")
	f("float input_ids", writeSumModelDir(t, sumGraph{floatIDs: true, labels: 1}, "model.onnx", nil, ""), sdk.LoadConfig{}, "only int64 and int32")
	f("no logits among two outputs", writeSumModelDir(t, sumGraph{labels: 1, outputName: "scores", extraOutput: true}, "model.onnx", nil, ""), sdk.LoadConfig{}, "no \"logits\" output")
	f("negative max length", writeSumModelDir(t, good, "model.onnx", nil, ""), sdk.LoadConfig{MaxLength: -1}, "negative")
	f("bad max batch option", writeSumModelDir(t, good, "model.onnx", nil, ""), sdk.LoadConfig{Options: map[string]string{MaxBatchSizeOption: "0"}}, MaxBatchSizeOption)
	garbage := writeSumModelDir(t, good, "", nil, "")
	if err := os.WriteFile(filepath.Join(garbage, "model.onnx"), []byte("not a model at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	f("garbage model file", garbage, sdk.LoadConfig{}, "not a readable ONNX model")
}

func TestScoreRefusals(t *testing.T) {
	requireRuntime(t)
	e := newSumEngine()
	if _, err := e.Score(context.Background(), scorePairs); !errors.Is(err, sdk.ErrNotLoaded) {
		t.Fatalf("Score before Load: %v, want ErrNotLoaded", err)
	}
	dir := writeSumModelDir(t, sumGraph{mask: true, types: true, labels: 1}, "model.onnx", nil, "")
	if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir}); err != nil {
		t.Fatal(err)
	}
	f := func(name string, ctx context.Context, pairs []sdk.Pair, want error) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			if _, err := e.Score(ctx, pairs); !errors.Is(err, want) {
				t.Errorf("Score: %v, want %v", err, want)
			}
		})
	}
	expired, cancel := context.WithTimeout(context.Background(), -1)
	defer cancel()
	canceled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	f("expired context", expired, scorePairs, context.DeadlineExceeded)
	f("canceled context", canceled, scorePairs, context.Canceled)
	f("invalid UTF-8", context.Background(), []sdk.Pair{{Query: "ok", Document: "\xff\xfe"}}, sdk.ErrInvalidInput)
	got, err := e.Score(context.Background(), nil)
	if err != nil || len(got) != 0 {
		t.Errorf("Score(nil) = %v, %v; want no scores", got, err)
	}
}

// childEnv, when set, makes the test binary act as a plugin process that
// loads a model without an ONNX Runtime library (see
// TestLoadWithoutLibrary).
const childEnv = "RERANK_ORT_TEST_CHILD"

func TestLoadWithoutLibrary(t *testing.T) {
	if dir := os.Getenv(childEnv); dir != "" {
		// Child: the library directory points nowhere and the test
		// binary's own directory holds no library.
		e := newSumEngine()
		_, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir})
		h, _ := e.Health(context.Background())
		if !errors.Is(err, sdk.ErrUnavailable) || h.State != sdk.StateFailed || !strings.Contains(h.Message, "not found") {
			t.Fatalf("Load without library: %v; Health %+v; want ErrUnavailable and failed health naming the missing library", err, h)
		}
		return
	}
	dir := writeSumModelDir(t, sumGraph{mask: true, labels: 1}, "model.onnx", nil, "")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLoadWithoutLibrary$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+dir, LibraryDirEnv+"="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("child process: %v\n%s", err, out)
	}
}

func TestLoadUnavailableProviders(t *testing.T) {
	requireRuntime(t)
	f := func(p Provider, wantMsg string) {
		t.Helper()
		t.Run(string(p), func(t *testing.T) {
			if p == CUDA {
				if _, err := os.Stat(filepath.Join(filepath.Dir(runtimeState.libPath), "libonnxruntime_providers_cuda.so")); err == nil {
					t.Skip("the CUDA provider library is installed here")
				}
			}
			// No model file: the provider is checked before the model.
			dir := writeSumModelDir(t, sumGraph{mask: true, labels: 1}, "", nil, "")
			e := New(p, "onnx-"+string(p), WithLogger(hclog.NewNullLogger()))
			e.newEncoder = func([]byte) (pairEncoder, error) { return wordEncoder{}, nil }
			_, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir})
			if !errors.Is(err, sdk.ErrUnavailable) || !strings.Contains(err.Error(), wantMsg) {
				t.Fatalf("Load: %v; want ErrUnavailable mentioning %q", err, wantMsg)
			}
			h, _ := e.Health(context.Background())
			if h.State != sdk.StateFailed || !strings.Contains(h.Message, wantMsg) {
				t.Errorf("Health = %+v; want failed mentioning %q", h, wantMsg)
			}
		})
	}
	f(CUDA, "CUDA execution provider unavailable")
	if runtime.GOOS != "darwin" {
		f(CoreML, "needs macOS")
	}
	f(Provider("tpu"), "unknown execution provider")
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestRevisionCoversTheTokenizer: the same model file with another
// tokenizer.json is another revision, so cached scores never cross over.
func TestRevisionCoversTheTokenizer(t *testing.T) {
	a, b := revision("abc", []byte(`{"a":1}`)), revision("abc", []byte(`{"a":2}`))
	if a == b || a == "abc" || revision("abc", []byte(`{"a":1}`)) != a || revision("abd", []byte(`{"a":1}`)) == a {
		t.Fatalf("revisions %s / %s do not follow the model and the tokenizer", a, b)
	}
}

func TestMemorySettings(t *testing.T) {
	f := func(p Provider, arenaOff, patternOff *bool, wantArena, wantPattern string) {
		t.Helper()
		m := p.memorySettings(sdk.LoadConfig{DisableArena: arenaOff, DisableMemPattern: patternOff})
		arena, pattern := m.details()
		if arena != wantArena || pattern != wantPattern {
			t.Errorf("%s: arena %q, pattern %q; want %q, %q", p, arena, pattern, wantArena, wantPattern)
		}
		if m.arena != strings.HasPrefix(arena, "on") || m.pattern != strings.HasPrefix(pattern, "on") {
			t.Errorf("%s: settings %+v disagree with their details %q, %q", p, m, arena, pattern)
		}
	}
	// Unset: the provider's default (off where memory is measured to be
	// held for nothing, on for cuda).
	f(CPU, nil, nil, "off (default)", "off (default)")
	f(CoreML, nil, nil, "off (default)", "off (default)")
	f(CUDA, nil, nil, "on (default)", "on (default)")
	// Set: the load's choice, either way, on every provider.
	f(CPU, new(false), new(false), "on", "on")
	f(CPU, new(true), nil, "off", "off (default)")
	f(CUDA, new(true), new(true), "off", "off")
	f(CoreML, nil, new(false), "off (default)", "on")
}
