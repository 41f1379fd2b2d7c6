// Package backend runs backend plugins: it finds the plugin binary for a
// backend kind in the plugin directory, starts it as a child process over
// hashicorp/go-plugin gRPC, loads a model on it, scores batches of pairs on
// it, watches it, and stops it. Which model runs when, restarts and idle
// unloads are the models package's business: a Plugin is one process with
// one model loaded.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/telemetry"
)

// tracer records the plugin calls of traced requests.
var tracer = otel.Tracer("github.com/rerank-sidecar/rerank/proxy/internal/backend")

// The short names of the ONNX Runtime plugins shipped with the server, and
// Auto, which picks one of them. Any other kind names a plugin binary
// rerank-<kind> in the plugin directory.
const (
	CPU    = "cpu"
	CUDA   = "cuda"
	CoreML = "coreml"
	Auto   = "auto"
)

// BinaryPrefix is the start of every plugin binary's name: the plugin of
// kind k is the executable BinaryPrefix+k in the plugin directory.
const BinaryPrefix = "rerank-"

// onnxPrefix is the start of the ONNX Runtime plugins' kinds: the short
// kinds cpu, cuda and coreml name onnx-cpu, onnx-cuda and onnx-coreml.
const onnxPrefix = "onnx-"

// Config says which plugin to start and what it loads.
type Config struct {
	// Kind is the backend kind: cpu, cuda or coreml (the ONNX Runtime
	// plugins), auto (coreml on Apple silicon, else cuda, falling back to
	// cpu), or the name of any plugin binary rerank-<kind> in PluginDir.
	Kind string
	// PluginDir holds the plugin binaries; empty means the directory of the
	// running executable.
	PluginDir string
	// Load is what the plugin is asked to load.
	Load sdk.LoadConfig
	// PrecisionFor, when set, returns the precision to load on the backend
	// kind being started, given Load.Precision: an alias whose meaning
	// depends on the backend (QUANTIZATION=bf16) resolves here, once auto
	// has picked the kind.
	PrecisionFor func(kind string, configured sdk.Precision) sdk.Precision
	// Logger receives the plugin's logs and the launch's.
	Logger hclog.Logger
	// Platform is GOOS/GOARCH as auto sees it; empty means the running one.
	Platform string
	// Metrics receives every plugin call's pairs, duration and usage; nil
	// records nothing.
	Metrics *metrics.Model
}

// Binary returns the plugin binary's file name for kind (never auto): the
// short ONNX Runtime kinds cpu, cuda and coreml name rerank-onnx-<kind>,
// any other kind rerank-<kind>.
func Binary(kind string) string {
	switch kind {
	case CPU, CUDA, CoreML:
		return BinaryPrefix + onnxPrefix + kind
	}
	return BinaryPrefix + kind
}

// Candidates lists the kinds to try in order for kind: auto is coreml on
// darwin/arm64, else cuda, each falling back to cpu; any other kind is
// itself.
func Candidates(kind, platform string) []string {
	if kind != Auto {
		return []string{kind}
	}
	if platform == "darwin/arm64" {
		return []string{CoreML, CPU}
	}
	return []string{CUDA, CPU}
}

// Kinds lists the kinds the plugin directory offers: auto, and the kind of
// every executable rerank-<kind> in dir (an empty dir means the running
// executable's), sorted, with cpu, cuda and coreml for the ONNX Runtime
// plugins.
func Kinds(dir string) ([]string, error) {
	dir, err := pluginDir(dir)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("backend: cannot list plugins: %w", err)
	}
	kinds := []string{Auto}
	for _, e := range entries {
		kind, ok := strings.CutPrefix(e.Name(), BinaryPrefix)
		if !ok || kind == "" || e.IsDir() {
			continue
		}
		if fi, err := e.Info(); err != nil || fi.Mode()&0o111 == 0 {
			continue
		}
		if short, ok := strings.CutPrefix(kind, onnxPrefix); ok && slices.Contains([]string{CPU, CUDA, CoreML}, short) {
			kind = short
		}
		kinds = append(kinds, kind)
	}
	sort.Strings(kinds[1:])
	return kinds, nil
}

// CheckKind returns an error naming the kinds on offer when kind is
// neither auto, one of cpu, cuda and coreml, nor a plugin binary in dir.
// The three ONNX Runtime kinds are always accepted: a build may lack one
// (cuda on a Mac), and loading then fails with the reason.
func CheckKind(dir, kind string) error {
	switch kind {
	case Auto, CPU, CUDA, CoreML:
		return nil
	case "":
		return errors.New("backend: no backend kind given")
	}
	kinds, err := Kinds(dir)
	if err != nil {
		return err
	}
	if slices.Contains(kinds, kind) {
		return nil
	}
	return fmt.Errorf("backend: unknown backend %q: no plugin %s in the plugin directory; use one of %s", kind, Binary(kind), strings.Join(kinds, ", "))
}

func pluginDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("backend: cannot locate the running executable to find plugins next to it: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	return filepath.Dir(exe), nil
}

// Stats are a plugin's counters, as /health shows them under "backend".
type Stats struct {
	// PairsScored counts the pairs the plugin computed.
	PairsScored uint64 `json:"pairs_scored"`
	// Batches counts the Score calls the plugin answered.
	Batches uint64 `json:"batches"`
	// Restarts counts the attempts to restart a crashed plugin.
	Restarts int `json:"restarts"`
	// Kind is the backend kind in use.
	Kind string `json:"kind"`
}

// Plugin is one running plugin process with its model loaded.
type Plugin struct {
	kind    string
	info    sdk.ModelInfo
	pid     int
	client  *plugin.Client
	backend sdk.Backend
	logger  hclog.Logger
	metrics *metrics.Model
	loadDur time.Duration

	pairs   atomic.Uint64
	batches atomic.Uint64

	check  chan struct{} // pokes the watcher after a broken connection
	closed chan struct{} // closed by Close
	exited chan struct{} // closed once the process is gone
	once   sync.Once
}

// Launch starts the plugin for cfg.Kind and loads cfg.Load on it, trying
// each candidate kind in turn under auto (logging why it falls back). It
// returns once the model is loaded; ctx bounds the start and the load.
func Launch(ctx context.Context, cfg Config) (*Plugin, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Platform == "" {
		cfg.Platform = runtime.GOOS + "/" + runtime.GOARCH
	}
	if cfg.Kind == "" {
		return nil, errors.New("backend: no backend kind given")
	}
	dir, err := pluginDir(cfg.PluginDir)
	if err != nil {
		return nil, err
	}
	kinds := Candidates(cfg.Kind, cfg.Platform)
	logger := cfg.Logger.Named("backend")
	for i, kind := range kinds {
		var p *Plugin
		p, err = launch(ctx, dir, kind, cfg, logger)
		if err == nil {
			return p, nil
		}
		if ctx.Err() != nil || i == len(kinds)-1 {
			break
		}
		logger.Warn("backend auto: falling back", "from", Binary(kind), "to", Binary(kinds[i+1]), "reason", err.Error())
	}
	return nil, err
}

// launch starts the plugin binary of kind and loads the model.
func launch(ctx context.Context, dir, kind string, cfg Config, logger hclog.Logger) (*Plugin, error) {
	name := Binary(kind)
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("backend: plugin %s not found in %s (build it with make build, or point --plugin-dir/RERANK_PLUGIN_DIR at it): %w", name, dir, err)
	}
	begun := time.Now()
	cmd := exec.Command(path)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.VersionedPlugins(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           cfg.Logger.Named("plugin"),
		// go-plugin relogs the plugin's JSON log lines through Logger and
		// other lines only at debug level: pass those through as they are,
		// so a plugin that dies before its logger is set up (a dynamic
		// linker error, a panic) is still seen.
		Stderr: &rawLines{w: os.Stderr},
		// With tracing on, the trace context travels with each call.
		GRPCDialOptions: telemetry.DialOptions(),
	})
	fail := func(err error) (*Plugin, error) {
		client.Kill()
		return nil, err
	}
	rpc, err := client.Client()
	if err != nil {
		err = fmt.Errorf("backend: cannot start %s: %w", path, err)
		if !client.Exited() {
			// Alive but no handshake within go-plugin's start timeout: a
			// machine too busy to start it in time, not a broken binary
			// (which exits: a missing library, a foreign executable).
			err = &transientError{err}
		}
		return fail(err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		return fail(fmt.Errorf("backend: %s: cannot dispense %q: %w", path, sdk.PluginName, err))
	}
	b, ok := raw.(sdk.Backend)
	if !ok {
		return fail(fmt.Errorf("backend: %s: dispensed %T, not an sdk.Backend", path, raw))
	}
	start := time.Now()
	load := cfg.Load
	if cfg.PrecisionFor != nil {
		load.Precision = cfg.PrecisionFor(kind, load.Precision)
	}
	info, err := b.Load(ctx, load)
	if err != nil {
		err = fmt.Errorf("backend: %s cannot load %s: %w", name, cfg.Load.ModelDir, err)
		if errors.Is(err, sdk.ErrUnavailable) && !answers(ctx, b) {
			// The process died while loading (killed, out of memory):
			// the connection broke, which gRPC reports as unavailable.
			err = &transientError{fmt.Errorf("%w (the plugin process died while loading)", err)}
		}
		return fail(err)
	}
	if info.SDKMinorVersion != sdk.MinorVersion {
		logger.Info("plugin speaks another minor protocol version", "plugin", name, "plugin_minor", info.SDKMinorVersion, "proxy_minor", sdk.MinorVersion)
	}
	if info.Device == "" {
		info.Device = kind
	}
	p := &Plugin{
		kind:    kind,
		info:    info,
		client:  client,
		backend: b,
		logger:  logger,
		metrics: cfg.Metrics,
		loadDur: time.Since(begun),
		check:   make(chan struct{}, 1),
		closed:  make(chan struct{}),
		exited:  make(chan struct{}),
	}
	if cmd.Process != nil {
		p.pid = cmd.Process.Pid
	}
	if g, ok := rpc.(*plugin.GRPCClient); ok {
		go p.watchConn(g.Conn)
	}
	logger.Info("model loaded", "plugin", name, "pid", p.pid, "model", info.Name, "device", info.Device,
		"precision", info.Precision, "source", info.Source, "revision", info.Revision,
		"max_length", info.MaxLength, "max_batch_size", info.MaxBatchSize, "activation", info.Activation,
		"load_time", time.Since(start).Round(time.Millisecond))
	go p.watch()
	return p, nil
}

// transientError is a launch that failed for a reason starting again may
// cure: the plugin process died while loading, or did not answer the
// handshake in time. The models package retries it (its Transient method).
type transientError struct{ err error }

func (e *transientError) Error() string   { return e.err.Error() }
func (e *transientError) Unwrap() error   { return e.err }
func (e *transientError) Transient() bool { return true }

// answers reports whether the plugin still answers a health check after a
// failed load: a plugin that refused the load answers at once, one whose
// process died while loading cannot (its connection is gone).
func answers(ctx context.Context, b sdk.Backend) bool {
	// 5 s: a living plugin answers in microseconds, a loaded machine may
	// delay it by seconds; a dead one fails at once.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := b.Health(ctx)
	return err == nil
}

// Kind is the backend kind running (never auto).
func (p *Plugin) Kind() string { return p.kind }

// Info is what the plugin reported about the model it loaded; Device is
// never empty.
func (p *Plugin) Info() sdk.ModelInfo { return p.info }

// PID is the plugin process's id.
func (p *Plugin) PID() int { return p.pid }

// LoadDuration is how long the load took, from starting the plugin to the
// model being ready in it.
func (p *Plugin) LoadDuration() time.Duration { return p.loadDur }

// Exited is closed once the plugin process is gone, after Close or when it
// died.
func (p *Plugin) Exited() <-chan struct{} { return p.exited }

// Stats returns the plugin's counters; Restarts is left to the caller.
func (p *Plugin) Stats() Stats {
	return Stats{PairsScored: p.pairs.Load(), Batches: p.batches.Load(), Kind: p.kind}
}

// Score scores pairs on the plugin. Once the process is gone it returns an
// error wrapping sdk.ErrUnavailable.
func (p *Plugin) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	select {
	case <-p.exited:
		return nil, fmt.Errorf("backend %s: the plugin process is gone: %w", Binary(p.kind), sdk.ErrUnavailable)
	default:
	}
	if len(pairs) == 0 {
		return []float32{}, nil
	}
	start := time.Now()
	var usage sdk.Usage
	var span trace.Span
	if trace.SpanFromContext(ctx).IsRecording() {
		ctx, span = tracer.Start(ctx, "rerank.plugin.score", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
			attribute.String("rerank.model", p.info.Name), attribute.String("rerank.backend", Binary(p.kind)),
			attribute.Int("rerank.batch_size", len(pairs))))
		defer func() {
			span.SetAttributes(attribute.Int64("rerank.tokens", usage.Tokens), attribute.Int64("rerank.padded_tokens", usage.PaddedTokens))
			span.End()
		}()
	}
	scores, err := p.backend.Score(sdk.WithUsage(ctx, &usage), pairs)
	if err != nil && ctx.Err() == nil && !errors.Is(err, sdk.ErrUnavailable) && p.client.Exited() {
		// The process died during the call, and the watcher closed its
		// connection before gRPC reported the break: the call failed as
		// "canceled" (the connection is closing), but it was lost in a
		// crash, and is sent again like one.
		err = fmt.Errorf("the plugin process died during the call (%v): %w", err, sdk.ErrUnavailable)
	}
	if err != nil {
		if errors.Is(err, sdk.ErrUnavailable) {
			// The connection broke: have the watcher look now rather than
			// at its next tick.
			select {
			case p.check <- struct{}{}:
			default:
			}
		}
		return nil, fmt.Errorf("backend %s: %w", Binary(p.kind), err)
	}
	p.pairs.Add(uint64(len(pairs)))
	p.batches.Add(1)
	p.metrics.Batch(len(pairs), time.Since(start), usage.Tokens, usage.PaddedTokens)
	if outer := sdk.UsageFrom(ctx); outer != nil {
		// The batcher asked too: it totals the usage for /health.
		outer.Tokens += usage.Tokens
		outer.PaddedTokens += usage.PaddedTokens
	}
	return scores, nil
}

// Close stops the plugin process and waits until it is gone. It is safe
// to call more than once.
func (p *Plugin) Close() error {
	p.once.Do(func() { close(p.closed) })
	<-p.exited
	return nil
}

// pollInterval is how often the watcher checks that the plugin is alive: a
// crash is noticed within it even when no request is running.
const pollInterval = 250 * time.Millisecond

// exitPolls and exitPollInterval bound the close look after a broken
// connection: go-plugin reaps a killed process within milliseconds; 100 ×
// 5 ms covers a loaded machine, after which the regular poll takes over.
const (
	exitPolls        = 100
	exitPollInterval = 5 * time.Millisecond
)

// watchConn pokes the watcher whenever the plugin's gRPC connection leaves
// the ready state, as it does the moment the process dies: a crash is seen
// within milliseconds even when no call is running, not at the next poll.
func (p *Plugin) watchConn(conn *grpc.ClientConn) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.exited
		cancel()
	}()
	state := conn.GetState()
	for conn.WaitForStateChange(ctx, state) {
		if state = conn.GetState(); state != connectivity.Ready {
			select {
			case p.check <- struct{}{}:
			default:
			}
		}
	}
}

// watch closes exited once the process is gone: killed by Close, or dead.
func (p *Plugin) watch() {
	defer close(p.exited)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-p.closed:
			p.client.Kill()
			return
		case <-tick.C:
		case <-p.check:
			// A call or the connection found it broken: the process is
			// gone, or about to be reaped. Look closely for a moment
			// rather than until the next tick: requests wait for the
			// restart this starts.
			for i := 0; i < exitPolls && !p.client.Exited(); i++ {
				select {
				case <-p.closed:
				case <-time.After(exitPollInterval):
				}
			}
		}
		if p.client.Exited() {
			p.logger.Error("plugin process exited unexpectedly", "plugin", Binary(p.kind), "pid", p.pid)
			p.client.Kill()
			return
		}
	}
}

// rawLines writes the lines that are not JSON log records to w. go-plugin
// writes each stderr line of the plugin, then a newline, separately.
type rawLines struct {
	mu   sync.Mutex
	w    io.Writer
	line []byte
}

func (r *rawLines) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range p {
		if c != '\n' {
			r.line = append(r.line, c)
			continue
		}
		if len(r.line) > 0 && r.line[0] != '{' {
			r.line = append(r.line, '\n')
			_, _ = r.w.Write(r.line)
		}
		r.line = r.line[:0]
	}
	return len(p), nil
}
