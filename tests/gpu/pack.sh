#!/usr/bin/env bash
# tests/gpu/pack.sh: builds the GPU check programs on this machine (nvcc here, no GPU
# needed) and packs them, with the shared libraries that a GPU machine's image may lack,
# into build/gpu-pack.tar.gz. tests/gpu/run.sh uses the pack when it finds one, so the
# GPU machine's time goes to the checks rather than to compiling.
#   Portable code: -march=x86-64-v3 (AVX2/FMA) instead of -march=native; CUDA for sm_80
#   and sm_90 plus PTX. The CUDA libraries (cudart, cuBLAS) are not packed: they come
#   from the GPU machine's own CUDA (/usr/local/cuda/lib64, the rpath), as does libc.
# usage: bash tests/gpu/pack.sh            (then carry build/gpu-pack.tar.gz)
set -euo pipefail
cd "$(dirname "$0")/../.."
b=build/gpu
make -j"$(nproc)" BUILD=$b ARCH=-march=x86-64-v3 USE_CUDA=yes $b/nightshift $b/unit $b/gpu-parity $b/gpu-bench
rm -rf $b/pack
mkdir -p $b/pack/lib
cp $b/nightshift $b/unit $b/gpu-parity $b/gpu-bench $b/pack/
for f in $b/pack/nightshift $b/pack/unit $b/pack/gpu-parity $b/pack/gpu-bench; do ldd "$f"; done |
  awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s)\.so|ld-linux|/cuda' |
  while read -r lib; do cp -L "$lib" $b/pack/lib/; done
git rev-parse --short HEAD >$b/pack/commit 2>/dev/null || true
git status --short >>$b/pack/commit 2>/dev/null || true
tar -C $b -czf build/gpu-pack.tar.gz pack
echo "pack: build/gpu-pack.tar.gz ($(du -h build/gpu-pack.tar.gz | cut -f1)): $(ls $b/pack/lib | tr '\n' ' ')"
