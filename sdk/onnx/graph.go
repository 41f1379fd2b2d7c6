// Package onnx builds, writes and reads ONNX models over the IR subset in
// package onnxpb: a small Graph builder (inputs, outputs, initializers,
// nodes), tensor encoding helpers, and WriteModel/ReadModel with ONNX
// external data for models too large for one protobuf message.
//
// It imports no runtime: graphs are plain protobuf, so plugins run them in
// whatever runtime they embed. Package crossencoder builds the BERT and
// XLM-RoBERTa sequence-classification graphs on top of it.
package onnx

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// IRVersion is the ONNX IR version of the models this package writes: IR 8
// is the version that ships with opset 17 (ONNX 1.12) and every ONNX Runtime
// since 1.12 reads it.
const IRVersion = 8

// Opset is the default-domain operator set version the graphs target: 17 is
// the first with LayerNormalization and is read by ONNX Runtime since 1.12
// and by transformers.js.
const Opset = 17

// Element types, re-exported so callers of the builder rarely need onnxpb.
const (
	Float    = onnxpb.TensorProto_FLOAT
	Float16  = onnxpb.TensorProto_FLOAT16
	BFloat16 = onnxpb.TensorProto_BFLOAT16
	Int8     = onnxpb.TensorProto_INT8
	Uint8    = onnxpb.TensorProto_UINT8
	Int32    = onnxpb.TensorProto_INT32
	Int64    = onnxpb.TensorProto_INT64
	Bool     = onnxpb.TensorProto_BOOL
)

// Dim is one dimension of a graph input or output: a fixed size or a named
// symbolic one such as "batch_size".
type Dim struct {
	// Param names a symbolic dimension; empty for a fixed one.
	Param string
	// Value is the size of a fixed dimension.
	Value int64
}

// Sym returns a symbolic dimension named name.
func Sym(name string) Dim { return Dim{Param: name} }

// Fixed returns a dimension of size n.
func Fixed(n int64) Dim { return Dim{Value: n} }

// Graph accumulates the nodes, initializers, inputs and outputs of one ONNX
// graph. It is not safe for concurrent use.
type Graph struct {
	g     *onnxpb.GraphProto
	names map[string]bool
}

// NewGraph returns an empty graph called name.
func NewGraph(name string) *Graph {
	return &Graph{g: &onnxpb.GraphProto{Name: name}, names: map[string]bool{}}
}

// Proto returns the graph's protobuf; later builder calls keep changing it.
func (g *Graph) Proto() *onnxpb.GraphProto { return g.g }

func valueInfo(name string, elem onnxpb.TensorProto_DataType, dims []Dim) *onnxpb.ValueInfoProto {
	shape := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		dim := &onnxpb.TensorShapeProto_Dimension{}
		if d.Param != "" {
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d.Param}
		} else {
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d.Value}
		}
		shape.Dim = append(shape.Dim, dim)
	}
	return &onnxpb.ValueInfoProto{
		Name: name,
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{
			TensorType: &onnxpb.TypeProto_Tensor{ElemType: int32(elem), Shape: shape},
		}},
	}
}

// AddInput declares a graph input and returns its name.
func (g *Graph) AddInput(name string, elem onnxpb.TensorProto_DataType, dims ...Dim) string {
	g.names[name] = true
	g.g.Input = append(g.g.Input, valueInfo(name, elem, dims))
	return name
}

// AddOutput declares the value name as a graph output.
func (g *Graph) AddOutput(name string, elem onnxpb.TensorProto_DataType, dims ...Dim) {
	g.g.Output = append(g.g.Output, valueInfo(name, elem, dims))
}

// AddInitializer adds a constant tensor to the graph and returns its name.
func (g *Graph) AddInitializer(t *onnxpb.TensorProto) string {
	g.names[t.GetName()] = true
	g.g.Initializer = append(g.g.Initializer, t)
	return t.GetName()
}

// AddFloat adds a float32 initializer with the given shape and data.
func (g *Graph) AddFloat(name string, dims []int64, data []float32) string {
	return g.AddInitializer(FloatTensor(name, dims, data))
}

// AddInt64 adds an int64 initializer with the given shape and data.
func (g *Graph) AddInt64(name string, dims []int64, data []int64) string {
	return g.AddInitializer(Int64Tensor(name, dims, data))
}

// Has reports whether name is already an input, initializer or node output.
func (g *Graph) Has(name string) bool { return g.names[name] }

// AddNode appends a node running op on inputs and writing the single value
// output (also used as the node's name), and returns output. Nodes must be
// added in topological order, as ONNX requires.
func (g *Graph) AddNode(op string, inputs []string, output string, attrs ...*onnxpb.AttributeProto) string {
	g.names[output] = true
	g.g.Node = append(g.g.Node, &onnxpb.NodeProto{
		Name:      output,
		OpType:    op,
		Input:     inputs,
		Output:    []string{output},
		Attribute: attrs,
	})
	return output
}

// Model wraps the graph in a ModelProto at IRVersion importing the default
// domain at Opset.
func (g *Graph) Model(producer, version string) *onnxpb.ModelProto {
	return &onnxpb.ModelProto{
		IrVersion:       IRVersion,
		OpsetImport:     []*onnxpb.OperatorSetIdProto{{Domain: "", Version: Opset}},
		ProducerName:    producer,
		ProducerVersion: version,
		Graph:           g.g,
	}
}

// AttrInt returns an INT attribute.
func AttrInt(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_INT, I: v}
}

// AttrInts returns an INTS attribute.
func AttrInts(name string, v ...int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_INTS, Ints: v}
}

// AttrFloat returns a FLOAT attribute.
func AttrFloat(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_FLOAT, F: v}
}

// FloatTensor returns a float32 tensor stored little-endian in raw_data, as
// the ONNX specification lays raw data out.
func FloatTensor(name string, dims []int64, data []float32) *onnxpb.TensorProto {
	return &onnxpb.TensorProto{Name: name, Dims: dims, DataType: int32(Float), RawData: encodeFloats(data)}
}

// encodeFloats returns data as little-endian bytes. It reads data and writes
// a fresh slice only, so it is exempt from race instrumentation, which would
// make serializing a model of tens of millions of weights several times
// slower under go test -race.
//
//go:norace
func encodeFloats(data []float32) []byte {
	raw := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return raw
}

// Int64Tensor returns an int64 tensor stored little-endian in raw_data.
func Int64Tensor(name string, dims []int64, data []int64) *onnxpb.TensorProto {
	raw := make([]byte, 8*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	return &onnxpb.TensorProto{Name: name, Dims: dims, DataType: int32(Int64), RawData: raw}
}

// NumElements returns the number of elements a tensor of shape dims holds,
// or an error for a negative dimension or an overflowing product.
func NumElements(dims []int64) (int64, error) {
	n := int64(1)
	for _, d := range dims {
		if d < 0 {
			return 0, fmt.Errorf("onnx: negative dimension %d in shape %v", d, dims)
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, fmt.Errorf("onnx: shape %v overflows", dims)
		}
		n *= d
	}
	return n, nil
}

// Floats decodes a float32 tensor held in raw_data or float_data. External
// data must have been loaded first (ReadModel does).
func Floats(t *onnxpb.TensorProto) ([]float32, error) {
	if t.GetDataType() != int32(Float) {
		return nil, fmt.Errorf("onnx: tensor %q has data type %d, not float", t.GetName(), t.GetDataType())
	}
	if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
		return nil, fmt.Errorf("onnx: tensor %q has external data that is not loaded", t.GetName())
	}
	n, err := NumElements(t.GetDims())
	if err != nil {
		return nil, fmt.Errorf("onnx: tensor %q: %w", t.GetName(), err)
	}
	if raw := t.GetRawData(); len(raw) > 0 || len(t.GetFloatData()) == 0 {
		if int64(len(raw)) != 4*n {
			return nil, fmt.Errorf("onnx: tensor %q has %d raw bytes for %d floats", t.GetName(), len(raw), n)
		}
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		return out, nil
	}
	if int64(len(t.GetFloatData())) != n {
		return nil, fmt.Errorf("onnx: tensor %q has %d floats for shape %v", t.GetName(), len(t.GetFloatData()), t.GetDims())
	}
	return append([]float32(nil), t.GetFloatData()...), nil
}
