package main

import (
	"net/http"
	"net/http/pprof"

	"github.com/hashicorp/go-hclog"
)

// servePprof serves Go's profiling endpoints under /debug/pprof/ on addr, on
// a mux of its own so that nothing else is exposed there.
func servePprof(addr string, logger hclog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		logger.Info("serving profiles", "addr", addr)
		if err := http.ListenAndServe(addr, mux); err != nil {
			logger.Error("pprof listener stopped", "addr", addr, "error", err)
		}
	}()
}
