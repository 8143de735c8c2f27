#!/bin/sh
# tools/matmul_ab.sh A_TREE B_TREE VARIANT ROWS COLS GS T [ROUNDS]: one x86 variant's
# Q8_0 matmul from two source trees (e.g. a clone at the commit before a kernel change,
# and this one), timed alternately in one process (tools/matmul_ab.c). Only each tree's
# arch/x86 kernels differ: the driver, generic.c, kernels.h and the variant's flags
# (variants.json) are this tree's, and must be the same in both (checked). Not amx,
# whose tiles need the kernel's permission (cpu.c) that this harness does not ask.
set -eu
if [ $# -lt 7 ]; then
    echo "usage: $0 A_TREE B_TREE VARIANT ROWS COLS GS T [ROUNDS]" >&2
    exit 2
fi
A=$1 B=$2 V=$3
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
case $V in avx2 | avxvnni | avx512vnni) ;; *)
    echo "$0: VARIANT is avx2, avxvnni or avx512vnni" >&2
    exit 2 ;;
esac
for f in kernels.h driver.h driver.c generic.h generic.c variants.json; do
    for tree in "$A" "$B"; do
        if ! cmp -s "$tree/qllama/_kernels/$f" "$here/qllama/_kernels/$f"; then
            echo "$0: $tree/qllama/_kernels/$f differs from this tree's: not comparable here" >&2
            exit 2
        fi
    done
done
flags=$(python3 -c "import json, sys; v = {e['name']: e for e in json.load(open(sys.argv[1]))['x86_64']}; print(' '.join(v[sys.argv[2]]['flags']))" \
    "$here/qllama/_kernels/variants.json" "$V")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cflags="-O3 -fno-math-errno -ffp-contract=off -DQLLAMA_VARIANT=$V -DQLLAMA_TABLE=qllama_$V $flags"
for side in A B; do
    if [ $side = A ]; then tree=$A; else tree=$B; fi
    cc $cflags -I"$tree/qllama/_kernels" -c "$tree/qllama/_kernels/arch/x86/x86.c" -o "$out/$side.o"
    objcopy --redefine-sym "qllama_$V=T$side" "$out/$side.o"
done
K="$here/qllama/_kernels"
cc $cflags -I"$K" "$here/tools/matmul_ab.c" "$K/driver.c" "$K/generic.c" "$out/A.o" "$out/B.o" -lm -o "$out/matmul_ab"
"$out/matmul_ab" "$@"
