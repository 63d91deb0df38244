#!/usr/bin/env bash
# dev/memory_plan_table.sh [TRAINER]: the device-memory plan of the authors'
# recipes (their scripts/c4/llama_*.sh command lines, as recorded in
# dev/reference/authors_args.txt), under their flags and under the leanest
# flags this build has, as the markdown table in the README. it runs
# TRAINER --memory_plan, which needs no GPU: the CUDA trainer
# (./train_llama_subtrack, make train) or its CPU-harness build
# (./train_llama_subtrack_emu), whichever exists, unless one is given.
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
# the leanest flags of this build; the later items of the GPU-memory issue
# (bf16 weights without masters, per-layer updates, 8-bit states) add theirs here
LEAN=(--activation_checkpointing --master_weights 0)

peak() {  # the plan's last line, "peak device memory: X GiB" -> X
    "$TRAIN" "$@" --memory_plan 2>/dev/null | tail -n 1 | sed -n 's/^peak device memory: \([0-9.]*\) GiB$/\1/p'
}

echo "| recipe (authors' script) | params | B | T | R | their flags (GiB) | + ${LEAN[*]} (GiB) |"
echo "|---|---|---|---|---|---|---|"
for m in 60m 130m 350m 1b 3b 7b; do
    line=$(awk -v c="case llama_$m " 'index($0, c) == 1 { getline; sub(/^args /, ""); print; exit }' "$ARGS")
    if [ -z "$line" ]; then echo "error: no case llama_$m in $ARGS" >&2; exit 1; fi
    read -r -a flags <<< "$line"
    full=$(peak "${flags[@]}")
    lean=$(peak "${flags[@]}" "${LEAN[@]}")
    if [ -z "$full" ] || [ -z "$lean" ]; then echo "error: $TRAIN --memory_plan gave no peak for llama_$m" >&2; exit 1; fi
    b=$(printf '%s\n' "${flags[@]}" | awk 'p { print; exit } $0 == "--batch_size" { p = 1 }')
    r=$(printf '%s\n' "${flags[@]}" | awk 'p { print; exit } $0 == "--rank" { p = 1 }')
    n=$("$TRAIN" "${flags[@]}" --memory_plan 2>/dev/null | sed -n 's/.*(\([0-9]*\) parameters).*/\1/p' | head -n 1)
    printf '| llama_%s | %.0f M | %s | 256 | %s | %s | %s |\n' "$m" "$(awk -v n="$n" 'BEGIN { print n / 1e6 }')" "$b" "$r" "$full" "$lean"
done
