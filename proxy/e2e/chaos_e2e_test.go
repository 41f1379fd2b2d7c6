package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The chaos group: faults injected into a real server under load, each test
// reporting what was tried, how much, and what was lost (which must be
// nothing). `make test` runs short versions; `make chaos` (RERANK_CHAOS=1)
// the long ones that docs/RELIABILITY.md reports.

// chaosLong reports whether the long chaos runs were asked for.
func chaosLong() bool { return os.Getenv("RERANK_CHAOS") != "" }

// childPID returns the pid of parent's rerank-onnx-cpu child.
func childPID(parent int) (int, error) {
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", parent))
	if err != nil || len(files) == 0 {
		return 0, fmt.Errorf("cannot list child processes (no /proc): %v", err)
	}
	for _, name := range files {
		b, _ := os.ReadFile(name)
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.HasSuffix(exe, "rerank-onnx-cpu") {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no rerank-onnx-cpu child of %d", parent)
}

// chaosOutcome is what one load run saw.
type chaosOutcome struct {
	ok, failed, wrong int
	codes             map[int]int
	worst             time.Duration
	latencies         []time.Duration
	// restarts and kills are the fault's own figures, kept by the fault
	// function of chaosLoad.
	restarts []time.Duration
	kills    int
}

// summary says what was answered, what was lost and the latencies.
func (o *chaosOutcome) summary() string {
	return fmt.Sprintf("%d requests answered 200 with the clean run's scores, %d failed (%v), %d wrong scores; latency p50 %v, p99 %v, worst %v",
		o.ok, o.failed, o.codes, o.wrong, percentile(o.latencies, 0.5), percentile(o.latencies, 0.99), o.worst)
}

// check fails t unless every request was answered 200 with the clean run's
// scores within deadline (plus 5 s of slack for a loaded machine).
func (o *chaosOutcome) check(t *testing.T, deadline time.Duration) {
	t.Helper()
	if o.failed != 0 || o.wrong != 0 {
		t.Fatalf("lost %d requests (%v) and %d scores were wrong; want none", o.failed, o.codes, o.wrong)
	}
	if o.worst > deadline+5*time.Second {
		t.Fatalf("a request took %v, past its %v deadline", o.worst, deadline)
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(math.Ceil(p*float64(len(s))))-1)]
}

// chaosSet is a set of requests and the scores a clean run gave them.
type chaosSet struct {
	bodies [][]byte
	want   []map[int]float64
}

// newChaosSet scores n distinct requests of 10 candidates once on s,
// before any fault.
func newChaosSet(t *testing.T, s *server, n int) chaosSet {
	t.Helper()
	var set chaosSet
	for i := range n {
		cands := make([]string, 10)
		for j := range cands {
			cands[j] = fmt.Sprintf("document %d of request %d about topic %d", j, i, (i*7+j)%13)
		}
		b := []byte(rerankBody(t, map[string]any{"query": fmt.Sprintf("query number %d", i), "candidates": cands}))
		set.bodies = append(set.bodies, b)
		r := s.do(t, "POST", "/v1/rerank", b)
		if r.code != http.StatusOK {
			t.Fatalf("clean run: %d %s", r.code, r.body)
		}
		m := map[int]float64{}
		for _, res := range decodeRerank(t, r).Results {
			m[res.Index] = res.Score
		}
		set.want = append(set.want, m)
	}
	return set
}

// chaosLoad sends set's requests to s in a loop from clients for duration
// and checks every answer against the clean run's scores. fault, when not
// nil, runs on the test's goroutine meanwhile; it is given the run's end
// and may keep its figures in the outcome's fault fields. The clients stop
// at the end, or when fault returns after it.
func chaosLoad(t *testing.T, s *server, set chaosSet, clients int, duration, deadline time.Duration, fault func(end time.Time, out *chaosOutcome)) chaosOutcome {
	t.Helper()
	hc := &http.Client{Timeout: deadline + 20*time.Second}
	out := chaosOutcome{codes: map[int]int{}}
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for n := c; ; n += clients {
				select {
				case <-stop:
					return
				default:
				}
				i := n % len(set.bodies)
				start := time.Now()
				resp, err := hc.Post(s.url+"/v1/rerank", "application/json", bytes.NewReader(set.bodies[i]))
				code, wrong := -1, false
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
					if code == http.StatusOK {
						var got rerankReply
						if json.Unmarshal(b, &got) != nil || len(got.Results) != len(set.want[i]) {
							wrong = true
						}
						for _, res := range got.Results {
							if w, ok := set.want[i][res.Index]; !ok || math.Abs(w-res.Score) > 1e-4 {
								wrong = true
							}
						}
					}
				}
				el := time.Since(start)
				mu.Lock()
				out.codes[code]++
				out.latencies = append(out.latencies, el)
				out.worst = max(out.worst, el)
				switch {
				case code != http.StatusOK:
					out.failed++
				case wrong:
					out.wrong++
				default:
					out.ok++
				}
				mu.Unlock()
			}
		})
	}
	// The clients stop even when fault fails t.
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}()
	end := time.Now().Add(duration)
	if fault != nil {
		fault(end, &out)
	}
	time.Sleep(time.Until(end))
	close(stop)
	wg.Wait()
	return out
}

// modelLoads is the successful loads of the server's models, from
// /v1/models.
func modelLoads(t *testing.T, s *server) int {
	t.Helper()
	n := 0
	for _, m := range s.models(t) {
		n += m.Loads
	}
	return n
}

// TestChaosPluginKill SIGKILLs the plugin every 3 s while clients send
// requests: every request must be answered 200 within its deadline with the
// scores of a clean run (issue 13: a plugin crash costs latency, not
// answers). The long run (16 clients, 60 s) also compares the successes with
// a run without kills (≥ 80%) and reports restart times.
func TestChaosPluginKill(t *testing.T) {
	requireRuntime(t)
	clients, duration := 4, 10*time.Second
	if chaosLong() {
		clients, duration = 16, 60*time.Second
	}
	const deadline = 10 * time.Second
	s := startServer(t, []string{"ENABLE_PREDICTION_CACHE=false"}, "--model", modelDir(t, "tiny-bert"), "--timeout", "10")
	s.waitHealth(t, "ok")
	// 32 distinct requests of 10 candidates, scored once on a quiet server.
	set := newChaosSet(t, s, 32)

	kill := func(end time.Time, out *chaosOutcome) {
		for time.Now().Before(end) {
			time.Sleep(min(3*time.Second, time.Until(end)))
			if !time.Now().Before(end) {
				return
			}
			pid, err := childPID(s.cmd.Process.Pid)
			if err != nil {
				t.Errorf("kill %d: %v", out.kills+1, err)
				return
			}
			// The restart is over when the model has loaded in a new
			// plugin (/health is ok meanwhile: requests wait for it).
			before := modelLoads(t, s)
			killed := time.Now()
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Errorf("kill: %v", err)
				return
			}
			out.kills++
			for modelLoads(t, s) == before {
				if time.Since(killed) > time.Minute {
					t.Fatalf("the plugin did not come back within a minute")
				}
				time.Sleep(10 * time.Millisecond)
			}
			out.restarts = append(out.restarts, time.Since(killed))
		}
	}

	var base chaosOutcome
	if chaosLong() {
		base = chaosLoad(t, s, set, clients, duration, deadline, nil)
		t.Logf("no kills: %d clients for %v: %d requests answered 200 (p50 %v, p99 %v)",
			clients, duration, base.ok, percentile(base.latencies, 0.5), percentile(base.latencies, 0.99))
	}
	got := chaosLoad(t, s, set, clients, duration, deadline, kill)
	t.Logf("plugin SIGKILLed %d times, every 3 s, under %d clients for %v: %s; restart (kill to the model loaded in a new plugin) p50 %v, p99 %v",
		got.kills, clients, duration, got.summary(),
		percentile(got.restarts, 0.5), percentile(got.restarts, 0.99))
	if got.kills == 0 {
		t.Fatal("no kill happened")
	}
	got.check(t, deadline)
	if chaosLong() && float64(got.ok) < 0.8*float64(base.ok) {
		t.Fatalf("%d successes with kills, under 80%% of the %d without", got.ok, base.ok)
	}
}
