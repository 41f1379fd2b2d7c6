package convert

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// DefaultKeepFloat32 are the op types ToFloat16 and ToBFloat16 leave in fp32
// by default: LayerNormalization, whose fp32 output halved the logit
// deviation of fp16 in our measurements (ONNX Runtime's kernels accumulate
// in fp32 either way, but the normalised values then round to half), and
// the reductions of a LayerNorm or Softmax written out op by op (older
// exports, opset < 17), where x² overflows fp16 from |x| > 256 and a long
// sum loses the small terms. Softmax stays half: ONNX Runtime's kernels
// accumulate it in fp32 and exp(x - max) ≤ 1 cannot overflow.
var DefaultKeepFloat32 = []string{"LayerNormalization", "Pow", "ReduceMean", "ReduceSum", "Sqrt", "Exp", "Reciprocal", "CumSum", "Range"}

// HalfOptions adjusts ToFloat16 and ToBFloat16.
type HalfOptions struct {
	// KeepFloat32 lists op types left in fp32; nil means DefaultKeepFloat32.
	KeepFloat32 []string
}

// halfFormat is one of the two 16-bit float formats.
type halfFormat struct {
	elem   elemType
	name   string
	encode func(float32) uint16
	// max is the largest finite value; constants beyond it are clamped to
	// it so that, say, an fp32 mask value of -3.4e38 stays finite.
	max float32
}

var (
	fp16Format = halfFormat{elem: tFloat16, name: "fp16", encode: Float32ToFloat16, max: 65504}
	bf16Format = halfFormat{elem: tBF16, name: "bf16", encode: Float32ToBFloat16, max: math.Float32frombits(0x7f7f0000)}
)

// ToFloat16 converts the fp32 model m in place to compute in IEEE fp16.
//
// Every node computing on floats runs in half precision, except the op types
// in opt.KeepFloat32 and the classification head: the nodes producing a
// float graph output, back to and including the second MatMul or Gemm on
// each path (pooler/dense and classifier, see headMatMuls), stay fp32, so
// the logit the activation is applied to keeps full precision. Graph inputs and outputs keep their
// types. Float initializers used only by half nodes are stored in half
// precision, clamped to its finite range; one used by both kinds is kept in
// fp32 and duplicated. Cast nodes are inserted at every boundary between the
// regions, once per value and direction. Constant, ConstantOfShape and
// Cast(to=float) nodes inside the half region are retargeted. value_info is
// dropped (the runtime infers it again). External data must be loaded
// (onnx.ReadModel does).
func ToFloat16(m *onnxpb.ModelProto, opt HalfOptions) error { return toHalf(m, fp16Format, opt) }

// ToBFloat16 converts the fp32 model m in place to compute in bfloat16,
// exactly as ToFloat16 does for fp16.
func ToBFloat16(m *onnxpb.ModelProto, opt HalfOptions) error { return toHalf(m, bf16Format, opt) }

// castKey identifies one inserted Cast: a value cast to an element type.
type castKey struct {
	value string
	to    elemType
}

func toHalf(m *onnxpb.ModelProto, f halfFormat, opt HalfOptions) error {
	g := m.GetGraph()
	if g == nil {
		return fmt.Errorf("convert: model has no graph")
	}
	if err := checkConvertible(g); err != nil {
		return err
	}
	keep := map[string]bool{}
	keepList := opt.KeepFloat32
	if keepList == nil {
		keepList = DefaultKeepFloat32
	}
	for _, op := range keepList {
		keep[op] = true
	}
	types := inferTypes(g)
	producer := map[string]int{}
	for i, n := range g.GetNode() {
		for _, o := range n.GetOutput() {
			producer[o] = i
		}
	}
	inits := map[string]*onnxpb.TensorProto{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = t
	}

	// The fp32 head: from each float output back to the first MatMul/Gemm.
	fp32 := headNodes(g, types, producer, inits)
	for i, n := range g.GetNode() {
		if keep[n.GetOpType()] {
			fp32[i] = true
		}
	}
	half := make([]bool, len(g.GetNode()))
	for i, n := range g.GetNode() {
		if fp32[i] {
			continue
		}
		for _, in := range n.GetInput() {
			if types[in] == tFloat {
				half[i] = true
			}
		}
		if len(n.GetOutput()) > 0 && types[n.GetOutput()[0]] == tFloat {
			half[i] = true
		}
	}

	// Where each float value lives after conversion.
	current := map[string]elemType{}
	for _, in := range g.GetInput() {
		if types[in.GetName()] == tFloat {
			current[in.GetName()] = tFloat
		}
	}
	// Initializers: half when every float consumer is half.
	consumersHalf := map[string][2]int{}
	for i, n := range g.GetNode() {
		for _, in := range n.GetInput() {
			if _, ok := inits[in]; !ok {
				continue
			}
			c := consumersHalf[in]
			if half[i] {
				c[0]++
			} else {
				c[1]++
			}
			consumersHalf[in] = c
		}
	}
	var extraInits []*onnxpb.TensorProto
	halfName := map[string]string{}
	for _, t := range g.GetInitializer() {
		if t.GetDataType() != tFloat {
			continue
		}
		c := consumersHalf[t.GetName()]
		switch {
		case c[0] > 0 && c[1] == 0:
			if err := toHalfTensor(t, f); err != nil {
				return err
			}
			current[t.GetName()] = f.elem
		case c[0] > 0:
			dup, err := halfCopy(t, f, t.GetName()+"/"+f.name)
			if err != nil {
				return err
			}
			extraInits = append(extraInits, dup)
			halfName[t.GetName()] = dup.GetName()
			current[t.GetName()] = tFloat
		default:
			current[t.GetName()] = tFloat
		}
	}
	g.Initializer = append(g.Initializer, extraInits...)

	outputs := map[string]bool{}
	for _, o := range g.GetOutput() {
		outputs[o.GetName()] = true
	}
	casts := map[castKey]string{}
	nodes := make([]*onnxpb.NodeProto, 0, len(g.GetNode())+len(g.GetNode())/4)
	// need returns the name under which value v is available as type t,
	// emitting a Cast the first time a conversion is needed.
	need := func(v string, t elemType) string {
		if current[v] == t {
			return v
		}
		if t == f.elem && halfName[v] != "" {
			return halfName[v]
		}
		k := castKey{v, t}
		if name, ok := casts[k]; ok {
			return name
		}
		name := v + "/cast_" + typeSuffix(t, f)
		casts[k] = name
		nodes = append(nodes, &onnxpb.NodeProto{
			Name: name, OpType: "Cast", Input: []string{v}, Output: []string{name},
			Attribute: []*onnxpb.AttributeProto{onnx.AttrInt("to", int64(t))},
		})
		return name
	}
	for i, n := range g.GetNode() {
		target := tFloat
		if half[i] {
			target = f.elem
		}
		for k, in := range n.GetInput() {
			if in != "" && types[in] == tFloat {
				n.Input[k] = need(in, target)
			}
		}
		if half[i] {
			if err := retarget(n, f); err != nil {
				return err
			}
		}
		var after []*onnxpb.NodeProto
		for k, o := range n.GetOutput() {
			if k > 0 || types[o] != tFloat {
				continue
			}
			current[o] = target
			if half[i] && outputs[o] {
				// A graph output computed in half: compute it under a new
				// name and cast back to fp32 under the output's own name.
				inner := o + "/" + f.name
				n.Output[k] = inner
				current[inner] = f.elem
				casts[castKey{inner, tFloat}] = o
				after = append(after, &onnxpb.NodeProto{
					Name: o + "/cast_fp32", OpType: "Cast", Input: []string{inner}, Output: []string{o},
					Attribute: []*onnxpb.AttributeProto{onnx.AttrInt("to", int64(tFloat))},
				})
				// Later consumers of o in the half region read inner.
				current[o] = tFloat
				halfName[o] = inner
			}
		}
		nodes = append(nodes, n)
		nodes = append(nodes, after...)
	}
	g.Node = nodes
	g.ValueInfo = nil
	return nil
}

// typeSuffix names a cast target in generated value names.
func typeSuffix(t elemType, f halfFormat) string {
	if t == f.elem {
		return f.name
	}
	return "fp32"
}

// checkConvertible refuses graphs the passes cannot rewrite faithfully.
func checkConvertible(g *onnxpb.GraphProto) error {
	for _, n := range g.GetNode() {
		for _, a := range n.GetAttribute() {
			if a.GetG() != nil || len(a.GetGraphs()) > 0 {
				return fmt.Errorf("convert: node %q (%s) has a subgraph, which precision conversion does not support", n.GetName(), n.GetOpType())
			}
		}
	}
	for _, t := range g.GetInitializer() {
		if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
			return fmt.Errorf("convert: initializer %q has external data that is not loaded", t.GetName())
		}
	}
	return nil
}

// headMatMuls is how many MatMul/Gemm layers the classification head has
// on the path to the logits: BERT's pooler and classifier, XLM-R's
// RobertaClassificationHead dense and out_proj. They run on one token per
// pair, so keeping them in fp32 costs nothing measurable, and the logits are
// most sensitive to them (a random-weight test model's head spreads logits
// over several units; half-precision rounding there doubled the score
// deviation in our measurements).
const headMatMuls = 2

// headNodes marks the nodes of the classification head: walking back from
// each float graph output's producer through float non-constant inputs, up
// to and including the headMatMuls-th MatMul or Gemm on the path.
func headNodes(g *onnxpb.GraphProto, types map[string]elemType, producer map[string]int, inits map[string]*onnxpb.TensorProto) map[int]bool {
	head := map[int]bool{}
	var walk func(v string, depth, matmuls int)
	walk = func(v string, depth, matmuls int) {
		// A classification head is a handful of nodes; the bound only
		// guards against walking the whole encoder in an unusual graph.
		const maxDepth = 12
		i, ok := producer[v]
		if !ok || head[i] || depth > maxDepth {
			return
		}
		n := g.GetNode()[i]
		head[i] = true
		if op := n.GetOpType(); op == "MatMul" || op == "Gemm" {
			matmuls++
			if matmuls == headMatMuls {
				return
			}
		}
		for _, in := range n.GetInput() {
			if _, c := inits[in]; !c && types[in] == tFloat {
				walk(in, depth+1, matmuls)
			}
		}
	}
	for _, o := range g.GetOutput() {
		if types[o.GetName()] == tFloat {
			walk(o.GetName(), 0, 0)
		}
	}
	return head
}

// retarget makes a node of the half region produce half values where its
// attributes would make it produce fp32 ones.
func retarget(n *onnxpb.NodeProto, f halfFormat) error {
	switch n.GetOpType() {
	case "Cast":
		if a := attr(n, "to"); a != nil && a.GetI() == int64(tFloat) {
			a.I = int64(f.elem)
		}
	case "Constant":
		if a := attr(n, "value"); a != nil && a.GetT() != nil && a.GetT().GetDataType() == tFloat {
			return toHalfTensor(a.GetT(), f)
		}
		if a := attr(n, "value_float"); a != nil {
			t := onnx.FloatTensor("", nil, []float32{a.GetF()})
			if err := toHalfTensor(t, f); err != nil {
				return err
			}
			*a = onnxpb.AttributeProto{Name: "value", Type: onnxpb.AttributeProto_TENSOR, T: t}
		}
		if a := attr(n, "value_floats"); a != nil {
			t := onnx.FloatTensor("", []int64{int64(len(a.GetFloats()))}, a.GetFloats())
			if err := toHalfTensor(t, f); err != nil {
				return err
			}
			*a = onnxpb.AttributeProto{Name: "value", Type: onnxpb.AttributeProto_TENSOR, T: t}
		}
	case "ConstantOfShape":
		a := attr(n, "value")
		if a == nil {
			// The default value is a float32 zero.
			t := onnx.FloatTensor("", []int64{1}, []float32{0})
			n.Attribute = append(n.Attribute, &onnxpb.AttributeProto{Name: "value", Type: onnxpb.AttributeProto_TENSOR, T: t})
			a = n.Attribute[len(n.Attribute)-1]
		}
		if a.GetT() != nil && a.GetT().GetDataType() == tFloat {
			return toHalfTensor(a.GetT(), f)
		}
	}
	return nil
}

// toHalfTensor re-encodes the fp32 tensor t in the half format, in place,
// clamping finite values to the format's range.
func toHalfTensor(t *onnxpb.TensorProto, f halfFormat) error {
	data, err := onnx.Floats(t)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	raw := make([]byte, 2*len(data))
	for i, v := range data {
		if v > f.max && !math.IsInf(float64(v), 1) {
			v = f.max
		} else if v < -f.max && !math.IsInf(float64(v), -1) {
			v = -f.max
		}
		binary.LittleEndian.PutUint16(raw[2*i:], f.encode(v))
	}
	t.DataType = f.elem
	t.RawData = raw
	t.FloatData = nil
	return nil
}

// halfCopy returns a half-format copy of t named name.
func halfCopy(t *onnxpb.TensorProto, f halfFormat, name string) (*onnxpb.TensorProto, error) {
	c := &onnxpb.TensorProto{Name: name, Dims: t.GetDims(), DataType: tFloat, RawData: t.GetRawData(), FloatData: t.GetFloatData()}
	if err := toHalfTensor(c, f); err != nil {
		return nil, err
	}
	return c, nil
}
