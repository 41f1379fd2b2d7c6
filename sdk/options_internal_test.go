package sdk

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"

	pb "github.com/rerank-sidecar/rerank/sdk/internal/rerankv1"
)

// oldPlugin answers as a plugin built against an older SDK: it reports the
// given minor version and records the Score requests that reach it.
type oldPlugin struct {
	minor  uint32
	scored []*pb.ScoreRequest
}

func (o *oldPlugin) Load(context.Context, *pb.LoadRequest, ...grpc.CallOption) (*pb.LoadResponse, error) {
	return &pb.LoadResponse{Model: &pb.ModelInfo{Name: "m", SdkMinorVersion: o.minor}}, nil
}

func (o *oldPlugin) Score(_ context.Context, req *pb.ScoreRequest, _ ...grpc.CallOption) (*pb.ScoreResponse, error) {
	o.scored = append(o.scored, req)
	return &pb.ScoreResponse{Scores: make([]float32, len(req.GetPairs()))}, nil
}

func (o *oldPlugin) Health(context.Context, *pb.HealthRequest, ...grpc.CallOption) (*pb.HealthResponse, error) {
	return &pb.HealthResponse{State: pb.HealthResponse_STATE_READY, Model: &pb.ModelInfo{Name: "m", SdkMinorVersion: o.minor}}, nil
}

// TestClientRefusesOptionsForOldPlugin checks that a plugin of a minor
// version before 2, which would drop Pair.Options unread, never receives them: the request
// fails with ErrInvalidInput instead of being scored with the defaults, while
// pairs without options still reach it.
func TestClientRefusesOptionsForOldPlugin(t *testing.T) {
	ctx := context.Background()
	f := func(minor uint32, load bool, opts PairOptions, wantRefused bool) {
		t.Helper()
		old := &oldPlugin{minor: minor}
		c := &Client{rpc: old}
		if load {
			if _, err := c.Load(ctx, LoadConfig{}); err != nil {
				t.Fatal(err)
			}
		}
		_, err := c.Score(ctx, []Pair{{Query: "q", Document: "d"}, {Query: "q", Document: "e", Options: opts}})
		if wantRefused {
			if !errors.Is(err, ErrInvalidInput) {
				t.Errorf("minor %d, loaded %v, options %+v: err %v, want ErrInvalidInput", minor, load, opts, err)
			}
			if len(old.scored) != 0 {
				t.Errorf("minor %d, options %+v: the plugin was called", minor, opts)
			}
			return
		}
		if err != nil {
			t.Errorf("minor %d, loaded %v, options %+v: %v", minor, load, opts, err)
			return
		}
		got := old.scored[0].GetPairs()[1].GetOptions()
		if opts.IsZero() != (got == nil) {
			t.Errorf("minor %d, options %+v: sent %v", minor, opts, got)
		}
	}
	f(0, true, PairOptions{}, false)
	f(0, true, PairOptions{Raw: true}, true)
	f(0, true, PairOptions{MaxDocumentTokens: 8}, true)
	f(1, true, PairOptions{Strict: true}, true) // minor 1 added Usage, not options
	f(1, true, PairOptions{}, false)
	f(2, false, PairOptions{Raw: true}, true) // minor not known yet
	f(2, true, PairOptions{Raw: true}, false)
	f(2, true, PairOptions{MaxDocumentTokens: 8, Strict: true}, false)
	f(3, true, PairOptions{Raw: true}, false)
}

// TestOldPluginDeclaresNoBatchLimits checks that a plugin of minor version
// 2, which knows neither ModelInfo.MaxBatchTokens nor PreferredInFlight,
// reaches the proxy as declaring no token limit and no preference (0), so
// the proxy keeps its per-device defaults, and that a negative value on the
// wire (a broken plugin) reads as none either.
func TestOldPluginDeclaresNoBatchLimits(t *testing.T) {
	info, err := (&Client{rpc: &oldPlugin{minor: 2}}).Load(context.Background(), LoadConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if info.MaxBatchTokens != 0 || info.PreferredInFlight != 0 || info.SDKMinorVersion != 2 {
		t.Fatalf("minor-2 plugin read as %+v, want no token limit, no preference", info)
	}
	got := infoFromProto(&pb.ModelInfo{MaxBatchTokens: -5, PreferredInFlight: -1})
	if got.MaxBatchTokens != 0 || got.PreferredInFlight != 0 {
		t.Fatalf("negative limits read as %+v, want 0", got)
	}
}
