package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
)

// dialect is a rerank API other than the seed's, chosen by path and body.
type dialect int

const (
	// jina is POST /rerank with "documents": the Jina API as vLLM,
	// llama.cpp, Dify and RAGFlow speak it. Errors are {"detail"}.
	jina dialect = iota
	// cohereV1 is POST /v1/rerank with "documents": the Cohere v1 API (and
	// Jina's own path). Errors are {"message"}.
	cohereV1
	// cohereV2 is POST /v2/rerank: the Cohere v2 API. Errors are
	// {"message"}.
	cohereV2
	// tei is POST /rerank with "texts": Hugging Face text-embeddings-
	// inference. Errors are {"error", "error_type"}.
	tei
)

// String names the dialect in logs and error messages.
func (d dialect) String() string {
	switch d {
	case jina:
		return "jina"
	case cohereV1:
		return "cohere-v1"
	case cohereV2:
		return "cohere-v2"
	case tei:
		return "tei"
	}
	return "unknown"
}

// listField is the request member that holds the documents.
func (d dialect) listField() string {
	if d == tei {
		return "texts"
	}
	return "documents"
}

// dialectRequest is a decoded request of any dialect; the embedded
// rerank.Request is what gets scored (its Candidates are the documents'
// texts, its TopK the top_n).
type dialectRequest struct {
	rerank.Request
	// dialect is the dialect the body was decoded as.
	dialect dialect
	// objects holds, for each document sent as a JSON object, the object as
	// sent (returned as is by return_documents); nil when every document
	// was a string.
	objects []json.RawMessage
	// returnDocuments asks for each result's document (return_documents,
	// or TEI's return_text).
	returnDocuments bool
}

// requestError is a body that does not decode as the dialect's request.
type requestError struct {
	// dialect is the dialect the body was read as, where the body said
	// (POST /rerank: "texts" makes it TEI).
	dialect dialect
	// field is the offending member, dotted ("documents.3"), or empty for
	// the body as a whole.
	field string
	msg   string
}

func (e *requestError) Error() string {
	if e.field == "" {
		return "invalid request: " + e.msg
	}
	return "invalid request: " + e.field + ": " + e.msg
}

// badField returns a requestError for one member.
func badField(field, format string, args ...any) error {
	return &requestError{field: field, msg: fmt.Sprintf(format, args...)}
}

// maxTopN bounds top_n's value as decoded; larger values mean "all" anyway,
// and the bound keeps int conversions exact.
const maxTopN = math.MaxInt32

// decodeDialect parses a rerank body of dialect d (for POST /rerank, jina or
// tei, chosen by the body's "texts"). Unknown members are ignored; the
// options of every dialect are accepted on every route. It tries the
// single-pass fast path first and falls back to decodeDialectSlow, which
// defines the result.
func decodeDialect(body []byte, d dialect) (*dialectRequest, error) {
	if r, ok := decodeDialectFast(body, d); ok {
		return r, nil
	}
	return decodeDialectSlow(body, d)
}

// decodeDialectSlow is decodeDialect without the fast path; its errors are
// *requestError, naming the dialect the body was read as.
func decodeDialectSlow(body []byte, d dialect) (*dialectRequest, error) {
	r, err := decodeDialectBody(body, &d)
	if err != nil {
		var re *requestError
		if errors.As(err, &re) {
			re.dialect = d
		}
		return nil, err
	}
	return r, nil
}

// decodeDialectBody is decodeDialectSlow's work; it sets *dp to the dialect
// once the body has told it. It is lenient
// where real clients need it: return_documents may be the string "true" or
// "false" (RAGFlow sends one), top_n may be an integral float, documents may
// be strings, {"text"} objects or Cohere v1 objects with rank_fields, and
// null means absent for every optional member.
func decodeDialectBody(body []byte, dp *dialect) (*dialectRequest, error) {
	d := *dp
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, &requestError{msg: "the body is empty; send a JSON object"}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &fields); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, &requestError{msg: fmt.Sprintf("the body is not valid JSON: %v (at byte %d)", syn, syn.Offset)}
		}
		return nil, &requestError{msg: "the body must be a JSON object"}
	}
	if fields == nil {
		return nil, &requestError{msg: "the body must be a JSON object, not null"}
	}
	if d == jina || d == tei {
		d = jina
		if isTEI(fields) {
			d = tei
		}
		*dp = d
	}
	r := &dialectRequest{dialect: d}

	raw, ok := fields["query"]
	if !ok || isNull(raw) {
		return nil, badField("query", "field required")
	}
	q, ok := decodeString(raw)
	if !ok {
		return nil, badField("query", "must be a string")
	}
	r.Query = q

	list := d.listField()
	raw, ok = fields[list]
	if !ok || isNull(raw) {
		return nil, badField(list, "field required")
	}
	var rankFields []string
	if rf, ok := fields["rank_fields"]; ok && !isNull(rf) {
		if err := json.Unmarshal(rf, &rankFields); err != nil || len(rankFields) == 0 {
			return nil, badField("rank_fields", "must be a non-empty list of strings")
		}
	}
	if err := r.decodeDocuments(raw, list, rankFields); err != nil {
		return nil, err
	}

	if raw, ok := fields["model"]; ok && !isNull(raw) {
		m, ok := decodeString(raw)
		if !ok {
			return nil, badField("model", "must be a string")
		}
		r.Model = m
	}
	if raw, ok := fields["top_n"]; ok && !isNull(raw) {
		n, ok := decodeIntegral(raw)
		if !ok {
			return nil, badField("top_n", "must be an integer")
		}
		if n < 1 {
			return nil, badField("top_n", "must be at least 1, got %d", n)
		}
		r.TopK, r.HasTopK = int(min(n, maxTopN)), true
	}
	for _, name := range []string{"return_documents", "return_text"} {
		if raw, ok := fields[name]; ok && !isNull(raw) {
			b, ok := decodeLenientBool(raw)
			if !ok {
				return nil, badField(name, "must be true or false")
			}
			r.returnDocuments = r.returnDocuments || b
		}
	}
	if raw, ok := fields["max_tokens_per_doc"]; ok && !isNull(raw) {
		n, ok := decodeIntegral(raw)
		if !ok {
			return nil, badField("max_tokens_per_doc", "must be an integer")
		}
		if n < 1 {
			return nil, badField("max_tokens_per_doc", "must be at least 1, got %d", n)
		}
		r.Options.MaxDocumentTokens = int(min(n, math.MaxInt32))
	}
	rawScores, hasRaw := false, false
	if raw, ok := fields["raw_scores"]; ok && !isNull(raw) {
		b, ok := decodeLenientBool(raw)
		if !ok {
			return nil, badField("raw_scores", "must be true or false")
		}
		rawScores, hasRaw = b, true
	}
	if raw, ok := fields["use_activation"]; ok && !isNull(raw) {
		b, ok := decodeLenientBool(raw)
		if !ok {
			return nil, badField("use_activation", "must be true or false")
		}
		if hasRaw && rawScores == b {
			return nil, badField("use_activation", "contradicts raw_scores: raw_scores %v asks for %s, use_activation %v for the opposite", rawScores, scoreKind(rawScores), b)
		}
		rawScores = !b
	}
	r.Options.Raw = rawScores
	if raw, ok := fields["truncate"]; ok && !isNull(raw) {
		b, ok := decodeLenientBool(raw)
		if !ok {
			return nil, badField("truncate", "must be true or false")
		}
		r.Options.Strict = !b
	}
	if raw, ok := fields["windows"]; ok && !isNull(raw) {
		b, ok := decodeLenientBool(raw)
		if !ok {
			return nil, badField("windows", "must be true or false")
		}
		r.Windows, r.HasWindows = b, true
	}
	if raw, ok := fields["truncation_direction"]; ok && !isNull(raw) {
		s, ok := decodeString(raw)
		if !ok {
			return nil, badField("truncation_direction", "must be a string")
		}
		switch strings.ToLower(s) {
		case "right":
		case "left":
			return nil, badField("truncation_direction", "left truncation is not supported: documents are cut at the end (right)")
		default:
			return nil, badField("truncation_direction", "must be \"right\" or \"left\", got %q", s)
		}
	}
	return r, nil
}

// isTEI reports whether a POST /rerank body's members make it a TEI request
// rather than a Jina one: a non-null "texts".
func isTEI(fields map[string]json.RawMessage) bool {
	raw, ok := fields["texts"]
	return ok && !isNull(raw)
}

// scoreKind names what raw_scores asks for.
func scoreKind(raw bool) string {
	if raw {
		return "raw logits"
	}
	return "activated scores"
}

// decodeDocuments fills r.Candidates (and r.objects) from the list member
// raw: each item a string or an object, whose text is its "text" member or,
// with rankFields, those members as "name: value" lines in order.
func (r *dialectRequest) decodeDocuments(raw json.RawMessage, list string, rankFields []string) error {
	var items []json.RawMessage
	if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &items) != nil {
		return badField(list, "must be a list of strings or objects")
	}
	r.Candidates = make([]string, len(items))
	for i, item := range items {
		if s, ok := decodeString(item); ok {
			r.Candidates[i] = s
			continue
		}
		if len(item) == 0 || item[0] != '{' {
			return badField(fmt.Sprintf("%s.%d", list, i), "must be a string or an object with a \"text\" member")
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(item, &obj) != nil {
			return badField(fmt.Sprintf("%s.%d", list, i), "is not a valid object")
		}
		text, err := documentText(obj, rankFields)
		if err != nil {
			return badField(fmt.Sprintf("%s.%d", list, i), "%v", err)
		}
		r.Candidates[i] = text
		if r.objects == nil {
			r.objects = make([]json.RawMessage, len(items))
		}
		r.objects[i] = item
	}
	return nil
}

// documentText is the text of an object document: with rankFields, Cohere
// v1's rendering of the named members as "name: value" lines (a member
// missing from this document is left out); without, its "text" member.
func documentText(obj map[string]json.RawMessage, rankFields []string) (string, error) {
	if len(rankFields) == 0 {
		raw, ok := obj["text"]
		if !ok {
			return "", errors.New("has no \"text\" member (name the members to rank with rank_fields)")
		}
		s, ok := decodeString(raw)
		if !ok {
			return "", errors.New("its \"text\" must be a string")
		}
		return s, nil
	}
	var b strings.Builder
	for _, name := range rankFields {
		raw, ok := obj[name]
		if !ok || isNull(raw) {
			continue
		}
		v, ok := decodeString(raw)
		if !ok {
			// Numbers, booleans and nested values are ranked as their
			// JSON text.
			v = string(raw)
		}
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(name)
		b.WriteString(": ")
		b.WriteString(v)
	}
	if b.Len() == 0 {
		return "", fmt.Errorf("has none of the rank_fields %q", rankFields)
	}
	return b.String(), nil
}

// decodeLenientBool accepts a JSON boolean, or the strings "true" and
// "false" in any case (RAGFlow sends "return_documents": "true").
func decodeLenientBool(raw json.RawMessage) (bool, bool) {
	switch string(raw) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	s, ok := decodeString(raw)
	if !ok {
		return false, false
	}
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// decodeIntegral accepts a JSON number with an integral value (3 or 3.0),
// saturating beyond int64.
func decodeIntegral(raw json.RawMessage) (int64, bool) {
	if n, ok := decodeInt(raw); ok {
		return int64(n), true
	}
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, false
	}
	var f float64
	if json.Unmarshal(raw, &f) != nil || f != math.Trunc(f) {
		return 0, false
	}
	switch {
	case f >= math.MaxInt64:
		return math.MaxInt64, true
	case f <= math.MinInt64:
		return math.MinInt64, true
	}
	return int64(f), true
}
