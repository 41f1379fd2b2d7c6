package api

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
)

func TestConnLimitsDefaults(t *testing.T) {
	f := func(in, want ConnLimits) {
		t.Helper()
		s := New(Config{Conn: in})
		got := ConnLimits{
			ReadTimeout: s.srv.ReadTimeout, WriteTimeout: s.srv.WriteTimeout, IdleTimeout: s.srv.IdleTimeout,
			MaxConnections: s.srv.Concurrency, MaxConnsPerIP: s.srv.MaxConnsPerIP,
		}
		if got != want {
			t.Fatalf("New(Conn: %+v) set fasthttp's limits to %+v, want %+v", in, got, want)
		}
	}
	f(ConnLimits{}, DefaultConnLimits)
	f(ConnLimits{ReadTimeout: time.Second, MaxConnections: 5, MaxConnsPerIP: 2},
		ConnLimits{ReadTimeout: time.Second, WriteTimeout: DefaultConnLimits.WriteTimeout, IdleTimeout: DefaultConnLimits.IdleTimeout, MaxConnections: 5, MaxConnsPerIP: 2})
	f(ConnLimits{MaxConnsPerIP: -1}, DefaultConnLimits)
}

// readAnswer reads one HTTP answer from c.
func readAnswer(t *testing.T, c net.Conn) (int, string) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A client trickling its headers (slowloris) or its body is answered 408
// in FastAPI's shape once the read timeout passes, and counted; before, a
// timeout was answered 400 "Invalid HTTP request received.".
func TestSlowClientIsAnswered408(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s, addr := tcpServer(t, Config{Conn: ConnLimits{ReadTimeout: timeout}})
	f := func(name, sent string) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		start := time.Now()
		if _, err := io.WriteString(c, sent); err != nil {
			t.Fatal(err)
		}
		code, body := readAnswer(t, c)
		if code != http.StatusRequestTimeout || !strings.HasPrefix(body, `{"detail":"Request timeout`) {
			t.Fatalf("%s: %d %s, want 408 with a detail", name, code, body)
		}
		if el := time.Since(start); el < timeout {
			t.Fatalf("%s: answered after %v, before the %v read timeout", name, el, timeout)
		}
	}
	f("headers cut short", "POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-")
	f("body cut short", "POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\":")
	if n := s.Stats().ReadTimeouts; n != 2 {
		t.Fatalf("read_timeouts %d, want 2", n)
	}
}

// More connections than MaxConnections: the one over is refused at once
// and counted, and the server serves again once one closes.
func TestMaxConnections(t *testing.T) {
	s, addr := tcpServer(t, Config{Conn: ConnLimits{MaxConnections: 2}})
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		if code, body := readAnswer(t, c); code != http.StatusOK {
			t.Fatalf("/health: %d %s", code, body)
		}
		held = append(held, c)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if code, _ := readAnswer(t, c); code != http.StatusServiceUnavailable {
		t.Fatalf("the third connection was answered %d, want 503", code)
	}
	c.Close()
	if n := s.Stats().RejectedConnections; n != 1 {
		t.Fatalf("rejected_connections %d, want 1", n)
	}
	held[0].Close()
	// The server notices the close on its next read; poll until it does.
	limit := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(limit) {
			t.Fatalf("no connection served after one closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// flakyListener fails its first n accepts with err.
type flakyListener struct {
	net.Listener
	n   atomic.Int32
	err error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// Running out of file descriptors (EMFILE at accept) is waited out: fasthttp
// returned it from Serve, which stopped the server.
func TestAcceptWaitsOutTemporaryErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	fl := &flakyListener{Listener: ln, err: emfile}
	fl.n.Store(3)
	s := New(Config{Service: rerank.New(rerank.Single("org/test-model", &fakeScorer{}), rerank.Limits{MaxCandidates: 10, MaxCandidateChars: 100}, "org/test-model")})
	done := make(chan error, 1)
	go func() { done <- s.Serve(fl) }()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + ln.Addr().String() + "/health")
	if err != nil {
		t.Fatalf("the server stopped after EMFILE: %v (Serve: %v)", err, func() error {
			select {
			case err := <-done:
				return err
			default:
				return nil
			}
		}())
	}
	resp.Body.Close()
	if n := s.Stats().AcceptErrors; n != 3 {
		t.Fatalf("accept_errors %d, want 3", n)
	}
	ln.Close()
	if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("Serve after close: %v", err)
	}
	if temporaryAcceptError(net.ErrClosed) || temporaryAcceptError(errors.New("x")) || !temporaryAcceptError(emfile) {
		t.Fatal("temporaryAcceptError misclassifies")
	}
}

// A body over the limit, refused before it is read, is answered in the
// shape of its path's route: Cohere's {"message"} on /v2/rerank, whose
// clients read that key only; FastAPI's {"detail"} on the seed's route and
// on /rerank. Before, every route got {"detail"}. A request whose headers
// or body failed to read comes without its path (fasthttp resets the
// request on those errors) and keeps FastAPI's shape everywhere.
func TestTransportErrorsInTheRoutesShape(t *testing.T) {
	_, addr := tcpServer(t, Config{MaxBodyBytes: 1 << 10, Conn: ConnLimits{ReadTimeout: 300 * time.Millisecond}})
	f := func(path, sent string, wantCode int, wantPrefix string) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, strings.ReplaceAll(sent, "PATH", path)); err != nil {
			t.Fatal(err)
		}
		code, body := readAnswer(t, c)
		if code != wantCode || !strings.HasPrefix(body, wantPrefix) {
			t.Fatalf("%s %q: %d %s, want %d %s…", path, sent, code, body, wantCode, wantPrefix)
		}
	}
	big := strings.Repeat("a", 2<<10)
	tooLarge := fmt.Sprintf("POST PATH HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(big), big)
	slow := "POST PATH HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\":"
	bad := "POST PATH HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n"
	f("/v2/rerank", tooLarge, http.StatusRequestEntityTooLarge, `{"message":"Request body too large`)
	f("/v1/rerank", tooLarge, http.StatusRequestEntityTooLarge, `{"detail":"Request body too large`)
	f("/rerank", tooLarge, http.StatusRequestEntityTooLarge, `{"detail":"Request body too large`)
	f("/v2/rerank", slow, http.StatusRequestTimeout, `{"detail":"Request timeout`)
	f("/v2/rerank", bad, http.StatusBadRequest, `{"detail":"Invalid HTTP request`)
}
