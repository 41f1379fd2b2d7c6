package crossencoder

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
)

// Tensor is one weight tensor: its shape and its values in row-major order.
type Tensor struct {
	// Shape is the tensor's dimensions, PyTorch layout.
	Shape []int64
	// Data holds the values, row-major; its length is the product of Shape.
	Data []float32
}

// Weights gives the model's tensors by their Hugging Face PyTorch names,
// for example "bert.encoder.layer.0.attention.self.query.weight".
type Weights interface {
	// Tensor returns the named tensor or an error when there is none.
	Tensor(name string) (Tensor, error)
}

// Role says what a parameter is, which decides how RandomWeights draws it.
type Role int

// The parameter roles.
const (
	// RoleEmbedding is an embedding table [rows, hidden].
	RoleEmbedding Role = iota
	// RoleLinear is a linear layer's weight [out, in].
	RoleLinear
	// RoleBias is a linear layer's bias [out].
	RoleBias
	// RoleNormScale is a LayerNorm weight (gamma) [hidden].
	RoleNormScale
	// RoleNormShift is a LayerNorm bias (beta) [hidden].
	RoleNormShift
	// RoleHead is the last linear weight, producing the logits [labels, hidden].
	RoleHead
	// RoleHeadBias is the bias of the logits [labels].
	RoleHeadBias
)

// Param is one tensor the graph needs: its PyTorch name, shape and role.
type Param struct {
	// Name is the Hugging Face PyTorch name.
	Name string
	// Shape is the PyTorch shape ([out, in] for linear weights).
	Shape []int64
	// Role says what the tensor is.
	Role Role
}

// prefix is the PyTorch module name of the encoder for c.Arch.
func (c Config) prefix() string {
	if c.Arch == ArchXLMRoberta {
		return "roberta."
	}
	return "bert."
}

// Params lists every tensor Build reads for c, in graph order.
func Params(c Config) []Param {
	h, i := int64(c.Hidden), int64(c.Intermediate)
	var ps []Param
	add := func(name string, role Role, shape ...int64) {
		ps = append(ps, Param{Name: name, Shape: shape, Role: role})
	}
	linear := func(name string, out, in int64) {
		add(name+".weight", RoleLinear, out, in)
		add(name+".bias", RoleBias, out)
	}
	norm := func(name string) {
		add(name+".weight", RoleNormScale, h)
		add(name+".bias", RoleNormShift, h)
	}
	p := c.prefix()
	add(p+"embeddings.word_embeddings.weight", RoleEmbedding, int64(c.VocabSize), h)
	add(p+"embeddings.position_embeddings.weight", RoleEmbedding, int64(c.MaxPositions), h)
	add(p+"embeddings.token_type_embeddings.weight", RoleEmbedding, int64(c.TypeVocabSize), h)
	norm(p + "embeddings.LayerNorm")
	for l := 0; l < c.Layers; l++ {
		lp := p + "encoder.layer." + strconv.Itoa(l) + "."
		linear(lp+"attention.self.query", h, h)
		linear(lp+"attention.self.key", h, h)
		linear(lp+"attention.self.value", h, h)
		linear(lp+"attention.output.dense", h, h)
		norm(lp + "attention.output.LayerNorm")
		linear(lp+"intermediate.dense", i, h)
		linear(lp+"output.dense", h, i)
		norm(lp + "output.LayerNorm")
	}
	labels := int64(c.NumLabels)
	if c.Arch == ArchXLMRoberta {
		linear("classifier.dense", h, h)
		add("classifier.out_proj.weight", RoleHead, labels, h)
		add("classifier.out_proj.bias", RoleHeadBias, labels)
	} else {
		linear(p+"pooler.dense", h, h)
		add("classifier.weight", RoleHead, labels, h)
		add("classifier.bias", RoleHeadBias, labels)
	}
	return ps
}

// Initialisation scales of RandomWeights.
const (
	// embeddingStd is Hugging Face's initializer_range: embeddings are
	// LayerNorm-ed straight away, so their scale only sets the balance
	// between word, position and type vectors, which HF's init fixes.
	embeddingStd = 0.02
	// biasStd makes biases non-zero (HF starts them at zero) so that a bias
	// wired to the wrong node changes the output and a test can catch it.
	biasStd = 0.02
	// logitSpread is the standard deviation the calibrated logits get over
	// the calibration pairs: a trained reranker's logits spread over several
	// units (ms-marco MiniLM's run from about -11 to +10), and 3 keeps most
	// sigmoid scores away from saturation.
	logitSpread = 3.0
	// calibrationPairs is how many random pairs calibrate the head: enough
	// for a mean and a spread within a few tens of percent, few enough that
	// the plain-Go forward pass of a 6×384 model stays within seconds.
	calibrationPairs = 8
	// maxHeadScale bounds the calibrated scale, in case a degenerate shape
	// gives features that hardly vary.
	maxHeadScale = 1e4
)

// RandomWeights returns deterministic random weights for c: the same seed
// gives bit-identical tensors on every platform and Go version, because each
// value is computed from math/rand/v2's PCG (a specified algorithm) with
// integer arithmetic and one IEEE multiplication. Each tensor has its own
// stream (keyed by its name), so the order of Tensor calls does not matter.
//
// Values are normal-shaped (an Irwin–Hall sum of 12 uniforms, mean 0,
// variance 1, support ±6σ) with these scales: embeddings 0.02 like Hugging
// Face's init; LayerNorm weight 1 and bias 0; linear weights
// 1/sqrt(fan_in) (LeCun) and biases 0.02.
//
// Linear weights deliberately do not use Hugging Face's 0.02: at that scale
// attention is uniform and the first-token vector hardly depends on the
// input, so any head scaled to spread logits would mostly amplify rounding
// noise, making fp32 goldens fragile and reduced-precision comparisons
// meaningless. With 1/sqrt(fan_in) every layer keeps unit-variance
// activations and attention is selective, so scores differ across documents
// for real.
//
// The logit projection (classifier.weight, or classifier.out_proj.weight)
// is then calibrated, on the first Tensor call (which therefore draws the
// whole model; each tensor is kept until it is asked for once): Forward
// runs calibrationPairs random pairs shaped like
// real ones ([CLS] query [SEP] document [SEP] with BERT's usual ids 101/102,
// <s> … </s></s> … </s> with XLM-R's 0/2), and the head is scaled and
// biased so those logits have mean 0 and standard deviation logitSpread. The
// scale is rounded to two significant digits and the bias to 0.01, so the
// last-bit differences math.Exp or fused multiply-adds may show across
// platforms cannot change the bytes.
func RandomWeights(c Config, seed uint64) Weights {
	ps := map[string]Param{}
	for _, p := range Params(c) {
		ps[p.Name] = p
	}
	return &randomWeights{c: c, params: ps, seed: seed}
}

// randomWeights is the Weights of RandomWeights.
type randomWeights struct {
	c      Config
	params map[string]Param
	seed   uint64

	once  sync.Once
	scale float64   // calibrated multiplier of the logit projection
	bias  []float64 // calibrated logit biases
	err   error

	// drawn keeps the tensors calibration drew until Tensor hands each out
	// once, so building a model draws every value once, not twice.
	mu    sync.Mutex
	drawn map[string]Tensor
}

// Seed returns the seed the weights were drawn with; WriteModelDir records
// it in config.json.
func (r *randomWeights) Seed() uint64 { return r.seed }

// Tensor draws the named tensor.
func (r *randomWeights) Tensor(name string) (Tensor, error) {
	p, ok := r.params[name]
	if !ok {
		return Tensor{}, fmt.Errorf("crossencoder: no tensor %q in this architecture", name)
	}
	r.once.Do(r.calibrate)
	if r.err != nil {
		return Tensor{}, r.err
	}
	r.mu.Lock()
	t, ok := r.drawn[name]
	delete(r.drawn, name)
	r.mu.Unlock()
	if !ok {
		t = r.draw(p)
	}
	switch p.Role {
	case RoleHead, RoleHeadBias:
		if p.Role == RoleHeadBias {
			for i := range t.Data {
				t.Data[i] = float32(r.bias[i])
			}
			return t, nil
		}
		for i, v := range t.Data {
			t.Data[i] = float32(float64(v) * r.scale)
		}
		return t, nil
	}
	return t, nil
}

// draw returns the tensor's uncalibrated values (the head at unit gain,
// std 1/sqrt(fan_in), with a zero bias).
func (r *randomWeights) draw(p Param) Tensor {
	n := int64(1)
	for _, d := range p.Shape {
		n *= d
	}
	t := Tensor{Shape: append([]int64(nil), p.Shape...), Data: make([]float32, n)}
	var std float64
	switch p.Role {
	case RoleNormScale:
		for i := range t.Data {
			t.Data[i] = 1
		}
		return t
	case RoleNormShift, RoleHeadBias:
		return t
	case RoleEmbedding:
		std = embeddingStd
	case RoleBias:
		std = biasStd
	case RoleLinear, RoleHead:
		std = 1 / math.Sqrt(float64(p.Shape[1]))
	}
	h := fnv.New64a()
	h.Write([]byte(p.Name))
	src := rand.NewPCG(r.seed, h.Sum64())
	// Each uniform has 16 bits, so the 12 come from three 64-bit draws; the
	// sum minus its mean, over 2^16, has variance (2^32-1)/2^32 ≈ 1.
	fill(t.Data, src, std/65536)
	return t
}

// fill writes Irwin–Hall values times scale into data. It touches only
// data (freshly allocated) and src (local), so it is exempt from race
// instrumentation, which would make drawing a 6×384 model 10× slower under
// go test -race.
//
//go:norace
func fill(data []float32, src *rand.PCG, scale float64) {
	const mean = 6 * 0xFFFF
	for i := range data {
		var sum int64
		for k := 0; k < 3; k++ {
			u := src.Uint64()
			sum += int64(u&0xFFFF) + int64(u>>16&0xFFFF) + int64(u>>32&0xFFFF) + int64(u>>48)
		}
		data[i] = float32(float64(sum-mean) * scale)
	}
}

// uncalibrated serves draw for every tensor, head included, and keeps
// what it drew in r.drawn.
type uncalibrated struct{ r *randomWeights }

func (u uncalibrated) Tensor(name string) (Tensor, error) {
	p, ok := u.r.params[name]
	if !ok {
		return Tensor{}, fmt.Errorf("crossencoder: no tensor %q in this architecture", name)
	}
	t := u.r.draw(p)
	u.r.drawn[name] = t
	return t, nil
}

// calibrate sets scale and bias from the logits of random pairs.
func (r *randomWeights) calibrate() {
	c := r.c
	if err := c.Validate(); err != nil {
		r.err = err
		return
	}
	r.drawn = map[string]Tensor{}
	m, err := loadModel(c, uncalibrated{r})
	if err != nil {
		r.err = err
		return
	}
	// Separator ids: BERT WordPiece vocabularies put [CLS] at 101 and
	// [SEP] at 102; fairseq dictionaries (XLM-R) put <s> at 0 and </s> at 2.
	cls, sep := int64(101), int64(102)
	if c.Arch == ArchXLMRoberta {
		cls, sep = 0, 2
	}
	v := int64(c.VocabSize)
	cls, sep = min(cls, v-1), min(sep, v-1)
	src := rand.New(rand.NewPCG(r.seed, 0x63616c6962726174)) // "calibrat"
	token := func() int64 {
		for {
			id := int64(src.Uint64N(uint64(v)))
			if id != int64(c.PadTokenID) || v == 1 {
				return id
			}
		}
	}
	logits := make([][]float64, 0, calibrationPairs)
	for i := 0; i < calibrationPairs; i++ {
		q, d := 3+int(src.Uint64N(6)), 4+int(src.Uint64N(13)) // 3–8 and 4–16 tokens, like short queries and passages
		var s Sequence
		push := func(id, typ int64) {
			if len(s.InputIDs) < c.MaxTokens() {
				s.InputIDs = append(s.InputIDs, id)
				s.TokenTypeIDs = append(s.TokenTypeIDs, min(typ, int64(c.TypeVocabSize-1)))
			}
		}
		push(cls, 0)
		for j := 0; j < q; j++ {
			push(token(), 0)
		}
		push(sep, 0)
		if c.Arch == ArchXLMRoberta {
			push(sep, 0)
		}
		for j := 0; j < d; j++ {
			push(token(), 1)
		}
		push(sep, 1)
		f, err := m.features(s)
		if err != nil {
			r.err = fmt.Errorf("crossencoder: calibrate head: %w", err)
			return
		}
		logits = append(logits, m.head.apply(f))
	}
	r.bias = make([]float64, c.NumLabels)
	mean := make([]float64, c.NumLabels)
	var sd float64
	for l := range mean {
		for _, x := range logits {
			mean[l] += x[l]
		}
		mean[l] /= float64(len(logits))
		if l == 0 {
			for _, x := range logits {
				sd += (x[0] - mean[0]) * (x[0] - mean[0])
			}
			sd = math.Sqrt(sd / float64(len(logits)))
		}
	}
	r.scale = maxHeadScale
	if sd > logitSpread/maxHeadScale {
		r.scale = roundSignificant(logitSpread/sd, 2)
	}
	for l := range r.bias {
		r.bias[l] = math.Round(-r.scale*mean[l]*100) / 100
	}
}

// roundSignificant rounds x to n significant decimal digits.
func roundSignificant(x float64, n int) float64 {
	if x == 0 {
		return 0
	}
	p := math.Pow(10, float64(n)-math.Ceil(math.Log10(math.Abs(x))))
	return math.Round(x*p) / p
}
