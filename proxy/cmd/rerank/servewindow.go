package main

import (
	"flag"
	"os"
	"path/filepath"
	"sync"

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

// windowSource builds a model's window.Splitter from its tokenizer.json on
// first use (a request that asks for windows), so that a server whose
// clients never do keeps no second tokenizer in memory; one per model and
// load identity (dir, max length, revision).
type windowSource struct {
	maxWindows int
	logger     hclog.Logger
	// info returns what the plugin of the model called name loaded, nil
	// while it is not loaded.
	info func(name string) *sdk.ModelInfo
	dirs sync.Map // model name → resolved model dir
	made sync.Map // windowKey → *lazySplitter
}

// windowKey identifies the splitter of one model load.
type windowKey struct {
	dir, revision string
	maxLength     int
}

// lazySplitter is the splitter of one model load.
type lazySplitter struct {
	dir, model string
	maxLength  int
	once       sync.Once
	s          *window.Splitter
}

// prepared records a model's resolved dir, before the plugin loads it.
func (w *windowSource) prepared(model, dir string) { w.dirs.Store(model, dir) }

// splitter is the rerank.WindowSource: nil while the model is not loaded,
// or when its tokenizer cannot be read (logged once; documents are then
// truncated).
func (w *windowSource) splitter(model string) rerank.Splitter {
	if w.info == nil {
		return nil
	}
	info := w.info(model)
	d, ok := w.dirs.Load(model)
	if info == nil || !ok {
		return nil
	}
	dir := d.(string)
	v, _ := w.made.LoadOrStore(windowKey{dir: dir, revision: info.Revision, maxLength: info.MaxLength},
		&lazySplitter{dir: dir, model: model, maxLength: info.MaxLength})
	l := v.(*lazySplitter)
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
