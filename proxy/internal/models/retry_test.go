package models

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/hub"
	"github.com/rerank-sidecar/rerank/sdk"
)

func TestTransient(t *testing.T) {
	f := func(err error, want bool) {
		t.Helper()
		if got := Transient(err); got != want {
			t.Fatalf("Transient(%v) = %v, want %v", err, got, want)
		}
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	f(fmt.Errorf("serve: %w", &url.Error{Op: "Get", URL: "http://hub", Err: refused}), true)
	f(&url.Error{Op: "Get", URL: "http://hub", Err: io.EOF}, true)
	f(&net.DNSError{Err: "no such host", Name: "hub.example"}, true)
	f(fmt.Errorf("hub: %w", &hub.StatusError{What: "list a/b@main", Code: 503, Status: "503 Service Unavailable"}), true)
	f(&hub.StatusError{Code: 429, Status: "429 Too Many Requests"}, true)
	f(&hub.StatusError{Code: 404, Status: "404 Not Found"}, false)
	f(&hub.StatusError{Code: 401, Status: "401 Unauthorized"}, false)
	f(&hub.StatusError{Code: 403, Status: "403 Forbidden"}, false)
	f(fmt.Errorf("%w: offline (%w)", hub.ErrOffline, &hub.StatusError{Code: 404, Status: "404 Not Found"}), false)
	f(fmt.Errorf("%w: offline (%w)", hub.ErrOffline, refused), true)
	f(fmt.Errorf("hub: cannot write x.part: %w", &os.PathError{Op: "write", Path: "x.part", Err: syscall.ENOSPC}), true)
	f(&os.PathError{Op: "read", Path: "model.onnx", Err: syscall.EIO}, true)
	// A plugin's error crosses gRPC as its message.
	f(errors.New("backend: rerank-onnx-cpu cannot load /m: plugin: write /c/model.ort: no space left on device"), true)
	f(context.DeadlineExceeded, true)
	f(context.Canceled, false)
	f(&url.Error{Op: "Get", URL: "https://hub", Err: x509.UnknownAuthorityError{}}, false)
	f(fmt.Errorf("%w: model.onnx: got 1, want 2", hub.ErrChecksum), false)
	f(fmt.Errorf("backend: cannot load: %w", sdk.ErrInvalidInput), false)
	f(fmt.Errorf("backend: cannot load: precision bf16: %w", sdk.ErrUnavailable), false)
	f(&os.PathError{Op: "open", Path: "config.json", Err: syscall.ENOENT}, false)
	f(errors.New("onnx/model.onnx is not a model"), false)
}

func TestLoadRetryDelayDoublesUpToTheCapWithJitter(t *testing.T) {
	r := &Registry{cfg: Config{RestartDelay: time.Second, MaxRestartDelay: 30 * time.Second}}
	f := func(failed int, want time.Duration) {
		t.Helper()
		for range 100 {
			d := r.loadRetryDelay(failed)
			if lo, hi := time.Duration(float64(want)*(1-retryJitter)), time.Duration(float64(want)*(1+retryJitter)); d < lo || d > hi {
				t.Fatalf("after %d failures: %v, want %v ±%.0f%%", failed, d, want, retryJitter*100)
			}
		}
	}
	f(1, time.Second)
	f(2, 2*time.Second)
	f(3, 4*time.Second)
	f(5, 16*time.Second)
	f(6, 30*time.Second)
	f(1000, 30*time.Second)
}

// A load that fails with an error that may pass (the hub unreachable) is
// tried again, the model loading meanwhile with its last error and the
// failed attempts in its status and requests refused (503), until it loads
// (issue 13: a load failure was final).
func TestTransientLoadFailureIsRetried(t *testing.T) {
	l := newLauncher()
	l.fail["m"] = fmt.Errorf("serve: %w", &hub.StatusError{What: "list org/m@main", Code: 503, Status: "503 Service Unavailable"})
	l.failFirst["m"] = 2
	l.gate = make(chan struct{})
	r := newRegistry(t, l, 0, spec("m", Never))
	r.Start()
	m := r.Default()
	waitAttempts := func(n int) Status {
		t.Helper()
		limit := time.Now().Add(time.Minute)
		for {
			st := m.Status()
			if st.LoadAttempts == n {
				return st
			}
			if time.Now().After(limit) {
				t.Fatalf("never %d failed attempts: %+v", n, st)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for n := 1; n <= 2; n++ {
		l.gate <- struct{}{} // one launch goes, and fails
		st := waitAttempts(n)
		if st.State != Loading || st.Ready || st.Final || !strings.Contains(st.LastError, "503") ||
			!strings.Contains(st.Message, fmt.Sprintf("load attempt %d failed", n)) || !strings.Contains(st.Message, "trying again") {
			t.Fatalf("after %d failed attempts: %+v", n, st)
		}
		if _, _, err := r.Route(context.Background(), "m"); !errors.Is(err, sdk.ErrNotLoaded) {
			t.Fatalf("Route while retrying: %v, want ErrNotLoaded", err)
		}
	}
	l.gate <- struct{}{}
	st := waitState(t, m, Loaded)
	if st.LoadAttempts != 0 || st.LastError != "" || !st.NextRetry.IsZero() || st.Final {
		t.Fatalf("loaded after retries: %+v", st)
	}
	score(t, r, "m", "x")
}

// A load that fails with an error trying again cannot cure (a 404 repo) is
// final at once: failed, Final, one attempt.
func TestFinalLoadFailureIsNotRetried(t *testing.T) {
	l := newLauncher()
	l.fail["m"] = fmt.Errorf("%w: org/m (%w)", hub.ErrOffline, &hub.StatusError{What: "list org/m@main", Code: 404, Status: "404 Not Found"})
	r := newRegistry(t, l, 0, spec("m", Never))
	r.Start()
	st := waitState(t, r.Default(), Failed)
	if !st.Final || st.LoadAttempts != 1 || !strings.Contains(st.LastError, "404") || !st.NextRetry.IsZero() {
		t.Fatalf("failed status %+v", st)
	}
	// Nothing is planned; a retry would show as a second attempt.
	time.Sleep(50 * time.Millisecond)
	l.mu.Lock()
	attempts := l.attempts["m"]
	l.mu.Unlock()
	if attempts != 1 {
		t.Fatalf("%d attempts, want 1", attempts)
	}
}
