package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// dialectSeeds are tricky bodies for the dialect decoders' fuzz tests
// (testdata/fuzz holds more, found while fuzzing).
var dialectSeeds = []string{
	`{"model":"m","query":"q","documents":["a","b"],"top_n":1,"max_tokens_per_doc":8,"priority":0}`,
	`{"query":"q","documents":["a"],"return_documents":"true"}`,
	`{"query":"q","documents":["a"],"return_documents":"False","raw_scores":"true"}`,
	`{"query":"q","documents":[{"text":"a","id":1},"b"],"return_documents":true}`,
	`{"query":"q","documents":[{"title":"t","n":2}],"rank_fields":["title","n"]}`,
	`{"query":"q","documents":[{"title":null}],"rank_fields":["title"]}`,
	`{"query":"q","documents":[{"text":1}]}`,
	`{"query":"q","documents":[[]]}`,
	`{"query":"q","texts":["a","b"],"truncate":false,"raw_scores":true,"return_text":true}`,
	`{"query":"q","texts":["a"],"truncation_direction":"left"}`,
	`{"query":"q","texts":["a"],"truncation_direction":"RIGHT"}`,
	`{"query":"q","texts":["a"],"documents":["b"]}`,
	`{"query":"q","texts":null,"documents":["b"]}`,
	`{"query":"q","documents":["a"],"raw_scores":true,"use_activation":true}`,
	`{"query":"q","documents":["a"],"raw_scores":false,"use_activation":false}`,
	`{"query":"q","documents":["a"],"use_activation":null,"raw_scores":null}`,
	`{"query":"q","documents":["a"],"top_n":2.0}`,
	`{"query":"q","documents":["a"],"windows":true}`,
	`{"query":"q","texts":["a"],"windows":"false"}`,
	`{"query":"q","documents":["a"],"top_n":2.5}`,
	`{"query":"q","documents":["a"],"top_n":1e400}`,
	`{"query":"q","documents":["a"],"top_n":-1e30}`,
	`{"query":"q","documents":["a"],"top_n":99999999999999999999}`,
	`{"query":"q","documents":["a"],"max_tokens_per_doc":4294967296}`,
	`{"query":"q","documents":["a"],"candidates":["b"]}`,
	`{"query":"q","query":"r","documents":["a"]}`,
	`{"query":"\ud800","documents":["\u00e9"]}`,
	"{\"query\":\"\xff\",\"documents\":[\"a\"]}",
	`{"query":"q","documents":["a"],"extra":{"x":[1,{"y":null}]}}`,
	`{"query":"q","documents":[]}`,
	`{"query":"q","documents":{}}`,
	`{"query":"q"}`, `{"documents":["a"]}`, `{}`, `[]`, `null`, ``, `{`, `"s"`,
}

// FuzzDecodeDialect checks that any body, on either kind of route, decodes
// or fails with a requestError whose rendering in every dialect's shape is
// valid JSON, and never panics; and differentially, that whenever the fast
// path handles a body the slow path decodes it to the same request.
func FuzzDecodeDialect(f *testing.F) {
	for _, s := range dialectSeeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, v2 bool) {
		d := jina
		if v2 {
			d = cohereV2
		}
		// The request must not refer to the caller's buffer, which
		// fasthttp reuses for the next request: the fast path decodes a
		// copy that is then overwritten. (The fuzzer's own input is left
		// as it is, so that its corpus records what was decoded.)
		buf := bytes.Clone(body)
		fast, ok := decodeDialectFast(buf, d)
		for i := range buf {
			buf[i] = 'X'
		}
		slow, err := decodeDialectSlow(body, d)
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) {
				t.Fatalf("decode %q: error %v is not a requestError", body, err)
			}
			if ok {
				t.Fatalf("fast path accepted %q, slow path: %v", body, err)
			}
			if out := appendJSON(nil, re.Error()); !json.Valid(out) {
				t.Fatalf("decode %q: error renders as %s", body, out)
			}
			return
		}
		if slow.Candidates == nil || (slow.dialect != d && !(d == jina && slow.dialect == tei)) {
			t.Fatalf("decoded %q to %+v", body, slow)
		}
		if slow.objects != nil && len(slow.objects) != len(slow.Candidates) {
			t.Fatalf("decoded %q: %d objects for %d documents", body, len(slow.objects), len(slow.Candidates))
		}
		if slow.Options.MaxDocumentTokens < 0 || (slow.HasTopK && slow.TopK < 1) {
			t.Fatalf("decoded %q: out-of-range values %+v", body, slow.Request)
		}
		if ok && !reflect.DeepEqual(fast, slow) {
			t.Fatalf("decode %q: fast %#v, slow %#v", body, fast, slow)
		}
	})
}

// FuzzDocumentsBody checks the POST /v1/rerank switch: it never panics, and
// whenever it sends a body to the Jina / Cohere v1 route, the body is a
// JSON object with "documents" and without "candidates", so that every
// seed request keeps the seed route and its errors.
func FuzzDocumentsBody(f *testing.F) {
	for _, s := range dialectSeeds {
		f.Add([]byte(s))
	}
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !documentsBody(body) {
			return
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil {
			// The fast scan accepts only what it can parse; the slow
			// decoder's json must agree that it is JSON.
			t.Fatalf("documentsBody(%q) is true, but it is not a JSON object: %v", body, err)
		}
		if _, ok := fields["documents"]; !ok {
			t.Fatalf("documentsBody(%q) is true without documents", body)
		}
		if _, ok := fields["candidates"]; ok {
			t.Fatalf("documentsBody(%q) is true with candidates", body)
		}
		if _, err := decodeRequestSlow(body); err == nil {
			t.Fatalf("documentsBody(%q) is true for a valid seed request", body)
		}
	})
}

// TestDialectFastHandles checks that the fast path takes the plain bodies
// real clients send, so that they do not pay for the slow path.
func TestDialectFastHandles(t *testing.T) {
	for _, s := range []string{
		`{"model":"m","query":"q","documents":["a","b"],"top_n":1,"max_tokens_per_doc":8,"priority":0}`,
		`{"query":"q","documents":["a"],"return_documents":false,"raw_scores":true}`,
		`{"query":"q","texts":["a","b"],"truncate":false,"raw_scores":true,"return_text":true}`,
		`{"query":"q","documents":["a"],"use_activation":false,"model":null,"top_n":null}`,
	} {
		if _, ok := decodeDialectFast([]byte(s), jina); !ok {
			t.Errorf("fast path refused %s", s)
		}
	}
}
