package convert

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// checkUniqueNames fails when two nodes share a non-empty name or two nodes
// write the same value: ONNX Runtime refuses both.
func checkUniqueNames(t *testing.T, m *onnxpb.ModelProto) {
	t.Helper()
	nodes, values := map[string]bool{}, map[string]bool{}
	for _, init := range m.GetGraph().GetInitializer() {
		if values[init.GetName()] {
			t.Fatalf("initializer %q defined twice", init.GetName())
		}
		values[init.GetName()] = true
	}
	for _, n := range m.GetGraph().GetNode() {
		if name := n.GetName(); name != "" {
			if nodes[name] {
				t.Fatalf("two nodes named %q", name)
			}
			nodes[name] = true
		}
		for _, o := range n.GetOutput() {
			if values[o] {
				t.Fatalf("value %q written twice", o)
			}
			values[o] = true
		}
	}
}

// TestInt8AnyGraph quantizes graphs other exporters write: every node
// unnamed, names that are exactly the ones Int8 would generate, weights in
// Constant nodes, one weight read by two MatMuls.
func TestInt8AnyGraph(t *testing.T) {
	f := func(name string, edit func(m *onnxpb.ModelProto), wantMatMuls int) {
		t.Helper()
		m := tinyModel(t, crossencoder.ArchBERT)
		edit(m)
		st, err := Int8(m, Int8Options{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkWellFormed(t, m)
		checkUniqueNames(t, m)
		if st.MatMuls != wantMatMuls {
			t.Fatalf("%s: %d MatMuls quantized, want %d", name, st.MatMuls, wantMatMuls)
		}
	}
	f("unnamed", func(m *onnxpb.ModelProto) {
		for _, n := range m.GetGraph().GetNode() {
			n.Name = ""
		}
	}, 12)
	f("colliding names", func(m *onnxpb.ModelProto) {
		// Name every node what Int8 would call the nodes it writes, and
		// add a value with a generated initializer's name.
		g := m.GetGraph()
		for i, n := range g.GetNode() {
			switch {
			case i == 0:
				n.Name = "/int8/Gather" // what unnamed Gathers were called before
			case n.GetOpType() == "MatMul":
				n.Name = n.GetOutput()[0] + "/MatMulIntegerToFloat"
			default:
				n.Name = ""
			}
		}
		out := g.GetNode()[0].GetOutput()[0]
		g.Node = append(g.Node, &onnxpb.NodeProto{OpType: "Identity", Input: []string{out}, Output: []string{"bert.encoder.layer.0.attention.self.query.weight/int8"}})
		g.Node = append(g.Node, &onnxpb.NodeProto{OpType: "Identity", Input: []string{out}, Output: []string{out + "/quant"}})
	}, 12)
	f("constant nodes", func(m *onnxpb.ModelProto) {
		// Move every 2-D weight from the initializers into a Constant node
		// in front of the graph, as some exporters write them.
		g := m.GetGraph()
		var consts []*onnxpb.NodeProto
		kept := g.Initializer[:0]
		for _, init := range g.GetInitializer() {
			if len(init.GetDims()) == 2 && init.GetDataType() == tFloat {
				consts = append(consts, &onnxpb.NodeProto{OpType: "Constant", Output: []string{init.GetName()},
					Attribute: []*onnxpb.AttributeProto{{Name: "value", Type: onnxpb.AttributeProto_TENSOR, T: init}}})
				continue
			}
			kept = append(kept, init)
		}
		g.Initializer = kept
		g.Node = append(consts, g.Node...)
	}, 12)
	f("tied weights", func(m *onnxpb.ModelProto) {
		// Layer 1's query projection reads layer 0's weight.
		for _, n := range m.GetGraph().GetNode() {
			for i, in := range n.GetInput() {
				if in == "bert.encoder.layer.1.attention.self.query.weight" {
					n.Input[i] = "bert.encoder.layer.0.attention.self.query.weight"
				}
			}
		}
	}, 12)
}

// TestInt8ExternalData quantizes a model written with external data and
// read back, as a converter meets a large export.
func TestInt8ExternalData(t *testing.T) {
	m := tinyModel(t, crossencoder.ArchXLMRoberta)
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := onnx.WriteModel(path, m, onnx.WriteOptions{ExternalData: true}); err != nil {
		t.Fatal(err)
	}
	back, err := onnx.ReadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Int8(back, Int8Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkWellFormed(t, back)
	if st.MatMuls != 12 || st.Embeddings != 2 {
		t.Fatalf("stats %+v", st)
	}
	for _, init := range back.GetGraph().GetInitializer() {
		if init.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
			t.Fatalf("initializer %q still points at external data", init.GetName())
		}
	}
}

// TestInt8SharedWeightQuantizedOnce checks that a weight read by two
// MatMuls is stored once, and that their shared input is quantized once.
func TestInt8SharedWeightQuantizedOnce(t *testing.T) {
	const k, n = 64, 128
	w := make([]float32, k*n)
	for i := range w {
		w[i] = float32(math.Cos(float64(i)))
	}
	g := onnx.NewGraph("shared")
	x := g.AddInput("x", onnx.Float, onnx.Sym("b"), onnx.Fixed(k))
	g.AddFloat("w", []int64{k, n}, w)
	g.AddNode("MatMul", []string{x, "w"}, "y1")
	g.AddNode("MatMul", []string{x, "w"}, "y2")
	g.AddNode("Add", []string{"y1", "y2"}, "y")
	g.AddFloat("h1", []int64{n, n}, make([]float32, n*n))
	g.AddNode("MatMul", []string{"y", "h1"}, "z")
	g.AddFloat("h2", []int64{n, 1}, make([]float32, n))
	g.AddNode("MatMul", []string{"z", "h2"}, "logits")
	g.AddOutput("logits", onnx.Float, onnx.Sym("b"), onnx.Fixed(1))
	m := g.Model("t", "1")
	st, err := Int8(m, Int8Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkWellFormed(t, m)
	checkUniqueNames(t, m)
	if st.MatMuls != 2 || st.Quantizers != 1 {
		t.Fatalf("stats %+v, want 2 MatMuls sharing 1 quantizer", st)
	}
	int8s := 0
	for _, init := range m.GetGraph().GetInitializer() {
		if init.GetDataType() == tInt8 {
			int8s++
		}
	}
	if int8s != 1 {
		t.Fatalf("%d int8 weights stored, want 1", int8s)
	}
}
