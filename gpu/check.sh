#!/usr/bin/env bash
# The GPU check of issue 14, run on a fresh GPU machine by `make gpu-check`
# (docs/GPU.md): `gpu/check.sh receive` keeps the files carried in this
# call (.gpu/carry/*) in a store that survives between calls; `gpu/check.sh
# run` assembles the CUDA provider, finds the CUDA 13 libraries of the
# machine's PyTorch install, runs the conformance harness (sdk/sdktest) on
# rerank-onnx-cuda and BenchmarkGPU (bge-reranker-v2-m3 shape, fp32/fp16/
# bf16 at 128/256/512 tokens), and writes everything to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${RERANK_GPU_STORE:-/var/tmp/rerank-gpu}
out=${OUT:-$PWD/.gpu/out}
mkdir -p "$store" "$out"
receive() {
	shopt -s nullglob
	for f in .gpu/carry/*; do
		cp "$f" "$store/"
		echo "kept $(basename "$f")"
	done
	ls -l "$store"
}
run() {
	receive
	cd "$store"
	[ -d stage ] || { mkdir stage && tar -xzf stage.tgz -C stage; }
	cat provider.part* >provider.tgz
	got="sha512-$(openssl dgst -sha512 -binary provider.tgz | base64 | tr -d '\n')"
	if [ "$got" != "$(cat provider.integrity)" ]; then
		echo "gpu/check: the provider parts do not reassemble the package (missing a part?)" >&2
		exit 1
	fi
	tar -xzf provider.tgz -C stage/lib --strip-components 4 \
		package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so package/Plugins/Linux/x64/libonnxruntime_providers_shared.so
	lib=$store/stage/lib
	bin=$store/stage/bin
	# CUDA 13 runtime, cuBLAS, cuDNN, cuFFT, cuRAND from PyTorch's wheels.
	cudalibs=$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for d in glob.glob(os.path.join(sp, "nvidia", "*", "lib")) + glob.glob(os.path.join(sp, "torch", "lib")):
        dirs.add(d)
print(":".join(sorted(dirs)))
PY
)
	export LD_LIBRARY_PATH="$lib${cudalibs:+:$cudalibs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	export RERANK_ORT_LIB_DIR=$lib RERANK_PLUGIN_BIN_DIR=$bin RERANK_GPU_OUT=$out/gpu.jsonl
	cd - >/dev/null
	{ nvidia-smi; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } >"$out/machine.txt" 2>&1 || true
	status=0
	(cd plugins/onnx-cuda && "$bin/onnx-cuda.test" -test.run 'TestPluginProcess' -test.v -test.timeout 10m) \
		>"$out/conformance.txt" 2>&1 || status=1
	tail -5 "$out/conformance.txt"
	(cd plugins/internal/ort && "$bin/ort.test" -test.run '^$' -test.bench 'BenchmarkGPU' -test.benchtime 1x -test.timeout 20m) \
		>"$out/bench.txt" 2>&1 || status=1
	grep -E 'Benchmark|ok|FAIL|SKIP' "$out/bench.txt" | tail -20
	cat "$out/gpu.jsonl" 2>/dev/null || true
	exit $status
}
case "${1:-run}" in
receive) receive ;;
run) run ;;
*) echo "usage: gpu/check.sh receive|run" >&2; exit 2 ;;
esac
