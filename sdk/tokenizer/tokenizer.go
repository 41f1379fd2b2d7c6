package tokenizer

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unicode/utf8"
)

// Truncation is a pair truncation strategy, as Hugging Face names them.
type Truncation string

// The truncation strategies.
const (
	// LongestFirst cuts the longer sequence first, one token at a time, so
	// that both keep about half of the budget when both are long.
	LongestFirst Truncation = "longest_first"
	// OnlyFirst cuts only the first sequence (the query).
	OnlyFirst Truncation = "only_first"
	// OnlySecond cuts only the second sequence (the document).
	OnlySecond Truncation = "only_second"
)

// ErrTooShort is returned (wrapped) when a pair cannot be cut to MaxLength with
// the chosen strategy, e.g. OnlySecond with a query longer than MaxLength.
var ErrTooShort = errors.New("tokenizer: sequence to truncate too short to respect max_length")

// ErrTooLong is returned (wrapped) when Options.Strict is set and the input
// does not fit MaxLength.
var ErrTooLong = errors.New("tokenizer: input longer than max_length")

// Options controls one encoding.
type Options struct {
	// MaxLength caps the encoding's length, special tokens included; 0 means no cap.
	MaxLength int
	// Truncation is the strategy used when the pair exceeds MaxLength; empty
	// means LongestFirst.
	Truncation Truncation
	// MaxSecondLength, when positive, cuts the second sequence of a pair
	// (the document) to at most this many tokens, special tokens not
	// counted, before MaxLength applies; the first sequence is never cut by
	// it. It has no effect on single sequences.
	MaxSecondLength int
	// Strict makes an encoding longer than MaxLength (after
	// MaxSecondLength) fail with ErrTooLong instead of being truncated.
	Strict bool
}

// Encoding is a tokenized pair, ready for a model. The three slices have the
// same length.
type Encoding struct {
	// IDs are the token ids, special tokens included.
	IDs []int32
	// TypeIDs are the segment ids (0 for the query, 1 for the document where
	// the model has segments).
	TypeIDs []int32
	// AttentionMask is 1 for every token (no padding is added).
	AttentionMask []int32
}

// Tokenizer encodes text as a Hugging Face tokenizer.json describes. It is
// immutable after loading and safe for concurrent use.
type Tokenizer struct {
	normalizer normalizer   // nil: none
	pre        preTokenizer // nil: none
	model      model
	post       postProcessor
	// raw matches the added tokens that are not normalized, in the raw text;
	// norm matches the normalized ones in the normalized text. nil: none.
	raw, norm *addedMatcher
	// tokens maps every known token (vocabulary and added) to its id.
	tokens    func(string) (int32, bool)
	vocabSize int
	// needFirst is set when a Metaspace pre-tokenizer uses the "first"
	// prepend scheme, the only user of word.firstLen.
	needFirst bool
	scratch   sync.Pool
}

// model turns one pre-tokenized word into ids.
type model interface {
	appendTokens(dst []int32, word string, sc *scratch) []int32
}

// scratch holds the buffers of one encoding, recycled through a pool so that
// EncodePair allocates little beyond its result.
type scratch struct {
	// arena backs the strings made while normalizing and pre-tokenizing; it
	// is reset per encoding, so those strings never outlive it.
	arena  []byte
	words  []word
	a, b   []int32
	subtok []byte
	// norm and nfd hold BertNormalizer's intermediate passes.
	norm, nfd []byte
}

// FromFile loads a tokenizer.json.
func FromFile(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: cannot read %q: %w", path, err)
	}
	t, err := FromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("%w (in %q)", err, path)
	}
	return t, nil
}

// EncodePair encodes a (query, document) pair: the query gets type id 0, the
// document type id 1 (as the post-processor decides), and the pair is cut to
// opt.MaxLength as the Hugging Face library does. A pair that cannot be cut
// (see ErrTooShort) or invalid options return an error, never a partial
// encoding.
func (t *Tokenizer) EncodePair(query, document string, opt Options) (Encoding, error) {
	added := t.post.addedTokens(true)
	if err := opt.check(added, "pair"); err != nil {
		return Encoding{}, err
	}
	sc := t.getScratch()
	defer t.putScratch(sc)
	sc.a = t.encodeSequence(sc.a[:0], query, sc)
	sc.b = t.encodeSequence(sc.b[:0], document, sc)
	a, b := sc.a, sc.b
	if opt.MaxSecondLength > 0 && len(b) > opt.MaxSecondLength {
		b = b[:opt.MaxSecondLength]
	}
	if opt.Strict && opt.MaxLength > 0 && len(a)+len(b)+added > opt.MaxLength {
		return Encoding{}, fmt.Errorf("%w: the pair is %d tokens (query %d, document %d, special %d), the limit is %d",
			ErrTooLong, len(a)+len(b)+added, len(a), len(b), added, opt.MaxLength)
	}
	if opt.MaxLength > 0 {
		var err error
		if a, b, err = truncatePair(a, b, opt.MaxLength-added, opt.Truncation); err != nil {
			return Encoding{}, err
		}
	}
	return t.post.build(a, b, true), nil
}

// Encode encodes one text with the post-processor's single-sequence template,
// cut to opt.MaxLength (every strategy cuts the only sequence).
func (t *Tokenizer) Encode(text string, opt Options) (Encoding, error) {
	added := t.post.addedTokens(false)
	if err := opt.check(added, "single sequence"); err != nil {
		return Encoding{}, err
	}
	sc := t.getScratch()
	defer t.putScratch(sc)
	sc.a = t.encodeSequence(sc.a[:0], text, sc)
	a := sc.a
	if opt.Strict && opt.MaxLength > 0 && len(a)+added > opt.MaxLength {
		return Encoding{}, fmt.Errorf("%w: the sequence is %d tokens (special %d), the limit is %d", ErrTooLong, len(a)+added, added, opt.MaxLength)
	}
	if budget := opt.MaxLength - added; opt.MaxLength > 0 && len(a) > budget {
		if opt.Truncation == OnlySecond {
			return Encoding{}, fmt.Errorf("%w: only_second truncation needs a second sequence", ErrTooShort)
		}
		a = a[:budget]
	}
	return t.post.build(a, nil, false), nil
}

// VocabSize is one more than the largest token id, added tokens included: the
// row count a model's embedding matrix must have at least.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// TokenID returns the id of a token of the vocabulary or of the added tokens.
func (t *Tokenizer) TokenID(token string) (int32, bool) { return t.tokens(token) }

// AddedTokens returns how many special tokens the post-processor adds to a
// pair (pair true) or to a single sequence.
func (t *Tokenizer) AddedTokens(pair bool) int { return t.post.addedTokens(pair) }

// check validates the options against the added-token count of the template.
func (o *Options) check(added int, what string) error {
	switch o.Truncation {
	case "":
		o.Truncation = LongestFirst
	case LongestFirst, OnlyFirst, OnlySecond:
	default:
		return fmt.Errorf("tokenizer: unknown truncation strategy %q (want longest_first, only_first or only_second)", o.Truncation)
	}
	if o.MaxLength < 0 {
		return fmt.Errorf("tokenizer: max_length %d is negative", o.MaxLength)
	}
	// Hugging Face subtracts the added tokens from max_length with unsigned
	// arithmetic and, below them, wraps around and silently stops truncating;
	// an error is the honest answer.
	if o.MaxLength > 0 && o.MaxLength < added {
		return fmt.Errorf("tokenizer: max_length %d is shorter than the %d special tokens of a %s", o.MaxLength, added, what)
	}
	return nil
}

func (t *Tokenizer) getScratch() *scratch {
	sc, _ := t.scratch.Get().(*scratch)
	if sc == nil {
		sc = new(scratch)
	}
	sc.arena = sc.arena[:0]
	return sc
}

// maxPooledArena bounds the arena kept in the pool: a 100 KB document should
// not pin its buffers forever (1 MiB is several of the largest documents a
// 512-token model can use).
const maxPooledArena = 1 << 20

func (t *Tokenizer) putScratch(sc *scratch) {
	if cap(sc.arena) > maxPooledArena {
		sc.arena = nil
	}
	if cap(sc.a) > maxPooledArena || cap(sc.b) > maxPooledArena {
		sc.a, sc.b = nil, nil
	}
	if cap(sc.norm) > maxPooledArena || cap(sc.nfd) > maxPooledArena {
		sc.norm, sc.nfd = nil, nil
	}
	t.scratch.Put(sc)
}

// encodeSequence appends the model ids of one text (no special tokens) to dst.
func (t *Tokenizer) encodeSequence(dst []int32, text string, sc *scratch) []int32 {
	if text == "" {
		return dst
	}
	if !utf8.ValidString(text) {
		// The reference library only ever sees valid UTF-8 (Rust strings).
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	if t.raw == nil {
		return t.encodeSegment(dst, text, true, sc)
	}
	t.raw.split(text, func(start, end int, id int32) {
		if id >= 0 {
			dst = append(dst, id)
			return
		}
		dst = t.encodeSegment(dst, text[start:end], start == 0, sc)
	})
	return dst
}

// encodeSegment normalizes a piece of raw text between added tokens, splits
// it on normalized added tokens and tokenizes the rest. atStart tells whether
// the piece starts the original text (Metaspace's prepend_scheme "first").
func (t *Tokenizer) encodeSegment(dst []int32, s string, atStart bool, sc *scratch) []int32 {
	firstLen := 0
	if atStart && t.needFirst && s != "" {
		// What the first character normalizes to (and whatever a normalizer
		// prepends) is aligned with original offset 0.
		_, size := utf8.DecodeRuneInString(s)
		firstLen = size
		if t.normalizer != nil {
			firstLen = len(t.normalizer.normalize(s[:size], sc))
		}
	}
	if t.normalizer != nil {
		s = t.normalizer.normalize(s, sc)
	}
	if s == "" {
		return dst
	}
	w := word{s, firstLen}
	if t.norm == nil {
		return t.encodeWords(dst, w, sc)
	}
	t.norm.split(s, func(start, end int, id int32) {
		if id >= 0 {
			dst = append(dst, id)
			return
		}
		dst = t.encodeWords(dst, w.sub(start, end), sc)
	})
	return dst
}

// encodeWords pre-tokenizes one normalized piece and runs the model on each word.
func (t *Tokenizer) encodeWords(dst []int32, w word, sc *scratch) []int32 {
	if w.s == "" {
		return dst
	}
	if t.pre == nil {
		return t.model.appendTokens(dst, w.s, sc)
	}
	base := len(sc.words)
	sc.words = t.pre.preTokenize(sc.words, w, sc)
	for i := base; i < len(sc.words); i++ {
		dst = t.model.appendTokens(dst, sc.words[i].s, sc)
	}
	clear(sc.words[base:])
	sc.words = sc.words[:base]
	return dst
}

// truncatePair cuts a and b to budget tokens in total, exactly as Hugging Face
// tokenizers' truncate_encodings does.
func truncatePair(a, b []int32, budget int, strategy Truncation) ([]int32, []int32, error) {
	total := len(a) + len(b)
	if total <= budget {
		return a, b, nil
	}
	if budget == 0 {
		return a[:0], b[:0], nil
	}
	toRemove := total - budget
	switch strategy {
	case OnlyFirst, OnlySecond:
		target := &a
		if strategy == OnlySecond {
			target = &b
		}
		n := len(*target)
		if n <= toRemove {
			which := "first (query)"
			if strategy == OnlySecond {
				which = "second (document)"
			}
			return nil, nil, fmt.Errorf("%w: cutting only the %s sequence of %d tokens cannot remove the %d tokens over the budget of %d",
				ErrTooShort, which, n, toRemove, budget)
		}
		*target = (*target)[:n-toRemove]
		return a, b, nil
	default:
		// n1 is the shorter side; when it alone fills the budget, both get
		// half of it, the first (shorter, or the query on a tie) the smaller
		// half.
		n1, n2 := len(a), len(b)
		swap := n1 > n2
		if swap {
			n1, n2 = n2, n1
		}
		if n1 > budget {
			n2 = n1
		} else {
			n2 = max(n1, budget-n1)
		}
		if n1+n2 > budget {
			n1 = budget / 2
			n2 = n1 + budget%2
		}
		if swap {
			n1, n2 = n2, n1
		}
		return a[:min(len(a), n1)], b[:min(len(b), n2)], nil
	}
}
