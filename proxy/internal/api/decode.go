package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
)

// decodeRequest parses a POST /v1/rerank body with the strict types of the
// server it replaces (pydantic v2 StrictStr/StrictInt fields): every type
// error is reported, in field order, shaped as FastAPI reports it. Unknown
// fields are ignored. The returned request owns all its strings, so nothing
// refers to body afterwards.
func decodeRequest(body []byte) (*rerank.Request, error) {
	if req, ok := decodeFast(body); ok {
		return req, nil
	}
	return decodeRequestSlow(body)
}

// decodeRequestSlow is decodeRequest without the fast path: it handles every
// input, and defines the result the fast path must reproduce.
func decodeRequestSlow(body []byte) (*rerank.Request, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		// FastAPI treats an empty body as a missing one.
		return nil, invalid(rerank.FieldError{Type: "missing", Loc: []any{"body"}, Msg: "Field required", Input: nil})
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, invalid(rerank.FieldError{
				Type:  "json_invalid",
				Loc:   []any{"body", syn.Offset},
				Msg:   "JSON decode error",
				Input: map[string]any{},
				Ctx:   map[string]any{"error": syn.Error()},
			})
		}
		// Valid JSON but not an object.
		return nil, invalid(rerank.FieldError{
			Type:  "model_attributes_type",
			Loc:   []any{"body"},
			Msg:   "Input should be a valid dictionary or object to extract fields from",
			Input: json.RawMessage(bytes.Clone(trimmed)),
		})
	}
	req := &rerank.Request{}
	var errs []rerank.FieldError
	add := func(typ, msg string, input json.RawMessage, loc ...any) {
		errs = append(errs, rerank.FieldError{Type: typ, Loc: append([]any{"body"}, loc...), Msg: msg, Input: input})
	}
	missing := func(name string) {
		errs = append(errs, rerank.FieldError{Type: "missing", Loc: []any{"body", name}, Msg: "Field required", Input: json.RawMessage(bytes.Clone(trimmed))})
	}

	if raw, ok := fields["query"]; !ok {
		missing("query")
	} else if s, ok := decodeString(raw); ok {
		req.Query = s
	} else {
		add("string_type", "Input should be a valid string", raw, "query")
	}

	if raw, ok := fields["candidates"]; !ok {
		missing("candidates")
	} else {
		var items []json.RawMessage
		if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &items) != nil {
			add("list_type", "Input should be a valid list", raw, "candidates")
		} else {
			req.Candidates = make([]string, len(items))
			for i, item := range items {
				if s, ok := decodeString(item); ok {
					req.Candidates[i] = s
				} else {
					add("string_type", "Input should be a valid string", item, "candidates", i)
				}
			}
		}
	}

	if raw, ok := fields["model"]; ok && !isNull(raw) {
		if s, ok := decodeString(raw); ok {
			req.Model = s
		} else {
			add("string_type", "Input should be a valid string", raw, "model")
		}
	}

	if raw, ok := fields["top_k"]; ok && !isNull(raw) {
		if k, ok := decodeInt(raw); ok {
			req.TopK, req.HasTopK = k, true
		} else {
			add("int_type", "Input should be a valid integer", raw, "top_k")
		}
	}

	if len(errs) > 0 {
		return nil, &rerank.ValidationError{Fields: errs}
	}
	return req, nil
}

// invalid wraps one field error.
func invalid(f rerank.FieldError) error {
	return &rerank.ValidationError{Fields: []rerank.FieldError{f}}
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// decodeString accepts only a JSON string: no number, bool or null.
func decodeString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// decodeInt accepts only a JSON integer literal: no string, float, bool or
// null, as pydantic's strict int. Integers beyond int's range saturate, so
// the range check reports them as too large or too small.
func decodeInt(raw json.RawMessage) (int, bool) {
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, false
	}
	if bytes.ContainsAny(raw, ".eE") {
		return 0, false
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		var numErr *strconv.NumError
		if errors.As(err, &numErr) && errors.Is(numErr.Err, strconv.ErrRange) {
			if raw[0] == '-' {
				return math.MinInt, true
			}
			return math.MaxInt, true
		}
		return 0, false
	}
	switch {
	case n > math.MaxInt:
		return math.MaxInt, true
	case n < math.MinInt:
		return math.MinInt, true
	}
	return int(n), true
}
