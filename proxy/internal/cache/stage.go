package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/rerank-sidecar/rerank/sdk"
)

// Stage is the cache stage as the serve command wires it: the pipeline is
// built before the plugin has loaded the model, and the cache keys on the
// model's identity, so until Start gives it one the stage passes pairs to
// the next stage uncached.
type Stage struct {
	next Scorer
	cfg  Config

	mu     sync.Mutex // serializes Start and Close
	cur    atomic.Pointer[Cache]
	id     Identity
	closed bool
}

// NewStage returns a stage in front of next that caches once started.
func NewStage(cfg Config, next Scorer) *Stage {
	return &Stage{next: next, cfg: cfg}
}

// Start begins caching for the model id. Starting again with the same
// identity does nothing; with another (the plugin came back with other
// weights) it replaces the cache, so no score crosses models. When the new
// cache cannot be made the stage passes pairs through uncached rather than
// keep the old identity's. A replaced cache is closed once the requests
// still in it have finished, and stores nothing more meanwhile.
func (s *Stage) Start(id Identity) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("cache: stage closed")
	}
	if old := s.cur.Load(); old != nil && s.id == id {
		return nil
	}
	if s.cfg.Logger != nil && id.Revision == "" {
		s.cfg.Logger.Warn("the backend reports no model revision: cached scores are keyed on the model name, precision and backend only")
	}
	c, err := New(s.cfg, id, s.next)
	s.id = id
	if old := s.cur.Swap(c); old != nil {
		old.retired.Store(true)
		go old.closeWhenIdle()
	}
	return err
}

// Score answers from the cache once started, else from the next stage.
func (s *Stage) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	if c := s.cur.Load(); c != nil {
		// The read lock keeps a replaced cache open until this request
		// is done with it; closeWhenIdle waits for it.
		c.users.RLock()
		defer c.users.RUnlock()
		return c.Score(ctx, pairs)
	}
	return s.next.Score(ctx, pairs)
}

// Stats returns the cache's counters; before Start they are zero, with
// distributed_cache.enabled saying whether Redis is configured.
func (s *Stage) Stats() Stats {
	if c := s.cur.Load(); c != nil {
		c.users.RLock() // as in Score: not while a replaced cache closes
		defer c.users.RUnlock()
		return c.Stats()
	}
	return Stats{Distributed: DistributedStats{Enabled: s.cfg.Redis.Enabled}}
}

// Close closes the cache, once the requests in it have finished.
func (s *Stage) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if c := s.cur.Swap(nil); c != nil {
		return c.closeWhenIdle()
	}
	return nil
}
