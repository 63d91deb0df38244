#!/usr/bin/env bash
# dev/memory_plan_table.sh [TRAINER]: the device-memory plan of the authors'
# recipes (their scripts/c4/llama_*.sh command lines, as recorded in
# dev/reference/authors_args.txt) under their flags and under the leanest
# flags this build has, then the goals of the GPU-memory issue, as the
# markdown tables in the README. it runs TRAINER --memory_plan, which needs no
# GPU: the CUDA trainer (./train_llama_subtrack, make train) or its
# CPU-harness build (./train_llama_subtrack_emu), whichever exists, unless
# one is given. these are plans of our own allocations (exact, checked
# against the harness in make test), not measurements on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${1:-}
if [ -z "$TRAIN" ]; then
    if [ -x ./train_llama_subtrack ]; then TRAIN=./train_llama_subtrack
    elif [ -x ./train_llama_subtrack_emu ]; then TRAIN=./train_llama_subtrack_emu
    else
        echo "error: neither ./train_llama_subtrack nor ./train_llama_subtrack_emu exists; run make train (or make train_llama_subtrack_emu)" >&2
        exit 1
    fi
fi
ARGS=dev/reference/authors_args.txt
# the leanest flags of this build that keep a recipe as it is (its gradient
# accumulation included: LEAN and EIGHT_BIT), and those that also need one
# micro step per optimizer step (per-layer updates: --total_batch_size equal
# to --batch_size)
LEAN=(--activation_checkpointing --master_weights 0 --subspace_dtype bfloat16)
PER_LAYER=(--optimizer low_rank_adamw8bit_per_layer --grad_clipping 0)
PER_LAYER_FP32_STATES=(--optimizer low_rank_adamw_per_layer --grad_clipping 0)
EIGHT_BIT=(--optimizer low_rank_adamw8bit)
GIB_80GB=74.50   # 80 GB = 80e9 bytes, in GiB

peak() {  # the plan's last line, "peak device memory: X GiB" -> X
    local out
    if ! out=$("$TRAIN" "$@" --memory_plan 2>&1); then
        echo "error: $TRAIN $* --memory_plan failed: $out" >&2
        exit 1
    fi
    printf '%s\n' "$out" | tail -n 1 | sed -n 's/^peak device memory: \([0-9.]*\) GiB$/\1/p'
}

recipe() {  # the recorded command line of the authors' llama_$1 script
    local line
    line=$(awk -v c="case llama_$1 " 'index($0, c) == 1 { getline; sub(/^args /, ""); print; exit }' "$ARGS")
    if [ -z "$line" ]; then echo "error: no case llama_$1 in $ARGS" >&2; exit 1; fi
    printf '%s\n' "$line"
}

flag() {  # the value of flag $1 in the words that follow
    local want=$1; shift
    while [ $# -gt 1 ]; do
        if [ "$1" = "$want" ]; then printf '%s\n' "$2"; return; fi
        shift
    done
}

echo "| recipe (authors' script) | params | B | total batch | R | their flags (GiB) | + ${LEAN[*]} ${EIGHT_BIT[*]} (GiB) | + per-layer updates (${PER_LAYER[*]}), total batch = B (GiB) |"
echo "|---|---|---|---|---|---|---|---|"
for m in 60m 130m 350m 1b 3b 7b; do
    read -r -a flags <<< "$(recipe "$m")"
    b=$(flag --batch_size "${flags[@]}")
    full=$(peak "${flags[@]}")
    lean=$(peak "${flags[@]}" "${LEAN[@]}" "${EIGHT_BIT[@]}")
    leanest=$(peak "${flags[@]}" "${LEAN[@]}" "${PER_LAYER[@]}" --total_batch_size "$b")
    n=$("$TRAIN" "${flags[@]}" --memory_plan 2>/dev/null | sed -n 's/.*(\([0-9]*\) parameters).*/\1/p' | head -n 1)
    printf '| llama_%s | %.0f M | %s | %s | %s | %s | %s | %s |\n' "$m" "$(awk -v n="$n" 'BEGIN { print n / 1e6 }')" \
        "$b" "$(flag --total_batch_size "${flags[@]}")" "$(flag --rank "${flags[@]}")" "$full" "$lean" "$leanest"
done

echo
echo "| goal | target (GiB) | plan (GiB) | met |"
echo "|---|---|---|---|"
row() {  # goal, target, plan
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(awk -v p="$3" -v t="$2" 'BEGIN { print (p <= t) ? "yes" : "**no**" }')"
}
read -r -a f7 <<< "$(recipe 7b)"
row "the authors' 7B recipe at B = total = 4, leanest flags (${LEAN[*]} ${PER_LAYER[*]})" 21 \
    "$(peak "${f7[@]}" --total_batch_size 4 "${LEAN[@]}" "${PER_LAYER[@]}")"
worst=0
for m in 60m 130m 350m 1b 3b; do
    read -r -a f <<< "$(recipe "$m")"
    p=$(peak "${f[@]}")
    worst=$(awk -v a="$worst" -v b="$p" 'BEGIN { print (b > a) ? b : a }')
done
row "the authors' 60M to 3B recipes under their flags (the largest)" "$GIB_80GB" "$worst"
row "the 7B recipe at B = total = 4 keeping fp32 masters and fp32 states (--activation_checkpointing ${PER_LAYER_FP32_STATES[*]})" "$GIB_80GB" \
    "$(peak "${f7[@]}" --total_batch_size 4 --activation_checkpointing "${PER_LAYER_FP32_STATES[@]}")"
read -r -a f1 <<< "$(recipe 1b)"
today=$(peak "${f1[@]}")
row "the authors' 1B README recipe (B 8, total 16) with ${LEAN[*]} ${EIGHT_BIT[*]}: half of its plan under their flags, $today GiB" \
    "$(awk -v t="$today" 'BEGIN { printf "%.2f", t / 2 }')" "$(peak "${f1[@]}" "${LEAN[@]}" "${EIGHT_BIT[@]}")"
