// Package sdktest is the conformance harness for rerank backends, in the
// spirit of Nomad's DriverHarness: Run serves a Backend through go-plugin's
// in-process gRPC connection, exactly as the proxy reaches a plugin, and
// checks the contract every backend must keep.
//
// A plugin author calls it from a test with a real model:
//
//	func TestConformance(t *testing.T) {
//		sdktest.Run(t, mybackend.New(), sdk.LoadConfig{ModelDir: "testdata/tiny"})
//	}
package sdktest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/rerank-sidecar/rerank/sdk"
)

// Tolerance is how far two scores of the same pair may differ between a
// batch and one-by-one scoring, or between two calls: padding a pair to a
// longer batch changes float32 summation order inside the model, which moves
// an fp32 score by a few ulps, far below 1e-5.
const Tolerance = 1e-5

// Connect serves b through go-plugin's in-process gRPC test connection and
// returns the proxy-side client (an *sdk.Client). The connection closes when
// the test ends.
func Connect(t testing.TB, b sdk.Backend) sdk.Backend {
	t.Helper()
	ps := map[string]plugin.Plugin{sdk.PluginName: &sdk.GRPCPlugin{Impl: b}}
	client, _ := plugin.TestPluginGRPCConn(t, false, ps)
	// Close asks the server to stop through go-plugin's controller and
	// waits for the answer; stopping the server here as well would race
	// with that handler.
	t.Cleanup(func() { client.Close() })
	raw, err := client.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatalf("sdktest: dispense %s: %v", sdk.PluginName, err)
	}
	remote, ok := raw.(sdk.Backend)
	if !ok {
		t.Fatalf("sdktest: dispensed %T, not an sdk.Backend", raw)
	}
	return remote
}

// Launch starts the plugin executable cmd as go-plugin does for the proxy
// (handshake, gRPC) and returns the dispensed Backend. The process is
// killed when the test ends. The plugin's stderr is relayed to the test's
// stderr at warning level and above.
func Launch(t testing.TB, cmd *exec.Cmd) sdk.Backend {
	t.Helper()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.VersionedPlugins(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "plugin", Output: os.Stderr, Level: hclog.Warn}),
	})
	t.Cleanup(client.Kill)
	rpc, err := client.Client()
	if err != nil {
		t.Fatalf("sdktest: start plugin %s: %v", cmd.Path, err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatalf("sdktest: dispense %s from %s: %v", sdk.PluginName, cmd.Path, err)
	}
	b, ok := raw.(sdk.Backend)
	if !ok {
		t.Fatalf("sdktest: plugin %s dispensed %T, not an sdk.Backend", cmd.Path, raw)
	}
	return b
}

// Pairs are the pairs the harness scores: plain, empty, repeated,
// non-ASCII, and a document far longer than any max length, which a backend
// must truncate rather than reject.
var Pairs = []sdk.Pair{
	{Query: "what is the capital of france", Document: "Paris is the capital and largest city of France."},
	{Query: "what is the capital of france", Document: "The Eiffel Tower was completed in 1889."},
	{Query: "how do plants make food", Document: "Photosynthesis turns light, water and carbon dioxide into sugar."},
	{Query: "", Document: ""},
	{Query: "café crème", Document: "Ein Milchkaffee ist ein Kaffeegetränk. 咖啡是一种饮料。"},
	{Query: "long document", Document: strings.Repeat("The quick brown fox jumps over the lazy dog. ", 2000)},
	{Query: "what is the capital of france", Document: "Paris is the capital and largest city of France."},
}

// Run checks that b keeps the sdk.Backend contract, in order: before Load,
// Health reports loading and Score fails with ErrNotLoaded; Load(cfg)
// returns info with name, device, backend, precision, revision and max
// length set; Health then reports ready with that model; 0 pairs give 0
// scores; N pairs give N finite scores; batch scores equal one-by-one scores
// and repeated pairs score the same (within Tolerance); an expired context
// fails. b must be fresh: Run loads it. Every call but the direct context
// check goes through gRPC.
func Run(t *testing.T, b sdk.Backend, cfg sdk.LoadConfig) {
	t.Helper()
	run(t, &harness{local: b, remote: Connect(t, b), cfg: cfg})
}

// RunRemote runs the same checks against a backend already behind gRPC,
// such as the client of a real plugin process (go-plugin's
// Client.Dispense). The backend must be fresh. Only the gRPC side of the
// expired-context check applies, as the backend itself is out of reach.
func RunRemote(t *testing.T, remote sdk.Backend, cfg sdk.LoadConfig) {
	t.Helper()
	run(t, &harness{remote: remote, cfg: cfg})
}

func run(t *testing.T, h *harness) {
	t.Helper()
	for _, c := range checks {
		err := c.fn(context.Background(), h)
		ok := t.Run(c.name, func(t *testing.T) {
			if err != nil {
				t.Fatal(err)
			}
		})
		if !ok && c.fatal {
			t.Fatalf("sdktest: %s failed; later checks need it", c.name)
		}
	}
}

// harness carries what the checks share.
type harness struct {
	local  sdk.Backend // the backend itself, for in-process checks; nil in RunRemote
	remote sdk.Backend // the same backend over gRPC
	cfg    sdk.LoadConfig
	info   sdk.ModelInfo // set by the load check
	scores []float32     // Pairs scored in one batch, set by the finite check
}

// check is one contract clause; fatal ones stop the run when they fail.
type check struct {
	name  string
	fatal bool
	fn    func(ctx context.Context, h *harness) error
}

// checks run in this order; later ones rely on earlier ones' state.
var checks = []check{
	{"HealthBeforeLoad", false, checkHealthBeforeLoad},
	{"ScoreBeforeLoad", false, checkScoreBeforeLoad},
	{"Load", true, checkLoad},
	{"HealthReady", false, checkHealthReady},
	{"ScoreEmpty", false, checkScoreEmpty},
	{"ScoreFinite", true, checkScoreFinite},
	{"BatchEqualsSingles", false, checkBatchEqualsSingles},
	{"Repeatable", false, checkRepeatable},
	{"ExpiredContext", false, checkExpiredContext},
}

func checkHealthBeforeLoad(ctx context.Context, h *harness) error {
	got, err := h.remote.Health(ctx)
	if err != nil {
		return fmt.Errorf("Health before Load: %w", err)
	}
	if got.State != sdk.StateLoading || got.Model != nil {
		return fmt.Errorf("Health before Load = %v with model %v; want loading without a model", got.State, got.Model)
	}
	return nil
}

func checkScoreBeforeLoad(ctx context.Context, h *harness) error {
	_, err := h.remote.Score(ctx, Pairs[:1])
	if !errors.Is(err, sdk.ErrNotLoaded) {
		return fmt.Errorf("Score before Load: %v; want an error wrapping sdk.ErrNotLoaded", err)
	}
	return nil
}

func checkLoad(ctx context.Context, h *harness) error {
	info, err := h.remote.Load(ctx, h.cfg)
	if err != nil {
		return fmt.Errorf("Load: %w", err)
	}
	var missing []string
	for _, f := range []struct {
		name  string
		unset bool
	}{
		{"Name", info.Name == ""}, {"Device", info.Device == ""}, {"Backend", info.Backend == ""},
		{"Precision", info.Precision == ""}, {"Revision", info.Revision == ""}, {"MaxLength", info.MaxLength <= 0},
	} {
		if f.unset {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("Load returned %+v with %s unset", info, strings.Join(missing, ", "))
	}
	if info.MaxBatchSize < 0 {
		return fmt.Errorf("Load returned MaxBatchSize %d; want 0 (no limit) or more", info.MaxBatchSize)
	}
	if info.MaxBatchTokens < 0 {
		return fmt.Errorf("Load returned MaxBatchTokens %d; want 0 (no limit) or more", info.MaxBatchTokens)
	}
	if info.PreferredInFlight < 0 {
		return fmt.Errorf("Load returned PreferredInFlight %d; want 0 (no preference) or more", info.PreferredInFlight)
	}
	h.info = info
	return nil
}

func checkHealthReady(ctx context.Context, h *harness) error {
	got, err := h.remote.Health(ctx)
	if err != nil {
		return fmt.Errorf("Health after Load: %w", err)
	}
	if got.State != sdk.StateReady || got.Model == nil {
		return fmt.Errorf("Health after Load = %v (%q) with model %v; want ready with the model", got.State, got.Message, got.Model)
	}
	if !reflect.DeepEqual(*got.Model, h.info) {
		return fmt.Errorf("Health reports model %+v; Load returned %+v", *got.Model, h.info)
	}
	return nil
}

func checkScoreEmpty(ctx context.Context, h *harness) error {
	got, err := h.remote.Score(ctx, nil)
	if err != nil {
		return fmt.Errorf("Score of 0 pairs: %w", err)
	}
	if len(got) != 0 {
		return fmt.Errorf("Score of 0 pairs returned %d scores", len(got))
	}
	return nil
}

func checkScoreFinite(ctx context.Context, h *harness) error {
	got, err := h.remote.Score(ctx, Pairs)
	if err != nil {
		return fmt.Errorf("Score of %d pairs: %w", len(Pairs), err)
	}
	if len(got) != len(Pairs) {
		return fmt.Errorf("Score of %d pairs returned %d scores", len(Pairs), len(got))
	}
	for i, s := range got {
		if math.IsNaN(float64(s)) || math.IsInf(float64(s), 0) {
			return fmt.Errorf("pair %d scored %v", i, s)
		}
	}
	h.scores = got
	return nil
}

func checkBatchEqualsSingles(ctx context.Context, h *harness) error {
	for i, p := range Pairs {
		got, err := h.remote.Score(ctx, []sdk.Pair{p})
		if err != nil {
			return fmt.Errorf("Score of pair %d alone: %w", i, err)
		}
		if len(got) != 1 {
			return fmt.Errorf("Score of one pair returned %d scores", len(got))
		}
		if d := math.Abs(float64(got[0]) - float64(h.scores[i])); d > Tolerance {
			return fmt.Errorf("pair %d scores %v alone and %v in a batch of %d (|Δ| %.3g > %g)", i, got[0], h.scores[i], len(Pairs), d, Tolerance)
		}
	}
	return nil
}

func checkRepeatable(ctx context.Context, h *harness) error {
	first, last := h.scores[0], h.scores[len(Pairs)-1] // Pairs' first and last pair are the same
	if d := math.Abs(float64(first) - float64(last)); d > Tolerance {
		return fmt.Errorf("the same pair scored %v and %v in one batch", first, last)
	}
	again, err := h.remote.Score(ctx, Pairs)
	if err != nil {
		return fmt.Errorf("second Score: %w", err)
	}
	for i := range again {
		if d := math.Abs(float64(again[i]) - float64(h.scores[i])); d > Tolerance {
			return fmt.Errorf("pair %d scored %v, then %v", i, h.scores[i], again[i])
		}
	}
	return nil
}

func checkExpiredContext(ctx context.Context, h *harness) error {
	expired, cancel := context.WithTimeout(ctx, -1)
	defer cancel()
	if _, err := h.remote.Score(expired, Pairs); err == nil {
		return errors.New("Score over gRPC with an expired context succeeded")
	}
	// gRPC refuses an expired deadline before the call leaves the client,
	// so the backend itself is asked too where it can be reached.
	if h.local == nil {
		return nil
	}
	if _, err := h.local.Score(expired, Pairs); !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("Score with an expired context: %v; want an error wrapping context.DeadlineExceeded", err)
	}
	return nil
}
