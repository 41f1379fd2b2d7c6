package ort

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// New weights behind an unchanged graph are a new identity: the revision
// (which keys the score cache) and the conversion cache key both cover
// every external data file the graph references, whatever its name (issue
// 13, failure 7: only the .onnx graph was hashed, so changed weights were
// answered with stale scores).
func TestExternalDataIsPartOfTheIdentity(t *testing.T) {
	requireRuntime(t)
	f := func(dataName string) {
		t.Helper()
		cfg, tok := precisionConfig(crossencoder.ArchBERT)
		w := crossencoder.RandomWeights(cfg, 11)
		dir := writeONNXDir(t, cfg, w, tok)
		m, err := crossencoder.Build(cfg, w)
		if err != nil {
			t.Fatal(err)
		}
		graph := filepath.Join(dir, "onnx", "model.onnx")
		if err := onnx.WriteModel(graph, m, onnx.WriteOptions{ExternalData: true}); err != nil {
			t.Fatal(err)
		}
		data := filepath.Join(dir, "onnx", dataName)
		if dataName != "model.onnx_data" {
			renameExternalData(t, graph, "model.onnx_data", dataName)
		}
		cache := t.TempDir()
		load := sdk.LoadConfig{ModelDir: dir, CacheDir: cache}
		before, scoresBefore := loadAndScore(t, load)
		int8Load := sdk.LoadConfig{ModelDir: dir, CacheDir: cache, Precision: sdk.INT8}
		if info, _ := loadAndScore(t, int8Load); info.Details["conversion"] != "converted" {
			t.Fatalf("%s: first int8 load: %v", dataName, info.Details)
		}
		graphBytes, err := os.ReadFile(graph)
		if err != nil {
			t.Fatal(err)
		}

		// Other weights in the data file; the graph stays byte for byte.
		b, err := os.ReadFile(data)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(b); i += 4 {
			b[i+3] ^= 0x01 // flip the low exponent bit of every float32: a different model
		}
		if err := os.WriteFile(data, b, 0o644); err != nil {
			t.Fatal(err)
		}
		after, scoresAfter := loadAndScore(t, load)
		if g, _ := os.ReadFile(graph); string(g) != string(graphBytes) {
			t.Fatal("the graph changed; the test means to change only the weights")
		}
		if maxAbs, _ := deviation(scoresBefore, scoresAfter); maxAbs == 0 {
			t.Fatalf("%s: the new weights score the same; the test changed nothing", dataName)
		}
		if after.Revision == before.Revision {
			t.Fatalf("%s: new external weights kept revision %s", dataName, after.Revision)
		}
		if before.Details["external_data"] != dataName {
			t.Fatalf("%s: external_data detail %q", dataName, before.Details["external_data"])
		}
		if info, _ := loadAndScore(t, int8Load); info.Details["conversion"] != "converted" {
			t.Fatalf("%s: int8 load after new weights: %q, want a fresh conversion", dataName, info.Details["conversion"])
		}
	}
	f("model.onnx_data")
	f("model.onnx.data")
}

// renameExternalData renames the graph's external data file from old to
// name and points every initializer's location at it.
func renameExternalData(t *testing.T, graph, old, name string) {
	t.Helper()
	b, err := os.ReadFile(graph)
	if err != nil {
		t.Fatal(err)
	}
	m, err := onnx.Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, init := range m.GetGraph().GetInitializer() {
		for _, e := range init.GetExternalData() {
			if e.GetKey() == "location" && e.GetValue() == old {
				e.Value = name
				n++
			}
		}
	}
	if n == 0 {
		t.Fatal("the graph references no external data")
	}
	if b, err = onnx.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(graph, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(filepath.Dir(graph), old), filepath.Join(filepath.Dir(graph), name)); err != nil {
		t.Fatal(err)
	}
}
