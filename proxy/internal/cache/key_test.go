package cache

import (
	"crypto/sha256"
	"math"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk"
)

func TestSharedKeysSeparateIdentitiesAndPairs(t *testing.T) {
	base := Identity{Name: "m", Revision: "sha256:aa", Precision: sdk.FP32, Backend: "onnx-cpu", MaxLength: 512, Activation: "sigmoid"}
	pair := sdk.Pair{Query: "what is go", Document: "go is a language"}
	keyOf := func(id Identity, p sdk.Pair) string {
		// Every process gets its own seeds: shared keys must not depend
		// on them.
		k := newKeyer(id.digest())
		return k.shared(p)
	}
	ref := keyOf(base, pair)
	if len(ref) != keySize {
		t.Fatalf("key is %d bytes, want %d", len(ref), keySize)
	}
	f := func(name string, id Identity, p sdk.Pair) {
		t.Helper()
		if keyOf(id, p) == ref {
			t.Errorf("%s: same key as the reference", name)
		}
	}
	with := func(mod func(*Identity)) Identity {
		id := base
		mod(&id)
		return id
	}
	f("name", with(func(i *Identity) { i.Name = "n" }), pair)
	f("revision", with(func(i *Identity) { i.Revision = "sha256:ab" }), pair)
	f("precision", with(func(i *Identity) { i.Precision = sdk.INT8 }), pair)
	f("backend", with(func(i *Identity) { i.Backend = "onnx-cuda" }), pair)
	f("max length", with(func(i *Identity) { i.MaxLength = 256 }), pair)
	f("activation", with(func(i *Identity) { i.Activation = "identity" }), pair)
	f("query", base, sdk.Pair{Query: "what is go?", Document: pair.Document})
	f("document", base, sdk.Pair{Query: pair.Query, Document: "go is a language."})
	f("swapped", base, sdk.Pair{Query: pair.Document, Document: pair.Query})

	// Without length prefixes these two would hash the same bytes.
	if keyOf(base, sdk.Pair{Query: "ab", Document: "c"}) == keyOf(base, sdk.Pair{Query: "a", Document: "bc"}) {
		t.Errorf("the boundary between query and document does not change the key")
	}
	if keyOf(Identity{Name: "ab", Revision: "c"}, pair) == keyOf(Identity{Name: "a", Revision: "bc"}, pair) {
		t.Errorf("the boundary between identity fields does not change the key")
	}
	if keyOf(base, pair) != ref {
		t.Errorf("the same identity and pair give different keys")
	}
	if keyOf(IdentityOf(sdk.ModelInfo{Name: "m", Revision: "sha256:aa", Precision: sdk.FP32, Backend: "onnx-cpu", MaxLength: 512, Activation: "sigmoid", Device: "cpu"}), pair) != ref {
		t.Errorf("IdentityOf loses or adds a field")
	}
}

func TestLocalKeys(t *testing.T) {
	k := newKeyer(Identity{Name: "m"}.digest())
	pairs := pairsOf("q", 0, 5)
	pairs = append(pairs, pairs[1],
		sdk.Pair{Query: "ab", Document: "c"}, sdk.Pair{Query: "a", Document: "bc"},
		sdk.Pair{Query: "d0", Document: "q"})
	keys := k.local(pairs)
	if len(keys) != len(pairs)*keySize {
		t.Fatalf("got %d key bytes for %d pairs", len(keys), len(pairs))
	}
	if keyAt(keys, 1) != keyAt(keys, 5) {
		t.Errorf("equal pairs have different keys")
	}
	distinct := map[string]bool{}
	for i := range pairs {
		if one := k.local(pairs[i : i+1]); one != keyAt(keys, i) {
			t.Errorf("key %d depends on the other pairs of the request", i)
		}
		distinct[keyAt(keys, i)] = true
	}
	// Six distinct pairs and a repeat; the query/document boundary and
	// the order of the two count.
	if len(distinct) != len(pairs)-1 {
		t.Errorf("%d distinct keys for %d distinct pairs", len(distinct), len(pairs)-1)
	}
	// Another keyer of the same identity (another cache, another process)
	// draws other seeds, so its local keys share nothing with these.
	other := newKeyer(Identity{Name: "m"}.digest())
	if o := other.local(pairs[:1]); o == keyAt(keys, 0) || o[:8] == keyAt(keys, 0)[:8] || o[8:] == keyAt(keys, 0)[8:] {
		t.Errorf("two keyers gave the same local key half")
	}
	// The identity is hashed into local keys as well.
	sameSeeds := keyer{id: Identity{Name: "n"}.digest(), seeds: k.seeds}
	if sameSeeds.local(pairs[:1]) == keyAt(keys, 0) {
		t.Errorf("two identities gave the same local key")
	}
	if k.shared(pairs[0]) != other.shared(pairs[0]) {
		t.Errorf("two keyers of one identity gave different shared keys")
	}
}

func TestValueCodec(t *testing.T) {
	f := func(v string, want float32, wantOK bool) {
		t.Helper()
		got, ok := decodeValue(v)
		if ok != wantOK || (ok && got != want) {
			t.Errorf("decodeValue(%q) = %v, %v; want %v, %v", v, got, ok, want, wantOK)
		}
	}
	f(encodeValue(0.25), 0.25, true)
	f(encodeValue(-3.5e-7), -3.5e-7, true)
	f(encodeValue(0), 0, true)
	f("", 0, false)
	f(encodeValue(1)[:4], 0, false)
	f(encodeValue(1)+"x", 0, false)
	f("\x02"+encodeValue(1)[1:], 0, false)
	f(encodeValue(float32(math.NaN())), 0, false)
	f(encodeValue(float32(math.Inf(1))), 0, false)
	if len(encodeValue(1)) != valueSize {
		t.Errorf("value is %d bytes, want %d", len(encodeValue(1)), valueSize)
	}
}

func TestKeyHashUsesBothHalves(t *testing.T) {
	kr := newKeyer(Identity{}.digest())
	k := kr.local(pairsOf("q", 0, 1))
	lo, hi := keyHash(k)
	if lo == 0 || hi == 0 || lo == hi {
		t.Errorf("keyHash = %x, %x", lo, hi)
	}
	if lo, hi := keyHash("short"); lo != 0 || hi != 0 {
		t.Errorf("keyHash of a short string = %x, %x; want 0, 0", lo, hi)
	}
}

func TestBreaker(t *testing.T) {
	now := time.Unix(1000, 0)
	b := newBreaker(3, time.Second, 4*time.Second)
	b.now = func() time.Time { return now }
	f := func(step string, wantAllow, wantClosed bool) {
		t.Helper()
		if got := b.allow(); got != wantAllow {
			t.Fatalf("%s: allow() = %v, want %v", step, got, wantAllow)
		}
		if closed := b.state().closed; closed != wantClosed {
			t.Fatalf("%s: closed = %v, want %v", step, closed, wantClosed)
		}
	}
	f("fresh", true, true)
	b.failure()
	b.failure()
	f("two failures", true, true)
	b.success()
	b.failure()
	b.failure()
	f("success resets the count", true, true)
	b.failure()
	f("third failure opens", false, false)
	now = now.Add(999 * time.Millisecond)
	f("still cooling down", false, false)
	now = now.Add(time.Millisecond)
	f("probe", true, false)
	f("only one probe at a time", false, false)
	b.failure()
	now = now.Add(time.Second)
	f("failed probe doubles the cool-down", false, false)
	now = now.Add(time.Second)
	f("second probe", true, false)
	b.failure()
	now = now.Add(4 * time.Second)
	f("cool-down capped at the maximum", true, false)
	b.success()
	f("successful probe closes", true, true)
	if st := b.state(); st.opened != 3 || st.reclosed != 1 {
		t.Errorf("opened %d times and closed again %d, want 3 and 1", st.opened, st.reclosed)
	}
}

func TestBreakerAbandonedProbe(t *testing.T) {
	now := time.Unix(1000, 0)
	b := newBreaker(1, time.Second, time.Second)
	b.now = func() time.Time { return now }
	b.failure()
	now = now.Add(time.Second)
	if !b.allow() {
		t.Fatal("no probe after the cool-down")
	}
	b.abandon()
	if !b.allow() {
		t.Fatal("an abandoned probe blocks the next one")
	}
	if st := b.state(); st.closed || st.reclosed != 0 {
		t.Fatal("an abandoned probe closed the breaker")
	}
}

// TestKeysSeparateOptions checks that every scoring option is in both kinds
// of key, so that a raw logit, a document cut short or a strict request is
// never answered with another request's cached score; and that the default
// options leave the key as it was before options existed.
func TestKeysSeparateOptions(t *testing.T) {
	k := newKeyer(Identity{Name: "m"}.digest())
	pair := sdk.Pair{Query: "what is go", Document: "go is a language"}
	variants := []sdk.PairOptions{
		{},
		{Raw: true},
		{Strict: true},
		{Raw: true, Strict: true},
		{MaxDocumentTokens: 1},
		{MaxDocumentTokens: 2},
		{MaxDocumentTokens: 1, Raw: true},
		{MaxDocumentTokens: 1 << 20, Strict: true},
	}
	local, shared := map[string]int{}, map[string]int{}
	for i, o := range variants {
		p := pair
		p.Options = o
		lk, sk := k.local([]sdk.Pair{p}), k.shared(p)
		if j, ok := local[lk]; ok {
			t.Errorf("options %+v and %+v share a local key", o, variants[j])
		}
		if j, ok := shared[sk]; ok {
			t.Errorf("options %+v and %+v share a shared key", o, variants[j])
		}
		local[lk], shared[sk] = i, i
	}
	// The default options hash exactly the bytes a pair hashed before:
	// entries written by an older proxy stay valid.
	buf := append(k.id[:0:0], k.id[:]...)
	buf = appendField(buf, pair.Query)
	buf = appendField(buf, pair.Document)
	sum := sha256.Sum256(buf)
	if k.shared(pair) != string(sum[:keySize]) {
		t.Errorf("the default options changed the shared key")
	}
}
