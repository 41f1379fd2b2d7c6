package loadgen

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"time"
)

// The load generator's HTTP client is a minimal HTTP/1.1 keep-alive client,
// one connection per worker and one request in flight on it, like wrk or hey
// without pipelining. It exists because the generator shares the machine
// with the server it measures: a general-purpose client (with its header
// maps, pools and body copies) cost as much CPU per request as the server's
// cached path, and every microsecond it spends is taken from the server.
// A request goes out in one write of bytes built ahead; the answer is read
// with one bufio.Reader and only its status line, Content-Length,
// Transfer-Encoding and Connection headers are looked at.

// maxHeaderBytes bounds the response head the client accepts: servers of
// this API send a few hundred bytes.
const maxHeaderBytes = 64 << 10

// maxBodyBytes bounds a response body: the answer for 200 candidates is
// about 10 KB, and 16 MiB leaves room for any server's error pages.
const maxBodyBytes = 16 << 20

// readBufferSize is the connection's read buffer: one answer for 20
// candidates (about 1 KB) or an error body fits in one read.
const readBufferSize = 16 << 10

// endpoint is a parsed request target.
type endpoint struct {
	addr   string // host:port to dial
	host   string // the Host header
	path   string // path and query
	tls    bool
	server string // for TLS: the name to verify
}

func parseEndpoint(raw string) (endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("loadgen: URL %q: %w", raw, err)
	}
	var e endpoint
	switch u.Scheme {
	case "http":
	case "https":
		e.tls = true
	default:
		return endpoint{}, fmt.Errorf("loadgen: URL %q: want http:// or https://", raw)
	}
	if u.Host == "" {
		return endpoint{}, fmt.Errorf("loadgen: URL %q has no host", raw)
	}
	e.host = u.Host
	e.server = u.Hostname()
	e.addr = u.Host
	if u.Port() == "" {
		port := "80"
		if e.tls {
			port = "443"
		}
		e.addr = net.JoinHostPort(u.Hostname(), port)
	}
	e.path = u.RequestURI()
	return e, nil
}

// requestHead returns the head of a POST of a JSON body of n bytes.
func (e *endpoint) requestHead(dst []byte, n int) []byte {
	dst = append(dst, "POST "...)
	dst = append(dst, e.path...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, e.host...)
	dst = append(dst, "\r\nUser-Agent: rerank-bench\r\nContent-Type: application/json\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, "\r\n\r\n"...)
}

// stream is a connection as conn uses it.
type stream interface {
	io.ReadWriteCloser
	SetDeadline(t time.Time) error
}

// conn is one worker's connection, dialled on first use and again after
// any error or a "Connection: close".
type conn struct {
	ep *endpoint
	// blocking dials blocking sockets (see blocking_sock.go) for plain
	// HTTP, with timeout as their per-call limit.
	blocking bool
	timeout  time.Duration
	c        stream
	br       *bufio.Reader
	body     []byte // the last response body, reused
	// retryAfter is the last answer's Retry-After in seconds, 0 when it
	// had none (or gave a date, which this client does not parse).
	retryAfter time.Duration
}

// errTimeout marks a request that ran past its deadline.
var errTimeout = errors.New("loadgen: request timed out")

// do sends req (head and body, already encoded) and returns the status code
// and body of the answer, which stays valid until the next call.
func (c *conn) do(req []byte, timeout time.Duration) (int, []byte, error) {
	deadline := time.Now().Add(timeout)
	if c.c == nil {
		if err := c.dial(deadline); err != nil {
			return 0, nil, err
		}
	}
	if err := c.c.SetDeadline(deadline); err != nil {
		c.close()
		return 0, nil, err
	}
	code, body, keep, err := c.roundTrip(req)
	if err != nil {
		c.close()
		var ne net.Error
		if errors.Is(err, errTimeout) || (errors.As(err, &ne) && ne.Timeout()) {
			return 0, nil, errTimeout
		}
		return 0, nil, err
	}
	if !keep {
		c.close()
	}
	return code, body, nil
}

func (c *conn) dial(deadline time.Time) error {
	d := net.Dialer{Deadline: deadline}
	var nc stream
	var err error
	if c.blocking && !c.ep.tls {
		var bs *blockingSock
		if bs, err = dialBlocking(c.ep.addr, c.timeout); err == nil {
			nc = bs
		}
	} else if c.ep.tls {
		nc, err = (&tls.Dialer{NetDialer: &d, Config: &tls.Config{ServerName: c.ep.server}}).Dial("tcp", c.ep.addr)
	} else {
		nc, err = d.Dial("tcp", c.ep.addr)
	}
	if err != nil {
		var ne net.Error
		if errors.Is(err, errTimeout) || (errors.As(err, &ne) && ne.Timeout()) {
			return errTimeout
		}
		return err
	}
	c.c = nc
	if c.br == nil {
		c.br = bufio.NewReaderSize(nc, readBufferSize)
	} else {
		c.br.Reset(nc)
	}
	return nil
}

func (c *conn) close() {
	if c.c != nil {
		_ = c.c.Close()
		c.c = nil
	}
}

// roundTrip writes req and reads one response; keep is false when the
// server asked to close the connection.
func (c *conn) roundTrip(req []byte) (code int, body []byte, keep bool, err error) {
	if _, err := c.c.Write(req); err != nil {
		return 0, nil, false, err
	}
	// Skip 1xx answers (100 Continue) until the final one.
	var length int
	var chunked bool
	for {
		code, length, chunked, keep, err = c.readHead()
		if err != nil {
			return 0, nil, false, err
		}
		if code >= 200 {
			break
		}
	}
	switch {
	case chunked:
		body, err = c.readChunked()
	case length >= 0:
		if length > maxBodyBytes {
			return 0, nil, false, fmt.Errorf("loadgen: response body of %d bytes is over the %d-byte limit", length, maxBodyBytes)
		}
		body = grow(c.body, length)
		_, err = io.ReadFull(c.br, body)
	default:
		// No length: the body runs to the end of the connection.
		body, err = c.readToEOF()
		keep = false
	}
	if err != nil {
		return 0, nil, false, err
	}
	c.body = body
	return code, body, keep, nil
}

// readHead reads a status line and headers; length is -1 when the answer
// has no Content-Length.
func (c *conn) readHead() (code, length int, chunked, keep bool, err error) {
	line, err := c.line()
	if err != nil {
		return 0, 0, false, false, err
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, 0, false, false, fmt.Errorf("loadgen: malformed status line %q", line)
	}
	code, err = strconv.Atoi(string(line[9:12]))
	if err != nil || code < 100 {
		return 0, 0, false, false, fmt.Errorf("loadgen: malformed status line %q", line)
	}
	keep = line[7] == '1' // HTTP/1.1 keeps the connection by default, 1.0 closes it
	length = -1
	c.retryAfter = 0
	read := len(line)
	for {
		h, err := c.line()
		if err != nil {
			return 0, 0, false, false, err
		}
		if read += len(h); read > maxHeaderBytes {
			return 0, 0, false, false, fmt.Errorf("loadgen: response head over %d bytes", maxHeaderBytes)
		}
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, 0, false, false, fmt.Errorf("loadgen: malformed header %q", h)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 {
				return 0, 0, false, false, fmt.Errorf("loadgen: bad Content-Length %q", value)
			}
			length = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Retry-After")):
			if n, err := strconv.Atoi(string(value)); err == nil && n > 0 {
				c.retryAfter = time.Duration(n) * time.Second
			}
		case bytes.EqualFold(name, []byte("Connection")):
			if bytes.EqualFold(value, []byte("close")) {
				keep = false
			} else if bytes.EqualFold(value, []byte("keep-alive")) {
				keep = true
			}
		}
	}
	if code == 204 || code == 304 {
		length = 0
	}
	return code, length, chunked, keep, nil
}

// line reads one CRLF- or LF-terminated line without its terminator; it is
// valid until the next read.
func (c *conn) line() ([]byte, error) {
	l, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("loadgen: response header line over %d bytes", readBufferSize)
		}
		return nil, err
	}
	l = l[:len(l)-1]
	if n := len(l); n > 0 && l[n-1] == '\r' {
		l = l[:n-1]
	}
	return l, nil
}

// readChunked reads a chunked body and its trailers.
func (c *conn) readChunked() ([]byte, error) {
	body := c.body[:0]
	for {
		l, err := c.line()
		if err != nil {
			return nil, err
		}
		if i := bytes.IndexByte(l, ';'); i >= 0 {
			l = l[:i] // chunk extensions
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(l)), 16, 31)
		if err != nil {
			return nil, fmt.Errorf("loadgen: bad chunk size %q", l)
		}
		if n == 0 {
			break
		}
		if len(body)+int(n) > maxBodyBytes {
			return nil, fmt.Errorf("loadgen: response body over the %d-byte limit", maxBodyBytes)
		}
		start := len(body)
		body = grow(body, start+int(n))
		if _, err := io.ReadFull(c.br, body[start:]); err != nil {
			return nil, err
		}
		if l, err := c.line(); err != nil || len(l) != 0 {
			return nil, fmt.Errorf("loadgen: chunk not followed by CRLF")
		}
	}
	for { // trailers up to the blank line
		l, err := c.line()
		if err != nil {
			return nil, err
		}
		if len(l) == 0 {
			return body, nil
		}
	}
}

func (c *conn) readToEOF() ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(c.br, maxBodyBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxBodyBytes {
		return nil, fmt.Errorf("loadgen: response body over the %d-byte limit", maxBodyBytes)
	}
	return body, nil
}

// grow returns b resized to n bytes, keeping its contents and reusing its
// array when it is large enough.
func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]byte, n, max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}
