package convert

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// TestConversionOfReadModel checks that converting a model read by the
// streaming onnx.ReadModel writes the same bytes, at every precision, as
// converting the model parsed whole (os.ReadFile and Unmarshal, what
// ReadModel did before it streamed), for both architectures and for a file
// with external data.
func TestConversionOfReadModel(t *testing.T) {
	convs := map[string]func(m *onnxpb.ModelProto) error{
		"fp16": func(m *onnxpb.ModelProto) error { return ToFloat16(m, HalfOptions{}) },
		"bf16": func(m *onnxpb.ModelProto) error { return ToBFloat16(m, HalfOptions{}) },
		"int8": func(m *onnxpb.ModelProto) error { _, err := Int8(m, Int8Options{}); return err },
		"int8-7bit": func(m *onnxpb.ModelProto) error {
			_, err := Int8(m, Int8Options{ReduceRange: true})
			return err
		},
	}
	for _, arch := range []string{crossencoder.ArchBERT, crossencoder.ArchXLMRoberta} {
		for _, external := range []bool{false, true} {
			dir := t.TempDir()
			if err := onnx.WriteModel(dir, tinyModel(t, arch), onnx.WriteOptions{ExternalData: external}); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(dir, "model.onnx"))
			if err != nil {
				t.Fatal(err)
			}
			for name, conv := range convs {
				streamed, err := onnx.ReadModel(dir)
				if err != nil {
					t.Fatal(err)
				}
				whole, err := onnx.Unmarshal(b)
				if err != nil {
					t.Fatal(err)
				}
				if external {
					// ReadModel loads external data; give the whole-file
					// model the same bytes the way the old reader did.
					data, err := os.ReadFile(filepath.Join(dir, "model.onnx_data"))
					if err != nil {
						t.Fatal(err)
					}
					loadExternalForTest(t, whole, data)
				}
				if err := conv(streamed); err != nil {
					t.Fatalf("%s %s: %v", arch, name, err)
				}
				if err := conv(whole); err != nil {
					t.Fatalf("%s %s: %v", arch, name, err)
				}
				sb, err := onnx.Marshal(streamed)
				if err != nil {
					t.Fatal(err)
				}
				wb, err := onnx.Marshal(whole)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(sb, wb) {
					t.Errorf("%s, external data %v, %s: the streamed read converts to other bytes than the whole-file parse", arch, external, name)
				}
			}
		}
	}
}

// loadExternalForTest fills each external tensor of m from data, the one
// external file WriteModel writes.
func loadExternalForTest(t *testing.T, m *onnxpb.ModelProto, data []byte) {
	t.Helper()
	for _, tensor := range m.GetGraph().GetInitializer() {
		if tensor.GetDataLocation() != onnxpb.TensorProto_EXTERNAL {
			continue
		}
		var offset, length int64
		var err error
		for _, kv := range tensor.GetExternalData() {
			switch kv.GetKey() {
			case "offset":
				offset, err = strconv.ParseInt(kv.GetValue(), 10, 64)
			case "length":
				length, err = strconv.ParseInt(kv.GetValue(), 10, 64)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		tensor.RawData = bytes.Clone(data[offset : offset+length])
		tensor.ExternalData = nil
		tensor.DataLocation = onnxpb.TensorProto_DEFAULT
	}
}
