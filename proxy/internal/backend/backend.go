// Package backend runs the backend plugin: it finds the plugin binary for
// the chosen execution provider, starts it as a child process over
// hashicorp/go-plugin gRPC, loads the model in the background, restarts the
// plugin when it crashes, and scores batches of pairs on it.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/telemetry"
)

// tracer records the plugin calls of traced requests.
var tracer = otel.Tracer("github.com/rerank-sidecar/rerank/proxy/internal/backend")

// The backend kinds: each names a plugin binary rerank-onnx-<kind>, except
// Auto, which picks one.
const (
	CPU    = "cpu"
	CUDA   = "cuda"
	CoreML = "coreml"
	Auto   = "auto"
)

// BinaryPrefix is the start of every plugin binary's name.
const BinaryPrefix = "rerank-onnx-"

// Kinds lists the accepted values of Config.Kind.
var Kinds = []string{CPU, CUDA, CoreML, Auto}

// Config configures a Supervisor.
type Config struct {
	// Kind is cpu, cuda, coreml or auto.
	Kind string
	// PluginDir holds the plugin binaries; empty means the directory of the
	// running executable.
	PluginDir string
	// Load is what the plugin is asked to load.
	Load sdk.LoadConfig
	// Prepare, when set, runs in the background before the plugin starts
	// and may fill in Load, for example the model dir once a download
	// finished; while it runs the state is loading, and its error is a
	// failed load.
	Prepare func(ctx context.Context, load *sdk.LoadConfig) error
	// OnLoad, when set, is called after every successful model load, the
	// first and each one after a restart, before the supervisor reports
	// ready and sends the plugin any pair: stages that key on the loaded
	// model's identity (the score cache) set themselves up for it here. ctx
	// ends when the supervisor is closed.
	OnLoad func(ctx context.Context, info sdk.ModelInfo)
	// PrecisionFor, when set, returns the precision to load on the backend
	// kind being started, given Load.Precision: an alias whose meaning
	// depends on the backend (QUANTIZATION=bf16) resolves here, once auto
	// has picked the kind.
	PrecisionFor func(kind string, configured sdk.Precision) sdk.Precision
	// Logger receives the supervisor's and the plugin's logs.
	Logger hclog.Logger
	// RestartDelay is the first wait before restarting a plugin that
	// crashed within RestartDelay of its start (one that ran longer is
	// restarted at once); it doubles on each failed restart up to
	// MaxRestartDelay. 0 means 1s.
	RestartDelay time.Duration
	// MaxRestartDelay caps RestartDelay; 0 means 30s.
	MaxRestartDelay time.Duration
	// Platform is GOOS/GOARCH as auto sees it; empty means the running one.
	Platform string
	// Metrics receives every plugin call's pairs, duration and usage; nil
	// records nothing.
	Metrics *metrics.Model
}

// Status is the plugin's state for /health.
type Status struct {
	// State is loading, ready or failed.
	State sdk.State
	// Message says why the state is not ready, for example a load error.
	Message string
	// Kind is the backend kind running or being started (never auto).
	Kind string
	// Device is the model's device once ready, else the kind.
	Device string
	// Model describes the loaded model once ready.
	Model *sdk.ModelInfo
	// Restarts counts the attempts to restart a crashed plugin.
	Restarts int
	// LoadDuration is how long the last successful load took, from
	// starting the plugin to the model being ready in it.
	LoadDuration time.Duration
	// PID is the plugin process's id while one runs, else 0.
	PID int
}

// Stats are the counters /health shows under "backend".
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

// Supervisor owns the plugin process.
type Supervisor struct {
	cfg    Config
	kinds  []string
	logger hclog.Logger

	mu      sync.RWMutex
	status  Status
	client  *plugin.Client
	backend sdk.Backend

	pairs   atomic.Uint64
	batches atomic.Uint64

	ready  chan struct{}
	once   sync.Once
	up     chan struct{} // closed while ready; a new open one after a crash
	check  chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// Start validates cfg and starts the plugin and the model load in the
// background; Status tells when the model is ready.
func Start(cfg Config) (*Supervisor, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.RestartDelay <= 0 {
		cfg.RestartDelay = time.Second
	}
	if cfg.MaxRestartDelay <= 0 {
		// Long enough that a crash loop costs little, short enough that a
		// transient failure heals within a minute.
		cfg.MaxRestartDelay = 30 * time.Second
	}
	if cfg.Platform == "" {
		cfg.Platform = runtime.GOOS + "/" + runtime.GOARCH
	}
	kinds, err := candidates(cfg.Kind, cfg.Platform)
	if err != nil {
		return nil, err
	}
	if cfg.PluginDir == "" {
		cfg.PluginDir, err = executableDir()
		if err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Supervisor{
		cfg:    cfg,
		kinds:  kinds,
		logger: cfg.Logger.Named("backend"),
		status: Status{State: sdk.StateLoading, Kind: kinds[0], Device: kinds[0], Message: "starting plugin " + BinaryPrefix + kinds[0]},
		ready:  make(chan struct{}),
		up:     make(chan struct{}),
		check:  make(chan struct{}, 1),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go s.run()
	return s, nil
}

// candidates lists the kinds to try in order: auto is coreml on
// darwin/arm64, else cuda, each falling back to cpu.
func candidates(kind, platform string) ([]string, error) {
	switch kind {
	case CPU, CUDA, CoreML:
		return []string{kind}, nil
	case Auto:
		if platform == "darwin/arm64" {
			return []string{CoreML, CPU}, nil
		}
		return []string{CUDA, CPU}, nil
	}
	return nil, fmt.Errorf("backend: unknown backend %q: use one of %v", kind, Kinds)
}

func executableDir() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("backend: cannot locate the running executable to find plugins next to it: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	return filepath.Dir(exe), nil
}

// Status returns the current state.
func (s *Supervisor) Status() Status {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.status
}

// Ready is closed when the model has loaded the first time.
func (s *Supervisor) Ready() <-chan struct{} { return s.ready }

// Up returns a channel that is closed while the plugin is ready to score,
// and stays open while it is not (loading, restarting after a crash, or
// failed): stages in front of the plugin wait on it instead of failing.
func (s *Supervisor) Up() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.up
}

// downLocked opens Up's channel again, unless it is open already: stages
// waiting on it wait for the next load.
func (s *Supervisor) downLocked() {
	select {
	case <-s.up:
		s.up = make(chan struct{})
	default:
	}
}

// Stats returns the counters.
func (s *Supervisor) Stats() Stats {
	st := s.Status()
	return Stats{PairsScored: s.pairs.Load(), Batches: s.batches.Load(), Restarts: st.Restarts, Kind: st.Kind}
}

// Score scores pairs on the plugin. Before the model is ready, and while a
// crashed plugin restarts, it returns an error wrapping sdk.ErrNotLoaded.
func (s *Supervisor) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	s.mu.RLock()
	b, state, kind := s.backend, s.status.State, s.status.Kind
	s.mu.RUnlock()
	if state != sdk.StateReady || b == nil {
		return nil, fmt.Errorf("backend: %w", sdk.ErrNotLoaded)
	}
	if len(pairs) == 0 {
		return []float32{}, nil
	}
	start := time.Now()
	var usage sdk.Usage
	var span trace.Span
	if trace.SpanFromContext(ctx).IsRecording() {
		ctx, span = tracer.Start(ctx, "rerank.plugin.score", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
			attribute.String("rerank.model", s.cfg.Load.ModelName), attribute.String("rerank.backend", BinaryPrefix+kind),
			attribute.Int("rerank.batch_size", len(pairs))))
		defer func() {
			span.SetAttributes(attribute.Int64("rerank.tokens", usage.Tokens), attribute.Int64("rerank.padded_tokens", usage.PaddedTokens))
			span.End()
		}()
	}
	scores, err := b.Score(sdk.WithUsage(ctx, &usage), pairs)
	if err != nil {
		if errors.Is(err, sdk.ErrUnavailable) {
			// The connection broke: the plugin is down from now on (so
			// that nothing is sent to it again until it is restarted),
			// and the watcher restarts it now rather than at its next
			// tick.
			s.mu.Lock()
			if s.backend == b {
				s.backend = nil
				s.status.State = sdk.StateLoading
				s.downLocked()
			}
			s.mu.Unlock()
			select {
			case s.check <- struct{}{}:
			default:
			}
		}
		return nil, fmt.Errorf("backend %s%s: %w", BinaryPrefix, kind, err)
	}
	s.pairs.Add(uint64(len(pairs)))
	s.batches.Add(1)
	s.cfg.Metrics.Batch(len(pairs), time.Since(start), usage.Tokens, usage.PaddedTokens)
	if outer := sdk.UsageFrom(ctx); outer != nil {
		// The batcher asked too: it totals the usage for /health.
		outer.Tokens += usage.Tokens
		outer.PaddedTokens += usage.PaddedTokens
	}
	return scores, nil
}

// Close stops the plugin and waits for the supervisor to finish.
func (s *Supervisor) Close() error {
	s.cancel()
	<-s.done
	return nil
}

func (s *Supervisor) setStatus(f func(*Status)) {
	s.mu.Lock()
	f(&s.status)
	s.mu.Unlock()
}

// run starts the plugin (falling back under auto), then watches and
// restarts it until Close.
func (s *Supervisor) run() {
	defer close(s.done)
	defer s.stop()

	var err error
	if s.cfg.Prepare != nil {
		s.setStatus(func(st *Status) { st.Message = "preparing the model" })
		err = s.cfg.Prepare(s.ctx, &s.cfg.Load)
	}
	kind := ""
	if err == nil {
		kind, err = s.startFirst()
	}
	if err != nil {
		if s.ctx.Err() == nil {
			s.logger.Error("model load failed: the server answers 503 until restarted", "error", err)
			s.setStatus(func(st *Status) { st.State, st.Message = sdk.StateFailed, err.Error() })
		}
		return
	}
	delay := s.cfg.RestartDelay
	for {
		upSince := time.Now()
		exitMsg := s.watch()
		if exitMsg == "" {
			return
		}
		// A plugin that ran at least RestartDelay before it died is
		// restarted at once: requests are waiting for it. One that dies
		// sooner (a crash loop) waits, doubling the wait each time.
		if time.Since(upSince) >= s.cfg.RestartDelay {
			delay = 0
		}
		for {
			s.setStatus(func(st *Status) {
				st.State, st.Model, st.Device = sdk.StateLoading, nil, kind
				st.Message = exitMsg + "; restarting in " + delay.String()
				st.Restarts++
			})
			s.logger.Error("plugin stopped; restarting", "plugin", BinaryPrefix+kind, "reason", exitMsg, "delay", delay)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(max(2*delay, s.cfg.RestartDelay), s.cfg.MaxRestartDelay)
			if err := s.start(kind); err != nil {
				if s.ctx.Err() != nil {
					return
				}
				exitMsg = err.Error()
				continue
			}
			s.logger.Info("plugin restarted", "plugin", BinaryPrefix+kind)
			delay = s.cfg.RestartDelay
			break
		}
	}
}

// startFirst tries the candidate kinds in order.
func (s *Supervisor) startFirst() (string, error) {
	var err error
	for i, kind := range s.kinds {
		s.setStatus(func(st *Status) {
			st.Kind, st.Device, st.Message = kind, kind, "loading the model on "+BinaryPrefix+kind
		})
		err = s.start(kind)
		if err == nil {
			return kind, nil
		}
		if s.ctx.Err() != nil || i == len(s.kinds)-1 {
			break
		}
		s.logger.Warn("backend auto: falling back", "from", BinaryPrefix+kind, "to", BinaryPrefix+s.kinds[i+1], "reason", err.Error())
	}
	return "", err
}

// start launches the plugin for kind and loads the model; on success the
// supervisor is ready.
func (s *Supervisor) start(kind string) error {
	path := filepath.Join(s.cfg.PluginDir, BinaryPrefix+kind)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("backend: plugin %s not found in %s (build it with make build, or point --plugin-dir/RERANK_PLUGIN_DIR at it): %w", BinaryPrefix+kind, s.cfg.PluginDir, err)
	}
	begun := time.Now()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.VersionedPlugins(),
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           s.cfg.Logger.Named("plugin"),
		// go-plugin relogs the plugin's JSON log lines through Logger and
		// other lines only at debug level: pass those through as they are,
		// so a plugin that dies before its logger is set up (a dynamic
		// linker error, a panic) is still seen.
		Stderr: &rawLines{w: os.Stderr},
		// With tracing on, the trace context travels with each call.
		GRPCDialOptions: telemetry.DialOptions(),
	})
	fail := func(err error) error {
		client.Kill()
		return err
	}
	rpc, err := client.Client()
	if err != nil {
		return fail(fmt.Errorf("backend: cannot start %s: %w", path, err))
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
	load := s.cfg.Load
	if s.cfg.PrecisionFor != nil {
		load.Precision = s.cfg.PrecisionFor(kind, load.Precision)
	}
	info, err := b.Load(s.ctx, load)
	if err != nil {
		return fail(fmt.Errorf("backend: %s cannot load %s: %w", BinaryPrefix+kind, s.cfg.Load.ModelDir, err))
	}
	loadDuration := time.Since(begun)
	if info.SDKMinorVersion != sdk.MinorVersion {
		s.logger.Info("plugin speaks another minor protocol version", "plugin", BinaryPrefix+kind, "plugin_minor", info.SDKMinorVersion, "proxy_minor", sdk.MinorVersion)
	}
	s.logger.Info("model loaded", "plugin", BinaryPrefix+kind, "model", info.Name, "device", info.Device,
		"precision", info.Precision, "source", info.Source, "revision", info.Revision,
		"max_length", info.MaxLength, "max_batch_size", info.MaxBatchSize, "activation", info.Activation,
		"load_time", time.Since(start).Round(time.Millisecond))
	if s.cfg.OnLoad != nil {
		s.setStatus(func(st *Status) { st.Message = "model loaded; setting up the stages in front of it" })
		s.cfg.OnLoad(s.ctx, info)
	}
	s.mu.Lock()
	s.client, s.backend = client, b
	s.status.State, s.status.Message, s.status.Kind = sdk.StateReady, "", kind
	s.status.Model = &info
	close(s.up)
	s.status.LoadDuration = loadDuration
	s.status.PID = 0
	if rc := client.ReattachConfig(); rc != nil {
		s.status.PID = rc.Pid
	}
	s.status.Device = info.Device
	if s.status.Device == "" {
		s.status.Device = kind
	}
	s.mu.Unlock()
	s.once.Do(func() { close(s.ready) })
	return nil
}

// pollInterval is how often the watcher checks that the plugin is alive: a
// crash is noticed within it even when no request is running.
const pollInterval = 250 * time.Millisecond

// watch waits until the plugin exits (returning why) or Close (returning "").
func (s *Supervisor) watch() string {
	s.mu.RLock()
	client := s.client
	s.mu.RUnlock()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return ""
		case <-tick.C:
		case <-s.check:
			// A call found the connection broken: whether or not the
			// process has exited yet, it is of no use any more.
			s.mu.Lock()
			s.backend = nil
			s.status.State, s.status.PID = sdk.StateLoading, 0
			s.downLocked()
			s.mu.Unlock()
			client.Kill()
			return "plugin connection broke"
		}
		if client.Exited() {
			s.mu.Lock()
			s.backend = nil
			s.status.State, s.status.PID = sdk.StateLoading, 0
			s.downLocked()
			s.mu.Unlock()
			client.Kill()
			return "plugin process exited unexpectedly"
		}
	}
}

// stop kills the running plugin, if any.
func (s *Supervisor) stop() {
	s.mu.Lock()
	client := s.client
	s.client, s.backend = nil, nil
	s.mu.Unlock()
	if client != nil {
		client.Kill()
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
