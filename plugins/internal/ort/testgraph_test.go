package ort

import (
	"encoding/json"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// sumGraph describes a small graph whose logit is a plain function of its
// inputs, so a test can compute the expected score by hand:
//
//	logit = Σ_t mask_t · (E[input_ids_t] + T[token_type_ids_t])
//
// with the mask and token-type terms present only where the graph declares
// those inputs.
type sumGraph struct {
	int32Inputs bool
	mask        bool
	types       bool
	// labels is the output's second dimension; 0 leaves it symbolic.
	labels int64
	// outputName defaults to "logits".
	outputName string
	// extraOutput adds a second output.
	extraOutput bool
	// extraInput adds an input the engine does not know.
	extraInput string
	// floatIDs declares input_ids as float, which the engine refuses.
	floatIDs bool
}

// sumVocab is the fake tokenizer's vocabulary size.
const sumVocab = 64

// wordEmbedding is E in sumGraph's formula; E[0] (padding) is 0 so even a
// graph without attention_mask ignores padding.
func wordEmbedding(id int32) float32 {
	if id == 0 {
		return 0
	}
	return float32(int(id)%7-3) * 0.1
}

// typeEmbedding is T in sumGraph's formula.
var typeEmbedding = [2]float32{0, 0.05}

func tensorInfo(name string, elem onnxpb.TensorProto_DataType, dims ...any) *onnxpb.ValueInfoProto {
	shape := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		switch d := d.(type) {
		case string:
			shape.Dim = append(shape.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}})
		case int64:
			shape.Dim = append(shape.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}})
		}
	}
	return &onnxpb.ValueInfoProto{Name: name, Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: int32(elem), Shape: shape}}}}
}

func node(op string, in []string, out string, attrs ...*onnxpb.AttributeProto) *onnxpb.NodeProto {
	return &onnxpb.NodeProto{OpType: op, Input: in, Output: []string{out}, Name: out, Attribute: attrs}
}

// model returns the graph as an ONNX model (IR 8, opset 17).
func (s sumGraph) model() *onnxpb.ModelProto {
	idType := onnxpb.TensorProto_INT64
	if s.int32Inputs {
		idType = onnxpb.TensorProto_INT32
	}
	g := &onnxpb.GraphProto{Name: "sum"}
	words := make([]float32, sumVocab)
	for i := range words {
		words[i] = wordEmbedding(int32(i))
	}
	g.Initializer = append(g.Initializer,
		&onnxpb.TensorProto{Name: "E", Dims: []int64{sumVocab, 1}, DataType: int32(onnxpb.TensorProto_FLOAT), FloatData: words},
		&onnxpb.TensorProto{Name: "T", Dims: []int64{2, 1}, DataType: int32(onnxpb.TensorProto_FLOAT), FloatData: typeEmbedding[:]},
		&onnxpb.TensorProto{Name: "axis1", Dims: []int64{1}, DataType: int32(onnxpb.TensorProto_INT64), Int64Data: []int64{1}},
		&onnxpb.TensorProto{Name: "axis2", Dims: []int64{1}, DataType: int32(onnxpb.TensorProto_INT64), Int64Data: []int64{2}},
	)
	idsElem := idType
	if s.floatIDs {
		idsElem = onnxpb.TensorProto_FLOAT
	}
	g.Input = append(g.Input, tensorInfo("input_ids", idsElem, "batch", "seq"))
	g.Node = append(g.Node, node("Gather", []string{"E", "input_ids"}, "emb"))
	cur := "emb"
	if s.types {
		g.Input = append(g.Input, tensorInfo("token_type_ids", idType, "batch", "seq"))
		g.Node = append(g.Node,
			node("Gather", []string{"T", "token_type_ids"}, "temb"),
			node("Add", []string{cur, "temb"}, "withtypes"))
		cur = "withtypes"
	}
	if s.mask {
		g.Input = append(g.Input, tensorInfo("attention_mask", idType, "batch", "seq"))
		g.Node = append(g.Node,
			node("Cast", []string{"attention_mask"}, "maskf", &onnxpb.AttributeProto{Name: "to", Type: onnxpb.AttributeProto_INT, I: int64(onnxpb.TensorProto_FLOAT)}),
			node("Unsqueeze", []string{"maskf", "axis2"}, "mask3"),
			node("Mul", []string{cur, "mask3"}, "masked"))
		cur = "masked"
	}
	if s.extraInput != "" {
		g.Input = append(g.Input, tensorInfo(s.extraInput, idType, "batch", "seq"))
	}
	out := s.outputName
	if out == "" {
		out = "logits"
	}
	g.Node = append(g.Node, node("ReduceSum", []string{cur, "axis1"}, out, &onnxpb.AttributeProto{Name: "keepdims", Type: onnxpb.AttributeProto_INT, I: 0}))
	if s.labels > 0 {
		g.Output = append(g.Output, tensorInfo(out, onnxpb.TensorProto_FLOAT, "batch", s.labels))
	} else {
		g.Output = append(g.Output, tensorInfo(out, onnxpb.TensorProto_FLOAT, "batch", "labels"))
	}
	if s.extraOutput {
		g.Node = append(g.Node, node("Identity", []string{out}, "extra"))
		g.Output = append(g.Output, tensorInfo("extra", onnxpb.TensorProto_FLOAT, "batch", "labels"))
	}
	return &onnxpb.ModelProto{
		IrVersion:    8,
		ProducerName: "ort-engine-test",
		OpsetImport:  []*onnxpb.OperatorSetIdProto{{Domain: "", Version: 17}},
		Graph:        g,
	}
}

// writeSumModelDir writes a model directory with the graph at rel (for
// example "onnx/model.onnx"), config.json from cfg and, when st is not
// empty, config_sentence_transformers.json naming activation st.
func writeSumModelDir(t testing.TB, s sumGraph, rel string, cfg map[string]any, st string) string {
	t.Helper()
	dir := t.TempDir()
	b, err := proto.Marshal(s.model())
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if rel != "" {
		write(rel, b)
	}
	if cfg == nil {
		cfg = map[string]any{"model_type": "bert", "max_position_embeddings": 512, "pad_token_id": 0}
	}
	cj, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	write("config.json", cj)
	write("tokenizer.json", []byte("{}")) // read by the fake encoder's loader only
	if st != "" {
		write("config_sentence_transformers.json", []byte(`{"activation_fn": "`+st+`"}`))
	}
	return dir
}

// wordEncoder is a fake tokenizer: [CLS]=1, each query word, [SEP]=2, each
// document word, [SEP]=2, word ids hashed into 3..sumVocab-1, type ids 0 then
// 1, the document truncated to fit MaxLength.
type wordEncoder struct{}

func wordID(w string) int32 {
	h := fnv.New32a()
	h.Write([]byte(w))
	return 3 + int32(h.Sum32()%(sumVocab-3))
}

func (wordEncoder) EncodePair(q, d string, opt tokenizer.Options) (tokenizer.Encoding, error) {
	var e tokenizer.Encoding
	add := func(id, typ int32) {
		e.IDs = append(e.IDs, id)
		e.TypeIDs = append(e.TypeIDs, typ)
		e.AttentionMask = append(e.AttentionMask, 1)
	}
	add(1, 0)
	for _, w := range strings.Fields(q) {
		add(wordID(w), 0)
	}
	add(2, 0)
	dw := strings.Fields(d)
	if opt.MaxLength > 0 {
		room := opt.MaxLength - len(e.IDs) - 1
		if room < 0 {
			room = 0
		}
		if len(dw) > room {
			dw = dw[:room]
		}
	}
	for _, w := range dw {
		add(wordID(w), 1)
	}
	add(2, 1)
	return e, nil
}

// sumLogit computes sumGraph's logit for an encoding by hand.
func (s sumGraph) sumLogit(e tokenizer.Encoding) float64 {
	var sum float64
	for i, id := range e.IDs {
		v := float64(wordEmbedding(id))
		if s.types {
			v += float64(typeEmbedding[e.TypeIDs[i]])
		}
		sum += v
	}
	return sum
}

// newSumEngine returns a CPU engine whose tokenizer is wordEncoder.
func newSumEngine() *Engine {
	e := New(CPU, "onnx-cpu", WithLogger(hclog.NewNullLogger()))
	e.newEncoder = func([]byte) (pairEncoder, error) { return wordEncoder{}, nil }
	return e
}
