package sdk

import "context"

// Usage is what one Score call consumed, as the plugin reports it: the
// proxy's metrics (rerank_tokens_total, rerank_batch_padded_tokens) and trace
// spans read it. A backend adds to the Usage in Score's context (UsageFrom);
// one that adds nothing reports zero, which the proxy reads as unknown.
type Usage struct {
	// Tokens counts the tokens of the pairs as scored: truncation applied,
	// padding not.
	Tokens int64
	// PaddedTokens counts the tokens the model ran on: over the runs of the
	// call, the pairs of a run times its longest pair.
	PaddedTokens int64
}

type usageKey struct{}

// WithUsage returns ctx carrying u, for a Score call to add to: the SDK's
// gRPC server does this on the plugin side, and the proxy on its side to
// read what the plugin reported.
func WithUsage(ctx context.Context, u *Usage) context.Context {
	return context.WithValue(ctx, usageKey{}, u)
}

// UsageFrom returns the Usage of a Score call's ctx, or nil when the caller
// asked for none.
func UsageFrom(ctx context.Context) *Usage {
	u, _ := ctx.Value(usageKey{}).(*Usage)
	return u
}
