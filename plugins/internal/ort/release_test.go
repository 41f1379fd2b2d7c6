package ort

import (
	"testing"
	"time"
)

// TestReleaser checks that the release runs once after the last of
// overlapping calls ends, and again after a later call.
func TestReleaser(t *testing.T) {
	released := make(chan struct{}, 4)
	r := &releaser{after: 5 * time.Millisecond, release: func() { released <- struct{}{} }}
	wait := func(what string) {
		t.Helper()
		select {
		case <-released:
		case <-time.After(30 * time.Second):
			t.Fatalf("no release %s", what)
		}
	}
	r.begin()
	r.begin()
	r.end()
	// One call is still active: the release waits for it.
	select {
	case <-released:
		t.Fatal("released while a call was active")
	case <-time.After(50 * time.Millisecond):
	}
	r.end()
	wait("after the last call ended")
	r.begin()
	r.end()
	wait("after a later call")
	select {
	case <-released:
		t.Fatal("released twice for one idle spell")
	case <-time.After(50 * time.Millisecond):
	}
}
