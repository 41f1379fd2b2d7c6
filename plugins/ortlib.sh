#!/usr/bin/env bash
# Fetches the pinned ONNX Runtime shared library (1.29.0, from the npm package
# onnxruntime-node) into lib/onnxruntime/, verifying the package's sha512
# integrity and the library's sha256. Idempotent: a verified library is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.29.0
# npm's dist.integrity of onnxruntime-node@1.29.0.
integrity="sha512-WjiVVB72riILz8HbYvxvmjKyE/WmkYoSfKY++axo5jAR609HQg8MwiG/HhShpTcJfmmAdzxxmB+MMST3A+SiPA=="
dest=lib/onnxruntime
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) src=bin/napi-v6/linux/x64/libonnxruntime.so.1; lib=libonnxruntime.so.1
    sum=89688f5cf51c7e31befbb7b9101bc027799009b18d1baa9a5b1146a72e69538d ;;
  Linux/aarch64) src=bin/napi-v6/linux/arm64/libonnxruntime.so.1; lib=libonnxruntime.so.1; sum= ;;
  Darwin/arm64) src=bin/napi-v6/darwin/arm64/libonnxruntime.1.dylib; lib=libonnxruntime.1.dylib
    sum=3e4c63909e9fc6648c93c68741c1ccf1e3d89218dd1d6a7d4f3d629ffc7f9918 ;;
  *) echo "ortlib: no pinned ONNX Runtime library for $(uname -s)/$(uname -m)" >&2; exit 1 ;;
esac
sha256() { if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi; }
if [ -f "$dest/$lib" ] && { [ -z "$sum" ] || [ "$(sha256 "$dest/$lib")" = "$sum" ]; }; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "ortlib: fetching onnxruntime-node@$version" >&2
(cd "$tmp" && npm pack --silent "onnxruntime-node@$version" >/dev/null)
tgz="$tmp/onnxruntime-node-$version.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 | tr -d '\n')"
if [ "$got" != "$integrity" ]; then
  echo "ortlib: checksum mismatch for onnxruntime-node@$version: got $got" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp" "package/$src"
if [ -n "$sum" ] && [ "$(sha256 "$tmp/package/$src")" != "$sum" ]; then
  echo "ortlib: sha256 mismatch for $src" >&2
  exit 1
fi
mkdir -p "$dest"
mv "$tmp/package/$src" "$dest/$lib.tmp" && mv "$dest/$lib.tmp" "$dest/$lib"
echo "ortlib: $dest/$lib ready" >&2
