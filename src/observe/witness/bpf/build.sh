#!/bin/sh
# Rebuilds src/observe/witness/bpf/witness.bpf.o from witness.bpf.c and core.h.
# The object is committed (cargo build needs no C toolchain) and embedded
# with include_bytes!; .ci/run rebuilds it and diffs it against the committed
# one. Toolchain: Debian 12's clang 14 and llvm-strip (`apt-get install clang
# llvm`). Usage: src/observe/witness/bpf/build.sh [OUTPUT] (default: the committed path).
set -eu
cd "$(dirname "$0")"
out=${1:-witness.bpf.o}
# Relative source path and no debug-prefix leaks: the object is the same
# from any checkout directory.
clang -O2 -g -target bpf -mcpu=v2 -Wall -Werror \
    -fdebug-prefix-map="$PWD"=. -fno-ident \
    -c witness.bpf.c -o "$out"
# Keep .BTF/.BTF.ext (CO-RE needs them), drop DWARF.
llvm-strip -g "$out"
