package api

import (
	"bytes"
)

// Bits of the members decodeDialectFast has seen, to detect duplicates.
const (
	dseenQuery = 1 << iota
	dseenList
	dseenModel
	dseenTopN
	dseenReturn
	dseenReturnText
	dseenMaxTokens
	dseenRawScores
	dseenUseActivation
	dseenTruncate
	dseenWindows
)

// decodeDialectFast parses the common, plain request of dialect d in one
// pass over a private copy of body: string query, a list of strings, a
// string model, integer top_n and max_tokens_per_doc, boolean options, nulls,
// and any other members. It reports false for anything else (object
// documents, rank_fields, truncation_direction, string booleans, errors,
// duplicates, the other dialect's list member…), leaving it to
// decodeDialectSlow; when it reports true the result is the one
// decodeDialectSlow gives.
func decodeDialectFast(body []byte, d dialect) (*dialectRequest, bool) {
	p := fastParser{b: bytes.Clone(body)}
	r := &dialectRequest{dialect: d}
	list := d.listField()
	// On POST /rerank the list member decides the dialect; the fast path
	// takes whichever comes, and refuses a body that has both.
	either := d == jina || d == tei
	p.ws()
	if !p.eat('{') {
		return nil, false
	}
	seen := 0
	var rawScores, useActivation bool
	p.ws()
	if p.eat('}') {
		return nil, false
	}
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
		// Any member may be null, which means absent; the slow path
		// reports a missing query or list.
		if p.lit("null") {
			switch string(key) {
			case "query", "documents", "texts", "rank_fields":
				return nil, false
			}
		} else {
			var bit int
			switch k := string(key); {
			case k == "query":
				bit = dseenQuery
				s, ok := p.str()
				if !ok {
					return nil, false
				}
				r.Query = p.text(s)
			case k == list || (either && (k == "documents" || k == "texts")):
				bit = dseenList
				if either {
					r.dialect = jina
					if k == "texts" {
						r.dialect = tei
					}
				}
				c, ok := p.candidates()
				if !ok {
					return nil, false
				}
				r.Candidates = c
			case k == "model":
				bit = dseenModel
				s, ok := p.str()
				if !ok {
					return nil, false
				}
				r.Model = p.text(s)
			case k == "top_n":
				bit = dseenTopN
				n, ok := p.int()
				if !ok || n < 1 {
					return nil, false
				}
				r.TopK, r.HasTopK = int(min(n, maxTopN)), true
			case k == "max_tokens_per_doc":
				bit = dseenMaxTokens
				n, ok := p.int()
				if !ok || n < 1 || n > maxTopN {
					return nil, false
				}
				r.Options.MaxDocumentTokens = n
			case k == "return_documents", k == "return_text", k == "raw_scores", k == "use_activation", k == "truncate", k == "windows":
				b, ok := p.bool()
				if !ok {
					return nil, false
				}
				switch k {
				case "return_documents":
					bit = dseenReturn
					r.returnDocuments = r.returnDocuments || b
				case "return_text":
					bit = dseenReturnText
					r.returnDocuments = r.returnDocuments || b
				case "raw_scores":
					bit, rawScores = dseenRawScores, b
				case "use_activation":
					bit, useActivation = dseenUseActivation, b
				case "truncate":
					bit = dseenTruncate
					r.Options.Strict = !b
				case "windows":
					bit = dseenWindows
					r.Windows, r.HasWindows = b, true
				}
			case k == "rank_fields", k == "truncation_direction", k == "candidates",
				k == "documents", k == "texts":
				// Rare or the other dialect's: the slow path decides.
				return nil, false
			default:
				if !p.skip(0) {
					return nil, false
				}
			}
			if seen&bit != 0 {
				return nil, false
			}
			seen |= bit
		}
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
	if p.i != len(p.b) || seen&(dseenQuery|dseenList) != dseenQuery|dseenList {
		return nil, false
	}
	if seen&dseenUseActivation != 0 {
		if seen&dseenRawScores != 0 && rawScores == useActivation {
			return nil, false // contradictory: the slow path says so
		}
		rawScores = !useActivation
	}
	r.Options.Raw = rawScores
	return r, true
}

// bool parses a JSON boolean literal.
func (p *fastParser) bool() (bool, bool) {
	switch {
	case p.lit("true"):
		return true, true
	case p.lit("false"):
		return false, true
	}
	return false, false
}

// documentsBody reports whether body is an object with a "documents" member
// and no "candidates" member at the top level: a Jina / Cohere v1 request on
// POST /v1/rerank rather than a seed one. Anything it cannot read (invalid
// JSON, deep nesting) is left to the seed route, whose errors it keeps.
func documentsBody(body []byte) bool {
	documents, candidates := false, false
	whole := eachTopLevelKey(body, func(key []byte) bool {
		switch string(key) {
		case "candidates":
			candidates = true
			return false
		case "documents":
			documents = true
		}
		return true
	})
	return whole && documents && !candidates
}

// eachTopLevelKey calls f with each top-level member name of the JSON
// object in body, in order, skipping the values, until f returns false. It
// reports whether it read the whole body, so false means f stopped it or
// body is not an object it can read (invalid JSON, deep nesting, anything
// after the object).
func eachTopLevelKey(body []byte, f func(key []byte) bool) bool {
	p := fastParser{b: body}
	end := func() bool {
		p.ws()
		return p.i == len(p.b)
	}
	p.ws()
	if !p.eat('{') {
		return false
	}
	p.ws()
	if p.eat('}') {
		return end()
	}
	for {
		p.ws()
		key, ok := p.str()
		if !ok || !f(key) {
			return false
		}
		p.ws()
		if !p.eat(':') {
			return false
		}
		p.ws()
		if !p.skip(0) {
			return false
		}
		p.ws()
		if p.eat(',') {
			continue
		}
		return p.eat('}') && end()
	}
}
