package loadgen

import (
	"os"
	"testing"
	"time"
)

// TestPidCPUAgreesWithRusage reads this process's CPU time from /proc, as
// the report reads a server's, and compares it with getrusage around a
// busy loop.
func TestPidCPUAgreesWithRusage(t *testing.T) {
	pid := os.Getpid()
	p0, err := pidCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	r0 := processCPU()
	x := 0
	for processCPU()-r0 < 200*time.Millisecond {
		for i := range 100000 {
			x += i
		}
	}
	p1, err := pidCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	r := processCPU() - r0
	// /proc counts in 10 ms ticks.
	if d := (p1 - p0) - r; d < -30*time.Millisecond || d > 30*time.Millisecond {
		t.Fatalf("/proc says %v of CPU, getrusage %v (x=%d)", p1-p0, r, x)
	}
	if _, err := pidCPU(1 << 30); err == nil {
		t.Fatalf("pidCPU of a process that does not exist succeeded")
	}
	total, idle, steal, err := machineTimes()
	if err != nil || total <= 0 || idle < 0 || steal < 0 || idle+steal > total {
		t.Fatalf("machineTimes = %d %d %d %v", total, idle, steal, err)
	}
}

// TestReportGivesServerCPU runs against the in-process test server, whose
// process is this one.
func TestReportGivesServerCPU(t *testing.T) {
	_, url := startServer(t, 0)
	cfg := Config{URL: url, Concurrency: 2, Candidates: 50, Duration: 300 * time.Millisecond, Query: "q", ServerPID: os.Getpid(), Seed: 1}
	rep, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ServerCPUPerRequest <= 0 || rep.ClientCPUPerRequest <= 0 {
		t.Fatalf("server %v, client %v per request; want both positive", rep.ServerCPUPerRequest, rep.ClientCPUPerRequest)
	}
	if rep.MachineIdle < 0 || rep.MachineIdle > 1 || rep.MachineSteal < 0 || rep.MachineSteal > 1 {
		t.Fatalf("machine idle %v steal %v", rep.MachineIdle, rep.MachineSteal)
	}
	if _, err := Run(t.Context(), Config{URL: url, Concurrency: 1, Requests: 1, ServerPID: 1 << 30}); err == nil {
		t.Fatalf("a server pid that does not exist was accepted")
	}
}
