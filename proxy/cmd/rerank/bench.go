package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/loadgen"
)

// runBench load-tests a server speaking the /v1/rerank API and prints
// throughput, latency percentiles and counts per status code.
func runBench(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	url := fs.String("url", "http://127.0.0.1:8080/v1/rerank", "The rerank endpoint to load, this server's or any server speaking the same API.")
	concurrency := fs.Int("concurrency", 4, "The number of concurrent clients, each keeping one request in flight.")
	candidates := fs.Int("candidates", 20, "The number of candidate documents in every request.")
	docLength := fs.String("doc-length", "mixed", "The distribution of document lengths in words: fixed:N, uniform:A-B, or mixed (50% 8-32 words, 35% 48-128, 15% 160-320).")
	duration := fs.Duration("duration", 10*time.Second, "How long to run, for example 30s; ignored when --requests is set.")
	requests := fs.Int("requests", 0, "The number of requests to send in all; 0 runs for --duration instead.")
	query := fs.String("query", "how do rerankers order search results", "The query of every request.")
	model := fs.String("model", "", "The model field sent with every request; empty sends none.")
	seed := fs.Uint64("seed", 1, "The seed of the document generator, so that runs are repeatable.")
	timeout := fs.Duration("timeout", 30*time.Second, "The client-side limit of one request; requests past it count as \"timeout\".")
	pool := fs.Int("pool", 0, "Draw documents from a fixed pool of this many so that repeats can hit a cache; 0 makes every document new.")
	serverPID := fs.Int("server-pid", 0, "The process id of the server when it runs on this machine: the report then gives its CPU time per request (Linux only).")
	honorRetryAfter := fs.Bool("honor-retry-after", false, "After a 429 with a Retry-After header, wait that long before the client's next request, as a polite client does; by default the next request goes out at once.")
	asJSON := fs.Bool("json", false, "Print the report as one JSON object instead of text.")
	cpuProfile := fs.String("cpuprofile", "", "Write a Go CPU profile of the load generator itself to this file, to see what the client costs on a machine it shares with the server.")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	lengths, err := loadgen.ParseLengths(*docLength)
	if err != nil {
		fmt.Fprintf(os.Stderr, "rerank bench: %v\n", err)
		return 2
	}
	cfg := loadgen.Config{
		URL: *url, Concurrency: *concurrency, Candidates: *candidates, Lengths: lengths,
		Query: *query, Model: *model, Seed: *seed, Timeout: *timeout, Pool: *pool, ServerPID: *serverPID, HonorRetryAfter: *honorRetryAfter,
	}
	if *requests > 0 {
		cfg.Requests = *requests
	} else {
		cfg.Duration = *duration
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "rerank bench: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "rerank bench: cpu profile: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := loadgen.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "rerank bench: %v\n", err)
		return 2
	}
	if *asJSON {
		if err := json.NewEncoder(os.Stdout).Encode(&rep); err != nil {
			fmt.Fprintf(os.Stderr, "rerank bench: %v\n", err)
			return 1
		}
	} else {
		rep.Print(os.Stdout)
	}
	if rep.Requests == 0 {
		fmt.Fprintln(os.Stderr, "rerank bench: no request finished")
		return 1
	}
	return 0
}
