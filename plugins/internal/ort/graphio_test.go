package ort

import (
	"bytes"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

func TestScanGraphIO(t *testing.T) {
	f := func(name string, m *onnxpb.ModelProto, inputs, outputs, initializers []string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			b, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			g, err := scanGraphIO(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("scanGraphIO: %v", err)
			}
			names := func(vis []*onnxpb.ValueInfoProto) []string {
				var out []string
				for _, vi := range vis {
					out = append(out, vi.GetName())
				}
				return out
			}
			if got := names(g.inputs); !slices.Equal(got, inputs) {
				t.Errorf("inputs %v, want %v", got, inputs)
			}
			if got := names(g.outputs); !slices.Equal(got, outputs) {
				t.Errorf("outputs %v, want %v", got, outputs)
			}
			for _, n := range initializers {
				if !g.initializers[n] {
					t.Errorf("initializer %s not found in %v", n, g.initializers)
				}
			}
			if len(g.initializers) != len(initializers) {
				t.Errorf("%d initializers, want %d", len(g.initializers), len(initializers))
			}
			for i, vi := range g.inputs {
				if !proto.Equal(vi, m.GetGraph().GetInput()[i]) {
					t.Errorf("input %d = %v, want %v", i, vi, m.GetGraph().GetInput()[i])
				}
			}
		})
	}
	f("bert-like", sumGraph{mask: true, types: true, labels: 1}.model(),
		[]string{"input_ids", "token_type_ids", "attention_mask"}, []string{"logits"}, []string{"E", "T", "axis1", "axis2"})
	f("int32, two outputs", sumGraph{int32Inputs: true, labels: 1, outputName: "scores", extraOutput: true}.model(),
		[]string{"input_ids"}, []string{"scores", "extra"}, []string{"E", "T", "axis1", "axis2"})
	// IR 3 style: the initializer is listed among the inputs too.
	old := sumGraph{labels: 1}.model()
	old.IrVersion = 3
	old.Graph.Input = append(old.Graph.Input, tensorInfo("E", onnxpb.TensorProto_FLOAT, int64(sumVocab), int64(1)))
	f("initializers among inputs", old, []string{"input_ids", "E"}, []string{"logits"}, []string{"E", "T", "axis1", "axis2"})
	// Unknown fields before and after the graph, and a metadata entry, are skipped.
	meta := sumGraph{labels: 1}.model()
	meta.DocString = "doc"
	meta.MetadataProps = []*onnxpb.StringStringEntryProto{{Key: "k", Value: "v"}}
	f("metadata", meta, []string{"input_ids"}, []string{"logits"}, []string{"E", "T", "axis1", "axis2"})
}

func TestScanGraphIORejectsBrokenFiles(t *testing.T) {
	good, err := proto.Marshal(sumGraph{mask: true, labels: 1}.model())
	if err != nil {
		t.Fatal(err)
	}
	noGraph, err := proto.Marshal(&onnxpb.ModelProto{IrVersion: 8, ProducerName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	f := func(name string, b []byte) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			if _, err := scanGraphIO(bytes.NewReader(b)); err == nil {
				t.Errorf("scanGraphIO accepted %d bytes", len(b))
			}
		})
	}
	f("empty", nil)
	f("no graph", noGraph)
	f("truncated in the middle", good[:len(good)/2])
	f("truncated by one byte", good[:len(good)-1])
	f("text", []byte("definitely not protobuf"))
	f("huge length", []byte{0x3a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
}

func FuzzScanGraphIO(f *testing.F) {
	good, err := proto.Marshal(sumGraph{mask: true, types: true, labels: 1}.model())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:40])
	f.Add([]byte{0x3a, 0x02, 0x5a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := scanGraphIO(bytes.NewReader(b))
		if err != nil {
			return
		}
		// Whatever the scanner accepts, protobuf must parse to the same
		// inputs and outputs.
		var m onnxpb.ModelProto
		if err := proto.Unmarshal(b, &m); err != nil {
			return // the scanner does not validate fields it skips
		}
		if len(g.inputs) != len(m.GetGraph().GetInput()) || len(g.outputs) != len(m.GetGraph().GetOutput()) {
			t.Fatalf("scanner saw %d/%d inputs/outputs, protobuf %d/%d", len(g.inputs), len(g.outputs), len(m.GetGraph().GetInput()), len(m.GetGraph().GetOutput()))
		}
	})
}
