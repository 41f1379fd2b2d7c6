//go:build unix

package api

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// canPeek reports whether peerClosed can look at nc's socket.
func canPeek(nc net.Conn) bool {
	_, ok := nc.(syscall.Conn)
	return ok
}

// peerClosed reports whether nc's peer has closed the connection (or reset
// it): a non-blocking peek reads end of file. Bytes the peer sent meanwhile
// (a pipelined request) stay unread for the server.
func peerClosed(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	var buf [1]byte
	cerr := rc.Control(func(fd uintptr) {
		n, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == nil:
			closed = n == 0
		case err == unix.EAGAIN || err == unix.EINTR:
		default:
			// ECONNRESET and the like: nobody is there to answer.
			closed = true
		}
	})
	return cerr == nil && closed
}
