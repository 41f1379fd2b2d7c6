package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// tokenizeFlags are the flags of `rerank tokenize`.
type tokenizeFlags struct {
	tokenizer  string
	maxLength  int
	truncation string
}

// runTokenize encodes JSON-lines {"query","document"} pairs from stdin with a
// tokenizer.json and writes one JSON line per pair to stdout, the same
// interface as the reference tool tokref, so the two can be diffed.
func runTokenize(args []string) int {
	fs := flag.NewFlagSet("tokenize", flag.ContinueOnError)
	var f tokenizeFlags
	fs.StringVar(&f.tokenizer, "tokenizer", "", "Path of the tokenizer.json to encode with. Required.")
	fs.IntVar(&f.maxLength, "max-length", 0, "Maximum length of an encoded pair in tokens, special tokens included; 0 (the default) disables truncation.")
	fs.StringVar(&f.truncation, "truncation", string(tokenizer.LongestFirst), "Pair truncation strategy: longest_first (the default), only_first or only_second.")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: rerank tokenize --tokenizer FILE [--max-length N] [--truncation longest_first|only_first|only_second]\n\n"+
			"Reads JSON lines {\"query\": …, \"document\": …} on stdin and writes JSON lines\n"+
			"{\"input_ids\": […], \"token_type_ids\": […], \"attention_mask\": […]} or {\"error\": …}.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if f.tokenizer == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	if err := tokenizeStream(os.Stdin, os.Stdout, f); err != nil {
		fmt.Fprintf(os.Stderr, "rerank tokenize: %v\n", err)
		return 1
	}
	return 0
}

// maxTokenizeLine bounds one input line (a pair with a document of a few MB
// still fits; longer lines are an error rather than unbounded memory).
const maxTokenizeLine = 64 << 20

// tokenizeOutput is one output line.
type tokenizeOutput struct {
	InputIDs      []int32 `json:"input_ids"`
	TokenTypeIDs  []int32 `json:"token_type_ids"`
	AttentionMask []int32 `json:"attention_mask"`
}

// tokenizeStream does the work of runTokenize on any reader and writer.
// Per-pair problems (bad JSON, a pair that cannot be truncated) become
// {"error": …} lines; only a load or I/O failure stops the stream.
func tokenizeStream(in io.Reader, out io.Writer, f tokenizeFlags) error {
	tok, err := tokenizer.FromFile(f.tokenizer)
	if err != nil {
		return err
	}
	opt := tokenizer.Options{MaxLength: f.maxLength, Truncation: tokenizer.Truncation(f.truncation)}
	// Reject bad flags once, before reading input.
	if _, err := tok.EncodePair("", "", opt); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxTokenizeLine) // 64 KiB first, grown as lines need
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var pair struct {
			Query    string `json:"query"`
			Document string `json:"document"`
		}
		var res any
		if err := json.Unmarshal(line, &pair); err != nil {
			res = map[string]string{"error": fmt.Sprintf("invalid input line: %v", err)}
		} else if e, err := tok.EncodePair(pair.Query, pair.Document, opt); err != nil {
			res = map[string]string{"error": err.Error()}
		} else {
			res = tokenizeOutput{e.IDs, e.TypeIDs, e.AttentionMask}
		}
		if err := enc.Encode(res); err != nil {
			return fmt.Errorf("cannot write: %w", err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("cannot read stdin: %w", err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("cannot write: %w", err)
	}
	return nil
}
