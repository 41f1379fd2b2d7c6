package tokenizer

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"unicode/utf8"
)

// unigramPiece is one entry of a Unigram vocabulary: a piece and its score (a
// log probability). Its index in the vocabulary is its id.
type unigramPiece struct {
	Piece string
	Score float64
}

// unigram is the sentencepiece Unigram model of a tokenizer.json, with the
// semantics of Hugging Face tokenizers (models/unigram/model.rs,
// encode_optimized): Viterbi best segmentation by piece scores, unknown
// characters scored min_score-10 and fused into one unk token, optional byte
// fallback to <0xNN> pieces.
//
// A unigram is immutable after newUnigram and safe for concurrent use.
type unigram struct {
	ids  map[string]int32
	trie pieceTrie
	// unkScore is the score of an unknown character, min_score - kUnkPenalty.
	unkScore float64
	unkID    int32
	// byteIDs maps a byte to the id of its <0xNN> piece, -1 where missing;
	// nil without byte fallback.
	byteIDs *[256]int32
}

// unkPenalty is subtracted from the vocabulary's lowest score to score an
// unknown character (K_UNK_PENALTY in Hugging Face and sentencepiece).
const unkPenalty = 10.0

// newUnigram builds a Unigram model. unkID is the id of the unknown piece; HF
// accepts a model without one but fails on its first unknown character, so a
// negative unkID is rejected here, at load.
func newUnigram(vocab []unigramPiece, unkID int, byteFallback bool) (*unigram, error) {
	if len(vocab) == 0 {
		return nil, errors.New("tokenizer: unigram vocabulary is empty but at least <unk> is needed")
	}
	if len(vocab) > math.MaxInt32 {
		return nil, fmt.Errorf("tokenizer: unigram vocabulary of %d pieces exceeds int32 ids", len(vocab))
	}
	if unkID < 0 || unkID >= len(vocab) {
		return nil, fmt.Errorf("tokenizer: unigram unk_id %d is not in the vocabulary of %d pieces", unkID, len(vocab))
	}
	u := &unigram{
		ids:   make(map[string]int32, len(vocab)),
		unkID: int32(unkID),
	}
	scores := make([]float64, len(vocab))
	minScore := math.Inf(1)
	for id, p := range vocab {
		if math.IsNaN(p.Score) {
			return nil, fmt.Errorf("tokenizer: unigram piece %d (%q) has a NaN score", id, p.Piece)
		}
		scores[id] = p.Score
		// A later duplicate wins, as HF's HashMap insert does.
		u.ids[p.Piece] = int32(id)
		minScore = min(minScore, p.Score)
	}
	u.unkScore = minScore - unkPenalty
	// The trie maps each piece to the id the map gives it, so duplicates
	// resolve the same way in both.
	keys := make([]string, 0, len(u.ids))
	for piece := range u.ids {
		if piece != "" {
			keys = append(keys, piece)
		}
	}
	slices.Sort(keys)
	vals := make([]int32, len(keys))
	for i, k := range keys {
		vals[i] = u.ids[k]
	}
	u.trie = buildPieceTrie(keys, vals, scores)
	if byteFallback {
		u.byteIDs = new([256]int32)
		for b := range u.byteIDs {
			u.byteIDs[b] = -1
			if id, ok := u.ids[bytePiece(byte(b))]; ok {
				u.byteIDs[b] = id
			}
		}
	}
	return u, nil
}

// bytePiece is the byte-fallback piece of b, as <0xNN> with upper-case hex.
func bytePiece(b byte) string {
	const hex = "0123456789ABCDEF"
	return string([]byte{'<', '0', 'x', hex[b>>4], hex[b&0xF], '>'})
}

// tokenToID returns the id of a piece.
func (u *unigram) tokenToID(tok string) (int32, bool) {
	id, ok := u.ids[tok]
	return id, ok
}

// bestPath is the best segmentation found so far of a word's prefix ending at
// one byte position.
type bestPath struct {
	score float64
	start int32 // where the last piece starts, -1 when the position is not reached yet
	id    int32 // the last piece's id
}

// viterbiScratch is a reusable lattice for one tokenize call.
type viterbiScratch struct {
	best []bestPath
}

// viterbiPool recycles lattices: tokenize runs on every word of every pair.
var viterbiPool = sync.Pool{New: func() any { return new(viterbiScratch) }}

// viterbiPoolMax is the largest lattice, in positions, returned to the pool:
// 64Ki positions (1 MiB) covers words of 64 KiB; a longer one (a 100 KB
// document without spaces) gets a lattice that is then left to the GC.
const viterbiPoolMax = 1 << 16

// tokenize returns the ids of one pre-tokenized, normalized word.
func (u *unigram) tokenize(word string) []int32 {
	return u.appendTokens(nil, word)
}

// appendTokens appends the ids of one pre-tokenized, normalized word to dst.
// Invalid UTF-8 bytes count as one character each, scored like any unknown
// character.
func (u *unigram) appendTokens(dst []int32, word string) []int32 {
	if word == "" {
		return dst
	}
	sc := viterbiPool.Get().(*viterbiScratch)
	n := len(word)
	if cap(sc.best) < n+1 {
		sc.best = make([]bestPath, n+1)
	}
	best := sc.best[:n+1]
	for i := range best {
		best[i] = bestPath{start: -1}
	}
	best[0] = bestPath{start: 0}

	for start := 0; start < n; {
		mblen := charLen(word, start)
		here := best[start].score
		single := false
		// The trie walk is inlined: it is the innermost loop of tokenization.
		nodes := u.trie.nodes
		node := int32(0)
		for i := start; i < n && len(nodes) > 0; i++ {
			nb := nodes[node].base
			next := int(nb) + int(word[i]) + 1
			if nb == 0 || next >= len(nodes) || nodes[next].check != node {
				break
			}
			node = int32(next)
			id := nodes[node].value
			if id < 0 {
				continue
			}
			end := i + 1
			cand := nodes[node].score + here
			if t := &best[end]; t.start < 0 || cand > t.score {
				*t = bestPath{score: cand, start: int32(start), id: id}
			}
			if end-start == mblen {
				single = true
			}
		}
		if !single {
			cand := u.unkScore + here
			if t := &best[start+mblen]; t.start < 0 || cand > t.score {
				*t = bestPath{score: cand, start: int32(start), id: u.unkID}
			}
		}
		start += mblen
	}

	// Backtrack, then reverse the appended tokens. A run of unk nodes is
	// fused into one token whose text is the run's text (HF fuse_unk).
	first := len(dst)
	for end := n; end > 0; {
		node := best[end]
		start := int(node.start)
		if node.id == u.unkID {
			for start > 0 && best[start].id == u.unkID {
				start = int(best[start].start)
			}
			dst = u.appendUnknown(dst, word[start:end])
		} else {
			dst = append(dst, node.id)
		}
		end = start
	}
	slices.Reverse(dst[first:])
	if cap(sc.best) <= viterbiPoolMax {
		viterbiPool.Put(sc)
	}
	return dst
}

// appendUnknown appends, in REVERSE order (the caller reverses the whole
// word), the ids of a fused run of unknown characters: its own id if the run
// happens to be a piece, else its <0xNN> byte pieces when byte fallback is on
// and all exist, else the unk id.
func (u *unigram) appendUnknown(dst []int32, text string) []int32 {
	if id, ok := u.ids[text]; ok {
		return append(dst, id)
	}
	if u.byteIDs != nil {
		all := true
		for i := 0; i < len(text); i++ {
			if u.byteIDs[text[i]] < 0 {
				all = false
				break
			}
		}
		if all {
			for i := len(text) - 1; i >= 0; i-- {
				dst = append(dst, u.byteIDs[text[i]])
			}
			return dst
		}
	}
	return append(dst, u.unkID)
}

// charLen is the length in bytes of the character at s[i]; an invalid byte
// counts as a character of one byte.
func charLen(s string, i int) int {
	if s[i] < utf8.RuneSelf {
		return 1
	}
	_, size := utf8.DecodeRuneInString(s[i:])
	return size
}

// pieceTrie is a double-array trie over the bytes of the vocabulary's pieces:
// a child of node n by byte c is node base[n]+c+1 when check of that node is n.
// Labels are shifted by one so that no child sits at its parent's base.
type pieceTrie struct {
	nodes []trieNode
}

// trieNode is one cell of the double array.
type trieNode struct {
	base  int32 // offset of the children, 0 when the node has none
	check int32 // the parent node, -1 for a free cell
	value int32 // the piece id ending here, -1 for none
	// score is the score of the piece ending here, kept beside its id so
	// that the Viterbi loop reads one cache line per trie step.
	score float64
}

// trieLabels is the number of distinct child labels (a byte plus one).
const trieLabels = 257

// buildPieceTrie builds the double array of keys (sorted, distinct, non-empty)
// with their values.
func buildPieceTrie(keys []string, vals []int32, scores []float64) pieceTrie {
	b := trieBuilder{keys: keys, vals: vals, scores: scores, head: -1, tail: -1}
	b.grow(trieLabels)
	b.occupy(0, 0) // the root is its own parent, so that it is never free
	b.build(0, 0, len(keys), 0)
	// Trim the free tail; lookups bound-check against len.
	last := len(b.nodes) - 1
	for last > 0 && b.nodes[last].check < 0 {
		last--
	}
	// An exact copy, so that the model does not keep append's spare capacity
	// (up to as much again: 25 MB for a 250k-piece vocabulary).
	return pieceTrie{nodes: slices.Clone(b.nodes[:last+1])}
}

// trieBuilder places nodes into the double array. Free cells form a doubly
// linked list so that the search for a base visits free cells only (as
// darts-clone builds), which keeps a 250k-piece build linear in practice.
type trieBuilder struct {
	keys   []string
	vals   []int32
	scores []float64 // by piece id
	nodes  []trieNode
	// next and prev link the free cells, -1 ending the list; meaningless for
	// occupied cells.
	next, prev []int32
	head, tail int32
}

// grow extends the array with free cells up to at least n cells.
func (b *trieBuilder) grow(n int) {
	for len(b.nodes) < n {
		i := int32(len(b.nodes))
		b.nodes = append(b.nodes, trieNode{check: -1, value: -1})
		b.next = append(b.next, -1)
		b.prev = append(b.prev, b.tail)
		if b.tail >= 0 {
			b.next[b.tail] = i
		} else {
			b.head = i
		}
		b.tail = i
	}
}

// occupy takes free cell i out of the free list for a child of parent.
func (b *trieBuilder) occupy(i int, parent int32) {
	b.nodes[i].check = parent
	p, n := b.prev[i], b.next[i]
	if p >= 0 {
		b.next[p] = n
	} else {
		b.head = n
	}
	if n >= 0 {
		b.prev[n] = p
	} else {
		b.tail = p
	}
}

// build places the children of node, which stands for the prefix of length
// depth shared by keys[lo:hi], then recurses into them.
func (b *trieBuilder) build(node int32, lo, hi, depth int) {
	if lo < hi && len(b.keys[lo]) == depth {
		b.nodes[node].value = b.vals[lo]
		b.nodes[node].score = b.scores[b.vals[lo]]
		lo++ // sorted and distinct: only the first key can end here
	}
	if lo == hi {
		return
	}
	// Distinct labels at depth, ascending since keys are sorted.
	var labels [256]byte
	var bounds [257]int
	n := 0
	for i := lo; i < hi; i++ {
		c := b.keys[i][depth]
		if n == 0 || labels[n-1] != c {
			labels[n] = c
			bounds[n] = i
			n++
		}
	}
	bounds[n] = hi

	// The first free cell e that can hold the first label gives the base.
	base := 0
	for e := b.head; ; e = b.next[e] {
		if e < 0 {
			e = int32(len(b.nodes))
			b.grow(len(b.nodes) + trieLabels)
		}
		base = int(e) - int(labels[0]) - 1
		if base < 1 {
			continue
		}
		b.grow(base + trieLabels)
		fits := true
		for _, c := range labels[1:n] {
			if b.nodes[base+int(c)+1].check >= 0 {
				fits = false
				break
			}
		}
		if fits {
			break
		}
	}
	b.nodes[node].base = int32(base)
	for _, c := range labels[:n] {
		b.occupy(base+int(c)+1, node)
	}
	for k, c := range labels[:n] {
		b.build(int32(base+int(c)+1), bounds[k], bounds[k+1], depth+1)
	}
}
