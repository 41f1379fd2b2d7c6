package api

import (
	"github.com/valyala/fasthttp"
)

// modelEntry is one model of GET /v1/models, in OpenAI's shape.
type modelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// models answers GET /v1/models as OpenAI-compatible servers (vLLM,
// llama.cpp) do, so that clients that list models before reranking (Dify,
// RAGFlow's OpenAI-compatible providers) find the served one: {"object":
// "list", "data": [{"id", "object": "model", "created", "owned_by"}]}.
// created is 0: the server does not know when the weights were made.
func (s *Server) models(ctx *fasthttp.RequestCtx) {
	body := struct {
		Object string       `json:"object"`
		Data   []modelEntry `json:"data"`
	}{Object: "list", Data: []modelEntry{{ID: s.cfg.Service.ModelName(), Object: "model", OwnedBy: "rerank"}}}
	writeJSON(ctx, fasthttp.StatusOK, appendJSON(nil, body))
}
