package backend

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
)

// ResidentBytes returns the resident memory of process pid in bytes, as
// ps(1) reports it (macOS has no /proc; ps is in every install).
func ResidentBytes(pid int) (int64, error) {
	out, err := exec.Command("ps", "-o", "rss=", "-p", strconv.Itoa(pid)).Output()
	if err != nil {
		return 0, fmt.Errorf("backend: resident memory of %d: ps: %w", pid, err)
	}
	// ps reports the resident set size in KiB.
	kb, err := strconv.ParseInt(string(bytes.TrimSpace(out)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("backend: resident memory of %d: ps said %q: %w", pid, out, err)
	}
	return kb << 10, nil
}
