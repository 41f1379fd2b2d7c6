package safetensors

import (
	"fmt"

	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

var _ crossencoder.Weights = (*Checkpoint)(nil)

// Tensor returns the named tensor decoded to float32, so that a Checkpoint
// is a crossencoder.Weights: crossencoder.Build(cfg, checkpoint) builds the
// graph of a Hugging Face model published as safetensors.
func (c *Checkpoint) Tensor(name string) (crossencoder.Tensor, error) {
	shape, data, err := c.Float32(name)
	if err != nil {
		return crossencoder.Tensor{}, err
	}
	return crossencoder.Tensor{Shape: shape, Data: data}, nil
}

// Entries returns every tensor cfg's graph reads from w, under its Hugging
// Face name, to be written stored as dt: with Write it turns any Weights
// (RandomWeights in tests) into the checkpoint transformers would save.
func Entries(cfg crossencoder.Config, w crossencoder.Weights, dt DType) ([]Entry, error) {
	params := crossencoder.Params(cfg)
	entries := make([]Entry, 0, len(params))
	for _, p := range params {
		t, err := w.Tensor(p.Name)
		if err != nil {
			return nil, fmt.Errorf("safetensors: %w", err)
		}
		entries = append(entries, Entry{Name: p.Name, DType: dt, Shape: t.Shape, Data: t.Data})
	}
	return entries, nil
}
