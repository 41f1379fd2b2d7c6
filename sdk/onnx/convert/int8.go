package convert

import (
	"fmt"
	"math"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// MicrosoftDomain is the ONNX Runtime contrib-op domain that holds
// DynamicQuantizeMatMul.
const MicrosoftDomain = "com.microsoft"

// DefaultMinElements is the smallest weight Int8 quantizes: a smaller matrix
// (a one-label classifier [hidden, 1], BERT's 2-row token-type table) saves
// a few KB at most, while its rounding error lands directly on the logit.
const DefaultMinElements = 4096

// Int8Options adjusts Int8.
type Int8Options struct {
	// ReduceRange quantizes weights to 7 bits (±63) instead of 8 (±127).
	// x86-64 CPUs without VNNI compute uint8×int8 products with an
	// instruction that saturates int16 sums; 7-bit weights cannot
	// saturate it. CPUs with AVX-VNNI/AVX512-VNNI and ARM do not need it.
	ReduceRange bool
	// MinElements is the smallest weight quantized; 0 means
	// DefaultMinElements.
	MinElements int
	// KeepEmbeddings leaves embedding tables in fp32; by default a Gather
	// over a float table is rewritten to gather int8 rows and their
	// per-row scales, which is most of the memory of a model with a large
	// vocabulary (bge-reranker-v2-m3: 256M of 568M parameters).
	KeepEmbeddings bool
}

// Int8Stats says what Int8 rewrote.
type Int8Stats struct {
	// MatMuls is the number of MatMul and Gemm nodes quantized.
	MatMuls int
	// Embeddings is the number of embedding tables quantized.
	Embeddings int
	// WeightBytesBefore and WeightBytesAfter total the initializers.
	WeightBytesBefore, WeightBytesAfter int64
}

// Int8 dynamically quantizes the fp32 model m in place: every MatMul (and
// Gemm without transA, alpha 1) whose second input is a constant 2-D float
// matrix becomes a com.microsoft DynamicQuantizeMatMul with int8 weights
// quantized symmetrically per output column (one scale per column, zero
// point 0); the activations are quantized to uint8 per call by the
// runtime, and the result is fp32. A following Add of a constant bias is
// folded into the node. The classification head (the two linear layers the
// logits come from, see headMatMuls) is left in fp32. Embedding tables are stored as
// int8 with a per-row scale unless opt.KeepEmbeddings is set. Everything
// else stays fp32.
func Int8(m *onnxpb.ModelProto, opt Int8Options) (Int8Stats, error) {
	var st Int8Stats
	g := m.GetGraph()
	if g == nil {
		return st, fmt.Errorf("convert: model has no graph")
	}
	if err := checkConvertible(g); err != nil {
		return st, err
	}
	minElems := int64(opt.MinElements)
	if minElems <= 0 {
		minElems = DefaultMinElements
	}
	qmax := float32(127)
	if opt.ReduceRange {
		qmax = 63
	}
	st.WeightBytesBefore = initializerBytes(g)
	types := inferTypes(g)
	producer := map[string]int{}
	consumers := map[string][]int{}
	for i, n := range g.GetNode() {
		for _, o := range n.GetOutput() {
			producer[o] = i
		}
		for _, in := range n.GetInput() {
			consumers[in] = append(consumers[in], i)
		}
	}
	inits := map[string]*onnxpb.TensorProto{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = t
	}
	outputs := map[string]bool{}
	for _, o := range g.GetOutput() {
		outputs[o.GetName()] = true
	}
	head := headNodes(g, types, producer, inits)
	opset := defaultOpset(m)

	newInits := map[string]*onnxpb.TensorProto{}
	removed := map[int]bool{}
	replaced := map[int][]*onnxpb.NodeProto{}
	// matrix returns the constant float weight w as [K, N] row-major.
	matrix := func(name string, transpose bool) ([]float32, int64, int64, bool) {
		t := inits[name]
		if t == nil || t.GetDataType() != tFloat || len(t.GetDims()) != 2 {
			return nil, 0, 0, false
		}
		data, err := onnx.Floats(t)
		if err != nil {
			return nil, 0, 0, false
		}
		k, n := t.GetDims()[0], t.GetDims()[1]
		if transpose {
			tr := make([]float32, len(data))
			for i := int64(0); i < k; i++ {
				for j := int64(0); j < n; j++ {
					tr[j*k+i] = data[i*n+j]
				}
			}
			data, k, n = tr, n, k
		}
		return data, k, n, k*n >= minElems
	}
	for i, n := range g.GetNode() {
		if head[i] || n.GetDomain() != "" && n.GetDomain() != "ai.onnx" {
			continue
		}
		in := n.GetInput()
		var w []float32
		var k, cols int64
		var bias string
		switch n.GetOpType() {
		case "MatMul":
			var ok bool
			if len(in) != 2 || types[in[0]] != tFloat {
				continue
			}
			if w, k, cols, ok = matrix(in[1], false); !ok {
				continue
			}
		case "Gemm":
			var ok bool
			if len(in) < 2 || types[in[0]] != tFloat || attrInt(n, "transA", 0) != 0 || attrFloat(n, "alpha", 1) != 1 {
				continue
			}
			if w, k, cols, ok = matrix(in[1], attrInt(n, "transB", 0) != 0); !ok {
				continue
			}
			if len(in) > 2 && in[2] != "" {
				c := inits[in[2]]
				if c == nil || attrFloat(n, "beta", 1) != 1 || len(c.GetDims()) != 1 || c.GetDims()[0] != cols {
					continue
				}
				bias = in[2]
			}
		default:
			continue
		}
		out := n.GetOutput()[0]
		// Fold a following "Add(out, constant bias [N])".
		if bias == "" && !outputs[out] && len(consumers[out]) == 1 {
			j := consumers[out][0]
			add := g.GetNode()[j]
			if add.GetOpType() == "Add" && add.GetDomain() == "" && len(add.GetInput()) == 2 && !head[j] {
				other := add.GetInput()[1]
				if other == out {
					other = add.GetInput()[0]
				}
				if c := inits[other]; c != nil && c.GetDataType() == tFloat && len(c.GetDims()) == 1 && c.GetDims()[0] == cols {
					bias = other
					out = add.GetOutput()[0]
					removed[j] = true
				}
			}
		}
		q, scales := quantizeColumns(w, k, cols, qmax)
		base := in[1]
		qName, sName := base+"/int8", base+"/scale"
		newInits[qName] = &onnxpb.TensorProto{Name: qName, Dims: []int64{k, cols}, DataType: tInt8, RawData: q}
		newInits[sName] = onnx.FloatTensor(sName, []int64{cols}, scales)
		inputs := []string{in[0], qName, sName, "", bias}
		if bias == "" {
			inputs = inputs[:3]
		}
		replaced[i] = []*onnxpb.NodeProto{{
			Name: n.GetName() + "/DynamicQuantizeMatMul", OpType: "DynamicQuantizeMatMul", Domain: MicrosoftDomain,
			Input: inputs, Output: []string{out},
		}}
		st.MatMuls++
	}
	if !opt.KeepEmbeddings {
		for i, n := range g.GetNode() {
			if n.GetOpType() != "Gather" || n.GetDomain() != "" || len(n.GetInput()) != 2 || attrInt(n, "axis", 0) != 0 {
				continue
			}
			table := inits[n.GetInput()[0]]
			if table == nil || table.GetDataType() != tFloat || len(table.GetDims()) != 2 {
				continue
			}
			rows, width := table.GetDims()[0], table.GetDims()[1]
			if rows*width < minElems {
				continue
			}
			data, err := onnx.Floats(table)
			if err != nil {
				return st, fmt.Errorf("convert: %w", err)
			}
			q, scales := quantizeRows(data, rows, width)
			base := table.GetName()
			qName, sName := base+"/int8", base+"/row_scale"
			newInits[qName] = &onnxpb.TensorProto{Name: qName, Dims: []int64{rows, width}, DataType: tInt8, RawData: q}
			newInits[sName] = onnx.FloatTensor(sName, []int64{rows}, scales)
			ids, out := n.GetInput()[1], n.GetOutput()[0]
			p := n.GetName() + "/int8"
			unsq := &onnxpb.NodeProto{Name: p + "/Unsqueeze", OpType: "Unsqueeze", Input: []string{p + "/scale"}, Output: []string{p + "/scale_col"}}
			if opset >= 13 {
				axes := p + "/axes"
				newInits[axes] = onnx.Int64Tensor(axes, []int64{1}, []int64{-1})
				unsq.Input = append(unsq.Input, axes)
			} else {
				unsq.Attribute = []*onnxpb.AttributeProto{onnx.AttrInts("axes", -1)}
			}
			replaced[i] = []*onnxpb.NodeProto{
				{Name: p + "/Gather", OpType: "Gather", Input: []string{qName, ids}, Output: []string{p + "/rows"}},
				{Name: p + "/GatherScale", OpType: "Gather", Input: []string{sName, ids}, Output: []string{p + "/scale"}},
				{Name: p + "/Cast", OpType: "Cast", Input: []string{p + "/rows"}, Output: []string{p + "/rows_f"},
					Attribute: []*onnxpb.AttributeProto{onnx.AttrInt("to", int64(tFloat))}},
				unsq,
				{Name: p + "/Mul", OpType: "Mul", Input: []string{p + "/rows_f", p + "/scale_col"}, Output: []string{out}},
			}
			st.Embeddings++
		}
	}
	if st.MatMuls == 0 && st.Embeddings == 0 {
		return st, fmt.Errorf("convert: no MatMul, Gemm or embedding with constant fp32 weights to quantize")
	}
	nodes := make([]*onnxpb.NodeProto, 0, len(g.GetNode()))
	for i, n := range g.GetNode() {
		if removed[i] {
			continue
		}
		if r, ok := replaced[i]; ok {
			nodes = append(nodes, r...)
			continue
		}
		nodes = append(nodes, n)
	}
	g.Node = nodes
	// Drop initializers nothing reads any more (the fp32 originals) and add
	// the quantized ones, keeping the original order for the rest.
	used := map[string]bool{}
	for _, n := range g.GetNode() {
		for _, in := range n.GetInput() {
			used[in] = true
		}
	}
	for _, o := range g.GetOutput() {
		used[o.GetName()] = true
	}
	kept := g.Initializer[:0]
	for _, t := range g.GetInitializer() {
		if used[t.GetName()] {
			kept = append(kept, t)
		}
	}
	g.Initializer = kept
	for _, n := range g.GetNode() {
		for _, in := range n.GetInput() {
			if t, ok := newInits[in]; ok {
				g.Initializer = append(g.Initializer, t)
				delete(newInits, in)
			}
		}
	}
	g.ValueInfo = nil
	addOpset(m, MicrosoftDomain, 1)
	st.WeightBytesAfter = initializerBytes(g)
	return st, nil
}

// quantizeColumns quantizes w [k, n] symmetrically per column to int8 with
// |q| ≤ qmax, returning the int8 bytes and the n scales.
func quantizeColumns(w []float32, k, n int64, qmax float32) ([]byte, []float32) {
	scales := make([]float32, n)
	for i := int64(0); i < k; i++ {
		for j := int64(0); j < n; j++ {
			if a := float32(math.Abs(float64(w[i*n+j]))); a > scales[j] {
				scales[j] = a
			}
		}
	}
	for j := range scales {
		if scales[j] == 0 {
			scales[j] = 1 // an all-zero column: any scale reproduces it
		} else {
			scales[j] /= qmax
		}
	}
	q := make([]byte, k*n)
	for i := int64(0); i < k; i++ {
		for j := int64(0); j < n; j++ {
			q[i*n+j] = byte(int8(clampRound(w[i*n+j]/scales[j], qmax)))
		}
	}
	return q, scales
}

// quantizeRows quantizes table [rows, width] symmetrically per row to int8
// in [-127, 127], returning the bytes and the per-row scales.
func quantizeRows(table []float32, rows, width int64) ([]byte, []float32) {
	// 127, not 128: a symmetric range keeps -x and x equally precise.
	const qmax = 127
	scales := make([]float32, rows)
	q := make([]byte, rows*width)
	for r := int64(0); r < rows; r++ {
		row := table[r*width : (r+1)*width]
		var m float32
		for _, v := range row {
			if a := float32(math.Abs(float64(v))); a > m {
				m = a
			}
		}
		s := float32(1)
		if m > 0 {
			s = m / qmax
		}
		scales[r] = s
		for c, v := range row {
			q[r*width+int64(c)] = byte(int8(clampRound(v/s, qmax)))
		}
	}
	return q, scales
}

// clampRound rounds v to the nearest integer, ties to even as ONNX
// Runtime's own quantizers do, and clamps it to ±qmax.
func clampRound(v, qmax float32) float32 {
	r := float32(math.RoundToEven(float64(v)))
	return max(-qmax, min(qmax, r))
}

// initializerBytes totals the raw sizes of g's initializers.
func initializerBytes(g *onnxpb.GraphProto) int64 {
	var n int64
	for _, t := range g.GetInitializer() {
		n += int64(len(t.GetRawData())) + 4*int64(len(t.GetFloatData())) + 8*int64(len(t.GetInt64Data())) + 4*int64(len(t.GetInt32Data()))
	}
	return n
}

// defaultOpset returns the model's default-domain opset version.
func defaultOpset(m *onnxpb.ModelProto) int64 {
	for _, o := range m.GetOpsetImport() {
		if o.GetDomain() == "" || o.GetDomain() == "ai.onnx" {
			return o.GetVersion()
		}
	}
	return 0
}

// addOpset imports domain at version unless the model already imports it.
func addOpset(m *onnxpb.ModelProto, domain string, version int64) {
	for _, o := range m.GetOpsetImport() {
		if o.GetDomain() == domain {
			return
		}
	}
	m.OpsetImport = append(m.OpsetImport, &onnxpb.OperatorSetIdProto{Domain: domain, Version: version})
}
