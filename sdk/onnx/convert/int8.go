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

// Int8Kernel is the operator form Int8 writes each quantized MatMul in.
type Int8Kernel int

const (
	// KernelMatMulIntegerToFloat quantizes each activation once with a
	// DynamicQuantizeLinear shared by every MatMul that reads it (BERT's
	// query, key and value projections read one LayerNorm output) and
	// multiplies with com.microsoft MatMulIntegerToFloat, bias folded in.
	// It is the default: the form ONNX Runtime's own quantize_dynamic
	// produces after its CPU fusions, and the faster one measured
	// (docs/BENCHMARKS.md, "Speed (issue 14)").
	KernelMatMulIntegerToFloat Int8Kernel = iota
	// KernelDynamicQuantizeMatMul writes one com.microsoft
	// DynamicQuantizeMatMul per MatMul, each quantizing its own input
	// again; kept to measure against.
	KernelDynamicQuantizeMatMul
)

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
	// Kernel is the operator form of the quantized MatMuls.
	Kernel Int8Kernel
}

// Int8Stats says what Int8 rewrote.
type Int8Stats struct {
	// MatMuls is the number of MatMul and Gemm nodes quantized.
	MatMuls int
	// Quantizers is the number of activation quantizers
	// (DynamicQuantizeLinear nodes) written; fewer than MatMuls when
	// MatMuls share an input.
	Quantizers int
	// Embeddings is the number of embedding tables quantized.
	Embeddings int
	// WeightBytesBefore and WeightBytesAfter total the initializers.
	WeightBytesBefore, WeightBytesAfter int64
}

// Int8 dynamically quantizes the fp32 model m in place. Every MatMul (and
// Gemm without transA, alpha 1) whose second input is a constant 2-D float
// matrix (an initializer or a Constant node) gets int8 weights quantized
// symmetrically per output column (one scale per column, zero point 0);
// its activation is quantized to uint8 per call by a DynamicQuantizeLinear
// shared by every MatMul reading the same value, and multiplied by
// com.microsoft MatMulIntegerToFloat into fp32 (opt.Kernel selects the
// older one-DynamicQuantizeMatMul-per-MatMul form). A following Add of a
// constant bias is folded into the node. The classification head (the two
// linear layers the logits come from, see headNodes) is left in fp32.
// Embedding tables are stored as int8 with a per-row scale unless
// opt.KeepEmbeddings is set. Everything else stays fp32.
//
// Any valid graph is accepted: unnamed nodes, node and value names that
// collide with the ones Int8 generates, weights shared by several MatMuls,
// weights held in Constant nodes; external data must be loaded first
// (onnx.ReadModel does).
func Int8(m *onnxpb.ModelProto, opt Int8Options) (Int8Stats, error) {
	var st Int8Stats
	g := m.GetGraph()
	if g == nil {
		return st, fmt.Errorf("convert: model has no graph")
	}
	if err := checkConvertible(g); err != nil {
		return st, err
	}
	liftConstants(g)
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
	for _, vi := range g.GetValueInfo() {
		if _, ok := types[vi.GetName()]; !ok || types[vi.GetName()] == 0 {
			types[vi.GetName()] = vi.GetType().GetTensorType().GetElemType()
		}
	}
	names := newNamer(g)
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
	kernel := opt.Kernel
	if opset > 0 && opset < 11 {
		// DynamicQuantizeLinear is an opset-11 operator; raising an older
		// graph's opset could change what its other nodes mean.
		kernel = KernelDynamicQuantizeMatMul
	}

	var added []*onnxpb.TensorProto
	removed := map[int]bool{}
	replaced := map[int][]*onnxpb.NodeProto{}
	// weights caches the quantized form of each (weight, transposed) pair:
	// tied weights are quantized and stored once.
	type qweight struct{ q, scale string }
	weights := map[string]qweight{}
	// quantized maps an activation to its DynamicQuantizeLinear outputs.
	type qact struct{ q, scale, zp string }
	quantized := map[string]qact{}
	// matrix returns the constant float weight w as [K, N] row-major.
	matrix := func(name string, transpose bool) ([]float32, int64, int64, bool) {
		t := inits[name]
		if t == nil || t.GetDataType() != tFloat || len(t.GetDims()) != 2 {
			return nil, 0, 0, false
		}
		k, n := t.GetDims()[0], t.GetDims()[1]
		if k*n < minElems {
			return nil, 0, 0, false
		}
		data, err := onnx.Floats(t)
		if err != nil {
			return nil, 0, 0, false
		}
		if transpose {
			tr := make([]float32, len(data))
			for i := int64(0); i < k; i++ {
				for j := int64(0); j < n; j++ {
					tr[j*k+i] = data[i*n+j]
				}
			}
			data, k, n = tr, n, k
		}
		return data, k, n, true
	}
	for i, n := range g.GetNode() {
		if head[i] || n.GetDomain() != "" && n.GetDomain() != "ai.onnx" {
			continue
		}
		in := n.GetInput()
		var cols int64
		var bias string
		transpose := false
		switch n.GetOpType() {
		case "MatMul":
			if len(in) != 2 || types[in[0]] != tFloat {
				continue
			}
			t := inits[in[1]]
			if t == nil || len(t.GetDims()) != 2 {
				continue
			}
			cols = t.GetDims()[1]
		case "Gemm":
			if len(in) < 2 || types[in[0]] != tFloat || attrInt(n, "transA", 0) != 0 || attrFloat(n, "alpha", 1) != 1 {
				continue
			}
			t := inits[in[1]]
			if t == nil || len(t.GetDims()) != 2 {
				continue
			}
			transpose = attrInt(n, "transB", 0) != 0
			cols = t.GetDims()[1]
			if transpose {
				cols = t.GetDims()[0]
			}
			if len(in) > 2 && in[2] != "" {
				c := inits[in[2]]
				if c == nil || c.GetDataType() != tFloat || attrFloat(n, "beta", 1) != 1 || len(c.GetDims()) != 1 || c.GetDims()[0] != cols {
					continue
				}
				bias = in[2]
			}
		default:
			continue
		}
		key := fmt.Sprintf("%s\x00%v", in[1], transpose)
		qw, ok := weights[key]
		if !ok {
			w, k, c, ok := matrix(in[1], transpose)
			if !ok {
				continue
			}
			q, scales := quantizeColumns(w, k, c, qmax)
			qw = qweight{q: names.fresh(in[1] + "/int8"), scale: names.fresh(in[1] + "/scale")}
			added = append(added,
				&onnxpb.TensorProto{Name: qw.q, Dims: []int64{k, c}, DataType: tInt8, RawData: q},
				onnx.FloatTensor(qw.scale, []int64{c}, scales))
			weights[key] = qw
		}
		out := n.GetOutput()[0]
		// Fold a following "Add(out, constant bias [N])".
		if bias == "" && !outputs[out] && len(consumers[out]) == 1 {
			j := consumers[out][0]
			add := g.GetNode()[j]
			if add.GetOpType() == "Add" && add.GetDomain() == "" && len(add.GetInput()) == 2 && !head[j] && !removed[j] {
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
		base := n.GetName()
		if base == "" {
			base = out
		}
		if kernel == KernelDynamicQuantizeMatMul {
			inputs := []string{in[0], qw.q, qw.scale, "", bias}
			if bias == "" {
				inputs = inputs[:3]
			}
			replaced[i] = []*onnxpb.NodeProto{{
				Name: names.fresh(base + "/DynamicQuantizeMatMul"), OpType: "DynamicQuantizeMatMul", Domain: MicrosoftDomain,
				Input: inputs, Output: []string{out},
			}}
			st.MatMuls++
			continue
		}
		var nodes []*onnxpb.NodeProto
		qa, ok := quantized[in[0]]
		if !ok {
			// The first MatMul reading in[0] quantizes it for all of
			// them: it comes before the others in node order, so the
			// quantizer precedes every reader.
			qa = qact{q: names.fresh(in[0] + "/quant"), scale: names.fresh(in[0] + "/quant_scale"), zp: names.fresh(in[0] + "/quant_zero_point")}
			quantized[in[0]] = qa
			nodes = append(nodes, &onnxpb.NodeProto{
				Name: names.fresh(in[0] + "/DynamicQuantizeLinear"), OpType: "DynamicQuantizeLinear",
				Input: []string{in[0]}, Output: []string{qa.q, qa.scale, qa.zp},
			})
			st.Quantizers++
		}
		inputs := []string{qa.q, qw.q, qa.scale, qw.scale, qa.zp, "", bias}
		if bias == "" {
			inputs = inputs[:5]
		}
		nodes = append(nodes, &onnxpb.NodeProto{
			Name: names.fresh(base + "/MatMulIntegerToFloat"), OpType: "MatMulIntegerToFloat", Domain: MicrosoftDomain,
			Input: inputs, Output: []string{out},
		})
		replaced[i] = nodes
		st.MatMuls++
	}
	if !opt.KeepEmbeddings {
		tables := map[string]qweight{}
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
			qt, ok := tables[table.GetName()]
			if !ok {
				data, err := onnx.Floats(table)
				if err != nil {
					return st, fmt.Errorf("convert: %w", err)
				}
				q, scales := quantizeRows(data, rows, width)
				qt = qweight{q: names.fresh(table.GetName() + "/int8"), scale: names.fresh(table.GetName() + "/row_scale")}
				added = append(added,
					&onnxpb.TensorProto{Name: qt.q, Dims: []int64{rows, width}, DataType: tInt8, RawData: q},
					onnx.FloatTensor(qt.scale, []int64{rows}, scales))
				tables[table.GetName()] = qt
				st.Embeddings++
			}
			ids, out := n.GetInput()[1], n.GetOutput()[0]
			p := n.GetName()
			if p == "" {
				p = out
			}
			p += "/int8"
			rowsV, scaleV, scaleCol, rowsF := names.fresh(p+"/rows"), names.fresh(p+"/scale"), names.fresh(p+"/scale_col"), names.fresh(p+"/rows_f")
			unsq := &onnxpb.NodeProto{Name: names.fresh(p + "/Unsqueeze"), OpType: "Unsqueeze", Input: []string{scaleV}, Output: []string{scaleCol}}
			if opset >= 13 {
				axes := names.fresh(p + "/axes")
				added = append(added, onnx.Int64Tensor(axes, []int64{1}, []int64{-1}))
				unsq.Input = append(unsq.Input, axes)
			} else {
				unsq.Attribute = []*onnxpb.AttributeProto{onnx.AttrInts("axes", -1)}
			}
			replaced[i] = []*onnxpb.NodeProto{
				{Name: names.fresh(p + "/Gather"), OpType: "Gather", Input: []string{qt.q, ids}, Output: []string{rowsV}},
				{Name: names.fresh(p + "/GatherScale"), OpType: "Gather", Input: []string{qt.scale, ids}, Output: []string{scaleV}},
				{Name: names.fresh(p + "/Cast"), OpType: "Cast", Input: []string{rowsV}, Output: []string{rowsF},
					Attribute: []*onnxpb.AttributeProto{onnx.AttrInt("to", int64(tFloat))}},
				unsq,
				{Name: names.fresh(p + "/Mul"), OpType: "Mul", Input: []string{rowsF, scaleCol}, Output: []string{out}},
			}
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
	clear(g.Initializer[len(kept):])
	g.Initializer = kept
	for _, t := range added {
		if used[t.GetName()] {
			g.Initializer = append(g.Initializer, t)
		}
	}
	// IR < 4 lists initializers among the graph inputs: drop the inputs
	// whose initializer was replaced.
	ins := g.Input[:0]
	for _, vi := range g.GetInput() {
		if _, init := inits[vi.GetName()]; !init || used[vi.GetName()] {
			ins = append(ins, vi)
		}
	}
	g.Input = ins
	g.ValueInfo = nil
	addOpset(m, MicrosoftDomain, 1)
	st.WeightBytesAfter = initializerBytes(g)
	return st, nil
}

// liftConstants turns Constant nodes holding a 2-D float tensor (weights
// some exporters write as nodes) into initializers of the same name, so
// the quantizer sees them as the constant weights they are.
func liftConstants(g *onnxpb.GraphProto) {
	nodes := g.Node[:0]
	for _, n := range g.GetNode() {
		if n.GetOpType() == "Constant" && (n.GetDomain() == "" || n.GetDomain() == "ai.onnx") && len(n.GetOutput()) == 1 {
			if a := attr(n, "value"); a != nil && a.GetT() != nil && a.GetT().GetDataType() == tFloat && len(a.GetT().GetDims()) == 2 {
				t := a.GetT()
				t.Name = n.GetOutput()[0]
				g.Initializer = append(g.Initializer, t)
				continue
			}
		}
		nodes = append(nodes, n)
	}
	clear(g.Node[len(nodes):])
	g.Node = nodes
}

// namer hands out node and value names no other node or value of the graph
// uses: generated names are derived from existing ones, which an exporter
// may have left empty or already taken.
type namer struct{ taken map[string]bool }

func newNamer(g *onnxpb.GraphProto) *namer {
	taken := map[string]bool{"": true}
	for _, vi := range g.GetInput() {
		taken[vi.GetName()] = true
	}
	for _, vi := range g.GetOutput() {
		taken[vi.GetName()] = true
	}
	for _, vi := range g.GetValueInfo() {
		taken[vi.GetName()] = true
	}
	for _, t := range g.GetInitializer() {
		taken[t.GetName()] = true
	}
	for _, n := range g.GetNode() {
		taken[n.GetName()] = true
		for _, v := range n.GetInput() {
			taken[v] = true
		}
		for _, v := range n.GetOutput() {
			taken[v] = true
		}
	}
	return &namer{taken: taken}
}

// fresh returns base, or base_2, base_3, … if base is taken, and marks
// the result taken.
func (nm *namer) fresh(base string) string {
	name := base
	for i := 2; nm.taken[name]; i++ {
		name = fmt.Sprintf("%s_%d", base, i)
	}
	nm.taken[name] = true
	return name
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
