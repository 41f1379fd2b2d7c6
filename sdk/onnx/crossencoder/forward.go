package crossencoder

import (
	"fmt"
	"math"
	"strconv"
)

// Sequence is one tokenized pair for Forward, without padding.
type Sequence struct {
	// InputIDs are the token ids.
	InputIDs []int64
	// TokenTypeIDs are the segment ids (BERT only; nil means all 0).
	TokenTypeIDs []int64
	// AttentionMask marks real tokens with 1 (nil means all 1).
	AttentionMask []int64
}

// Forward computes the logits of each sequence in plain Go, float64
// throughout, straight from the Hugging Face PyTorch modules' definitions:
// a second implementation that tests hold the ONNX graph against, and what
// RandomWeights uses to calibrate its head. It is slow (no batching, no
// SIMD): meant for a few short sequences.
func Forward(c Config, w Weights, seqs []Sequence) ([][]float64, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	m, err := loadModel(c, w)
	if err != nil {
		return nil, err
	}
	out := make([][]float64, len(seqs))
	for i, s := range seqs {
		feat, err := m.features(s)
		if err != nil {
			return nil, fmt.Errorf("crossencoder: sequence %d: %w", i, err)
		}
		out[i] = m.head.apply(feat)
	}
	return out, nil
}

// dense is a linear layer in PyTorch layout: y = W·x + b, W [out, in].
type dense struct {
	w, b    []float32
	out, in int
}

// apply returns W·x + b. It reads only the layer's weights (never written
// after loading) and x, and writes a fresh slice, so it is exempt from race
// instrumentation: the forward pass is almost all this loop, and the race
// detector's per-access checks would make calibration 6× slower under go
// test -race.
//
//go:norace
func (d dense) apply(x []float64) []float64 {
	y := make([]float64, d.out)
	for o := range y {
		row := d.w[o*d.in : (o+1)*d.in]
		s := float64(d.b[o])
		for i, v := range row {
			s += float64(v) * x[i]
		}
		y[o] = s
	}
	return y
}

// norm is a LayerNorm over the hidden axis.
type norm struct {
	g, b []float32
	eps  float64
}

func (n norm) apply(x []float64) {
	var mean, v float64
	for _, a := range x {
		mean += a
	}
	mean /= float64(len(x))
	for _, a := range x {
		v += (a - mean) * (a - mean)
	}
	v /= float64(len(x))
	inv := 1 / math.Sqrt(v+n.eps)
	for i := range x {
		x[i] = (x[i]-mean)*inv*float64(n.g[i]) + float64(n.b[i])
	}
}

// layer is one encoder layer.
type layer struct {
	q, k, v, o, up, down dense
	attnNorm, outNorm    norm
}

// model holds the tensors Forward reads.
type model struct {
	c              Config
	word, pos, typ []float32
	embNorm        norm
	layers         []layer
	pre            dense // BERT pooler or XLM-R classifier.dense, then tanh
	head           dense // the logit projection
}

func loadModel(c Config, w Weights) (*model, error) {
	get := func(name string, shape ...int64) ([]float32, error) {
		t, err := w.Tensor(name)
		if err != nil {
			return nil, fmt.Errorf("crossencoder: weight %s: %w", name, err)
		}
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		if len(t.Shape) != len(shape) || int64(len(t.Data)) != n {
			return nil, fmt.Errorf("crossencoder: weight %s has shape %v, want %v", name, t.Shape, shape)
		}
		for i := range shape {
			if t.Shape[i] != shape[i] {
				return nil, fmt.Errorf("crossencoder: weight %s has shape %v, want %v", name, t.Shape, shape)
			}
		}
		return t.Data, nil
	}
	var err error
	lin := func(name string, out, in int) dense {
		if err != nil {
			return dense{}
		}
		d := dense{out: out, in: in}
		if d.w, err = get(name+".weight", int64(out), int64(in)); err == nil {
			d.b, err = get(name+".bias", int64(out))
		}
		return d
	}
	ln := func(name string) norm {
		if err != nil {
			return norm{}
		}
		n := norm{eps: c.LayerNormEps}
		if n.g, err = get(name+".weight", int64(c.Hidden)); err == nil {
			n.b, err = get(name+".bias", int64(c.Hidden))
		}
		return n
	}
	h, p := int64(c.Hidden), c.prefix()
	m := &model{c: c}
	if m.word, err = get(p+"embeddings.word_embeddings.weight", int64(c.VocabSize), h); err != nil {
		return nil, err
	}
	if m.pos, err = get(p+"embeddings.position_embeddings.weight", int64(c.MaxPositions), h); err != nil {
		return nil, err
	}
	if m.typ, err = get(p+"embeddings.token_type_embeddings.weight", int64(c.TypeVocabSize), h); err != nil {
		return nil, err
	}
	m.embNorm = ln(p + "embeddings.LayerNorm")
	for l := 0; l < c.Layers; l++ {
		lp := p + "encoder.layer." + strconv.Itoa(l) + "."
		m.layers = append(m.layers, layer{
			q:        lin(lp+"attention.self.query", c.Hidden, c.Hidden),
			k:        lin(lp+"attention.self.key", c.Hidden, c.Hidden),
			v:        lin(lp+"attention.self.value", c.Hidden, c.Hidden),
			o:        lin(lp+"attention.output.dense", c.Hidden, c.Hidden),
			attnNorm: ln(lp + "attention.output.LayerNorm"),
			up:       lin(lp+"intermediate.dense", c.Intermediate, c.Hidden),
			down:     lin(lp+"output.dense", c.Hidden, c.Intermediate),
			outNorm:  ln(lp + "output.LayerNorm"),
		})
	}
	if c.Arch == ArchXLMRoberta {
		m.pre = lin("classifier.dense", c.Hidden, c.Hidden)
		m.head = lin("classifier.out_proj", c.NumLabels, c.Hidden)
	} else {
		m.pre = lin(p+"pooler.dense", c.Hidden, c.Hidden)
		m.head = lin("classifier", c.NumLabels, c.Hidden)
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

// features returns the head's input for one sequence: tanh(dense(first
// token)) after the last encoder layer.
func (m *model) features(s Sequence) ([]float64, error) {
	c := m.c
	n, hid := len(s.InputIDs), c.Hidden
	if n == 0 || n > c.MaxTokens() {
		return nil, fmt.Errorf("length %d outside 1..%d", n, c.MaxTokens())
	}
	if (s.TokenTypeIDs != nil && len(s.TokenTypeIDs) != n) || (s.AttentionMask != nil && len(s.AttentionMask) != n) {
		return nil, fmt.Errorf("input lengths differ")
	}
	// Position ids: arange for BERT; create_position_ids_from_input_ids for
	// XLM-R (cumulative count of non-padding tokens, offset past padding_idx).
	x := make([][]float64, n)
	count := 0
	for t := 0; t < n; t++ {
		id := s.InputIDs[t]
		if id < 0 || id >= int64(c.VocabSize) {
			return nil, fmt.Errorf("token id %d outside the vocabulary", id)
		}
		typ := int64(0)
		if c.Arch == ArchBERT && s.TokenTypeIDs != nil {
			typ = s.TokenTypeIDs[t]
		}
		if typ < 0 || typ >= int64(c.TypeVocabSize) {
			return nil, fmt.Errorf("token type %d outside 0..%d", typ, c.TypeVocabSize-1)
		}
		pos := t
		if c.Arch == ArchXLMRoberta {
			pos = c.PadTokenID
			if id != int64(c.PadTokenID) {
				count++
				pos = count + c.PadTokenID
			}
		}
		v := make([]float64, hid)
		for i := range v {
			// (word + type) + position, the order of BertEmbeddings.
			v[i] = float64(m.word[int(id)*hid+i]) + float64(m.typ[int(typ)*hid+i])
			v[i] += float64(m.pos[pos*hid+i])
		}
		m.embNorm.apply(v)
		x[t] = v
	}
	heads := c.Heads
	d := hid / heads
	scale := math.Sqrt(float64(d))
	for _, l := range m.layers {
		q, k, v := make([][]float64, n), make([][]float64, n), make([][]float64, n)
		for t := range x {
			q[t], k[t], v[t] = l.q.apply(x[t]), l.k.apply(x[t]), l.v.apply(x[t])
		}
		next := make([][]float64, n)
		for t := 0; t < n; t++ {
			ctx := make([]float64, hid)
			for a := 0; a < heads; a++ {
				scores := make([]float64, n)
				top := math.Inf(-1)
				for j := 0; j < n; j++ {
					var s2 float64
					for e := a * d; e < (a+1)*d; e++ {
						s2 += q[t][e] * k[j][e]
					}
					s2 /= scale
					if s.AttentionMask != nil && s.AttentionMask[j] == 0 {
						s2 += MaskValue
					}
					scores[j] = s2
					top = max(top, s2)
				}
				var sum float64
				for j := range scores {
					scores[j] = math.Exp(scores[j] - top)
					sum += scores[j]
				}
				for j := range scores {
					p := scores[j] / sum
					for e := a * d; e < (a+1)*d; e++ {
						ctx[e] += p * v[j][e]
					}
				}
			}
			y := l.o.apply(ctx)
			for i := range y {
				y[i] += x[t][i]
			}
			l.attnNorm.apply(y)
			up := l.up.apply(y)
			for i, u := range up {
				up[i] = 0.5 * u * (1 + math.Erf(u/math.Sqrt2))
			}
			z := l.down.apply(up)
			for i := range z {
				z[i] += y[i]
			}
			l.outNorm.apply(z)
			next[t] = z
		}
		x = next
	}
	f := m.pre.apply(x[0])
	for i := range f {
		f[i] = math.Tanh(f[i])
	}
	return f, nil
}
