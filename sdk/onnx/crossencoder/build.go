package crossencoder

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// Graph input and output names, as Hugging Face's ONNX exports name them.
const (
	InputIDs      = "input_ids"
	AttentionMask = "attention_mask"
	TokenTypeIDs  = "token_type_ids"
	Logits        = "logits"
)

// MaskValue is added to the attention scores of padding keys. Hugging Face
// adds the dtype's minimum; -1e4 is what older BERT code used and what stays
// safe when the graph is converted to fp16 or bf16: -3.4e38 becomes -inf
// there and (1-mask)·-inf is NaN for every real token, while -1e4 plus any
// plausible score stays finite (fp16 reaches 65504). exp(-1e4) underflows to
// exactly 0 in every float format, so the softmax equals Hugging Face's.
const MaskValue = -1e4

// Producer is the producer_name written into the models.
const Producer = "rerank-sdk-onnx-crossencoder"

// builder carries the graph and the weights while Build emits nodes.
type builder struct {
	c Config
	w Weights
	g *onnx.Graph
}

// tensor fetches a weight and checks its shape against Params.
func (b *builder) tensor(name string, shape ...int64) (Tensor, error) {
	t, err := b.w.Tensor(name)
	if err != nil {
		return Tensor{}, fmt.Errorf("crossencoder: weight %s: %w", name, err)
	}
	if !slices.Equal(t.Shape, shape) {
		return Tensor{}, fmt.Errorf("crossencoder: weight %s has shape %v, want %v", name, t.Shape, shape)
	}
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	if int64(len(t.Data)) != n {
		return Tensor{}, fmt.Errorf("crossencoder: weight %s has %d values for shape %v", name, len(t.Data), shape)
	}
	return t, nil
}

// param adds a weight as an initializer in its PyTorch layout.
func (b *builder) param(name string, shape ...int64) (string, error) {
	t, err := b.tensor(name, shape...)
	if err != nil {
		return "", err
	}
	return b.g.AddFloat(name, shape, t.Data), nil
}

// linear emits x·Wᵀ + b for the PyTorch linear layer name ([out, in]),
// storing W transposed.
func (b *builder) linear(x, name string, out, in int64) (string, error) {
	t, err := b.tensor(name+".weight", out, in)
	if err != nil {
		return "", err
	}
	init := onnx.FloatTensor(name+".weight", []int64{in, out}, transpose(t.Data, out, in))
	init.DocString = "PyTorch " + name + ".weight transposed to [in, out] for MatMul"
	w := b.g.AddInitializer(init)
	bias, err := b.param(name+".bias", out)
	if err != nil {
		return "", err
	}
	mm := b.g.AddNode("MatMul", []string{x, w}, "/"+name+"/MatMul")
	return b.g.AddNode("Add", []string{mm, bias}, "/"+name+"/Add"), nil
}

// transpose returns the [in, out] transpose of the [out, in] matrix w. It
// reads w and writes a fresh slice only, so it is exempt from race
// instrumentation, which would make building a 6×384 model several times
// slower under go test -race.
//
//go:norace
func transpose(w []float32, out, in int64) []float32 {
	wt := make([]float32, len(w))
	for o := int64(0); o < out; o++ {
		for i := int64(0); i < in; i++ {
			wt[i*out+o] = w[o*in+i]
		}
	}
	return wt
}

// layerNorm emits LayerNormalization over the last axis.
func (b *builder) layerNorm(x, name string) (string, error) {
	h := int64(b.c.Hidden)
	scale, err := b.param(name+".weight", h)
	if err != nil {
		return "", err
	}
	shift, err := b.param(name+".bias", h)
	if err != nil {
		return "", err
	}
	return b.g.AddNode("LayerNormalization", []string{x, scale, shift}, "/"+name+"/LayerNormalization",
		onnx.AttrInt("axis", -1), onnx.AttrFloat("epsilon", float32(b.c.LayerNormEps))), nil
}

// scalar adds a float32 scalar constant.
func (b *builder) scalar(name string, v float32) string {
	if b.g.Has(name) {
		return name
	}
	return b.g.AddFloat(name, nil, []float32{v})
}

// ints adds an int64 constant of shape [len(v)] (or a scalar for nil dims).
func (b *builder) ints(name string, dims []int64, v ...int64) string {
	if b.g.Has(name) {
		return name
	}
	return b.g.AddInt64(name, dims, v)
}

// Build returns the fp32 ONNX graph of the sequence classifier c with the
// weights w: BertForSequenceClassification or
// XLMRobertaForSequenceClassification in inference mode (dropout is the
// identity), computing exactly what the PyTorch modules compute.
func Build(c Config, w Weights) (*onnxpb.ModelProto, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	b := &builder{c: c, w: w, g: onnx.NewGraph(c.architecture())}
	logits, err := b.build()
	if err != nil {
		return nil, err
	}
	b.g.AddOutput(logits, onnx.Float, onnx.Sym("batch_size"), onnx.Fixed(int64(c.NumLabels)))
	m := b.g.Model(Producer, "1")
	m.DocString = c.architecture() + " (Hugging Face transformers), inference graph"
	return m, nil
}

func (b *builder) build() (string, error) {
	c, g := b.c, b.g
	h := int64(c.Hidden)
	heads := int64(c.Heads)
	headDim := h / heads
	p := c.prefix()
	batch, seq := onnx.Sym("batch_size"), onnx.Sym("sequence_length")

	ids := g.AddInput(InputIDs, onnx.Int64, batch, seq)
	mask := g.AddInput(AttentionMask, onnx.Int64, batch, seq)
	var types string
	if c.Arch == ArchBERT {
		types = g.AddInput(TokenTypeIDs, onnx.Int64, batch, seq)
	}

	// Embeddings: word + token type, then + position (the order of
	// BertEmbeddings / RobertaEmbeddings), then LayerNorm.
	wordW, err := b.param(p+"embeddings.word_embeddings.weight", int64(c.VocabSize), h)
	if err != nil {
		return "", err
	}
	posW, err := b.param(p+"embeddings.position_embeddings.weight", int64(c.MaxPositions), h)
	if err != nil {
		return "", err
	}
	typeW, err := b.param(p+"embeddings.token_type_embeddings.weight", int64(c.TypeVocabSize), h)
	if err != nil {
		return "", err
	}
	words := g.AddNode("Gather", []string{wordW, ids}, "/embeddings/word_embeddings/Gather")
	var typeEmb string
	if c.Arch == ArchBERT {
		typeEmb = g.AddNode("Gather", []string{typeW, types}, "/embeddings/token_type_embeddings/Gather")
	} else {
		// RobertaEmbeddings uses an all-zero token_type_ids buffer: row 0
		// for every token, broadcast over [batch, sequence].
		typeEmb = g.AddNode("Gather", []string{typeW, b.ints("const_int_0", nil, 0)}, "/embeddings/token_type_embeddings/Gather")
	}
	var posIDs string
	if c.Arch == ArchBERT {
		// position_ids = arange(sequence_length).
		shape := g.AddNode("Shape", []string{ids}, "/embeddings/Shape")
		length := g.AddNode("Gather", []string{shape, b.ints("const_int_1", nil, 1)}, "/embeddings/SequenceLength", onnx.AttrInt("axis", 0))
		posIDs = g.AddNode("Range", []string{b.ints("const_int_0", nil, 0), length, b.ints("const_int_1", nil, 1)}, "/embeddings/position_ids")
	} else {
		// create_position_ids_from_input_ids: mask = input_ids != pad;
		// position_ids = cumsum(mask, 1) * mask + padding_idx.
		pad := b.ints("const_pad_token_id", nil, int64(c.PadTokenID))
		isPad := g.AddNode("Equal", []string{ids, pad}, "/embeddings/IsPadding")
		notPad := g.AddNode("Not", []string{isPad}, "/embeddings/NotPadding")
		notPadInt := g.AddNode("Cast", []string{notPad}, "/embeddings/NotPaddingInt", onnx.AttrInt("to", int64(onnx.Int64)))
		cum := g.AddNode("CumSum", []string{notPadInt, b.ints("const_int_1", nil, 1)}, "/embeddings/CumSum")
		masked := g.AddNode("Mul", []string{cum, notPadInt}, "/embeddings/MaskedCumSum")
		posIDs = g.AddNode("Add", []string{masked, pad}, "/embeddings/position_ids")
	}
	pos := g.AddNode("Gather", []string{posW, posIDs}, "/embeddings/position_embeddings/Gather")
	sum := g.AddNode("Add", []string{words, typeEmb}, "/embeddings/Add")
	sum = g.AddNode("Add", []string{sum, pos}, "/embeddings/Add_1")
	x, err := b.layerNorm(sum, p+"embeddings.LayerNorm")
	if err != nil {
		return "", err
	}

	// Additive attention mask [batch, 1, 1, sequence]: 0 for tokens,
	// MaskValue for padding (see MaskValue for why not the dtype minimum).
	maskF := g.AddNode("Cast", []string{mask}, "/extended_attention_mask/Cast", onnx.AttrInt("to", int64(onnx.Float)))
	maskU := g.AddNode("Unsqueeze", []string{maskF, b.ints("const_axes_1_2", []int64{2}, 1, 2)}, "/extended_attention_mask/Unsqueeze")
	inv := g.AddNode("Sub", []string{b.scalar("const_float_1", 1), maskU}, "/extended_attention_mask/Sub")
	addMask := g.AddNode("Mul", []string{inv, b.scalar("const_mask_value", MaskValue)}, "/extended_attention_mask/Mul")

	splitHeads := b.ints("const_shape_split_heads", []int64{4}, 0, 0, heads, headDim)
	mergeHeads := b.ints("const_shape_merge_heads", []int64{3}, 0, 0, h)
	sqrtD := b.scalar("const_sqrt_head_dim", float32(math.Sqrt(float64(headDim))))
	sqrt2 := b.scalar("const_sqrt_2", float32(math.Sqrt2))
	half := b.scalar("const_float_0.5", 0.5)
	one := b.scalar("const_float_1", 1)

	for l := 0; l < c.Layers; l++ {
		lp := p + "encoder.layer." + strconv.Itoa(l) + "."
		// BertSelfAttention: softmax(q·kᵀ/sqrt(d) + mask)·v per head.
		proj := func(name string, perm ...int64) (string, error) {
			y, err := b.linear(x, lp+"attention.self."+name, h, h)
			if err != nil {
				return "", err
			}
			y = g.AddNode("Reshape", []string{y, splitHeads}, "/"+lp+"attention.self."+name+"/Reshape")
			return g.AddNode("Transpose", []string{y}, "/"+lp+"attention.self."+name+"/Transpose", onnx.AttrInts("perm", perm...)), nil
		}
		q, err := proj("query", 0, 2, 1, 3) // [batch, heads, seq, d]
		if err != nil {
			return "", err
		}
		k, err := proj("key", 0, 2, 3, 1) // [batch, heads, d, seq]
		if err != nil {
			return "", err
		}
		v, err := proj("value", 0, 2, 1, 3) // [batch, heads, seq, d]
		if err != nil {
			return "", err
		}
		ap := "/" + lp + "attention.self"
		scores := g.AddNode("MatMul", []string{q, k}, ap+"/MatMul")
		scores = g.AddNode("Div", []string{scores, sqrtD}, ap+"/Div")
		scores = g.AddNode("Add", []string{scores, addMask}, ap+"/Add")
		probs := g.AddNode("Softmax", []string{scores}, ap+"/Softmax", onnx.AttrInt("axis", -1))
		ctx := g.AddNode("MatMul", []string{probs, v}, ap+"/MatMul_1")
		ctx = g.AddNode("Transpose", []string{ctx}, ap+"/Transpose", onnx.AttrInts("perm", 0, 2, 1, 3))
		ctx = g.AddNode("Reshape", []string{ctx, mergeHeads}, ap+"/Reshape")

		// BertSelfOutput: LayerNorm(dense(ctx) + x).
		attn, err := b.linear(ctx, lp+"attention.output.dense", h, h)
		if err != nil {
			return "", err
		}
		attn = g.AddNode("Add", []string{attn, x}, "/"+lp+"attention.output/Add")
		if x, err = b.layerNorm(attn, lp+"attention.output.LayerNorm"); err != nil {
			return "", err
		}

		// BertIntermediate with exact GELU: 0.5·y·(1 + erf(y/√2)), then
		// BertOutput: LayerNorm(dense(gelu) + x).
		y, err := b.linear(x, lp+"intermediate.dense", int64(c.Intermediate), h)
		if err != nil {
			return "", err
		}
		ip := "/" + lp + "intermediate/gelu"
		e := g.AddNode("Div", []string{y, sqrt2}, ip+"/Div")
		e = g.AddNode("Erf", []string{e}, ip+"/Erf")
		e = g.AddNode("Add", []string{e, one}, ip+"/Add")
		e = g.AddNode("Mul", []string{y, e}, ip+"/Mul")
		e = g.AddNode("Mul", []string{e, half}, ip+"/Mul_1")
		out, err := b.linear(e, lp+"output.dense", h, int64(c.Intermediate))
		if err != nil {
			return "", err
		}
		out = g.AddNode("Add", []string{out, x}, "/"+lp+"output/Add")
		if x, err = b.layerNorm(out, lp+"output.LayerNorm"); err != nil {
			return "", err
		}
	}

	// The first token ([CLS] / <s>): Gather with a scalar index drops the
	// sequence axis, [batch, hidden].
	first := g.AddNode("Gather", []string{x, b.ints("const_int_0", nil, 0)}, "/first_token/Gather", onnx.AttrInt("axis", 1))
	labels := int64(c.NumLabels)
	var logits string
	if c.Arch == ArchBERT {
		// BertPooler (dense + tanh on [CLS]), then the classifier.
		pooled, err := b.linear(first, p+"pooler.dense", h, h)
		if err != nil {
			return "", err
		}
		pooled = g.AddNode("Tanh", []string{pooled}, "/"+p+"pooler/Tanh")
		if logits, err = b.linear(pooled, "classifier", labels, h); err != nil {
			return "", err
		}
	} else {
		// RobertaClassificationHead: dense + tanh on <s>, then out_proj.
		d, err := b.linear(first, "classifier.dense", h, h)
		if err != nil {
			return "", err
		}
		d = g.AddNode("Tanh", []string{d}, "/classifier/Tanh")
		if logits, err = b.linear(d, "classifier.out_proj", labels, h); err != nil {
			return "", err
		}
	}
	// Rename the last node's output to the graph output "logits".
	last := g.Proto().Node[len(g.Proto().Node)-1]
	if last.Output[0] != logits {
		return "", fmt.Errorf("crossencoder: internal error: last node is %s, not the logits", last.GetName())
	}
	last.Output[0] = Logits
	return Logits, nil
}
