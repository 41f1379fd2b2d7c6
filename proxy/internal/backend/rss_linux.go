package backend

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// ResidentBytes returns the resident memory of process pid in bytes, from
// the VmRSS line of /proc/<pid>/status.
func ResidentBytes(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("backend: resident memory of %d: %w", pid, err)
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		// "VmRSS:	  123456 kB": the kernel always reports kB.
		fields := bytes.Fields(rest)
		if len(fields) == 0 {
			break
		}
		kb, err := strconv.ParseInt(string(fields[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("backend: resident memory of %d: %w", pid, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("backend: resident memory of %d: no VmRSS in /proc/%d/status", pid, pid)
}
