package onnx

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// MaxProtoBytes is the largest serialized message protobuf allows: sizes are
// signed 32-bit, so 2 GiB - 1.
const MaxProtoBytes = math.MaxInt32

// ExternalDataThreshold is the total initializer size above which WriteModel
// moves tensors into an external data file: 1.8 GB leaves room under the
// 2 GiB protobuf cap for the graph itself and the small inline tensors.
const ExternalDataThreshold = 1_800_000_000

// externalMinBytes is the size from which a tensor goes to the external file
// once external data is used; smaller ones stay inline, as the onnx Python
// package's default size_threshold of 1 KiB does.
const externalMinBytes = 1024

// externalAlign aligns each tensor's offset in the data file to a 4 KiB
// page, so a runtime can map tensors straight from the file.
const externalAlign = 4096

// WriteOptions adjusts WriteModel.
type WriteOptions struct {
	// ExternalData forces external data even for a small model.
	ExternalData bool
	// Threshold overrides ExternalDataThreshold when positive (bytes).
	Threshold int64
}

// Marshal serializes m deterministically: the same model always gives the
// same bytes. It fails for a model over the protobuf size cap; WriteModel
// handles those with external data.
func Marshal(m *onnxpb.ModelProto) ([]byte, error) {
	if n := proto.Size(m); n > MaxProtoBytes {
		return nil, fmt.Errorf("onnx: model is %d bytes, over the 2 GiB protobuf limit: write it with external data", n)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("onnx: marshal model: %w", err)
	}
	return b, nil
}

// Unmarshal parses a serialized model without loading external data.
func Unmarshal(b []byte) (*onnxpb.ModelProto, error) {
	m := &onnxpb.ModelProto{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("onnx: parse model: %w", err)
	}
	return m, nil
}

// modelPath maps WriteModel's dir-or-path argument to the model file.
func modelPath(path string) string {
	if strings.HasSuffix(path, ".onnx") {
		return path
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return filepath.Join(path, "model.onnx")
	}
	if strings.HasSuffix(path, string(filepath.Separator)) {
		return filepath.Join(path, "model.onnx")
	}
	return path
}

// WriteModel writes m to path, or to path/model.onnx when path is a
// directory. When the initializers total more than the threshold (or
// ExternalData is set), tensors of 1 KiB and more go to "<file>_data" next to
// the model, as ONNX external data with page-aligned offsets; m itself is
// left as it was. Files are written to a temporary name and renamed, so a
// reader never sees half a model.
func WriteModel(path string, m *onnxpb.ModelProto, opt WriteOptions) (err error) {
	path = modelPath(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("onnx: create model dir: %w", err)
	}
	threshold := opt.Threshold
	if threshold <= 0 {
		threshold = ExternalDataThreshold
	}
	var total int64
	for _, t := range m.GetGraph().GetInitializer() {
		total += int64(len(t.GetRawData()))
	}
	if !opt.ExternalData && total <= threshold {
		b, err := Marshal(m)
		if err != nil {
			return err
		}
		return writeFileAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err })
	}

	dataName := filepath.Base(path) + "_data"
	inits := m.GetGraph().GetInitializer()
	stubs := make([]*onnxpb.TensorProto, len(inits))
	var offset int64
	offsets := make([]int64, len(inits))
	for i, t := range inits {
		raw := t.GetRawData()
		if len(raw) < externalMinBytes {
			stubs[i] = t
			offsets[i] = -1
			continue
		}
		offset = (offset + externalAlign - 1) / externalAlign * externalAlign
		offsets[i] = offset
		stubs[i] = &onnxpb.TensorProto{
			Name:         t.GetName(),
			Dims:         t.GetDims(),
			DataType:     t.GetDataType(),
			DocString:    t.GetDocString(),
			DataLocation: onnxpb.TensorProto_EXTERNAL,
			ExternalData: []*onnxpb.StringStringEntryProto{
				{Key: "location", Value: dataName},
				{Key: "offset", Value: strconv.FormatInt(offset, 10)},
				{Key: "length", Value: strconv.Itoa(len(raw))},
			},
		}
		offset += int64(len(raw))
	}
	err = writeFileAtomic(filepath.Join(filepath.Dir(path), dataName), func(w io.Writer) error {
		var pos int64
		pad := make([]byte, externalAlign)
		for i, t := range inits {
			if offsets[i] < 0 {
				continue
			}
			if _, err := w.Write(pad[:offsets[i]-pos]); err != nil {
				return err
			}
			if _, err := w.Write(t.GetRawData()); err != nil {
				return err
			}
			pos = offsets[i] + int64(len(t.GetRawData()))
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Swap the stubs in only for marshalling, so unknown fields of the model
	// and graph survive and the caller's model is unchanged afterwards.
	g := m.GetGraph()
	g.Initializer = stubs
	b, merr := Marshal(m)
	g.Initializer = inits
	if merr != nil {
		return merr
	}
	return writeFileAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err })
}

// writeFileAtomic writes path through a temporary file in the same directory.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("onnx: create %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	bw := bufio.NewWriterSize(f, 1<<20) // 1 MiB: large sequential writes of tensor data
	if err := write(bw); err != nil {
		f.Close()
		return fmt.Errorf("onnx: write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("onnx: write %s: %w", path, err)
	}
	// On the disk before the rename makes it visible: a crash or power
	// loss must not leave a renamed but empty or truncated file.
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("onnx: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("onnx: write %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("onnx: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("onnx: write %s: %w", path, err)
	}
	return nil
}

// ReadModel reads a model file (or dir/model.onnx) and loads any external
// tensor data into raw_data, so the result is self-contained. External
// locations must stay inside the model's directory.
//
// It holds the model once: each initializer's raw_data is read from the file
// into its own buffer and only the rest of the message (the graph's nodes and
// the tensors' headers, a few MB) is parsed from memory, so reading a 1.2 GB
// model peaks at about 1.2 GB rather than the file's bytes plus the parsed
// copy of them. The result equals proto.Unmarshal of the whole file.
func ReadModel(path string) (*onnxpb.ModelProto, error) {
	path = modelPath(path)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("onnx: read model: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("onnx: read model: %w", err)
	}
	r := &wireReader{r: bufio.NewReaderSize(f, 1<<20)} // 1 MiB: many small fields between large tensors
	skeleton, raws, err := r.model(fi.Size())
	if err != nil {
		return nil, fmt.Errorf("onnx: %s: parse model: %w", path, err)
	}
	m, err := Unmarshal(skeleton)
	if err != nil {
		return nil, fmt.Errorf("onnx: %s: %w", path, err)
	}
	inits := m.GetGraph().GetInitializer()
	if len(raws) > 0 && len(raws) != len(inits) {
		return nil, fmt.Errorf("onnx: %s: parse model: %d initializers read, %d parsed", path, len(raws), len(inits))
	}
	for i, raw := range raws {
		if raw != nil {
			inits[i].RawData = raw
		}
	}
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, t := range inits {
		if t.GetDataLocation() != onnxpb.TensorProto_EXTERNAL {
			continue
		}
		if err := loadExternal(filepath.Dir(path), t, files); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Field numbers ReadModel descends into: ModelProto.graph,
// GraphProto.initializer and TensorProto.raw_data (onnx.proto).
const (
	modelGraphField       = 7
	graphInitializerField = 5
	tensorRawDataField    = 9
)

// wireReader walks a serialized ModelProto from a stream, copying every
// field into a skeleton message except the graph initializers' raw_data,
// which it reads into buffers of their own.
type wireReader struct {
	r   *bufio.Reader
	pos int64 // bytes consumed
}

// model reads a ModelProto of n bytes. It returns the model without its
// initializers' raw_data, and the raw_data of each initializer in order
// (nil for one without). A repeated graph field merges into one message, as
// Unmarshal merges it: the initializers of every occurrence add up in order.
func (w *wireReader) model(n int64) (skeleton []byte, raws [][]byte, err error) {
	return w.message(n, modelGraphField, w.graph, "a field runs past the end of the file")
}

// graph reads a GraphProto of n bytes, as model does.
func (w *wireReader) graph(n int64) (skeleton []byte, raws [][]byte, err error) {
	return w.message(n, graphInitializerField, func(size int64) ([]byte, [][]byte, error) {
		t, raw, err := w.tensor(size)
		return t, [][]byte{raw}, err
	}, "a graph field runs past the end of the graph")
}

// message reads a message of n bytes, copying every field into skeleton
// but the length-delimited field num, whose payload sub reads: its
// skeleton takes the field's place and the raw_data it took out is
// appended to raws. overrun is the error of a field that runs past the
// message's end.
func (w *wireReader) message(n int64, num protowire.Number, sub func(size int64) ([]byte, [][]byte, error), overrun string) (skeleton []byte, raws [][]byte, err error) {
	end := w.pos + n
	for w.pos < end {
		got, typ, tag, err := w.tag()
		if err != nil {
			return nil, nil, err
		}
		if got != num || typ != protowire.BytesType {
			if skeleton, err = w.copyField(skeleton, tag, typ, end); err != nil {
				return nil, nil, err
			}
			continue
		}
		size, err := w.length(end)
		if err != nil {
			return nil, nil, err
		}
		part, r, err := sub(size)
		if err != nil {
			return nil, nil, err
		}
		raws = append(raws, r...)
		skeleton = protowire.AppendVarint(skeleton, tag)
		skeleton = protowire.AppendBytes(skeleton, part)
	}
	if w.pos != end {
		return nil, nil, errors.New(overrun)
	}
	return skeleton, raws, nil
}

// tensor reads a TensorProto of n bytes: its raw_data into a buffer of its
// own (the last occurrence, as Unmarshal keeps), the rest into skeleton.
func (w *wireReader) tensor(n int64) (skeleton, raw []byte, err error) {
	end := w.pos + n
	for w.pos < end {
		num, typ, tag, err := w.tag()
		if err != nil {
			return nil, nil, err
		}
		if num != tensorRawDataField || typ != protowire.BytesType {
			if skeleton, err = w.copyField(skeleton, tag, typ, end); err != nil {
				return nil, nil, err
			}
			continue
		}
		size, err := w.length(end)
		if err != nil {
			return nil, nil, err
		}
		raw = make([]byte, size)
		if err := w.read(raw); err != nil {
			return nil, nil, err
		}
	}
	if w.pos != end {
		return nil, nil, errors.New("a tensor field runs past the end of the tensor")
	}
	return skeleton, raw, nil
}

// tag reads a field's tag.
func (w *wireReader) tag() (protowire.Number, protowire.Type, uint64, error) {
	v, err := w.varint()
	if err != nil {
		return 0, 0, 0, err
	}
	num, typ := protowire.DecodeTag(v)
	if !num.IsValid() {
		return 0, 0, 0, fmt.Errorf("invalid field number %d at byte %d", num, w.pos)
	}
	return num, typ, v, nil
}

// varint reads one varint.
func (w *wireReader) varint() (uint64, error) {
	var v uint64
	for shift := 0; shift < 64; shift += 7 {
		b, err := w.r.ReadByte()
		if err != nil {
			return 0, unexpected(err)
		}
		w.pos++
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("varint overflows 64 bits at byte %d", w.pos)
}

// length reads a length prefix and checks it ends by end.
func (w *wireReader) length(end int64) (int64, error) {
	v, err := w.varint()
	if err != nil {
		return 0, err
	}
	if v > uint64(end-w.pos) {
		return 0, fmt.Errorf("a %d-byte field at byte %d runs past its message", v, w.pos)
	}
	return int64(v), nil
}

// read fills p from the stream.
func (w *wireReader) read(p []byte) error {
	if _, err := io.ReadFull(w.r, p); err != nil {
		return unexpected(err)
	}
	w.pos += int64(len(p))
	return nil
}

// copyField appends the field whose tag was just read, value included, to
// dst.
func (w *wireReader) copyField(dst []byte, tag uint64, typ protowire.Type, end int64) ([]byte, error) {
	dst = protowire.AppendVarint(dst, tag)
	switch typ {
	case protowire.VarintType:
		v, err := w.varint()
		if err != nil {
			return nil, err
		}
		return protowire.AppendVarint(dst, v), nil
	case protowire.Fixed32Type, protowire.Fixed64Type:
		size := int64(4)
		if typ == protowire.Fixed64Type {
			size = 8
		}
		if size > end-w.pos {
			return nil, fmt.Errorf("a fixed-size field at byte %d runs past its message", w.pos)
		}
		n := len(dst)
		dst = append(dst, make([]byte, size)...)
		return dst, w.read(dst[n:])
	case protowire.BytesType:
		size, err := w.length(end)
		if err != nil {
			return nil, err
		}
		dst = protowire.AppendVarint(dst, uint64(size))
		n := len(dst)
		dst = append(dst, make([]byte, size)...)
		return dst, w.read(dst[n:])
	}
	// Groups are proto2-only and onnx.proto has none.
	return nil, fmt.Errorf("unsupported wire type %d at byte %d", typ, w.pos)
}

// unexpected turns a clean EOF inside a message into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// loadExternal reads one tensor's external data into its raw_data.
func loadExternal(dir string, t *onnxpb.TensorProto, files map[string]*os.File) error {
	var loc string
	offset, length := int64(0), int64(-1)
	for _, kv := range t.GetExternalData() {
		var err error
		switch kv.GetKey() {
		case "location":
			loc = kv.GetValue()
		case "offset":
			offset, err = strconv.ParseInt(kv.GetValue(), 10, 64)
		case "length":
			length, err = strconv.ParseInt(kv.GetValue(), 10, 64)
		}
		if err != nil {
			return fmt.Errorf("onnx: tensor %q: bad external %s: %w", t.GetName(), kv.GetKey(), err)
		}
	}
	if loc == "" || filepath.IsAbs(loc) || !filepath.IsLocal(loc) {
		return fmt.Errorf("onnx: tensor %q: external location %q is not a file inside the model dir", t.GetName(), loc)
	}
	f := files[loc]
	if f == nil {
		var err error
		if f, err = os.Open(filepath.Join(dir, loc)); err != nil {
			return fmt.Errorf("onnx: tensor %q: %w", t.GetName(), err)
		}
		files[loc] = f
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("onnx: tensor %q: %w", t.GetName(), err)
	}
	if length < 0 {
		length = fi.Size() - offset
	}
	if offset < 0 || length < 0 || offset > fi.Size() || length > fi.Size()-offset {
		return fmt.Errorf("onnx: tensor %q: external data [%d, +%d) outside %s (%d bytes)", t.GetName(), offset, length, loc, fi.Size())
	}
	raw := make([]byte, length)
	if _, err := f.ReadAt(raw, offset); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("onnx: tensor %q: %w", t.GetName(), err)
	}
	t.RawData = raw
	t.ExternalData = nil
	t.DataLocation = onnxpb.TensorProto_DEFAULT
	return nil
}
