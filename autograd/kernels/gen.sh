#!/bin/sh
# Regenerates the committed PTX from the CUDA sources (Debian's nvcc 11.8, compute_80;
# the driver JIT-compiles it for newer GPUs). Run from this directory:  ./gen.sh
set -eu
for cu in *.cu; do
    nvcc -arch=compute_80 -ptx -O3 -o "${cu%.cu}.ptx" "$cu"
done
