package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/batch"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// tcpServer serves cfg on a loopback TCP port (the in-memory listener has
// no half-close and no socket to peek at) and returns its address.
func tcpServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Service == nil {
		cfg.Service = rerank.New(rerank.Single("org/test-model", &fakeScorer{}), rerank.Limits{MaxCandidates: 10, MaxCandidateChars: 100}, "org/test-model")
	}
	s := New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-done
	})
	return s, ln.Addr().String()
}

// A plain client that sends its whole 3 MiB body before reading, as
// Python's urllib does, reads the 413 (issue 13, failure 2: the server closed
// while the client was still sending, and the client saw "connection reset
// by peer").
func TestBodyTooLargeIsReadableByAPlainClient(t *testing.T) {
	s, addr := tcpServer(t, Config{MaxBodyBytes: 2 << 20})
	for i := range 3 { // more than once: each connection lingers on its own
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		body := `{"query":"q","candidates":["` + strings.Repeat("a", 3<<20) + `"]}`
		head := fmt.Sprintf("POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
		if _, err := io.WriteString(c, head+body); err != nil {
			t.Fatalf("request %d: sending the body: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("request %d: reading the answer: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("request %d: reading the answer's body: %v", i, err)
		}
		if resp.StatusCode != 413 || string(b) != `{"detail":"Request body too large: the limit is 2097152 bytes"}` {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
		c.Close()
	}
	if got := s.Stats().BodyTooLarge; got != 3 {
		t.Errorf("body_too_large = %d, want 3", got)
	}
}

// blockingScorer blocks every batch until its context ends, telling when a
// batch starts and when one ends.
type blockingScorer struct {
	started chan int
	ended   chan error
}

func (b *blockingScorer) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	b.started <- len(pairs)
	<-ctx.Done()
	b.ended <- ctx.Err()
	return nil, ctx.Err()
}

// A client that disconnects cancels its request: its queued pairs are
// dropped and a batch nobody waits for any more is cancelled, long before
// the deadline (issue 13, failure 4: the handler's context was not tied to
// the connection, so abandoned pairs computed until the deadline).
func TestClientDisconnectCancelsTheRequest(t *testing.T) {
	scorer := &blockingScorer{started: make(chan int, 4), ended: make(chan error, 4)}
	b := batch.New(scorer, batch.Config{Enabled: true, MaxInFlight: 1, MaxQueue: 100})
	svc := rerank.New(rerank.Single("org/test-model", b), rerank.Limits{MaxCandidates: 10, MaxCandidateChars: 100}, "org/test-model")
	// A deadline far beyond the test's waits: only the disconnect can end
	// the requests in time.
	s, addr := tcpServer(t, Config{Service: svc, Timeout: 10 * time.Minute})
	send := func(candidates string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		body := `{"query":"q","candidates":[` + candidates + `]}`
		fmt.Fprintf(c, "POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return c
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30 s (batcher %+v, http %+v)", what, b.Stats(), s.Stats())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	a := send(`"a1","a2"`)
	defer a.Close()
	select {
	case n := <-scorer.started:
		if n != 2 {
			t.Fatalf("first batch has %d pairs", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first request's batch did not start")
	}
	bc := send(`"b1","b2","b3"`)
	wait("the second request queued", func() bool { return b.Stats().PendingPairs == 5 })
	bc.Close()
	wait("the queued pairs dropped", func() bool { return b.Stats().DroppedPairs == 3 && s.Stats().ClientDisconnects == 1 })
	a.Close()
	select {
	case err := <-scorer.ended:
		if err != context.Canceled {
			t.Fatalf("the running batch ended with %v, want cancelled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the running batch was not cancelled when its only client left")
	}
	wait("both disconnects counted", func() bool { return s.Stats().ClientDisconnects == 2 })
	if st := b.Stats(); st.PendingPairs != 0 || st.PendingRequests != 0 {
		t.Fatalf("pairs still pending: %+v", st)
	}
}
