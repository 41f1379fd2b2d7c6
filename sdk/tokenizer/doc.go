// Package tokenizer encodes text the way a Hugging Face tokenizer.json
// describes, with exact parity with the Rust `tokenizers` library for the
// components cross-encoders use: BERT WordPiece (ms-marco-MiniLM and the like)
// and sentencepiece Unigram (XLM-RoBERTa, bge-reranker).
//
// A Tokenizer runs the same pipeline as the reference library: added tokens
// are matched in the raw text, the rest is normalized, pre-tokenized into
// words, split into model pieces, the pair is truncated to a length budget and
// a post-processor adds the special tokens and type ids.
//
// Supported components:
//   - normalizers: BertNormalizer, Precompiled, Replace (string and regex),
//     NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Strip, Prepend, Sequence;
//   - pre-tokenizers: BertPreTokenizer, Metaspace, Whitespace,
//     WhitespaceSplit, Punctuation, Digits, Split, Sequence;
//   - models: WordPiece, Unigram;
//   - post-processors: TemplateProcessing, BertProcessing, RobertaProcessing
//     and Sequence (with at most one of these).
//
// Anything else in a tokenizer.json (a BPE model, ByteLevel, …) makes FromFile
// fail with an error naming the component. Offsets, padding and decoding are
// not implemented: a cross-encoder needs ids, type ids and a mask.
package tokenizer
