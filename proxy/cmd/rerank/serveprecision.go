package main

import (
	"strings"

	"github.com/rerank-sidecar/rerank/sdk"
)

// quantizationEnv is the environment variable the server this one replaces
// (and its successor) read for the model's precision.
const quantizationEnv = "QUANTIZATION"

// quantizationAlias maps a QUANTIZATION value to a --precision value: none
// is the backend's default (an empty precision), bf16 and int8 are
// themselves.
func quantizationAlias(v string) (string, bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "none":
		return "", true
	case "bf16":
		return string(sdk.BF16), true
	case "int8":
		return string(sdk.INT8), true
	}
	return "", false
}
