#!/bin/sh
# Regenerates the committed PTX from the CUDA sources with Debian's nvcc 11.8 for compute_80
# (the driver JIT-compiles it for newer GPUs):  ./gen.sh [output directory, default: here]
# CI runs it into a temporary directory and requires the result to equal the committed files.
set -eu
out=$(realpath "${1:-$(dirname "$0")}")
cd "$(dirname "$0")"
for cu in *.cu; do
    nvcc -arch=compute_80 -ptx -O3 -o "$out/${cu%.cu}.ptx" "$cu"
done
