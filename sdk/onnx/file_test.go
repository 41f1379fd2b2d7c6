package onnx_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// smallModel is a graph y = x·W + b with a 2 KiB weight (goes external) and
// an 8-byte bias (stays inline).
func smallModel() *onnxpb.ModelProto {
	g := onnx.NewGraph("small")
	x := g.AddInput("x", onnx.Float, onnx.Sym("batch"), onnx.Fixed(16))
	w := make([]float32, 16*32)
	for i := range w {
		w[i] = float32(i) * 0.5
	}
	wn := g.AddFloat("w", []int64{16, 32}, w)
	bn := g.AddFloat("b", []int64{2}, []float32{1, -1})
	mm := g.AddNode("MatMul", []string{x, wn}, "mm")
	g.AddNode("Add", []string{mm, bn}, "y")
	g.AddOutput("y", onnx.Float, onnx.Sym("batch"), onnx.Fixed(32))
	return g.Model("test", "1")
}

func TestWriteReadModel(t *testing.T) {
	f := func(name string, opt onnx.WriteOptions, external bool) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			m := smallModel()
			before, err := onnx.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := onnx.WriteModel(dir, m, opt); err != nil {
				t.Fatal(err)
			}
			after, _ := onnx.Marshal(m)
			if !bytes.Equal(before, after) {
				t.Fatal("WriteModel changed the caller's model")
			}
			_, err = os.Stat(filepath.Join(dir, "model.onnx_data"))
			if external != (err == nil) {
				t.Fatalf("external data file present = %v, want %v", err == nil, external)
			}
			onDisk, err := os.ReadFile(filepath.Join(dir, "model.onnx"))
			if err != nil {
				t.Fatal(err)
			}
			if external == bytes.Equal(onDisk, before) {
				t.Fatalf("model file equal to the inline model = %v, want %v", !external, !external)
			}
			got, err := onnx.ReadModel(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, m) {
				t.Fatal("read model differs from the written one")
			}
			if external {
				for _, in := range got.GetGraph().GetInitializer() {
					if in.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
						t.Errorf("tensor %s still external after ReadModel", in.GetName())
					}
				}
			}
		})
	}
	f("inline", onnx.WriteOptions{}, false)
	f("forced external", onnx.WriteOptions{ExternalData: true}, true)
	f("over threshold", onnx.WriteOptions{Threshold: 1000}, true)
	f("under threshold", onnx.WriteOptions{Threshold: 1 << 20}, false)
}

func TestWriteModelPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "x.onnx")
	if err := onnx.WriteModel(path, smallModel(), onnx.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := onnx.ReadModel(path); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "sub"))
	if len(entries) != 1 {
		t.Fatalf("want only x.onnx, got %d entries (temporary files left?)", len(entries))
	}
}

func TestMarshalDeterministic(t *testing.T) {
	a, err := onnx.Marshal(smallModel())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		b, _ := onnx.Marshal(smallModel())
		if !bytes.Equal(a, b) {
			t.Fatal("the same model marshalled to different bytes")
		}
	}
}

// TestReadModelRejects writes hostile or broken external references and
// checks ReadModel returns an error (and does not panic or read outside the
// model dir).
func TestReadModelRejects(t *testing.T) {
	f := func(name, want string, edit func(t *onnxpb.TensorProto)) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := onnx.WriteModel(dir, smallModel(), onnx.WriteOptions{ExternalData: true}); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(filepath.Join(dir, "model.onnx"))
			m, err := onnx.Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			edit(m.GetGraph().GetInitializer()[0])
			b, _ = onnx.Marshal(m)
			os.WriteFile(filepath.Join(dir, "model.onnx"), b, 0o644)
			_, err = onnx.ReadModel(dir)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want one containing %q", err, want)
			}
		})
	}
	set := func(key, value string) func(t *onnxpb.TensorProto) {
		return func(t *onnxpb.TensorProto) {
			for _, kv := range t.ExternalData {
				if kv.Key == key {
					kv.Value = value
				}
			}
		}
	}
	f("parent dir", "not a file inside the model dir", set("location", "../model.onnx_data"))
	f("absolute", "not a file inside the model dir", set("location", "/etc/passwd"))
	f("missing file", "no such file", set("location", "other_data"))
	f("offset past end", "outside", set("offset", "999999"))
	f("negative offset", "outside", set("offset", "-5"))
	f("length past end", "outside", set("length", "999999"))
	f("bad number", "bad external offset", set("offset", "x"))
	f("no location", "not a file inside the model dir", func(t *onnxpb.TensorProto) { t.ExternalData = nil })
}

func TestReadModelGarbage(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "model.onnx"), []byte("\xff\xff\xff not a protobuf"), 0o644)
	if _, err := onnx.ReadModel(dir); err == nil {
		t.Fatal("garbage parsed as a model")
	}
	if _, err := onnx.ReadModel(filepath.Join(dir, "missing.onnx")); err == nil {
		t.Fatal("missing file read")
	}
}

func TestFloats(t *testing.T) {
	f := func(name string, tensor *onnxpb.TensorProto, want []float32, wantErr bool) {
		t.Helper()
		got, err := onnx.Floats(tensor)
		if (err != nil) != wantErr {
			t.Fatalf("%s: error %v, want error %v", name, err, wantErr)
		}
		if !wantErr && !slices.Equal(got, want) {
			t.Fatalf("%s: got %v, want %v", name, got, want)
		}
	}
	f("raw", onnx.FloatTensor("a", []int64{3}, []float32{1, -2.5, 3e-8}), []float32{1, -2.5, 3e-8}, false)
	f("float_data", &onnxpb.TensorProto{Dims: []int64{2}, DataType: int32(onnx.Float), FloatData: []float32{4, 5}}, []float32{4, 5}, false)
	f("scalar", onnx.FloatTensor("s", nil, []float32{7}), []float32{7}, false)
	f("wrong type", onnx.Int64Tensor("i", []int64{1}, []int64{1}), nil, true)
	f("short raw", &onnxpb.TensorProto{Dims: []int64{4}, DataType: int32(onnx.Float), RawData: []byte{1, 2, 3, 4}}, nil, true)
	f("short float_data", &onnxpb.TensorProto{Dims: []int64{4}, DataType: int32(onnx.Float), FloatData: []float32{1}}, nil, true)
	f("negative dim", &onnxpb.TensorProto{Dims: []int64{-1}, DataType: int32(onnx.Float)}, nil, true)
	f("overflow", &onnxpb.TensorProto{Dims: []int64{1 << 40, 1 << 40}, DataType: int32(onnx.Float)}, nil, true)
	f("external", &onnxpb.TensorProto{Dims: []int64{1}, DataType: int32(onnx.Float), DataLocation: onnxpb.TensorProto_EXTERNAL}, nil, true)
}

// oddModel is smallModel with what a streaming reader could get wrong: a
// tensor with float_data instead of raw_data, a Constant node holding a
// tensor, an empty raw_data, and unknown fields at every level it descends.
func oddModel() *onnxpb.ModelProto {
	m := smallModel()
	g := m.GetGraph()
	g.Initializer = append(g.Initializer,
		&onnxpb.TensorProto{Name: "f", Dims: []int64{3}, DataType: int32(onnx.Float), FloatData: []float32{1, 2, 3}},
		&onnxpb.TensorProto{Name: "empty", Dims: []int64{0}, DataType: int32(onnx.Float), RawData: []byte{}})
	g.Node = append(g.Node, &onnxpb.NodeProto{OpType: "Constant", Output: []string{"c"}, Attribute: []*onnxpb.AttributeProto{{
		Name: "value", Type: onnxpb.AttributeProto_TENSOR, T: onnx.FloatTensor("c", []int64{2}, []float32{4, 5})}}})
	unknown := protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 7)
	m.ProtoReflect().SetUnknown(unknown)
	g.ProtoReflect().SetUnknown(unknown)
	g.Initializer[0].ProtoReflect().SetUnknown(unknown)
	return m
}

// TestReadModelMatchesUnmarshal checks that the streaming reader gives the
// model proto.Unmarshal gives for the whole file, byte for byte once
// marshalled again, including the wire-format cases Unmarshal merges: a
// repeated raw_data (the last wins) and a repeated graph (initializers add
// up).
func TestReadModelMatchesUnmarshal(t *testing.T) {
	f := func(name string, b []byte) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "model.onnx")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		want, err := onnx.Unmarshal(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := onnx.ReadModel(path)
		if err != nil {
			t.Fatalf("%s: ReadModel: %v", name, err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("%s: ReadModel differs from Unmarshal", name)
		}
		gb, _ := onnx.Marshal(got)
		wb, _ := onnx.Marshal(want)
		if !bytes.Equal(gb, wb) {
			t.Fatalf("%s: ReadModel's model marshals to other bytes than Unmarshal's", name)
		}
	}
	small, _ := onnx.Marshal(smallModel())
	f("small", small)
	odd, _ := onnx.Marshal(oddModel())
	f("odd", odd)

	// A second raw_data in the first initializer, and a second graph field
	// with one more initializer.
	g := oddModel().GetGraph()
	tb, _ := proto.Marshal(g.Initializer[0])
	tb = protowire.AppendBytes(protowire.AppendTag(tb, 9, protowire.BytesType), []byte{1, 2, 3, 4})
	g.Initializer[0] = &onnxpb.TensorProto{}
	gb, _ := proto.Marshal(g)
	gb = protowire.AppendBytes(protowire.AppendTag(gb, 5, protowire.BytesType), tb)
	m := oddModel()
	m.Graph = nil
	mb, _ := proto.Marshal(m)
	mb = protowire.AppendBytes(protowire.AppendTag(mb, 7, protowire.BytesType), gb)
	extra, _ := proto.Marshal(&onnxpb.GraphProto{Initializer: []*onnxpb.TensorProto{onnx.FloatTensor("z", []int64{1}, []float32{9})}})
	mb = protowire.AppendBytes(protowire.AppendTag(mb, 7, protowire.BytesType), extra)
	f("repeated fields", mb)
}

// TestReadModelBroken cuts and corrupts a model at every byte: ReadModel
// may refuse, but whatever it accepts is what Unmarshal gives, and it never
// panics.
func TestReadModelBroken(t *testing.T) {
	b, _ := onnx.Marshal(oddModel())
	dir := t.TempDir()
	path := filepath.Join(dir, "model.onnx")
	f := func(what string, b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := onnx.ReadModel(path)
		if err != nil {
			return
		}
		want, werr := onnx.Unmarshal(b)
		if werr != nil {
			t.Fatalf("%s: ReadModel accepted what Unmarshal refuses (%v)", what, werr)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("%s: ReadModel differs from Unmarshal", what)
		}
	}
	for i := range b {
		f(fmt.Sprintf("cut at %d", i), b[:i])
		c := slices.Clone(b)
		c[i] ^= 0xff
		f(fmt.Sprintf("byte %d flipped", i), c)
	}
}

// TestReadModelHoldsTheModelOnce checks the point of the streaming reader:
// reading a model allocates about its size once, not the file's bytes plus
// their parsed copy (what os.ReadFile and Unmarshal allocate).
func TestReadModelHoldsTheModelOnce(t *testing.T) {
	const size = 32 << 20 // 32 MiB of weights: far above the reader's buffers and the graph
	g := onnx.NewGraph("big")
	x := g.AddInput("x", onnx.Float, onnx.Sym("batch"), onnx.Fixed(1024))
	w := g.AddFloat("w", []int64{1024, size / 4 / 1024}, make([]float32, size/4))
	g.AddNode("MatMul", []string{x, w}, "y")
	g.AddOutput("y", onnx.Float, onnx.Sym("batch"), onnx.Fixed(size/4/1024))
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := onnx.WriteModel(path, g.Model("test", "1"), onnx.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	m, err := onnx.ReadModel(path)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(m.GetGraph().GetInitializer()[0].GetRawData()); n != size {
		t.Fatalf("read %d bytes of weights, want %d", n, size)
	}
	// 1.25×: the weights once plus the reader's 1 MiB buffer and the
	// skeleton; reading the file whole and parsing it allocates 2×.
	if got := after.TotalAlloc - before.TotalAlloc; got > size*5/4 {
		t.Errorf("ReadModel allocated %d bytes for %d bytes of weights; want at most 1.25×", got, size)
	}
}
