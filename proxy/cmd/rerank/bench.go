package main

import "fmt"

// PLACEHOLDER: replaced by the bench work.
func runBench(args []string) int {
	fmt.Println("rerank bench: not implemented yet")
	return 1
}
