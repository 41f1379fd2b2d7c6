//go:build !linux && !darwin

package backend

import (
	"errors"
	"runtime"
)

// ResidentBytes is not implemented on this system: it always fails.
func ResidentBytes(pid int) (int64, error) {
	return 0, errors.New("backend: resident memory is not measured on " + runtime.GOOS)
}
