package main

import (
	"github.com/rerank-sidecar/rerank/proxy/internal/api"
	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
)

// apiInfo returns GET /info's facts: the limits from the configuration and,
// once loaded, the model's from the plugin.
func apiInfo(c *serveConfig, sup *backend.Supervisor) func() api.Info {
	bc := batchConfig(&c.batch, c.backend, c.maxLength)
	return func() api.Info {
		in := api.Info{
			MaxInputLength:        c.maxLength,
			MaxBatchTokens:        bc.MaxBatchTokens,
			MaxBatchRequests:      bc.MaxBatchSize,
			MaxClientBatchSize:    c.maxCandidates,
			MaxConcurrentRequests: bc.MaxQueue,
			ModelDtype:            c.precision,
		}
		st := sup.Status()
		in.Backend = st.Kind
		if m := st.Model; m != nil {
			in.ModelSHA, in.ModelDtype, in.MaxInputLength, in.Backend = m.Revision, string(m.Precision), m.MaxLength, m.Backend
		}
		return in
	}
}
