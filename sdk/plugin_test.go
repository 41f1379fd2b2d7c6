package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/rerank-sidecar/rerank/sdk"
)

// recordingBackend records what reaches the plugin side and answers with
// what the test sets.
type recordingBackend struct {
	mu          sync.Mutex
	cfg         sdk.LoadConfig
	pairs       []sdk.Pair
	hasDeadline bool

	info   sdk.ModelInfo
	scores []float32 // nil: one score per pair, 0.5 each
	health sdk.Health
	err    error
}

// set changes the backend's answers under its lock.
func (r *recordingBackend) set(fn func(r *recordingBackend)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(r)
}

func (r *recordingBackend) Load(_ context.Context, cfg sdk.LoadConfig) (sdk.ModelInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cfg = cfg
	return r.info, r.err
}

func (r *recordingBackend) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pairs = pairs
	_, r.hasDeadline = ctx.Deadline()
	if r.err != nil {
		return nil, r.err
	}
	if r.scores != nil {
		return r.scores, nil
	}
	out := make([]float32, len(pairs))
	for i := range out {
		out[i] = 0.5
	}
	return out, nil
}

func (r *recordingBackend) Health(context.Context) (sdk.Health, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.health, r.err
}

// connect serves b over go-plugin's in-process gRPC connection and returns
// the proxy-side client.
func connect(t *testing.T, b sdk.Backend) *sdk.Client {
	t.Helper()
	client, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{sdk.PluginName: &sdk.GRPCPlugin{Impl: b}})
	// Close asks the server to stop through go-plugin's controller and
	// waits for the answer; stopping the server here as well would race
	// with that handler.
	t.Cleanup(func() { client.Close() })
	raw, err := client.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := raw.(*sdk.Client)
	if !ok {
		t.Fatalf("dispensed %T, want *sdk.Client", raw)
	}
	return c
}

// TestProtocolMemorySettings checks that the arena and memory-pattern
// settings keep all three states across the wire: unset (the backend's
// default for its device), off and on.
func TestProtocolMemorySettings(t *testing.T) {
	b := &recordingBackend{}
	c := connect(t, b)
	name := func(v *bool) string {
		if v == nil {
			return "unset"
		}
		return fmt.Sprint(*v)
	}
	for _, arena := range []*bool{nil, new(true), new(false)} {
		for _, pattern := range []*bool{nil, new(true), new(false)} {
			if _, err := c.Load(context.Background(), sdk.LoadConfig{ModelDir: "/m", DisableArena: arena, DisableMemPattern: pattern}); err != nil {
				t.Fatalf("Load: %v", err)
			}
			b.mu.Lock()
			got := b.cfg
			b.mu.Unlock()
			if name(got.DisableArena) != name(arena) || name(got.DisableMemPattern) != name(pattern) {
				t.Errorf("sent DisableArena %s, DisableMemPattern %s; plugin got %s, %s",
					name(arena), name(pattern), name(got.DisableArena), name(got.DisableMemPattern))
			}
		}
	}
}

func TestProtocolRoundTrip(t *testing.T) {
	b := &recordingBackend{
		info: sdk.ModelInfo{Name: "org/model", Revision: "abc", Device: "cuda", Backend: "onnx-cuda", Precision: sdk.BF16,
			Quantization: "none", Source: "safetensors", MaxLength: 384, MaxBatchSize: 16, MaxBatchTokens: 6144, PreferredInFlight: 2,
			Activation: "sigmoid", Details: map[string]string{"model_file": "/m/model.onnx"}},
	}
	c := connect(t, b)
	ctx := context.Background()

	cfg := sdk.LoadConfig{ModelDir: "/m", ModelName: "org/model", Precision: sdk.BF16, MaxLength: 384, IntraOpThreads: 3,
		DisableArena: new(true), DisableMemPattern: new(false), CacheDir: "/cache", Options: map[string]string{"cuda.device_id": "1"}}
	info, err := c.Load(ctx, cfg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	b.mu.Lock()
	gotCfg := b.cfg
	b.mu.Unlock()
	if !reflect.DeepEqual(gotCfg, cfg) {
		t.Errorf("plugin got LoadConfig %+v\nwant %+v", gotCfg, cfg)
	}
	want := b.info
	want.SDKMinorVersion = sdk.MinorVersion
	if !reflect.DeepEqual(info, want) {
		t.Errorf("Load returned %+v\nwant %+v", info, want)
	}

	pairs := []sdk.Pair{{Query: "q1", Document: "d1"}, {Query: "", Document: ""}, {Query: "q3 ü", Document: "d3 漢字"}}
	wantScores := []float32{0.25, -3.5, 1e-7}
	b.set(func(r *recordingBackend) { r.scores = wantScores })
	dctx, cancel := context.WithTimeout(ctx, time.Minute) // long enough never to expire; only its presence is checked
	defer cancel()
	scores, err := c.Score(dctx, pairs)
	if err != nil {
		t.Fatalf("Score: %v", err)
	}
	b.mu.Lock()
	gotPairs, hasDeadline := b.pairs, b.hasDeadline
	b.mu.Unlock()
	if !reflect.DeepEqual(gotPairs, pairs) || !reflect.DeepEqual(scores, wantScores) {
		t.Errorf("plugin got pairs %+v and the proxy scores %v; want %+v and %v", gotPairs, scores, pairs, wantScores)
	}
	if !hasDeadline {
		t.Error("the proxy's deadline did not reach the plugin")
	}

	f := func(h sdk.Health) {
		t.Helper()
		b.set(func(r *recordingBackend) { r.health = h })
		got, err := c.Health(ctx)
		if err != nil {
			t.Fatalf("Health: %v", err)
		}
		if h.Model != nil {
			m := *h.Model
			m.SDKMinorVersion = sdk.MinorVersion
			h.Model = &m
		}
		if !reflect.DeepEqual(got, h) {
			t.Errorf("Health = %+v, want %+v", got, h)
		}
	}
	f(sdk.Health{State: sdk.StateLoading, Message: "loading /m"})
	f(sdk.Health{State: sdk.StateFailed, Message: "no CUDA"})
	f(sdk.Health{State: sdk.StateReady, Model: &b.info})
}

func TestProtocolErrors(t *testing.T) {
	b := &recordingBackend{}
	c := connect(t, b)
	f := func(backendErr, want error) {
		t.Helper()
		b.set(func(r *recordingBackend) { r.err = backendErr })
		calls := map[string]func() error{
			"Load":   func() error { _, err := c.Load(context.Background(), sdk.LoadConfig{}); return err },
			"Score":  func() error { _, err := c.Score(context.Background(), nil); return err },
			"Health": func() error { _, err := c.Health(context.Background()); return err },
		}
		for name, call := range calls {
			err := call()
			if err == nil || !strings.Contains(err.Error(), backendErr.Error()) {
				t.Errorf("%s with backend error %q: got %v, want the message carried", name, backendErr, err)
				continue
			}
			if want != nil && !errors.Is(err, want) {
				t.Errorf("%s with backend error %q: %v does not wrap %v", name, backendErr, err, want)
			}
			for _, s := range []error{sdk.ErrInvalidInput, sdk.ErrNotLoaded, sdk.ErrOverloaded, sdk.ErrUnavailable, context.DeadlineExceeded, context.Canceled} {
				if s != want && errors.Is(err, s) {
					t.Errorf("%s with backend error %q: %v also wraps %v", name, backendErr, err, s)
				}
			}
		}
	}
	f(fmt.Errorf("x: %w", sdk.ErrInvalidInput), sdk.ErrInvalidInput)
	f(fmt.Errorf("x: %w", sdk.ErrNotLoaded), sdk.ErrNotLoaded)
	f(fmt.Errorf("x: %w", sdk.ErrOverloaded), sdk.ErrOverloaded)
	f(fmt.Errorf("x: %w", sdk.ErrUnavailable), sdk.ErrUnavailable)
	f(fmt.Errorf("x: %w", context.DeadlineExceeded), context.DeadlineExceeded)
	f(fmt.Errorf("x: %w", context.Canceled), context.Canceled)
	f(errors.New("disk on fire"), nil)
}

// gRPC's refusal of an oversized message is the input's fault, never
// "overloaded" (issue 13, failure 1: it was answered 429 for ever), and the
// client refuses such a message before sending it.
func TestMessageSizeIsNotOverload(t *testing.T) {
	b := &recordingBackend{}
	c := connect(t, b)
	huge := strings.Repeat("x", sdk.MaxMessageBytes)
	_, err := c.Score(context.Background(), []sdk.Pair{{Query: huge, Document: "d"}})
	if !errors.Is(err, sdk.ErrInvalidInput) || errors.Is(err, sdk.ErrOverloaded) || !strings.Contains(err.Error(), "message limit") {
		t.Fatalf("Score of a message over the limit: %v; want ErrInvalidInput naming the limit", err)
	}
	// gRPC's own refusal, should a message get through: a
	// ResourceExhausted status with gRPC's message (the backend's
	// ErrOverloaded travels as ResourceExhausted too).
	b.set(func(r *recordingBackend) {
		r.err = fmt.Errorf("grpc: received message larger than max (6291456 vs. 4194304): %w", sdk.ErrOverloaded)
	})
	_, err = c.Score(context.Background(), []sdk.Pair{{Query: "q", Document: "d"}})
	if errors.Is(err, sdk.ErrOverloaded) || !errors.Is(err, sdk.ErrInvalidInput) {
		t.Fatalf("a message-size status: %v; want ErrInvalidInput, not ErrOverloaded", err)
	}
}

func TestProtocolRefusesWrongScoreCount(t *testing.T) {
	b := &recordingBackend{scores: []float32{1}}
	c := connect(t, b)
	_, err := c.Score(context.Background(), []sdk.Pair{{Query: "a", Document: "b"}, {Query: "c", Document: "d"}})
	if err == nil || !strings.Contains(err.Error(), "1 scores for 2 pairs") {
		t.Fatalf("Score with a short answer: %v; want an error naming the counts", err)
	}
}

// BenchmarkProtocolScore measures the plugin boundary alone: one Score call
// of batch pairs (a 40-character query, 4,000-character documents, the
// proxy's default candidate limit) from the proxy-side Client through
// go-plugin gRPC over a Unix socket to a backend that answers at once.
// Compare with BenchmarkScore in plugins/internal/ort, which is the
// inference behind it.
func BenchmarkProtocolScore(b *testing.B) {
	for _, batch := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			client, _ := plugin.TestPluginGRPCConn(b, false, map[string]plugin.Plugin{sdk.PluginName: &sdk.GRPCPlugin{Impl: &recordingBackend{}}})
			b.Cleanup(func() { client.Close() })
			raw, err := client.Dispense(sdk.PluginName)
			if err != nil {
				b.Fatal(err)
			}
			c := raw.(*sdk.Client)
			pairs := make([]sdk.Pair, batch)
			for i := range pairs {
				pairs[i] = sdk.Pair{Query: strings.Repeat("q", 40), Document: strings.Repeat(string(rune('a'+i%26)), 4000)}
			}
			n := 0
			for b.Loop() {
				if _, err := c.Score(context.Background(), pairs); err != nil {
					b.Fatal(err)
				}
				n++
			}
			b.ReportMetric(float64(n*batch)/b.Elapsed().Seconds(), "pairs/s")
		})
	}
}

// TestPairOptionsRoundTrip checks that every scoring option reaches the
// plugin as sent, pair by pair, and that ErrTooLong survives the trip.
func TestPairOptionsRoundTrip(t *testing.T) {
	b := &recordingBackend{info: sdk.ModelInfo{Name: "m"}}
	c := connect(t, b)
	ctx := context.Background()
	if _, err := c.Load(ctx, sdk.LoadConfig{}); err != nil {
		t.Fatal(err)
	}
	pairs := []sdk.Pair{
		{Query: "q", Document: "a"},
		{Query: "q", Document: "b", Options: sdk.PairOptions{Raw: true}},
		{Query: "q", Document: "c", Options: sdk.PairOptions{MaxDocumentTokens: 7}},
		{Query: "q", Document: "d", Options: sdk.PairOptions{Strict: true, Raw: true, MaxDocumentTokens: 1 << 20}},
	}
	if _, err := c.Score(ctx, pairs); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	got := b.pairs
	b.mu.Unlock()
	if !reflect.DeepEqual(got, pairs) {
		t.Errorf("plugin got %+v\nwant %+v", got, pairs)
	}
	b.set(func(r *recordingBackend) { r.err = fmt.Errorf("pair 0 is 900 tokens: %w", sdk.ErrTooLong) })
	_, err := c.Score(ctx, pairs[:1])
	if !errors.Is(err, sdk.ErrTooLong) || !errors.Is(err, sdk.ErrInvalidInput) || !strings.Contains(err.Error(), "900 tokens") {
		t.Errorf("Score: %v, want ErrTooLong (an ErrInvalidInput) with the plugin's message", err)
	}
}
