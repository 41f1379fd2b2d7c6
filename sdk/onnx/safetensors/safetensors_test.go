package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/convert"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// sample returns n deterministic values spanning several orders of magnitude
// and both signs, so rounding differences between dtypes show.
func sample(n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = scale * float32(math.Sin(float64(i)*1.7+0.3)) * float32(1+i%7)
	}
	return v
}

func TestWriteReadRoundTrip(t *testing.T) {
	f := func(dt DType, round func(float32) float32) {
		t.Helper()
		dir := t.TempDir()
		path := filepath.Join(dir, "model.safetensors")
		entries := []Entry{
			{Name: "bert.embeddings.word_embeddings.weight", DType: dt, Shape: []int64{5, 3}, Data: sample(15, 0.05)},
			{Name: "classifier.bias", DType: dt, Shape: []int64{1}, Data: []float32{-1.25}},
			{Name: "scalar", DType: dt, Shape: nil, Data: []float32{3.5}},
			{Name: "empty", DType: dt, Shape: []int64{0, 4}, Data: []float32{}},
		}
		if err := WriteFile(path, entries, map[string]string{"format": "pt"}); err != nil {
			t.Fatalf("%s: WriteFile: %v", dt, err)
		}
		c, err := OpenDir(dir)
		if err != nil {
			t.Fatalf("%s: OpenDir: %v", dt, err)
		}
		defer c.Close()
		if got := c.Metadata()["format"]; got != "pt" {
			t.Fatalf("%s: metadata format = %q, want pt", dt, got)
		}
		if got := c.Names(); len(got) != len(entries) {
			t.Fatalf("%s: names = %v", dt, got)
		}
		for _, e := range entries {
			info, ok := c.Info(e.Name)
			if !ok || info.DType != dt {
				t.Fatalf("%s: info(%q) = %+v, %v", dt, e.Name, info, ok)
			}
			shape, data, err := c.Float32(e.Name)
			if err != nil {
				t.Fatalf("%s: Float32(%q): %v", dt, e.Name, err)
			}
			if len(shape) != len(e.Shape) || (len(shape) > 0 && !reflect.DeepEqual(shape, e.Shape)) {
				t.Fatalf("%s: %q shape = %v, want %v", dt, e.Name, shape, e.Shape)
			}
			if len(data) != len(e.Data) {
				t.Fatalf("%s: %q has %d elements, want %d", dt, e.Name, len(data), len(e.Data))
			}
			for i := range data {
				if want := round(e.Data[i]); data[i] != want {
					t.Fatalf("%s: %q[%d] = %v, want %v", dt, e.Name, i, data[i], want)
				}
			}
		}
	}
	f(F32, func(v float32) float32 { return v })
	f(F16, func(v float32) float32 { return convert.Float16ToFloat32(convert.Float32ToFloat16(v)) })
	f(BF16, func(v float32) float32 { return convert.BFloat16ToFloat32(convert.Float32ToBFloat16(v)) })
}

func TestLargeTensorChunks(t *testing.T) {
	// More than one read chunk of data, with F16's 2-byte elements, checks
	// that chunk boundaries neither drop nor shift elements.
	n := readChunk/2 + 12345
	data := sample(n, 1)
	path := filepath.Join(t.TempDir(), "big.safetensors")
	if err := WriteFile(path, []Entry{{Name: "w", DType: F16, Shape: []int64{int64(n)}, Data: data}}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, got, err := c.Float32("w")
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if want := convert.Float16ToFloat32(convert.Float32ToFloat16(data[i])); got[i] != want {
			t.Fatalf("w[%d] = %v, want %v", i, got[i], want)
		}
	}
}

func TestSharded(t *testing.T) {
	dir := t.TempDir()
	var entries []Entry
	for i := 0; i < 7; i++ {
		entries = append(entries, Entry{Name: "t" + string(rune('a'+i)), DType: []DType{F32, F16, BF16}[i%3], Shape: []int64{2, 2}, Data: sample(4, float32(i+1))})
	}
	if err := WriteSharded(dir, entries, 3); err != nil {
		t.Fatal(err)
	}
	c, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := len(c.Names()); got != 7 {
		t.Fatalf("got %d tensors, want 7", got)
	}
	files := map[string]bool{}
	for _, e := range entries {
		info, _ := c.Info(e.Name)
		files[filepath.Base(info.File)] = true
		if _, _, err := c.Float32(e.Name); err != nil {
			t.Fatalf("Float32(%q): %v", e.Name, err)
		}
	}
	if len(files) != 3 {
		t.Fatalf("tensors came from %v, want 3 shards", files)
	}
	if got := c.DTypes(); got[F32] != 3 || got[F16] != 2 || got[BF16] != 2 {
		t.Fatalf("DTypes = %v", got)
	}
}

func TestShardedIndexErrors(t *testing.T) {
	f := func(index, wantErr string) {
		t.Helper()
		dir := t.TempDir()
		if err := WriteFile(filepath.Join(dir, "a.safetensors"), []Entry{{Name: "x", Shape: []int64{1}, Data: []float32{1}}}, nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, IndexFileName), []byte(index), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := OpenDir(dir)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("index %s: err = %v, want it to contain %q", index, err, wantErr)
		}
	}
	f(`{`, "cannot parse index")
	f(`{"weight_map":{}}`, "empty weight_map")
	f(`{"weight_map":{"x":"../a.safetensors"}}`, "invalid shard")
	f(`{"weight_map":{"x":"missing.safetensors"}}`, "no such file")
	f(`{"weight_map":{"y":"a.safetensors"}}`, "does not hold it")
}

func TestResolveAliases(t *testing.T) {
	dir := t.TempDir()
	entries := []Entry{
		{Name: "bert.encoder.layer.0.output.LayerNorm.gamma", Shape: []int64{2}, Data: []float32{1, 2}},
		{Name: "bert.encoder.layer.0.output.LayerNorm.beta", Shape: []int64{2}, Data: []float32{3, 4}},
		{Name: "embeddings.LayerNorm.weight", Shape: []int64{2}, Data: []float32{5, 6}},
		{Name: "classifier.weight", Shape: []int64{1, 2}, Data: []float32{7, 8}},
	}
	if err := WriteFile(filepath.Join(dir, SingleFileName), entries, nil); err != nil {
		t.Fatal(err)
	}
	c, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f := func(name string, want []float32) {
		t.Helper()
		_, got, err := c.Float32(name)
		if want == nil {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Float32(%q) err = %v, want ErrNotFound", name, err)
			}
			return
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("Float32(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	f("bert.encoder.layer.0.output.LayerNorm.weight", []float32{1, 2})
	f("bert.encoder.layer.0.output.LayerNorm.bias", []float32{3, 4})
	f("bert.embeddings.LayerNorm.weight", []float32{5, 6})
	f("classifier.weight", []float32{7, 8})
	f("bert.pooler.dense.weight", nil)
}

// rawFile builds a safetensors file from a literal header and data.
func rawFile(header string, data []byte) []byte {
	var b bytes.Buffer
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(header)))
	b.Write(n[:])
	b.WriteString(header)
	b.Write(data)
	return b.Bytes()
}

func TestMalformedHeaders(t *testing.T) {
	f := func(file []byte, wantErr string) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "bad.safetensors")
		if err := os.WriteFile(path, file, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Open(path)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want it to contain %q", err, wantErr)
		}
	}
	four := make([]byte, 4)
	f([]byte{1, 2, 3}, "cannot read header length")
	f(rawFile("", nil)[:8], "cannot parse header")
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, math.MaxUint64)
	f(huge, "exceeds the")
	binary.LittleEndian.PutUint64(huge, 1000)
	f(append(huge, '{', '}'), "exceeds the file")
	f(rawFile(`[1]`, nil), "cannot parse header")
	f(rawFile(`{"x":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}`, four), "unknown dtype")
	f(rawFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0]}}`, four), "2 entries")
	f(rawFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}`, four), "outside")
	f(rawFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}`, four), "outside")
	f(rawFile(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, four), "needs 8 bytes")
	f(rawFile(`{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, four), "invalid shape")
	f(rawFile(`{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, four), "invalid shape")
	f(rawFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}`, four), "overlap")
	f(rawFile(`{"__metadata__":{"a":1}}`, nil), "__metadata__")
	f(rawFile(`{"x":"F32"}`, nil), `tensor "x"`)
}

func TestFloat32Errors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ints.safetensors")
	if err := os.WriteFile(path, rawFile(`{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, make([]byte, 8)), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Float32("ids"); err == nil || !strings.Contains(err.Error(), "not a float type") {
		t.Fatalf("I64 tensor: err = %v", err)
	}
	c.Close()
	if _, _, err := c.Float32("ids"); err == nil {
		t.Fatal("Float32 after Close succeeded")
	}
}

func TestWriteErrors(t *testing.T) {
	f := func(entries []Entry, wantErr string) {
		t.Helper()
		err := Write(&bytes.Buffer{}, entries, nil)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want it to contain %q", err, wantErr)
		}
	}
	f([]Entry{{Name: "a", Shape: []int64{2}, Data: []float32{1}}}, "does not match")
	f([]Entry{{Name: "a", DType: "I8", Shape: []int64{1}, Data: []float32{1}}}, "cannot write dtype")
	f([]Entry{{Name: "a", Shape: []int64{1}, Data: []float32{1}}, {Name: "a", Shape: []int64{1}, Data: []float32{1}}}, "duplicate")
	if err := WriteSharded(t.TempDir(), []Entry{{Name: "a", Shape: []int64{1}, Data: []float32{1}}}, 2); err == nil {
		t.Fatal("WriteSharded with more shards than tensors succeeded")
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(rawFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)))
	f.Add(rawFile(`{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,1],"data_offsets":[0,4]}}`, make([]byte, 4)))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, file []byte) {
		tensors, _, err := parseHeader(bytes.NewReader(file), int64(len(file)))
		if err != nil {
			return
		}
		for name, info := range tensors {
			if info.offset < 8 || info.offset+info.size > int64(len(file)) {
				t.Fatalf("tensor %q at [%d, %d) outside a %d-byte file", name, info.offset, info.offset+info.size, len(file))
			}
		}
	})
}

func TestCrossencoderWeights(t *testing.T) {
	// A checkpoint written from RandomWeights builds the same graph bytes as
	// RandomWeights itself when stored as F32, and the rounded weights when
	// stored as F16 or BF16.
	cfg := crossencoder.Config{Arch: crossencoder.ArchBERT, VocabSize: 50, Hidden: 8, Layers: 1, Heads: 2, Intermediate: 16,
		MaxPositions: 16, TypeVocabSize: 2, PadTokenID: 0, NumLabels: 1, LayerNormEps: 1e-12}
	w := crossencoder.RandomWeights(cfg, 3)
	want, err := crossencoder.Build(cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes, err := onnx.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	f := func(dt DType, same bool) {
		t.Helper()
		entries, err := Entries(cfg, w, dt)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := WriteSharded(dir, entries, 2); err != nil {
			t.Fatal(err)
		}
		c, err := OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := crossencoder.Build(cfg, c)
		if err != nil {
			t.Fatal(err)
		}
		gotBytes, err := onnx.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(gotBytes, wantBytes) != same {
			t.Fatalf("%s: graph bytes equal = %v, want %v", dt, !same, same)
		}
	}
	f(F32, true)
	f(F16, false)
	f(BF16, false)
}
