#!/usr/bin/env bash
# Issue 14's side-by-side CPU speed runs (docs/BENCHMARKS.md, "Speed (issue
# 14)"): the server at fp32 and int8, with and without padding-free runs,
# against transformers.js fp32 on the same model files and the same
# requests (4 clients x 20 candidates of 20-60 words), on the MiniLM-L6
# shape and on an independent op-by-op graph of it with unnamed nodes.
# Every configuration runs once per round, the rounds alternate them, so
# all see the same load; one line of JSON per measurement goes to stdout.
#
#   make build && bench/speed.sh > speed.jsonl
#
# ROUNDS (3), DURATION (30s) and WORK (a temporary directory) adjust it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin
rounds=${ROUNDS:-3}
duration=${DURATION:-30s}
work=${WORK:-$(mktemp -d)}
tok=$root/sdk/onnx/crossencoder/testdata/ms-marco-MiniLM-L6-v2/tokenizer.json
shape=(--layers 6 --hidden 384 --heads 12 --intermediate 1536 --tokenizer "$tok")
[ -d "$work/minilm" ] || "$bin/rerank" testmodel "${shape[@]}" --out "$work/minilm" >&2
[ -d "$work/minilm-op" ] || "$bin/rerank" testmodel "${shape[@]}" --op-by-op --out "$work/minilm-op" >&2
tjs=$root/bench/transformersjs
[ -d "$tjs/node_modules/@huggingface/transformers" ] ||
	(cd "$tjs" && npm install --no-audit --no-fund --ignore-scripts >&2)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A url
# start NAME MODEL KIND [serve flags...]: KIND is tjs or server.
start() {
	local name=$1 model=$2 kind=$3 port
	shift 3
	port=$(free_port)
	if [ "$kind" = tjs ]; then
		node "$tjs/server.mjs" "$model" "$port" >"$work/$name.log" 2>&1 &
	else
		# A long deadline: on a loaded box a request waits seconds, and
		# shedding it would measure the admission control, not the model.
		ENABLE_PREDICTION_CACHE=false "$bin/rerank" serve --model "$model" --host 127.0.0.1 --port "$port" \
			--timeout 120 --cache-dir "$work/cache" "$@" >"$work/$name.log" 2>&1 &
	fi
	pids+=($!)
	url[$name]=http://127.0.0.1:$port
}
configs=(tjs tjs-op fp32-longest fp32 int8-longest int8 int8-op)
start tjs "$work/minilm" tjs
start tjs-op "$work/minilm-op" tjs
start fp32-longest "$work/minilm" server --backend-option padding=longest
start fp32 "$work/minilm" server
start int8-longest "$work/minilm" server --precision int8 --backend-option padding=longest
start int8 "$work/minilm" server --precision int8
start int8-op "$work/minilm-op" server --precision int8
for c in "${configs[@]}"; do
	for i in $(seq 1 600); do
		if [[ $c == tjs* ]]; then
			curl -sf -o /dev/null "${url[$c]}/v1/rerank" -d '{"query":"q","candidates":["d"]}' && break
		else
			curl -sf -o /dev/null "${url[$c]}/health" && break
		fi
		sleep 1
	done
done
echo "all servers up" >&2
for r in $(seq 1 "$rounds"); do
	for c in "${configs[@]}"; do
		load=$(cut -d' ' -f1 /proc/loadavg)
		rep=$("$bin/rerank" bench --url "${url[$c]}/v1/rerank" --concurrency 4 --candidates 20 \
			--doc-length uniform:20-60 --duration "$duration" --timeout 120s --honor-retry-after --json)
		echo "{\"round\":$r,\"config\":\"$c\",\"load1\":$load,\"report\":$rep}"
	done
done
for c in "${configs[@]}"; do
	[[ $c == tjs* ]] && continue
	echo "{\"config\":\"$c\",\"health\":$(curl -s "${url[$c]}/health")}"
done
