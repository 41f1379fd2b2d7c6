package loadgen

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseEndpoint(t *testing.T) {
	f := func(raw, addr, host, path string, tls, wantErr bool) {
		t.Helper()
		e, err := parseEndpoint(raw)
		if (err != nil) != wantErr {
			t.Fatalf("parseEndpoint(%q) error %v, want error %v", raw, err, wantErr)
		}
		if err != nil {
			return
		}
		if e.addr != addr || e.host != host || e.path != path || e.tls != tls {
			t.Fatalf("parseEndpoint(%q) = %+v", raw, e)
		}
	}
	f("http://127.0.0.1:8080/v1/rerank", "127.0.0.1:8080", "127.0.0.1:8080", "/v1/rerank", false, false)
	f("http://example.test/v1/rerank?x=1", "example.test:80", "example.test", "/v1/rerank?x=1", false, false)
	f("https://example.test", "example.test:443", "example.test", "/", true, false)
	f("http://[::1]:9/r", "[::1]:9", "[::1]:9", "/r", false, false)
	f("ftp://example.test/", "", "", "", false, true)
	f("http:///v1/rerank", "", "", "", false, true)
	f("127.0.0.1:8080", "", "", "", false, true)
}

// scripted is a TCP server that reads one request head and body per answer
// and writes the answers in order, one connection after another; it records
// the requests and how many connections it accepted. An answer ending in
// <close> closes the connection after it, one ending in <hold> keeps it open
// without a further answer until the test ends.
type scripted struct {
	ln       net.Listener
	requests chan string
	conns    chan struct{}
}

func startScripted(t *testing.T, answers ...string) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{ln: ln, requests: make(chan string, len(answers)), conns: make(chan struct{}, len(answers))}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for len(answers) > 0 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- struct{}{}
			br := bufio.NewReader(c)
			for len(answers) > 0 {
				req, ok := readRequest(br)
				if !ok {
					break
				}
				s.requests <- req
				a := answers[0]
				answers = answers[1:]
				closing, hold := strings.HasSuffix(a, "<close>"), strings.HasSuffix(a, "<hold>")
				a = strings.TrimSuffix(strings.TrimSuffix(a, "<close>"), "<hold>")
				if _, err := io.WriteString(c, a); err != nil || closing {
					break
				}
				if hold {
					<-done
				}
			}
			c.Close()
		}
	}()
	return s
}

// readRequest reads a request with a Content-Length body.
func readRequest(br *bufio.Reader) (string, bool) {
	var head strings.Builder
	n := 0
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return "", false
		}
		head.WriteString(l)
		if l == "\r\n" {
			break
		}
		if v, ok := strings.CutPrefix(l, "Content-Length: "); ok {
			for _, c := range strings.TrimSpace(v) {
				n = n*10 + int(c-'0')
			}
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return "", false
	}
	return head.String() + string(body), true
}

// transports runs f with the poller's connections and, where available,
// with blocking sockets.
func transports(t *testing.T, f func(t *testing.T, blocking bool)) {
	t.Run("poller", func(t *testing.T) { f(t, false) })
	if blockingAvailable {
		t.Run("blocking", func(t *testing.T) { f(t, true) })
	}
}

func TestConnAnswers(t *testing.T) { transports(t, testConnAnswers) }

func testConnAnswers(t *testing.T, blocking bool) {
	answers := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 2\r\nX-Other: a:b\r\n\r\n{}",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n",
		"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy",
		"HTTP/1.0 200 OK\r\n\r\nto the end<close>",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\n\n", // bare LF line ends, no length: body to EOF
	}
	s := startScripted(t, answers...)
	ep, err := parseEndpoint("http://" + s.ln.Addr().String() + "/v1/rerank")
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{ep: &ep, blocking: blocking, timeout: 5 * time.Second}
	defer c.close()
	f := func(wantCode int, wantBody string) {
		t.Helper()
		body := `{"query":"q"}`
		req := append(ep.requestHead(nil, len(body)), body...)
		code, got, err := c.do(req, 5*time.Second)
		if err != nil {
			t.Fatalf("do: %v", err)
		}
		if code != wantCode || string(got) != wantBody {
			t.Fatalf("got %d %q, want %d %q", code, got, wantCode, wantBody)
		}
		sent := <-s.requests
		if !strings.HasPrefix(sent, "POST /v1/rerank HTTP/1.1\r\nHost: ") || !strings.HasSuffix(sent, "\r\n\r\n"+body) {
			t.Fatalf("server got %q", sent)
		}
	}
	f(200, "hello")
	f(422, "{}")
	f(200, "abcdefg")
	f(429, "busy")
	if c.retryAfter != time.Second {
		t.Fatalf("Retry-After read as %v, want 1s", c.retryAfter)
	}
	f(200, "to the end")
	if c.retryAfter != 0 {
		t.Fatalf("Retry-After %v kept from an earlier answer", c.retryAfter)
	}
	f(204, "")
	f(200, "")
	// One connection for the first four answers (keep-alive, 100 Continue
	// skipped), a new one after "Connection: close", another after the
	// HTTP/1.0 answer that ran to EOF.
	if got := len(s.conns); got != 3 {
		t.Fatalf("the client opened %d connections, want 3", got)
	}
}

func TestConnErrors(t *testing.T) { transports(t, testConnErrors) }

func testConnErrors(t *testing.T, blocking bool) {
	f := func(answer string, timeout time.Duration, want string) {
		t.Helper()
		s := startScripted(t, answer)
		ep, err := parseEndpoint("http://" + s.ln.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		c := &conn{ep: &ep, blocking: blocking, timeout: timeout}
		defer c.close()
		_, _, err = c.do(ep.requestHead(nil, 0), timeout)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("answer %q: error %v, want one containing %q", answer, err, want)
		}
		if c.c != nil {
			t.Fatalf("answer %q: the connection was kept after an error", answer)
		}
	}
	f("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort<close>", time.Second, "EOF")
	f("SMTP ready\r\n\r\n", time.Second, "malformed status line")
	f("HTTP/1.1 2x0 OK\r\n\r\n", time.Second, "malformed status line")
	f("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", time.Second, "bad Content-Length")
	f("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", time.Second, "malformed header")
	f("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", time.Second, "over the")
	f("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", time.Second, "bad chunk size")
	f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel<hold>", 200*time.Millisecond, "timed out")
}

func TestDialErrors(t *testing.T) {
	transports(t, func(t *testing.T, blocking bool) {
		// A port nobody listens on: connection refused, not a timeout.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		ep, err := parseEndpoint("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		c := &conn{ep: &ep, blocking: blocking, timeout: time.Second}
		_, _, err = c.do(ep.requestHead(nil, 0), time.Second)
		if err == nil || errors.Is(err, errTimeout) || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("dial to a closed port: %v, want connection refused", err)
		}
	})
}
