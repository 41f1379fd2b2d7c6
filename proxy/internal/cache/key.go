package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"hash/maphash"
	"math"
	"strconv"
	"unsafe"

	"github.com/rerank-sidecar/rerank/sdk"
)

// keySize is the length in bytes of a pair's cache key, local or shared: 128
// bits, enough that no two pairs ever share a key by accident.
const keySize = 16

// keyDomain separates this key scheme from any other use of SHA-256 over the
// same bytes; bump its version when the encoding changes so old entries are
// never read back.
const keyDomain = "rerank-cache-key-v1"

// Identity is everything about a loaded model that changes its scores. Two
// caches share entries only when every field is equal.
type Identity struct {
	// Name is the model name the proxy reports.
	Name string
	// Revision identifies the weights, for example the model file's sha256.
	Revision string
	// Precision is the precision the model actually runs at.
	Precision sdk.Precision
	// Backend names the plugin, for example "onnx-cpu".
	Backend string
	// MaxLength is the truncation length in tokens.
	MaxLength int
	// Activation is the activation applied to the logit, "identity" for raw.
	Activation string
}

// IdentityOf returns the identity of the model a plugin reported after Load.
func IdentityOf(info sdk.ModelInfo) Identity {
	return Identity{
		Name:       info.Name,
		Revision:   info.Revision,
		Precision:  info.Precision,
		Backend:    info.Backend,
		MaxLength:  info.MaxLength,
		Activation: info.Activation,
	}
}

// digest hashes the identity's fields, each length-prefixed so that no two
// different identities encode to the same bytes.
func (id Identity) digest() [sha256.Size]byte {
	h := sha256.New()
	writeField(h, keyDomain)
	writeField(h, id.Name)
	writeField(h, id.Revision)
	writeField(h, string(id.Precision))
	writeField(h, id.Backend)
	writeField(h, strconv.Itoa(id.MaxLength))
	writeField(h, id.Activation)
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// writeField writes s to h after its length as 8 little-endian bytes.
func writeField(h hash.Hash, s string) {
	h.Write(appendField(nil, s))
}

// keyer turns pairs into cache keys for one identity. There are two kinds:
//
//   - Local keys, for the in-process L1 and the in-flight table: two 64-bit
//     hashes of the pair by hash/maphash (AES-based where the CPU has AES
//     instructions) under two seeds drawn at random when the keyer is made,
//     128 bits in all, over the identity's digest and the pair. They never
//     leave the process and the seeds are never shown, so no client can aim
//     a collision at another's pair. They cost about a quarter of a SHA-256
//     of the same bytes, and hashing was a third of what an L1 hit cost.
//   - Shared keys, for Redis: the first 128 bits of a SHA-256 over the
//     identity's digest and the pair, the same in every process serving the
//     same model. They are computed only for pairs the L1 does not hold.
type keyer struct {
	id    [sha256.Size]byte
	seeds [2]maphash.Seed
}

// newKeyer returns a keyer for the identity whose digest is id, with fresh
// local seeds.
func newKeyer(id [sha256.Size]byte) keyer {
	return keyer{id: id, seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}}
}

// local returns the local keys of pairs concatenated in one string, keySize
// bytes per pair: key i is keyAt(keys, i), so a request costs one
// allocation however many pairs it has.
func (k *keyer) local(pairs []sdk.Pair) string {
	out := make([]byte, 0, len(pairs)*keySize)
	// The encoding of one pair, reused for the next; on the stack unless a
	// pair is longer than the scratch array (2 KB holds a query and a
	// passage of a few hundred words).
	var scratch [2 << 10]byte
	buf := scratch[:0]
	for i := range pairs {
		buf = append(buf[:0], k.id[:]...)
		buf = appendField(buf, pairs[i].Query)
		buf = appendField(buf, pairs[i].Document)
		buf = appendOptions(buf, pairs[i].Options)
		out = binary.LittleEndian.AppendUint64(out, maphash.Bytes(k.seeds[0], buf))
		out = binary.LittleEndian.AppendUint64(out, maphash.Bytes(k.seeds[1], buf))
	}
	// out is never written again: the string may share its bytes.
	return unsafe.String(unsafe.SliceData(out), len(out))
}

// shared returns the Redis key of a pair.
func (k *keyer) shared(p sdk.Pair) string {
	buf := make([]byte, 0, len(k.id)+16+len(p.Query)+len(p.Document)+optionsSize)
	buf = append(buf, k.id[:]...)
	buf = appendField(buf, p.Query)
	buf = appendField(buf, p.Document)
	buf = appendOptions(buf, p.Options)
	sum := sha256.Sum256(buf)
	return string(sum[:keySize])
}

// optionsSize is the length of a pair's encoded non-default options: a flags
// byte and the document token cap as 8 little-endian bytes.
const optionsSize = 9

// The bits of the options' flags byte.
const (
	optionRaw = 1 << iota
	optionStrict
)

// appendOptions appends the pair's scoring options, every one of which can
// change its score (or, strict, turn a truncated score into an error), so
// that pairs asking for different options never share an entry. The default
// options append nothing: their keys are the keys of pairs before options
// existed, and the common path hashes no extra bytes. The encoding stays
// unambiguous: every field before it is length-prefixed, so a key with
// options is always optionsSize bytes longer than the same pair's without.
func appendOptions(b []byte, o sdk.PairOptions) []byte {
	if o.IsZero() {
		return b
	}
	var flags byte
	if o.Raw {
		flags |= optionRaw
	}
	if o.Strict {
		flags |= optionStrict
	}
	b = append(b, flags)
	return binary.LittleEndian.AppendUint64(b, uint64(o.MaxDocumentTokens))
}

// appendField appends s to b after its length as 8 little-endian bytes.
func appendField(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// keyAt returns key i of a string built by keyer.local.
func keyAt(keys string, i int) string {
	return keys[i*keySize : (i+1)*keySize]
}

// keyHash is ristretto's KeyToHash for our keys: they are already uniform
// hash bits, so the two halves serve as the key and conflict hashes.
func keyHash(k string) (uint64, uint64) {
	if len(k) < keySize {
		return 0, 0
	}
	var lo, hi uint64
	for i := 7; i >= 0; i-- {
		lo = lo<<8 | uint64(k[i])
		hi = hi<<8 | uint64(k[8+i])
	}
	return lo, hi
}

// redisKeyPrefix names score entries in Redis; the version matches keyDomain.
const redisKeyPrefix = "rerank:v1:"

// lockKeyPrefix names the dedup lock of a score entry: "lock:" + its key.
const lockKeyPrefix = "lock:"

// redisKey returns the Redis key of a cache key: readable hex, so operators
// can inspect entries with redis-cli.
func redisKey(k string) string {
	return redisKeyPrefix + hex.EncodeToString([]byte(k))
}

// valueVersion is the first byte of every value written to Redis; a value
// with another first byte or length is treated as a miss.
const valueVersion = 1

// valueSize is a Redis value's length: the version byte and a float32.
const valueSize = 5

// encodeValue returns the compact Redis value of a score.
func encodeValue(s float32) string {
	var b [valueSize]byte
	b[0] = valueVersion
	binary.LittleEndian.PutUint32(b[1:], math.Float32bits(s))
	return string(b[:])
}

// decodeValue parses a Redis value; ok is false for anything not written by
// encodeValue or not a finite score.
func decodeValue(v string) (float32, bool) {
	if len(v) != valueSize || v[0] != valueVersion {
		return 0, false
	}
	s := math.Float32frombits(binary.LittleEndian.Uint32([]byte(v[1:])))
	if !finite(s) {
		return 0, false
	}
	return s, true
}
