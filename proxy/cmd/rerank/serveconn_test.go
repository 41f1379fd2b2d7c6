package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/proxy/internal/api"
)

func TestConnFlags(t *testing.T) {
	f := func(args []string, env map[string]string, nofile uint64, want api.ConnLimits) {
		t.Helper()
		c, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Fatalf("parseServe(%q, %v): %v", args, env, err)
		}
		if got := c.conn.limits(nofile, hclog.NewNullLogger()); got != want {
			t.Fatalf("parseServe(%q, %v) with %d open files: %+v, want %+v", args, env, nofile, got, want)
		}
	}
	d := api.DefaultConnLimits
	f(nil, nil, 0, d)
	f(nil, nil, 1<<20, d)
	withConns := func(n int) api.ConnLimits { l := d; l.MaxConnections = n; return l }
	// Lowered to fit the open-file limit, keeping spare descriptors.
	f(nil, nil, 4096, withConns(4096-spareDescriptors))
	f(nil, nil, 1024, withConns(1024-512))
	f([]string{"--max-connections", "100"}, nil, 1024, withConns(100))
	f(nil, map[string]string{
		"RERANK_READ_TIMEOUT": "5", "RERANK_WRITE_TIMEOUT": "2.5", "RERANK_IDLE_TIMEOUT": "1m",
		"RERANK_MAX_CONNECTIONS": "300", "RERANK_MAX_CONNS_PER_IP": "50",
	}, 0, api.ConnLimits{ReadTimeout: 5 * time.Second, WriteTimeout: 2500 * time.Millisecond, IdleTimeout: time.Minute, MaxConnections: 300, MaxConnsPerIP: 50})
	// A flag wins over its environment variable.
	f([]string{"--read-timeout", "500ms"}, map[string]string{"RERANK_READ_TIMEOUT": "5"}, 0,
		api.ConnLimits{ReadTimeout: 500 * time.Millisecond, WriteTimeout: d.WriteTimeout, IdleTimeout: d.IdleTimeout, MaxConnections: d.MaxConnections})

	for _, bad := range [][]string{{"--max-connections", "0"}, {"--max-conns-per-ip", "-1"}, {"--read-timeout", "0"}, {"--idle-timeout", "soon"}} {
		_, err := parseServe(bad, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(bad[0], "--")) {
			t.Fatalf("%q: err = %v, want one naming the flag", bad, err)
		}
	}
}
