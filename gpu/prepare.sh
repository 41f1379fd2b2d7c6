#!/usr/bin/env bash
# Prepares, on a development machine, everything `make gpu-check` needs on a
# GPU machine that reaches nothing: the ONNX Runtime core library, the CUDA
# execution provider from the npm package (checked against its sha512), the
# plugins and the test binaries, cut into carries of at most 60 MiB under
# .gpu/carry/ (the device tool carries 64 MiB per call). docs/GPU.md says
# how a session runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=com.github.asus4.onnxruntime.linux-x64-gpu
version=0.4.9
# npm's dist.integrity of $pkg@$version (ONNX Runtime 1.29, CUDA 13).
integrity="sha512-FopIhNE/Ng+v2X65wVc9clPCBCvhvA53Hxo2U0Kf5fGdVsC7iCA+mZ0KLWggcQAj7TIZ6pNidR4AC10g74Xo6w=="
out=.gpu
rm -rf "$out/carry" "$out/stage"
mkdir -p "$out/carry" "$out/stage/bin" "$out/stage/lib" "$out/npm"
./plugins/ortlib.sh
cp lib/onnxruntime/libonnxruntime.so.1 "$out/stage/lib/"
# Symbols stripped (-s -w): the stage must fit one 64 MiB carry.
CGO_ENABLED=1 go build -ldflags '-s -w' -o "$out/stage/bin/rerank-onnx-cuda" ./plugins/onnx-cuda
CGO_ENABLED=1 go test -c -ldflags '-s -w' -o "$out/stage/bin/ort.test" ./plugins/internal/ort
CGO_ENABLED=1 go test -c -ldflags '-s -w' -o "$out/stage/bin/onnx-cuda.test" ./plugins/onnx-cuda
tgz="$out/npm/$pkg-$version.tgz"
if [ ! -f "$tgz" ]; then
	(cd "$out/npm" && npm pack --silent "$pkg@$version" >/dev/null)
fi
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 | tr -d '\n')"
if [ "$got" != "$integrity" ]; then
	echo "gpu/prepare: checksum mismatch for $pkg@$version: got $got" >&2
	exit 1
fi
tar -czf "$out/carry/stage.tgz" -C "$out/stage" .
if [ "$(wc -c <"$out/carry/stage.tgz")" -gt $((60 << 20)) ]; then
	echo "gpu/prepare: stage.tgz is over 60 MiB; it would not fit one carry" >&2
	exit 1
fi
# The provider package (171 MiB, already compressed) in 60 MiB parts.
split -b 60M -d "$tgz" "$out/carry/provider.part"
echo "$integrity" >"$out/carry/provider.integrity"
ls -l "$out/carry" >&2
