package models

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// A load that fails is tried again when its error may be transient (the
// network, the disk, a plugin killed while loading): the model stays in
// state loading, with its last error, the failed attempts and the time of
// the next one in its Status, and the attempts back off exponentially,
// with jitter, up to a cap, for as long as it takes. A load whose error
// cannot be cured by waiting (a 404 or 401 from the hub, a checksum
// mismatch after a fresh download, a graph ONNX Runtime refuses, a
// precision the backend lacks) fails at once, for good: state failed,
// Final in its Status.

// Transient reports whether a load that failed with err may succeed if
// tried again unchanged. It is true for network errors (refused, reset,
// unreachable, DNS, timeouts), disk errors that pass (ENOSPC, EDQUOT, EIO,
// out of file descriptors or memory), a hub's 408, 429 and 5xx answers
// and broken downloads, a plugin process that died while loading, and
// errors that say so themselves (a Transient() bool method); false for
// anything else, certificate errors and shutdown included.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	// The layer that knows says so: the hub for its HTTP answers and
	// broken downloads, the backend for a plugin that died while loading.
	var marked interface{ Transient() bool }
	if errors.As(err, &marked) {
		return marked.Transient()
	}
	// A certificate the system does not trust stays untrusted (issue 13's
	// image without CA certificates): waiting does not help.
	var unknownCA x509.UnknownAuthorityError
	var badCert x509.CertificateInvalidError
	var badHost x509.HostnameError
	if errors.As(err, &unknownCA) || errors.As(err, &badCert) || errors.As(err, &badHost) {
		return false
	}
	var timeout interface{ Timeout() bool }
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &timeout) && timeout.Timeout() {
		return true
	}
	var opErr *net.OpError
	var dnsErr *net.DNSError
	if errors.As(err, &opErr) || errors.As(err, &dnsErr) {
		return true
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) && (errors.Is(urlErr.Err, io.EOF) || errors.Is(urlErr.Err, io.ErrUnexpectedEOF)) {
		// The server closed the connection before or while answering.
		return true
	}
	for _, e := range transientErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	// A plugin's error crosses gRPC as its message only: a plugin that
	// could not write its conversion cache on a full disk says "no space
	// left on device" and nothing more.
	msg := err.Error()
	for _, e := range transientErrnos {
		if strings.Contains(msg, e.Error()) {
			return true
		}
	}
	return false
}

// transientErrnos are the system errors a load may fail with that can pass
// without anyone changing the configuration: a full disk or quota (a cache
// cleaned, another download finished), an I/O error of a network or
// flaky filesystem, running out of descriptors or memory while others
// hold them (the LLM beside a sidecar), and the network's failures.
var transientErrnos = []error{
	syscall.ENOSPC, syscall.EDQUOT, syscall.EIO,
	syscall.EAGAIN, syscall.EINTR, syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM,
	syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.ETIMEDOUT,
	syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENETDOWN, syscall.EPIPE,
}

// retryJitter is the relative spread of a retry's wait, ±20%: proxies that
// lost the hub at the same moment (a fleet sharing one mirror) do not come
// back at the same moment, while the schedule /health announces stays
// close to the doubling one.
const retryJitter = 0.2

// loadRetryDelay is the wait before the attempt that follows failed failed
// attempts: RestartDelay doubled for each failure after the first, capped
// at MaxRestartDelay, then spread by ±retryJitter (the cap included, so
// capped retries do not fall back into step).
func (r *Registry) loadRetryDelay(failed int) time.Duration {
	d := r.cfg.RestartDelay
	for i := 1; i < failed && d < r.cfg.MaxRestartDelay; i++ {
		d *= 2
	}
	d = min(d, r.cfg.MaxRestartDelay)
	return time.Duration(float64(d) * (1 - retryJitter + 2*retryJitter*rand.Float64()))
}
