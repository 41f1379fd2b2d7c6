// Package safetensors reads Hugging Face safetensors checkpoints, a single
// model.safetensors file or a sharded set described by
// model.safetensors.index.json, and decodes F32, F16, BF16 and F64 tensors to
// float32.
//
// The format is an 8-byte little-endian header length, a JSON header mapping
// tensor names to {dtype, shape, data_offsets}, then the tensor bytes. Tensors
// are read on demand with ReadAt in bounded chunks, so opening a 2 GB
// checkpoint costs only its header and decoding a tensor needs no more memory
// than its float32 result. Every offset, shape and size in a header is checked
// before use: a malformed or truncated file is an error, never a panic.
//
// Checkpoint.Tensor makes a checkpoint usable as crossencoder.Weights; it
// resolves the legacy LayerNorm names (gamma/beta for weight/bias) that older
// BERT checkpoints carry.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/rerank-sidecar/rerank/sdk/onnx/convert"
)

// The file names Hugging Face uses for a checkpoint in a model directory.
const (
	// SingleFileName is the name of an unsharded checkpoint.
	SingleFileName = "model.safetensors"
	// IndexFileName is the name of the index of a sharded checkpoint.
	IndexFileName = "model.safetensors.index.json"
)

// maxHeaderSize bounds the JSON header; the reference implementation refuses
// headers over 100 MB too, and a real one (bge-reranker-v2-m3: ~40 KB) is far
// smaller, so a larger value means a corrupt or hostile file.
const maxHeaderSize = 100 << 20

// readChunk is how many bytes one ReadAt call decodes at a time: big enough
// to amortise the system call, small enough that decoding a 1 GB embedding
// matrix does not need a second 1 GB buffer.
const readChunk = 1 << 20

// ErrNotFound is returned (wrapped) when a checkpoint has no tensor of the
// requested name.
var ErrNotFound = errors.New("tensor not found")

// DType is a safetensors element type as spelled in the header.
type DType string

// The element types this package decodes to float32. Others (integers,
// F8 variants) are listed by Info but Float32 refuses them.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	F64  DType = "F64"
)

// dtypeSizes gives the element size in bytes of every dtype the format
// defines, so that sizes of any tensor can be validated.
var dtypeSizes = map[DType]int64{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"U16": 2, "I16": 2, F16: 2, BF16: 2,
	"U32": 4, "I32": 4, F32: 4,
	"U64": 8, "I64": 8, F64: 8,
}

// Size returns the size in bytes of one element, 0 for an unknown dtype.
func (d DType) Size() int64 { return dtypeSizes[d] }

// TensorInfo describes one tensor of a checkpoint.
type TensorInfo struct {
	// Name is the tensor's name in the checkpoint.
	Name string
	// DType is the element type.
	DType DType
	// Shape is the tensor's shape; empty for a scalar.
	Shape []int64
	// File is the path of the file holding the tensor.
	File string
	// offset is the absolute byte offset of the data in File.
	offset int64
	// size is the data's length in bytes.
	size int64
	// shard indexes Checkpoint.files.
	shard int
}

// Elements returns the number of elements.
func (t TensorInfo) Elements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Checkpoint is an open safetensors checkpoint, one file or several shards.
// Its methods are safe for concurrent use.
type Checkpoint struct {
	files    []*os.File
	tensors  map[string]TensorInfo
	metadata map[string]string
}

// OpenDir opens the checkpoint in a Hugging Face model directory:
// model.safetensors if present, else model.safetensors.index.json.
func OpenDir(dir string) (*Checkpoint, error) {
	single := filepath.Join(dir, SingleFileName)
	if _, err := os.Stat(single); err == nil {
		return Open(single)
	}
	index := filepath.Join(dir, IndexFileName)
	if _, err := os.Stat(index); err == nil {
		return Open(index)
	}
	return nil, fmt.Errorf("safetensors: no %s or %s in %q: %w", SingleFileName, IndexFileName, dir, os.ErrNotExist)
}

// Open opens a checkpoint: a .safetensors file, or a sharded checkpoint's
// .index.json whose weight_map names shard files in the same directory.
func Open(path string) (*Checkpoint, error) {
	c := &Checkpoint{tensors: map[string]TensorInfo{}, metadata: map[string]string{}}
	var err error
	if strings.HasSuffix(path, ".json") {
		err = c.openIndex(path)
	} else {
		err = c.openFile(path)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// index is the JSON of model.safetensors.index.json.
type index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

func (c *Checkpoint) openIndex(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("safetensors: cannot read index: %w", err)
	}
	var idx index
	if err := json.Unmarshal(b, &idx); err != nil {
		return fmt.Errorf("safetensors: cannot parse index %q: %w", path, err)
	}
	if len(idx.WeightMap) == 0 {
		return fmt.Errorf("safetensors: index %q has an empty weight_map", path)
	}
	shards := map[string]bool{}
	for _, shard := range idx.WeightMap {
		// A shard is a plain file name beside the index: anything else
		// could read outside the model directory.
		if shard == "" || filepath.Base(shard) != shard || shard == "." || shard == ".." {
			return fmt.Errorf("safetensors: index %q names an invalid shard %q", path, shard)
		}
		shards[shard] = true
	}
	names := make([]string, 0, len(shards))
	for s := range shards {
		names = append(names, s)
	}
	sort.Strings(names)
	dir := filepath.Dir(path)
	for _, s := range names {
		if err := c.openFile(filepath.Join(dir, s)); err != nil {
			return err
		}
	}
	for name, shard := range idx.WeightMap {
		info, ok := c.tensors[name]
		if !ok {
			return fmt.Errorf("safetensors: index %q maps %q to %s, which does not hold it", path, name, shard)
		}
		if filepath.Base(info.File) != shard {
			return fmt.Errorf("safetensors: index %q maps %q to %s but it is in %s", path, name, shard, filepath.Base(info.File))
		}
	}
	return nil
}

// headerEntry is one tensor of a file's JSON header.
type headerEntry struct {
	DType       DType   `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

func (c *Checkpoint) openFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	c.files = append(c.files, f)
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	tensors, meta, err := parseHeader(io.NewSectionReader(f, 0, st.Size()), st.Size())
	if err != nil {
		return fmt.Errorf("safetensors: %q: %w", path, err)
	}
	for k, v := range meta {
		c.metadata[k] = v
	}
	for name, t := range tensors {
		if _, dup := c.tensors[name]; dup {
			return fmt.Errorf("safetensors: tensor %q appears in more than one shard (again in %q)", name, path)
		}
		t.File = path
		t.shard = len(c.files) - 1
		c.tensors[name] = t
	}
	return nil
}

// parseHeader reads and validates the header of a file of the given size.
func parseHeader(r io.ReaderAt, fileSize int64) (map[string]TensorInfo, map[string]string, error) {
	var lenBuf [8]byte
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, nil, fmt.Errorf("cannot read header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > maxHeaderSize {
		return nil, nil, fmt.Errorf("header length %d exceeds the %d-byte limit", n, maxHeaderSize)
	}
	if int64(n) > fileSize-8 {
		return nil, nil, fmt.Errorf("header length %d exceeds the file (%d bytes)", n, fileSize)
	}
	hdr := make([]byte, n)
	if _, err := r.ReadAt(hdr, 8); err != nil && n > 0 {
		return nil, nil, fmt.Errorf("cannot read header: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &raw); err != nil {
		return nil, nil, fmt.Errorf("cannot parse header: %w", err)
	}
	dataStart := 8 + int64(n)
	dataLen := fileSize - dataStart
	meta := map[string]string{}
	tensors := make(map[string]TensorInfo, len(raw))
	type span struct{ begin, end int64 }
	spans := make([]span, 0, len(raw))
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &meta); err != nil {
				return nil, nil, fmt.Errorf("__metadata__ is not a string map: %w", err)
			}
			continue
		}
		var e headerEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		size := e.DType.Size()
		if size == 0 {
			return nil, nil, fmt.Errorf("tensor %q: unknown dtype %q", name, e.DType)
		}
		if len(e.DataOffsets) != 2 {
			return nil, nil, fmt.Errorf("tensor %q: data_offsets must have 2 entries, got %d", name, len(e.DataOffsets))
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin < 0 || end < begin || end > dataLen {
			return nil, nil, fmt.Errorf("tensor %q: data_offsets [%d, %d] outside the %d data bytes", name, begin, end, dataLen)
		}
		elems, ok := elements(e.Shape)
		if !ok {
			return nil, nil, fmt.Errorf("tensor %q: invalid shape %v", name, e.Shape)
		}
		if elems > math.MaxInt64/size || elems*size != end-begin {
			return nil, nil, fmt.Errorf("tensor %q: shape %v of %s needs %d bytes, data_offsets give %d", name, e.Shape, e.DType, elems*size, end-begin)
		}
		tensors[name] = TensorInfo{Name: name, DType: e.DType, Shape: e.Shape, offset: dataStart + begin, size: end - begin}
		spans = append(spans, span{begin, end})
	}
	// Tensors must not overlap, as the reference implementation requires:
	// overlapping views would let one tensor's bytes alias another's.
	sort.Slice(spans, func(i, j int) bool { return spans[i].begin < spans[j].begin })
	for i := 1; i < len(spans); i++ {
		if spans[i].begin < spans[i-1].end {
			return nil, nil, fmt.Errorf("tensors overlap at data offset %d", spans[i].begin)
		}
	}
	return tensors, meta, nil
}

// elements returns the product of shape, false on a negative dimension or
// overflow.
func elements(shape []int64) (int64, bool) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, false
		}
		n *= d
	}
	return n, true
}

// Close closes the checkpoint's files.
func (c *Checkpoint) Close() error {
	var first error
	for _, f := range c.files {
		if err := f.Close(); err != nil && first == nil {
			first = fmt.Errorf("safetensors: %w", err)
		}
	}
	c.files = nil
	return first
}

// Names returns the tensor names, sorted.
func (c *Checkpoint) Names() []string {
	names := make([]string, 0, len(c.tensors))
	for n := range c.tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Info returns the description of the named tensor.
func (c *Checkpoint) Info(name string) (TensorInfo, bool) {
	t, ok := c.tensors[name]
	return t, ok
}

// Metadata returns the __metadata__ string map of the checkpoint's files.
func (c *Checkpoint) Metadata() map[string]string { return c.metadata }

// DTypes counts the checkpoint's tensors per dtype, for logging what a
// checkpoint stores.
func (c *Checkpoint) DTypes() map[DType]int {
	m := map[DType]int{}
	for _, t := range c.tensors {
		m[t.DType]++
	}
	return m
}

// Float32 decodes the named tensor (found as Resolve finds it) to float32
// and returns its shape and data. F16 and BF16 widen exactly; F64 rounds to
// nearest.
func (c *Checkpoint) Float32(name string) ([]int64, []float32, error) {
	t, ok := c.Resolve(name)
	if !ok {
		return nil, nil, fmt.Errorf("safetensors: %q: %w", name, ErrNotFound)
	}
	if c.files == nil {
		return nil, nil, fmt.Errorf("safetensors: checkpoint is closed")
	}
	var decode func(dst []float32, src []byte)
	switch t.DType {
	case F32:
		decode = decodeF32
	case F16:
		decode = decodeF16
	case BF16:
		decode = decodeBF16
	case F64:
		decode = decodeF64
	default:
		return nil, nil, fmt.Errorf("safetensors: tensor %q has dtype %s, not a float type", name, t.DType)
	}
	esize := t.DType.Size()
	out := make([]float32, t.size/esize)
	// Whole elements per chunk, so no element straddles two reads.
	chunk := make([]byte, min(t.size, readChunk/esize*esize))
	f := c.files[t.shard]
	for done := int64(0); done < t.size; {
		n := min(int64(len(chunk)), t.size-done)
		if _, err := f.ReadAt(chunk[:n], t.offset+done); err != nil {
			return nil, nil, fmt.Errorf("safetensors: cannot read tensor %q: %w", name, err)
		}
		decode(out[done/esize:(done+n)/esize], chunk[:n])
		done += n
	}
	shape := append([]int64(nil), t.Shape...)
	return shape, out, nil
}

func decodeF32(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

func decodeF64(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(src[8*i:])))
	}
}

func decodeF16(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = convert.Float16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

func decodeBF16(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = convert.BFloat16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// Resolve returns the tensor a model asks for by its Hugging Face PyTorch
// name, following the renames transformers applies on load: the legacy
// LayerNorm names gamma and beta for weight and bias, and a checkpoint saved
// from the bare encoder (no "bert." or "roberta." prefix).
func (c *Checkpoint) Resolve(name string) (TensorInfo, bool) {
	if t, ok := c.tensors[name]; ok {
		return t, true
	}
	var alts []string
	if base, ok := strings.CutSuffix(name, "LayerNorm.weight"); ok {
		alts = append(alts, base+"LayerNorm.gamma")
	}
	if base, ok := strings.CutSuffix(name, "LayerNorm.bias"); ok {
		alts = append(alts, base+"LayerNorm.beta")
	}
	for _, prefix := range []string{"bert.", "roberta."} {
		if strings.HasPrefix(name, prefix) {
			for _, a := range append([]string{name}, alts...) {
				alts = append(alts, strings.TrimPrefix(a, prefix))
			}
		}
	}
	for _, a := range alts {
		if t, ok := c.tensors[a]; ok {
			return t, true
		}
	}
	return TensorInfo{}, false
}
