// Package api is the HTTP face of the server, wire-compatible with the
// FastAPI server it replaces: POST /v1/rerank, GET /health and GET /, with
// FastAPI's JSON error shapes; and GET /v1/models, OpenAI's model list with
// each model's state. It is the one place where errors become HTTP
// status codes.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/proxy/internal/models"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// Status is the model's state as /health and / report it.
type Status struct {
	// Ready is true once the backend has loaded the model and the stages
	// in front of it (the score cache) are set up for it.
	Ready bool
	// Failed is true when loading failed and is not being retried.
	Failed bool
	// Message says why the model is not ready, when it is not.
	Message string
	// Device is where inference runs or will run: cpu, cuda or coreml.
	Device string
	// LoadAttempts counts the failed load attempts since the last
	// successful load, LastError is the last one's error, and NextRetry
	// when the next one starts (zero when none is planned: loading, or
	// Failed, which is final).
	LoadAttempts int
	LastError    string
	NextRetry    time.Time
}

// Config configures a Server.
type Config struct {
	// Service validates and scores requests.
	Service *rerank.Service
	// Status reports the default model's state for /health and /; it must
	// be cheap and safe for concurrent use.
	Status func() Status
	// Models reports every model's state, the default first, for
	// /v1/models and /health's "models"; nil lists none.
	Models func() []models.Status
	// Version is reported by GET /.
	Version string
	// Timeout is the budget of one rerank request, queue wait and inference
	// included; 0 means no limit.
	Timeout time.Duration
	// MaxBodyBytes is the largest request body accepted; larger ones get 413.
	MaxBodyBytes int
	// HealthSections are extra objects in the /health answer, keyed by
	// section name (for example "local_cache" or "micro_batcher"); each
	// function returns a value that encodes to JSON, typically a stage's
	// Stats().
	HealthSections map[string]func() any
	// Warning, when set, is said in /health as "warning" and means the
	// served model must not be trusted, for example a generated test model.
	Warning string
	// Logger receives request failures that are the server's fault.
	Logger hclog.Logger
	// Metrics, when set, counts every request; nil counts nothing.
	Metrics *metrics.Registry
	// ServeMetrics serves Metrics as GET /metrics on this server; leave it
	// off when the metrics have a listener of their own.
	ServeMetrics bool
	// AccessLog, when set, receives one line per request: its id, method,
	// route, dialect, model, status, duration, pairs and cached pairs.
	AccessLog hclog.Logger
	// Auth, when set, checks the bearer token of every scoring route and of
	// /v1/models and /info; nil serves them without authentication.
	Auth Authenticator
	// Info reports the model's facts and the limits for GET /info; nil
	// reports zeros. It must be cheap and safe for concurrent use.
	Info func() Info
	// Tracing, when set, records a span for every request to a scoring
	// route, continuing the trace of an incoming W3C traceparent header;
	// the pipeline's spans are its children. nil traces nothing.
	Tracing trace.TracerProvider
	// Conn bounds connections and the time a client may take; zero fields
	// take the defaults (DefaultConnLimits).
	Conn ConnLimits
}

// ConnLimits are the HTTP server's connection limits (docs/RELIABILITY.md,
// "Limits of the HTTP server").
type ConnLimits struct {
	// ReadTimeout bounds reading one request, headers and body, from the
	// opening of the connection for its first request and from the first
	// byte for the next ones: a client trickling them (slowloris) is
	// answered 408 and disconnected.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing one answer once it is ready: a client
	// that stops reading is disconnected.
	WriteTimeout time.Duration
	// IdleTimeout is how long a keep-alive connection may wait for its
	// next request before it is closed.
	IdleTimeout time.Duration
	// MaxConnections bounds the connections served at once; one more is
	// answered 503 and closed.
	MaxConnections int
	// MaxConnsPerIP bounds the connections from one client address; 0
	// means no bound.
	MaxConnsPerIP int
}

// DefaultConnLimits are the limits a zero ConnLimits field takes.
var DefaultConnLimits = ConnLimits{
	// A 2 MiB body (the default limit) at 35 KB/s, a slow mobile link,
	// arrives within a minute; a slowloris connection is held no longer.
	ReadTimeout: 60 * time.Second,
	// An answer is tens of KB, written at once to a client that reads;
	// one that has read nothing for 30 s is gone or hostile.
	WriteTimeout: 30 * time.Second,
	// Reverse proxies and HTTP client pools keep idle connections about a
	// minute (nginx 60 s, Go's net/http 90 s): 75 s lets theirs close
	// first, so they never send on a connection the server is closing.
	IdleTimeout: 75 * time.Second,
	// Ten thousand connections (C10k) cover many clients' pools and
	// thousands of idle keep-alives; each costs a goroutine and its
	// buffers (32 KiB read, 4 KiB write): about 80 KiB of resident
	// memory each as measured with a thousand open (docs/RELIABILITY.md),
	// under 1 GB at the bound.
	MaxConnections: 10000,
	// No per-address bound: a sidecar or per-node proxy commonly sees
	// every request from one address (the local application, an
	// ingress, a load balancer), which a bound would starve.
	MaxConnsPerIP: 0,
}

// withDefaults fills l's zero fields from DefaultConnLimits.
func (l ConnLimits) withDefaults() ConnLimits {
	d := DefaultConnLimits
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = d.ReadTimeout
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = d.WriteTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	if l.MaxConnections <= 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.MaxConnsPerIP < 0 {
		l.MaxConnsPerIP = 0
	}
	return l
}

// DefaultMaxBodyBytes is the default body limit: 2 MiB holds 200 candidates
// of 4,000 characters of mostly ASCII text with room to spare.
const DefaultMaxBodyBytes = 2 << 20

// readBufferSize is the per-connection read buffer (see New).
const readBufferSize = 32 << 10

// statusClientClosedRequest is the status logged for a request whose client
// left before its answer (nginx's 499); no client ever reads it.
const statusClientClosedRequest = 499

// retryAfterSeconds is the Retry-After of a 429: the micro-batcher's queue
// drains in milliseconds, and one second is the smallest value the header
// can carry.
const retryAfterSeconds = "1"

// Server answers the HTTP API.
type Server struct {
	cfg      Config
	sections []string
	// modelJSON maps a model's canonical name to its JSON encoding, so that
	// an answer is not encoded through encoding/json for it each time.
	modelJSON      sync.Map
	srv            *fasthttp.Server
	routes         map[string]*route
	metricsHandler fasthttp.RequestHandler
	tracer         trace.Tracer // nil when tracing is off

	lingering   atomic.Int64  // connections reading out a refused body
	disconnects atomic.Uint64 // requests cancelled because their client left
	tooLarge    atomic.Uint64 // bodies refused with 413
	// readTimeouts counts requests not received within the read timeout.
	readTimeouts atomic.Uint64
	// acceptErrors counts accept errors waited out (out of descriptors).
	acceptErrors atomic.Uint64
}

// Stats are the HTTP server's counters, /health's "http" section.
type Stats struct {
	// ClientDisconnects counts rerank requests cancelled because their
	// client closed the connection before the answer: their pending pairs
	// were dropped (micro_batcher.dropped_pairs counts those).
	ClientDisconnects uint64 `json:"client_disconnects"`
	// BodyTooLarge counts requests answered 413.
	BodyTooLarge uint64 `json:"body_too_large"`
	// LingeringConnections counts the connections answered before their
	// body was read that are reading and discarding the rest of it.
	LingeringConnections int64 `json:"lingering_connections"`
	// ReadTimeouts counts requests answered 408: not received within the
	// read timeout (a client trickling its headers or body).
	ReadTimeouts uint64 `json:"read_timeouts"`
	// OpenConnections counts the client connections open now.
	OpenConnections int32 `json:"open_connections"`
	// RejectedConnections counts connections refused at accept: over the
	// connection bound (answered 503) or the per-address one.
	RejectedConnections uint32 `json:"rejected_connections"`
	// AcceptErrors counts failed accepts waited out and retried, such as
	// the process being out of file descriptors.
	AcceptErrors uint64 `json:"accept_errors"`
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		ClientDisconnects: s.disconnects.Load(), BodyTooLarge: s.tooLarge.Load(), LingeringConnections: s.lingering.Load(),
		ReadTimeouts: s.readTimeouts.Load(), OpenConnections: max(0, s.srv.GetOpenConnectionsCount()), RejectedConnections: s.srv.GetRejectedConnectionsCount(),
		AcceptErrors: s.acceptErrors.Load(),
	}
}

// httpSection is the name of the /health section holding Stats.
const httpSection = "http"

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	cfg.Conn = cfg.Conn.withDefaults()
	if cfg.Status == nil {
		cfg.Status = func() Status { return Status{Ready: true} }
	}
	if cfg.Models == nil {
		cfg.Models = func() []models.Status { return nil }
	}
	s := &Server{cfg: cfg, routes: map[string]*route{}}
	for _, rt := range s.routeTable() {
		s.routes[rt.path] = rt
	}
	if cfg.Metrics != nil {
		s.metricsHandler = metricsHandler(cfg.Metrics)
	}
	if cfg.Tracing != nil {
		s.tracer = cfg.Tracing.Tracer(tracerName)
	}
	for name := range cfg.HealthSections {
		s.sections = append(s.sections, name)
	}
	if _, ok := cfg.HealthSections[httpSection]; !ok {
		sections := make(map[string]func() any, len(cfg.HealthSections)+1)
		for k, v := range cfg.HealthSections {
			sections[k] = v
		}
		sections[httpSection] = func() any { return s.Stats() }
		s.cfg.HealthSections = sections
		s.sections = append(s.sections, httpSection)
	}
	slices.Sort(s.sections)
	s.srv = &fasthttp.Server{
		Handler:            s.Handle,
		ErrorHandler:       s.handleTransportError,
		Name:               "rerank-server",
		MaxRequestBodySize: cfg.MaxBodyBytes,
		// ConnLimits says why each limit is what it is.
		ReadTimeout:          cfg.Conn.ReadTimeout,
		WriteTimeout:         cfg.Conn.WriteTimeout,
		IdleTimeout:          cfg.Conn.IdleTimeout,
		Concurrency:          cfg.Conn.MaxConnections,
		MaxConnsPerIP:        cfg.Conn.MaxConnsPerIP,
		NoDefaultContentType: true,
		// A request is read in one system call when it fits the read
		// buffer: 20 candidates of 1,000 characters make about 20 KB,
		// and fasthttp's 4 KB default took two or three reads for a
		// typical request. The buffer is per open connection.
		ReadBufferSize: readBufferSize,
		// Connection-level errors (a body over the limit, a malformed
		// request) are the client's and already answered: debug level.
		Logger: cfg.Logger.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
	}
	return s
}

// Serve answers connections from ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	return s.srv.Serve(listener{Listener: ln, lingering: &s.lingering, acceptErrors: &s.acceptErrors, lastLog: new(atomic.Int64),
		logf: func(format string, args ...any) { s.cfg.Logger.Warn(fmt.Sprintf(format, args...)) }})
}

// Shutdown stops accepting connections and waits for the open requests to
// finish or ctx to end.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.ShutdownWithContext(ctx) }

// Handle routes one request through the route table, and counts it.
func (s *Server) Handle(ctx *fasthttp.RequestCtx) {
	x := s.begin(ctx)
	rt := s.routes[string(ctx.Path())]
	switch {
	case rt == nil:
		writeDetail(ctx, fasthttp.StatusNotFound, "Not Found")
	case s.cfg.Auth != nil && !s.authorized(ctx, ctx.Path()):
	case !rt.allows(ctx):
		s.methodNotAllowed(ctx, rt.allow())
	default:
		if s.tracer != nil && rt.dialect != "" {
			s.startSpan(ctx, rt, x)
		}
		rt.handle(s, ctx, x)
	}
	s.end(ctx, rt, x)
}

func (s *Server) methodNotAllowed(ctx *fasthttp.RequestCtx, allow string) {
	ctx.Response.Header.Set("Allow", allow)
	writeDetail(ctx, fasthttp.StatusMethodNotAllowed, "Method Not Allowed")
}

// handleTransportError answers requests fasthttp could not read. The
// connection is closed after the answer, with the client possibly still
// sending its body: it lingers (see conn.Close), so that the client reads
// the answer instead of a connection reset.
func (s *Server) handleTransportError(ctx *fasthttp.RequestCtx, err error) {
	x := s.begin(ctx)
	if c, ok := ctx.Conn().(*conn); ok {
		c.lingerOnClose()
	}
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		s.refuseTooLarge(ctx)
	case errors.As(err, &ne) && ne.Timeout():
		// The client did not send its request within the read timeout
		// (a slowloris, or a link too slow for its body).
		s.readTimeouts.Add(1)
		writeTransportError(ctx, fasthttp.StatusRequestTimeout,
			fmt.Sprintf("Request timeout: the request was not received within %v", s.cfg.Conn.ReadTimeout))
	case errors.As(err, &small):
		writeTransportError(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge,
			fmt.Sprintf("Request header too large: the limit is %d bytes", readBufferSize))
	default:
		writeTransportError(ctx, fasthttp.StatusBadRequest, "Invalid HTTP request received.")
	}
	s.end(ctx, s.routes[string(ctx.Path())], x)
}

// writeTransportError writes an error found before the request was read
// whole (its body is not there to choose a dialect by) in the shape of its
// path's route: Cohere's {"message"} on /v2/rerank, which speaks Cohere
// only, FastAPI's {"detail"} elsewhere (the seed's routes, and Jina's on
// /rerank, which TEI shares: without the body the two cannot be told apart,
// and Jina's shape is FastAPI's). Only a body refused for its declared
// length keeps its path: fasthttp resets the request when reading its
// headers or body fails (a read timeout, a malformed header), so those
// errors get FastAPI's shape on every route.
func writeTransportError(ctx *fasthttp.RequestCtx, code int, msg string) {
	if string(ctx.Path()) == "/v2/rerank" {
		writeDialectError(ctx, cohereV2, code, msg)
		return
	}
	writeDetail(ctx, code, msg)
}

// refuseTooLarge answers 413 and counts the rejection.
func (s *Server) refuseTooLarge(ctx *fasthttp.RequestCtx) {
	s.tooLarge.Add(1)
	s.cfg.Metrics.Reject("", metrics.ReasonTooLarge)
	writeTransportError(ctx, fasthttp.StatusRequestEntityTooLarge,
		fmt.Sprintf("Request body too large: the limit is %d bytes", s.cfg.MaxBodyBytes))
}

func (s *Server) rerank(ctx *fasthttp.RequestCtx, x *exchange) {
	start := x.start
	// A body that arrived without Content-Length can still exceed the limit
	// when fasthttp streams; check here as well.
	body := ctx.PostBody()
	if len(body) > s.cfg.MaxBodyBytes {
		s.refuseTooLarge(ctx)
		return
	}
	// decodeRequest copies every string out of the body: nothing from ctx
	// is used past this point by any other goroutine.
	req, ok := decodeFast(body)
	if !ok && documentsBody(body) {
		// Jina / Cohere v1: "documents" where the seed has "candidates".
		s.dialectRerank(ctx, x, cohereV1)
		return
	}
	var err error
	if !ok {
		req, err = decodeRequestSlow(body)
	}
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	resp, err := s.score(ctx, x, req)
	if errors.Is(err, errClientGone) {
		return
	}
	if err != nil {
		s.writeError(ctx, err)
		return
	}
	x.model, x.pairs = resp.Model, len(req.Candidates)
	elapsed := time.Since(start)
	if len(req.Candidates) == 0 {
		// Nothing was scored: the seed server reported 0.0.
		elapsed = 0
	}
	s.writeResults(ctx, resp.Results, resp.Model, elapsed)
}

// score has the service score req within the request's time budget. The
// cache stage writes in x.tally where the scores came from. fasthttp does
// not tie a request to its connection: watchPeer cancels the request when
// its client goes away, so that its pairs stop waiting for (and occupying)
// the plugin; score then answers (nobody reads it) and returns an error
// wrapping errClientGone.
func (s *Server) score(ctx *fasthttp.RequestCtx, x *exchange, req *rerank.Request) (rerank.Response, error) {
	base, gone := context.WithCancelCause(metrics.WithTally(x.context(), &x.tally))
	stopWatch := watchPeer(ctx.Conn(), gone)
	rctx, cancel := base, context.CancelFunc(func() {})
	if s.cfg.Timeout > 0 {
		rctx, cancel = context.WithTimeout(base, s.cfg.Timeout)
	}
	resp, err := s.cfg.Service.Rerank(rctx, req)
	stopWatch()
	clientGone := errors.Is(context.Cause(base), errClientGone)
	cancel()
	gone(nil)
	if err != nil && clientGone {
		s.disconnects.Add(1)
		ctx.SetConnectionClose()
		// Nobody reads it; the status is nginx's for the case, for logs.
		writeDetail(ctx, statusClientClosedRequest, "Client closed the request")
		return rerank.Response{}, fmt.Errorf("%w: %w", errClientGone, err)
	}
	return resp, err
}

// modelNameJSON returns name encoded as a JSON string.
func (s *Server) modelNameJSON(name string) []byte {
	if b, ok := s.modelJSON.Load(name); ok {
		return b.([]byte)
	}
	b := appendJSON(nil, name)
	s.modelJSON.Store(name, b)
	return b
}

// writeResults writes the 200 answer; elapsed 0 is written as 0.0.
func (s *Server) writeResults(ctx *fasthttp.RequestCtx, results []rerank.Result, model string, elapsed time.Duration) {
	bp := responseBuffers.Get().(*[]byte)
	defer responseBuffers.Put(bp)
	b := append((*bp)[:0], `{"results":[`...)
	for i, r := range results {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"index":`...)
		b = strconv.AppendInt(b, int64(r.Index), 10)
		b = append(b, `,"score":`...)
		b = appendPythonFloat(b, float64(r.Score))
		b = append(b, '}')
	}
	b = append(b, `],"model":`...)
	b = append(b, s.modelNameJSON(model)...)
	b = append(b, `,"processing_time_ms":`...)
	// Milliseconds rounded to two decimals, as the Python server did.
	ms := math.Round(float64(elapsed.Microseconds())/10) / 100
	b = appendPythonFloat(b, ms)
	b = append(b, '}')
	writeJSON(ctx, fasthttp.StatusOK, b) // copies b into the response
	if cap(b) <= maxPooledResponse {
		*bp = b
	}
}

// responseBuffers holds scratch buffers for 200 answers, so that building
// one allocates nothing once the pool is warm.
var responseBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// maxPooledResponse is the largest scratch buffer kept for reuse: 64 KB
// holds the answer for 1,000 candidates; a larger one is left to the GC.
const maxPooledResponse = 64 << 10

// health answers GET /health: 503 until the model is loaded, then 200.
func (s *Server) health(ctx *fasthttp.RequestCtx, _ *exchange) {
	st := s.cfg.Status()
	code, status := fasthttp.StatusOK, "ok"
	switch {
	case st.Failed:
		code, status = fasthttp.StatusServiceUnavailable, "failed"
	case !st.Ready:
		code, status = fasthttp.StatusServiceUnavailable, "loading"
	}
	b := make([]byte, 0, 512)
	b = append(b, `{"status":`...)
	b = appendJSON(b, status)
	b = append(b, `,"device":`...)
	b = appendJSON(b, st.Device)
	b = append(b, `,"model":`...)
	b = appendJSON(b, s.cfg.Service.ModelName())
	if !st.Ready && st.Message != "" {
		b = append(b, `,"message":`...)
		b = appendJSON(b, st.Message)
	}
	if !st.Ready && (st.LoadAttempts > 0 || st.Failed) {
		// Which it is: a failure being retried (loading, next_retry) or
		// a final one (failed, final: true).
		b = append(b, `,"final":`...)
		b = strconv.AppendBool(b, st.Failed)
		b = append(b, `,"load_attempts":`...)
		b = strconv.AppendInt(b, int64(st.LoadAttempts), 10)
		if st.LastError != "" {
			b = append(b, `,"last_error":`...)
			b = appendJSON(b, st.LastError)
		}
		if !st.NextRetry.IsZero() {
			b = append(b, `,"next_retry":`...)
			b = appendJSON(b, st.NextRetry.UTC().Format(time.RFC3339Nano))
		}
	}
	if s.cfg.Warning != "" {
		b = append(b, `,"warning":`...)
		b = appendJSON(b, s.cfg.Warning)
	}
	for _, name := range s.sections {
		b = append(b, ',')
		b = appendJSON(b, name)
		b = append(b, ':')
		b = appendJSON(b, s.cfg.HealthSections[name]())
	}
	if ms := s.cfg.Models(); len(ms) > 0 {
		b = append(b, `,"models":`...)
		b = appendJSON(b, modelEntries(ms))
	}
	b = append(b, '}')
	writeJSON(ctx, code, b)
}

// modelEntry is one model in GET /v1/models (OpenAI's model object, with
// the model's state) and in /health's "models".
type modelEntry struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	OwnedBy string   `json:"owned_by"`
	Aliases []string `json:"aliases"`
	Default bool     `json:"default"`
	// State is loaded, loading, unloaded or failed.
	State               string `json:"state"`
	Message             string `json:"message,omitempty"`
	Backend             string `json:"backend"`
	Precision           string `json:"precision"`
	Device              string `json:"device"`
	MaxLength           int    `json:"max_length"`
	ResidentMemoryBytes int64  `json:"resident_memory_bytes"`
	// KeepAlive is a Go duration, or "never".
	KeepAlive string `json:"keep_alive"`
	Loads     int    `json:"loads"`
	Restarts  int    `json:"restarts"`
	// LoadAttempts, LastError and NextRetry describe failed loads since
	// the last successful one (a retry planned at NextRetry, RFC 3339);
	// Final says the failure is for good. All are left out when none
	// failed.
	LoadAttempts int    `json:"load_attempts,omitempty"`
	LastError    string `json:"last_error,omitempty"`
	NextRetry    string `json:"next_retry,omitempty"`
	Final        bool   `json:"final,omitempty"`
}

// ownedBy is every model's owned_by: OpenAI's field names the organisation
// serving the model, here this server.
const ownedBy = "rerank-server"

func modelEntries(ms []models.Status) []modelEntry {
	out := make([]modelEntry, len(ms))
	for i, m := range ms {
		keep := "never"
		if m.KeepAlive >= 0 {
			keep = m.KeepAlive.String()
		}
		aliases := m.Aliases
		if aliases == nil {
			aliases = []string{}
		}
		out[i] = modelEntry{
			ID: m.Name, Object: "model", Created: m.Created.Unix(), OwnedBy: ownedBy, Aliases: aliases, Default: m.Default,
			State: string(m.State), Message: m.Message, Backend: m.Backend, Precision: string(m.Precision), Device: m.Device,
			MaxLength: m.MaxLength, ResidentMemoryBytes: m.ResidentBytes, KeepAlive: keep, Loads: m.Loads, Restarts: m.Restarts,
			LoadAttempts: m.LoadAttempts, LastError: m.LastError, Final: m.Final,
		}
		if !m.NextRetry.IsZero() {
			out[i].NextRetry = m.NextRetry.UTC().Format(time.RFC3339Nano)
		}
	}
	return out
}

// models answers GET /v1/models: {"object": "list", "data": [model, …]}.
func (s *Server) models(ctx *fasthttp.RequestCtx, _ *exchange) {
	b := append([]byte(`{"object":"list","data":`), appendJSON(nil, modelEntries(s.cfg.Models()))...)
	writeJSON(ctx, fasthttp.StatusOK, append(b, '}'))
}

// root answers GET /.
func (s *Server) root(ctx *fasthttp.RequestCtx, _ *exchange) {
	b := make([]byte, 0, 256)
	b = append(b, `{"service":"rerank-server","version":`...)
	b = appendJSON(b, s.cfg.Version)
	b = append(b, `,"device":`...)
	b = appendJSON(b, s.cfg.Status().Device)
	b = append(b, `,"model":`...)
	b = appendJSON(b, s.cfg.Service.ModelName())
	b = append(b, '}')
	writeJSON(ctx, fasthttp.StatusOK, b)
}

// writeError maps err to its status code and FastAPI-shaped body. This is
// the one place in the server where errors become status codes.
func (s *Server) writeError(ctx *fasthttp.RequestCtx, err error) {
	var ve *rerank.ValidationError
	var um *rerank.UnknownModelError
	switch {
	case errors.As(err, &um):
		// The seed server refused a model it did not serve as a pydantic
		// validation error of the body's "model" field.
		s.writeError(ctx, &rerank.ValidationError{Fields: []rerank.FieldError{{
			Type: "value_error", Loc: []any{"body", "model"}, Msg: um.Error(), Input: um.Name,
		}}})
	case errors.As(err, &ve):
		b := append([]byte(`{"detail":`), appendJSON(nil, ve.Fields)...)
		b = append(b, '}')
		writeJSON(ctx, fasthttp.StatusUnprocessableEntity, b)
	case errors.Is(err, context.DeadlineExceeded):
		writeDetail(ctx, fasthttp.StatusGatewayTimeout, "Rerank inference timed out")
	case errors.Is(err, sdk.ErrOverloaded):
		ctx.Response.Header.Set("Retry-After", retryAfterSeconds)
		writeDetail(ctx, fasthttp.StatusTooManyRequests, "Server overloaded, retry later")
	case errors.Is(err, sdk.ErrNotLoaded), errors.Is(err, sdk.ErrUnavailable):
		// Loading, or no plugin could come up within the request's
		// deadline: worth retrying shortly.
		ctx.Response.Header.Set("Retry-After", retryAfterSeconds)
		writeDetail(ctx, fasthttp.StatusServiceUnavailable, "Model not loaded")
	case errors.Is(err, sdk.ErrInvalidInput):
		// The backend refused the input (for example a pair it cannot
		// encode): the client's request, not the server, is at fault.
		writeDetail(ctx, fasthttp.StatusUnprocessableEntity, err.Error())
	case errors.Is(err, context.Canceled):
		writeDetail(ctx, fasthttp.StatusServiceUnavailable, "Request cancelled: the server is shutting down")
	default:
		s.cfg.Logger.Error("rerank request failed", "request_id", requestID(ctx), "error", err)
		writeDetail(ctx, fasthttp.StatusInternalServerError, "Internal Server Error")
	}
}

// writeDetail writes FastAPI's {"detail": "…"} error body.
func writeDetail(ctx *fasthttp.RequestCtx, code int, detail string) {
	b := append([]byte(`{"detail":`), appendJSON(nil, detail)...)
	writeJSON(ctx, code, append(b, '}'))
}

func writeJSON(ctx *fasthttp.RequestCtx, code int, body []byte) {
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// appendJSON appends v as compact JSON without HTML escaping, as Python's
// json.dumps(ensure_ascii=False) writes it.
func appendJSON(b []byte, v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only non-finite floats fail here, and no caller passes any.
		return append(b, "null"...)
	}
	return append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
}

// appendPythonFloat appends f as Python's repr(float) writes it: the
// shortest round-tripping digits, always with a fraction or an exponent,
// exponent form below 1e-4 and from 1e16 on.
func appendPythonFloat(b []byte, f float64) []byte {
	if f == 0 {
		if math.Signbit(f) {
			return append(b, "-0.0"...)
		}
		return append(b, "0.0"...)
	}
	abs := math.Abs(f)
	if abs < 1e-4 || abs >= 1e16 {
		return strconv.AppendFloat(b, f, 'e', -1, 64)
	}
	start := len(b)
	b = strconv.AppendFloat(b, f, 'f', -1, 64)
	if bytes.IndexByte(b[start:], '.') < 0 {
		b = append(b, ".0"...)
	}
	return b
}
