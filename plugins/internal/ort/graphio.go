package ort

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
)

// graphIO is what the engine needs to know about a graph before creating its
// session: the declared inputs and outputs, and the initializer names (in IR
// versions before 4 initializers are listed among the inputs too), and the
// external data files the initializers are stored in.
type graphIO struct {
	inputs       []*onnxpb.ValueInfoProto
	outputs      []*onnxpb.ValueInfoProto
	initializers map[string]bool
	// externalData are the "location" values of the initializers' external
	// data (model.onnx_data, model.onnx.data, …): paths relative to the
	// model file's directory, each listed once, in the order first met.
	externalData []string
}

// Protobuf field numbers of the ONNX messages scanGraphIO walks (onnx.proto).
const (
	fieldModelGraph       = 7
	fieldGraphInitializer = 5
	fieldGraphInput       = 11
	fieldGraphOutput      = 12
	fieldTensorName       = 8
	fieldTensorExternal   = 13 // repeated StringStringEntryProto external_data
)

// maxValueInfoBytes bounds one input/output description read into memory; a
// real one is a few hundred bytes, so anything larger is a corrupt file.
const maxValueInfoBytes = 1 << 20

// scanGraphIO streams an ONNX ModelProto and returns its graph's inputs,
// outputs and initializer names without holding the weights in memory: the
// initializers' tensor data is skipped as it streams past. It reads r to the
// end, so a hash teed from r covers the whole file.
func scanGraphIO(r io.Reader) (graphIO, error) {
	w := &wireReader{r: bufio.NewReaderSize(r, 1<<16)} // 64 KiB: a few disk pages per read.
	g := graphIO{initializers: map[string]bool{}}
	sawGraph := false
	for {
		field, wt, err := w.tag()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return g, err
		}
		if field == fieldModelGraph && wt == wireBytes {
			n, err := w.length()
			if err != nil {
				return g, err
			}
			if err := w.graph(&g, w.off+n); err != nil {
				return g, err
			}
			sawGraph = true
			continue
		}
		if err := w.skip(wt); err != nil {
			return g, err
		}
	}
	if !sawGraph {
		return g, errors.New("no graph")
	}
	if len(g.inputs) == 0 || len(g.outputs) == 0 {
		return g, errors.New("graph declares no inputs or no outputs")
	}
	return g, nil
}

// Protobuf wire types.
const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

// wireReader reads protobuf wire format from a stream, counting the bytes it
// consumed so nested messages know where they end.
type wireReader struct {
	r   *bufio.Reader
	off int64
}

// ReadByte counts and returns one byte; it lets binary.ReadUvarint read
// through the counter.
func (w *wireReader) ReadByte() (byte, error) {
	b, err := w.r.ReadByte()
	if err == nil {
		w.off++
	}
	return b, err
}

func (w *wireReader) tag() (field int, wt int, err error) {
	start := w.off
	v, err := binary.ReadUvarint(w)
	if err != nil {
		if errors.Is(err, io.EOF) && w.off == start {
			return 0, 0, io.EOF
		}
		return 0, 0, fmt.Errorf("truncated tag at byte %d", start)
	}
	return int(v >> 3), int(v & 7), nil
}

func (w *wireReader) length() (int64, error) {
	v, err := binary.ReadUvarint(w)
	if err != nil {
		return 0, fmt.Errorf("truncated length at byte %d", w.off)
	}
	if v > 1<<62 {
		return 0, fmt.Errorf("length %d out of range at byte %d", v, w.off)
	}
	return int64(v), nil
}

func (w *wireReader) discard(n int64) error {
	got, err := io.CopyN(io.Discard, w.r, n)
	w.off += got
	if err != nil {
		return fmt.Errorf("truncated field at byte %d", w.off)
	}
	return nil
}

func (w *wireReader) bytes(n int64) ([]byte, error) {
	if n > maxValueInfoBytes {
		return nil, fmt.Errorf("field of %d bytes at byte %d is too large", n, w.off)
	}
	b := make([]byte, n)
	got, err := io.ReadFull(w.r, b)
	w.off += int64(got)
	if err != nil {
		return nil, fmt.Errorf("truncated field at byte %d", w.off)
	}
	return b, nil
}

// skip passes over one field's value of wire type wt.
func (w *wireReader) skip(wt int) error {
	switch wt {
	case wireVarint:
		if _, err := binary.ReadUvarint(w); err != nil {
			return fmt.Errorf("truncated varint at byte %d", w.off)
		}
		return nil
	case wireFixed64:
		return w.discard(8)
	case wireFixed32:
		return w.discard(4)
	case wireBytes:
		n, err := w.length()
		if err != nil {
			return err
		}
		return w.discard(n)
	}
	return fmt.Errorf("unsupported wire type %d at byte %d", wt, w.off)
}

// graph walks a GraphProto ending at byte end.
func (w *wireReader) graph(g *graphIO, end int64) error {
	for w.off < end {
		field, wt, err := w.tag()
		if err != nil {
			return err
		}
		if wt != wireBytes || (field != fieldGraphInput && field != fieldGraphOutput && field != fieldGraphInitializer) {
			if err := w.skip(wt); err != nil {
				return err
			}
			continue
		}
		n, err := w.length()
		if err != nil {
			return err
		}
		if field == fieldGraphInitializer {
			name, location, err := w.tensor(w.off + n)
			if err != nil {
				return err
			}
			g.initializers[name] = true
			if location != "" && !slices.Contains(g.externalData, location) {
				g.externalData = append(g.externalData, location)
			}
			continue
		}
		b, err := w.bytes(n)
		if err != nil {
			return err
		}
		vi := &onnxpb.ValueInfoProto{}
		if err := proto.Unmarshal(b, vi); err != nil {
			return fmt.Errorf("bad value info at byte %d: %v", w.off, err)
		}
		if field == fieldGraphInput {
			g.inputs = append(g.inputs, vi)
		} else {
			g.outputs = append(g.outputs, vi)
		}
	}
	if w.off != end {
		return fmt.Errorf("graph overruns its length at byte %d", w.off)
	}
	return nil
}

// tensor walks a TensorProto ending at byte end and returns its name and
// the location of its external data ("" when inline), skipping its data.
func (w *wireReader) tensor(end int64) (name, location string, err error) {
	for w.off < end {
		field, wt, err := w.tag()
		if err != nil {
			return "", "", err
		}
		if (field == fieldTensorName || field == fieldTensorExternal) && wt == wireBytes {
			n, err := w.length()
			if err != nil {
				return "", "", err
			}
			b, err := w.bytes(n)
			if err != nil {
				return "", "", err
			}
			if field == fieldTensorName {
				name = string(b)
				continue
			}
			e := &onnxpb.StringStringEntryProto{}
			if err := proto.Unmarshal(b, e); err != nil {
				return "", "", fmt.Errorf("bad external data entry at byte %d: %v", w.off, err)
			}
			if e.GetKey() == "location" {
				location = e.GetValue()
			}
			continue
		}
		if err := w.skip(wt); err != nil {
			return "", "", err
		}
	}
	if w.off != end {
		return "", "", fmt.Errorf("initializer overruns its length at byte %d", w.off)
	}
	return name, location, nil
}
