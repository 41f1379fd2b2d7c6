package api

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
)

// FuzzDecodeRequest checks that any body either decodes or fails with a
// ValidationError whose rendering is valid JSON, and never panics.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"query":"q","candidates":["a","b"],"top_k":1,"model":"m"}`,
		`{"query":"q","candidates":[]}`,
		`{"query":1,"candidates":"x","top_k":"3"}`,
		`[]`, `null`, ``, `{`, `{"candidates":[1,null,true,{"a":1}]}`,
		`{"query":"\ud800","candidates":["\u0000"],"top_k":-99999999999999999999}`,
		"{\"query\":\"\xff\",\"candidates\":[\"\xc3\"]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeRequest(body)
		if err == nil {
			if req == nil || req.Candidates == nil {
				t.Fatalf("decoded %q to %+v", body, req)
			}
			return
		}
		var ve *rerank.ValidationError
		if !errors.As(err, &ve) || len(ve.Fields) == 0 {
			t.Fatalf("decode %q: error %v is not a ValidationError", body, err)
		}
		out := appendJSON(nil, ve.Fields)
		if !json.Valid(out) || string(out) == "null" {
			t.Fatalf("decode %q: error renders as %s", body, out)
		}
	})
}
