package backend

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
)

// pluginModeEnv, when set, makes the test binary run as a plugin process
// with a fake backend in the named mode: the supervisor under test starts
// real plugin processes over real go-plugin gRPC, and only the model is fake.
const pluginModeEnv = "BACKEND_TEST_PLUGIN_MODE"

func TestMain(m *testing.M) {
	if mode := os.Getenv(pluginModeEnv); mode != "" {
		sdk.Serve(&fakeBackend{mode: mode, device: os.Getenv("BACKEND_TEST_DEVICE")},
			sdk.WithLogger(hclog.New(&hclog.LoggerOptions{Output: os.Stderr, JSONFormat: true})))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeBackend scores a pair as the length of its document. Modes: "ok";
// "unavailable" (Load fails with sdk.ErrUnavailable, as onnx-cuda without
// CUDA); "broken" (Load fails); "gate" (Load waits until the file named by
// BACKEND_TEST_GATE exists). A document "crash" makes the process exit.
type fakeBackend struct {
	mode   string
	device string
	loaded bool
}

func (f *fakeBackend) Load(ctx context.Context, cfg sdk.LoadConfig) (sdk.ModelInfo, error) {
	switch f.mode {
	case "unavailable":
		return sdk.ModelInfo{}, fmt.Errorf("fake: libcudart.so.13 not found: %w", sdk.ErrUnavailable)
	case "broken":
		return sdk.ModelInfo{}, errors.New("fake: onnx/model.onnx is not a model")
	case "gate":
		gate := os.Getenv("BACKEND_TEST_GATE")
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return sdk.ModelInfo{}, ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	f.loaded = true
	return sdk.ModelInfo{Name: cfg.ModelName, Device: f.device, Backend: "fake-" + f.device, Precision: sdk.FP32, MaxLength: cfg.MaxLength, Revision: "r1"}, nil
}

func (f *fakeBackend) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	if !f.loaded {
		return nil, sdk.ErrNotLoaded
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		if p.Document == "crash" {
			os.Exit(3)
		}
		out[i] = float32(len(p.Document))
	}
	return out, nil
}

func (f *fakeBackend) Health(context.Context) (sdk.Health, error) {
	return sdk.Health{State: sdk.StateLoading}, nil
}

// pluginDir writes plugin binaries rerank-onnx-<kind> that run this test
// binary in the given modes.
func pluginDir(t *testing.T, modes map[string]string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for kind, mode := range modes {
		script := fmt.Sprintf("#!/bin/sh\n%s=%s BACKEND_TEST_DEVICE=%s exec %q \"$@\"\n", pluginModeEnv, mode, kind, exe)
		if err := os.WriteFile(filepath.Join(dir, BinaryPrefix+kind), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func start(t *testing.T, kind, platform string, modes map[string]string) *Supervisor {
	t.Helper()
	s, err := Start(Config{
		Kind:         kind,
		PluginDir:    pluginDir(t, modes),
		Load:         sdk.LoadConfig{ModelDir: "/models/m", ModelName: "m", MaxLength: 128},
		Logger:       hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn}),
		RestartDelay: time.Millisecond,
		Platform:     platform,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitFor polls Status until cond holds; the limit only stops a broken test
// from hanging, it asserts nothing about speed.
func waitFor(t *testing.T, s *Supervisor, what string, cond func(Status) bool) Status {
	t.Helper()
	limit := time.Now().Add(time.Minute)
	for time.Now().Before(limit) {
		if st := s.Status(); cond(st) {
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("never %s; status %+v", what, s.Status())
	return Status{}
}

func ready(st Status) bool  { return st.State == sdk.StateReady }
func failed(st Status) bool { return st.State == sdk.StateFailed }

func TestKindSelection(t *testing.T) {
	f := func(kind, platform string, modes map[string]string, wantKind string) {
		t.Helper()
		s := start(t, kind, platform, modes)
		st := waitFor(t, s, "ready", ready)
		if st.Kind != wantKind || st.Device != wantKind || st.Model == nil || st.Model.Name != "m" || st.Model.MaxLength != 128 {
			t.Fatalf("%s on %s with %v: status %+v, want kind %s", kind, platform, modes, st, wantKind)
		}
	}
	all := map[string]string{CPU: "ok", CUDA: "ok", CoreML: "ok"}
	f(CPU, "linux/amd64", all, CPU)
	f(CUDA, "linux/amd64", all, CUDA)
	f(Auto, "linux/amd64", all, CUDA)
	f(Auto, "darwin/arm64", all, CoreML)
	f(Auto, "darwin/amd64", all, CUDA)
	// Fallbacks: the CUDA plugin cannot run here, or is not built at all.
	f(Auto, "linux/amd64", map[string]string{CPU: "ok", CUDA: "unavailable"}, CPU)
	f(Auto, "linux/amd64", map[string]string{CPU: "ok"}, CPU)
	f(Auto, "darwin/arm64", map[string]string{CPU: "ok", CoreML: "unavailable"}, CPU)
}

func TestUnknownKind(t *testing.T) {
	if _, err := Start(Config{Kind: "tpu", PluginDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "tpu") {
		t.Fatalf("Start(tpu) error = %v", err)
	}
}

func TestFailedLoadStaysFailed(t *testing.T) {
	f := func(kind string, modes map[string]string, wantMsg string) {
		t.Helper()
		s := start(t, kind, "linux/amd64", modes)
		st := waitFor(t, s, "failed", failed)
		if !strings.Contains(st.Message, wantMsg) {
			t.Fatalf("failed status %+v, want message containing %q", st, wantMsg)
		}
		if _, err := s.Score(context.Background(), []sdk.Pair{{Query: "q", Document: "d"}}); !errors.Is(err, sdk.ErrNotLoaded) {
			t.Fatalf("Score after a failed load: %v, want ErrNotLoaded", err)
		}
	}
	f(CUDA, map[string]string{CUDA: "unavailable"}, "libcudart.so.13 not found")
	f(CPU, map[string]string{CPU: "broken"}, "not a model")
	f(CPU, map[string]string{}, "rerank-onnx-cpu not found")
	f(Auto, map[string]string{CUDA: "unavailable", CPU: "broken"}, "not a model")
}

func TestLoadingThenReady(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	t.Setenv("BACKEND_TEST_GATE", gate)
	s := start(t, CPU, "", map[string]string{CPU: "gate"})
	st := s.Status()
	if st.State != sdk.StateLoading || st.Device != CPU {
		t.Fatalf("status before load %+v, want loading on cpu", st)
	}
	if _, err := s.Score(context.Background(), []sdk.Pair{{Document: "x"}}); !errors.Is(err, sdk.ErrNotLoaded) {
		t.Fatalf("Score while loading: %v, want ErrNotLoaded", err)
	}
	select {
	case <-s.Ready():
		t.Fatal("ready before the load finished")
	default:
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	<-s.Ready()
	if st := s.Status(); st.State != sdk.StateReady {
		t.Fatalf("status after Ready %+v", st)
	}
}

func TestScoreCountsAndCrashRestart(t *testing.T) {
	s := start(t, CPU, "", map[string]string{CPU: "ok"})
	<-s.Ready()
	scores, err := s.Score(context.Background(), []sdk.Pair{{Document: "a"}, {Document: "abc"}})
	if err != nil || len(scores) != 2 || scores[0] != 1 || scores[1] != 3 {
		t.Fatalf("Score = %v, %v", scores, err)
	}
	if _, err := s.Score(context.Background(), []sdk.Pair{{Document: "ab"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Score(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats(); got.PairsScored != 3 || got.Batches != 2 || got.Kind != CPU {
		t.Fatalf("Stats = %+v, want 3 pairs in 2 batches", got)
	}

	// The plugin dies mid-request: the request fails, and the supervisor
	// restarts the plugin and loads the model again.
	if _, err := s.Score(context.Background(), []sdk.Pair{{Document: "crash"}}); err == nil {
		t.Fatal("Score on a crashing plugin succeeded")
	}
	waitFor(t, s, "restarted", func(st Status) bool { return st.State == sdk.StateReady && st.Restarts >= 1 })
	scores, err = s.Score(context.Background(), []sdk.Pair{{Document: "abcd"}})
	if err != nil || scores[0] != 4 {
		t.Fatalf("Score after restart = %v, %v", scores, err)
	}
	if got := s.Stats(); got.PairsScored != 4 || got.Batches != 3 || got.Restarts < 1 {
		t.Fatalf("Stats after restart = %+v", got)
	}
}

// TestOnLoadBeforeReady: OnLoad sees every load, the first and the one
// after a crash, and the supervisor is ready only once it has returned.
func TestOnLoadBeforeReady(t *testing.T) {
	loads := make(chan sdk.ModelInfo)
	release := make(chan struct{})
	s, err := Start(Config{
		Kind:         CPU,
		PluginDir:    pluginDir(t, map[string]string{CPU: "ok"}),
		Load:         sdk.LoadConfig{ModelDir: "/models/m", ModelName: "m"},
		RestartDelay: time.Millisecond,
		OnLoad: func(ctx context.Context, info sdk.ModelInfo) {
			select {
			case loads <- info:
			case <-ctx.Done():
				return
			}
			select {
			case <-release:
			case <-ctx.Done():
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for load := range 2 {
		info := <-loads
		if info.Name != "m" || info.Revision != "r1" {
			t.Fatalf("load %d: OnLoad got %+v", load, info)
		}
		if st := s.Status(); st.State == sdk.StateReady {
			t.Fatalf("load %d: ready while OnLoad runs: %+v", load, st)
		}
		if _, err := s.Score(context.Background(), []sdk.Pair{{Document: "a"}}); !errors.Is(err, sdk.ErrNotLoaded) {
			t.Fatalf("load %d: Score while OnLoad runs = %v, want ErrNotLoaded", load, err)
		}
		release <- struct{}{}
		waitFor(t, s, "ready", ready)
		if load == 0 {
			if _, err := s.Score(context.Background(), []sdk.Pair{{Document: "crash"}}); err == nil {
				t.Fatal("Score on a crashing plugin succeeded")
			}
		}
	}
}

func TestCloseKillsPlugin(t *testing.T) {
	s := start(t, CPU, "", map[string]string{CPU: "ok"})
	<-s.Ready()
	s.mu.RLock()
	client := s.client
	s.mu.RUnlock()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !client.Exited() {
		t.Fatal("plugin still running after Close")
	}
	if _, err := s.Score(context.Background(), []sdk.Pair{{Document: "a"}}); !errors.Is(err, sdk.ErrNotLoaded) {
		t.Fatalf("Score after Close: %v", err)
	}
}

func TestRawLines(t *testing.T) {
	var out strings.Builder
	w := &rawLines{w: &out}
	for _, chunk := range []string{`{"@level":"info"}`, "\n", "panic: boom", "\n", "", "\n", "goroutine 1", " [running]:\n", `{"x":1}` + "\n"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := out.String(), "panic: boom\ngoroutine 1 [running]:\n"; got != want {
		t.Fatalf("raw lines %q, want %q", got, want)
	}
}

func TestPrepare(t *testing.T) {
	f := func(prepareErr error, want sdk.State) {
		t.Helper()
		var sawDir string
		s, err := Start(Config{
			Kind:      CPU,
			PluginDir: pluginDir(t, map[string]string{CPU: "ok"}),
			Load:      sdk.LoadConfig{ModelName: "m"},
			Prepare: func(_ context.Context, load *sdk.LoadConfig) error {
				load.ModelDir = "/resolved"
				sawDir = load.ModelDir
				return prepareErr
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		st := waitFor(t, s, want.String(), func(st Status) bool { return st.State == want })
		if sawDir != "/resolved" {
			t.Fatal("Prepare did not run")
		}
		if prepareErr != nil && !strings.Contains(st.Message, prepareErr.Error()) {
			t.Fatalf("failed status %+v does not say %v", st, prepareErr)
		}
	}
	f(nil, sdk.StateReady)
	f(errors.New("hub: model not available offline"), sdk.StateFailed)
}
