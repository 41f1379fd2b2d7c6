package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
)

// route is one entry of the route table. Every field but handle is data the
// metrics and the access log read, so a route added to the table is counted
// under its own path and dialect without further code.
type route struct {
	// path is the exact request path, and the route label of its series.
	path string
	// dialect names the API family whose wire format the route speaks
	// ("native" for the FastAPI server's, "" for routes that score
	// nothing); it is the dialect label of rerank_requests_total.
	dialect string
	// post says the route answers POST; otherwise it answers GET and HEAD.
	post bool
	// handle answers the request; it fills in x what it learns (the model,
	// the pairs).
	handle func(s *Server, ctx *fasthttp.RequestCtx, x *exchange)
}

// allow is the route's Allow header for a 405.
func (rt *route) allow() string {
	if rt.post {
		return "POST"
	}
	return "GET, HEAD"
}

// allows reports whether the request's method is one the route answers.
func (rt *route) allows(ctx *fasthttp.RequestCtx) bool {
	if rt.post {
		return ctx.IsPost()
	}
	return ctx.IsGet() || ctx.IsHead()
}

// otherRoute is the route label of requests to paths not in the table: one
// value for all of them keeps the label bounded.
const otherRoute = "other"

// DialectNative is the dialect of the routes of the FastAPI server this
// replaces (POST /v1/rerank with "candidates").
const DialectNative = "native"

// routeTable returns the server's routes; /metrics is among them when the
// server exposes the metrics on its own port.
func (s *Server) routeTable() []*route {
	routes := []*route{
		{path: "/v1/rerank", dialect: DialectNative, post: true, handle: (*Server).rerank},
		{path: "/v2/rerank", dialect: cohereV2.String(), post: true, handle: func(s *Server, ctx *fasthttp.RequestCtx, x *exchange) {
			s.dialectRerank(ctx, x, cohereV2)
		}},
		{path: "/rerank", dialect: jina.String(), post: true, handle: func(s *Server, ctx *fasthttp.RequestCtx, x *exchange) {
			s.dialectRerank(ctx, x, jina)
		}},
		{path: "/info", handle: func(s *Server, ctx *fasthttp.RequestCtx, _ *exchange) { s.info(ctx) }},
		{path: "/v1/models", handle: (*Server).models},
		{path: "/health", handle: (*Server).health},
		{path: "/", handle: (*Server).root},
	}
	if s.cfg.Metrics != nil && s.cfg.ServeMetrics {
		routes = append(routes, &route{path: "/metrics", handle: (*Server).metrics})
	}
	return routes
}

// exchange is what the server learns about one request while answering
// it, for the metrics and the access log. Exchanges are pooled.
type exchange struct {
	start time.Time
	id    []byte // the request id, as sent back in X-Request-ID
	// model is the served model's name once the request was routed to one;
	// never the client's text.
	model string
	// dialect, when set, is the dialect the body chose on a route that
	// speaks several (documents on /v1/rerank, texts on /rerank); it
	// replaces the route's in the metrics and the access log.
	dialect string
	// pairs is the number of pairs of an answered rerank request.
	pairs int
	// tally says where the pairs' scores came from.
	tally metrics.Tally
	// ctx and span are the request's trace span, when traced.
	ctx  context.Context
	span trace.Span
}

var exchanges = sync.Pool{New: func() any { return &exchange{id: make([]byte, 0, maxRequestIDLen)} }}

// RequestIDHeader is the header a request id comes in and goes back in.
const RequestIDHeader = "X-Request-ID"

// maxRequestIDLen is the longest request id honoured: 128 bytes hold any
// UUID, trace id or ULID with room for a prefix; a longer one is replaced,
// so that no client can make log lines arbitrarily long.
const maxRequestIDLen = 128

// requestIDPrefix starts every generated request id: 64 random bits per
// process, so that ids from different proxies (and restarts) do not
// collide, followed by a per-process sequence number.
var requestIDPrefix = func() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:]) + "-"
}()

var requestIDSeq atomic.Uint64

// validRequestID reports whether a client's request id may be used as is:
// 1 to 128 visible ASCII characters, nothing that could break a log line or
// a header.
func validRequestID(id []byte) bool {
	if len(id) == 0 || len(id) > maxRequestIDLen {
		return false
	}
	for _, c := range id {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// begin starts an exchange: the clock, and the request id, honoured from
// X-Request-ID or generated, and set on the answer.
func (s *Server) begin(ctx *fasthttp.RequestCtx) *exchange {
	x := exchanges.Get().(*exchange)
	x.start = time.Now()
	x.model, x.pairs, x.tally, x.dialect = "", 0, metrics.Tally{}, ""
	if in := ctx.Request.Header.Peek(RequestIDHeader); validRequestID(in) {
		x.id = append(x.id[:0], in...)
	} else {
		x.id = append(x.id[:0], requestIDPrefix...)
		x.id = strconv.AppendUint(x.id, requestIDSeq.Add(1), 16)
	}
	ctx.Response.Header.SetBytesV(RequestIDHeader, x.id)
	return x
}

// end counts the answered request, writes its access log line and returns
// the exchange to the pool.
func (s *Server) end(ctx *fasthttp.RequestCtx, rt *route, x *exchange) {
	d := time.Since(x.start)
	path, dialect := otherRoute, ""
	if rt != nil {
		path, dialect = rt.path, rt.dialect
	}
	if x.dialect != "" {
		dialect = x.dialect
	}
	code := ctx.Response.StatusCode()
	if x.span != nil {
		x.endSpan(code)
	}
	s.cfg.Metrics.Request(path, dialect, x.model, code, d)
	if code == fasthttp.StatusOK && x.pairs > 0 {
		s.cfg.Metrics.Pairs(x.model, x.pairs, &x.tally)
	}
	if s.cfg.AccessLog != nil {
		s.cfg.AccessLog.Info("request",
			"request_id", string(x.id), "method", string(ctx.Method()), "route", path, "dialect", dialect,
			"model", x.model, "status", code, "duration_ms", float64(d.Microseconds())/1000,
			"pairs", x.pairs, "cached_pairs", x.tally.Cached())
	}
	exchanges.Put(x)
}

// requestID returns the id of the request being answered on ctx.
func requestID(ctx *fasthttp.RequestCtx) string {
	return string(ctx.Response.Header.Peek(RequestIDHeader))
}

// metricsHandler returns the exposition handler of the registry.
func metricsHandler(m *metrics.Registry) fasthttp.RequestHandler {
	return fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(m.Gatherer(), promhttp.HandlerOpts{}))
}

// metrics answers GET /metrics in the Prometheus text format.
func (s *Server) metrics(ctx *fasthttp.RequestCtx, _ *exchange) {
	s.metricsHandler(ctx)
}

// tracerName is the instrumentation scope of the HTTP spans.
const tracerName = "github.com/rerank-sidecar/rerank/proxy/internal/api"

// headerCarrier reads a request's headers for trace context extraction.
type headerCarrier struct{ h *fasthttp.RequestHeader }

func (c headerCarrier) Get(key string) string { return string(c.h.Peek(key)) }

func (c headerCarrier) Set(string, string) {}

func (c headerCarrier) Keys() []string {
	var keys []string
	for k := range c.h.All() {
		keys = append(keys, string(k))
	}
	return keys
}

// w3c extracts an incoming traceparent (and tracestate).
var w3c = propagation.TraceContext{}

// startSpan starts the request's server span, a child of the client's span
// when the request carries a W3C traceparent.
func (s *Server) startSpan(ctx *fasthttp.RequestCtx, rt *route, x *exchange) {
	parent := w3c.Extract(context.Background(), headerCarrier{&ctx.Request.Header})
	x.ctx, x.span = s.tracer.Start(parent, string(ctx.Method())+" "+rt.path,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(x.start),
		trace.WithAttributes(
			attribute.String("http.request.method", string(ctx.Method())),
			attribute.String("http.route", rt.path),
			attribute.String("rerank.dialect", rt.dialect),
			attribute.String("rerank.request_id", string(x.id)),
		))
}

// endSpan ends the request's span with what the request learnt.
func (x *exchange) endSpan(code int) {
	x.span.SetAttributes(
		attribute.Int("http.response.status_code", code),
		attribute.String("rerank.model", x.model),
		attribute.Int("rerank.pairs", x.pairs),
		attribute.Int("rerank.cached_pairs", x.tally.Cached()),
	)
	if x.dialect != "" {
		// The handler told the route's dialects apart (Cohere v1's
		// documents on /v1/rerank).
		x.span.SetAttributes(attribute.String("rerank.dialect", x.dialect))
	}
	if code >= fasthttp.StatusInternalServerError {
		x.span.SetStatus(codes.Error, fasthttp.StatusMessage(code))
	}
	x.span.End()
	x.ctx, x.span = nil, nil
}

// context is the request's base context: its span's when traced.
func (x *exchange) context() context.Context {
	if x.ctx != nil {
		return x.ctx
	}
	return context.Background()
}
