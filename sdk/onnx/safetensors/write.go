package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/rerank-sidecar/rerank/sdk/onnx/convert"
)

// headerAlign is the alignment the reference writer pads the header to, so
// that tensor data starts on an 8-byte boundary.
const headerAlign = 8

// Entry is one tensor to write: float32 data stored as DType (F32, F16 or
// BF16, rounded to nearest even).
type Entry struct {
	// Name is the tensor's name, for example a Hugging Face PyTorch name.
	Name string
	// DType is the stored element type; empty means F32.
	DType DType
	// Shape is the tensor's shape.
	Shape []int64
	// Data holds the elements in row-major order.
	Data []float32
}

// Write writes entries as one safetensors file, in the given order, with
// the optional metadata as __metadata__.
func Write(w io.Writer, entries []Entry, metadata map[string]string) error {
	header := bytes.NewBufferString("{")
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata)
		if err != nil {
			return fmt.Errorf("safetensors: %w", err)
		}
		header.WriteString(`"__metadata__":`)
		header.Write(m)
	}
	offset := int64(0)
	seen := map[string]bool{}
	for i, e := range entries {
		dt := e.DType
		if dt == "" {
			dt = F32
		}
		if dt != F32 && dt != F16 && dt != BF16 {
			return fmt.Errorf("safetensors: tensor %q: cannot write dtype %q", e.Name, dt)
		}
		if seen[e.Name] || e.Name == "" || e.Name == "__metadata__" {
			return fmt.Errorf("safetensors: invalid or duplicate tensor name %q", e.Name)
		}
		seen[e.Name] = true
		n, ok := elements(e.Shape)
		if !ok || n != int64(len(e.Data)) {
			return fmt.Errorf("safetensors: tensor %q: shape %v does not match %d elements", e.Name, e.Shape, len(e.Data))
		}
		size := n * dt.Size()
		shape := e.Shape
		if shape == nil {
			shape = []int64{}
		}
		h, err := json.Marshal(headerEntry{DType: dt, Shape: shape, DataOffsets: []int64{offset, offset + size}})
		if err != nil {
			return fmt.Errorf("safetensors: %w", err)
		}
		name, _ := json.Marshal(e.Name)
		if i > 0 || len(metadata) > 0 {
			header.WriteByte(',')
		}
		header.Write(name)
		header.WriteByte(':')
		header.Write(h)
		offset += size
	}
	header.WriteByte('}')
	for header.Len()%headerAlign != 0 {
		header.WriteByte(' ')
	}
	bw := bufio.NewWriter(w)
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(header.Len()))
	bw.Write(lenBuf[:])
	bw.Write(header.Bytes())
	var b [4]byte
	for _, e := range entries {
		for _, v := range e.Data {
			switch e.DType {
			case F16:
				binary.LittleEndian.PutUint16(b[:], convert.Float32ToFloat16(v))
				bw.Write(b[:2])
			case BF16:
				binary.LittleEndian.PutUint16(b[:], convert.Float32ToBFloat16(v))
				bw.Write(b[:2])
			default:
				binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
				bw.Write(b[:])
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}

// WriteFile writes entries to path as one safetensors file.
func WriteFile(path string, entries []Entry, metadata map[string]string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if err := Write(f, entries, metadata); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}

// WriteSharded writes entries into dir as n shard files named like the
// Hugging Face ones (model-00001-of-00002.safetensors) plus
// model.safetensors.index.json, splitting entries into n runs of about equal
// count.
func WriteSharded(dir string, entries []Entry, n int) error {
	if n < 1 || n > len(entries) {
		return fmt.Errorf("safetensors: cannot write %d tensors into %d shards", len(entries), n)
	}
	idx := index{Metadata: map[string]any{}, WeightMap: map[string]string{}}
	total := int64(0)
	for s := 0; s < n; s++ {
		part := entries[s*len(entries)/n : (s+1)*len(entries)/n]
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, n)
		if err := WriteFile(filepath.Join(dir, name), part, map[string]string{"format": "pt"}); err != nil {
			return err
		}
		for _, e := range part {
			idx.WeightMap[e.Name] = name
			dt := e.DType
			if dt == "" {
				dt = F32
			}
			total += int64(len(e.Data)) * dt.Size()
		}
	}
	idx.Metadata["total_size"] = total
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, IndexFileName), b, 0o644); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}
