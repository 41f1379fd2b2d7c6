package tokenizer

// PLACEHOLDER API (being implemented by the tokenizer work): the signatures
// below are the contract other packages build against.

import "errors"

// Truncation is a pair truncation strategy, as Hugging Face names them.
type Truncation string

// The truncation strategies.
const (
	LongestFirst Truncation = "longest_first"
	OnlyFirst    Truncation = "only_first"
	OnlySecond   Truncation = "only_second"
)

// Options controls one encoding.
type Options struct {
	// MaxLength caps the encoding's length, special tokens included; 0 means no cap.
	MaxLength int
	// Truncation is the strategy used when the pair exceeds MaxLength.
	Truncation Truncation
}

// Encoding is a tokenized pair, ready for a model.
type Encoding struct {
	IDs           []int32
	TypeIDs       []int32
	AttentionMask []int32
}

// Tokenizer encodes text as a Hugging Face tokenizer.json describes.
type Tokenizer struct{}

// FromFile loads a tokenizer.json.
func FromFile(path string) (*Tokenizer, error) { return nil, errors.New("tokenizer: not implemented") }

// EncodePair encodes a (query, document) pair.
func (t *Tokenizer) EncodePair(query, document string, opt Options) (Encoding, error) {
	return Encoding{}, errors.New("tokenizer: not implemented")
}
