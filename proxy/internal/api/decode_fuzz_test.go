package api

import (
	"encoding/json"
	"errors"
	"reflect"
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

// FuzzDecodeFast checks the fast path differentially: whenever it handles a
// body, the slow path must accept that body and decode it to the same
// request.
func FuzzDecodeFast(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := decodeFast(body)
		if !ok {
			return
		}
		slow, err := decodeRequestSlow(body)
		if err != nil {
			t.Fatalf("fast path accepted %q, slow path: %v", body, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("decode %q: fast %#v, slow %#v", body, fast, slow)
		}
	})
}

// fastSeeds are tricky bodies for FuzzDecodeFast and TestDecodeFastHandles.
var fastSeeds = []string{
	`{"query":"q","candidates":["a","b"],"top_k":1,"model":"m"}`,
	`{"query":"q","candidates":[]}`,
	` {"query" : "q" , "candidates" : [ "a" , "b" ] } `,
	"\t{\r\n\"query\":\"q\",\"candidates\":[\"a\"]}\n",
	`{"query":"\"\\\/\b\f\n\r\t","candidates":["\u00e9\u4e2d\uD83D\uDE00"]}`,
	`{"query":"\ud800","candidates":["a"]}`,
	`{"query":"\udc00","candidates":["a"]}`,
	`{"query":"\ud800\u0041","candidates":["a"]}`,
	`{"query":"\ud800x","candidates":["a"]}`,
	`{"query":"\u0000","candidates":["\u001f"]}`,
	`{"query":"\x","candidates":["a"]}`,
	`{"query":"\u12","candidates":["a"]}`,
	"{\"query\":\"\xff\",\"candidates\":[\"a\"]}",
	"{\"query\":\"\xed\xa0\x80\",\"candidates\":[\"a\"]}",
	"{\"query\":\"\xef\xbf\xbd\",\"candidates\":[\"é\"]}",
	"{\"query\":\"a\tb\",\"candidates\":[\"a\"]}",
	`{"query":"q","candidates":["a"],"model":null,"top_k":null}`,
	`{"query":"q","candidates":["a"],"model":1}`,
	`{"query":null,"candidates":["a"]}`,
	`{"query":"q","candidates":null}`,
	`{"query":"q","candidates":["a",null]}`,
	`{"query":"q","candidates":["a",]}`,
	`{"query":"q","candidates":["a"],}`,
	`{"query":"q","candidates":["a"]}x`,
	`x{"query":"q","candidates":["a"]}`,
	"\v{\"query\":\"q\",\"candidates\":[\"a\"]}",
	"\u00a0{\"query\":\"q\",\"candidates\":[\"a\"]}",
	`{"query":"q","candidates":["a"]}{}`,
	`{"query":"q","query":"r","candidates":["a"]}`,
	`{"query":"q","\u0071uery":"r","candidates":["a"]}`,
	`{"\u0071uery":"r","candidates":["a"]}`,
	`{"query":"q","candidates":["a"],"model":null,"model":"m"}`,
	`{"Query":"q","candidates":["a"]}`,
	`{"query":"q","Candidates":["a"],"candidates":["b"]}`,
	`{"query":"q","candidates":["a"],"top_k":3.0}`,
	`{"query":"q","candidates":["a"],"top_k":1e2}`,
	`{"query":"q","candidates":["a"],"top_k":1E2}`,
	`{"query":"q","candidates":["a"],"top_k":-0}`,
	`{"query":"q","candidates":["a"],"top_k":-5}`,
	`{"query":"q","candidates":["a"],"top_k":01}`,
	`{"query":"q","candidates":["a"],"top_k":-}`,
	`{"query":"q","candidates":["a"],"top_k":"3"}`,
	`{"query":"q","candidates":["a"],"top_k":true}`,
	`{"query":"q","candidates":["a"],"top_k":999999999999999999}`,
	`{"query":"q","candidates":["a"],"top_k":9223372036854775807}`,
	`{"query":"q","candidates":["a"],"top_k":9223372036854775808}`,
	`{"query":"q","candidates":["a"],"top_k":-99999999999999999999}`,
	`{"query":"q","candidates":["a"],"extra":{"a":[1,2.5e-3,true,false,null,"s"],"b":{}},"more":[]}`,
	`{"query":"q","candidates":["a"],"extra":-1.5E+10}`,
	`{"query":"q","candidates":["a"],"extra":1.}`,
	`{"query":"q","candidates":["a"],"extra":.5}`,
	`{"query":"q","candidates":["a"],"extra":[1,]}`,
	`{"query":"q","candidates":["a"],"extra":{"a"}}`,
	`{"query":"q","candidates":["a"],"extra":tru}`,
	`{"query":"q","candidates":["a"],"extra":nul}`,
	"{\"query\":\"q\",\"candidates\":[\"a\"],\"extra\":\"\xff\"}",
	`{"query":"q","candidates":["a"],"extra":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
	`{"query":"q","candidates":["a"],"":1}`,
	`{"candidates":["a"]}`,
	`{"query":"q"}`,
	`{}`, `[]`, `null`, ``, `{`, `"s"`, `1`,
}

// TestDecodeFastHandles shows which bodies take the fast path, and checks
// that the ones it handles decode as the slow path decodes them.
func TestDecodeFastHandles(t *testing.T) {
	for _, tc := range []struct {
		body string
		fast bool
	}{
		{`{"query":"q","candidates":["a","b"],"top_k":1,"model":"m"}`, true},
		{` {"query" : "q" , "candidates" : [ ] } `, true},
		{`{"query":"\"\\\/\b\f\n\r\t","candidates":["\u00e9\u4e2d\uD83D\uDE00"]}`, true},
		{"{\"query\":\"\xef\xbf\xbd\",\"candidates\":[\"é\"]}", true},
		{`{"query":"q","candidates":["a"],"model":null,"top_k":null}`, true},
		{`{"query":"q","candidates":["a"],"top_k":-0}`, true},
		{`{"query":"q","candidates":["a"],"top_k":999999999999999999}`, true},
		{`{"query":"q","candidates":["a"],"extra":{"a":[1,2.5e-3,true,false,null,"s"],"b":{}}}`, true},
		{`{"\u0071uery":"r","candidates":["a"]}`, true},
		{`{"query":"q","Query":1,"candidates":["a"]}`, true},
		// Fallbacks: results the slow path must produce (errors, U+FFFD
		// replacements, saturation, last duplicate wins).
		{`{"query":"\ud800","candidates":["a"]}`, false},
		{`{"query":"\ud800\u0041","candidates":["a"]}`, false},
		{"{\"query\":\"\xff\",\"candidates\":[\"a\"]}", false},
		{"{\"query\":\"a\tb\",\"candidates\":[\"a\"]}", false},
		{`{"query":"q","query":"r","candidates":["a"]}`, false},
		{`{"query":"q","\u0071uery":"r","candidates":["a"]}`, false},
		{`{"Query":"q","candidates":["a"]}`, false},
		{`{"query":"q","candidates":["a"],"top_k":3.0}`, false},
		{`{"query":"q","candidates":["a"],"top_k":1e2}`, false},
		{`{"query":"q","candidates":["a"],"top_k":9223372036854775807}`, false},
		{`{"query":"q","candidates":["a"],"top_k":"3"}`, false},
		{`{"query":"q","candidates":["a",null]}`, false},
		{`{"query":"q","candidates":["a"]}x`, false},
		{"\v{\"query\":\"q\",\"candidates\":[\"a\"]}", false},
		{`{"query":"q"}`, false},
		{`{"query":"q","candidates":["a"],"extra":1.}`, false},
		{`null`, false},
		{``, false},
	} {
		fast, ok := decodeFast([]byte(tc.body))
		if ok != tc.fast {
			t.Errorf("decodeFast(%q) handled = %v, want %v", tc.body, ok, tc.fast)
			continue
		}
		slow, err := decodeRequestSlow([]byte(tc.body))
		if !ok {
			continue
		}
		if err != nil || !reflect.DeepEqual(fast, slow) {
			t.Errorf("decode %q: fast %#v, slow %#v, %v", tc.body, fast, slow, err)
		}
	}
	for _, s := range fastSeeds {
		if fast, ok := decodeFast([]byte(s)); ok {
			if slow, err := decodeRequestSlow([]byte(s)); err != nil || !reflect.DeepEqual(fast, slow) {
				t.Errorf("decode %q: fast %#v, slow %#v, %v", s, fast, slow, err)
			}
		}
	}
}
