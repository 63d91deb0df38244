"""
Speed benchmark: one forward+backward step of the C LLaMA against PyTorch, on the CPU.

Both sides run the same config (default the llama_20m preset), the same B and T and
the same thread count, one after the other in one run. The PyTorch side is Hugging
Face LlamaForCausalLM in fp32 with eager attention (the reference the C code is
tested against), loss = mean cross-entropy, gradients zeroed before every step.
The C side is ./dev/bench_model, which prints a line `c_step_ms <float>`.

usage:
    make dev/bench_model
    OMP_NUM_THREADS=2 python dev/bench_model.py                 # llama_20m, B=4, T=256
    python dev/bench_model.py --threads 2 --iters 10 --preset llama_9m
    python dev/bench_model.py --torch-only                      # no C binary needed

The last lines are `torch_step_ms`, `c_step_ms` and `ratio_torch_over_c` (above 1
means the C code is faster).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
from model_reference import build_llama_model, llama_loss  # noqa: E402

# the authors' configs/llama_*.json: hidden C, intermediate F, heads NH, layers L, vocab V
PRESETS = {
    "llama_9m":   dict(C=128,  F=352,   NH=4,  L=4,  V=32000, max_seq_len=1024),
    "llama_20m":  dict(C=256,  F=688,   NH=4,  L=4,  V=32000, max_seq_len=1024),
    "llama_35m":  dict(C=384,  F=1024,  NH=8,  L=6,  V=32000, max_seq_len=1024),
    "llama_40m":  dict(C=416,  F=1024,  NH=8,  L=8,  V=32000, max_seq_len=1024),
    "llama_60m":  dict(C=512,  F=1376,  NH=8,  L=8,  V=32000, max_seq_len=1024),
    "llama_71m":  dict(C=512,  F=1368,  NH=8,  L=12, V=32000, max_seq_len=1024),
    "llama_100m": dict(C=640,  F=1708,  NH=10, L=12, V=32100, max_seq_len=1024),
    "llama_130m": dict(C=768,  F=2048,  NH=12, L=12, V=32000, max_seq_len=1024),
    "llama_250m": dict(C=768,  F=2560,  NH=16, L=24, V=32000, max_seq_len=1024),
    "llama_350m": dict(C=1024, F=2736,  NH=16, L=24, V=32000, max_seq_len=1024),
    "llama_1b":   dict(C=2048, F=5461,  NH=32, L=24, V=32000, max_seq_len=1024),
    "llama_3b":   dict(C=2560, F=6848,  NH=32, L=32, V=32000, max_seq_len=1024),
    "llama_7b":   dict(C=4096, F=11008, NH=32, L=32, V=32000, max_seq_len=2048),
}
SIZE_FLAGS = ["V", "C", "F", "NH", "L"]
DEV_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_C_BINARY = os.path.join(".", os.path.relpath(os.path.join(DEV_DIR, "bench_model")))
C_BUILD_COMMAND = "make dev/bench_model"  # in the repository root
SEED = 1337

def default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count()

def time_torch_step(cfg, B, T, warmup, iters):
    """per-step wall times in ms of zero_grad + forward + loss + backward"""
    torch.manual_seed(SEED)  # HF's own init; step time does not depend on the values
    model = build_llama_model(cfg["V"], cfg["C"], cfg["F"], cfg["NH"], cfg["L"], cfg["max_seq_len"])
    model.train()
    gen = torch.Generator().manual_seed(SEED)
    window = torch.randint(0, cfg["V"], (B, T + 1), generator=gen)
    inputs, targets = window[:, :-1].clone(), window[:, 1:].clone()

    times_ms, loss = [], None
    for step in range(warmup + iters):
        t0 = time.perf_counter()
        # set_to_none is PyTorch's default and its fastest way to zero the grads
        model.zero_grad(set_to_none=True)
        _, loss = llama_loss(model, inputs, targets)
        loss.backward()
        t1 = time.perf_counter()
        if step >= warmup:
            times_ms.append(1000.0 * (t1 - t0))
    return times_ms, loss.item()

def run_c_bench(c_binary, preset, overrides, B, T, iters, threads):
    """runs the C benchmark binary and returns its c_step_ms"""
    cmd = [c_binary, "--preset", preset, "--B", str(B), "--T", str(T), "--iters", str(iters)]
    for flag in SIZE_FLAGS:
        if overrides.get(flag) is not None:
            cmd += [f"--{flag}", str(overrides[flag])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"running: OMP_NUM_THREADS={threads} {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        print(f"  c> {line}")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"error: {c_binary} exited with status {proc.returncode} (its stderr is above)")
    match = re.search(r"^c_step_ms\s+([0-9.eE+-]+)\s*$", proc.stdout, re.MULTILINE)
    if not match:
        sys.exit(f"error: {c_binary} printed no line `c_step_ms <float>`; "
                 f"is it the benchmark built by `{C_BUILD_COMMAND}`?")
    return float(match.group(1))

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--preset", default="llama_20m", choices=sorted(PRESETS))
    for flag in SIZE_FLAGS:
        parser.add_argument(f"--{flag}", type=int, default=None,
                            help=f"override the preset's {flag} (passed to the C binary too)")
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="untimed torch steps first")
    parser.add_argument("--iters", type=int, default=5, help="timed steps (median is reported)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="threads for both sides (default: OMP_NUM_THREADS, else all cores)")
    parser.add_argument("--c-binary", default=DEFAULT_C_BINARY)
    parser.add_argument("--torch-only", action="store_true", help="skip the C side")
    args = parser.parse_args()

    if args.threads <= 0 or args.iters <= 0 or args.warmup < 0 or args.B <= 0 or args.T <= 0:
        parser.error("--threads, --iters, --B and --T must be positive, --warmup not negative")
    # check the C side before spending a minute on the torch side
    if not args.torch_only and not os.access(args.c_binary, os.X_OK):
        sys.exit(f"error: C benchmark binary {args.c_binary} not found or not executable; "
                 f"build it with `{C_BUILD_COMMAND}` in the repository root (or pass --c-binary PATH, or --torch-only)")

    cfg = dict(PRESETS[args.preset])
    overrides = {flag: getattr(args, flag) for flag in SIZE_FLAGS}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if args.T > cfg["max_seq_len"]:
        parser.error(f"T={args.T} is longer than max_seq_len={cfg['max_seq_len']}")

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sizes = " ".join(f"{k} {cfg[k]}" for k in SIZE_FLAGS)
    print(f"config: {args.preset} ({sizes}) B {args.B} T {args.T} | threads {args.threads} | "
          f"warmup {args.warmup} iters {args.iters}")
    print(f"torch {torch.__version__} | mkl {torch.backends.mkl.is_available()} | "
          f"mkldnn {torch.backends.mkldnn.is_available()} | fp32 eager, CPU", flush=True)

    times_ms, loss = time_torch_step(cfg, args.B, args.T, args.warmup, args.iters)
    torch_ms = statistics.median(times_ms)
    print(f"torch steps (ms): {' '.join(f'{t:.1f}' for t in times_ms)} | loss {loss:.4f}")

    c_ms = None
    if not args.torch_only:
        c_ms = run_c_bench(args.c_binary, args.preset, overrides, args.B, args.T,
                           args.iters, args.threads)

    print(f"torch_step_ms {torch_ms:.2f}")
    if c_ms is not None:
        print(f"c_step_ms {c_ms:.2f}")
        print(f"ratio_torch_over_c {torch_ms / c_ms:.3f}  (above 1: C is faster)")

if __name__ == "__main__":
    main()
