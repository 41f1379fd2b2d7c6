//go:build !unix

package api

import "net"

// canPeek reports whether peerClosed can look at nc's socket: not on this
// platform, where a request runs to its deadline after its client left.
func canPeek(net.Conn) bool { return false }

// peerClosed is never true on this platform.
func peerClosed(net.Conn) bool { return false }
