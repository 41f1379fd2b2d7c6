package api

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Connection handling the HTTP server needs beyond fasthttp: a 413 the
// client can read, and a request that ends when its client goes away.

// lingerTimeout bounds how long a connection answered with an error before
// its body was read (413) keeps reading and discarding what the client still
// sends, after its write side was closed: long enough for a client on a slow
// link to finish sending a few MiB and read the answer, as Go's net/http
// lingers; the client's unread bytes would otherwise make the kernel reset
// the connection and drop the answer.
const lingerTimeout = 5 * time.Second

// lingerMaxBytes bounds what one lingering connection reads and discards:
// 64 MiB covers any body a client sends by mistake; beyond it the connection
// is closed as before.
const lingerMaxBytes = 64 << 20

// maxLingering bounds the connections lingering at once, each a goroutine
// for at most lingerTimeout: beyond it a connection is closed at once.
const maxLingering = 256

// peerCheckInterval is how often a running request checks that its client
// is still connected: a tenth of a second wastes little of a plugin's time
// on an abandoned request and costs one non-blocking system call per tick.
const peerCheckInterval = 100 * time.Millisecond

// errClientGone is the cause of a request context cancelled because its
// client closed the connection.
var errClientGone = errors.New("api: the client closed the connection")

// listener wraps each accepted connection in a *conn, and waits out the
// accept errors that pass (out of file descriptors) instead of returning
// them: fasthttp retries only timeouts and returns any other error from
// Serve, which stopped the server the first time its clients used up its
// open-file limit.
type listener struct {
	net.Listener
	lingering *atomic.Int64
	// acceptErrors counts accept errors waited out.
	acceptErrors *atomic.Uint64
	// logf, when set, reports an accept error waited out, at most once a
	// minute.
	logf func(format string, args ...any)
	// lastLog is when logf last reported, in Unix nanoseconds.
	lastLog *atomic.Int64
}

// Accept backoff after an error that passes: from 5 ms, doubling, to 1 s,
// as Go's net/http waits; a connection closing frees a descriptor within
// that time.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// acceptLogInterval is how often a persisting accept error is logged.
const acceptLogInterval = time.Minute

func (l listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return &conn{Conn: c, lingering: l.lingering}, nil
		}
		if !temporaryAcceptError(err) {
			return nil, err
		}
		l.acceptErrors.Add(1)
		if now := time.Now().UnixNano(); l.logf != nil && now-l.lastLog.Load() > int64(acceptLogInterval) {
			l.lastLog.Store(now)
			l.logf("accepting connections failed, retrying: %v", err)
		}
		delay = min(max(2*delay, minAcceptDelay), maxAcceptDelay)
		time.Sleep(delay)
	}
}

// temporaryAcceptError reports whether err, from Accept, passes by itself:
// a process or system out of file descriptors, or a connection reset or
// aborted before it was accepted. A closed listener's error does not.
func temporaryAcceptError(err error) bool {
	var ne interface{ Temporary() bool }
	if errors.Is(err, net.ErrClosed) || !errors.As(err, &ne) {
		return false
	}
	return ne.Temporary()
}

// conn is an accepted connection that can linger on close and tell whether
// its peer has closed.
type conn struct {
	net.Conn
	lingering *atomic.Int64
	linger    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// lingerOnClose makes Close half-close the connection and read what the
// client still sends before closing it: set when an answer is written before
// the request's body was read.
func (c *conn) lingerOnClose() { c.linger.Store(true) }

func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		hc, ok := c.Conn.(interface{ CloseWrite() error })
		if !c.linger.Load() || !ok || c.lingering.Add(1) > maxLingering {
			if c.linger.Load() && ok {
				c.lingering.Add(-1)
			}
			c.closeErr = c.Conn.Close()
			return
		}
		// The answer is written: FIN tells the client so, and reading
		// its remaining body keeps the kernel from resetting the
		// connection under the answer.
		_ = hc.CloseWrite()
		go func() {
			defer c.lingering.Add(-1)
			_ = c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout))
			_, _ = io.CopyN(io.Discard, c.Conn, lingerMaxBytes)
			_ = c.Conn.Close()
		}()
	})
	return c.closeErr
}

// watchPeer cancels ctx with errClientGone once nc's client has closed the
// connection, checking every peerCheckInterval until stop is called. It
// watches nothing when nc cannot tell (not a socket, or a platform without
// peerClosed).
func watchPeer(nc net.Conn, cancel context.CancelCauseFunc) (stop func()) {
	c, ok := nc.(*conn)
	if !ok || !canPeek(c.Conn) {
		return func() {}
	}
	var stopped atomic.Bool
	var t *time.Timer
	var mu sync.Mutex
	check := func() {
		if stopped.Load() {
			return
		}
		if peerClosed(c.Conn) {
			cancel(errClientGone)
			return
		}
		mu.Lock()
		if !stopped.Load() {
			t.Reset(peerCheckInterval)
		}
		mu.Unlock()
	}
	mu.Lock()
	t = time.AfterFunc(peerCheckInterval, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped.Store(true)
		t.Stop()
		mu.Unlock()
	}
}
