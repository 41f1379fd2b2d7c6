package api

import (
	"github.com/valyala/fasthttp"
)

// Info is what GET /info reports about the loaded model and the server's
// limits, in the shape of text-embeddings-inference's /info.
type Info struct {
	// ModelSHA identifies the weights (the plugin's revision); empty until
	// the model is loaded.
	ModelSHA string
	// ModelDtype is the precision the model runs at, for example "fp32".
	ModelDtype string
	// MaxInputLength is the most tokens of one (query, document) pair.
	MaxInputLength int
	// MaxBatchTokens is the micro-batcher's padded token budget per batch.
	MaxBatchTokens int
	// MaxBatchRequests is the largest batch in pairs.
	MaxBatchRequests int
	// MaxClientBatchSize is the most documents one request may carry.
	MaxClientBatchSize int
	// MaxConcurrentRequests is the bound on admitted, unanswered pairs.
	MaxConcurrentRequests int
	// Backend names the plugin, for example "onnx-cpu".
	Backend string
}

// infoBody is /info's JSON: TEI's members (a reranker's model_type, sha and
// docker_label null) and the device and backend.
type infoBody struct {
	ModelID               string         `json:"model_id"`
	ModelSHA              *string        `json:"model_sha"`
	ModelDtype            string         `json:"model_dtype"`
	ModelType             map[string]any `json:"model_type"`
	MaxConcurrentRequests int            `json:"max_concurrent_requests"`
	MaxInputLength        int            `json:"max_input_length"`
	MaxBatchTokens        int            `json:"max_batch_tokens"`
	MaxBatchRequests      int            `json:"max_batch_requests"`
	MaxClientBatchSize    int            `json:"max_client_batch_size"`
	AutoTruncate          bool           `json:"auto_truncate"`
	TokenizationWorkers   int            `json:"tokenization_workers"`
	Version               string         `json:"version"`
	SHA                   *string        `json:"sha"`
	DockerLabel           *string        `json:"docker_label"`
	Device                string         `json:"device"`
	Backend               string         `json:"backend"`
	Ready                 bool           `json:"ready"`
}

// info answers GET /info. Documents are truncated to the max input length
// unless a request sends truncate: false, hence auto_truncate true.
func (s *Server) info(ctx *fasthttp.RequestCtx) {
	var in Info
	if s.cfg.Info != nil {
		in = s.cfg.Info()
	}
	st := s.cfg.Status()
	b := infoBody{
		ModelID:    s.cfg.Service.ModelName(),
		ModelDtype: in.ModelDtype,
		// A one-label sequence classifier, as TEI describes a reranker.
		ModelType: map[string]any{"reranker": map[string]any{
			"id2label": map[string]string{"0": "LABEL_0"},
			"label2id": map[string]int{"LABEL_0": 0},
		}},
		MaxConcurrentRequests: in.MaxConcurrentRequests,
		MaxInputLength:        in.MaxInputLength,
		MaxBatchTokens:        in.MaxBatchTokens,
		MaxBatchRequests:      in.MaxBatchRequests,
		MaxClientBatchSize:    in.MaxClientBatchSize,
		AutoTruncate:          true,
		// Tokenization runs inside the plugin, one pass per batch.
		TokenizationWorkers: 1,
		Version:             s.cfg.Version,
		Device:              st.Device,
		Backend:             in.Backend,
		Ready:               st.Ready,
	}
	if in.ModelSHA != "" {
		b.ModelSHA = &in.ModelSHA
	}
	writeJSON(ctx, fasthttp.StatusOK, appendJSON(nil, b))
}
