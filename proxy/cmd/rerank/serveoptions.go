package main

import (
	"flag"
	"fmt"
	"sort"
	"strings"
)

// backendOptions is the repeatable --backend-option flag: KEY=VALUE
// settings passed to the plugin as sdk.LoadConfig.Options. One value may
// hold several, comma-separated, as the environment variable does.
type backendOptions map[string]string

func (o *backendOptions) String() string {
	if o == nil || len(*o) == 0 {
		return ""
	}
	keys := make([]string, 0, len(*o))
	for k := range *o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + (*o)[k]
	}
	return strings.Join(keys, ",")
}

func (o *backendOptions) Set(s string) error {
	if *o == nil {
		*o = backendOptions{}
	}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if k = strings.TrimSpace(k); !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, got %q", kv)
		}
		(*o)[k] = strings.TrimSpace(v)
	}
	return nil
}

// backendOptionsOn defines --backend-option on fs.
func backendOptionsOn(fs *flag.FlagSet, c *serveConfig, env map[string]string) {
	fs.Var(&c.backendOptions, "backend-option",
		"A KEY=VALUE setting for the backend plugin, repeatable or comma-separated. The ONNX Runtime plugins read "+
			"max_batch_size (pairs per inference run), padding (split: runs of similar lengths, the default; longest: one run per batch padded to its longest pair) "+
			"and execution-provider options prefixed with the provider, for example cuda.device_id=1, cuda.gpu_mem_limit=8589934592, "+
			"cuda.arena_extend_strategy=kSameAsRequested (see plugins/onnx-cuda/README.md). Default none. Environment: RERANK_BACKEND_OPTIONS.")
	env["backend-option"] = "RERANK_BACKEND_OPTIONS"
}
