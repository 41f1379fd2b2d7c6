package api

import (
	"unicode/utf16"
	"unicode/utf8"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
)

// Bits of fastParser.seen, one per known member, to detect duplicates.
const (
	seenQuery = 1 << iota
	seenCandidates
	seenModel
	seenTopK
)

// maxSkipDepth bounds the nesting of unknown members' values the fast path
// skips; deeper values fall back to the slow path (which allows 10,000).
const maxSkipDepth = 32

// maxIntDigits is the most digits a top_k may have on the fast path: 18
// decimal digits always fit int64, so no overflow check is needed while
// accumulating; longer ones (which the slow path saturates) fall back.
const maxIntDigits = 18

// fastParser is a single-pass parser for the common, valid request body.
type fastParser struct {
	b   []byte
	i   int
	buf []byte // scratch for strings with escapes
}

// decodeFast parses body in one pass when it is a plain, valid request: an
// object with a string query, an array of strings as candidates, a string or
// null model, an integer or null top_k, and any other members. It reports
// false for anything else (errors, duplicate known members, invalid UTF-8,
// lone surrogates, long integers...), leaving those to decodeRequestSlow.
// When it reports true, the result is the one decodeRequestSlow gives.
func decodeFast(body []byte) (*rerank.Request, bool) {
	p := fastParser{b: body}
	req := &rerank.Request{}
	p.ws()
	if !p.eat('{') {
		return nil, false
	}
	seen := 0
	for {
		p.ws()
		key, ok := p.str()
		if !ok {
			return nil, false
		}
		p.ws()
		if !p.eat(':') {
			return nil, false
		}
		p.ws()
		var bit int
		switch string(key) {
		case "query":
			bit = seenQuery
			s, ok := p.str()
			if !ok {
				return nil, false
			}
			req.Query = string(s)
		case "candidates":
			bit = seenCandidates
			c, ok := p.candidates()
			if !ok {
				return nil, false
			}
			req.Candidates = c
		case "model":
			bit = seenModel
			if !p.lit("null") {
				s, ok := p.str()
				if !ok {
					return nil, false
				}
				req.Model = string(s)
			}
		case "top_k":
			bit = seenTopK
			if !p.lit("null") {
				k, ok := p.int()
				if !ok {
					return nil, false
				}
				req.TopK, req.HasTopK = k, true
			}
		default:
			if !p.skip(0) {
				return nil, false
			}
		}
		if seen&bit != 0 {
			return nil, false
		}
		seen |= bit
		p.ws()
		if p.eat(',') {
			continue
		}
		if p.eat('}') {
			break
		}
		return nil, false
	}
	p.ws()
	if p.i != len(p.b) || seen&(seenQuery|seenCandidates) != seenQuery|seenCandidates {
		return nil, false
	}
	return req, true
}

// ws skips JSON whitespace only; any other space makes the body invalid.
func (p *fastParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// eat consumes c if it is next.
func (p *fastParser) eat(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// lit consumes the literal s if it is next.
func (p *fastParser) lit(s string) bool {
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

// candidates parses an array of strings, each copied out of the body.
func (p *fastParser) candidates() ([]string, bool) {
	if !p.eat('[') {
		return nil, false
	}
	out := []string{}
	p.ws()
	if p.eat(']') {
		return out, true
	}
	for {
		p.ws()
		s, ok := p.str()
		if !ok {
			return nil, false
		}
		out = append(out, string(s))
		p.ws()
		if p.eat(',') {
			continue
		}
		if p.eat(']') {
			return out, true
		}
		return nil, false
	}
}

// str parses a string and returns its value, which refers to the body or to
// p.buf, so it is valid only until the next call. It reports false for
// invalid UTF-8, control bytes, bad escapes and lone surrogates, which the
// slow path rejects or replaces with U+FFFD.
func (p *fastParser) str() ([]byte, bool) {
	if !p.eat('"') {
		return nil, false
	}
	buf := p.buf[:0]
	escaped := false
	seg := p.i
	for p.i < len(p.b) {
		// Skip plain bytes in a tight loop over locals (fields of p would be
		// reloaded every byte): strings are most of a request.
		b, i := p.b, p.i
		for i < len(b) && !strSpecial[b[i]] {
			i++
		}
		p.i = i
		if p.i == len(p.b) {
			break
		}
		c := p.b[p.i]
		switch {
		case c == '"':
			raw := p.b[seg:p.i]
			if !utf8.Valid(raw) {
				return nil, false
			}
			p.i++
			if !escaped {
				return raw, true
			}
			buf = append(buf, raw...)
			p.buf = buf
			return buf, true
		case c == '\\':
			raw := p.b[seg:p.i]
			if !utf8.Valid(raw) || p.i+1 >= len(p.b) {
				return nil, false
			}
			buf = append(buf, raw...)
			escaped = true
			e := p.b[p.i+1]
			p.i += 2
			switch e {
			case '"', '\\', '/':
				buf = append(buf, e)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r, ok := p.hex4()
				if !ok {
					return nil, false
				}
				if utf16.IsSurrogate(r) {
					// Only a high surrogate followed by a low one is a
					// pair; the slow path turns anything else into U+FFFD.
					if r >= 0xDC00 || !p.lit(`\u`) {
						return nil, false
					}
					r2, ok := p.hex4()
					if !ok || r2 < 0xDC00 || r2 > 0xDFFF {
						return nil, false
					}
					r = utf16.DecodeRune(r, r2)
				}
				buf = utf8.AppendRune(buf, r)
			default:
				return nil, false
			}
			seg = p.i
		case c < 0x20: // control bytes must be escaped in JSON strings
			return nil, false
		default:
			p.i++
		}
	}
	return nil, false
}

// strSpecial marks the bytes that end a run of plain string bytes: the
// closing quote, a backslash, and the control bytes JSON forbids unescaped.
var strSpecial = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// hex4 parses the four hex digits of a \u escape.
func (p *fastParser) hex4() (rune, bool) {
	if len(p.b)-p.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range p.b[p.i : p.i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	p.i += 4
	return r, true
}

// digits consumes a run of decimal digits and returns how many there were.
func (p *fastParser) digits() int {
	start := p.i
	for p.i < len(p.b) && '0' <= p.b[p.i] && p.b[p.i] <= '9' {
		p.i++
	}
	return p.i - start
}

// int parses a JSON integer literal (no fraction or exponent) of at most
// maxIntDigits digits that fits int.
func (p *fastParser) int() (int, bool) {
	neg := p.eat('-')
	start := p.i
	n := p.digits()
	if n == 0 || n > maxIntDigits || (n > 1 && p.b[start] == '0') {
		return 0, false
	}
	if p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		return 0, false
	}
	var v int64
	for _, c := range p.b[start:p.i] {
		v = v*10 + int64(c-'0')
	}
	if neg {
		v = -v
	}
	if int64(int(v)) != v { // int may be 32 bits
		return 0, false
	}
	return int(v), true
}

// number consumes a JSON number, checking its grammar.
func (p *fastParser) number() bool {
	p.eat('-')
	start := p.i
	n := p.digits()
	if n == 0 || (n > 1 && p.b[start] == '0') {
		return false
	}
	if p.eat('.') && p.digits() == 0 {
		return false
	}
	if p.eat('e') || p.eat('E') {
		if !p.eat('+') {
			p.eat('-')
		}
		if p.digits() == 0 {
			return false
		}
	}
	return true
}

// skip consumes any valid JSON value nested at most maxSkipDepth deep.
func (p *fastParser) skip(depth int) bool {
	if p.i >= len(p.b) {
		return false
	}
	switch c := p.b[p.i]; {
	case c == '"':
		_, ok := p.str()
		return ok
	case c == '-' || ('0' <= c && c <= '9'):
		return p.number()
	case c == 't':
		return p.lit("true")
	case c == 'f':
		return p.lit("false")
	case c == 'n':
		return p.lit("null")
	case c == '[' || c == '{':
		if depth >= maxSkipDepth {
			return false
		}
		end := byte(']')
		if c == '{' {
			end = '}'
		}
		p.i++
		p.ws()
		if p.eat(end) {
			return true
		}
		for {
			p.ws()
			if c == '{' {
				if _, ok := p.str(); !ok {
					return false
				}
				p.ws()
				if !p.eat(':') {
					return false
				}
				p.ws()
			}
			if !p.skip(depth + 1) {
				return false
			}
			p.ws()
			if p.eat(',') {
				continue
			}
			return p.eat(end)
		}
	}
	return false
}
