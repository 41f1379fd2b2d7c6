// Command rerank is the reranking proxy and its tools: serve runs the HTTP
// server over a backend plugin; tokenize, testmodel, models and bench are the
// tools around it.
package main

import (
	"fmt"
	"os"
	"sort"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = "dev"

// command is one subcommand: its one-line summary and its entry point, which
// gets the arguments after the subcommand's name and returns the exit code.
type command struct {
	summary string
	run     func(args []string) int
}

var commands = map[string]command{
	"serve":     {"Run the HTTP reranking server over a backend plugin.", runServe},
	"tokenize":  {"Encode JSON-lines (query, document) pairs with a tokenizer.json, like tokref.", runTokenize},
	"testmodel": {"Write a model dir with a real cross-encoder graph and seeded random weights.", runTestmodel},
	"models":    {"Pull, list and locate models in the local cache.", runModels},
	"bench":     {"Load-test a server speaking the /v1/rerank API.", runBench},
	"version":   {"Print the version.", func([]string) int { fmt.Println(version); return 0 }},
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: rerank COMMAND [flags]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'rerank COMMAND -h' for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "rerank: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(c.run(os.Args[2:]))
}
