package api

import (
	"bytes"
	"encoding/binary"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

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
	b       []byte // the body, a private copy that nothing writes to
	i       int
	buf     []byte // scratch for strings with escapes
	escaped bool   // whether the last string str returned is in buf
}

// decodeFast parses body in one pass when it is a plain, valid request: an
// object with a string query, an array of strings as candidates, a string or
// null model, an integer or null top_k, and any other members. It reports
// false for anything else (errors, duplicate known members, invalid UTF-8,
// lone surrogates, long integers...), leaving those to decodeRequestSlow.
// When it reports true, the result is the one decodeRequestSlow gives.
func decodeFast(body []byte) (*rerank.Request, bool) {
	// The strings of the request refer to a private copy of the body, made
	// in one allocation and never written to: the caller's buffer is reused
	// by fasthttp for the next request while the pairs may still be queued.
	p := fastParser{b: bytes.Clone(body)}
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
			req.Query = p.text(s)
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
				req.Model = p.text(s)
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
	// Room for the usual 10 to 50 candidates in one allocation.
	out := make([]string, 0, 32)
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
		out = append(out, p.text(s))
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
	// Most strings have no escapes: find the closing quote and look for a
	// backslash with the library's vector search, then check the bytes
	// between for control and non-ASCII bytes eight at a time.
	rest := p.b[p.i:]
	if q := bytes.IndexByte(rest, '"'); q >= 0 && bytes.IndexByte(rest[:q], '\\') < 0 {
		seg := rest[:q]
		control, nonASCII := scanPlain(seg)
		if control || (nonASCII && !utf8.Valid(seg)) {
			return nil, false
		}
		p.i += q + 1
		p.escaped = false
		return seg, true
	}
	return p.strEscaped()
}

// scanPlain reports whether s has a control byte (below 0x20) and whether
// it has a non-ASCII byte. A control byte is found with the borrow of
// w - 0x20 per byte, (w-0x2020…) &^ w & 0x8080…, which is exact for the
// word as a whole: a byte borrows into the next only when it is itself
// below 0x20.
func scanPlain(s []byte) (control, nonASCII bool) {
	var ctl, hi uint64
	// Four words a step, re-slicing s so that the compiler drops the
	// bounds checks: about twice the speed of one or two words a step.
	for len(s) >= 32 {
		w1 := binary.LittleEndian.Uint64(s)
		w2 := binary.LittleEndian.Uint64(s[8:])
		w3 := binary.LittleEndian.Uint64(s[16:])
		w4 := binary.LittleEndian.Uint64(s[24:])
		ctl |= (w1-ones8*0x20)&^w1 | (w2-ones8*0x20)&^w2 | (w3-ones8*0x20)&^w3 | (w4-ones8*0x20)&^w4
		hi |= w1 | w2 | w3 | w4
		s = s[32:]
	}
	for _, c := range s {
		ctl |= (uint64(c) - 0x20) &^ uint64(c) & 0x80
		hi |= uint64(c)
	}
	return ctl&high8 != 0, hi&high8 != 0
}

// strEscaped parses the rest of a string that has escapes (or is not closed)
// byte by byte, decoding the escapes into p.buf.
func (p *fastParser) strEscaped() ([]byte, bool) {
	buf := p.buf[:0]
	escaped := false
	nonASCII := false // whether the current segment needs a UTF-8 check
	seg := p.i
	for p.i < len(p.b) {
		// Skip plain bytes eight at a time, then byte by byte up to the
		// next special one, over locals (fields of p would be reloaded on
		// every step): strings are most of a request.
		b, i := p.b, p.i
		for {
			for i+8 <= len(b) && plainWord(binary.LittleEndian.Uint64(b[i:])) {
				i += 8
			}
			end := min(i+8, len(b))
			for i < end && !strSpecial[b[i]] {
				if b[i] >= utf8.RuneSelf {
					nonASCII = true
				}
				i++
			}
			if i < end || i == len(b) {
				break
			}
		}
		p.i = i
		if p.i == len(p.b) {
			break
		}
		c := p.b[p.i]
		switch {
		case c == '"':
			raw := p.b[seg:p.i]
			if nonASCII && !utf8.Valid(raw) {
				return nil, false
			}
			p.i++
			p.escaped = escaped
			if !escaped {
				return raw, true
			}
			buf = append(buf, raw...)
			p.buf = buf
			return buf, true
		case c == '\\':
			raw := p.b[seg:p.i]
			if (nonASCII && !utf8.Valid(raw)) || p.i+1 >= len(p.b) {
				return nil, false
			}
			nonASCII = false
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

// Masks for plainWord: one bit per byte of a 64-bit word.
const (
	ones8 = 0x0101010101010101 // the lowest bit of every byte
	high8 = 0x8080808080808080 // the highest bit of every byte
)

// plainWord reports whether none of the eight bytes of w is a quote, a
// backslash, a control byte or a non-ASCII byte, using the "has a zero
// byte" identity (x-ones8) &^ x & high8, which may flag a byte above a real
// match but never misses one. Non-ASCII bytes stop the fast skip so that
// str knows whether the string needs a UTF-8 check.
func plainWord(w uint64) bool {
	q := w ^ (ones8 * '"')
	bs := w ^ (ones8 * '\\')
	m := (q - ones8) &^ q
	m |= (bs - ones8) &^ bs
	m |= (w - ones8*0x20) &^ w // bytes below 0x20
	m |= w                     // bytes from 0x80
	return m&high8 == 0
}

// text returns s, the value str just returned, as a Go string: an unescaped
// string shares the bytes of p.b (a private copy of the body that is never
// written to, so the string cannot change), an escaped one is copied out of
// the scratch buffer that the next string reuses.
func (p *fastParser) text(s []byte) string {
	if p.escaped || len(s) == 0 {
		return string(s)
	}
	return unsafe.String(&s[0], len(s))
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
