//go:build !linux || !cgo

package ort

// keepFreedMemory does nothing outside glibc: other allocators keep their
// own policies.
func keepFreedMemory() {}

// releaseFreedMemory does nothing outside glibc.
func releaseFreedMemory() {}
