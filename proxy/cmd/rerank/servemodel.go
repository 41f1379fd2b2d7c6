package main

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/proxy/internal/hub"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// testModelFiles are the real ms-marco-MiniLM-L6-v2 tokenizer files (see
// testmodeldata/NOTICE) the generated test model is built with.
//
//go:embed testmodeldata/tokenizer.json testmodeldata/tokenizer_config.json testmodeldata/special_tokens_map.json
var testModelFiles embed.FS

// The generated test model: the shape of cross-encoder/ms-marco-MiniLM-L6-v2
// (6 layers, width 384, 12 heads, feed-forward 1536) with seeded random
// weights. The seed is fixed so that a cached copy is reused across runs.
const (
	testModelName   = "rerank-test-model-minilm-l6"
	testModelSeed   = 1
	testModelLayers = 6
	testModelHidden = 384
	testModelHeads  = 12
	testModelInter  = 1536
)

// modelSource says where the served model comes from.
type modelSource struct {
	// spec is --model: a local dir, a repo id, or empty for the test model.
	spec string
	// revision is the hub revision of a repo id.
	revision string
	// cacheDir is the root of the model cache.
	cacheDir string
}

// isLocal reports whether spec names an existing directory.
func (m modelSource) isLocal() bool {
	if m.spec == "" {
		return false
	}
	fi, err := os.Stat(m.spec)
	return err == nil && fi.IsDir()
}

// name is the model name the API reports and accepts by default: the repo
// id, a local dir's base name, or the test model's name.
func (m modelSource) name() string {
	switch {
	case m.spec == "":
		return testModelName
	case m.isLocal():
		return filepath.Base(filepath.Clean(m.spec))
	}
	return m.spec
}

// warning returns the test-model warning when the served model has random
// weights: the generated one, or a local dir `rerank testmodel` wrote.
func (m modelSource) warning() string {
	if m.spec == "" {
		return crossencoder.TestModelNote
	}
	if !m.isLocal() {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(m.spec, "config.json"))
	if err != nil {
		return ""
	}
	var cfg map[string]json.RawMessage
	if json.Unmarshal(b, &cfg) == nil {
		if _, ok := cfg[crossencoder.TestModelKey]; ok {
			return crossencoder.TestModelNote
		}
	}
	return ""
}

// resolve returns the local model dir: a local dir as is, a repo id through
// the hub cache (downloading when needed), or the generated test model.
func (m modelSource) resolve(ctx context.Context, logger hclog.Logger) (string, error) {
	switch {
	case m.spec == "":
		dir := filepath.Join(m.cacheDir, "testmodels", fmt.Sprintf("minilm-l6-seed%d", testModelSeed))
		logger.Warn("no model configured (--model, RERANK_MODEL): serving a generated MiniLM-L6-shaped "+crossencoder.TestModelNote, "dir", dir)
		return dir, writeTestModel(dir)
	case m.isLocal():
		return m.spec, nil
	case !hub.ValidRepoID(m.spec):
		return "", fmt.Errorf("serve: model %q is neither a local directory nor a repo id such as BAAI/bge-reranker-v2-m3", m.spec)
	}
	logger.Info("resolving model in the hub cache, downloading it if needed", "model", m.spec, "cache_dir", m.cacheDir)
	dir, err := hub.NewClient(m.cacheDir).Resolve(ctx, m.spec, m.revision)
	if err != nil {
		return "", fmt.Errorf("serve: model %q: %w", m.spec, err)
	}
	return dir, nil
}

// writeTestModel writes the test model into dir unless a complete copy is
// there. It writes into a sibling temporary dir and renames it into place,
// so an interrupted run leaves no half model behind.
func writeTestModel(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "onnx", "model.onnx")); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("serve: test model: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("serve: test model: %w", err)
	}
	defer os.RemoveAll(tmp)
	tokDir := filepath.Join(tmp, "tokenizer")
	if err := os.Mkdir(tokDir, 0o755); err != nil {
		return fmt.Errorf("serve: test model: %w", err)
	}
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} {
		b, err := testModelFiles.ReadFile("testmodeldata/" + name)
		if err != nil {
			return fmt.Errorf("serve: test model: %w", err)
		}
		if err := os.WriteFile(filepath.Join(tokDir, name), b, 0o644); err != nil {
			return fmt.Errorf("serve: test model: %w", err)
		}
	}
	cfg, err := crossencoder.ArchDefaults(crossencoder.ArchBERT)
	if err != nil {
		return fmt.Errorf("serve: test model: %w", err)
	}
	tok, err := testModelFiles.ReadFile("testmodeldata/tokenizer.json")
	if err != nil {
		return fmt.Errorf("serve: test model: %w", err)
	}
	if cfg.VocabSize, err = crossencoder.TokenizerVocabSize(tok); err != nil {
		return fmt.Errorf("serve: test model: %w", err)
	}
	cfg.Layers, cfg.Hidden, cfg.Heads, cfg.Intermediate = testModelLayers, testModelHidden, testModelHeads, testModelInter
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("serve: test model: %w", err)
	}
	out := filepath.Join(tmp, "model")
	if err := crossencoder.WriteModelDir(out, cfg, crossencoder.RandomWeights(cfg, testModelSeed), filepath.Join(tokDir, "tokenizer.json"), crossencoder.DirOptions{}); err != nil {
		return fmt.Errorf("serve: test model: %w", err)
	}
	if err := os.Rename(out, dir); err != nil {
		// Another server may have written it meanwhile.
		if _, statErr := os.Stat(filepath.Join(dir, "onnx", "model.onnx")); statErr == nil {
			return nil
		}
		return fmt.Errorf("serve: test model: %w", err)
	}
	return nil
}

// describe says in words what is served, for the startup log.
func (m modelSource) describe() string {
	switch {
	case m.spec == "":
		return "generated test model (" + crossencoder.TestModelNote + ")"
	case m.isLocal():
		return "local model dir " + m.spec
	}
	return "hub model " + strings.TrimSpace(m.spec)
}
