package ort

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/onnx"
	"github.com/rerank-sidecar/rerank/sdk/onnx/convert"
	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
	"github.com/rerank-sidecar/rerank/sdk/onnx/onnxpb"
	"github.com/rerank-sidecar/rerank/sdk/onnx/safetensors"
)

// supportMatrix lists, per execution provider, the precisions it executes
// with its own kernels. Load refuses the others rather than fall back to a
// slower or bigger path. Measured for CPU with ONNX Runtime 1.29.0 (see
// TestSupportMatrixCPU and docs/BENCHMARKS.md (precision section)):
//   - cpu: fp32; fp16 (MatMul, Gemm, LayerNormalization, Gather and the
//     data-movement ops have fp16 kernels; ONNX Runtime inserts casts to fp32
//     around the element-wise ops, so weights stay half and the result is
//     correct, but it is not faster than fp32); int8 (DynamicQuantizeLinear
//     and MatMulIntegerToFloat, which ONNX Runtime fuses into
//     DynamicQuantizeMatMul where a quantized input has one reader; MLAS
//     integer kernels). bf16 has no CPU kernels at all beyond
//     Cast, Gather and shape ops, so sessions fail to build.
//   - cuda: fp32, fp16, bf16 (the CUDA provider registers MatMul, Gemm,
//     LayerNormalization, Softmax and the element-wise ops for both). int8
//     is refused: DynamicQuantizeMatMul has only a CPU kernel, so ONNX
//     Runtime would silently run every quantized MatMul on the CPU.
//   - coreml: fp32 (CoreML already computes fp32 graphs in fp16 on the GPU
//     and Neural Engine); fp16 graphs, bf16 and the int8 contrib ops are not
//     CoreML-executable and would fall back to the CPU provider.
var supportMatrix = map[Provider][]sdk.Precision{
	CPU:    {sdk.FP32, sdk.FP16, sdk.INT8},
	CUDA:   {sdk.FP32, sdk.FP16, sdk.BF16},
	CoreML: {sdk.FP32},
}

// knownPrecisions are all the precisions the engine can produce a graph for.
var knownPrecisions = []sdk.Precision{sdk.FP32, sdk.FP16, sdk.BF16, sdk.INT8}

// SupportedPrecisions returns the precisions provider p executes.
func SupportedPrecisions(p Provider) []sdk.Precision {
	return slices.Clone(supportMatrix[p])
}

// checkPrecision resolves an empty precision to fp32 (every provider's
// default) and refuses precisions p does not execute, listing those it does.
func checkPrecision(p Provider, want sdk.Precision) (sdk.Precision, error) {
	if want == "" {
		return sdk.FP32, nil
	}
	want = sdk.Precision(strings.ToLower(string(want)))
	supported := supportMatrix[p]
	if slices.Contains(supported, want) {
		return want, nil
	}
	names := make([]string, len(supported))
	for i, s := range supported {
		names[i] = string(s)
	}
	what := "is not a precision"
	if slices.Contains(knownPrecisions, want) {
		what = "is not supported by the " + string(p) + " execution provider"
	}
	return "", fmt.Errorf("ort: precision %q %s (supported on %s: %s): %w", string(want), what, p, strings.Join(names, ", "), sdk.ErrInvalidInput)
}

// cpuFP16Note is what ModelInfo.Details["precision_note"] says for fp16 on
// the CPU provider, where it executes but is a poor choice
// (docs/BENCHMARKS.md (precision section) has the measurements).
const cpuFP16Note = "fp16 on the CPU provider runs several times slower than fp32 (ONNX Runtime casts around every element-wise op) and saves little memory; int8 is the fast, small CPU precision"

// withNote adds the precision note for mf's precision on provider p.
func withNote(mf modelFile, p Provider) modelFile {
	if p == CPU && mf.Precision == sdk.FP16 {
		if mf.Details == nil {
			mf.Details = map[string]string{}
		}
		mf.Details["precision_note"] = cpuFP16Note
	}
	return mf
}

// variantFiles are the pre-converted files a model repository may ship
// beside onnx/model.onnx, by precision, in the order they are preferred
// (the names Hugging Face Optimum and transformers.js use).
var variantFiles = map[sdk.Precision][]string{
	sdk.FP16: {filepath.Join("onnx", "model_fp16.onnx")},
	sdk.BF16: {filepath.Join("onnx", "model_bf16.onnx")},
	sdk.INT8: {filepath.Join("onnx", "model_int8.onnx"), filepath.Join("onnx", "model_quantized.onnx")},
}

// quantizationName is what ModelInfo.Quantization says for each precision
// the engine converts to itself.
func quantizationName(p sdk.Precision, reduceRange bool) string {
	if p != sdk.INT8 {
		return "none"
	}
	if reduceRange {
		return "int8-dynamic-per-channel-7bit"
	}
	return "int8-dynamic-per-channel"
}

// conversionGCPercent is the garbage collector's target during a
// conversion: a collection once the heap grows 10% over the live memory,
// against Go's default of 100%, which let a 1.2 GB fp32 model's int8
// conversion peak at 4.2 GB. docs/BENCHMARKS.md ("Memory at rest") has the
// peaks with it.
const conversionGCPercent = 10

// converterVersion is part of every conversion cache key: bump it when a
// conversion pass changes what it writes, so stale cache entries are not
// reused.
const converterVersion = "2"

// int8ReduceRange reports whether int8 weights must be 7-bit on this CPU:
// x86-64 without VNNI multiplies uint8×int8 with VPMADDUBSW, whose int16
// sums saturate with full-range weights.
func int8ReduceRange() bool {
	return runtime.GOARCH == "amd64" && !cpu.X86.HasAVX512VNNI && !cpu.X86.HasAVXVNNI
}

// sourceModel is where the weights of a load come from before conversion.
type sourceModel struct {
	// kind is "onnx" or "safetensors", as ModelInfo.Source says.
	kind string
	// files are the files whose bytes decide the result, hashed into the
	// cache key (the ONNX file, whose external data cacheKey adds, or the
	// safetensors files and config.json).
	files []string
	// onnxPath is the ONNX export, for kind "onnx".
	onnxPath string
}

// findSource looks for an fp32 ONNX export, then for a safetensors
// checkpoint with config.json, in cfg.ModelDir.
func findSource(dir string) (sourceModel, error) {
	var tried []string
	for _, rel := range onnxCandidates {
		path := filepath.Join(dir, rel)
		ok, err := isFile(path)
		if err != nil {
			return sourceModel{}, err
		}
		if ok {
			// cacheKey adds the external data files the graph
			// references, whatever their names.
			return sourceModel{kind: "onnx", files: []string{path}, onnxPath: path}, nil
		}
		tried = append(tried, path)
	}
	for _, rel := range []string{safetensors.SingleFileName, safetensors.IndexFileName} {
		path := filepath.Join(dir, rel)
		ok, err := isFile(path)
		if err != nil {
			return sourceModel{}, err
		}
		if !ok {
			tried = append(tried, path)
			continue
		}
		files := []string{path, filepath.Join(dir, "config.json")}
		if rel == safetensors.IndexFileName {
			c, err := safetensors.Open(path)
			if err != nil {
				return sourceModel{}, fmt.Errorf("ort: %v: %w", err, sdk.ErrInvalidInput)
			}
			shards := map[string]bool{}
			for _, n := range c.Names() {
				info, _ := c.Info(n)
				shards[info.File] = true
			}
			c.Close()
			for s := range shards {
				files = append(files, s)
			}
			slices.Sort(files[2:])
		}
		return sourceModel{kind: "safetensors", files: files}, nil
	}
	return sourceModel{}, fmt.Errorf("ort: no ONNX model or safetensors checkpoint in %s (looked for %s): %w", dir, strings.Join(tried, ", "), sdk.ErrInvalidInput)
}

// isFile reports whether path is a regular file; a missing file is not an
// error, an unreadable one is.
func isFile(path string) (bool, error) {
	st, err := os.Stat(path)
	if err == nil {
		return st.Mode().IsRegular(), nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("ort: cannot read model file %s: %w", path, err)
}

// convertedModel returns the ONNX file computing src at precision p,
// converting (and, for safetensors, building the graph) on a cache miss.
func convertedModel(cfg sdk.LoadConfig, src sourceModel, p sdk.Precision) (modelFile, error) {
	reduce := p == sdk.INT8 && int8ReduceRange()
	mf := modelFile{Precision: p, Quantization: quantizationName(p, reduce), Source: src.kind, Details: map[string]string{}}
	key, err := cacheKey(src, p, reduce)
	if err != nil {
		return modelFile{}, err
	}
	root, err := cacheRoot(cfg.CacheDir)
	if err != nil {
		return modelFile{}, err
	}
	dir := filepath.Join(root, key)
	mf.Path = filepath.Join(dir, "model.onnx")
	mf.Details["source_file"] = src.files[0]
	mf.Details["conversion_cache"] = dir
	if ok, _ := isFile(mf.Path); ok {
		err := verifyCached(&mf)
		if err == nil {
			mf.Details["conversion"] = "cache hit"
			return mf, nil
		}
		// An entry whose files do not hash to the identity recorded
		// when it was written (truncated or damaged on disk, or written
		// before identities were recorded) is never loaded: it is
		// removed and converted again.
		if rerr := os.RemoveAll(dir); rerr != nil {
			return modelFile{}, fmt.Errorf("ort: cannot remove the damaged conversion cache entry %s (%v): %w", dir, err, rerr)
		}
		mf = modelFile{Path: mf.Path, Precision: mf.Precision, Quantization: mf.Quantization, Source: mf.Source, Details: mf.Details}
		mf.Details["rebuilt"] = err.Error()
	}
	// The conversion's live memory is the source model plus what it
	// becomes; the garbage between them (each weight's float copy, the
	// replaced tensors) would let the heap grow to twice the live memory
	// at Go's default pacing. Collecting early keeps the peak near the live
	// memory for a few more collections of a heap that is almost all
	// pointer-free tensor bytes, so cheap to mark.
	removeStaleTemporaries(root, time.Now())
	defer debug.SetGCPercent(debug.SetGCPercent(conversionGCPercent))
	m, err := buildSource(cfg.ModelDir, src)
	if err != nil {
		return modelFile{}, err
	}
	switch p {
	case sdk.FP16:
		err = convert.ToFloat16(m, convert.HalfOptions{})
	case sdk.BF16:
		err = convert.ToBFloat16(m, convert.HalfOptions{})
	case sdk.INT8:
		var st convert.Int8Stats
		st, err = convert.Int8(m, convert.Int8Options{ReduceRange: reduce})
		mf.Details["int8_matmuls"] = fmt.Sprint(st.MatMuls)
		mf.Details["int8_embeddings"] = fmt.Sprint(st.Embeddings)
		mf.Details["weight_bytes_fp32"] = fmt.Sprint(st.WeightBytesBefore)
		mf.Details["weight_bytes"] = fmt.Sprint(st.WeightBytesAfter)
	}
	if err != nil {
		return modelFile{}, fmt.Errorf("ort: cannot convert %s to %s: %v: %w", src.files[0], p, err, sdk.ErrInvalidInput)
	}
	if err := writeCached(root, key, m); err != nil {
		return modelFile{}, err
	}
	// The source and converted graphs are garbage now; a 2 GB model would
	// otherwise keep the plugin's resident memory at several GB until the
	// runtime returns it on its own schedule.
	m = nil
	debug.FreeOSMemory()
	mf.Details["conversion"] = "converted"
	return mf, nil
}

// buildSource reads the fp32 graph of src: the ONNX export as is, or the
// cross-encoder graph built from the safetensors checkpoint and config.json.
func buildSource(dir string, src sourceModel) (*onnxpb.ModelProto, error) {
	if src.kind == "onnx" {
		m, err := onnx.ReadModel(src.onnxPath)
		if err != nil {
			return nil, fmt.Errorf("ort: %v: %w", err, sdk.ErrInvalidInput)
		}
		return m, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("ort: a safetensors checkpoint needs config.json: %v: %w", err, sdk.ErrInvalidInput)
	}
	cc, err := crossencoder.ConfigFromHF(b)
	if err != nil {
		return nil, fmt.Errorf("ort: %v: %w", err, sdk.ErrInvalidInput)
	}
	ckpt, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, fmt.Errorf("ort: %v: %w", err, sdk.ErrInvalidInput)
	}
	defer ckpt.Close()
	m, err := crossencoder.Build(cc, ckpt)
	if err != nil {
		return nil, fmt.Errorf("ort: cannot build the graph from %s: %v: %w", src.files[0], err, sdk.ErrInvalidInput)
	}
	return m, nil
}

// cacheKey hashes everything the converted file depends on: the source
// files' bytes, the precision and its options, the converter and the ONNX
// Runtime version (a newer runtime may want a different graph).
func cacheKey(src sourceModel, p sdk.Precision, reduceRange bool) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "rerank-convert %s\nort %s\nsource %s\nprecision %s\nreduce_range %v\n", converterVersion, Version, src.kind, p, reduceRange)
	files := slices.Clone(src.files)
	for i := 0; i < len(files); i++ {
		path := files[i]
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("ort: cannot read %s: %v: %w", path, err, sdk.ErrInvalidInput)
		}
		fmt.Fprintf(h, "file %s\n", filepath.Base(path))
		if path == src.onnxPath {
			// The graph is scanned as it is hashed: every external
			// data file it references (model.onnx_data,
			// model.onnx.data, …) decides the result too.
			var gio graphIO
			gio, err = scanGraphIO(io.TeeReader(f, h))
			for _, loc := range slices.Sorted(slices.Values(gio.externalData)) {
				p, perr := externalDataPath(filepath.Dir(path), loc)
				if perr != nil {
					f.Close()
					return "", perr
				}
				files = append(files, p)
			}
		} else {
			_, err = io.Copy(h, f)
		}
		f.Close()
		if err != nil {
			return "", fmt.Errorf("ort: cannot read %s: %v: %w", path, err, sdk.ErrInvalidInput)
		}
	}
	// 16 bytes of sha256 name the entry: collisions stay out of reach and
	// the paths stay short.
	return fmt.Sprintf("%s-%s", p, hex.EncodeToString(h.Sum(nil)[:16])), nil
}

// cacheRoot is dir/converted (dir is the LoadConfig's CacheDir, the proxy's
// model cache), else the user cache directory's rerank/converted, else one
// under the system temporary directory.
func cacheRoot(dir string) (string, error) {
	switch base, err := os.UserCacheDir(); {
	case dir != "":
		dir = filepath.Join(dir, "converted")
	case err == nil:
		dir = filepath.Join(base, "rerank", "converted")
	default:
		dir = filepath.Join(os.TempDir(), "rerank-converted")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("ort: cannot create the conversion cache %s: %w", dir, err)
	}
	return dir, nil
}

// writeCached writes m as root/key/model.onnx (with external data when it
// is large) atomically: into a fresh temporary directory first, renamed into
// place when complete, removed on any failure. When another process won the
// race, its entry is kept.
func writeCached(root, key string, m *onnxpb.ModelProto) (err error) {
	var nonce [6]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return fmt.Errorf("ort: %w", err)
	}
	tmp := filepath.Join(root, ".tmp-"+key+"-"+hex.EncodeToString(nonce[:]))
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := onnx.WriteModel(filepath.Join(tmp, "model.onnx"), m, onnx.WriteOptions{}); err != nil {
		return fmt.Errorf("ort: cannot write the converted model: %w", err)
	}
	// The identity of what was written, read back, is recorded beside it:
	// a later load checks the entry against it (verifyCached).
	written := modelFile{Path: filepath.Join(tmp, "model.onnx")}
	if _, err := written.inspect(); err != nil {
		return fmt.Errorf("ort: cannot read back the converted model: %w", err)
	}
	if err := writeSynced(filepath.Join(tmp, identityFile), []byte(written.Revision+"\n")); err != nil {
		return fmt.Errorf("ort: cannot write the converted model: %w", err)
	}
	syncDir(tmp)
	final := filepath.Join(root, key)
	if err := os.Rename(tmp, final); err != nil {
		if ok, _ := isFile(filepath.Join(final, "model.onnx")); ok {
			os.RemoveAll(tmp)
			return nil
		}
		return fmt.Errorf("ort: cannot move the converted model into %s: %w", final, err)
	}
	syncDir(root)
	return nil
}

// staleTemporaryAge is how long a conversion's temporary directory may go
// unwritten before it counts as abandoned: a conversion writes its files
// within minutes, so one untouched for an hour belongs to a process that was
// killed while writing (its deferred removal never ran).
const staleTemporaryAge = time.Hour

// removeStaleTemporaries removes the temporary directories under root
// (.tmp-…) that nothing has written for staleTemporaryAge, so that writes cut
// short by a killed process do not fill the disk over time.
func removeStaleTemporaries(root string, now time.Time) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), ".tmp-") {
			continue
		}
		dir := filepath.Join(root, e.Name())
		newest := time.Time{}
		_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil {
				if info, err := d.Info(); err == nil && info.ModTime().After(newest) {
					newest = info.ModTime()
				}
			}
			return nil
		})
		if !newest.IsZero() && now.Sub(newest) > staleTemporaryAge {
			os.RemoveAll(dir)
		}
	}
}

// identityFile, in a conversion cache entry, holds the identity (see
// modelFile.Revision) of the entry's files as they were written.
const identityFile = "identity"

// verifyCached checks the conversion cache entry of mf against the identity
// recorded when it was written, inspecting mf (which the load does anyway:
// the files are read once).
func verifyCached(mf *modelFile) error {
	want, err := os.ReadFile(filepath.Join(filepath.Dir(mf.Path), identityFile))
	if err != nil {
		return fmt.Errorf("the cached entry records no identity: %w", err)
	}
	if _, err := mf.inspect(); err != nil {
		return fmt.Errorf("the cached entry is unreadable: %w", err)
	}
	if got := mf.Revision; got != strings.TrimSpace(string(want)) {
		return fmt.Errorf("the cached entry's files hash to %.16s…, not the %.16s… they were written with", got, want)
	}
	return nil
}

// writeSynced writes b to path and flushes it to the disk.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir flushes dir's entries (a rename into it) to the disk, where the
// system can; a failure leaves the entry to the next load's check.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
