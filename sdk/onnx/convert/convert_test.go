package convert

import (
	"math"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// tinyConfig is a small but complete cross-encoder: big enough that every
// linear layer but the classifier's last one reaches DefaultMinElements.
func tinyConfig(arch string) crossencoder.Config {
	c := crossencoder.Config{Arch: arch, VocabSize: 300, Hidden: 64, Layers: 2, Heads: 4, Intermediate: 128,
		MaxPositions: 64, TypeVocabSize: 2, PadTokenID: 0, NumLabels: 1, LayerNormEps: 1e-12}
	if arch == crossencoder.ArchXLMRoberta {
		c.TypeVocabSize, c.PadTokenID, c.LayerNormEps = 1, 1, 1e-5
	}
	return c
}

func tinyModel(t *testing.T, arch string) *onnxpb.ModelProto {
	t.Helper()
	c := tinyConfig(arch)
	m, err := crossencoder.Build(c, crossencoder.RandomWeights(c, 1))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// checkWellFormed verifies that every node input is defined before use and
// that graph inputs and outputs are unchanged fp32/int64 declarations.
func checkWellFormed(t *testing.T, m *onnxpb.ModelProto) {
	t.Helper()
	g := m.GetGraph()
	defined := map[string]bool{"": true}
	for _, in := range g.GetInput() {
		defined[in.GetName()] = true
	}
	for _, init := range g.GetInitializer() {
		defined[init.GetName()] = true
	}
	for _, n := range g.GetNode() {
		for _, in := range n.GetInput() {
			if !defined[in] {
				t.Fatalf("node %q reads %q before it is defined", n.GetName(), in)
			}
		}
		for _, o := range n.GetOutput() {
			defined[o] = true
		}
	}
	for _, o := range g.GetOutput() {
		if !defined[o.GetName()] {
			t.Fatalf("output %q is never produced", o.GetName())
		}
		if o.GetType().GetTensorType().GetElemType() != tFloat {
			t.Fatalf("output %q is no longer fp32", o.GetName())
		}
	}
	if _, err := onnx.Marshal(m); err != nil {
		t.Fatal(err)
	}
}

func initializer(m *onnxpb.ModelProto, name string) *onnxpb.TensorProto {
	for _, t := range m.GetGraph().GetInitializer() {
		if t.GetName() == name {
			return t
		}
	}
	return nil
}

func TestToHalf(t *testing.T) {
	f := func(arch string, conv func(*onnxpb.ModelProto, HalfOptions) error, want elemType) {
		t.Helper()
		m := tinyModel(t, arch)
		prefix := "bert."
		if arch == crossencoder.ArchXLMRoberta {
			prefix = "roberta."
		}
		if err := conv(m, HalfOptions{}); err != nil {
			t.Fatal(err)
		}
		checkWellFormed(t, m)
		types := inferTypes(m.GetGraph())
		if got := types[crossencoder.Logits]; got != tFloat {
			t.Fatalf("%s: logits type %d", arch, got)
		}
		// Encoder weights are half; the last classifier layer is fp32.
		if got := initializer(m, prefix+"encoder.layer.0.attention.self.query.weight").GetDataType(); got != want {
			t.Fatalf("%s: query weight type %d, want %d", arch, got, want)
		}
		if got := initializer(m, prefix+"embeddings.word_embeddings.weight").GetDataType(); got != want {
			t.Fatalf("%s: word embeddings type %d, want %d", arch, got, want)
		}
		last := "classifier.weight"
		if arch == crossencoder.ArchXLMRoberta {
			last = "classifier.out_proj.weight"
		}
		if got := initializer(m, last).GetDataType(); got != tFloat {
			t.Fatalf("%s: %s type %d, want fp32", arch, last, got)
		}
		// Every MatMul but the head's computes in half.
		half, full := 0, 0
		for _, n := range m.GetGraph().GetNode() {
			if n.GetOpType() != "MatMul" {
				continue
			}
			switch types[n.GetOutput()[0]] {
			case want:
				half++
			case tFloat:
				full++
			}
		}
		if full != 2 || half == 0 {
			t.Fatalf("%s: %d half and %d fp32 MatMuls, want the head's 2 in fp32", arch, half, full)
		}
		// Each inserted Cast converts a distinct value once.
		seen := map[castKey]bool{}
		for _, n := range m.GetGraph().GetNode() {
			if n.GetOpType() == "Cast" && strings.Contains(n.GetName(), "/cast_") {
				k := castKey{n.GetInput()[0], elemType(attrInt(n, "to", 0))}
				if seen[k] {
					t.Fatalf("%s: %s cast twice to %d", arch, k.value, k.to)
				}
				seen[k] = true
			}
		}
	}
	f(crossencoder.ArchBERT, ToFloat16, tFloat16)
	f(crossencoder.ArchXLMRoberta, ToFloat16, tFloat16)
	f(crossencoder.ArchBERT, ToBFloat16, tBF16)
	f(crossencoder.ArchXLMRoberta, ToBFloat16, tBF16)
}

func TestToHalfClampsAndKeeps(t *testing.T) {
	// y = Softmax(x + big) · W, logits = y·V: the constant -3.4e38 must
	// clamp to the format's finite minimum, Pow stays fp32 by default.
	g := onnx.NewGraph("t")
	x := g.AddInput("x", onnx.Float, onnx.Sym("b"), onnx.Fixed(4))
	big := g.AddFloat("big", []int64{4}, []float32{-math.MaxFloat32, 0, 1e5, 1})
	two := g.AddFloat("two", nil, []float32{2})
	a := g.AddNode("Add", []string{x, big}, "a")
	p := g.AddNode("Pow", []string{a, two}, "p")
	s := g.AddNode("Softmax", []string{p}, "s", onnx.AttrInt("axis", -1))
	w := g.AddFloat("w", []int64{4, 4}, make([]float32, 16))
	h := g.AddNode("MatMul", []string{s, w}, "h")
	v := g.AddFloat("v", []int64{4, 1}, []float32{1, 2, 3, 4})
	g.AddNode("MatMul", []string{h, v}, "logits")
	g.AddOutput("logits", onnx.Float, onnx.Sym("b"), onnx.Fixed(1))
	f := func(conv func(*onnxpb.ModelProto, HalfOptions) error, want []uint16) {
		t.Helper()
		m := g.Model("t", "1")
		m = cloneModel(t, m)
		if err := conv(m, HalfOptions{}); err != nil {
			t.Fatal(err)
		}
		checkWellFormed(t, m)
		bt := initializer(m, "big")
		raw := bt.GetRawData()
		for i, w := range want {
			if got := uint16(raw[2*i]) | uint16(raw[2*i+1])<<8; got != w {
				t.Fatalf("big[%d] = %#04x, want %#04x", i, got, w)
			}
		}
		types := inferTypes(m.GetGraph())
		for _, n := range m.GetGraph().GetNode() {
			if n.GetOpType() == "Pow" && types[n.GetOutput()[0]] != tFloat {
				t.Fatalf("Pow was converted")
			}
			if n.GetOpType() == "Softmax" && types[n.GetOutput()[0]] == tFloat {
				t.Fatalf("Softmax stayed fp32")
			}
		}
		if initializer(m, "two").GetDataType() != tFloat || initializer(m, "v").GetDataType() != tFloat {
			t.Fatalf("fp32-only initializers were converted")
		}
	}
	f(ToFloat16, []uint16{0xfbff, 0, 0x7bff, 0x3c00})
	f(ToBFloat16, []uint16{0xff7f, 0, 0x47c3, 0x3f80})
}

func cloneModel(t *testing.T, m *onnxpb.ModelProto) *onnxpb.ModelProto {
	t.Helper()
	b, err := onnx.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	c, err := onnx.Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestInt8(t *testing.T) {
	f := func(arch string, opt Int8Options, wantMatMuls, wantQuantizers, wantEmbeddings int) {
		t.Helper()
		m := tinyModel(t, arch)
		orig := cloneModel(t, m)
		st, err := Int8(m, opt)
		if err != nil {
			t.Fatal(err)
		}
		checkWellFormed(t, m)
		if st.MatMuls != wantMatMuls || st.Quantizers != wantQuantizers || st.Embeddings != wantEmbeddings {
			t.Fatalf("%s: stats %+v, want %d matmuls %d quantizers %d embeddings", arch, st, wantMatMuls, wantQuantizers, wantEmbeddings)
		}
		if st.WeightBytesAfter >= st.WeightBytesBefore/2 {
			t.Fatalf("%s: weights %d → %d bytes", arch, st.WeightBytesBefore, st.WeightBytesAfter)
		}
		ops := map[string]int{}
		for _, n := range m.GetGraph().GetNode() {
			ops[n.GetOpType()]++
		}
		kernel := "MatMulIntegerToFloat"
		if opt.Kernel == KernelDynamicQuantizeMatMul {
			kernel = "DynamicQuantizeMatMul"
		}
		if ops[kernel] != wantMatMuls || ops["DynamicQuantizeLinear"] != wantQuantizers || ops["MatMul"] != 2*tinyConfig(arch).Layers+2 {
			t.Fatalf("%s: ops %v", arch, ops)
		}
		// Dequantized weights are within half a step of the originals.
		qmax := float32(127)
		if opt.ReduceRange {
			qmax = 63
		}
		prefix := map[string]string{crossencoder.ArchBERT: "bert.", crossencoder.ArchXLMRoberta: "roberta."}[arch]
		name := prefix + "encoder.layer.1.intermediate.dense.weight"
		w, err := onnx.Floats(initializer(orig, name))
		if err != nil {
			t.Fatal(err)
		}
		qt := initializer(m, name+"/int8")
		scales, err := onnx.Floats(initializer(m, name+"/scale"))
		if err != nil || qt == nil {
			t.Fatalf("%s: quantized weight missing: %v", arch, err)
		}
		n := qt.GetDims()[1]
		maxQ := 0
		for i, b := range qt.GetRawData() {
			q := int8(b)
			if float32(q) > qmax || float32(q) < -qmax {
				t.Fatalf("%s: q=%d beyond ±%g", arch, q, qmax)
			}
			maxQ = max(maxQ, int(q), -int(q))
			s := scales[int64(i)%n]
			if d := math.Abs(float64(float32(q)*s - w[i])); d > float64(s)/2+1e-7 {
				t.Fatalf("%s: element %d off by %g (scale %g)", arch, i, d, s)
			}
		}
		if float32(maxQ) != qmax {
			t.Fatalf("%s: largest |q| %d, want %g (symmetric range used in full)", arch, maxQ, qmax)
		}
		if initializer(m, name) != nil {
			t.Fatalf("%s: fp32 original of %s kept", arch, name)
		}
	}
	// Per layer: q, k, v, attention output, intermediate, output = 6
	// MatMuls, reading 4 distinct activations (q, k and v share the
	// layer's input); the head's two linear layers stay fp32.
	f(crossencoder.ArchBERT, Int8Options{}, 2*6, 2*4, 2)
	f(crossencoder.ArchXLMRoberta, Int8Options{ReduceRange: true}, 2*6, 2*4, 2)
	f(crossencoder.ArchBERT, Int8Options{KeepEmbeddings: true}, 2*6, 2*4, 0)
	f(crossencoder.ArchBERT, Int8Options{Kernel: KernelDynamicQuantizeMatMul}, 2*6, 0, 2)
}

func TestErrors(t *testing.T) {
	f := func(m *onnxpb.ModelProto, wantErr string) {
		t.Helper()
		for _, err := range []error{
			ToFloat16(m, HalfOptions{}),
			ToBFloat16(m, HalfOptions{}),
			func() error { _, err := Int8(m, Int8Options{}); return err }(),
		} {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, wantErr)
			}
		}
	}
	f(&onnxpb.ModelProto{}, "no graph")
	sub := onnx.NewGraph("s")
	sub.AddNode("If", []string{"c"}, "y", &onnxpb.AttributeProto{Name: "then_branch", Type: onnxpb.AttributeProto_GRAPH, G: &onnxpb.GraphProto{}})
	f(sub.Model("t", "1"), "subgraph")
	ext := onnx.NewGraph("e")
	ext.AddInitializer(&onnxpb.TensorProto{Name: "w", DataType: tFloat, DataLocation: onnxpb.TensorProto_EXTERNAL})
	f(ext.Model("t", "1"), "external data")
	noop := onnx.NewGraph("n")
	noop.AddInput("x", onnx.Float, onnx.Fixed(1))
	noop.AddNode("Relu", []string{"x"}, "y")
	noop.AddOutput("y", onnx.Float, onnx.Fixed(1))
	if _, err := Int8(noop.Model("t", "1"), Int8Options{}); err == nil || !strings.Contains(err.Error(), "no MatMul") {
		t.Fatalf("Int8 of a graph without weights: err = %v", err)
	}
}

func TestInt8Gemm(t *testing.T) {
	// y = Gemm(x, W[n,k], c, transB=1), then a two-MatMul head.
	const k, n = 64, 96
	w := make([]float32, n*k)
	for i := range w {
		w[i] = float32(math.Sin(float64(i))) * float32(1+i%n)
	}
	g := onnx.NewGraph("gemm")
	x := g.AddInput("x", onnx.Float, onnx.Sym("b"), onnx.Fixed(k))
	g.AddFloat("w", []int64{n, k}, w)
	g.AddFloat("c", []int64{n}, make([]float32, n))
	g.AddNode("Gemm", []string{x, "w", "c"}, "y", onnx.AttrInt("transB", 1))
	g.AddFloat("h1", []int64{n, n}, make([]float32, n*n))
	g.AddNode("MatMul", []string{"y", "h1"}, "z")
	g.AddFloat("h2", []int64{n, 1}, make([]float32, n))
	g.AddNode("MatMul", []string{"z", "h2"}, "logits")
	g.AddOutput("logits", onnx.Float, onnx.Sym("b"), onnx.Fixed(1))
	m := g.Model("t", "1")
	st, err := Int8(m, Int8Options{})
	if err != nil || st.MatMuls != 1 {
		t.Fatalf("Int8: %+v, %v", st, err)
	}
	checkWellFormed(t, m)
	dql, node := m.GetGraph().GetNode()[0], m.GetGraph().GetNode()[1]
	if dql.GetOpType() != "DynamicQuantizeLinear" || dql.GetInput()[0] != "x" || len(dql.GetOutput()) != 3 {
		t.Fatalf("first node %v", dql)
	}
	if node.GetOpType() != "MatMulIntegerToFloat" || len(node.GetInput()) != 7 || node.GetInput()[6] != "c" || node.GetInput()[0] != dql.GetOutput()[0] {
		t.Fatalf("second node %v", node)
	}
	q := initializer(m, "w/int8")
	scales, err := onnx.Floats(initializer(m, "w/scale"))
	if err != nil || q == nil || q.GetDims()[0] != k || q.GetDims()[1] != n || len(scales) != n {
		t.Fatalf("quantized weight %v scales %d: %v", q.GetDims(), len(scales), err)
	}
	// Element [i, j] of the [k, n] weight is W[j, i].
	for i := 0; i < k; i++ {
		for j := 0; j < n; j++ {
			got := float32(int8(q.GetRawData()[i*n+j])) * scales[j]
			if d := math.Abs(float64(got - w[j*k+i])); d > float64(scales[j])/2+1e-6 {
				t.Fatalf("[%d,%d] = %g, want %g", i, j, got, w[j*k+i])
			}
		}
	}
}
