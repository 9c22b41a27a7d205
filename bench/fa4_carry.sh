#!/usr/bin/env bash
# Here (the development machine, with the package registry): flash-attn-4 and what it needs beyond the GPU image, as
# two carry folders. Its compiler library alone is a 92 MB wheel (48 MB as xz), which with the bench corpus is over
# the 64 MiB a device call carries, so:
#   .fa4a/  the first 30 MB of the compiler library's xz stream: carry it in a first call;
#   .fa4b/  the rest of that stream, the other wheels and the rest of that wheel (~43 MB): carry it in the next call
#           on the same warm machine.
# There, bench/fa4_site.sh (sourced by bench/device_common.sh) keeps the first part in /tmp, which a warm machine keeps
# for the next call, and once both are in, unpacks flash-attn-4 into .fa4site/ and puts it on PYTHONPATH.
#   bash bench/fa4_carry.sh     (then: carry .fa4a in one call, .fa4b in the next)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# libs-core holds the DSL's Python front end (cutlass.cute), libs-base and libs-cu13 its compiler and runtime
WHEELS=(flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1
    nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2
    torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5)
IR=nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so
for d in .fa4a .fa4b .fa4site; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >>.git/info/exclude; done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
    -d "$stage/wheels" "${WHEELS[@]}"
rm -rf .fa4a .fa4b
mkdir -p .fa4a .fa4b/wheels "$stage/cu13"
unzip -q "$stage"/wheels/nvidia_cutlass_dsl_libs_cu13-*.whl -d "$stage/cu13"
rm "$stage"/wheels/nvidia_cutlass_dsl_libs_cu13-*.whl
xz -9 -T0 -c "$stage/cu13/$IR" >"$stage/ir.xz"
head -c 30000000 "$stage/ir.xz" >.fa4a/ir.xz.part1
tail -c +30000001 "$stage/ir.xz" >.fa4b/ir.xz.part2
echo "$IR" >.fa4b/ir.path
rm "$stage/cu13/$IR"
tar -C "$stage/cu13" -cJf .fa4b/cu13_rest.tar.xz .
mv "$stage"/wheels/*.whl .fa4b/wheels/
du -sh .fa4a .fa4b
