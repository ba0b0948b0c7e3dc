#!/bin/sh
# Prints the stamp of the kernel sources: a SHA-256 over every file that goes into ferry_kernels.fatbin
# (the sources and the build with its -gencode list), in name order. ferry_kernels.stamp holds the stamp
# the committed fatbin was built from; `make check` fails when they differ.
set -eu
cd "$(dirname "$0")"
for f in $(ls CMakeLists.txt *.cu *.h | LC_ALL=C sort); do
    printf '%s ' "$f"
    sha256sum < "$f" | cut -d' ' -f1
done | sha256sum | cut -d' ' -f1
