package batch

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk"
)

// fakeClock is a manual clock: Advance moves time and runs the timers that
// came due, in the caller's goroutine.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func (t *fakeTimer) Stop() bool { was := !t.stopped; t.stopped = true; return was }

// newFakeClock starts at the real time, as request deadlines become real
// context deadlines of the batch; tests keep them hours away.
func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			due = append(due, t)
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.mu.Unlock()
	for _, t := range due {
		if !t.stopped {
			t.f()
		}
	}
}

// call is one Score call received by the fake backend; the test answers it
// by sending on reply (nil error: the pairs' reference scores).
type call struct {
	ctx   context.Context
	pairs []sdk.Pair
	reply chan error
}

// fakeBackend hands every Score call to the test through calls.
type fakeBackend struct {
	calls chan *call
}

func newFakeBackend() *fakeBackend { return &fakeBackend{calls: make(chan *call, 64)} }

func (f *fakeBackend) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	c := &call{ctx: ctx, pairs: append([]sdk.Pair(nil), pairs...), reply: make(chan error)}
	f.calls <- c
	if err := <-c.reply; err != nil {
		return nil, err
	}
	return refScores(pairs), nil
}

// next returns the next call, which the batcher must already have launched.
func (f *fakeBackend) next(t *testing.T) *call {
	t.Helper()
	return <-f.calls
}

// none fails if a call is waiting.
func (f *fakeBackend) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-f.calls:
		t.Fatalf("unexpected Score call with %d pairs", len(c.pairs))
	default:
	}
}

func refScore(p sdk.Pair) float32 {
	h := fnv.New32a()
	h.Write([]byte(p.Query + "\x00" + p.Document))
	return float32(h.Sum32()%100000) / 1000
}

func refScores(pairs []sdk.Pair) []float32 {
	s := make([]float32, len(pairs))
	for i, p := range pairs {
		s[i] = refScore(p)
	}
	return s
}

// manualCtx is a request context whose end the test controls.
type manualCtx struct {
	context.Context
	deadline time.Time
	hasDL    bool
	done     chan struct{}
	mu       sync.Mutex
	err      error
}

func newManualCtx(deadline time.Time) *manualCtx {
	return &manualCtx{Context: context.Background(), deadline: deadline, hasDL: !deadline.IsZero(), done: make(chan struct{})}
}

func (c *manualCtx) Deadline() (time.Time, bool) { return c.deadline, c.hasDL }
func (c *manualCtx) Done() <-chan struct{}       { return c.done }
func (c *manualCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
func (c *manualCtx) end(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
	close(c.done)
}

// result is what a background Score call returned.
type result struct {
	scores []float32
	err    error
}

// harness runs Score calls in the background and waits for them to be
// queued (or refused) before returning, so the test controls ordering.
type harness struct {
	t       *testing.T
	b       *Batcher
	clock   *fakeClock
	backend *fakeBackend
	queued  chan struct{}
	batched chan struct{}
}

func newHarness(t *testing.T, cfg Config) *harness {
	h := &harness{t: t, clock: newFakeClock(), backend: newFakeBackend(),
		queued: make(chan struct{}, 64), batched: make(chan struct{}, 1024)}
	cfg.Enabled = true
	cfg.Clock = h.clock
	h.b = New(h.backend, cfg)
	h.b.afterEnqueue = func() { h.queued <- struct{}{} }
	h.b.afterBatch = func() { h.batched <- struct{}{} }
	return h
}

// reply answers a call and waits until the batcher has accounted for it.
func (h *harness) reply(c *call, err error) {
	c.reply <- err
	<-h.batched
}

// submit starts a Score call and returns once its pairs are queued.
func (h *harness) submit(ctx context.Context, pairs []sdk.Pair) <-chan result {
	out := make(chan result, 1)
	go func() {
		s, err := h.b.Score(ctx, pairs)
		out <- result{s, err}
	}()
	select {
	case <-h.queued:
		return out
	case r := <-out:
		h.t.Fatalf("request of %d pairs was not queued: %v", len(pairs), r.err)
		return nil
	}
}

func (h *harness) expectScores(ch <-chan result, pairs []sdk.Pair) {
	h.t.Helper()
	r := <-ch
	if r.err != nil {
		h.t.Fatalf("Score: %v", r.err)
	}
	want := refScores(pairs)
	if len(r.scores) != len(want) {
		h.t.Fatalf("got %d scores, want %d", len(r.scores), len(want))
	}
	for i := range want {
		if r.scores[i] != want[i] {
			h.t.Fatalf("score %d = %v, want %v", i, r.scores[i], want[i])
		}
	}
}

func mkPairs(query string, docs ...string) []sdk.Pair {
	p := make([]sdk.Pair, len(docs))
	for i, d := range docs {
		p[i] = sdk.Pair{Query: query, Document: d}
	}
	return p
}

func nDocs(prefix string, n int) []string {
	d := make([]string, n)
	for i := range d {
		d[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return d
}

func TestCoalescesRequestsAndFlushesOnTime(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond})
	a := mkPairs("q1", nDocs("a", 3)...)
	bb := mkPairs("q2", nDocs("b", 4)...)
	c := mkPairs("q3", nDocs("c", 2)...)
	ra := h.submit(context.Background(), a)
	h.clock.Advance(4 * time.Millisecond)
	rb := h.submit(context.Background(), bb)
	rc := h.submit(context.Background(), c)

	h.clock.Advance(5 * time.Millisecond) // 9 ms after the first pair
	if s := h.b.Stats(); s.TotalBatches != 0 || s.PendingPairs != 9 || s.PendingRequests != 3 {
		t.Fatalf("before the window: %+v", s)
	}
	h.backend.none(t)

	h.clock.Advance(1 * time.Millisecond) // the first pair has waited 10 ms
	got := h.backend.next(t)
	if len(got.pairs) != 9 {
		t.Fatalf("batch has %d pairs, want the 9 of three requests", len(got.pairs))
	}
	if s := h.b.Stats(); s.TotalBatches != 1 || s.InFlightBatches != 1 {
		t.Fatalf("after the window: %+v", s)
	}
	h.reply(got, nil)
	h.expectScores(ra, a)
	h.expectScores(rb, bb)
	h.expectScores(rc, c)
	s := h.b.Stats()
	if s.TotalRequests != 3 || s.TotalBatches != 1 || s.AvgBatchSize != 9 || s.PendingRequests != 0 || s.PendingPairs != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestFlushesOnSize(t *testing.T) {
	f := func(name string, cfg Config, first, second []sdk.Pair, wantFirstBatch int) {
		t.Run(name, func(t *testing.T) {
			cfg.Window = time.Hour // only size may flush
			cfg.MaxInFlight = 4
			h := newHarness(t, cfg)
			r1 := h.submit(context.Background(), first)
			h.backend.none(t)
			if s := h.b.Stats(); s.TotalBatches != 0 {
				t.Fatalf("flushed before full: %+v", s)
			}
			r2 := h.submit(context.Background(), second)
			// Once the queue is full, every pair in it is due: the rest
			// of a full queue leaves at once, not after the window.
			all := len(first) + len(second)
			var sizes []int
			for n := 0; n < all; {
				c := h.backend.next(t)
				sizes = append(sizes, len(c.pairs))
				n += len(c.pairs)
				h.reply(c, nil)
			}
			slices.Sort(sizes)
			if sizes[len(sizes)-1] != wantFirstBatch || len(sizes) > 2 {
				t.Fatalf("batch sizes %v, want a full batch of %d and the rest", sizes, wantFirstBatch)
			}
			h.expectScores(r1, first)
			h.expectScores(r2, second)
		})
	}
	f("pair count", Config{MaxBatchSize: 4}, mkPairs("q", nDocs("a", 2)...), mkPairs("q", nDocs("b", 2)...), 4)
	f("pair count with overflow", Config{MaxBatchSize: 4}, mkPairs("q", nDocs("a", 3)...), mkPairs("q", nDocs("b", 3)...), 4)
	// Each pair of a 40-character document and a 1-character query
	// estimates to 1 + 10 + 4 = 15 tokens; a 45-token budget holds three.
	long := strings.Repeat("x", 39)
	f("token budget", Config{MaxBatchSize: 32, MaxBatchTokens: 45},
		mkPairs("q", long+"1", long+"2"), mkPairs("q", long+"3", long+"4"), 3)
}

func TestFullQueueOfMixedLengthsLeavesWithoutWaiting(t *testing.T) {
	// Pairs of several length classes that together fill a batch leave
	// grouped by length, and the classes that did not fit the first batch
	// follow at once instead of waiting for a window.
	h := newHarness(t, Config{MaxBatchSize: 6, MaxInFlight: 1, Window: time.Hour})
	short, mid, long := "s", strings.Repeat("m", 100), strings.Repeat("l", 1000)
	a := mkPairs("q", mid+"1", short+"1", long+"1")
	bb := mkPairs("q", long+"2", short+"2", mid+"2")
	ra := h.submit(context.Background(), a)
	rb := h.submit(context.Background(), bb)
	first := h.backend.next(t)
	// Head first, then its class, then shorter ones.
	if want := mkPairs("q", mid+"1", mid+"2", short+"1", short+"2"); fmt.Sprint(first.pairs) != fmt.Sprint(want) {
		t.Fatalf("first batch %v, want %v", first.pairs, want)
	}
	h.reply(first, nil)
	second := h.backend.next(t) // no clock advance: due since the queue was full
	if want := mkPairs("q", long+"1", long+"2"); fmt.Sprint(second.pairs) != fmt.Sprint(want) {
		t.Fatalf("second batch %v, want %v", second.pairs, want)
	}
	h.reply(second, nil)
	h.expectScores(ra, a)
	h.expectScores(rb, bb)
	// A pair arriving afterwards waits for its window again.
	c := mkPairs("q", "late")
	rc := h.submit(context.Background(), c)
	if s := h.b.Stats(); s.InFlightBatches != 0 || s.TotalBatches != 2 {
		t.Fatalf("late pair dispatched before its window: %+v", s)
	}
	h.clock.Advance(time.Hour)
	h.reply(h.backend.next(t), nil)
	h.expectScores(rc, c)
}

func TestDeduplicatesInsideABatch(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond})
	a := mkPairs("q", "x", "y", "x")      // a duplicate inside one request
	bb := mkPairs("q", "y", "z")          // a pair shared with the first request
	c := mkPairs("other", "x", "y", "zz") // same documents, other query: distinct
	ra := h.submit(context.Background(), a)
	rb := h.submit(context.Background(), bb)
	rc := h.submit(context.Background(), c)
	h.clock.Advance(10 * time.Millisecond)
	got := h.backend.next(t)
	seen := map[sdk.Pair]bool{}
	for _, p := range got.pairs {
		if seen[p] {
			t.Fatalf("pair %v sent twice", p)
		}
		seen[p] = true
	}
	if len(got.pairs) != 6 {
		t.Fatalf("sent %d unique pairs, want 6: %v", len(got.pairs), got.pairs)
	}
	h.reply(got, nil)
	h.expectScores(ra, a)
	h.expectScores(rb, bb)
	h.expectScores(rc, c)
	if s := h.b.Stats(); s.DuplicatePairs != 2 || s.AvgBatchSize != 6 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestSplitsABigRequestAcrossBatches(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 4, MaxInFlight: 1, Window: 10 * time.Millisecond, MaxQueue: 100})
	big := mkPairs("q", nDocs("d", 10)...)
	r := h.submit(context.Background(), big)
	var sizes []int
	for range 3 {
		// Full batches leave at once, and the rest of the full queue
		// right after them, with no window.
		c := h.backend.next(t)
		sizes = append(sizes, len(c.pairs))
		h.reply(c, nil)
	}
	h.expectScores(r, big)
	if fmt.Sprint(sizes) != "[4 4 2]" {
		t.Fatalf("batch sizes %v, want [4 4 2]", sizes)
	}
}

func TestGroupsByLength(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 2, MaxInFlight: 1, Window: 0})
	short := "short"
	long := strings.Repeat("long words ", 40)
	// A request occupies the only slot while pairs of alternating lengths
	// queue behind it: the batcher pairs short with short and long with
	// long instead of padding every batch to the long length.
	busy := h.submit(context.Background(), mkPairs("busy", "x"))
	running := h.backend.next(t)
	a := mkPairs("q", short+"1", long+"1")
	bb := mkPairs("q", short+"2", long+"2")
	ra := h.submit(context.Background(), a)
	rb := h.submit(context.Background(), bb)
	h.reply(running, nil)
	first := h.backend.next(t)
	h.reply(first, nil)
	second := h.backend.next(t)
	h.reply(second, nil)
	h.backend.none(t)
	if got, want := fmt.Sprint(first.pairs, second.pairs), fmt.Sprint(mkPairs("q", short+"1", short+"2"), mkPairs("q", long+"1", long+"2")); got != want {
		t.Fatalf("batches %s, want %s", got, want)
	}
	h.expectScores(busy, mkPairs("busy", "x"))
	h.expectScores(ra, a)
	h.expectScores(rb, bb)
}

func TestDeadlineExpiresBeforeDispatch(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond})
	now := h.clock.Now()
	expiring := newManualCtx(now.Add(5 * time.Millisecond))
	a := mkPairs("q", nDocs("a", 3)...)
	bb := mkPairs("q", nDocs("b", 2)...)
	ra := h.submit(expiring, a)
	rb := h.submit(context.Background(), bb)
	expiring.end(context.DeadlineExceeded)
	if r := <-ra; !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("expired request returned %v, want DeadlineExceeded", r.err)
	}
	if s := h.b.Stats(); s.PendingPairs != 2 || s.PendingRequests != 1 || s.DroppedPairs != 3 {
		t.Fatalf("after expiry: %+v", s)
	}
	h.clock.Advance(10 * time.Millisecond)
	c := h.backend.next(t)
	if fmt.Sprint(c.pairs) != fmt.Sprint(bb) {
		t.Fatalf("dispatched %v, want only the live request's %v", c.pairs, bb)
	}
	if _, ok := c.ctx.Deadline(); ok {
		t.Fatalf("batch of an unbounded request has a deadline")
	}
	h.reply(c, nil)
	h.expectScores(rb, bb)
}

func TestExpiredButUnnoticedPairsAreDroppedAtDispatch(t *testing.T) {
	// The context has ended but its Done channel has not fired yet, so its
	// waiter has not noticed: the batcher itself must see it when forming
	// the batch, and the waiter must then get the context's error.
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond})
	expiring := newManualCtx(h.clock.Now().Add(time.Millisecond))
	a := mkPairs("q", nDocs("a", 3)...)
	bb := mkPairs("q", nDocs("b", 2)...)
	ra := h.submit(expiring, a)
	rb := h.submit(context.Background(), bb)
	expiring.mu.Lock()
	expiring.err = context.DeadlineExceeded
	expiring.mu.Unlock()
	h.clock.Advance(10 * time.Millisecond)
	c := h.backend.next(t)
	if fmt.Sprint(c.pairs) != fmt.Sprint(bb) {
		t.Fatalf("dispatched %v, want %v", c.pairs, bb)
	}
	if r := <-ra; !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("expired request returned %v, %v", r.scores, r.err)
	}
	h.reply(c, nil)
	h.expectScores(rb, bb)
	if s := h.b.Stats(); s.DroppedPairs != 3 || s.PendingPairs != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestDeadlineExpiresDuringDispatch(t *testing.T) {
	f := func(name string, withOther bool) {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond})
			now := h.clock.Now()
			early := newManualCtx(now.Add(time.Hour))
			late := newManualCtx(now.Add(2 * time.Hour))
			a := mkPairs("q", nDocs("a", 3)...)
			bb := mkPairs("q", nDocs("b", 2)...)
			ra := h.submit(early, a)
			var rb <-chan result
			if withOther {
				rb = h.submit(late, bb)
			}
			h.clock.Advance(10 * time.Millisecond)
			c := h.backend.next(t)
			dl, ok := c.ctx.Deadline()
			want := early.deadline
			if withOther {
				want = late.deadline
			}
			if !ok || !dl.Equal(want) {
				t.Fatalf("batch deadline %v (%v), want the latest request deadline %v", dl, ok, want)
			}
			early.end(context.DeadlineExceeded)
			if r := <-ra; !errors.Is(r.err, context.DeadlineExceeded) {
				t.Fatalf("expired request returned %v", r.err)
			}
			if withOther {
				if c.ctx.Err() != nil {
					t.Fatalf("batch cancelled while another request waits for it")
				}
				h.reply(c, nil)
				h.expectScores(rb, bb)
			} else {
				if c.ctx.Err() == nil {
					t.Fatalf("batch still running with no request waiting for it")
				}
				h.reply(c, c.ctx.Err())
			}
			// The slot is free again: a new request is served.
			d := mkPairs("q", "again")
			rd := h.submit(context.Background(), d)
			h.clock.Advance(10 * time.Millisecond)
			c2 := h.backend.next(t)
			h.reply(c2, nil)
			h.expectScores(rd, d)
			if s := h.b.Stats(); s.PendingPairs != 0 || s.PendingRequests != 0 || s.InFlightBatches != 0 {
				t.Fatalf("leaked accounting: %+v", s)
			}
		})
	}
	f("alone in its batch", false)
	f("sharing its batch", true)
}

func TestClientCancellation(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	a := mkPairs("q", nDocs("a", 4)...)
	bb := mkPairs("q", nDocs("b", 1)...)
	ra := h.submit(ctx, a)
	rb := h.submit(context.Background(), bb)
	cancel()
	if r := <-ra; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled request returned %v", r.err)
	}
	h.clock.Advance(10 * time.Millisecond)
	c := h.backend.next(t)
	if len(c.pairs) != 1 {
		t.Fatalf("dispatched %v, want the one live pair", c.pairs)
	}
	h.reply(c, nil)
	h.expectScores(rb, bb)
	if s := h.b.Stats(); s.DroppedPairs != 4 {
		t.Fatalf("dropped %d pairs, want 4", s.DroppedPairs)
	}
}

func TestOverloadAtTheBound(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond, MaxQueue: 5})
	a := mkPairs("q", nDocs("a", 3)...)
	ra := h.submit(context.Background(), a)
	_, err := h.b.Score(context.Background(), mkPairs("q", nDocs("b", 3)...))
	if !errors.Is(err, sdk.ErrOverloaded) {
		t.Fatalf("over the bound: %v, want ErrOverloaded", err)
	}
	// Exactly at the bound is admitted.
	bb := mkPairs("q", nDocs("c", 2)...)
	rb := h.submit(context.Background(), bb)
	if s := h.b.Stats(); s.RejectedRequests != 1 || s.PendingPairs != 5 || s.TotalRequests != 2 {
		t.Fatalf("stats: %+v", s)
	}
	h.clock.Advance(10 * time.Millisecond)
	c := h.backend.next(t)
	h.reply(c, nil)
	h.expectScores(ra, a)
	h.expectScores(rb, bb)

	// With the queue empty again, a request larger than the bound is
	// admitted and split rather than refused for its size.
	big := mkPairs("q", nDocs("big", 8)...)
	rbig := h.submit(context.Background(), big)
	h.clock.Advance(10 * time.Millisecond)
	c = h.backend.next(t)
	h.reply(c, nil)
	h.expectScores(rbig, big)
}

func TestShedsWhatWouldMissItsDeadline(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond, MaxQueue: 1000})
	// Each pair "q"/"dNN" estimates to 1 + 1 + 4 = 6 tokens.
	warm := mkPairs("q", nDocs("d", 10)...) // 60 tokens
	rw := h.submit(context.Background(), warm)
	h.clock.Advance(10 * time.Millisecond) // dispatch
	c := h.backend.next(t)
	h.clock.Advance(600 * time.Millisecond) // the plugin takes 600 ms: 100 tokens/s
	h.reply(c, nil)
	h.expectScores(rw, warm)
	if s := h.b.Stats(); s.TokensPerSec != 100 {
		t.Fatalf("measured %v tokens/s, want 100", s.TokensPerSec)
	}
	// 20 pairs queue ahead (120 tokens, 1.2 s of work).
	ahead := mkPairs("q", nDocs("e", 20)...)
	ra := h.submit(context.Background(), ahead)
	now := h.clock.Now()
	// 5 more pairs (30 tokens): 1.5 s in all, 3 s with the margin of 2. A
	// deadline 2 s away cannot be met safely: refused at once rather than
	// left to time out.
	_, err := h.b.Score(newManualCtx(now.Add(2*time.Second)), mkPairs("q", nDocs("f", 5)...))
	if !errors.Is(err, sdk.ErrOverloaded) {
		t.Fatalf("hopeless request: %v, want ErrOverloaded", err)
	}
	// A deadline 4 s away can: admitted.
	ok := mkPairs("q", nDocs("g", 5)...)
	rok := h.submit(newManualCtx(now.Add(4*time.Second)), ok)
	if s := h.b.Stats(); s.ShedRequests != 1 || s.RejectedRequests != 1 || s.PendingPairs != 25 || s.TotalRequests != 3 {
		t.Fatalf("stats: %+v", s)
	}
	h.clock.Advance(10 * time.Millisecond)
	c = h.backend.next(t)
	h.reply(c, nil)
	h.expectScores(ra, ahead)
	h.expectScores(rok, ok)
}

// TestSlowPluginDoesNotShedARequestWithinItsDeadline is the fp16 XLM-R
// case: on a slow plugin one request of 20 pairs took about 9 minutes, and
// the next one, alone with a 15-minute deadline, was refused (429) at once
// because the margin doubled its own estimated work. A request that has
// the plugin to itself is never shed: a retry would cost the same, and its
// deadline still bounds it. With work ahead, the margin covers the queue's
// uncertainty only, so a request that fits its deadline behind a short
// queue is admitted.
func TestSlowPluginDoesNotShedARequestWithinItsDeadline(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond, MaxQueue: 1000})
	// Each pair "q"/"dNN" estimates to 1 + 1 + 4 = 6 tokens; 20 pairs
	// make one batch of 120 tokens.
	first := mkPairs("q", nDocs("d", 20)...)
	deadline := 900 * time.Second
	r1 := h.submit(newManualCtx(h.clock.Now().Add(deadline)), first)
	h.clock.Advance(10 * time.Millisecond)
	c := h.backend.next(t)
	h.clock.Advance(540 * time.Second) // the plugin takes 9 minutes
	h.reply(c, nil)
	h.expectScores(r1, first)

	// The same shape again, alone: 540 s of estimated work in 900 s.
	second := mkPairs("q", nDocs("e", 20)...)
	r2 := h.submit(newManualCtx(h.clock.Now().Add(deadline)), second)
	h.clock.Advance(10 * time.Millisecond)
	c = h.backend.next(t)
	h.clock.Advance(540 * time.Second)
	h.reply(c, nil)
	h.expectScores(r2, second)

	// Alone, even a request estimated past its deadline is admitted: it
	// is answered if the plugin is quicker than the estimate, else it
	// times out (504); 429's "retry later" would not help it.
	third := mkPairs("q", nDocs("f", 20)...)
	r3 := h.submit(newManualCtx(h.clock.Now().Add(300*time.Second)), third)
	h.clock.Advance(10 * time.Millisecond)
	c = h.backend.next(t)
	h.clock.Advance(200 * time.Second)
	h.reply(c, nil)
	h.expectScores(r3, third)

	// Behind a short batch in flight: at the rate measured so far (about
	// 3.3 s a token) its 12 tokens are about 40 s and 20 more pairs about
	// 400 s; 2 × 40 + 400 s fits the 600 s left, so they are admitted.
	// Doubling their own work too, 2 × 440 s, refused them.
	short := mkPairs("q", nDocs("g", 2)...)
	rs := h.submit(newManualCtx(h.clock.Now().Add(deadline)), short)
	h.clock.Advance(10 * time.Millisecond)
	cs := h.backend.next(t)
	fourth := mkPairs("q", nDocs("h", 20)...)
	r4 := h.submit(newManualCtx(h.clock.Now().Add(600*time.Second)), fourth)
	h.clock.Advance(45 * time.Second)
	h.reply(cs, nil)
	h.expectScores(rs, short)
	h.clock.Advance(10 * time.Millisecond)
	c = h.backend.next(t)
	h.clock.Advance(450 * time.Second)
	h.reply(c, nil)
	h.expectScores(r4, fourth)
	if s := h.b.Stats(); s.ShedRequests != 0 || s.RejectedRequests != 0 {
		t.Fatalf("requests within their deadlines were refused: %+v", s)
	}
}

func TestNoStarvation(t *testing.T) {
	f := func(name string, bigDoc, smallDoc string) {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, Config{MaxBatchSize: 4, MaxInFlight: 1, Window: 0, MaxQueue: 10000})
			type req struct {
				pairs []sdk.Pair
				out   <-chan result
			}
			var reqs []req
			n := 0
			addSmall := func() {
				n++
				p := mkPairs("s", fmt.Sprintf("%s%d", smallDoc, n), fmt.Sprintf("%s%d'", smallDoc, n))
				reqs = append(reqs, req{p, h.submit(context.Background(), p)})
			}
			// One small request occupies the only slot; three more and
			// then a big one queue behind it.
			addSmall()
			running := h.backend.next(t)
			for range 3 {
				addSmall()
			}
			big := mkPairs("big", nDocs(bigDoc, 12)...)
			reqs = append(reqs, req{big, h.submit(context.Background(), big)})
			// While each batch runs, two more small requests arrive: the
			// stream never lets up. Oldest-first scheduling must still
			// get all 12 big pairs out within a bounded number of
			// batches: the 6 older small pairs and 12 big pairs fill at
			// most 5 batches of 4, plus one of newer short pairs that may
			// be grouped ahead of the long ones.
			const bound = 6
			seen := 0
			for batches := 1; seen < len(big); batches++ {
				if batches > bound {
					t.Fatalf("only %d of %d big pairs dispatched after %d batches", seen, len(big), bound)
				}
				addSmall()
				addSmall()
				h.reply(running, nil)
				running = h.backend.next(t)
				for _, p := range running.pairs {
					if p.Query == "big" {
						seen++
					}
				}
			}
			// Drain the rest of the stream.
			for {
				h.reply(running, nil)
				if s := h.b.Stats(); s.InFlightBatches == 0 {
					if s.PendingPairs != 0 {
						t.Fatalf("pairs left behind: %+v", s)
					}
					break
				}
				running = h.backend.next(t)
			}
			for _, r := range reqs {
				h.expectScores(r.out, r.pairs)
			}
		})
	}
	f("same length", "doc", "doc")
	f("big request of long documents", strings.Repeat("long document text ", 20), "tiny")
}

func TestBackendErrorReachesEveryRequest(t *testing.T) {
	h := newHarness(t, Config{MaxBatchSize: 32, Window: 10 * time.Millisecond})
	ra := h.submit(context.Background(), mkPairs("q", "a"))
	rb := h.submit(context.Background(), mkPairs("q", "b"))
	h.clock.Advance(10 * time.Millisecond)
	c := h.backend.next(t)
	h.reply(c, fmt.Errorf("plugin: boom: %w", sdk.ErrNotLoaded))
	for _, ch := range []<-chan result{ra, rb} {
		if r := <-ch; !errors.Is(r.err, sdk.ErrNotLoaded) {
			t.Fatalf("got %v, want the backend's ErrNotLoaded", r.err)
		}
	}
	if s := h.b.Stats(); s.PendingPairs != 0 || s.PendingRequests != 0 || s.DroppedPairs != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestDisabledPassesThroughUnderTheBound(t *testing.T) {
	backend := newFakeBackend()
	b := New(backend, Config{Enabled: false, MaxQueue: 4})
	a := mkPairs("q", nDocs("a", 3)...)
	ra := make(chan result, 1)
	go func() {
		s, err := b.Score(context.Background(), a)
		ra <- result{s, err}
	}()
	c := backend.next(t)
	if len(c.pairs) != 3 {
		t.Fatalf("pass-through sent %d pairs", len(c.pairs))
	}
	if _, err := b.Score(context.Background(), mkPairs("q", "x", "y")); !errors.Is(err, sdk.ErrOverloaded) {
		t.Fatalf("over the bound with batching off: %v", err)
	}
	c.reply <- nil
	r := <-ra
	if r.err != nil || len(r.scores) != 3 || r.scores[2] != refScore(a[2]) {
		t.Fatalf("pass-through: %+v", r)
	}
	s := b.Stats()
	if s.Enabled || s.TotalBatches != 1 || s.TotalRequests != 1 || s.RejectedRequests != 1 || s.PendingPairs != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestEmptyAndEndedRequests(t *testing.T) {
	b := New(newFakeBackend(), Config{Enabled: true})
	s, err := b.Score(context.Background(), nil)
	if err != nil || len(s) != 0 {
		t.Fatalf("empty: %v %v", s, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Score(ctx, mkPairs("q", "a")); !errors.Is(err, context.Canceled) {
		t.Fatalf("ended: %v", err)
	}
}

func TestEstimateAndBuckets(t *testing.T) {
	b := New(nil, Config{MaxLength: 64, CharsPerToken: 4})
	f := func(q, d string, wantTokens, wantBucket int) {
		t.Helper()
		n := b.estimate(sdk.Pair{Query: q, Document: d})
		if n != wantTokens || bucketOf(n) != wantBucket {
			t.Fatalf("estimate(%q, %d chars) = %d (bucket %d), want %d (bucket %d)", q, len(d), n, bucketOf(n), wantTokens, wantBucket)
		}
	}
	f("", "", 4, 0)
	f("abcd", "abcde", 1+2+4, 0)
	f("q", strings.Repeat("é", 40), 1+10+4, 0) // runes, not bytes
	f("q", strings.Repeat("x", 48), 1+12+4, 1)
	f("q", strings.Repeat("x", 10000), 64, 2) // capped by max length
	if bucketOf(1<<20) != nBuckets-1 {
		t.Fatalf("huge estimate outside the last bucket")
	}
}

func TestForDevice(t *testing.T) {
	for _, d := range []string{"cpu", "cuda", "coreml", ""} {
		c := ForDevice(d)
		if !c.Enabled || c.MaxBatchSize != 32 || c.Window != 10*time.Millisecond || c.MaxBatchTokens < c.MaxLength || c.MaxInFlight < 1 {
			t.Fatalf("ForDevice(%q) = %+v", d, c)
		}
	}
}

// sizeRecorder scores every pair 1 and records each call's message bytes.
type sizeRecorder struct {
	mu    sync.Mutex
	sizes []int
	pairs int
}

func (s *sizeRecorder) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	n := 0
	for _, p := range pairs {
		n += sdk.PairBytes(p)
	}
	s.mu.Lock()
	s.sizes = append(s.sizes, n)
	s.pairs += len(pairs)
	s.mu.Unlock()
	out := make([]float32, len(pairs))
	for i := range out {
		out[i] = 1
	}
	return out, nil
}

// A long query is sent once per pair: batches are split by bytes so that
// each plugin message stays under the gRPC limit, coalescing on or off
// (issue 13, failure 1: 20 pairs of a 300 KB query made one 6 MB message,
// which the plugin refused).
func TestBatchesSplitByBytes(t *testing.T) {
	f := func(enabled bool) {
		t.Helper()
		rec := &sizeRecorder{}
		b := New(rec, Config{Enabled: enabled, Window: 0, MaxBatchSize: 32, MaxBatchTokens: 1 << 20, MaxQueue: 1000})
		query := strings.Repeat("q", 300<<10)
		pairs := make([]sdk.Pair, 20)
		for i := range pairs {
			pairs[i] = sdk.Pair{Query: query, Document: fmt.Sprintf("doc %d", i)}
		}
		scores, err := b.Score(context.Background(), pairs)
		if err != nil || len(scores) != len(pairs) {
			t.Fatalf("enabled=%v: %d scores, %v", enabled, len(scores), err)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if rec.pairs != len(pairs) || len(rec.sizes) < 2 {
			t.Fatalf("enabled=%v: %d pairs in %d calls", enabled, rec.pairs, len(rec.sizes))
		}
		for _, n := range rec.sizes {
			if n > DefaultMaxBatchBytes || n > sdk.MaxMessageBytes {
				t.Fatalf("enabled=%v: a call carried %d bytes, over %d", enabled, n, DefaultMaxBatchBytes)
			}
		}
	}
	f(true)
	f(false)
}

// usageScorer answers at once with refScores and reports, like a plugin,
// a token per character and one padding position per pair.
type usageScorer struct{}

func (usageScorer) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	if u := sdk.UsageFrom(ctx); u != nil {
		for _, p := range pairs {
			n := int64(len(p.Query) + len(p.Document))
			u.Tokens += n
			u.PaddedTokens += n + 1
		}
	}
	return refScores(pairs), nil
}

func TestUsageCounted(t *testing.T) {
	f := func(enabled bool) {
		t.Helper()
		b := New(usageScorer{}, Config{Enabled: enabled})
		pairs := mkPairs("qq", "abc", "de")
		for i := 0; i < 3; i++ {
			got, err := b.Score(context.Background(), pairs)
			if err != nil || !slices.Equal(got, refScores(pairs)) {
				t.Fatalf("Score: %v, %v", got, err)
			}
		}
		st := b.Stats()
		// 3 calls × (5 + 4 characters, 2 padding positions).
		if st.Tokens != 27 || st.PaddedTokens != 6 || math.Abs(st.PaddedShare-6.0/33) > 1e-12 {
			t.Fatalf("enabled=%v: stats %+v", enabled, st)
		}
	}
	f(true)
	f(false)
}

// crashingBackend fails its first crashes calls as a plugin crash does
// (sdk.ErrUnavailable), taking the plugin down until restart is called.
type crashingBackend struct {
	mu      sync.Mutex
	crashes int
	calls   int
	up      chan struct{}
}

func newCrashingBackend(crashes int) *crashingBackend {
	c := &crashingBackend{crashes: crashes, up: make(chan struct{})}
	close(c.up)
	return c
}

func (c *crashingBackend) Up() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}

func (c *crashingBackend) restart() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.up)
}

func (c *crashingBackend) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.calls <= c.crashes {
		c.up = make(chan struct{})
		return nil, fmt.Errorf("plugin died: %w", sdk.ErrUnavailable)
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		out[i] = float32(len(p.Document))
	}
	return out, nil
}

// A plugin crash costs latency, not answers (issue 13, failure 9): the
// batch lost in the crash is sent again to the restarted plugin, and a
// request arriving while it restarts waits for it. With micro-batching off,
// the request's own call is sent again, and a new one waits, the same way.
func TestCrashedBatchIsResent(t *testing.T) {
	t.Run("batched", func(t *testing.T) { crashedBatchIsResent(t, true) })
	t.Run("unbatched", func(t *testing.T) { crashedBatchIsResent(t, false) })
}

func crashedBatchIsResent(t *testing.T, enabled bool) {
	be := newCrashingBackend(1)
	b := New(be, Config{Enabled: enabled, Window: 0, MaxQueue: 100, Up: be.Up})
	type answer struct {
		scores []float32
		err    error
	}
	first := make(chan answer, 1)
	go func() {
		s, err := b.Score(context.Background(), []sdk.Pair{{Query: "q", Document: "a"}, {Query: "q", Document: "bb"}})
		first <- answer{s, err}
	}()
	// The first batch crashed the plugin: both requests wait for it.
	deadline := time.Now().Add(30 * time.Second)
	for b.Stats().ResentPairs != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the crashed batch was not queued again: %+v", b.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	second := make(chan answer, 1)
	go func() {
		s, err := b.Score(context.Background(), []sdk.Pair{{Query: "q", Document: "ccc"}})
		second <- answer{s, err}
	}()
	for b.Stats().PendingPairs != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the request arriving during the restart is not queued: %+v", b.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case a := <-first:
		t.Fatalf("answered while the plugin was down: %v %v", a.scores, a.err)
	default:
	}
	be.restart()
	if a := <-first; a.err != nil || !slices.Equal(a.scores, []float32{1, 2}) {
		t.Fatalf("first request after the restart: %v %v", a.scores, a.err)
	}
	if a := <-second; a.err != nil || !slices.Equal(a.scores, []float32{3}) {
		t.Fatalf("second request after the restart: %v %v", a.scores, a.err)
	}
	if st := b.Stats(); st.PendingPairs != 0 || st.PoisonPairs != 0 {
		t.Fatalf("after: %+v", st)
	}
}

// A batch that crashes the plugin twice is failed, with an error saying so,
// rather than crashing it for ever; a request whose deadline passes while
// no plugin is up fails with sdk.ErrNotLoaded (503), not a timeout. So
// does an unbatched call.
func TestPoisonBatchFailsAfterTwoCrashes(t *testing.T) {
	t.Run("batched", func(t *testing.T) { poisonBatchFailsAfterTwoCrashes(t, true) })
	t.Run("unbatched", func(t *testing.T) { poisonBatchFailsAfterTwoCrashes(t, false) })
}

func poisonBatchFailsAfterTwoCrashes(t *testing.T, enabled bool) {
	be := newCrashingBackend(1000)
	b := New(be, Config{Enabled: enabled, Window: 0, MaxQueue: 100, Up: be.Up})
	done := make(chan error, 1)
	go func() {
		_, err := b.Score(context.Background(), []sdk.Pair{{Query: "q", Document: "poison"}})
		done <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for b.Stats().ResentPairs != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("not resent: %+v", b.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	be.restart()
	err := <-done
	if !errors.Is(err, sdk.ErrInvalidInput) || !strings.Contains(err.Error(), "crashed twice") {
		t.Fatalf("poison batch: %v", err)
	}
	if st := b.Stats(); st.PoisonPairs != 1 || st.PendingPairs != 0 {
		t.Fatalf("after: %+v", st)
	}
	// The plugin is down now (the second crash): a request's deadline
	// passes while it waits.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := b.Score(ctx, []sdk.Pair{{Query: "q", Document: "x"}}); !errors.Is(err, sdk.ErrNotLoaded) {
		t.Fatalf("deadline while down: %v, want ErrNotLoaded", err)
	}
}
