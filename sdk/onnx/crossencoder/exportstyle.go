package crossencoder

import (
	"fmt"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// AsOpByOpExport rewrites a graph from Build the way older exporters
// (torch.onnx.export before opset 17, and most hand-made graphs) write the
// same network: every LayerNormalization spelled out as ReduceMean, Sub,
// Pow, Add, Sqrt, Div, Mul and Add; no node names at all; the 2-D weights
// renamed "onnx::MatMul_N" and the rest "onnx::Constant_N". The scores are
// those of the original up to float rounding. It gives the conversions,
// the benchmarks and the conformance tests a second, independent graph of
// each model, one no code of this repository produced in that shape.
func AsOpByOpExport(m *onnxpb.ModelProto) error {
	g := m.GetGraph()
	if g == nil {
		return fmt.Errorf("crossencoder: model has no graph")
	}
	rename := map[string]string{}
	for i, t := range g.GetInitializer() {
		kind := "Constant"
		if len(t.GetDims()) == 2 {
			kind = "MatMul"
		}
		name := fmt.Sprintf("onnx::%s_%d", kind, i)
		rename[t.GetName()] = name
		t.Name = name
	}
	var extra []*onnxpb.TensorProto
	constant := func(name string, v float32) string {
		extra = append(extra, onnx.FloatTensor(name, nil, []float32{v}))
		return name
	}
	two := constant("onnx::Pow_two", 2)
	var nodes []*onnxpb.NodeProto
	add := func(op string, in []string, out string, attrs ...*onnxpb.AttributeProto) {
		nodes = append(nodes, &onnxpb.NodeProto{OpType: op, Input: in, Output: []string{out}, Attribute: attrs})
	}
	for i, n := range g.GetNode() {
		for k, in := range n.GetInput() {
			if r, ok := rename[in]; ok {
				n.Input[k] = r
			}
		}
		n.Name = ""
		if n.GetOpType() != "LayerNormalization" || n.GetDomain() != "" {
			nodes = append(nodes, n)
			continue
		}
		if axis := attrIntOf(n, "axis", -1); axis != -1 {
			return fmt.Errorf("crossencoder: LayerNormalization over axis %d, only -1 is rewritten", axis)
		}
		eps := float32(1e-5) // LayerNormalization's default epsilon
		for _, a := range n.GetAttribute() {
			if a.GetName() == "epsilon" {
				eps = a.GetF()
			}
		}
		x, scale, bias, y := n.GetInput()[0], n.GetInput()[1], n.GetInput()[2], n.GetOutput()[0]
		p := fmt.Sprintf("/ln%d/", i)
		axes := onnx.AttrInts("axes", -1)
		add("ReduceMean", []string{x}, p+"mean", axes)
		add("Sub", []string{x, p + "mean"}, p+"centered")
		add("Pow", []string{p + "centered", two}, p+"squared")
		add("ReduceMean", []string{p + "squared"}, p+"variance", axes)
		add("Add", []string{p + "variance", constant(p+"epsilon", eps)}, p+"variance_eps")
		add("Sqrt", []string{p + "variance_eps"}, p+"std")
		add("Div", []string{p + "centered", p + "std"}, p+"normalized")
		add("Mul", []string{p + "normalized", scale}, p+"scaled")
		add("Add", []string{p + "scaled", bias}, y)
	}
	g.Node = nodes
	g.Initializer = append(g.Initializer, extra...)
	for _, vi := range g.GetInput() {
		if r, ok := rename[vi.GetName()]; ok {
			vi.Name = r
		}
	}
	return nil
}

// attrIntOf returns n's integer attribute name, def when absent.
func attrIntOf(n *onnxpb.NodeProto, name string, def int64) int64 {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a.GetI()
		}
	}
	return def
}
