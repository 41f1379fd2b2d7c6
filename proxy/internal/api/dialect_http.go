package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// bytesPerToken estimates the tokens of the usage figures the Cohere and
// Jina answers carry: subword vocabularies average about four bytes of
// English text per token. The figures are for the client's bookkeeping; the
// server never bills.
const bytesPerToken = 4

// searchUnitDocs is how many documents one Cohere search unit covers.
const searchUnitDocs = 100

// dialectRerank answers POST /v2/rerank, POST /rerank, and POST /v1/rerank
// with "documents": the same scoring path as the seed route, in the
// dialect's request and answer shapes.
func (s *Server) dialectRerank(ctx *fasthttp.RequestCtx, x *exchange, d dialect) {
	start := x.start
	body := ctx.PostBody()
	if len(body) > s.cfg.MaxBodyBytes {
		s.tooLarge.Add(1)
		s.cfg.Metrics.Reject("", metrics.ReasonTooLarge)
		writeDialectError(ctx, d, fasthttp.StatusRequestEntityTooLarge,
			fmt.Sprintf("Request body too large: the limit is %d bytes", s.cfg.MaxBodyBytes))
		return
	}
	req, err := decodeDialect(body, d)
	if err != nil {
		s.writeDialectFailure(ctx, d, err)
		return
	}
	d = req.dialect
	x.dialect = d.String()
	// top_n beyond the documents' count asks for all of them.
	if req.HasTopK && req.TopK >= len(req.Candidates) {
		req.TopK, req.HasTopK = 0, false
	}
	resp, err := s.score(ctx, x, &req.Request)
	if errors.Is(err, errClientGone) {
		return
	}
	if err != nil {
		s.writeDialectFailure(ctx, d, err)
		return
	}
	x.model, x.pairs = resp.Model, len(req.Candidates)
	s.writeDialectResults(ctx, req, resp, time.Since(start))
}

// writeDialectResults writes the 200 answer of req's dialect.
func (s *Server) writeDialectResults(ctx *fasthttp.RequestCtx, req *dialectRequest, resp rerank.Response, _ time.Duration) {
	results := resp.Results
	bp := responseBuffers.Get().(*[]byte)
	defer responseBuffers.Put(bp)
	b := (*bp)[:0]
	if req.dialect == tei {
		b = append(b, '[')
		for i, r := range results {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"index":`...)
			b = strconv.AppendInt(b, int64(r.Index), 10)
			if req.returnDocuments {
				b = append(b, `,"text":`...)
				b = appendJSONString(b, req.Candidates[r.Index])
			}
			b = append(b, `,"score":`...)
			b = appendPythonFloat(b, float64(r.Score))
			b = append(b, '}')
		}
		b = append(b, ']')
	} else {
		b = append(b, `{"id":`...)
		b = appendRequestID(b)
		if req.dialect != cohereV2 {
			b = append(b, `,"model":`...)
			b = append(b, s.modelNameJSON(resp.Model)...)
		}
		b = append(b, `,"results":[`...)
		for i, r := range results {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"index":`...)
			b = strconv.AppendInt(b, int64(r.Index), 10)
			b = append(b, `,"relevance_score":`...)
			b = appendPythonFloat(b, float64(r.Score))
			if req.returnDocuments && req.dialect != cohereV2 {
				b = append(b, `,"document":`...)
				if req.objects != nil && req.objects[r.Index] != nil {
					b = append(b, req.objects[r.Index]...)
				} else {
					b = append(b, `{"text":`...)
					b = appendJSONString(b, req.Candidates[r.Index])
					b = append(b, '}')
				}
			}
			b = append(b, '}')
		}
		b = append(b, ']')
		tokens := strconv.AppendInt(nil, int64(estimateTokens(req.Query, req.Candidates)), 10)
		units := strconv.AppendInt(nil, int64(max(1, (len(req.Candidates)+searchUnitDocs-1)/searchUnitDocs)), 10)
		if req.dialect != cohereV2 {
			b = append(b, `,"usage":{"total_tokens":`...)
			b = append(b, tokens...)
			b = append(b, `,"prompt_tokens":`...)
			b = append(b, tokens...)
			b = append(b, `},"meta":{"api_version":{"version":"1"},"billed_units":{"search_units":`...)
			b = append(b, units...)
			b = append(b, `}}}`...)
		} else {
			b = append(b, `,"meta":{"api_version":{"version":"2"},"billed_units":{"search_units":`...)
			b = append(b, units...)
			b = append(b, `},"tokens":{"input_tokens":`...)
			b = append(b, tokens...)
			b = append(b, `}}}`...)
		}
	}
	writeJSON(ctx, fasthttp.StatusOK, b)
	if cap(b) <= maxPooledResponse {
		*bp = b
	}
}

// estimateTokens estimates the tokens of scoring query against every
// document: each pair's bytes over bytesPerToken, rounded up.
func estimateTokens(query string, docs []string) int {
	n := 0
	for _, d := range docs {
		n += (len(query) + len(d) + bytesPerToken - 1) / bytesPerToken
	}
	return n
}

// appendRequestID appends a random UUID (version 4) as a JSON string, as
// Cohere's answers carry one.
func appendRequestID(b []byte) []byte {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails on supported platforms
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	var h [32]byte
	hex.Encode(h[:], u[:])
	b = append(b, '"')
	b = append(b, h[0:8]...)
	b = append(b, '-')
	b = append(b, h[8:12]...)
	b = append(b, '-')
	b = append(b, h[12:16]...)
	b = append(b, '-')
	b = append(b, h[16:20]...)
	b = append(b, '-')
	b = append(b, h[20:32]...)
	return append(b, '"')
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte { return appendJSON(b, s) }

// writeDialectFailure maps err to its status code and writes it in d's
// error shape: the dialects' counterpart of writeError.
func (s *Server) writeDialectFailure(ctx *fasthttp.RequestCtx, d dialect, err error) {
	var re *requestError
	if errors.As(err, &re) {
		d = re.dialect
	}
	invalidCode := fasthttp.StatusUnprocessableEntity
	if d == cohereV1 || d == cohereV2 {
		// Cohere answers a malformed request with 400.
		invalidCode = fasthttp.StatusBadRequest
	}
	var ve *rerank.ValidationError
	switch {
	case re != nil:
		writeDialectError(ctx, d, invalidCode, re.Error())
	case errors.Is(err, rerank.ErrUnknownModel):
		// 422 in every dialect, naming the served models, as on the seed
		// route: the request is well formed, its model is not served here.
		writeDialectError(ctx, d, fasthttp.StatusUnprocessableEntity, "model: "+modelMessage(err))
	case errors.As(err, &ve):
		writeDialectError(ctx, d, invalidCode, validationMessage(d, ve))
	case errors.Is(err, sdk.ErrTooLong):
		writeDialectError(ctx, d, fasthttp.StatusRequestEntityTooLarge, "Input too long: "+pluginMessage(err)+"; send truncate: true (or omit it) to have it truncated")
	case errors.Is(err, context.DeadlineExceeded):
		writeDialectError(ctx, d, fasthttp.StatusGatewayTimeout, "Rerank inference timed out")
	case errors.Is(err, sdk.ErrOverloaded):
		ctx.Response.Header.Set("Retry-After", retryAfterSeconds)
		writeDialectError(ctx, d, fasthttp.StatusTooManyRequests, "Server overloaded, retry later")
	case errors.Is(err, sdk.ErrNotLoaded), errors.Is(err, sdk.ErrUnavailable):
		// Loading, or no plugin could come up within the request's
		// deadline: worth retrying shortly, as on the seed route.
		ctx.Response.Header.Set("Retry-After", retryAfterSeconds)
		writeDialectError(ctx, d, fasthttp.StatusServiceUnavailable, "Model not loaded")
	case errors.Is(err, sdk.ErrInvalidInput):
		writeDialectError(ctx, d, invalidCode, pluginMessage(err))
	case errors.Is(err, context.Canceled):
		writeDialectError(ctx, d, fasthttp.StatusServiceUnavailable, "Request cancelled: the server is shutting down")
	default:
		s.cfg.Logger.Error("rerank request failed", "dialect", d.String(), "error", err)
		writeDialectError(ctx, d, fasthttp.StatusInternalServerError, "Internal Server Error")
	}
}

// modelMessage is the UnknownModelError's own message, which names the
// served models.
func modelMessage(err error) string {
	var um *rerank.UnknownModelError
	if errors.As(err, &um) {
		return um.Error()
	}
	return err.Error()
}

// pluginMessage is err's message without the layers' prefixes that say
// nothing to a client.
func pluginMessage(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "plugin: "); i >= 0 {
		msg = msg[i+len("plugin: "):]
	}
	return msg
}

// validationMessage renders a ValidationError for d: its messages, each
// after the offending member dotted, with the seed's "candidates" named as
// d's list member.
func validationMessage(d dialect, ve *rerank.ValidationError) string {
	msgs := make([]string, len(ve.Fields))
	for i, f := range ve.Fields {
		var path []string
		for _, l := range f.Loc[min(1, len(f.Loc)):] {
			s := fmt.Sprint(l)
			if s == "candidates" {
				s = d.listField()
			}
			path = append(path, s)
		}
		msg := strings.ReplaceAll(f.Msg, "candidate", "document")
		if d == tei {
			msg = strings.ReplaceAll(f.Msg, "candidate", "text")
		}
		msgs[i] = strings.Join(path, ".") + ": " + msg
	}
	return "invalid request: " + strings.Join(msgs, "; ")
}

// teiErrorType is TEI's error_type for a status code.
func teiErrorType(code int) string {
	switch code {
	case fasthttp.StatusTooManyRequests:
		return "Overloaded"
	case fasthttp.StatusServiceUnavailable:
		return "Unhealthy"
	case fasthttp.StatusUnauthorized:
		return "Unauthorized"
	case fasthttp.StatusInternalServerError, fasthttp.StatusGatewayTimeout:
		return "Backend"
	}
	return "Validation"
}

// writeDialectError writes an error body in d's shape: TEI's {"error",
// "error_type"}, Jina's {"detail"}, Cohere's {"message"}.
func writeDialectError(ctx *fasthttp.RequestCtx, d dialect, code int, msg string) {
	var b []byte
	switch d {
	case tei:
		b = append([]byte(`{"error":`), appendJSON(nil, msg)...)
		b = append(b, `,"error_type":`...)
		b = appendJSON(b, teiErrorType(code))
		b = append(b, '}')
	case jina:
		b = append([]byte(`{"detail":`), appendJSON(nil, msg)...)
		b = append(b, '}')
	default:
		b = append([]byte(`{"message":`), appendJSON(nil, msg)...)
		b = append(b, '}')
	}
	writeJSON(ctx, code, b)
}
