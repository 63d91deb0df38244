#!/usr/bin/env bash
# dev/bench_gpu.sh: build dev/bench_gpu with nvcc and run the standard set on
# this machine's GPU (60m 130m 350m 1b at the paper's batch sizes, T=256, then
# the one-matrix GaLore-vs-SubTrack++ comparison), keeping the output in a file.
#
#   ./dev/bench_gpu.sh                    # from the repository root
#   ./dev/bench_gpu.sh --preset 350m      # extra flags go to every ./dev/bench_gpu run
#   DTYPES="bfloat16 float32" ./dev/bench_gpu.sh    # one run per dtype (default: bfloat16 then float32;
#                                                   # a dtype the trainer lacks is reported and skipped)
#   ARCH=sm_80 ./dev/bench_gpu.sh         # another GPU (default: from nvidia-smi, else sm_90)
#   BENCH_OUT=results.txt ./dev/bench_gpu.sh   # where the output goes: a file, or a folder to put
#                                              # bench_gpu_<date>.txt in (default dev/)
#
# the device time: about 5 minutes on an H100 for one dtype (GaLore's update
# step at 1B, one SVD per matrix, is most of it).
set -u
cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null 2>&1; then
    echo "error: dev/bench_gpu.sh: nvcc not found; install the CUDA toolkit (or, without a GPU," \
         "run the code paths under the CPU harness: make dev/bench_gpu_emu && ./dev/bench_gpu_emu" \
         "--preset kjv_test --B 2 --T 16 --iters 1)" >&2
    exit 1
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: dev/bench_gpu.sh: nvidia-smi sees no GPU; this benchmark needs one" >&2
    exit 1
fi

# the GPU's own architecture, e.g. 9.0 -> sm_90
if [ -z "${ARCH:-}" ]; then
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
    ARCH="sm_${cap:-90}"
fi
# (not $OUT: the lent device machines set that to their output folder)
OUT="${BENCH_OUT:-dev}"
if [ -d "$OUT" ]; then OUT="$OUT/bench_gpu_$(date +%Y%m%d_%H%M%S).txt"; fi
DTYPES="${DTYPES:-bfloat16 float32}"

echo "building dev/bench_gpu for $ARCH"
nvcc -O3 -std=c++17 -arch="$ARCH" -Xcompiler -Wall,-Wextra,-fopenmp -o dev/bench_gpu dev/bench_gpu.cu \
     -lcublas -lcublasLt -lcusolver -lgomp -lm || { echo "error: dev/bench_gpu.sh: the build failed" >&2; exit 1; }

{
    echo "# dev/bench_gpu.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
    echo "# $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null)"
    echo "# nvcc: $(nvcc --version | tail -n 1)"
} > "$OUT"

LINEBUF=""
if command -v stdbuf >/dev/null 2>&1; then LINEBUF="stdbuf -oL"; fi
status=0
for dtype in $DTYPES; do
    echo | tee -a "$OUT"
    echo "######## ./dev/bench_gpu --dtype $dtype $*" | tee -a "$OUT"
    # stdbuf: each line reaches the file at once, so a run cut short keeps what it measured
    $LINEBUF ./dev/bench_gpu --dtype "$dtype" "$@" 2>&1 | tee -a "$OUT"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "######## --dtype $dtype ended with exit code $rc" | tee -a "$OUT"
        status=1
    fi
done
echo
echo "output: $OUT"
exit $status
