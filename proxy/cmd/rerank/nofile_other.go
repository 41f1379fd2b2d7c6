//go:build !unix

package main

// raiseOpenFileLimit reports no limit where there is no RLIMIT_NOFILE.
func raiseOpenFileLimit() uint64 { return 0 }
