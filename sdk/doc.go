// Package sdk is the only public API for rerank backend plugin authors.
//
// A plugin implements Backend (load a model, score (query, document) pairs,
// report health) and calls Serve from its main function. The proxy starts the
// plugin as a child process through hashicorp/go-plugin and talks to it over
// gRPC with the protocol in sdk/proto/rerank/v1; Dispense gives the proxy a
// Backend backed by that connection. Plugin authors never see protobuf types.
//
// The rules of the house: the proxy owns the request (validation, caching,
// batching, admission, deadlines); a plugin owns the model (tokenizer, graph,
// precision, device). A plugin never sleeps, queues or retries, and its
// stdout belongs to the go-plugin handshake: log to stderr.
//
// Package sdktest is a conformance harness every backend should pass;
// package tokenizer encodes pairs exactly as Hugging Face tokenizers does;
// package onnx writes and rewrites ONNX graphs.
package sdk
