package cache

import "sync"

// flight is one pair being computed in this process; requests that need the
// same pair meanwhile wait on done instead of computing it again.
type flight struct {
	done     chan struct{}
	score    float32
	ok       bool
	finished bool // guarded by flights.mu
}

// flights is the in-process dedup table: key → the flight computing it.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

func newFlights() *flights {
	return &flights{m: make(map[string]*flight)}
}

// join returns the flight for each key in keys (indexes into all); lead[i]
// is true where the caller created the flight and must finish it.
func (fs *flights) join(all string, idx []int, out []*flight, lead []bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for j, i := range idx {
		k := keyAt(all, i)
		if f, ok := fs.m[k]; ok {
			out[j], lead[j] = f, false
			continue
		}
		f := &flight{done: make(chan struct{})}
		fs.m[k] = f
		out[j], lead[j] = f, true
	}
}

// finish removes the flight of key and wakes its waiters; ok says whether
// score is a result they may use. Finishing a finished or nil flight does
// nothing, so a leader can finish all its flights as failed on the way out.
func (fs *flights) finish(key string, f *flight, score float32, ok bool) {
	if f == nil {
		return
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f.finished {
		return
	}
	f.finished = true
	if fs.m[key] == f {
		delete(fs.m, key)
	}
	f.score, f.ok = score, ok
	close(f.done)
}

// size returns the number of pairs in flight.
func (fs *flights) size() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.m)
}
