//go:build !linux

package loadgen

import (
	"errors"
	"time"
)

var errNoProc = errors.New("loadgen: server CPU and machine times are read from /proc, which only Linux has")

func pidCPU(int) (time.Duration, error) { return 0, errNoProc }

func machineTimes() (total, idle, steal int64, err error) { return 0, 0, 0, errNoProc }
