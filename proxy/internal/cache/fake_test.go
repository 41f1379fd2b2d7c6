package cache

import (
	"context"
	"errors"
	"hash/fnv"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/rerank-sidecar/rerank/sdk"
)

// countingScorer is the fake next stage: it scores a pair with a hash of
// the pair and a salt (a stand-in for the model), and counts every pair it
// is asked to score.
type countingScorer struct {
	salt string
	// delay keeps a call in flight long enough for concurrent requests to
	// overlap it; it is never part of an assertion.
	delay time.Duration
	// fail, when set, is returned instead of scores.
	fail error
	// nan makes every pair whose document is nan score NaN.
	nan string
	// short returns one score fewer than asked, a partial batch.
	short bool

	mu     sync.Mutex
	counts map[sdk.Pair]int
	calls  int
}

func newCounting(salt string) *countingScorer {
	return &countingScorer{salt: salt, counts: make(map[sdk.Pair]int)}
}

func (s *countingScorer) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.mu.Lock()
	s.calls++
	for _, p := range pairs {
		s.counts[p]++
	}
	fail, short := s.fail, s.short
	s.mu.Unlock()
	if fail != nil {
		return nil, fail
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		out[i] = s.want(p)
	}
	if short {
		out = out[:len(out)-1]
	}
	return out, nil
}

// want is the score the fake gives p.
func (s *countingScorer) want(p sdk.Pair) float32 {
	if s.nan != "" && p.Document == s.nan {
		return float32(math.NaN())
	}
	h := fnv.New32a()
	h.Write([]byte(s.salt + "\x00" + p.Query + "\x00" + p.Document))
	return float32(h.Sum32()%1_000_000) / 1_000_000
}

// count returns how often p was scored.
func (s *countingScorer) count(p sdk.Pair) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[p]
}

// total returns the number of pairs scored.
func (s *countingScorer) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.counts {
		n += c
	}
	return n
}

func (s *countingScorer) setFail(err error) {
	s.mu.Lock()
	s.fail = err
	s.mu.Unlock()
}

var errBackend = errors.New("backend exploded")

// pairsOf returns n pairs of query q with documents named from first on.
func pairsOf(q string, first, n int) []sdk.Pair {
	ps := make([]sdk.Pair, n)
	for i := range ps {
		ps[i] = sdk.Pair{Query: q, Document: "passage number " + strconv.Itoa(first+i) + " about " + q}
	}
	return ps
}
