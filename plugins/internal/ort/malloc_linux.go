//go:build linux && cgo

package ort

/*
#include <malloc.h>
*/
import "C"

// mallocMmapThreshold is the block size from which glibc's malloc maps
// memory of its own for each allocation and unmaps it on free: 32 MiB,
// glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit), so that the
// tensors of a run on a small model (MiniLM: a few MiB each) are reused
// from the heap instead of being mapped, faulted in and zeroed anew by
// every run.
const mallocMmapThreshold = 32 << 20

// mallocTrimThreshold is how much free memory glibc's malloc keeps at the
// top of a heap before giving it back: 1 GiB, so it never trims between
// runs; releaseFreedMemory gives it back once the engine is idle.
const mallocTrimThreshold = 1 << 30

// keepFreedMemory makes glibc's malloc keep the memory a run frees for the
// next run (mallocMmapThreshold, mallocTrimThreshold). With ONNX
// Runtime's CPU arena off, every run otherwise allocated its activations
// afresh from the kernel: page faults were 15% of the plugin's CPU time on
// the MiniLM shape (docs/BENCHMARKS.md, "Speed (issue 14)").
func keepFreedMemory() {
	C.mallopt(C.M_MMAP_THRESHOLD, mallocMmapThreshold)
	C.mallopt(C.M_TRIM_THRESHOLD, mallocTrimThreshold)
}

// releaseFreedMemory gives the memory malloc keeps free back to the system
// (malloc_trim: every arena, whole free pages inside the heaps too).
func releaseFreedMemory() { C.malloc_trim(0) }
