package main

import "fmt"

// PLACEHOLDER: replaced by the serve work.
func runServe(args []string) int {
	fmt.Println("rerank serve: not implemented yet")
	return 1
}
