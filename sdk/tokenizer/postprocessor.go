package tokenizer

// templatePiece is one element of a post-processing template: either the
// ids of a special token, or sequence A or B, with the type id it gets.
type templatePiece struct {
	special []int32 // nil: a sequence
	seqB    bool    // for a sequence: B (the second) rather than A
	typeID  int32
}

// postProcessor adds the special tokens and type ids to a truncated pair.
// TemplateProcessing, BertProcessing and RobertaProcessing are all written
// as templates; no post-processor is the empty template (A then B, type ids 0
// then 1).
type postProcessor struct {
	single, pair []templatePiece
	// nSingle and nPair are the special-token counts of the two templates.
	nSingle, nPair int
}

func newPostProcessor(single, pair []templatePiece) postProcessor {
	count := func(t []templatePiece) int {
		n := 0
		for _, p := range t {
			n += len(p.special)
		}
		return n
	}
	return postProcessor{single: single, pair: pair, nSingle: count(single), nPair: count(pair)}
}

// defaultPostProcessor is the behaviour without a post_processor.
func defaultPostProcessor() postProcessor {
	return newPostProcessor(
		[]templatePiece{{typeID: 0}},
		[]templatePiece{{typeID: 0}, {seqB: true, typeID: 1}},
	)
}

// bertPostProcessor is BertProcessing: [CLS] A [SEP] B [SEP], B's part typed 1.
func bertPostProcessor(cls, sep int32) postProcessor {
	return newPostProcessor(
		[]templatePiece{{special: []int32{cls}}, {}, {special: []int32{sep}}},
		[]templatePiece{{special: []int32{cls}}, {}, {special: []int32{sep}}, {seqB: true, typeID: 1}, {special: []int32{sep}, typeID: 1}},
	)
}

// robertaPostProcessor is RobertaProcessing: <s> A </s></s> B </s>, every
// type id 0.
func robertaPostProcessor(cls, sep int32) postProcessor {
	return newPostProcessor(
		[]templatePiece{{special: []int32{cls}}, {}, {special: []int32{sep}}},
		[]templatePiece{{special: []int32{cls}}, {}, {special: []int32{sep}}, {special: []int32{sep}}, {seqB: true}, {special: []int32{sep}}},
	)
}

// addedTokens is the number of special tokens added to a pair or a single
// sequence.
func (p *postProcessor) addedTokens(pair bool) int {
	if pair {
		return p.nPair
	}
	return p.nSingle
}

// build lays out the final encoding; its three slices share one allocation.
func (p *postProcessor) build(a, b []int32, pair bool) Encoding {
	tmpl, n := p.single, p.nSingle+len(a)
	if pair {
		tmpl, n = p.pair, p.nPair+len(a)+len(b)
	}
	all := make([]int32, 3*n)
	ids, types, mask := all[:0:n], all[n:n:2*n], all[2*n:3*n]
	for _, piece := range tmpl {
		src := piece.special
		if src == nil {
			src = a
			if piece.seqB {
				src = b
			}
		}
		ids = append(ids, src...)
		for range src {
			types = append(types, piece.typeID)
		}
	}
	for i := range mask {
		mask[i] = 1
	}
	return Encoding{IDs: ids, TypeIDs: types, AttentionMask: mask}
}
