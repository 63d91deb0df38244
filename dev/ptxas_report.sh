#!/bin/bash
# dev/ptxas_report.sh: registers, shared memory and spills per CUDA kernel, from ptxas.
#
#   dev/ptxas_report.sh [file.cu] [hot-kernel-pattern ...]
#
# compiles file.cu (default train_llama_subtrack.cu) with
#   nvcc -arch=sm_90 -Xptxas -v -c
# and prints one row per kernel: registers, static shared memory, stack frame
# and spill store/load bytes (names demangled with c++filt). exits non-zero
# if a kernel whose demangled name matches one of the hot-kernel patterns
# (grep -E regular expressions) spills, or if the compile fails.
# environment: NVCC (default nvcc), ARCH (default sm_90), NVCCFLAGS (extra flags, e.g. -lineinfo)
set -u
src=${1:-train_llama_subtrack.cu}
[ $# -gt 0 ] && shift
hot=("$@")
NVCC=${NVCC:-nvcc}
ARCH=${ARCH:-sm_90}
if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "error: $NVCC not found; hint: install the CUDA toolkit or set NVCC=/path/to/nvcc" >&2
    exit 2
fi
if [ ! -f "$src" ]; then
    echo "error: $src does not exist; hint: pass the .cu file to report on" >&2
    exit 2
fi
log=$(mktemp)
obj=$(mktemp --suffix=.o)
trap 'rm -f "$log" "$obj"' EXIT
# shellcheck disable=SC2086
if ! "$NVCC" -arch="$ARCH" -O3 -std=c++17 -Xptxas -v ${NVCCFLAGS:-} -c -o "$obj" "$src" >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: nvcc failed on $src (log above)" >&2
    exit 2
fi
# ptxas prints, per kernel:
#   ptxas info    : Compiling entry function '_Z...' for 'sm_90'
#   ptxas info    : Function properties for _Z...
#       N bytes stack frame, N bytes spill stores, N bytes spill loads
#   ptxas info    : Used N registers, [used N barriers,] [N bytes smem,] N bytes cmem[0]
table=$(awk '
    /Compiling entry function/ { match($0, /function .[^'"'"']+/); name = substr($0, RSTART + 10, RLENGTH - 10);
                                 frame[name] = 0; st[name] = 0; ld[name] = 0; smem[name] = 0; regs[name] = 0;
                                 order[n++] = name; cur = name; next }
    /Function properties for/  { cur = $NF; next }
    /bytes stack frame/        { frame[cur] = $1; st[cur] = $5; ld[cur] = $9; next }
    /Used [0-9]+ registers/    { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^registers/) regs[cur] = $i;
                                                           if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem[cur] = $i } }
    END { for (i = 0; i < n; i++) { k = order[i]; printf "%s\t%s\t%s\t%s\t%s\t%s\n", k, regs[k], smem[k], frame[k], st[k], ld[k] } }
' "$log")
if [ -z "$table" ]; then
    echo "error: no kernels found in the ptxas output of $src" >&2
    exit 2
fi
status=0
printf "%-60s %5s %8s %7s %8s %8s\n" "kernel ($ARCH, $src)" "regs" "smem" "stack" "spill_st" "spill_ld"
while IFS=$'\t' read -r mangled regs smem frame st ld; do
    name=$(echo "$mangled" | c++filt)
    short=${name%%(*}
    flag=""
    if [ "$st" != "0" ] || [ "$ld" != "0" ]; then
        flag=" spills"
        for pattern in "${hot[@]+"${hot[@]}"}"; do
            if echo "$short" | grep -Eq -- "$pattern"; then
                flag=" SPILLS IN A HOT KERNEL"
                status=1
            fi
        done
    fi
    printf "%-60s %5s %8s %7s %8s %8s%s\n" "${short:0:60}" "$regs" "$smem" "$frame" "$st" "$ld" "$flag"
done <<< "$table"
if [ $status -ne 0 ]; then
    echo "error: a hot kernel spills registers to local memory; hint: cut its live values or raise its register cap" >&2
fi
exit $status
