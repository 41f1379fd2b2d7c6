package main

import (
	"io"
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
