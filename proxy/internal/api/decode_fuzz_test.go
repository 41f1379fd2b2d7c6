package api

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
	"unicode/utf8"

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
		// The request must not refer to the caller's buffer, which fasthttp
		// reuses for the next request: the fast path decodes a copy that is
		// then overwritten. (The fuzzer's own input is left as it is, so
		// that a failing input is recorded as it was decoded.)
		buf := bytes.Clone(body)
		fast, ok := decodeFast(buf)
		if !ok {
			return
		}
		for i := range buf {
			buf[i] = 'X'
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
	// Long strings, so that the eight-byte skip runs and stops at a special
	// byte in every position of a word.
	`{"query":"0123456789abcdef0123456789abcdef","candidates":["01234567\"89abcdef","0123456789\\nabcdef","0123456789abc\u00e9"]}`,
	"{\"query\":\"0123456789abcdef\x1f0123\",\"candidates\":[\"a\"]}",
	"{\"query\":\"0123456789abcdef\x7f0123\",\"candidates\":[\"01234567é89abcdefgh\"]}",
	"{\"query\":\"0123456789abcdef\xff0123\",\"candidates\":[\"a\"]}",
	"{\"query\":\"0123456789abcdé\\n89abcdef0123456\xc3\",\"candidates\":[\"a\"]}",
	"{\"query\":\"q\",\"candidates\":[\"0123456789abcdef 0123456789abcdef 中文中文中文中文 0123456789abcdef\"]}",
	"{\"query\":\"q\",\"candidates\":[\"0123456789abcdef\",\"0123456789abcde\"]}",
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

// TestPlainWord compares the eight-byte check with a byte-by-byte one: every
// byte value in every position of a word of plain bytes, and random words.
func TestPlainWord(t *testing.T) {
	ref := func(w [8]byte) bool {
		for _, c := range w {
			if strSpecial[c] || c >= utf8.RuneSelf {
				return false
			}
		}
		return true
	}
	f := func(w [8]byte) {
		t.Helper()
		if got, want := plainWord(binary.LittleEndian.Uint64(w[:])), ref(w); got != want {
			t.Fatalf("plainWord(%q) = %v, want %v", w, got, want)
		}
	}
	for pos := range 8 {
		for c := range 256 {
			w := [8]byte{'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'}
			w[pos] = byte(c)
			f(w)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		f(w)
		for i := range w { // mostly plain words with a few specials
			if rng.IntN(4) != 0 {
				w[i] = byte(0x20 + rng.IntN(0x60))
			}
		}
		f(w)
	}
}

// TestScanPlain compares scanPlain with a byte-by-byte check on strings of
// every length up to 100 with at most two odd bytes anywhere in them.
func TestScanPlain(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	odd := []byte{0x00, 0x09, 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0x9f, 0xa0, 0xc3, 0xff}
	for n := range 101 {
		for range 300 {
			s := make([]byte, n)
			for i := range s {
				s[i] = byte(0x20 + rng.IntN(0x5f))
			}
			for range rng.IntN(3) {
				if n > 0 {
					s[rng.IntN(n)] = odd[rng.IntN(len(odd))]
				}
			}
			var wantCtl, wantHi bool
			for _, c := range s {
				wantCtl = wantCtl || c < 0x20
				wantHi = wantHi || c >= 0x80
			}
			if ctl, hi := scanPlain(s); ctl != wantCtl || hi != wantHi {
				t.Fatalf("scanPlain(%q) = %v, %v, want %v, %v", s, ctl, hi, wantCtl, wantHi)
			}
		}
	}
}
