package sdktest

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
)

// fakeBackend scores a pair by hashing it; its flags break one contract
// clause each, to show the harness notices.
type fakeBackend struct {
	readyEarly     bool // Health says ready before Load
	noRevision     bool // Load leaves Revision empty
	batchDependent bool // a pair's score depends on the batch size
	nan            bool // scores are NaN
	ignoreCtx      bool // Score ignores its context
	loadFails      bool // Load fails

	mu   sync.Mutex
	info *sdk.ModelInfo
}

func (f *fakeBackend) Load(_ context.Context, cfg sdk.LoadConfig) (sdk.ModelInfo, error) {
	if f.loadFails {
		return sdk.ModelInfo{}, fmt.Errorf("fake: no model in %s: %w", cfg.ModelDir, sdk.ErrInvalidInput)
	}
	info := sdk.ModelInfo{Name: "fake", Device: "cpu", Backend: "fake", Precision: sdk.FP32, Revision: "r1", MaxLength: 512, Details: map[string]string{"k": "v"}}
	if f.noRevision {
		info.Revision = ""
	}
	f.mu.Lock()
	f.info = &info
	f.mu.Unlock()
	return info, nil
}

func (f *fakeBackend) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	f.mu.Lock()
	loaded := f.info != nil
	f.mu.Unlock()
	if !loaded {
		return nil, fmt.Errorf("fake: %w", sdk.ErrNotLoaded)
	}
	if err := ctx.Err(); err != nil && !f.ignoreCtx {
		return nil, fmt.Errorf("fake: %w", err)
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		h := fnv.New32a()
		h.Write([]byte(p.Query + "\x00" + p.Document))
		out[i] = float32(h.Sum32()%1000) / 1000
		if f.batchDependent {
			out[i] += float32(len(pairs)) * 0.01
		}
		if f.nan {
			out[i] = float32(math.NaN())
		}
	}
	return out, nil
}

func (f *fakeBackend) Health(context.Context) (sdk.Health, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.info != nil {
		info := *f.info
		return sdk.Health{State: sdk.StateReady, Model: &info}, nil
	}
	if f.readyEarly {
		return sdk.Health{State: sdk.StateReady}, nil
	}
	return sdk.Health{State: sdk.StateLoading}, nil
}

func TestRunPassesConformingBackend(t *testing.T) {
	Run(t, &fakeBackend{}, sdk.LoadConfig{ModelDir: "/models/fake"})
}

// serveFakeEnv makes the test binary serve fakeBackend as a plugin
// process, so TestLaunch runs a real child process through go-plugin.
const serveFakeEnv = "SDKTEST_SERVE_FAKE"

func TestMain(m *testing.M) {
	if os.Getenv(serveFakeEnv) == "1" {
		sdk.Serve(&fakeBackend{})
		return
	}
	os.Exit(m.Run())
}

func TestLaunch(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serveFakeEnv+"=1")
	RunRemote(t, Launch(t, cmd), sdk.LoadConfig{ModelDir: "/models/fake"})
}

func TestRunRemotePassesConformingBackend(t *testing.T) {
	RunRemote(t, Connect(t, &fakeBackend{}), sdk.LoadConfig{ModelDir: "/models/fake"})
}

func TestChecksCatchBrokenBackends(t *testing.T) {
	f := func(name string, b *fakeBackend, failing string, wantMsg string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			h := &harness{local: b, remote: Connect(t, b), cfg: sdk.LoadConfig{ModelDir: "/models/fake"}}
			ctx := context.Background()
			for _, c := range checks {
				err := c.fn(ctx, h)
				if c.name == failing {
					if err == nil || !strings.Contains(err.Error(), wantMsg) {
						t.Fatalf("check %s: %v; want an error mentioning %q", c.name, err, wantMsg)
					}
					return
				}
				if err != nil {
					t.Fatalf("check %s failed before %s: %v", c.name, failing, err)
				}
			}
			t.Fatalf("no check named %s", failing)
		})
	}
	f("ready before load", &fakeBackend{readyEarly: true}, "HealthBeforeLoad", "want loading")
	f("load fails", &fakeBackend{loadFails: true}, "Load", "no model in /models/fake")
	f("no revision", &fakeBackend{noRevision: true}, "Load", "Revision unset")
	f("NaN scores", &fakeBackend{nan: true}, "ScoreFinite", "scored NaN")
	f("batch-dependent scores", &fakeBackend{batchDependent: true}, "BatchEqualsSingles", "alone and")
	f("ignores context", &fakeBackend{ignoreCtx: true}, "ExpiredContext", "context.DeadlineExceeded")
}
