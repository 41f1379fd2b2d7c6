package main

import (
	"io"
	"strconv"
	"strings"
	"testing"
)

func TestQuantizationAlias(t *testing.T) {
	f := func(env map[string]string, args []string, want, wantErr string) {
		t.Helper()
		c, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("env %v: err = %v, want it to mention %q", env, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("env %v: %v", env, err)
		}
		if c.precision != want {
			t.Fatalf("env %v args %v: precision %q, want %q", env, args, c.precision, want)
		}
	}
	f(nil, nil, "fp32", "")
	f(map[string]string{"QUANTIZATION": "int8"}, nil, "int8", "")
	f(map[string]string{"QUANTIZATION": "BF16"}, nil, "bf16", "")
	f(map[string]string{"QUANTIZATION": "none"}, nil, "", "")
	f(map[string]string{"QUANTIZATION": "int8", "RERANK_PRECISION": "fp16"}, nil, "fp16", "")
	f(map[string]string{"QUANTIZATION": "int8"}, []string{"--precision", "fp32"}, "fp32", "")
	f(map[string]string{"QUANTIZATION": "int4"}, nil, "", "QUANTIZATION=\"int4\": use none, bf16 or int8")
}

func TestMemoryFlags(t *testing.T) {
	name := func(o optionalBool) string {
		if v := o.ptr(); v != nil {
			return strconv.FormatBool(*v)
		}
		return "unset"
	}
	f := func(env map[string]string, args []string, arena, pattern string) {
		t.Helper()
		c, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if name(c.disableArena) != arena || name(c.disableMemPattern) != pattern {
			t.Fatalf("env %v args %v: arena off %s, pattern off %s; want %s, %s", env, args, name(c.disableArena), name(c.disableMemPattern), arena, pattern)
		}
	}
	f(nil, nil, "unset", "unset")
	f(map[string]string{"RERANK_DISABLE_ARENA": "true"}, nil, "true", "unset")
	f(nil, []string{"--no-arena", "--no-mem-pattern"}, "true", "true")
	f(map[string]string{"RERANK_DISABLE_MEM_PATTERN": "1"}, []string{"--no-arena=false"}, "false", "true")
	f(map[string]string{"RERANK_DISABLE_ARENA": "true"}, []string{"--no-arena=false"}, "false", "unset")
	f(map[string]string{"RERANK_DISABLE_ARENA": "0", "RERANK_DISABLE_MEM_PATTERN": "false"}, nil, "false", "false")

	if _, err := parseServe([]string{"--no-arena=maybe"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Fatal("--no-arena=maybe was accepted")
	}
	if _, err := parseServe(nil, func(k string) string { return map[string]string{"RERANK_DISABLE_ARENA": "maybe"}[k] }, io.Discard); err == nil || !strings.Contains(err.Error(), "RERANK_DISABLE_ARENA") {
		t.Fatalf("RERANK_DISABLE_ARENA=maybe: err = %v, want it named", err)
	}
}
