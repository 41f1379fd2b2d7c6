package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// runTestmodel writes a model dir with a real cross-encoder graph and seeded
// random weights.
func runTestmodel(args []string) int {
	return testmodel(args, os.Stdout, os.Stderr)
}

// testmodel is runTestmodel with its output streams, for tests.
func testmodel(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rerank testmodel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	arch := fs.String("arch", crossencoder.ArchBERT, "The architecture to build: bert (BertForSequenceClassification) or xlm-roberta (XLMRobertaForSequenceClassification). Default bert.")
	layers := fs.Int("layers", 2, "The number of encoder layers. Default 2; the MiniLM-L6 shape is 6.")
	hidden := fs.Int("hidden", 32, "The hidden size (model width); it must be a multiple of --heads. Default 32; the MiniLM-L6 shape is 384.")
	heads := fs.Int("heads", 2, "The number of attention heads. Default 2; the MiniLM-L6 shape is 12.")
	intermediate := fs.Int("intermediate", 64, "The feed-forward width. Default 64; the MiniLM-L6 shape is 1536.")
	maxPositions := fs.Int("max-positions", 0, "The number of position embeddings (max_position_embeddings). Default 0 means 512 for bert and 514 for xlm-roberta, whose first two rows sit below its padding index.")
	labels := fs.Int("labels", 1, "The number of logits per pair (num_labels). Default 1, as rerankers have.")
	vocab := fs.Int("vocab-size", 0, "The vocabulary size. Default 0 means one more than the tokenizer's largest token id.")
	tokenizer := fs.String("tokenizer", "", "The tokenizer.json to copy into the model dir; tokenizer_config.json and special_tokens_map.json next to it are copied too when present. Required.")
	seed := fs.Uint64("seed", 1, "The seed of the random weights: the same seed and shape always give the same model bytes. Default 1.")
	opByOp := fs.Bool("op-by-op", false, "Write the graph as older exporters do: no node names, LayerNorm spelled out op by op, weights named onnx::MatMul_N. The same network and scores; a second, independent graph for conversions and benchmarks. Default false.")
	out := fs.String("out", "", "The model dir to write (created if missing): config.json, tokenizer files and onnx/model.onnx. Required.")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: rerank testmodel --tokenizer FILE --out DIR [flags]\n\n"+
			"Writes a Hugging Face style model dir whose onnx/model.onnx is a real BERT or XLM-RoBERTa\n"+
			"sequence classifier with seeded random weights. The scores it gives are meaningless;\n"+
			"config.json says so under %q.\n\nflags:\n", crossencoder.TestModelKey)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "rerank testmodel: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *tokenizer == "" || *out == "" {
		fmt.Fprintln(stderr, "rerank testmodel: --tokenizer and --out are required")
		return 2
	}
	cfg, err := crossencoder.ArchDefaults(*arch)
	if err != nil {
		fmt.Fprintf(stderr, "rerank testmodel: %v\n", err)
		return 2
	}
	cfg.VocabSize, cfg.Hidden, cfg.Layers, cfg.Heads, cfg.Intermediate, cfg.NumLabels = *vocab, *hidden, *layers, *heads, *intermediate, *labels
	if *maxPositions != 0 {
		cfg.MaxPositions = *maxPositions
	}
	if cfg.VocabSize == 0 {
		b, err := os.ReadFile(*tokenizer)
		if err != nil {
			fmt.Fprintf(stderr, "rerank testmodel: %v\n", err)
			return 1
		}
		if cfg.VocabSize, err = crossencoder.TokenizerVocabSize(b); err != nil {
			fmt.Fprintf(stderr, "rerank testmodel: %s: %v\n", *tokenizer, err)
			return 1
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "rerank testmodel: %v\n", err)
		return 2
	}
	w := crossencoder.RandomWeights(cfg, *seed)
	if err := crossencoder.WriteModelDir(*out, cfg, w, *tokenizer, crossencoder.DirOptions{OpByOp: *opByOp}); err != nil {
		fmt.Fprintf(stderr, "rerank testmodel: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s: %s %d layers × %d hidden, %d heads, intermediate %d, vocabulary %d, seed %d (%s)\n",
		*out, cfg.Arch, cfg.Layers, cfg.Hidden, cfg.Heads, cfg.Intermediate, cfg.VocabSize, *seed, crossencoder.TestModelNote)
	return 0
}
