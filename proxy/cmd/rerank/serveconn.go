package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/proxy/internal/api"
)

// connFlags are the serve flags bounding client connections.
type connFlags struct {
	readTimeout    time.Duration
	writeTimeout   time.Duration
	idleTimeout    time.Duration
	maxConnections int
	maxConnsPerIP  int
}

// connFlagsOn defines the connection flags on fs and records their
// environment variables in env.
func connFlagsOn(fs *flag.FlagSet, c *connFlags, env map[string]string) {
	d := api.DefaultConnLimits
	dur := func(p *time.Duration, def time.Duration, name, envName, help string) {
		*p = def
		fs.Var((*secondsValue)(p), name, help+" Environment: "+envName+".")
		env[name] = envName
	}
	num := func(p *int, name, envName string, def int, help string) {
		fs.IntVar(p, name, def, help+" Environment: "+envName+".")
		env[name] = envName
	}
	dur(&c.readTimeout, d.ReadTimeout, "read-timeout", "RERANK_READ_TIMEOUT",
		"The time a client has to send one request, headers and body, in seconds or as a duration: from the opening of the connection for its first request, from the request's first byte for the next ones. A client still sending then (a slowloris, or a link too slow for its body) is answered 408 and disconnected. Default 60 seconds: a 2 MiB body (the default --max-body-bytes) arrives within it at 35 KB/s.")
	dur(&c.writeTimeout, d.WriteTimeout, "write-timeout", "RERANK_WRITE_TIMEOUT",
		"The time a client has to read one answer once it is ready, in seconds or as a duration; a client that reads nothing for this long is disconnected. Default 30 seconds: an answer is tens of KB, written at once to a client that reads.")
	dur(&c.idleTimeout, d.IdleTimeout, "idle-timeout", "RERANK_IDLE_TIMEOUT",
		"How long a keep-alive connection may wait for its next request before the server closes it, in seconds or as a duration. Default 75 seconds: longer than the pools of reverse proxies and HTTP clients keep theirs (nginx 60 s), so that they close first and never send on a connection the server is closing.")
	num(&c.maxConnections, "max-connections", "RERANK_MAX_CONNECTIONS", d.MaxConnections,
		"The most client connections served at once, idle keep-alives included; one more is answered 503 and closed. It is lowered to fit the process's open-file limit (which the server raises to its hard limit at start), keeping 640 descriptors for the plugins, Redis, files and connections lingering after a 413. Default 10000: thousands of idle keep-alives, each costing about 80 KiB of memory (docs/RELIABILITY.md).")
	num(&c.maxConnsPerIP, "max-conns-per-ip", "RERANK_MAX_CONNS_PER_IP", d.MaxConnsPerIP,
		"The most connections from one client address; more are closed at once. Default 0: no bound, because a sidecar or per-node proxy commonly sees every request from one address (the local application, an ingress, a load balancer).")
}

// validate checks the connection flags.
func (c *connFlags) validate() error {
	switch {
	case c.maxConnections < 1:
		return fmt.Errorf("serve: --max-connections must be at least 1, got %d", c.maxConnections)
	case c.maxConnsPerIP < 0:
		return fmt.Errorf("serve: --max-conns-per-ip must not be negative, got %d", c.maxConnsPerIP)
	}
	return nil
}

// spareDescriptors are the open files kept from --max-connections: up to
// 256 connections lingering after a 413 (api's maxLingering), and 384 for
// the plugins' pipes and gRPC connections, the Redis pool, the listeners and
// the model and log files.
const spareDescriptors = 640

// limits returns the api's connection limits: the flags, with
// --max-connections lowered to fit an open-file limit of nofile (0:
// unknown), logged when lowered.
func (c *connFlags) limits(nofile uint64, logger hclog.Logger) api.ConnLimits {
	l := api.ConnLimits{
		ReadTimeout: c.readTimeout, WriteTimeout: c.writeTimeout, IdleTimeout: c.idleTimeout,
		MaxConnections: c.maxConnections, MaxConnsPerIP: c.maxConnsPerIP,
	}
	if nofile == 0 {
		return l
	}
	fit := max(1, int64(nofile)-min(int64(nofile)/2, spareDescriptors))
	if int64(l.MaxConnections) > fit {
		logger.Warn("--max-connections lowered to fit the open-file limit; raise the limit (ulimit -n, LimitNOFILE=) to serve more",
			"max_connections", fit, "asked", l.MaxConnections, "open_file_limit", nofile)
		l.MaxConnections = int(fit)
	}
	return l
}
