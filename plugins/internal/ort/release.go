package ort

import (
	"sync"
	"time"
)

// releaseAfter is how long the engine waits after its last Score call
// before giving freed memory back: a second, well above the gaps between
// the batches of a busy proxy (milliseconds), so a steady stream keeps its
// memory and a sidecar at rest returns it almost at once.
const releaseAfter = time.Second

// releaser calls release once no call has been active for after: the
// memory a run freed stays for the next run while calls keep coming, and
// goes back to the system when they stop. It is safe for concurrent use.
type releaser struct {
	after   time.Duration
	release func()

	mu     sync.Mutex
	active int
	timer  *time.Timer
}

// begin marks a call active, cancelling a pending release.
func (r *releaser) begin() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active++
	if r.timer != nil {
		r.timer.Stop()
	}
}

// end marks a call finished; the last one arms the release.
func (r *releaser) end() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active--
	if r.active > 0 {
		return
	}
	if r.timer == nil {
		r.timer = time.AfterFunc(r.after, r.fire)
		return
	}
	r.timer.Reset(r.after)
}

// fire releases unless a call began since the timer was armed.
func (r *releaser) fire() {
	r.mu.Lock()
	idle := r.active == 0
	r.mu.Unlock()
	if idle {
		r.release()
	}
}
