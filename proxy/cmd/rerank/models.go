package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/rerank-sidecar/rerank/proxy/internal/hub"
)

// runModels is `rerank models pull|list|path`.
func runModels(args []string) int {
	fs := flag.NewFlagSet("models", flag.ContinueOnError)
	cacheDir := fs.String("cache-dir", hub.DefaultCacheDir(), "Directory holding downloaded models (env RERANK_CACHE_DIR); models live under its models/ORG/NAME subdirectory.")
	revision := fs.String("revision", "main", "The repo revision (branch, tag or commit) to pull.")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: rerank models pull ID | list | path ID [flags]\n\n"+
			"pull downloads a model repo (config, tokenizer and ONNX or safetensors weights) with a progress bar,\n"+
			"sha256 checks and resume; the hub is HF_ENDPOINT (default %s), HF_TOKEN authenticates.\n"+
			"list shows the complete models in the cache; path prints where a model lives.\n\nflags:\n", hub.DefaultEndpoint)
		fs.PrintDefaults()
	}
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	verb, rest := args[0], args[1:]
	// Flags may come before or after the repo id.
	var pos []string
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	c := hub.NewClient(*cacheDir)
	switch verb {
	case "pull":
		if len(pos) != 1 {
			fs.Usage()
			return 2
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		c.Progress = os.Stderr
		dir, err := c.Pull(ctx, pos[0], *revision)
		if err != nil {
			fmt.Fprintln(os.Stderr, "rerank models:", err)
			return 1
		}
		fmt.Println(dir)
	case "path":
		if len(pos) != 1 || !hub.ValidRepoID(pos[0]) {
			fs.Usage()
			return 2
		}
		fmt.Println(c.Dir(pos[0], *revision))
	case "list":
		root := filepath.Join(*cacheDir, "models")
		markers, _ := filepath.Glob(filepath.Join(root, "*", "*", ".rerank-complete.json"))
		single, _ := filepath.Glob(filepath.Join(root, "*", ".rerank-complete.json"))
		for _, m := range append(single, markers...) {
			var info struct {
				Repo     string `json:"repo"`
				Revision string `json:"revision"`
			}
			if b, err := os.ReadFile(m); err == nil && json.Unmarshal(b, &info) == nil {
				fmt.Printf("%s\t%s\t%s\n", info.Repo, info.Revision, filepath.Dir(m))
			}
		}
	default:
		fmt.Fprintf(os.Stderr, "rerank models: unknown verb %q (want %s)\n", verb, strings.Join([]string{"pull", "list", "path"}, ", "))
		return 2
	}
	return 0
}
