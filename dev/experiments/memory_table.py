"""
Optimizer-state memory of the paper's model sizes (60M to 7B) for full-rank
AdamW, GaLore and SubTrack++ at the paper's ranks, from the C trainer's own
accounting: it builds dev/experiments/memory_accounting.c (which includes
train_llama_subtrack.c and calls parameter_table() and
lowrank_state_num_floats(), the functions optimizer_build() sizes its buffers
with), runs it, and prints a markdown table. Nothing is allocated, so 7B
takes no memory.

usage (from the repository root):
    python dev/experiments/memory_table.py [--out FILE.md] [--json FILE.json]

Needs gcc with OpenMP (the same compiler the Makefile uses).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(SCRIPT_DIR))
ACCOUNTING_SOURCE = os.path.join(SCRIPT_DIR, "memory_accounting.c")
BYTES_PER_FLOAT = 4   # the trainer keeps every optimizer state in fp32
GIB = 1 << 30
MIB = 1 << 20

# the paper's presets and ranks (../shared/SUBTRACK.md, "Script hyperparameters")
PAPER_RANKS = [
    ("llama_60m", "60M", 128),
    ("llama_130m", "130M", 256),
    ("llama_350m", "350M", 256),
    ("llama_1b", "1B", 512),
    ("llama_3b", "3B", 512),
    ("llama_7b", "7B", 1024),
]


def fail(msg):
    print(f"memory_table.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def build_memory_accounting(build_dir):
    """compiles memory_accounting.c into build_dir; returns the binary's path"""
    binary = os.path.join(build_dir, "memory_accounting")
    cmd = ["gcc", "-O2", "-fopenmp", "-o", binary, ACCOUNTING_SOURCE, "-lm"]
    try:
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    except OSError as e:
        fail(f"cannot run gcc ({e}); memory_accounting.c needs a C compiler with OpenMP")
    if done.returncode != 0:
        fail(f"building {ACCOUNTING_SOURCE} failed:\n{done.stderr.strip()}\n"
             "hint: it includes ../../train_llama_subtrack.c; check that the trainer itself builds (make train_cpu)")
    return binary


def run_memory_accounting(binary, config_ranks):
    """config_ranks: [(config, rank)]; returns one dict per row, float counts as ints"""
    args = [binary] + [f"{config}:{rank}" for config, rank in config_ranks]
    done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"memory_accounting failed: {done.stderr.strip()}")
    lines = done.stdout.strip().splitlines()
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) != len(header):
            fail(f"memory_accounting printed an unexpected row: {line!r}")
        row = dict(zip(header, cells))
        for key in header[1:]:
            row[key] = int(row[key])
        rows.append(row)
    return rows


def memory_accounting(config_ranks):
    """builds memory_accounting in a temporary directory and runs it"""
    with tempfile.TemporaryDirectory(prefix="memory_accounting_") as build_dir:
        return run_memory_accounting(build_memory_accounting(build_dir), config_ranks)


def gib(floats):
    return floats * BYTES_PER_FLOAT / GIB


def markdown_table(rows):
    out = []
    out.append("| model | params | rank | fp32 weights (GiB) | AdamW states (GiB) | GaLore states (GiB) "
               "| SubTrack++ states (GiB) | SubTrack++ / AdamW |")
    out.append("|---|---|---|---|---|---|---|---|")
    for row in rows:
        # galore and subtrack++ keep the same per-matrix state in this implementation (S, M, V and two
        # limiter scalars, used only with recovery scaling), so both columns come from the same count
        out.append("| {} | {:.1f} M | {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.2f} |".format(
            row["label"], row["params"] / 1e6, row["rank"], gib(row["params"]), gib(row["adamw_floats"]),
            gib(row["lowrank_floats"]), gib(row["lowrank_floats"]),
            row["lowrank_floats"] / row["adamw_floats"]))
    return "\n".join(out)


NOTES = """\
What this counts: the optimizer states only, as the C trainer allocates them
(fp32): two moments per parameter for AdamW; for the low-rank methods, AdamW
moments for the embeddings, lm_head and norms plus, per attention/MLP matrix
of shape m x n (p = min(m, n), q = max(m, n)), the basis S (p x r), the
moments M and V (q x r each) and 2 scalars. GaLore's state in this code is the
same array as SubTrack++'s (the 2 limiter scalars are used only with
recovery scaling, i.e. by Fira-like and SubTrack++), so the two
columns are equal by construction: SubTrack++ keeps GaLore's optimizer memory.
Not counted: weights, gradients, activations and work buffers.

The paper reports peak GPU memory of whole training runs instead (weights,
activations, bf16 states in the authors' code, allocator overhead); those
numbers are not in ../shared/SUBTRACK.md and are not reproduced here, so the
two cannot be compared number for number. The authors' code keeps moments in
bf16, which would halve the state columns above."""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the markdown to this file")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()

    rows = memory_accounting([(config, rank) for config, _, rank in PAPER_RANKS])
    for row, (_, label, _) in zip(rows, PAPER_RANKS):
        row["label"] = label
    text = ("## Optimizer-state memory at the paper's sizes and ranks (from the C code's accounting)\n\n"
            + markdown_table(rows) + "\n\n" + NOTES + "\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bytes_per_float": BYTES_PER_FLOAT, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
