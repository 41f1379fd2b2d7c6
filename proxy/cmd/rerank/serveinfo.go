package main

import (
	"github.com/rerank-sidecar/rerank/proxy/internal/api"
	"github.com/rerank-sidecar/rerank/proxy/internal/models"
	"github.com/rerank-sidecar/rerank/sdk"
)

// apiInfo returns GET /info's facts: the limits from the configuration and,
// once loaded, the model's from the plugin.
func apiInfo(c *serveConfig, def *models.Model) func() api.Info {
	return func() api.Info {
		st := def.Status()
		info := sdk.ModelInfo{Device: st.Device, MaxLength: st.MaxLength, Precision: st.Precision}
		if st.Model != nil {
			info = *st.Model
		}
		// The batcher's limits as built from what the plugin reported, or
		// as they will be before it has.
		bc := batchConfig(&c.batch, info)
		in := api.Info{
			MaxInputLength:        info.MaxLength,
			MaxBatchTokens:        bc.MaxBatchTokens,
			MaxBatchRequests:      bc.MaxBatchSize,
			MaxClientBatchSize:    c.maxCandidates,
			MaxConcurrentRequests: bc.MaxQueue,
			ModelDtype:            string(info.Precision),
			Backend:               st.Kind,
		}
		if st.Model != nil {
			in.ModelSHA, in.Backend = info.Revision, info.Backend
		}
		return in
	}
}
