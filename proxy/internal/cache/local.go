package cache

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// localEntryCost is what one L1 entry costs in memory, in bytes, counted
// against the byte bound: ristretto keeps no key, only two 64-bit hashes, a
// float32 and an expiry per entry (48 bytes with padding), plus slots in its
// store, policy and TTL maps, plus its admission counters (it is configured
// with ten counters per entry). BenchmarkLocalEntryBytes measures the heap a
// full cache takes per entry: 193 to 242 bytes in our runs, depending on
// where Go's maps stand in their growth at the bound; this constant is
// rounded up from that so the bound holds.
const localEntryCost = 256

// localCountersPerEntry is how many frequency counters ristretto keeps per
// entry it can hold: its documentation recommends ten.
const localCountersPerEntry = 10

// localBufferItems is ristretto's per-Get buffer size; 64 is the value its
// documentation recommends for good performance.
const localBufferItems = 64

// LocalStats is the "local_cache" section of /health.
type LocalStats struct {
	// Hits counts pairs answered from the in-process cache.
	Hits uint64 `json:"hits"`
	// Misses counts pairs looked up and not found.
	Misses uint64 `json:"misses"`
	// Entries is the number of scores held.
	Entries int64 `json:"entries"`
	// Bytes is the memory the entries are accounted for.
	Bytes int64 `json:"bytes"`
	// MaxBytes is the byte bound.
	MaxBytes int64 `json:"max_bytes"`
}

// local is the L1: a bounded in-process score cache with a TTL.
type local struct {
	c      *ristretto.Cache[string, float32]
	ttl    time.Duration
	hits   atomic.Uint64
	misses atomic.Uint64
}

func newLocal(cfg LocalConfig) (*local, error) {
	if cfg.MaxBytes < localEntryCost {
		return nil, fmt.Errorf("cache: local cache bound %d bytes is below one entry (%d bytes)", cfg.MaxBytes, localEntryCost)
	}
	if cfg.TTL <= 0 {
		return nil, fmt.Errorf("cache: local cache TTL must be positive, got %s", cfg.TTL)
	}
	entries := cfg.MaxBytes / localEntryCost
	c, err := ristretto.NewCache(&ristretto.Config[string, float32]{
		NumCounters:        entries * localCountersPerEntry,
		MaxCost:            cfg.MaxBytes,
		BufferItems:        localBufferItems,
		KeyToHash:          keyHash,
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: cannot create local cache: %w", err)
	}
	return &local{c: c, ttl: cfg.TTL}, nil
}

// get looks a key up; the caller counts the outcome with count.
func (l *local) get(k string) (float32, bool) {
	return l.c.Get(k)
}

// count adds a request's lookups to the counters, once per request rather
// than per pair: the counters are shared by every core, and an atomic add
// per pair was a visible part of an L1 hit.
func (l *local) count(hits, misses int) {
	if hits > 0 {
		l.hits.Add(uint64(hits))
	}
	if misses > 0 {
		l.misses.Add(uint64(misses))
	}
}

// set stores a finite score; the write becomes visible after wait.
func (l *local) set(k string, v float32) {
	l.c.SetWithTTL(k, v, localEntryCost, l.ttl)
}

// wait blocks until earlier sets are visible to get.
func (l *local) wait() { l.c.Wait() }

func (l *local) stats() LocalStats {
	used := l.c.MaxCost() - l.c.RemainingCost()
	return LocalStats{
		Hits:     l.hits.Load(),
		Misses:   l.misses.Load(),
		Entries:  used / localEntryCost,
		Bytes:    used,
		MaxBytes: l.c.MaxCost(),
	}
}

func (l *local) close() { l.c.Close() }
