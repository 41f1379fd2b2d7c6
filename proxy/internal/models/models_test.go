package models

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
	"github.com/rerank-sidecar/rerank/proxy/internal/batch"
	"github.com/rerank-sidecar/rerank/proxy/internal/cache"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// fakePlugin is the registry's collaborator, a plugin process: a pair's
// score is its document's length plus the model's offset, so two models
// score differently.
type fakePlugin struct {
	info   sdk.ModelInfo
	offset float32
	pid    int
	once   sync.Once
	exited chan struct{}
	closed atomic.Bool
	// arrived and hold, when set, make Score say it started and wait.
	arrived, hold chan struct{}
}

func (f *fakePlugin) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	if f.hold != nil {
		f.arrived <- struct{}{}
		<-f.hold
	}
	select {
	case <-f.exited:
		return nil, fmt.Errorf("fake: %w", sdk.ErrUnavailable)
	default:
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		out[i] = f.offset + float32(len(p.Document))
	}
	return out, nil
}

func (f *fakePlugin) Info() sdk.ModelInfo         { return f.info }
func (f *fakePlugin) Kind() string                { return backend.CPU }
func (f *fakePlugin) PID() int                    { return f.pid }
func (f *fakePlugin) LoadDuration() time.Duration { return time.Millisecond }
func (f *fakePlugin) Exited() <-chan struct{}     { return f.exited }
func (f *fakePlugin) Close() error {
	f.closed.Store(true)
	f.die()
	return nil
}
func (f *fakePlugin) die() { f.once.Do(func() { close(f.exited) }) }

// launcher starts fake plugins and counts the launches per model.
type launcher struct {
	mu       sync.Mutex
	launches map[string]int
	plugins  map[string][]*fakePlugin
	fail     map[string]error
	// failFirst, when set for a model, is how many of its launches fail
	// with fail's error before they succeed.
	failFirst map[string]int
	attempts  map[string]int
	gate      chan struct{} // when set, a launch waits for it
	revision  string
}

func newLauncher() *launcher {
	return &launcher{launches: map[string]int{}, plugins: map[string][]*fakePlugin{}, fail: map[string]error{},
		failFirst: map[string]int{}, attempts: map[string]int{}, revision: "r1"}
}

func (l *launcher) launch(ctx context.Context, cfg backend.Config) (plugin, error) {
	l.mu.Lock()
	gate, err := l.gate, l.fail[cfg.Load.ModelName]
	l.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	l.mu.Lock()
	l.attempts[cfg.Load.ModelName]++
	if n, ok := l.failFirst[cfg.Load.ModelName]; ok && l.attempts[cfg.Load.ModelName] > n {
		err = nil
	}
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.launches[cfg.Load.ModelName]++
	p := &fakePlugin{
		info: sdk.ModelInfo{Name: cfg.Load.ModelName, Revision: l.revision, Device: "cpu", Backend: "fake-cpu",
			Precision: cfg.Load.Precision, MaxLength: cfg.Load.MaxLength, MaxBatchSize: 7},
		offset: float32(len(cfg.Load.ModelName)) * 100,
		pid:    1000 + l.launches[cfg.Load.ModelName],
		exited: make(chan struct{}),
	}
	l.plugins[cfg.Load.ModelName] = append(l.plugins[cfg.Load.ModelName], p)
	return p, nil
}

func (l *launcher) count(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.launches[name]
}

func (l *launcher) last(name string) *fakePlugin {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.plugins[name]
	return ps[len(ps)-1]
}

func spec(name string, keepAlive time.Duration, aliases ...string) Spec {
	return Spec{
		Name:      name,
		Aliases:   aliases,
		Backend:   backend.Config{Kind: backend.CPU, Load: sdk.LoadConfig{Precision: sdk.FP32, MaxLength: 64}},
		KeepAlive: keepAlive,
	}
}

func newRegistry(t *testing.T, l *launcher, maxLoaded int, specs ...Spec) *Registry {
	t.Helper()
	r, err := New(Config{Models: specs, MaxLoaded: maxLoaded, launch: l.launch, RestartDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// waitState polls the model's state; the limit only stops a broken test
// from hanging, it asserts nothing about speed.
func waitState(t *testing.T, m *Model, want State) Status {
	t.Helper()
	limit := time.Now().Add(time.Minute)
	for {
		st := m.Status()
		if st.State == want {
			return st
		}
		if time.Now().After(limit) {
			t.Fatalf("model %s never %s: %+v", m.Name(), want, st)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitUnloadedAfter waits until the model is unloaded after its loads-th
// load (keep_alive 0 unloads as soon as it is idle).
func waitUnloadedAfter(t *testing.T, m *Model, loads int) {
	t.Helper()
	limit := time.Now().Add(time.Minute)
	for {
		st := m.Status()
		if st.State == Unloaded && st.Loads == loads {
			return
		}
		if time.Now().After(limit) {
			t.Fatalf("model %s never unloaded after load %d: %+v", m.Name(), loads, st)
		}
		time.Sleep(time.Millisecond)
	}
}

func score(t *testing.T, r *Registry, name string, docs ...string) ([]float32, string) {
	t.Helper()
	s, canonical, err := r.Route(context.Background(), name)
	if err != nil {
		t.Fatalf("Route(%q): %v", name, err)
	}
	pairs := make([]sdk.Pair, len(docs))
	for i, d := range docs {
		pairs[i] = sdk.Pair{Query: "q", Document: d}
	}
	out, err := s.Score(context.Background(), pairs)
	if err != nil {
		t.Fatalf("Score on %q: %v", name, err)
	}
	return out, canonical
}

func TestNewRefusesDuplicateNames(t *testing.T) {
	f := func(want string, specs ...Spec) {
		t.Helper()
		if _, err := New(Config{Models: specs}); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("New: %v, want an error containing %q", err, want)
		}
	}
	f("no model configured")
	f(`the name "a" is used by both "a" and "a"`, spec("a", Never), spec("a", Never))
	f(`the name "x" is used by both "a" and "b"`, spec("a", Never, "x"), spec("b", Never, "x"))
	f(`the name "b" is used by both "a" and "b"`, spec("a", Never, "b"), spec("b", Never))
	f("has no name", spec("", Never))
}

func TestRoute(t *testing.T) {
	l := newLauncher()
	r := newRegistry(t, l, 0, spec("org/english", Never, "en"), spec("org/multi", Never, "xx"), spec("other/multi", Never))
	r.Start()
	for _, m := range r.Models() {
		waitState(t, m, Loaded)
	}
	f := func(asked, want string) {
		t.Helper()
		scores, got := score(t, r, asked, "abc")
		if got != want || scores[0] != float32(len(want))*100+3 {
			t.Fatalf("%q routed to %s with score %v, want %s", asked, got, scores, want)
		}
	}
	f("", "org/english")
	f("org/english", "org/english")
	f("en", "org/english")
	f("english", "org/english") // a repo id's last segment, as the seed server accepted
	f("xx", "org/multi")
	f("other/multi", "other/multi")
	// "multi" is the last segment of two models: neither gets it.
	_, _, err := r.Route(context.Background(), "multi")
	var um *rerank.UnknownModelError
	if !errors.As(err, &um) || !errors.Is(err, rerank.ErrUnknownModel) ||
		um.Error() != `unsupported model "multi": this server serves "org/english", "en", "org/multi", "xx", "other/multi"` {
		t.Fatalf("Route(multi) = %v", err)
	}
}

func TestStartupLoadThenServe(t *testing.T) {
	l := newLauncher()
	l.gate = make(chan struct{})
	c := cache.DefaultConfig()
	sp := spec("m", Never)
	sp.Cache = &c
	r := newRegistry(t, l, 0, sp)
	r.Start()
	m := r.Default()
	// While loading at startup requests are refused at once (503), as the
	// seed server did.
	if st := m.Status(); st.State != Loading || st.Ready {
		t.Fatalf("status while loading %+v", st)
	}
	if _, _, err := r.Route(context.Background(), ""); !errors.Is(err, sdk.ErrNotLoaded) {
		t.Fatalf("Route while loading: %v, want ErrNotLoaded", err)
	}
	if _, err := m.Score(context.Background(), []sdk.Pair{{Document: "a"}}); !errors.Is(err, sdk.ErrNotLoaded) {
		t.Fatalf("Score while loading: %v, want ErrNotLoaded", err)
	}
	close(l.gate)
	st := waitState(t, m, Loaded)
	if !st.Ready || st.PID != 1001 || st.Backend != "fake-cpu" || st.Model == nil || st.Model.Revision != "r1" || st.MaxLength != 64 {
		t.Fatalf("loaded status %+v", st)
	}
	// The pipeline is built from what the plugin reported.
	m.withPipeline(func(p *pipeline) {
		if p.stages.batchCfg.MaxBatchSize != 7 || p.stages.batchCfg.MaxLength != 64 || p.stages.cache == nil {
			t.Errorf("pipeline built with %+v, cache %v; want the plugin's batch size 7 and max length 64", p.stages.batchCfg, p.stages.cache)
		}
	})
	for range 2 {
		if scores, _ := score(t, r, "", "abc", "d"); !slices.Equal(scores, []float32{103, 101}) {
			t.Fatalf("scores %v", scores)
		}
	}
	if got := m.Stats(); got.PairsScored != 2 || got.Batches != 1 {
		t.Fatalf("backend stats %+v: the second request should come from the cache", got)
	}
	if cs := m.CacheStats(); cs.Local.Hits != 2 {
		t.Fatalf("cache stats %+v", cs.Local)
	}
}

func TestKeepAliveUnloadsAndReloads(t *testing.T) {
	l := newLauncher()
	// 50ms: short enough for a test, long enough that the reload below
	// (a fake) is not raced by it.
	r := newRegistry(t, l, 0, spec("m", 50*time.Millisecond))
	r.Start()
	m := r.Default()
	waitState(t, m, Loaded)
	before, _ := score(t, r, "", "abc")
	first := l.last("m")
	st := waitState(t, m, Unloaded)
	// The plugin is closed in the background once the model is marked
	// unloaded (the registry's lock is not held over a process exit): wait
	// for that close, not for a time.
	m.mu.Lock()
	closing := m.closing
	m.mu.Unlock()
	select {
	case <-closing:
	case <-time.After(time.Minute):
		t.Fatal("the unloaded plugin's close did not finish within a minute")
	}
	if !first.closed.Load() {
		t.Fatal("the plugin was not stopped on unload")
	}
	if !st.Ready || st.PID != 0 || st.Model != nil || st.Loads != 1 {
		t.Fatalf("unloaded status %+v", st)
	}
	// The next request reloads the model and scores the same.
	after, _ := score(t, r, "", "abc")
	if !slices.Equal(before, after) || l.count("m") != 2 {
		t.Fatalf("after reload: scores %v then %v, %d launches", before, after, l.count("m"))
	}
}

func TestConcurrentRequestsShareOneLoad(t *testing.T) {
	l := newLauncher()
	r := newRegistry(t, l, 0, spec("m", 0)) // keep_alive 0: unloaded when idle
	r.Start()
	m := r.Default()
	waitUnloadedAfter(t, m, 1)
	l.mu.Lock()
	l.gate = make(chan struct{})
	l.mu.Unlock()
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			s, _, err := r.Route(context.Background(), "m")
			if err == nil {
				_, err = s.Score(context.Background(), []sdk.Pair{{Document: "ab"}})
			}
			errs <- err
		})
	}
	// Every request waits for the one load.
	for limit := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		m.mu.Lock()
		w := m.waiters
		m.mu.Unlock()
		if w == n {
			break
		}
		if time.Now().After(limit) {
			t.Fatalf("%d of %d requests waiting", w, n)
		}
	}
	if st := m.Status(); st.State != Loading || !st.Ready {
		t.Fatalf("status during an on-demand load %+v, want loading and ready", st)
	}
	close(l.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := l.count("m"); got != 2 {
		t.Fatalf("%d launches, want 2 (startup, then one for all %d requests)", got, n)
	}
}

func TestWaitingRequestKeepsItsDeadline(t *testing.T) {
	l := newLauncher()
	r := newRegistry(t, l, 0, spec("m", 0))
	r.Start()
	waitUnloadedAfter(t, r.Default(), 1)
	l.mu.Lock()
	l.gate = make(chan struct{})
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.Default().Score(ctx, []sdk.Pair{{Document: "a"}}); !errors.Is(err, sdk.ErrNotLoaded) || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("Score past its deadline while loading: %v", err)
	}
	close(l.gate)
	// The load goes on for the next request; keep_alive 0 unloads it again.
	waitUnloadedAfter(t, r.Default(), 2)
	if l.count("m") != 2 {
		t.Fatalf("%d launches", l.count("m"))
	}
}

func TestMaxLoadedUnloadsLeastRecentlyUsed(t *testing.T) {
	l := newLauncher()
	r := newRegistry(t, l, 2, spec("a", Never), spec("b", Never), spec("c", Never))
	r.Start()
	ms := r.Models()
	waitState(t, ms[0], Loaded)
	waitState(t, ms[1], Loaded)
	if st := ms[2].Status(); st.State != Unloaded || l.count("c") != 0 {
		t.Fatalf("c beyond max-loaded-models at startup: %+v", st)
	}
	score(t, r, "b", "x")
	score(t, r, "a", "x") // b is now the least recently used
	score(t, r, "c", "x")
	waitState(t, ms[1], Unloaded)
	if ms[0].Status().State != Loaded || ms[2].Status().State != Loaded || !l.last("b").closed.Load() {
		t.Fatalf("after loading c: a %s, c %s", ms[0].Status().State, ms[2].Status().State)
	}
	score(t, r, "b", "x") // a is the least recently used now
	waitState(t, ms[0], Unloaded)
}

func TestFailedModelLeavesOthersServing(t *testing.T) {
	l := newLauncher()
	l.fail["bad"] = errors.New("fake: onnx/model.onnx is not a model")
	r := newRegistry(t, l, 0, spec("good", Never), spec("bad", Never))
	r.Start()
	ms := r.Models()
	st := waitState(t, ms[1], Failed)
	if st.Ready || !strings.Contains(st.Message, "not a model") {
		t.Fatalf("failed status %+v", st)
	}
	if _, _, err := r.Route(context.Background(), "bad"); !errors.Is(err, sdk.ErrNotLoaded) || !strings.Contains(err.Error(), "not a model") {
		t.Fatalf("Route(bad) = %v", err)
	}
	waitState(t, ms[0], Loaded)
	score(t, r, "good", "x")
}

func TestCrashRestartsWithANewPipeline(t *testing.T) {
	l := newLauncher()
	c := cache.DefaultConfig()
	sp := spec("m", Never)
	sp.Cache = &c
	r := newRegistry(t, l, 0, sp)
	r.Start()
	m := r.Default()
	waitState(t, m, Loaded)
	score(t, r, "", "abc")
	var old *stages
	m.withPipeline(func(p *pipeline) { old = p.stages })

	// The plugin dies and comes back with other weights.
	l.mu.Lock()
	l.revision = "r2"
	l.mu.Unlock()
	l.last("m").die()
	for limit := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		if st := m.Status(); st.State == Loaded && st.Restarts == 1 {
			if st.Model.Revision != "r2" || st.PID != 1002 {
				t.Fatalf("restarted status %+v", st)
			}
			break
		}
		if time.Now().After(limit) {
			t.Fatalf("never restarted: %+v", m.Status())
		}
	}
	m.withPipeline(func(p *pipeline) {
		if p.stages == old || p.stages.cache == nil {
			t.Errorf("the restarted plugin kept the old cache")
		}
	})
	before := m.Stats().PairsScored
	score(t, r, "", "abc")
	if got := m.Stats().PairsScored - before; got != 1 {
		t.Fatalf("after a restart with new weights the plugin scored %d pairs, want 1: the old cache answered", got)
	}
}

// TestRetiredPipelineClosesAfterItsRequests: the plugin dies while a
// request is in it; the pipeline closes only once the request has left it,
// and the request is answered by the restarted plugin (its batch is sent
// again once).
func TestRetiredPipelineClosesAfterItsRequests(t *testing.T) {
	l := newLauncher()
	c := cache.DefaultConfig()
	sp := spec("m", Never)
	sp.Cache = &c
	r := newRegistry(t, l, 0, sp)
	r.Start()
	m := r.Default()
	waitState(t, m, Loaded)
	p := l.last("m")
	p.arrived, p.hold = make(chan struct{}), make(chan struct{})
	var pipe *pipeline
	m.withPipeline(func(pp *pipeline) { pipe = pp })
	done := make(chan error)
	go func() {
		_, err := m.Score(context.Background(), []sdk.Pair{{Document: "a"}})
		done <- err
	}()
	<-p.arrived
	p.die()
	eventually(t, "the dead plugin's pipeline retired", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return pipe.retired
	})
	if pipelineClosed(pipe) {
		t.Fatal("the pipeline closed under a request")
	}
	close(p.hold)
	if err := <-done; err != nil {
		t.Fatalf("the request on the dead plugin: %v, want its answer from the restarted one", err)
	}
	eventually(t, "the retired pipeline closed after its request", func() bool { return pipelineClosed(pipe) })
}

func pipelineClosed(p *pipeline) bool {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	return p.closed
}

// eventually polls cond; the limit only stops a broken test from hanging.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for limit := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(limit) {
			t.Fatalf("never %s", what)
		}
	}
}

// TestSameWeightsKeepTheCache: a plugin restarted, or reloaded after
// keep_alive, with the same weights keeps the model's cache and its scores.
func TestSameWeightsKeepTheCache(t *testing.T) {
	l := newLauncher()
	c := cache.DefaultConfig()
	sp := spec("m", 50*time.Millisecond)
	sp.Cache = &c
	r := newRegistry(t, l, 0, sp)
	r.Start()
	m := r.Default()
	waitState(t, m, Loaded)
	score(t, r, "", "abc")
	waitState(t, m, Unloaded)
	score(t, r, "", "abc") // reloaded: answered from the cache
	if got := m.Stats().PairsScored; got != 1 {
		t.Fatalf("the plugins scored %d pairs, want 1: the reload lost the cache", got)
	}
	l.last("m").die()
	eventually(t, "restarted", func() bool { st := m.Status(); return st.State == Loaded && st.Restarts == 1 })
	score(t, r, "", "abc")
	if got := m.Stats().PairsScored; got != 1 || m.CacheStats().Local.Hits != 2 {
		t.Fatalf("after a restart with the same weights: %d pairs scored, cache %+v", got, m.CacheStats().Local)
	}
}

// TestPluginBatchConfig checks that a model's batcher takes the limits its
// plugin declares (token budget, batches in flight, batch size, max
// length) and that a plugin declaring none (before protocol minor version
// 3) keeps the per-device defaults.
func TestPluginBatchConfig(t *testing.T) {
	f := func(info sdk.ModelInfo, wantSize, wantTokens, wantInFlight, wantMaxLength int) {
		t.Helper()
		c := PluginBatchConfig(info)
		if c.MaxBatchSize != wantSize || c.MaxBatchTokens != wantTokens || c.MaxInFlight != wantInFlight || c.MaxLength != wantMaxLength {
			t.Fatalf("%+v: size %d, tokens %d, in flight %d, max length %d; want %d, %d, %d, %d", info,
				c.MaxBatchSize, c.MaxBatchTokens, c.MaxInFlight, c.MaxLength, wantSize, wantTokens, wantInFlight, wantMaxLength)
		}
	}
	cpu, cuda := batch.ForDevice(backend.CPU), batch.ForDevice(backend.CUDA)
	f(sdk.ModelInfo{Device: backend.CPU}, cpu.MaxBatchSize, cpu.MaxBatchTokens, cpu.MaxInFlight, batch.DefaultMaxLength)
	f(sdk.ModelInfo{Device: backend.CPU, MaxLength: 256, MaxBatchSize: 64}, 64, cpu.MaxBatchTokens, cpu.MaxInFlight, 256)
	f(sdk.ModelInfo{Device: backend.CPU, MaxLength: 256, MaxBatchSize: 64, MaxBatchTokens: 4000, PreferredInFlight: 2}, 64, 4000, 2, 256)
	f(sdk.ModelInfo{Device: backend.CUDA, MaxLength: 512, MaxBatchSize: 32}, 32, 32*512, cuda.MaxInFlight, 512)
	f(sdk.ModelInfo{Device: backend.CUDA, MaxLength: 512, MaxBatchSize: 32, MaxBatchTokens: 8192, PreferredInFlight: 4}, 32, 8192, 4, 512)
}
