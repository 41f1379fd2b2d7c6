package main

import (
	"flag"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/proxy/internal/window"
	"github.com/rerank-sidecar/rerank/sdk"
)

// windowFlags configure long-document windows.
type windowFlags struct {
	on         bool
	maxWindows int
}

// windowFlagsOn defines the window flags on fs.
func windowFlagsOn(fs *flag.FlagSet, w *windowFlags, env map[string]string) {
	fs.BoolVar(&w.on, "long-document-windows", false,
		"Score every document longer than the model's max length as the best of overlapping windows of it (each window a pair with the query; stride three quarters of a window), instead of by its truncated beginning. A request may turn it on or off with \"windows\": true|false. Default false. Environment: RERANK_LONG_DOCUMENT_WINDOWS.")
	env["long-document-windows"] = "RERANK_LONG_DOCUMENT_WINDOWS"
	fs.IntVar(&w.maxWindows, "max-windows", window.DefaultMaxWindows,
		"The most windows one document is split into; text beyond them is not scored. Default 16. Environment: RERANK_MAX_WINDOWS.")
	env["max-windows"] = "RERANK_MAX_WINDOWS"
}

// windowSource builds the loaded model's window.Splitter from its
// tokenizer.json on first use (a request that asks for windows), so that a
// server whose clients never do keeps no second tokenizer in memory.
type windowSource struct {
	maxWindows int
	logger     hclog.Logger
	dir        atomic.Pointer[string]
	current    atomic.Pointer[lazySplitter]
}

// lazySplitter is the splitter of one model load.
type lazySplitter struct {
	dir, model string
	maxLength  int
	once       sync.Once
	s          *window.Splitter
}

// prepared records the resolved model dir, before the plugin loads it.
func (w *windowSource) prepared(dir string) { w.dir.Store(&dir) }

// loaded starts a new splitter for the model the plugin loaded, at the
// max length it applies.
func (w *windowSource) loaded(info sdk.ModelInfo) {
	dir := w.dir.Load()
	if dir == nil {
		return
	}
	w.current.Store(&lazySplitter{dir: *dir, model: info.Name, maxLength: info.MaxLength})
}

// splitter is the rerank.WindowSource: nil until a model is loaded, or when
// its tokenizer cannot be read (logged once; documents are then truncated).
func (w *windowSource) splitter(string) rerank.Splitter {
	l := w.current.Load()
	if l == nil {
		return nil
	}
	l.once.Do(func() {
		b, err := os.ReadFile(filepath.Join(l.dir, "tokenizer.json"))
		if err == nil {
			l.s, err = window.New(b, l.maxLength, w.maxWindows)
		}
		if err != nil {
			w.logger.Error("long-document windows unavailable: documents are truncated instead", "model", l.model, "error", err)
		}
	})
	if l.s == nil {
		return nil
	}
	return l.s
}
