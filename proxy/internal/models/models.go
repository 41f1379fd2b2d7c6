// Package models serves several models behind one server. Each model has its
// own plugin process, started when the model loads and stopped when it
// unloads, and its own pipeline (score cache, micro-batcher and queue bound),
// built after its plugin has loaded from what the plugin reports. A Registry
// routes requests to models by name or alias (it is the rerank.Router), loads
// an unloaded model when a request needs it (concurrent requests share one
// load), unloads a model idle for its keep_alive so that its memory returns
// to the system, keeps at most MaxLoaded models loaded (the least recently
// used idle one goes first), and restarts a plugin that died. Status carries
// a model's state to /health and /v1/models.
package models

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/proxy/internal/batch"
	"github.com/rerank-sidecar/rerank/proxy/internal/cache"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// State is where a model is in its life.
type State string

// The model states.
const (
	// Loaded: the plugin runs with the model; requests are scored.
	Loaded State = "loaded"
	// Loading: the plugin is starting or loading the model (at startup,
	// on a request's demand, or after the plugin died).
	Loading State = "loading"
	// Unloaded: no plugin runs; the next request loads the model.
	Unloaded State = "unloaded"
	// Failed: the model could not be loaded; requests are refused.
	Failed State = "failed"
)

// Never is the keep_alive of a model that is never unloaded for idleness.
const Never time.Duration = -1

// Spec configures one model.
type Spec struct {
	// Name is what the API reports and routes on.
	Name string
	// Aliases are further names requests may use.
	Aliases []string
	// Backend says which plugin to start and what it loads; Backend.Load's
	// ModelName is set to Name.
	Backend backend.Config
	// Prepare, when set, runs before every load and may fill in the load
	// config, for example the model dir once a download finished; its
	// error is a failed load.
	Prepare func(ctx context.Context, load *sdk.LoadConfig) error
	// KeepAlive is how long the model stays loaded with no request; a
	// negative value (Never) keeps it loaded, 0 unloads it as soon as its
	// last request is answered.
	KeepAlive time.Duration
	// Batch returns the micro-batcher's configuration from what the
	// plugin reported; nil means batch.ForDevice(info.Device) with the
	// plugin's max length and batch size.
	Batch func(info sdk.ModelInfo) batch.Config
	// Cache configures the score cache; nil means no cache.
	Cache *cache.Config
}

// Config configures a Registry.
type Config struct {
	// Models lists the models; the first is the default, for requests
	// that name none.
	Models []Spec
	// MaxLoaded bounds the models loaded at once; loading one more first
	// unloads the least recently used idle one. 0 means no bound.
	MaxLoaded int
	// Logger receives the registry's logs.
	Logger hclog.Logger
	// RestartDelay is the first wait before restarting a plugin that died
	// within RestartDelay of its load (one that ran longer is restarted at
	// once); it doubles on each failed restart up to MaxRestartDelay. It is
	// also the first wait before trying again a load that failed with a
	// transient error (see Transient), doubling, with jitter, up to
	// MaxRestartDelay. 0 means 1s.
	RestartDelay time.Duration
	// MaxRestartDelay caps RestartDelay; 0 means 30s.
	MaxRestartDelay time.Duration

	// launch starts a plugin; nil means backend.Launch. Tests replace it.
	launch func(ctx context.Context, cfg backend.Config) (plugin, error)
}

// plugin is a running plugin process with its model loaded: a
// *backend.Plugin, or a fake in the unit tests.
type plugin interface {
	Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error)
	Info() sdk.ModelInfo
	Kind() string
	PID() int
	LoadDuration() time.Duration
	Exited() <-chan struct{}
	Close() error
}

// Registry holds the models.
type Registry struct {
	cfg    Config
	logger hclog.Logger
	models []*Model
	byName map[string]*Model
	served []string
	loaded atomic.Int64 // models with a pipeline (loaded), for MaxLoaded

	roomMu sync.Mutex // serializes MaxLoaded decisions
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New checks cfg and returns a Registry; Start begins loading.
func New(cfg Config) (*Registry, error) {
	if len(cfg.Models) == 0 {
		return nil, errors.New("models: no model configured")
	}
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
	if cfg.MaxLoaded < 0 {
		return nil, fmt.Errorf("models: the most models loaded at once must not be negative, got %d", cfg.MaxLoaded)
	}
	if cfg.launch == nil {
		cfg.launch = func(ctx context.Context, c backend.Config) (plugin, error) {
			p, err := backend.Launch(ctx, c)
			if err != nil {
				return nil, err
			}
			return p, nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registry{cfg: cfg, logger: cfg.Logger.Named("models"), byName: map[string]*Model{}, ctx: ctx, cancel: cancel}
	created := time.Now()
	for i, spec := range cfg.Models {
		if spec.Name == "" {
			cancel()
			return nil, fmt.Errorf("models: model %d has no name", i+1)
		}
		for _, n := range append([]string{spec.Name}, spec.Aliases...) {
			if other, ok := r.byName[n]; ok {
				cancel()
				return nil, fmt.Errorf("models: the name %q is used by both %q and %q", n, other.spec.Name, spec.Name)
			}
			r.byName[n] = nil // claimed; set below
		}
		spec.Backend.Load.ModelName = spec.Name
		m := &Model{spec: spec, reg: r, logger: r.logger.With("model", spec.Name), state: Unloaded,
			nextDelay: cfg.RestartDelay, created: created, isDefault: i == 0}
		r.models = append(r.models, m)
		for _, n := range append([]string{spec.Name}, spec.Aliases...) {
			r.byName[n] = m
			r.served = append(r.served, n)
		}
	}
	// A repo id's last path segment ("bge-reranker-v2-m3" for
	// "BAAI/bge-reranker-v2-m3") names the model too, as the seed server
	// accepted, unless it is another model's name or shared.
	short := map[string][]*Model{}
	for _, m := range r.models {
		if s := rerank.LastSegment(m.spec.Name); s != m.spec.Name {
			short[s] = append(short[s], m)
		}
	}
	for s, ms := range short {
		if _, taken := r.byName[s]; !taken && len(ms) == 1 {
			r.byName[s] = ms[0]
		}
	}
	return r, nil
}

// Start loads the default model, and the others in order as far as
// MaxLoaded allows, in the background. Requests for a model loading at
// startup are refused with sdk.ErrNotLoaded (503) until it is loaded, as
// the seed server did while it loaded its model; the rest stay unloaded
// until a request needs them.
func (r *Registry) Start() {
	for i, m := range r.models {
		if i > 0 && r.cfg.MaxLoaded > 0 && i >= r.cfg.MaxLoaded {
			continue
		}
		m.mu.Lock()
		m.startLoadLocked(false, 0, false)
		m.mu.Unlock()
	}
}

// Route returns the model called name ("" is the default) and its
// canonical name; it is the rerank.Router of the server. A model that
// failed, or is loading at startup or after its plugin died, is refused with
// an error wrapping sdk.ErrNotLoaded; an unloaded one is returned, and loads
// when scored.
func (r *Registry) Route(_ context.Context, name string) (rerank.Scorer, string, error) {
	m := r.models[0]
	if name != "" {
		var ok bool
		if m, ok = r.byName[name]; !ok {
			return nil, "", &rerank.UnknownModelError{Name: name, Served: r.served}
		}
	}
	if err := m.refusal(); err != nil {
		return nil, m.spec.Name, err
	}
	return m, m.spec.Name, nil
}

// Info returns what the plugin of the model called name (its canonical
// name) reported at its load, nil while it is not loaded or unknown.
func (r *Registry) Info(name string) *sdk.ModelInfo {
	m, ok := r.byName[name]
	if !ok || m.spec.Name != name {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil || m.info == nil {
		return nil
	}
	info := *m.info
	return &info
}

// Default is the default model.
func (r *Registry) Default() *Model { return r.models[0] }

// Models lists the models in configuration order.
func (r *Registry) Models() []*Model { return slices.Clone(r.models) }

// Statuses returns every model's status in configuration order.
func (r *Registry) Statuses() []Status {
	out := make([]Status, len(r.models))
	for i, m := range r.models {
		out[i] = m.Status()
	}
	return out
}

// Close stops every plugin and waits for the loads under way to end.
func (r *Registry) Close() error {
	r.cancel()
	r.wg.Wait()
	var wg sync.WaitGroup
	for _, m := range r.models {
		m.mu.Lock()
		m.stopIdleLocked()
		p, closing := m.cur, m.closing
		if p != nil {
			m.cur = nil
			m.state, m.message = Unloaded, "the server is shutting down"
			r.loaded.Add(-1)
			p.retired = true
		}
		m.mu.Unlock()
		wg.Go(func() {
			if p != nil {
				p.close()
			}
			if closing != nil {
				<-closing
			}
			m.mu.Lock()
			st := m.stages
			m.stages = nil
			m.mu.Unlock()
			if st != nil {
				st.retire()
				st.close()
			}
		})
	}
	wg.Wait()
	return nil
}

// makeRoom unloads least recently used idle models until fewer than
// MaxLoaded-room others (than except) are loaded or loading.
func (r *Registry) makeRoom(except *Model, room int) {
	if r.cfg.MaxLoaded <= 0 {
		return
	}
	r.roomMu.Lock()
	defer r.roomMu.Unlock()
	for {
		busy := 0
		var victim *Model
		var victimUsed time.Time
		for _, m := range r.models {
			if m == except {
				continue
			}
			m.mu.Lock()
			if m.cur != nil || m.state == Loading {
				busy++
			}
			if m.cur != nil && m.cur.active == 0 && m.waiters == 0 && (victim == nil || m.lastUsed.Before(victimUsed)) {
				victim, victimUsed = m, m.lastUsed
			}
			m.mu.Unlock()
		}
		if busy <= r.cfg.MaxLoaded-room {
			return
		}
		if victim == nil {
			if except != nil {
				r.logger.Warn("loading a model beyond max-loaded-models: every loaded model is answering requests; the least recently used is unloaded once idle",
					"model", except.spec.Name, "max_loaded_models", r.cfg.MaxLoaded)
			}
			return
		}
		victim.mu.Lock()
		if victim.cur != nil && victim.cur.active == 0 && victim.waiters == 0 {
			reason := "least recently used, over max-loaded-models"
			if except != nil {
				reason = "least recently used, making room for " + except.spec.Name
			}
			victim.unloadLocked(reason)
		}
		victim.mu.Unlock()
	}
}

// Model is one served model: its plugin process and pipeline while loaded,
// and its state. It is the rerank.Scorer requests for it are scored by.
type Model struct {
	spec      Spec
	reg       *Registry
	logger    hclog.Logger
	created   time.Time
	isDefault bool

	mu        sync.Mutex
	state     State
	message   string
	waitable  bool          // while loading: requests wait for this load
	restart   bool          // while loading: this load restarts a dead plugin
	loadDone  chan struct{} // closed when the load under way ends
	closing   chan struct{} // closed when the last unloaded plugin is gone
	cur       *pipeline     // while loaded
	stages    *stages       // the newest load's, kept across unloads
	info      *sdk.ModelInfo
	kind      string
	lastUsed  time.Time
	loadedAt  time.Time // when the current or last load finished
	waiters   int       // requests waiting for a load
	idle      *time.Timer
	idleGen   uint64
	nextDelay time.Duration
	// failures counts the failed load attempts since the last success;
	// lastErr is the last one's error, nextRetry when the next attempt
	// starts while one waits.
	failures  int
	lastErr   string
	nextRetry time.Time
	loads     int
	restarts  int
	// loadDuration is how long the last successful load took.
	loadDuration time.Duration

	pairs   atomic.Uint64
	batches atomic.Uint64
}

// Name is the model's canonical name.
func (m *Model) Name() string { return m.spec.Name }

// refusal returns why requests cannot be taken now, or nil: they are while
// the model is loaded, unloaded, or loading on a request's demand.
func (m *Model) refusal() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.refusalLocked()
}

func (m *Model) refusalLocked() error {
	switch {
	case m.cur != nil:
		return nil
	case m.reg.ctx.Err() != nil:
		return fmt.Errorf("models: %s: the server is shutting down: %w", m.spec.Name, sdk.ErrNotLoaded)
	case m.state == Failed:
		return fmt.Errorf("models: %s failed to load: %s: %w", m.spec.Name, m.message, sdk.ErrNotLoaded)
	case m.state == Loading && !m.waitable:
		return fmt.Errorf("models: %s is loading: %w", m.spec.Name, sdk.ErrNotLoaded)
	}
	return nil
}

// Score scores pairs on the model, loading it first when it is unloaded:
// the request waits for the load within ctx, and concurrent requests share
// one load.
func (m *Model) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	p, err := m.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer m.release(p)
	return p.stages.head.Score(ctx, pairs)
}

// acquire returns the loaded pipeline, counted as in use, loading the model
// when needed.
func (m *Model) acquire(ctx context.Context) (*pipeline, error) {
	for {
		m.mu.Lock()
		if p := m.cur; p != nil {
			p.active++
			m.lastUsed = time.Now()
			m.stopIdleLocked()
			m.mu.Unlock()
			return p, nil
		}
		if err := m.refusalLocked(); err != nil {
			m.mu.Unlock()
			return nil, err
		}
		if m.state == Unloaded {
			m.startLoadLocked(true, 0, false)
		}
		done := m.loadDone
		m.waiters++
		m.mu.Unlock()
		var err error
		select {
		case <-done:
		case <-ctx.Done():
			// As a batcher waiting for a restarting plugin answers: no
			// model came up within the request's deadline.
			err = fmt.Errorf("models: %s did not load within the request's deadline (%v): %w", m.spec.Name, ctx.Err(), sdk.ErrNotLoaded)
		}
		m.mu.Lock()
		m.waiters--
		m.armIdleLocked()
		m.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// release ends a request's use of p.
func (m *Model) release(p *pipeline) {
	m.mu.Lock()
	p.active--
	m.lastUsed = time.Now()
	last := p.active == 0
	if last && p.retired {
		go p.close()
	}
	if last && m.cur == p {
		m.armIdleLocked()
	}
	m.mu.Unlock()
	if last && m.reg.cfg.MaxLoaded > 0 && m.reg.loaded.Load() > int64(m.reg.cfg.MaxLoaded) {
		go m.reg.makeRoom(nil, 0)
	}
}

// armIdleLocked starts the keep_alive timer of an idle loaded model.
func (m *Model) armIdleLocked() {
	if m.spec.KeepAlive < 0 || m.cur == nil || m.cur.active > 0 || m.waiters > 0 {
		return
	}
	m.stopIdleLocked()
	gen := m.idleGen
	m.idle = time.AfterFunc(m.spec.KeepAlive, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if gen == m.idleGen && m.cur != nil && m.cur.active == 0 && m.waiters == 0 {
			m.unloadLocked("idle for its keep_alive of " + m.spec.KeepAlive.String())
		}
	})
}

// stopIdleLocked cancels the keep_alive timer.
func (m *Model) stopIdleLocked() {
	m.idleGen++
	if m.idle != nil {
		m.idle.Stop()
		m.idle = nil
	}
}

// unloadLocked stops the idle model's plugin; its memory returns to the
// system and the model is unloaded.
func (m *Model) unloadLocked(reason string) {
	p := m.cur
	m.cur = nil
	m.stopIdleLocked()
	m.state, m.message = Unloaded, ""
	m.reg.loaded.Add(-1)
	m.logger.Info("unloading the model: its plugin process stops", "reason", reason, "pid", p.plugin.PID())
	closing := make(chan struct{})
	m.closing = closing
	go func() {
		defer close(closing)
		p.plugin.Close()
	}()
	p.retire()
}

// startLoadLocked begins a load in the background: waitable says requests
// wait for it rather than being refused, restart that it replaces a plugin
// that died (a failure is then retried), delay how long to wait first.
func (m *Model) startLoadLocked(waitable bool, delay time.Duration, restart bool) {
	if m.reg.ctx.Err() != nil {
		return
	}
	done := make(chan struct{})
	m.state, m.waitable, m.restart, m.loadDone = Loading, waitable, restart, done
	if m.message == "" || !restart {
		m.message = "loading the model on " + m.spec.Backend.Kind
	}
	m.reg.wg.Add(1)
	go func() {
		defer m.reg.wg.Done()
		m.load(done, delay)
	}()
}

// load runs one load: wait delay, make room under MaxLoaded, start the
// plugin, build the pipeline from what it reports.
func (m *Model) load(done chan struct{}, delay time.Duration) {
	ctx := m.reg.ctx
	var err error
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	m.mu.Lock()
	closing := m.closing
	m.nextRetry = time.Time{}
	m.mu.Unlock()
	if closing != nil && err == nil {
		// The previous plugin is still stopping: its memory must be back
		// before the next one takes its own.
		select {
		case <-closing:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err == nil {
		m.reg.makeRoom(m, 1)
	}
	start := time.Now()
	cfg := m.spec.Backend
	if err == nil && m.spec.Prepare != nil {
		err = m.spec.Prepare(ctx, &cfg.Load)
	}
	var p plugin
	if err == nil {
		p, err = m.reg.cfg.launch(ctx, cfg)
	}
	var pipe *pipeline
	if err == nil {
		pipe = m.build(p)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	defer close(done)
	m.loadDone = nil
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
		pipe.retire()
		go p.Close()
	}
	if err != nil {
		if ctx.Err() != nil {
			m.state, m.message = Unloaded, "the server is shutting down"
			return
		}
		m.failures++
		m.lastErr = err.Error()
		if m.restart {
			// The model loaded before: whatever failed now may pass.
			delay := m.nextDelay
			m.nextDelay = min(max(2*delay, m.reg.cfg.RestartDelay), m.reg.cfg.MaxRestartDelay)
			m.restarts++
			m.nextRetry = time.Now().Add(delay)
			m.message = err.Error() + "; restarting in " + delay.String()
			m.logger.Error("plugin restart failed; trying again", "error", err, "delay", delay, "attempts", m.failures)
			m.startLoadLocked(true, delay, true)
			return
		}
		if Transient(err) {
			// Requests are refused (503, Retry-After) until it loads,
			// rather than each waiting out its deadline for a retry.
			delay := m.reg.loadRetryDelay(m.failures)
			m.nextRetry = time.Now().Add(delay)
			m.logger.Warn("model load failed; trying again", "error", err, "attempts", m.failures, "delay", delay.Round(time.Millisecond))
			m.startLoadLocked(false, delay, false)
			// (after startLoadLocked, which sets its own message)
			m.message = fmt.Sprintf("load attempt %d failed with an error that may pass; trying again in %v: %v",
				m.failures, delay.Round(time.Millisecond), err)
			return
		}
		m.state, m.message = Failed, err.Error()
		m.logger.Error("model load failed for good (trying again cannot help): requests for it are answered 503 until the server restarts",
			"error", err, "attempts", m.failures)
		return
	}
	info := p.Info()
	m.cur, m.info, m.kind, m.loadDuration = pipe, &info, p.Kind(), p.LoadDuration()
	m.state, m.message = Loaded, ""
	m.failures, m.lastErr = 0, ""
	m.loads++
	m.nextDelay = m.reg.cfg.RestartDelay
	m.lastUsed, m.loadedAt = time.Now(), time.Now()
	m.reg.loaded.Add(1)
	m.logger.Info("model ready", "device", info.Device, "precision", info.Precision, "pid", p.PID(),
		"max_batch_size", pipe.stages.batchCfg.MaxBatchSize, "max_length", info.MaxLength, "cache", pipe.stages.cache != nil,
		"load_time", time.Since(start).Round(time.Millisecond))
	m.armIdleLocked()
	go m.watch(pipe)
}

// watch restarts the plugin of pipe when it dies while loaded.
func (m *Model) watch(pipe *pipeline) {
	select {
	case <-pipe.plugin.Exited():
	case <-m.reg.ctx.Done():
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur != pipe {
		return // unloaded on purpose
	}
	m.cur = nil
	m.stopIdleLocked()
	m.reg.loaded.Add(-1)
	pipe.retire()
	m.restarts++
	// A plugin that ran at least RestartDelay before it died is restarted
	// at once: requests are waiting for it. One that dies sooner (a crash
	// loop) waits, the wait doubling each time.
	delay := m.nextDelay
	if time.Since(m.loadedAt) >= m.reg.cfg.RestartDelay {
		delay = 0
	}
	m.nextDelay = min(max(2*delay, m.reg.cfg.RestartDelay), m.reg.cfg.MaxRestartDelay)
	m.message = "plugin process exited unexpectedly; restarting in " + delay.String()
	m.logger.Error("plugin stopped; restarting", "plugin", backend.Binary(m.kind), "delay", delay)
	m.startLoadLocked(true, delay, true)
}

// build makes the pipeline in front of a freshly loaded plugin, from what
// it reported: the micro-batcher's limits and the cache's identity. A load
// of the same identity as the last one (a restarted plugin, a reload after
// keep_alive, with the same weights) keeps the model's stages, their cached
// scores and the pairs queued for the plugin; another identity gets new
// ones, so no score crosses weights.
func (m *Model) build(p plugin) *pipeline {
	info := p.Info()
	id := cache.IdentityOf(info)
	m.mu.Lock()
	st := m.stages
	if st != nil && st.id == id {
		st.refs++
	} else {
		st = nil
	}
	m.mu.Unlock()
	if st == nil {
		st = m.newStages(info)
		m.mu.Lock()
		old := m.stages
		m.stages = st
		m.mu.Unlock()
		if old != nil {
			old.retire()
		}
	}
	st.attach(p)
	return &pipeline{model: m, plugin: p, stages: st}
}

// newStages makes the stages of a model identity: the micro-batcher over the
// plugin slot, the score cache over it.
func (m *Model) newStages(info sdk.ModelInfo) *stages {
	var bcfg batch.Config
	if m.spec.Batch != nil {
		bcfg = m.spec.Batch(info)
	} else {
		bcfg = PluginBatchConfig(info)
	}
	st := &stages{m: m, id: cache.IdentityOf(info), batchCfg: bcfg, up: make(chan struct{}), refs: 1}
	// While no plugin is attached (it crashed and restarts) pairs wait in
	// the queue, and a batch lost in a crash is sent again once.
	bcfg.Up = st.Up
	st.batcher = batch.New(st, bcfg)
	st.head = st.batcher
	if m.spec.Cache != nil {
		c, err := cache.New(*m.spec.Cache, st.id, st.batcher)
		if err != nil {
			m.logger.Error("score cache off", "error", err)
		} else {
			if info.Revision == "" {
				m.logger.Warn("the backend reports no model revision: cached scores are keyed on the model name, precision and backend only")
			}
			st.cache, st.head = c, c
		}
	}
	return st
}

// stages are a model identity's stages in front of its plugin: the score
// cache (when on) and the micro-batcher with its queue, scoring on the
// plugin attached to them, if any.
type stages struct {
	m        *Model
	id       cache.Identity
	batchCfg batch.Config
	batcher  *batch.Batcher
	cache    *cache.Cache // nil when off
	head     rerank.Scorer
	refs     int // pipelines using them; guarded by the model's mu

	mu   sync.Mutex
	to   plugin        // the plugin attached, nil while none is
	up   chan struct{} // closed while a plugin is attached
	gone bool          // replaced by another identity's stages

	closeMu sync.RWMutex // read-held by Stats, so the cache closes after
	closed  bool
}

// Up is the batcher's: a channel closed while a plugin is attached.
func (s *stages) Up() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

// attach makes p the plugin the stages score on.
func (s *stages) attach(p plugin) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.to = p
	select {
	case <-s.up:
	default:
		close(s.up)
	}
}

// detach takes p out: pairs wait for the next plugin.
func (s *stages) detach(p plugin) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.to != p || s.gone {
		return
	}
	s.to = nil
	select {
	case <-s.up:
		s.up = make(chan struct{})
	default:
	}
}

// retire marks the stages replaced by another identity's: their queued
// pairs fail at once instead of waiting for a plugin that never comes.
func (s *stages) retire() {
	s.mu.Lock()
	s.gone, s.to = true, nil
	select {
	case <-s.up:
	default:
		close(s.up)
	}
	s.mu.Unlock()
	s.m.mu.Lock()
	last := s.refs == 0
	s.m.mu.Unlock()
	if last {
		s.close()
	}
}

// Score is the batcher's next stage: the attached plugin.
func (s *stages) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	s.mu.Lock()
	p, gone := s.to, s.gone
	s.mu.Unlock()
	switch {
	case gone:
		return nil, fmt.Errorf("models: %s: the model's weights changed while these pairs waited; send the request again: %w", s.m.spec.Name, sdk.ErrOverloaded)
	case p == nil:
		return nil, fmt.Errorf("models: %s: no plugin is running: %w", s.m.spec.Name, sdk.ErrNotLoaded)
	}
	scores, err := p.Score(ctx, pairs)
	if err != nil {
		if errors.Is(err, sdk.ErrUnavailable) {
			// The plugin is gone: nothing more is sent to it, and the
			// batcher queues the pairs for the plugin that comes back.
			s.detach(p)
		}
		return nil, err
	}
	if len(pairs) > 0 {
		s.m.pairs.Add(uint64(len(pairs)))
		s.m.batches.Add(1)
	}
	return scores, nil
}

// close closes the cache once; no pipeline uses the stages any more.
func (s *stages) close() {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if !s.closed {
		s.closed = true
		if s.cache != nil {
			s.cache.Close()
		}
	}
}

// PluginBatchConfig is the micro-batcher's configuration for a plugin's
// report: the measured per-device defaults (batch.ForDevice), with the
// plugin's max length, largest batch, token limit and preferred batches in
// flight where it reports them (a plugin older than protocol minor version
// 3 reports neither of the last two, and keeps the per-device defaults).
func PluginBatchConfig(info sdk.ModelInfo) batch.Config {
	cfg := batch.ForDevice(info.Device)
	if info.MaxLength > 0 {
		cfg.MaxLength = info.MaxLength
	}
	if info.MaxBatchSize > 0 {
		cfg.MaxBatchSize = info.MaxBatchSize
	}
	if info.Device == backend.CUDA {
		// A GPU runs a full batch in about the time of a small one: the
		// token budget never splits a batch below its size.
		cfg.MaxBatchTokens = cfg.MaxBatchSize * cfg.MaxLength
	}
	if info.MaxBatchTokens > 0 {
		cfg.MaxBatchTokens = info.MaxBatchTokens
	}
	if info.PreferredInFlight > 0 {
		cfg.MaxInFlight = info.PreferredInFlight
	}
	return cfg
}

// pipeline is one load: a plugin process attached to the stages of its
// model identity. A plugin that comes back with other weights gets new
// stages, and a new cache keyed on them.
type pipeline struct {
	model  *Model
	plugin plugin
	stages *stages

	active  int  // requests in it; guarded by the model's mu
	retired bool // no new request enters; guarded by the model's mu

	closeMu sync.Mutex
	closed  bool
}

// retire marks the pipeline out of service; it closes once its last request
// is answered (the caller's mu is held).
func (p *pipeline) retire() {
	p.retired = true
	if p.active == 0 {
		go p.close()
	}
}

// close stops the plugin and lets go of the stages (closing them when no
// load of their identity uses them or may use them again); it runs once no
// request is in the pipeline.
func (p *pipeline) close() {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	p.stages.detach(p.plugin)
	p.plugin.Close()
	m, st := p.model, p.stages
	m.mu.Lock()
	st.refs--
	last := st.refs == 0 && m.stages != st
	m.mu.Unlock()
	if last {
		st.close()
	}
}
