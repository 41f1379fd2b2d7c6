package cache

import (
	"sync"
	"time"
)

// breaker is a circuit breaker in front of Redis: after threshold consecutive
// failures it opens, and while open no call is made, so a dead Redis costs a
// request nothing. After the cool-down one probe goes through (half-open); its
// success closes the breaker, its failure reopens it for twice as long, up to
// maxCooldown.
type breaker struct {
	threshold   int
	cooldown    time.Duration
	maxCooldown time.Duration
	now         func() time.Time

	mu        sync.Mutex
	failures  int
	open      bool
	probing   bool
	openUntil time.Time
	wait      time.Duration
	opened    uint64
	reclosed  uint64
}

func newBreaker(threshold int, cooldown, maxCooldown time.Duration) *breaker {
	if threshold < 1 {
		threshold = 1
	}
	if maxCooldown < cooldown {
		maxCooldown = cooldown
	}
	return &breaker{threshold: threshold, cooldown: cooldown, maxCooldown: maxCooldown, now: time.Now, wait: cooldown}
}

// allow reports whether a call may go to Redis now. When it returns true
// the caller must report the outcome with success or failure.
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return true
	}
	if b.probing || b.now().Before(b.openUntil) {
		return false
	}
	b.probing = true
	return true
}

// success records a call that reached Redis and got an answer; it reports
// whether that closed an open breaker.
func (b *breaker) success() (reclosed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	reclosed = b.open
	if reclosed {
		b.reclosed++
	}
	b.failures = 0
	b.open = false
	b.probing = false
	b.wait = b.cooldown
	return reclosed
}

// failure records a call that failed for a reason on Redis's side: a
// connection error, a timeout, an error reply.
func (b *breaker) failure() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures++
	switch {
	case b.probing:
		b.probing = false
		b.wait = min(2*b.wait, b.maxCooldown)
	case !b.open && b.failures >= b.threshold:
		b.wait = b.cooldown
	default:
		return
	}
	b.open = true
	b.opened++
	b.openUntil = b.now().Add(b.wait)
}

// abandon records a call that ended without a verdict on Redis (the
// request went away first): a probe becomes possible again at once.
func (b *breaker) abandon() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
}

// breakerState is what the breaker says of itself.
type breakerState struct {
	// closed says calls go to Redis (or a probe may, once cooled down: a
	// breaker waiting for its probe is open).
	closed bool
	// opened counts how often it opened, a failed probe's reopening
	// included.
	opened uint64
	// reclosed counts how often a successful probe closed it again.
	reclosed uint64
}

// state reports whether the breaker is closed and how often it opened and
// closed again.
func (b *breaker) state() breakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return breakerState{closed: !b.open, opened: b.opened, reclosed: b.reclosed}
}
