package main

import "fmt"

// PLACEHOLDER: replaced by the tokenize work.
func runTokenize(args []string) int {
	fmt.Println("rerank tokenize: not implemented yet")
	return 1
}
