//go:build linux

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The slow and idle connections chaos run: slowloris clients trickling
// their headers or bodies and thousands of idle keep-alive connections,
// while normal clients keep being answered.

// openFileLimit returns pid's soft and hard limits of open files, from
// /proc/PID/limits.
func openFileLimit(t *testing.T, pid int) (soft, hard string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) >= 2 {
				return f[0], f[1]
			}
		}
	}
	t.Fatalf("no open-file limit in /proc/%d/limits", pid)
	return "", ""
}

// slowOutcome is what one kind of slow connection saw.
type slowOutcome struct {
	mu sync.Mutex
	// conns counts connections opened; closed those the server closed.
	conns, closed int
	// answered counts the closed ones answered with want's status first.
	answered int
	// held are the times from the connection's start (idle: from its
	// last answer) until the server closed it.
	held []time.Duration
	// other describes the first unexpected answer or error.
	other string
}

func (o *slowOutcome) record(held time.Duration, status int, want int, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed++
	o.held = append(o.held, held)
	switch {
	case status == want:
		o.answered++
	case o.other == "":
		o.other = fmt.Sprintf("status %d, error %v", status, err)
	}
}

// dial opens a connection to addr, counted, or records why it could not.
func (o *slowOutcome) dial(addr string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		if o.other == "" {
			o.other = "dial: " + err.Error()
		}
		return nil, err
	}
	o.conns++
	return c, nil
}

// statusOf reads an HTTP status line from r and skips the rest of the
// answer; 0 when none came.
func statusOf(r *bufio.Reader) int {
	line, err := r.ReadString('\n')
	if err != nil {
		return 0
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0
	}
	code, _ := strconv.Atoi(f[1])
	return code
}

// trickle opens connections to addr one after another until end, each
// sending head then one byte of tail every interval, and records when the
// server answers and closes it. A connection the server has not closed
// within limit is recorded as held that long.
func trickle(addr, head, tail string, interval, limit time.Duration, end time.Time, o *slowOutcome) {
	for time.Now().Before(end) {
		c, err := o.dial(addr)
		if err != nil {
			time.Sleep(interval)
			continue
		}
		start := time.Now()
		stop := make(chan struct{})
		go func() {
			if _, err := io.WriteString(c, head); err != nil {
				return
			}
			for i := 0; ; i = (i + 1) % len(tail) {
				select {
				case <-stop:
					return
				case <-time.After(interval):
				}
				if _, err := io.WriteString(c, tail[i:i+1]); err != nil {
					return
				}
			}
		}()
		c.SetReadDeadline(start.Add(limit))
		r := bufio.NewReader(c)
		status := statusOf(r)
		_, err = io.Copy(io.Discard, r) // until the server closes
		close(stop)
		c.Close()
		o.record(time.Since(start), status, http.StatusRequestTimeout, err)
	}
}

// idleKeepAlive keeps one keep-alive connection to addr idle until end is
// closed: one request, then nothing until the server closes it, then again
// on a new connection.
func idleKeepAlive(addr string, limit time.Duration, end <-chan struct{}, o *slowOutcome, ready *sync.WaitGroup) {
	first := true
	defer func() {
		if first {
			ready.Done()
		}
	}()
	for {
		select {
		case <-end:
			return
		default:
		}
		c, err := o.dial(addr)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c.SetDeadline(time.Now().Add(limit))
		r := bufio.NewReader(c)
		io.WriteString(c, "GET /health HTTP/1.1\r\nHost: rerank\r\n\r\n")
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			c.Close()
			o.record(0, 0, http.StatusOK, err)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answered := time.Now()
		if first {
			first = false
			ready.Done()
		}
		n, err := r.Read(make([]byte, 1)) // blocks until the server closes
		c.Close()
		if n > 0 {
			err = fmt.Errorf("the server sent %d bytes unasked", n)
		}
		status := resp.StatusCode
		if err != io.EOF {
			status = 0
		}
		o.record(time.Since(answered), status, http.StatusOK, err)
	}
}

// TestChaosSlowClients holds thousands of idle keep-alive connections and
// runs slowloris clients (headers trickled a byte at a time, bodies
// trickled) against a server, while normal clients send rerank requests:
// every normal request must be answered 200 with the right scores, every
// slow connection answered 408 and closed at the read timeout, every idle
// one closed at the idle timeout; the server's open-file limit must be
// raised to its hard limit.
func TestChaosSlowClients(t *testing.T) {
	requireRuntime(t)
	idle, slow, normal, duration := 1000, 100, 4, 10*time.Second
	readTimeout, idleTimeout := 2*time.Second, 8*time.Second
	if chaosLong() {
		idle, slow, normal, duration = 5000, 500, 8, 60*time.Second
		readTimeout, idleTimeout = 15*time.Second, 30*time.Second
	}
	// Every connection is a descriptor on both sides: raise this process's
	// soft limit to its hard one (Go does at start; said here since the
	// test depends on it) and fit the counts in it.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// 512 descriptors for the test binary's own files, the normal
	// clients' pools and the server's plugin.
	if need := uint64(idle + 2*slow + 512); lim.Cur < need {
		idle = max(100, int(lim.Cur)-2*slow-512)
		t.Logf("open-file limit %d: %d idle connections instead", lim.Cur, idle)
	}
	const deadline = 10 * time.Second
	s := startServer(t, []string{"ENABLE_PREDICTION_CACHE=false"}, "--model", modelDir(t, "tiny-bert"), "--timeout", "10",
		"--read-timeout", readTimeout.String(), "--idle-timeout", idleTimeout.String())
	s.waitHealth(t, "ok")
	pid := s.cmd.Process.Pid
	if soft, hard := openFileLimit(t, pid); soft != hard {
		t.Fatalf("the server's open-file limit is %s, below its hard limit %s: it must raise it at start", soft, hard)
	}
	soft, _ := openFileLimit(t, pid)
	addr := strings.TrimPrefix(s.url, "http://")

	// The normal clients' requests and the quiet run's scores.
	var reqs []loadRequest
	for _, rq := range prepareLoad(t, s, 8, 10) {
		if rq.route.path == "/v1/rerank" {
			reqs = append(reqs, rq)
		}
	}
	idleRSS := treeRSS(pid)

	// The idle connections first, all open before the rest starts.
	idleOut, headOut, bodyOut := &slowOutcome{}, &slowOutcome{}, &slowOutcome{}
	var ready, wg sync.WaitGroup
	idleEnd := make(chan struct{})
	ready.Add(idle)
	opening := time.Now()
	for range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			idleKeepAlive(addr, idleTimeout+deadline+time.Minute, idleEnd, idleOut, &ready)
		}()
	}
	ready.Wait()
	t.Logf("%d idle keep-alive connections opened in %v", idle, time.Since(opening).Round(time.Millisecond))
	end := time.Now().Add(duration)
	time.AfterFunc(duration, func() { close(idleEnd) })
	rss := sampleRSS(pid)
	var peakOpen atomic.Int64
	stopOpen := make(chan struct{})
	openDone := make(chan struct{})
	go func() {
		defer close(openDone)
		for {
			select {
			case <-stopOpen:
				return
			case <-time.After(500 * time.Millisecond):
			}
			if r, err := s.send("GET", "/health", nil); err == nil {
				var h struct {
					HTTP struct {
						Open int64 `json:"open_connections"`
					} `json:"http"`
				}
				if json.Unmarshal(r.body, &h) == nil && h.HTTP.Open > peakOpen.Load() {
					peakOpen.Store(h.HTTP.Open)
				}
			}
		}
	}()
	// Slowloris: headers a byte at a time, and bodies of 1,000 bytes a
	// byte at a time, each byte a fifth of the read timeout apart.
	interval := readTimeout / 5
	slowLimit := readTimeout + deadline + time.Minute
	for i := range 2 * slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				trickle(addr, "POST /v1/rerank HTTP/1.1\r\n", "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n", interval, slowLimit, end, headOut)
			} else {
				trickle(addr, "POST /v1/rerank HTTP/1.1\r\nHost: rerank\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
					`{"query":"q","candidates":["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}`, interval, slowLimit, end, bodyOut)
			}
		}()
	}
	hc := &http.Client{Timeout: deadline + 20*time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: normal}}
	defer hc.CloseIdleConnections()
	got := runOverload(hc, s.url, reqs, normal, time.Until(end))
	wg.Wait()
	close(stopOpen)
	<-openDone
	peak := rss.Stop()

	health := s.do(t, "GET", "/health", nil)
	var h struct {
		HTTP map[string]any `json:"http"`
	}
	json.Unmarshal(health.body, &h)
	report := func(name string, o *slowOutcome) string {
		return fmt.Sprintf("%s: %d connections, %d closed by the server (%d answered as expected) after p50 %v, max %v",
			name, o.conns, o.closed, o.answered, percentile(o.held, 0.5), percentile(o.held, 1))
	}
	t.Logf("%v, server open-file limit %s; read timeout %v, idle timeout %v", duration, soft, readTimeout, idleTimeout)
	t.Logf("%s; peak open connections (the server's count) %d", report("idle keep-alives", idleOut), peakOpen.Load())
	t.Logf("%s", report("slowloris headers", headOut))
	t.Logf("%s", report("slowloris bodies", bodyOut))
	t.Logf("normal clients: %d: %d answered 200 with the quiet run's scores, %d lost, %d wrong (codes %v), p50 %v, p99 %v, max %v",
		normal, got.ok, got.lost+got.shed, got.wrong, got.codes,
		percentile(got.okLatencies, 0.5), percentile(got.okLatencies, 0.99), percentile(got.okLatencies, 1))
	t.Logf("server+plugin RSS before the connections %s, peak %s (%.1f KiB per connection at the peak's count); /health http %v",
		mib(idleRSS), mib(peak), float64(peak-idleRSS)/1024/float64(max(1, peakOpen.Load())), h.HTTP)

	if got.lost != 0 || got.shed != 0 || got.wrong != 0 || got.ok == 0 {
		t.Fatalf("normal clients: %d answered, %d lost, %d shed, %d wrong; first: %s", got.ok, got.lost, got.shed, got.wrong, got.firstLost)
	}
	if p99 := percentile(got.okLatencies, 0.99); p99 > deadline {
		t.Fatalf("normal clients' p99 %v is past the %v deadline", p99, deadline)
	}
	// The timeouts are enforced: each slow connection is closed within
	// its read timeout and each idle one within its idle timeout, with a
	// slack for a loaded machine's timers.
	const slack = 5 * time.Second
	f := func(name string, o *slowOutcome, timeout time.Duration) {
		t.Helper()
		if o.conns == 0 || o.answered != o.closed || o.closed != o.conns {
			t.Fatalf("%s: %d connections, %d closed by the server, %d answered as expected; first other: %s", name, o.conns, o.closed, o.answered, o.other)
		}
		if worst := percentile(o.held, 1); worst > timeout+slack || percentile(o.held, 0.5) < timeout*9/10 {
			t.Fatalf("%s: held p50 %v, max %v; want about the %v timeout", name, percentile(o.held, 0.5), worst, timeout)
		}
	}
	f("slowloris headers", headOut, readTimeout)
	f("slowloris bodies", bodyOut, readTimeout)
	// An idle connection still open at the end was closed by the server
	// too (the loop runs until it is): the same check holds.
	f("idle keep-alives", idleOut, idleTimeout)
	// Nine in ten: an idle connection closed at its timeout is open again
	// a moment later, unless the sample falls in that moment.
	if peakOpen.Load() < int64(idle)*9/10 {
		t.Fatalf("the server counted at most %d open connections, far below the %d idle ones held", peakOpen.Load(), idle)
	}
}
