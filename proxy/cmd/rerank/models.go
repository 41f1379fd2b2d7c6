package main

import "fmt"

// PLACEHOLDER: replaced by the models work.
func runModels(args []string) int {
	fmt.Println("rerank models: not implemented yet")
	return 1
}
