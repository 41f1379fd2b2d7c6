package main

import "fmt"

// PLACEHOLDER: replaced by the testmodel work.
func runTestmodel(args []string) int {
	fmt.Println("rerank testmodel: not implemented yet")
	return 1
}
