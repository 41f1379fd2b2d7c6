//go:build unix

package main

import "syscall"

// raiseOpenFileLimit raises the soft limit of open files to the hard limit,
// as Go's runtime already does at start on most Unix systems (kept explicit:
// every client connection is a descriptor), and returns the soft limit then
// in force; 0 when it cannot be read.
func raiseOpenFileLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	if l.Cur < l.Max {
		raised := l
		raised.Cur = l.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			l = raised
		}
	}
	return uint64(l.Cur)
}
