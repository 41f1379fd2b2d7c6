#!/bin/sh
# Regenerates plugins/internal/ort/testdata/fidelity/*.golden.json: writes the
# test models with `rerank testmodel` and scores the sets of sets.mjs with
# transformers.js (reference.mjs). Tests never run this; they rebuild the
# same models from the same seeds and compare against the committed goldens.
#
# Needs Go and Node.js, and transformers.js installed outside the repo:
#   mkdir /tmp/tjs && cd /tmp/tjs && npm init -y &&
#   ONNXRUNTIME_NODE_INSTALL=skip npm install @huggingface/transformers
# usage: sdk/onnx/crossencoder/testdata/reference/make-goldens.sh [TJS_DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../../../.." && pwd)
tjs=${1:-/tmp/tjs}
out=$repo/plugins/internal/ort/testdata/fidelity
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ES modules resolve packages next to the script, so the scripts run from
# the transformers.js install.
cp "$here/reference.mjs" "$here/sets.mjs" "$tjs/"
(cd "$repo" && go build -o "$work/rerank" ./proxy/cmd/rerank)
node "$tjs/sets.mjs" >"$work/sets.json"
mkdir -p "$out"

# gen NAME ARCH LAYERS HIDDEN HEADS INTERMEDIATE TOKENIZER
gen() {
	name=$1 arch=$2 layers=$3 hidden=$4 heads=$5 inter=$6 tok=$7 seed=1
	"$work/rerank" testmodel --arch "$arch" --layers "$layers" --hidden "$hidden" --heads "$heads" \
		--intermediate "$inter" --tokenizer "$repo/$tok" --seed "$seed" --out "$work/$name" >&2
	vocab=$(node -e 'console.log(require(process.argv[1]).vocab_size)' "$work/$name/config.json")
	positions=$(node -e 'console.log(require(process.argv[1]).max_position_embeddings)' "$work/$name/config.json")
	meta=$(printf '{"arch":"%s","layers":%s,"hidden":%s,"heads":%s,"intermediate":%s,"vocab_size":%s,"max_positions":%s,"labels":1,"seed":%s,"tokenizer":"%s"}' \
		"$arch" "$layers" "$hidden" "$heads" "$inter" "$vocab" "$positions" "$seed" "$tok")
	node "$tjs/reference.mjs" "$work/$name" "$work/sets.json" 512 "$meta" >"$out/$name.golden.json"
	echo "wrote $out/$name.golden.json" >&2
}

gen tiny-bert bert 2 32 2 64 sdk/onnx/crossencoder/testdata/ms-marco-MiniLM-L6-v2/tokenizer.json
gen minilm bert 6 384 12 1536 sdk/onnx/crossencoder/testdata/ms-marco-MiniLM-L6-v2/tokenizer.json
gen tiny-xlmr xlm-roberta 2 32 2 64 sdk/onnx/crossencoder/testdata/xlmr-synthetic/tokenizer_classic.json
