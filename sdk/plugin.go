package sdk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/rerank-sidecar/rerank/sdk/internal/rerankv1"
	"github.com/rerank-sidecar/rerank/sdk/telemetry"
)

// ProtocolVersion is the go-plugin protocol version: it changes only on a
// breaking change of the wire protocol.
const ProtocolVersion = 1

// MinorVersion counts additive changes within ProtocolVersion; plugins report
// it in ModelInfo and the proxy logs it. 1: ScoreResponse reports the
// call's Usage (tokens and padded tokens). 2: Pair.Options. 3:
// ModelInfo.MaxBatchTokens and ModelInfo.PreferredInFlight.
const MinorVersion uint32 = 3

// MinorPairOptions is the first minor version whose plugins honour
// Pair.Options; Client.Score refuses options for an older plugin rather
// than let it ignore them silently.
const MinorPairOptions uint32 = 2

// PluginName is the name under which the backend is dispensed.
const PluginName = "backend"

// Handshake is the go-plugin handshake shared by the proxy and plugins. The
// cookie is not a secret: it only stops a plugin binary run by hand from
// waiting forever for a proxy.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "RERANK_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "b6f1c2f4-rerank-backend",
}

// VersionedPlugins maps each protocol version the proxy speaks to its plugin
// set.
func VersionedPlugins() map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolVersion: {PluginName: &GRPCPlugin{}},
	}
}

// GRPCPlugin is the go-plugin glue for Backend over gRPC. Impl is set on the
// plugin side and nil on the proxy side.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the backend served by the plugin process.
	Impl Backend
}

var _ plugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers the backend on the plugin's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterBackendServer(s, &grpcServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Backend that calls the plugin over conn.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	return &Client{rpc: pb.NewBackendClient(conn)}, nil
}

// Option configures Serve.
type Option func(*serveConfig)

type serveConfig struct {
	logger hclog.Logger
	test   *plugin.ServeTestConfig
}

// WithLogger sets the logger the plugin runtime uses; it must write to
// stderr, as stdout belongs to the handshake.
func WithLogger(l hclog.Logger) Option {
	return func(c *serveConfig) { c.logger = l }
}

// WithTestConfig serves in-process for tests (see go-plugin's ServeTestConfig).
func WithTestConfig(t *plugin.ServeTestConfig) Option {
	return func(c *serveConfig) { c.test = t }
}

// Serve runs b as a plugin process; it returns when the proxy goes away.
// When the environment (inherited from the proxy) turns tracing on (see
// package telemetry), the plugin exports its own spans, as children of the
// proxy's: a backend records spans with the tracer of go.opentelemetry.io/otel
// under Score's context.
func Serve(b Backend, opts ...Option) {
	cfg := serveConfig{}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.logger == nil {
		cfg.logger = hclog.New(&hclog.LoggerOptions{Output: os.Stderr, JSONFormat: true, Level: hclog.Info})
	}
	shutdown, err := telemetry.Setup(context.Background())
	if err != nil {
		cfg.logger.Warn("tracing stays off", "error", err)
	}
	defer func() {
		// The proxy waits about two seconds for a plugin to exit: one for
		// the last spans.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = shutdown(ctx)
	}()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{ProtocolVersion: {PluginName: &GRPCPlugin{Impl: b}}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return plugin.DefaultGRPCServer(append(opts, telemetry.ServerOptions()...))
		},
		Logger: cfg.logger,
		Test:   cfg.test,
	})
}

// grpcServer adapts a Backend to the generated gRPC server interface.
type grpcServer struct {
	pb.UnimplementedBackendServer
	impl Backend
}

var _ pb.BackendServer = (*grpcServer)(nil)

func (s *grpcServer) Load(ctx context.Context, req *pb.LoadRequest) (*pb.LoadResponse, error) {
	info, err := s.impl.Load(ctx, LoadConfig{
		ModelDir:          req.GetModelDir(),
		ModelName:         req.GetModelName(),
		Precision:         Precision(req.GetPrecision()),
		MaxLength:         int(req.GetMaxLength()),
		IntraOpThreads:    int(req.GetIntraOpThreads()),
		DisableArena:      req.DisableArena,
		DisableMemPattern: req.DisableMemPattern,
		CacheDir:          req.GetCacheDir(),
		Options:           req.GetOptions(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.LoadResponse{Model: infoToProto(&info)}, nil
}

func (s *grpcServer) Score(ctx context.Context, req *pb.ScoreRequest) (*pb.ScoreResponse, error) {
	pairs := make([]Pair, len(req.GetPairs()))
	for i, p := range req.GetPairs() {
		pairs[i] = Pair{Query: p.GetQuery(), Document: p.GetDocument()}
		if o := p.GetOptions(); o != nil {
			pairs[i].Options = PairOptions{Raw: o.GetRawScores(), MaxDocumentTokens: int(o.GetMaxDocumentTokens()), Strict: o.GetStrict()}
		}
	}
	var usage Usage
	scores, err := s.impl.Score(WithUsage(ctx, &usage), pairs)
	if err != nil {
		return nil, toStatus(err)
	}
	if len(scores) != len(pairs) {
		return nil, status.Errorf(codes.Internal, "backend returned %d scores for %d pairs", len(scores), len(pairs))
	}
	return &pb.ScoreResponse{Scores: scores, Tokens: usage.Tokens, PaddedTokens: usage.PaddedTokens}, nil
}

func (s *grpcServer) Health(ctx context.Context, _ *pb.HealthRequest) (*pb.HealthResponse, error) {
	h, err := s.impl.Health(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.HealthResponse{State: pb.HealthResponse_State(h.State), Message: h.Message}
	if h.Model != nil {
		resp.Model = infoToProto(h.Model)
	}
	return resp, nil
}

// Client is the proxy-side Backend that calls a plugin over gRPC.
type Client struct {
	rpc pb.BackendClient
	// minor is the plugin's reported minor version plus one; 0 until a
	// Load or Health answer has told it.
	minor atomic.Uint32
}

// noteMinor records the minor version of the plugin's answer.
func (c *Client) noteMinor(p *pb.ModelInfo) {
	if p != nil {
		c.minor.Store(p.GetSdkMinorVersion() + 1)
	}
}

var _ Backend = (*Client)(nil)

// Load asks the plugin to load a model.
func (c *Client) Load(ctx context.Context, cfg LoadConfig) (ModelInfo, error) {
	resp, err := c.rpc.Load(ctx, &pb.LoadRequest{
		ModelDir:          cfg.ModelDir,
		ModelName:         cfg.ModelName,
		Precision:         string(cfg.Precision),
		MaxLength:         int32(cfg.MaxLength),
		IntraOpThreads:    int32(cfg.IntraOpThreads),
		DisableArena:      cfg.DisableArena,
		DisableMemPattern: cfg.DisableMemPattern,
		CacheDir:          cfg.CacheDir,
		Options:           cfg.Options,
	})
	if err != nil {
		return ModelInfo{}, fromStatus(err)
	}
	c.noteMinor(resp.GetModel())
	return infoFromProto(resp.GetModel()), nil
}

// Score sends pairs to the plugin; ctx's deadline becomes the gRPC deadline.
// When ctx carries a Usage (WithUsage), the plugin's report is added to it.
// Pairs that would make a message over MaxMessageBytes are refused before
// sending, with an error wrapping ErrInvalidInput: the caller splits batches
// by bytes (PairBytes), so only a single oversized pair gets here. Pairs
// with options are refused with ErrInvalidInput when the plugin's minor
// version predates them (or is not known yet): an old plugin would drop the
// options unread and score with the defaults.
func (c *Client) Score(ctx context.Context, pairs []Pair) ([]float32, error) {
	req := &pb.ScoreRequest{Pairs: make([]*pb.Pair, len(pairs))}
	for i := range pairs {
		p := &pb.Pair{Query: pairs[i].Query, Document: pairs[i].Document}
		if o := pairs[i].Options; !o.IsZero() {
			if m := c.minor.Load(); m == 0 || m-1 < MinorPairOptions {
				return nil, fmt.Errorf("sdk: the plugin speaks protocol minor version %s, which cannot honour per-request scoring options (raw scores, max tokens per document, strict truncation; minor %d and later can): %w",
					minorString(m), MinorPairOptions, ErrInvalidInput)
			}
			p.Options = &pb.PairOptions{RawScores: o.Raw, MaxDocumentTokens: int32(min(o.MaxDocumentTokens, math.MaxInt32)), Strict: o.Strict}
		}
		req.Pairs[i] = p
	}
	if n := proto.Size(req); n > MaxMessageBytes {
		return nil, fmt.Errorf("sdk: %d pairs make a %d-byte message, over the plugin's %d-byte message limit: %w", len(pairs), n, MaxMessageBytes, ErrInvalidInput)
	}
	resp, err := c.rpc.Score(ctx, req)
	if err != nil {
		return nil, fromStatus(err)
	}
	if len(resp.GetScores()) != len(pairs) {
		return nil, fmt.Errorf("sdk: plugin returned %d scores for %d pairs", len(resp.GetScores()), len(pairs))
	}
	if u := UsageFrom(ctx); u != nil {
		u.Tokens += resp.GetTokens()
		u.PaddedTokens += resp.GetPaddedTokens()
	}
	return resp.GetScores(), nil
}

// Health asks the plugin for its loading state.
func (c *Client) Health(ctx context.Context) (Health, error) {
	resp, err := c.rpc.Health(ctx, &pb.HealthRequest{})
	if err != nil {
		return Health{}, fromStatus(err)
	}
	h := Health{State: State(resp.GetState()), Message: resp.GetMessage()}
	c.noteMinor(resp.GetModel())
	if resp.GetModel() != nil {
		info := infoFromProto(resp.GetModel())
		h.Model = &info
	}
	return h, nil
}

// minorString renders a Client.minor value.
func minorString(m uint32) string {
	if m == 0 {
		return "(not known yet)"
	}
	return fmt.Sprint(m - 1)
}

func infoToProto(i *ModelInfo) *pb.ModelInfo {
	return &pb.ModelInfo{
		Name:              i.Name,
		Revision:          i.Revision,
		Device:            i.Device,
		Backend:           i.Backend,
		Precision:         string(i.Precision),
		Quantization:      i.Quantization,
		Source:            i.Source,
		MaxLength:         int32(i.MaxLength),
		MaxBatchSize:      int32(i.MaxBatchSize),
		MaxBatchTokens:    int32(min(i.MaxBatchTokens, math.MaxInt32)),
		PreferredInFlight: int32(min(i.PreferredInFlight, math.MaxInt32)),
		Activation:        i.Activation,
		SdkMinorVersion:   MinorVersion,
		Details:           i.Details,
	}
}

func infoFromProto(p *pb.ModelInfo) ModelInfo {
	return ModelInfo{
		Name:              p.GetName(),
		Revision:          p.GetRevision(),
		Device:            p.GetDevice(),
		Backend:           p.GetBackend(),
		Precision:         Precision(p.GetPrecision()),
		Quantization:      p.GetQuantization(),
		Source:            p.GetSource(),
		MaxLength:         int(p.GetMaxLength()),
		MaxBatchSize:      int(p.GetMaxBatchSize()),
		MaxBatchTokens:    int(max(p.GetMaxBatchTokens(), 0)),
		PreferredInFlight: int(max(p.GetPreferredInFlight(), 0)),
		Activation:        p.GetActivation(),
		SDKMinorVersion:   p.GetSdkMinorVersion(),
		Details:           p.GetDetails(),
	}
}

// toStatus turns a backend error into a gRPC status that keeps its sentinel.
func toStatus(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, ErrTooLong):
		code = codes.OutOfRange
	case errors.Is(err, ErrInvalidInput):
		code = codes.InvalidArgument
	case errors.Is(err, ErrNotLoaded):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrOverloaded):
		code = codes.ResourceExhausted
	case errors.Is(err, ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

// fromStatus turns a gRPC status back into an error wrapping the sentinel.
func fromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	var sentinel error
	switch st.Code() {
	case codes.OutOfRange:
		sentinel = ErrTooLong
	case codes.InvalidArgument:
		sentinel = ErrInvalidInput
	case codes.FailedPrecondition:
		sentinel = ErrNotLoaded
	case codes.ResourceExhausted:
		sentinel = ErrOverloaded
		if isMessageSizeError(st.Message()) {
			// gRPC's own refusal of a message over its size limit: the
			// same input fails every time, so it is not "overloaded"
			// (a 429 the client would retry for ever).
			sentinel = ErrInvalidInput
		}
	case codes.Unavailable:
		sentinel = ErrUnavailable
	case codes.DeadlineExceeded:
		sentinel = context.DeadlineExceeded
	case codes.Canceled:
		sentinel = context.Canceled
	default:
		return fmt.Errorf("plugin: %s", st.Message())
	}
	return &remoteError{msg: st.Message(), sentinel: sentinel}
}

// MaxMessageBytes is the largest gRPC message a plugin accepts: gRPC's
// default receive limit, which go-plugin's server keeps.
const MaxMessageBytes = 4 << 20

// pairOverheadBytes bounds the protobuf framing of one pair in a
// ScoreRequest: a tag and a length for the pair and for each of its two
// strings (at most 1 + 5 bytes each), and its options when set (a tag and a
// length, two booleans of 2 bytes and an int32 of at most 1 + 5: 16).
const pairOverheadBytes = 18 + 16

// PairBytes bounds the bytes pair p adds to a Score message, for splitting
// batches under MaxMessageBytes.
func PairBytes(p Pair) int { return len(p.Query) + len(p.Document) + pairOverheadBytes }

// isMessageSizeError reports whether a ResourceExhausted status message is
// gRPC's refusal of an oversized message ("grpc: received message larger
// than max (N vs. M)", "trying to send message larger than max").
func isMessageSizeError(msg string) bool {
	return strings.Contains(msg, "message larger than max")
}

// remoteError carries the plugin's message and the sentinel it stood for.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return "plugin: " + e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }
