"""
Reproduces the paper's comparison at small scale with the C trainer: full-rank
AdamW, GaLore, GoLore, Fira-like, SubTrack-Grad, the two one-switch ablations
and SubTrack++, on the embedded KJV corpus, one model, one step budget, the same
seeds. For each method it picks the learning rate from one grid on a shorter
run (one seed, not one of the final seeds), then trains every final seed at
that lr, and records the final validation loss, wall time, the time spent in
subspace updates, the optimizer-state bytes and the process's peak memory.

usage (from the repository root):
    python dev/experiments/compare_methods.py                 # the full table, about 2 h on 2 quiet cores
    python dev/experiments/compare_methods.py --quick         # ~5 min check that everything works
    python dev/experiments/compare_methods.py --calibrate     # time a few steps, project the full run
    python dev/experiments/compare_methods.py --dry_run       # print the plan and the commands

--out DIR (default dev/experiments/results, or results_quick with --quick) gets
    results.md        the tables (also printed to stdout)
    results.json      settings, every run, the summaries, the claim checks
    loss_curves.png   smoothed train loss and val loss vs step, mean over seeds
    logs/sweep/, logs/final/   each run's CSV log (--log_file) and its stdout (.out)
A run whose log, output and command match a previous run in the same DIR is
reused, so an interrupted table resumes where it stopped (--fresh re-runs all).

Python 3 stdlib + matplotlib. Builds the trainer with `make train_cpu` if it is
missing, and dev/experiments/memory_accounting.c (for exact state bytes) with gcc.
"""

import argparse
import csv
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(SCRIPT_DIR))
sys.path.insert(0, SCRIPT_DIR)
import memory_table  # noqa: E402  (sits beside this script)

DEFAULT_TRAINER = os.path.join(REPO_ROOT, "train_llama_subtrack_cpu")
MIB = 1 << 20
BYTES_PER_FLOAT = 4

# the eight configurations; flags as in the trainer's --help. the low-rank ones
# share every other setting (rank, alpha, k, eta) through low_rank_args().
METHODS = [
    {"key": "adamw", "label": "full-rank AdamW", "low_rank": False,
     "args": ["--optimizer", "adamw"]},
    # the AdamW anomaly: under the low-rank methods the embeddings, lm_head and norms train with AdamW at
    # the method's lr (their picks: 1e-2 to 3e-2); here full-rank AdamW gives them 1e-2 (--lr_non_matrix)
    # while the sweep sets the layer matrices' lr
    {"key": "adamw_nm", "label": "full-rank AdamW, non-matrix lr 1e-2", "low_rank": False,
     "args": ["--optimizer", "adamw", "--lr_non_matrix", "1e-2"]},
    {"key": "galore", "label": "GaLore", "low_rank": True,
     "args": ["--subspace_update_method", "galore", "--adaptive_optimizer", "0", "--recovery_scaling", "0"]},
    # GoLore: GaLore whose refreshes from half way on take random subspaces (--rand_proj; the authors'
    # default --rand_ratio 2 never reaches them)
    {"key": "golore", "label": "GoLore (GaLore, random subspaces from half way)", "low_rank": True,
     "args": ["--subspace_update_method", "galore", "--adaptive_optimizer", "0", "--recovery_scaling", "0",
              "--rand_proj", "--rand_ratio", "0.5"]},
    {"key": "fira", "label": "Fira-like (GaLore + recovery scaling)", "low_rank": True,
     "args": ["--subspace_update_method", "galore", "--adaptive_optimizer", "0", "--recovery_scaling", "1"]},
    {"key": "subtrack_grad", "label": "SubTrack-Grad (tracking only)", "low_rank": True,
     "args": ["--subspace_update_method", "subtrack", "--adaptive_optimizer", "0", "--recovery_scaling", "0"]},
    {"key": "track_pa", "label": "tracking + projection-aware", "low_rank": True,
     "args": ["--subspace_update_method", "subtrack", "--adaptive_optimizer", "1", "--recovery_scaling", "0"]},
    {"key": "track_rs", "label": "tracking + recovery scaling", "low_rank": True,
     "args": ["--subspace_update_method", "subtrack", "--adaptive_optimizer", "0", "--recovery_scaling", "1"]},
    {"key": "subtrack_pp", "label": "SubTrack++ (both)", "low_rank": True,
     "args": ["--subspace_update_method", "subtrack", "--adaptive_optimizer", "1", "--recovery_scaling", "1"]},
    # transformers' Adafactor in the tracked subspace, as the authors set it (no first moment: their --beta1 0);
    # it has no moment rotation or recovery scaling
    {"key": "lowrank_adafactor", "label": "low-rank Adafactor (tracking, no first moment)", "low_rank": True,
     "state": "lowrank_adafactor", "optimizer": "low_rank_adafactor",
     "args": ["--subspace_update_method", "subtrack", "--beta1", "0"]},
]
METHOD_BY_KEY = {m["key"]: m for m in METHODS}

# the paper's numbers (../shared/SUBTRACK.md): eval loss on C4 after 10k steps,
# wall time of 2000 steps on an A100 (seconds), and the 1B ablation
PAPER_EVAL_LOSS = {  # method -> {size: loss}
    "adamw": {"60M": 3.41, "1B": 4.61},
    "galore": {"60M": 4.02, "1B": 6.53},
    "fira": {"60M": 3.80, "1B": 6.31},
    "subtrack_pp": {"60M": 3.43, "1B": 4.52},
}
PAPER_WALL_TIME = {  # method -> {size: seconds}
    "adamw": {"60M": 524, "1B": 975},
    "galore": {"60M": 548, "1B": 1730},
    "subtrack_pp": {"60M": 628, "1B": 1304},
}
PAPER_ABLATION_1B = [  # (our method key, the paper's row name, its eval loss)
    ("subtrack_grad", "tracking alone", 6.53),
    ("track_pa", "+ projection-aware", 5.43),
    ("track_rs", "+ recovery scaling only", 5.28),
    ("subtrack_pp", "both", 4.51),
]

# settings of the full table. kjv_small is the trainer's default model; see
# README.md ("Results") for how the step budget was sized
FULL = {
    "model_config": "kjv_small",
    "batch_size": 8,
    "max_length": 128,
    "steps": 1000,
    "sweep_steps": 250,
    "lrs": [1e-3, 3e-3, 1e-2, 3e-2],
    "seeds": [1, 2, 3],
    "sweep_seed": 0,
    "evals_per_run": 10,
    "eval_batches": 20,
}
# --quick: the same model and batch, few steps, one seed, one lr, no sweep
QUICK = {
    "steps": 60,
    "sweep_steps": 0,
    "lrs": [3e-3],
    "seeds": [1],
    "evals_per_run": 2,
    "eval_batches": 10,
    "interval": 6,  # steps/50 would refresh the subspace every step
}
SWEEP_FRACTION_INVERSE = 4    # an lr run is a quarter of a final run
MAX_WIDEN = 3                 # ladder steps a method's grid may grow past its edge
CALIBRATION_STEPS = 30
CALIBRATION_METHODS = ["adamw", "galore", "subtrack_pp"]
CALIBRATION_SKIP_STEPS = 3    # the first steps include page faults and the initial SVD
WARMUP_FRACTION = 0.1         # the paper: 1000 of 10000 steps
INTERVAL_FRACTION = 1 / 50    # the paper: k = 200 of 10000 steps
LOW_RANK_SCALE = 0.25         # alpha in all the paper's runs
SMOOTH_FRACTION = 1 / 30      # moving-average window of the plotted train loss, as a fraction of the steps


def fail(msg):
    print(f"compare_methods.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def fmt_lr(lr):
    """3e-3, 1.5e-3: short and exact to two digits"""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# ----------------------------------------------------------------------------
# running the trainer and reading what it prints

RE_PARAMS = re.compile(r"^parameters:\s+(\d+)", re.M)
RE_STATES = re.compile(r"^optimizer:.*?states ([0-9.]+) MiB", re.M)
RE_SUBSPACE = re.compile(r"^subspace updates: ([0-9.eE+-]+) s in total", re.M)
RE_TRAIN_TIME = re.compile(r"^training time: ([0-9.]+) s for (\d+) steps", re.M)
RE_DIVERGED = re.compile(r"is (NaN|Inf) at step (\d+)")


def parse_float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_log(path):
    """the trainer's CSV log: (train [(step, loss)], val [(step, loss)], ms [per step])"""
    train, val, ms = [], [], []
    if not os.path.exists(path):
        return train, val, ms
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            loss = parse_float(row.get("train_loss"))
            if loss is not None:
                train.append((step, loss))
            v = parse_float(row.get("val_loss"))
            if v is not None:
                val.append((step, v))
            t = parse_float(row.get("ms"))
            if t is not None:
                ms.append(t)
    return train, val, ms


def parse_output(text):
    """the numbers the trainer prints; a missing line gives None (and a warning later)"""
    def first(regex, group=1, cast=float):
        m = regex.search(text)
        return cast(m.group(group)) if m else None
    train_time = RE_TRAIN_TIME.search(text)
    return {
        "params": first(RE_PARAMS, cast=int),
        "state_mib_printed": first(RE_STATES),
        "subspace_s": first(RE_SUBSPACE),
        "train_s": float(train_time.group(1)) if train_time else None,
        "steps_timed": int(train_time.group(2)) if train_time else None,
    }


def trainer_args(settings, method, lr, seed, steps, eval_every, log_file):
    args = [
        "--model_config", settings["model_config"],
        "--batch_size", str(settings["batch_size"]),
        "--total_batch_size", str(settings["batch_size"]),
        "--max_length", str(settings["max_length"]),
        "--seed", str(seed),
        "--num_training_steps", str(steps),
        "--warmup_steps", str(max(1, round(WARMUP_FRACTION * steps))),
        "--lr", repr(lr),
        "--eval_every", str(eval_every),
        "--eval_batches", str(settings["eval_batches"]),
        "--sample_every", "0",
        "--gen_tokens", "0",
        "--print_every", str(max(1, steps // 10)),
        "--log_file", log_file,
    ]
    if method["low_rank"]:
        args += ["--optimizer", method.get("optimizer", "low_rank_adamw")] + method["args"] + [
            "--rank", str(settings["rank"]),
            "--low_rank_scale", repr(LOW_RANK_SCALE),
            "--subspace_update_interval", str(settings["interval"]),
        ]
    else:
        args += method["args"]
    return args


def run_trainer(trainer, args, out_path, threads):
    """runs one training to completion; returns (rc, wall seconds, rusage of that child, load before/after)"""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    with open(out_path, "w") as out:
        proc = subprocess.Popen([trainer] + args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        try:
            # wait4 gives this child's own rusage (ru_maxrss of RUSAGE_CHILDREN would be the max over all runs)
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    return proc.returncode, wall, usage, (load_before, os.getloadavg()[0])


def train_one(ctx, phase, method_key, lr, seed, steps, eval_every):
    """one run, or its cached result when the same command already ran into the same place"""
    method = METHOD_BY_KEY[method_key]
    name = f"{method_key}_lr{fmt_lr(lr)}_seed{seed}"
    log_dir = os.path.join(ctx["out"], "logs", phase)
    csv_path = os.path.join(log_dir, name + ".csv")
    out_path = os.path.join(log_dir, name + ".out")
    json_path = os.path.join(log_dir, name + ".json")
    args = trainer_args(ctx["settings"], method, lr, seed, steps, eval_every,
                        show_path(csv_path))
    trainer = os.path.relpath(ctx["trainer"], REPO_ROOT)
    cmd = ["OMP_NUM_THREADS=%d" % ctx["threads"], trainer if os.sep in trainer else "./" + trainer] + args
    if not ctx["fresh"] and os.path.exists(json_path) and os.path.exists(csv_path):
        with open(json_path) as f:
            cached = json.load(f)
        if cached.get("cmd") == cmd and cached.get("status") in ("ok", "diverged"):
            cached["cached"] = True
            return cached
    if ctx["dry_run"]:
        print(" ".join(cmd))
        return None
    os.makedirs(log_dir, exist_ok=True)

    rc, wall, usage, loads = run_trainer(ctx["trainer"], args, out_path, ctx["threads"])
    with open(out_path, errors="replace") as f:
        text = f.read()
    parsed = parse_output(text)
    train, val, ms = read_log(csv_path)
    diverged = RE_DIVERGED.search(text)
    if rc == 0:
        status = "ok"
    elif diverged:
        status = "diverged"
    else:
        tail = "\n".join(text.strip().splitlines()[-5:])
        fail(f"the trainer failed (exit {rc}) on {name}; its output is in {out_path}:\n{tail}")
    final_val = val[-1][1] if (status == "ok" and val and val[-1][0] == steps) else None
    timed = sorted(ms[CALIBRATION_SKIP_STEPS:]) or sorted(ms)
    result = {
        "name": name, "phase": phase, "method": method_key, "lr": lr, "seed": seed, "steps": steps,
        "status": status, "diverged_at_step": int(diverged.group(2)) if diverged else None,
        "cmd": cmd, "final_val_loss": final_val, "val_curve": val,
        "wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
        "peak_rss_kib": usage.ru_maxrss,  # linux: KiB
        "ms_per_step_median": statistics.median(timed) if timed else None,
        "ms_per_step_min": timed[0] if timed else None,
        "load_before": loads[0], "load_after": loads[1],
        **parsed,
    }
    if status == "ok":
        for key in ("train_s", "state_mib_printed") + (("subspace_s",) if method["low_rank"] else ()):
            if result[key] is None:
                print(f"warning: {name}: the trainer's output has no line for {key}; recorded as missing",
                      file=sys.stderr)
        if final_val is None:
            fail(f"{name}: the log {csv_path} has no validation loss at the last step {steps}")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    result["cached"] = False
    return result


# ----------------------------------------------------------------------------
# the experiment

def ensure_trainer(trainer):
    """the default trainer is brought up to date with make; another one must exist"""
    if trainer != DEFAULT_TRAINER:
        if not os.path.exists(trainer):
            fail(f"--trainer {trainer} does not exist")
        return
    done = subprocess.run(["make", "train_cpu"], cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.exists(trainer):
        fail(f"make train_cpu failed:\n{done.stdout}{done.stderr}")


def model_accounting(model_config, rank):
    """the model's sizes and its exact optimizer-state bytes, from the trainer's own accounting
    (memory_accounting.c); rank None means C/4. returns (rank, the accounting row, bytes per kind)"""
    with tempfile.TemporaryDirectory(prefix="memory_accounting_") as build_dir:
        binary = memory_table.build_memory_accounting(build_dir)
        if rank is None:  # rank 1 is valid for any model
            rank = max(1, memory_table.run_memory_accounting(binary, [(model_config, 1)])[0]["C"] // 4)
        row = memory_table.run_memory_accounting(binary, [(model_config, rank)])[0]
    state_bytes = {"adamw": row["adamw_floats"] * BYTES_PER_FLOAT, "low_rank": row["lowrank_floats"] * BYTES_PER_FLOAT,
                   "lowrank_adafactor": row["lowrank_adafactor_floats"] * BYTES_PER_FLOAT}
    return rank, row, state_bytes


class Progress:
    """prints one line per run with the time so far and a projection from the seconds per step so far"""

    def __init__(self, total_steps):
        self.total_steps = total_steps
        self.done_steps = 0      # every run, cached or not
        self.timed_steps = 0     # runs that ran now
        self.run_seconds = 0.0
        self.start = time.monotonic()
        self.count = 0

    def report(self, r, label):
        self.count += 1
        self.done_steps += r["steps"]
        if not r["cached"]:
            self.timed_steps += r["steps"]
            self.run_seconds += r["wall_s"]
        elapsed = time.monotonic() - self.start
        left = (self.total_steps - self.done_steps) * self.run_seconds / max(1, self.timed_steps)
        loss = (f"val {r['final_val_loss']:.4f}" if r["final_val_loss"] is not None
                else f"DIVERGED at step {r['diverged_at_step']}")
        print(f"[{self.count}] {label:<40s} {loss:<24s} {r['wall_s']:6.1f} s{' (cached)' if r['cached'] else ''}"
              f" | elapsed {elapsed / 60:5.1f} min, about {left / 60:5.1f} min left", flush=True)


def summarize(runs):
    ok = [r for r in runs if r["status"] == "ok"]
    vals = [r["final_val_loss"] for r in ok]

    def mean_of(key):
        xs = [r[key] for r in ok if r.get(key) is not None]
        return statistics.mean(xs) if xs else None
    s = {
        "seeds": [r["seed"] for r in runs], "n_ok": len(ok), "n_diverged": len(runs) - len(ok),
        "val_losses": vals,
        "val_by_seed": {r["seed"]: r["final_val_loss"] for r in ok},
        "val_mean": statistics.mean(vals) if vals else None,
        "val_min": min(vals) if vals else None,
        "val_max": max(vals) if vals else None,
        "val_std": statistics.stdev(vals) if len(vals) >= 2 else None,
        "wall_s_mean": mean_of("wall_s"), "train_s_mean": mean_of("train_s"),
        "subspace_s_mean": mean_of("subspace_s"), "ms_per_step_median_mean": mean_of("ms_per_step_median"),
        "peak_rss_kib_max": max((r["peak_rss_kib"] for r in ok), default=None),
        "state_mib_printed": ok[0]["state_mib_printed"] if ok else None,
        "load_mean": statistics.mean(x for r in runs for x in (r["load_before"], r["load_after"])) if runs else None,
    }
    s["perplexity"] = math.exp(s["val_mean"]) if s["val_mean"] is not None else None
    return s


def check_claims(summary, state_bytes):
    """the paper's ordering claims, each checked on our means and seed by seed (the same seed gives both
    methods the same initial weights and data order, so the per-seed differences are paired)"""
    def val(key):
        return summary[key]["val_mean"] if key in summary else None

    def lower(a, b):
        if val(a) is None or val(b) is None:
            return None
        sa, sb = summary[a], summary[b]
        seeds = [seed for seed in sa["val_by_seed"] if seed in sb["val_by_seed"]]
        deltas = [sa["val_by_seed"][seed] - sb["val_by_seed"][seed] for seed in seeds]
        return {"holds": sa["val_mean"] < sb["val_mean"], "delta": sa["val_mean"] - sb["val_mean"],
                "seed_deltas": dict(zip(seeds, deltas)), "seeds_holding": sum(d < 0 for d in deltas)}
    claims = []

    def add(text, a, b, paper):
        c = lower(a, b)
        if c is not None:
            claims.append({"claim": text, "a": a, "b": b, **c, "paper": paper})
    add("SubTrack++ reaches a lower loss than GaLore", "subtrack_pp", "galore", "60M -0.59, 1B -2.01")
    add("SubTrack++ reaches a lower loss than Fira-like", "subtrack_pp", "fira", "60M -0.37, 1B -1.79")
    add("projection-aware moments help on their own", "track_pa", "subtrack_grad", "1B -1.10")
    add("recovery scaling helps on its own", "track_rs", "subtrack_grad", "1B -1.25")
    add("both together beat projection-aware alone", "subtrack_pp", "track_pa", "1B -0.92")
    add("both together beat recovery scaling alone", "subtrack_pp", "track_rs", "1B -0.77")
    extra = {}
    if all(val(k) is not None for k in ("adamw", "galore", "subtrack_pp")):
        gap = val("galore") - val("adamw")
        extra["subtrack_pp_minus_adamw"] = val("subtrack_pp") - val("adamw")
        # only meaningful when galore is behind adamw
        extra["gap_closed"] = (val("galore") - val("subtrack_pp")) / gap if gap > 0 else None
    # full-rank AdamW whose non-matrix tensors train at the low-rank methods' lrs (the AdamW anomaly)
    nm = lower("subtrack_pp", "adamw_nm")
    if nm is not None:
        extra["subtrack_pp_minus_adamw_nm"] = nm
        if val("galore") is not None and val("galore") > val("adamw_nm"):
            extra["gap_closed_nm"] = (val("galore") - val("subtrack_pp")) / (val("galore") - val("adamw_nm"))
    for key in ("galore", "subtrack_pp"):
        if key not in summary:
            break
    else:
        g, p = summary["galore"]["subspace_s_mean"], summary["subtrack_pp"]["subspace_s_mean"]
        if g and p is not None:
            extra["subspace_time_ratio"] = p / g
    if state_bytes is not None:
        extra["state_bytes_equal"] = True  # one count serves every low-rank method: see model_accounting()
    return claims, extra


# ----------------------------------------------------------------------------
# writing the results

def fmt(x, spec=".4f", missing="–"):
    return missing if x is None else format(x, spec)


def edge_picks(methods, picks, swept):
    """labels of the methods whose lr pick is the smallest or largest lr swept for it"""
    return [m["label"] for m in methods
            if len(swept[m["key"]]) >= 2 and picks[m["key"]] in (min(swept[m["key"]]), max(swept[m["key"]]))]


def on_ladder(lr):
    """whether lr is a point of the 1-3-10 ladder of the default grid (1e-3, 3e-3, 1e-2, ...)"""
    mantissa = float(f"{lr:.1e}".split("e")[0])
    return abs(mantissa - 1) < 0.05 or abs(mantissa - 3) < 0.05


def ladder_neighbours(lr):
    """the nearest points of the 1-3-10 ladder strictly below and above lr (lr itself may be off it)"""
    exponent = math.floor(math.log10(lr)) - 1
    points = [float(f"{m}e{e}") for e in range(exponent, exponent + 3) for m in (1, 3)]
    return (max(p for p in points if p < lr * (1 - 1e-6)), min(p for p in points if p > lr * (1 + 1e-6)))


def half_steps(lr):
    """the geometric midpoints between a ladder point and its two ladder neighbours (3e-3 -> 1.7e-3, 5.5e-3)"""
    return [float(f"{math.sqrt(lr * other):.1e}") for other in ladder_neighbours(lr)]


def lr_grids_from(directory, methods):
    """{method: [lower half-step, pick, upper half-step]} from the lr picks of an earlier table in directory"""
    path = os.path.join(directory, "results.json")
    try:
        with open(path) as f:
            picks = json.load(f)["lr_picks"]
    except (OSError, ValueError, KeyError) as e:
        fail(f"--lrs_from: cannot read the lr picks of {path} ({e}); give a --out directory of an earlier table")
    missing = [m["key"] for m in methods if not isinstance(picks.get(m["key"]), (int, float))]
    if missing:
        fail(f"--lrs_from: {path} has no lr pick for {missing}; run those methods there first or leave them out")
    grids = {}
    for m in methods:
        pick = float(picks[m["key"]])
        if on_ladder(pick):
            low, high = half_steps(pick)
        else:  # a half-step pick: its ladder neighbours
            low, high = ladder_neighbours(pick)
        grids[m["key"]] = [pick, low, high]
    return grids


def best_lr(runs):
    """the lr of the lowest final val loss among the runs that did not diverge, or None"""
    ok = [(r["final_val_loss"], lr) for lr, r in runs.items() if r["status"] == "ok"]
    return min(ok)[1] if ok else None


def refine_lr(ctx, m, runs, st, track):
    """widens one method's grid while its pick is at an edge (one ladder step at a time, at most
    MAX_WIDEN times), then sweeps the half-steps (geometric midpoints) on either side of the pick;
    runs: {lr: run} of the grid, extended in place. returns the pick"""
    for _ in range(MAX_WIDEN):
        pick = best_lr(runs)
        if pick is None or pick not in (min(runs), max(runs)):
            break
        down, up = ladder_neighbours(pick)
        lr = down if pick == min(runs) else up
        runs[lr] = train_one(ctx, "sweep", m["key"], lr, st["sweep_seed"], st["sweep_steps"], 0)
        track(runs[lr], f"sweep {m['key']} lr {fmt_lr(lr)} (widened)")
    pick = best_lr(runs)
    if pick is None:
        return None
    # a pick off the ladder is a half-step itself, between two ladder points already swept
    for half in half_steps(pick) if on_ladder(pick) else []:
        if half not in runs:
            runs[half] = train_one(ctx, "sweep", m["key"], half, st["sweep_seed"], st["sweep_steps"], 0)
            track(runs[half], f"sweep {m['key']} lr {fmt_lr(half)} (half-step)")
    return best_lr(runs)


def results_markdown(ctx, sweep, picks, summary, claims, extra, state_bytes, accounting, quick):
    st = ctx["settings"]
    lines = []
    add = lines.append
    title = "SubTrack++ against its baselines on the embedded corpus"
    add(f"# {title}{' (QUICK CHECK: not a result)' if quick else ''}\n")
    add(f"Command: `{ctx['command']}`  ")
    add(f"Machine: {ctx['machine']}, OMP_NUM_THREADS={ctx['threads']}; 1-minute load average "
        f"{ctx['load_min']:.1f} to {ctx['load_max']:.1f} during the runs (2 cores: above ~2 means the "
        f"times below include waiting for another process).  ")
    add(f"Date: {ctx['date']}; the runs took {ctx['total_minutes']:.1f} min in all (sum of their wall times).\n")
    add(f"Model `{st['model_config']}` ({accounting['params']:,} parameters: V {accounting['V']}, "
        f"C {accounting['C']}, F {accounting['F']}, NH {accounting['NH']}, L {accounting['L']}); "
        f"B {st['batch_size']} x T {st['max_length']} = {st['batch_size'] * st['max_length']} tokens per step; "
        f"{st['steps']} steps ({st['steps'] * st['batch_size'] * st['max_length']:,} tokens), warmup "
        f"{max(1, round(WARMUP_FRACTION * st['steps']))}, cosine to 0.1 x lr; rank {st['rank']}"
        f"{' (C/4)' if st['rank'] == accounting['C'] // 4 else ''}, k {st['interval']}"
        f"{' (steps/50)' if st['interval'] == round(INTERVAL_FRACTION * st['steps']) else ''}, "
        f"alpha {LOW_RANK_SCALE}, eta 10, grad clipping 1, no weight decay. "
        f"Validation: {st['eval_batches']} fixed batches ({st['eval_batches'] * st['batch_size'] * st['max_length']:,}"
        f" tokens) every {st['eval_every']} steps. Final seeds {st['seeds']}.\n")

    add("## Learning rate\n")
    if sweep:
        grid_text = (f"its own grid: its lr pick in `{st['lrs_from']}` and the half-steps on either side"
                     if st.get("lrs_from") else f"the grid {', '.join(fmt_lr(lr) for lr in st['lrs'])}")
        add(f"Each method's lr is the one with the lowest final val loss on a {st['sweep_steps']}-step run "
            f"(seed {st['sweep_seed']}, not a final seed; same warmup fraction and k) over {grid_text}.\n")
        swept = {m["key"]: list(sweep[m["key"]]) for m in ctx["methods"]}
        all_lrs = sorted({lr for lrs in swept.values() for lr in lrs})
        add(f"Each pick at an edge of its method's lrs widened them by one step of the 1-3-10 ladder (at most "
            f"{MAX_WIDEN} times); then the half-steps on either side of the pick (geometric midpoints) were "
            f"swept too. – : not run for that method.\n")
        add("| method | " + " | ".join(f"lr {fmt_lr(lr)}" for lr in all_lrs) + " | pick |")
        add("|---|" + "---|" * (len(all_lrs) + 1))
        for m in ctx["methods"]:
            cells = []
            for lr in all_lrs:
                r = sweep[m["key"]].get(lr)
                if r is None:
                    cell = "–"
                elif r["status"] == "diverged":
                    cell = f"diverged (NaN/Inf at step {r['diverged_at_step']})"
                elif r["final_val_loss"] > math.log(accounting["V"]):
                    cell = f"{r['final_val_loss']:.3g} (diverged: worse than uniform)"
                else:
                    cell = f"{r['final_val_loss']:.4f}"
                cells.append(f"**{cell}**" if lr == picks[m["key"]] else cell)
            edge = " (grid edge)" if m["label"] in edge_picks([m], picks, swept) else ""
            add(f"| {m['label']} | " + " | ".join(cells) + f" | {fmt_lr(picks[m['key']])}{edge} |")
        edges = edge_picks(ctx["methods"], picks, swept)
        if edges:
            add(f"\nAt the grid's edge: {', '.join(edges)}; a wider grid could still lower their loss.")
        add("")
    else:
        add(f"No sweep (quick check): every method at lr {fmt_lr(st['lrs'][0])}.\n")

    add("## Results\n")
    add(f"Final validation loss over {len(st['seeds'])} seed(s): mean (min to max); perplexity is exp(mean loss). "
        "Times are per run, mean over seeds: wall is the whole process, train excludes evaluation and startup "
        "(the trainer's `training time`), subspace is the trainer's `subspace updates` total (SVD or tracking "
        "plus moment rotation, including the initial SVD at step 0). Optimizer-state bytes are exact, "
        "from the trainer's own accounting (`memory_accounting.c`), and match the MiB the trainer prints "
        "at startup. Peak RSS is the process's maximum resident set (wait4 ru_maxrss), max over seeds. "
        "ms/step is the median step time of the CSV log, which a short burst of load moves less than the "
        "totals; load is the 1-minute load average around the runs (on 2 cores, above ~2 means other work "
        "competed and every time in that row is inflated, the subspace time most).\n")
    add("| method | lr | final val loss | perplexity | wall (s) | train (s) | ms/step | subspace (s) "
        "| optimizer states (bytes) | peak RSS (MiB) | load |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in ctx["methods"]:
        s = summary[m["key"]]
        if s["val_mean"] is None:
            loss = "all seeds diverged"
        elif s["n_ok"] >= 2:
            loss = f"{s['val_mean']:.4f} ({s['val_min']:.4f} to {s['val_max']:.4f})"
        else:
            loss = f"{s['val_mean']:.4f}"
        if s["n_diverged"]:
            loss += f", {s['n_diverged']} diverged"
        sb = state_bytes[m.get("state", "low_rank" if m["low_rank"] else "adamw")]
        add(f"| {m['label']} | {fmt_lr(picks[m['key']])} | {loss} | {fmt(s['perplexity'], '.2f')} "
            f"| {fmt(s['wall_s_mean'], '.1f')} | {fmt(s['train_s_mean'], '.1f')} "
            f"| {fmt(s['ms_per_step_median_mean'], '.1f')} "
            f"| {fmt(s['subspace_s_mean'], '.2f') if m['low_rank'] else '–'} "
            f"| {sb:,} ({sb / MIB:.2f} MiB) | {fmt(s['peak_rss_kib_max'] and s['peak_rss_kib_max'] / 1024, '.1f')} "
            f"| {fmt(s['load_mean'], '.1f')} |")
    add("")

    add("## Beside the paper's numbers (theirs: LLaMA on C4, 10k steps; ours: the table above)\n")
    add("| method | ours: val loss | ours: minus AdamW | theirs 60M | theirs 1B | ours: train time / AdamW "
        "| theirs 60M: wall / full-rank | theirs 1B: wall / full-rank |")
    add("|---|---|---|---|---|---|---|---|")
    base = summary.get("adamw")
    for m in ctx["methods"]:
        s = summary[m["key"]]
        paper = PAPER_EVAL_LOSS.get(m["key"], {})
        pw = PAPER_WALL_TIME.get(m["key"])
        both = base is not None and s["val_mean"] is not None and base["val_mean"] is not None
        diff = s["val_mean"] - base["val_mean"] if both else None
        timed = base is not None and s["train_s_mean"] and base["train_s_mean"]
        wall = s["train_s_mean"] / base["train_s_mean"] if timed else None
        add(f"| {m['label']} | {fmt(s['val_mean'])} | {fmt(diff, '+.4f')} | {fmt(paper.get('60M'), '.2f')} "
            f"| {fmt(paper.get('1B'), '.2f')} | {fmt(wall, '.2f')} "
            f"| {fmt(pw and pw['60M'] / PAPER_WALL_TIME['adamw']['60M'], '.2f')} "
            f"| {fmt(pw and pw['1B'] / PAPER_WALL_TIME['adamw']['1B'], '.2f')} |")
    add("\nOurs: the trainer's training time (no evaluation), mean over seeds. Theirs: 2000 steps on an A100. "
        "Their table has no Fira-like wall time and no one-switch ablations outside the 1B ablation below.\n")

    add("## Ablation, in the shape of the paper's 1B ablation\n")
    add("| configuration | ours: val loss (min to max) | ours: minus tracking alone | theirs (1B): eval loss "
        "| theirs: minus tracking alone |")
    add("|---|---|---|---|---|")
    ref = summary.get("subtrack_grad", {}).get("val_mean")
    for key, row_name, paper_loss in PAPER_ABLATION_1B:
        if key not in summary:
            continue
        s = summary[key]
        rng = f" ({s['val_min']:.4f} to {s['val_max']:.4f})" if s["n_ok"] >= 2 else ""
        diff = s["val_mean"] - ref if ref is not None and s["val_mean"] is not None else None
        add(f"| {row_name} | {fmt(s['val_mean'])}{rng} | {fmt(diff, '+.4f')} | {paper_loss:.2f} "
            f"| {paper_loss - PAPER_ABLATION_1B[0][2]:+.2f} |")
    add("")

    add("## The paper's claims, checked on these runs\n")
    add("Each line gives the difference of the mean final val losses, then the same difference seed by seed "
        "(a seed fixes the initial weights and the data order, so the per-seed differences are paired) "
        "and on how many seeds the claim holds. With this few seeds, take a difference as real only when it "
        "has the same sign on every seed.\n")
    for c in claims:
        # the verdict follows the seeds: a mean carried by some seeds against the others settles nothing
        n_seeds = len(c["seed_deltas"])
        verdict = ("holds" if c["seeds_holding"] == n_seeds else "does NOT hold" if c["seeds_holding"] == 0
                   else "not settled (the seeds disagree)")
        per_seed = ", ".join(f"{d:+.4f}" for d in c["seed_deltas"].values())
        add(f"- {c['claim']}: {verdict} ({METHOD_BY_KEY[c['a']]['label']} minus "
            f"{METHOD_BY_KEY[c['b']]['label']}: {c['delta']:+.4f}; per seed {per_seed}, holds on "
            f"{c['seeds_holding']} of {len(c['seed_deltas'])}; theirs: {c['paper']}).")
    if "subtrack_pp_minus_adamw" in extra:
        closed = (f"it closes {100 * extra['gap_closed']:.0f}% of GaLore's gap to AdamW"
                  if extra["gap_closed"] is not None
                  else "GaLore is not behind AdamW here, so there is no gap to close")
        add(f"- SubTrack++ close to full-rank AdamW: SubTrack++ minus AdamW {extra['subtrack_pp_minus_adamw']:+.4f}; "
            f"{closed} (theirs: 60M +0.02 and 97%, 1B -0.09 and 105%).")
    if "subtrack_pp_minus_adamw_nm" in extra:
        c = extra["subtrack_pp_minus_adamw_nm"]
        per_seed = ", ".join(f"{d:+.4f}" for d in c["seed_deltas"].values())
        add(f"- SubTrack++ against {METHOD_BY_KEY['adamw_nm']['label']}: {c['delta']:+.4f}; per seed {per_seed}, "
            f"SubTrack++ lower on {c['seeds_holding']} of {len(c['seed_deltas'])}"
            + (f"; it closes {100 * extra['gap_closed_nm']:.0f}% of GaLore's gap to it"
               if extra.get("gap_closed_nm") is not None else "") + ".")
    if "subspace_time_ratio" in extra:
        add(f"- Subspace updates cost less than GaLore's SVD: SubTrack++'s total is "
            f"{extra['subspace_time_ratio']:.2f} x GaLore's (both include one SVD per matrix at step 0; "
            f"load during their runs {fmt(summary['subtrack_pp']['load_mean'], '.1f')} and "
            f"{fmt(summary['galore']['load_mean'], '.1f')}: above ~2 the ratio is mostly noise).")
    if "state_bytes_equal" in extra:
        add(f"- Keeps GaLore's optimizer memory: yes, {state_bytes['low_rank']:,} bytes for every low-rank AdamW "
            f"method (the same state layout), against {state_bytes['adamw']:,} for AdamW "
            f"({state_bytes['low_rank'] / state_bytes['adamw']:.2f} x).")
    add("\n![loss curves](loss_curves.png)\n")
    return "\n".join(lines)


def moving_average(xs, window):
    if window <= 1:
        return list(xs)
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def mean_curves(runs):
    """mean over seeds, on the steps every run has"""
    train_by_step, val_by_step = {}, {}
    for r in runs:
        train, val, _ = read_log(r["csv"])
        for step, loss in train:
            train_by_step.setdefault(step, []).append(loss)
        for step, loss in val:
            val_by_step.setdefault(step, []).append(loss)
    n = len(runs)
    train = sorted((s, statistics.mean(v)) for s, v in train_by_step.items() if len(v) == n)
    val = sorted((s, statistics.mean(v)) for s, v in val_by_step.items() if len(v) == n)
    return train, val


def plot_curves(ctx, final_runs, path):
    import matplotlib
    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    steps = ctx["settings"]["steps"]
    window = max(1, round(SMOOTH_FRACTION * steps))
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.get_cmap("tab10").colors
    smoothed_all = []
    for i, m in enumerate(ctx["methods"]):
        runs = [r for r in final_runs[m["key"]] if r["status"] == "ok"]
        if not runs:
            continue
        train, val = mean_curves(runs)
        style = {"color": "black" if m["key"] == "adamw" else colors[i % len(colors)],
                 "linestyle": "--" if m["key"] in ("galore", "fira") else "-", "linewidth": 1.4}
        xs = [s for s, _ in train]
        ys = moving_average([l for _, l in train], window)
        smoothed_all.append((xs, ys))
        ax_train.plot(xs, ys, label=m["label"], **style)
        ax_val.plot([s for s, _ in val], [l for _, l in val], marker="o", markersize=3, label=m["label"], **style)
    # zoom past the first fall of the loss so the methods can be told apart
    if smoothed_all:
        lo = min(min(ys) for _, ys in smoothed_all)
        cut = max(1, int(0.15 * steps))
        hi = max(max([y for x, y in zip(xs, ys) if x >= cut] or ys) for xs, ys in smoothed_all)
        ax_train.set_ylim(lo - 0.05, hi + 0.05)
    ax_train.set_title(f"train loss (moving average over {window} steps), mean over seeds")
    ax_val.set_title("validation loss, mean over seeds")
    for ax in (ax_train, ax_val):
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize=8)
    fig.suptitle(f"{ctx['settings']['model_config']}, rank {ctx['settings']['rank']}, k {ctx['settings']['interval']}"
                 f", {steps} steps, seeds {ctx['settings']['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------
# calibration: time a few steps of the slowest kinds of run and project the plan

def calibrate(ctx, plan_steps, plan_evals):
    st = ctx["settings"]
    print(f"calibration: {CALIBRATION_STEPS} steps of {', '.join(CALIBRATION_METHODS)} at B {st['batch_size']}, "
          f"T {st['max_length']}, {ctx['threads']} threads; load average now {os.getloadavg()[0]:.2f}", flush=True)
    per_step, eval_s = [], []
    for key in CALIBRATION_METHODS:
        r = train_one(ctx, "calibration", key, 3e-3, st["sweep_seed"], CALIBRATION_STEPS, 0)
        # the single evaluation at the end and the startup: what the wall time has beyond the steps
        eval_s.append(r["wall_s"] - r["train_s"])
        per_step.append(r)
        print(f"  {key:<12s} ms/step median {r['ms_per_step_median']:7.1f}, min {r['ms_per_step_min']:7.1f}; "
              f"eval+startup {eval_s[-1]:.1f} s; "
              f"subspace {fmt(r['subspace_s'], '.2f')} s; load {r['load_before']:.1f} -> {r['load_after']:.1f}")
    one_eval = statistics.mean(eval_s)
    print(f"plan: {plan_steps} training steps and {plan_evals} evaluations in all")
    for what, ms in (("median ms/step (this load)", statistics.mean(r["ms_per_step_median"] for r in per_step)),
                     ("min ms/step (a quiet machine)", statistics.mean(r["ms_per_step_min"] for r in per_step))):
        total = plan_steps * ms / 1e3 + plan_evals * one_eval
        print(f"  at the {what} {ms:.1f}: about {total / 60:.1f} min")
    return {"runs": per_step, "eval_s": one_eval}


# ----------------------------------------------------------------------------

def machine_description():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def show_path(path):
    """relative to the repository root when inside it"""
    rel = os.path.relpath(path, REPO_ROOT)
    return path if rel.startswith("..") else rel


def parse_list(text, cast, name):
    try:
        xs = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{name} '{text}' is not a comma-separated list")
    if not xs:
        fail(f"{name} is empty")
    return xs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output directory (default dev/experiments/results, or results_quick)")
    parser.add_argument("--quick", action="store_true", help="~5 min check: few steps, one seed, one lr")
    parser.add_argument("--calibrate", action="store_true", help="time a few steps and project the full run")
    parser.add_argument("--dry_run", action="store_true", help="print the commands that would run")
    parser.add_argument("--fresh", action="store_true", help="re-run everything, ignoring cached runs in --out")
    parser.add_argument("--trainer", default=DEFAULT_TRAINER, help="the CPU trainer binary")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run (default 2)")
    parser.add_argument("--model_config", help=f"preset or .json (default {FULL['model_config']})")
    parser.add_argument("--batch_size", type=int, help=f"B (default {FULL['batch_size']})")
    parser.add_argument("--max_length", type=int, help=f"T (default {FULL['max_length']})")
    parser.add_argument("--steps", type=int, help=f"steps of the final runs (default {FULL['steps']})")
    parser.add_argument("--sweep_steps", type=int, help="steps of the lr runs; 0 = no sweep (default steps/4)")
    parser.add_argument("--lrs", help="comma-separated lr grid (default 1e-3,3e-3,1e-2,3e-2)")
    parser.add_argument("--lrs_from", metavar="DIR",
                        help="each method's grid is its lr pick in DIR/results.json (an earlier table, e.g. "
                             "a shorter budget) and the half-steps on either side, instead of --lrs")
    parser.add_argument("--seeds", help="comma-separated final seeds (default 1,2,3)")
    parser.add_argument("--rank", type=int, help="R (default C/4)")
    parser.add_argument("--interval", type=int, help="k (default steps/50)")
    parser.add_argument("--methods", help="comma-separated subset of " + ",".join(m["key"] for m in METHODS))
    args = parser.parse_args()

    st = dict(FULL)
    if args.quick:
        st.update(QUICK)
    for key in ("model_config", "batch_size", "max_length", "steps"):
        if getattr(args, key) is not None:
            st[key] = getattr(args, key)
    if args.steps is not None and not args.quick:
        st["sweep_steps"] = max(1, args.steps // SWEEP_FRACTION_INVERSE)
    if args.sweep_steps is not None:
        st["sweep_steps"] = args.sweep_steps
    if args.lrs:
        st["lrs"] = parse_list(args.lrs, float, "--lrs")
    if args.seeds:
        st["seeds"] = parse_list(args.seeds, int, "--seeds")
    if st["steps"] < 2 or st["batch_size"] < 1 or st["max_length"] < 1 or args.threads < 1:
        fail("--steps must be >= 2, and --batch_size, --max_length, --threads >= 1")
    methods = METHODS
    if args.methods:
        keys = parse_list(args.methods, str, "--methods")
        unknown = [k for k in keys if k not in METHOD_BY_KEY]
        if unknown:
            fail(f"unknown method(s) {unknown}; choose from {[m['key'] for m in METHODS]}")
        methods = [m for m in METHODS if m["key"] in keys]
    # each method's lr grid: --lrs, or its earlier pick and the half-steps on either side (--lrs_from)
    grids = {m["key"]: list(st["lrs"]) for m in methods}
    if args.lrs_from:
        if args.lrs:
            fail("--lrs_from and --lrs both set the grid; give one")
        grids = lr_grids_from(args.lrs_from, methods)
        st["lrs_from"] = show_path(args.lrs_from)
    st["interval"] = args.interval or st.get("interval") or max(1, round(INTERVAL_FRACTION * st["steps"]))
    if st["sweep_steps"] == 0 and any(len(g) > 1 for g in grids.values()):
        fail("--sweep_steps 0 (no sweep) needs a single lr in --lrs")
    st["eval_every"] = max(1, st["steps"] // st["evals_per_run"])
    out = args.out or os.path.join(SCRIPT_DIR, "results_quick" if args.quick else "results")
    if not args.dry_run:
        os.makedirs(out, exist_ok=True)

    if not args.dry_run:  # the plot comes last: without matplotlib, fail before an hour of runs, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail(f"matplotlib is missing for {sys.executable}; install it (pip install matplotlib) "
                 f"or run this script with a Python that has it")
    ensure_trainer(args.trainer)
    st["rank"], accounting, state_bytes = model_accounting(st["model_config"], args.rank)
    ctx = {"settings": st, "methods": methods, "out": out, "trainer": os.path.abspath(args.trainer),
           "threads": args.threads, "fresh": args.fresh, "dry_run": args.dry_run,
           "command": "python " + " ".join([os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)] + sys.argv[1:]),
           "machine": machine_description()}

    sweeping = st["sweep_steps"] > 0 and any(len(g) > 1 for g in grids.values())
    # the grids, and each method's two half-steps (widening at an edge adds more, not counted here)
    n_sweep = sum(len(g) + (0 if args.lrs_from else 2) for g in grids.values()) if sweeping else 0
    plan_steps = n_sweep * st["sweep_steps"] + len(methods) * len(st["seeds"]) * st["steps"]
    plan_evals = n_sweep + len(methods) * len(st["seeds"]) * math.ceil(st["steps"] / st["eval_every"])
    sweep_text = (f" on {st['sweep_steps']}-step runs (seed {st['sweep_seed']})" if sweeping else " (no sweep)")
    grid_text = (f"lr grids from {st['lrs_from']}" if args.lrs_from else f"lr grid {[fmt_lr(lr) for lr in st['lrs']]}")
    print(f"plan: {len(methods)} methods; {grid_text}{sweep_text}; "
          f"final seeds {st['seeds']} x {st['steps']} steps; rank {st['rank']}, k {st['interval']}; "
          f"{plan_steps} training steps in all; output {show_path(out)}", flush=True)
    if args.calibrate:
        calibrate(ctx, plan_steps, plan_evals)
        return

    progress = Progress(plan_steps)
    loads = []

    def track(r, label):
        if r is None:
            return
        loads.extend([r["load_before"], r["load_after"]])
        progress.report(r, label)

    # the lr sweep, lr-major so that a change in machine load spreads over all methods
    sweep, picks = {m["key"]: {} for m in methods}, {}
    if sweeping:
        for i in range(max(len(g) for g in grids.values())):
            for m in methods:
                if i >= len(grids[m["key"]]):
                    continue
                lr = grids[m["key"]][i]
                r = train_one(ctx, "sweep", m["key"], lr, st["sweep_seed"], st["sweep_steps"], 0)
                sweep[m["key"]][lr] = r
                track(r, f"sweep {m['key']} lr {fmt_lr(lr)}")
        if any(r is None for v in sweep.values() for r in v.values()):  # a dry run, before the sweep ran
            picks = {m["key"]: grids[m["key"]][0] for m in methods}
            print("(the final runs use each method's pick; shown here with the grid's first lr)")
        else:
            for m in methods:
                picks[m["key"]] = refine_lr(ctx, m, sweep[m["key"]], st, track)
                if picks[m["key"]] is None:
                    fail(f"{m['label']} diverged at every lr of the grid; widen --lrs downwards")
            for label in edge_picks(methods, picks, {k: list(v) for k, v in sweep.items()}):
                print(f"warning: the lr pick of {label} is at the edge of the grid; consider widening --lrs",
                      file=sys.stderr)
    else:
        picks = {m["key"]: grids[m["key"]][0] for m in methods}

    # the final runs, seed-major for the same reason
    final_runs = {m["key"]: [] for m in methods}
    for seed in st["seeds"]:
        for m in methods:
            r = train_one(ctx, "final", m["key"], picks[m["key"]], seed, st["steps"], st["eval_every"])
            if r is not None:
                r["csv"] = os.path.join(out, "logs", "final", r["name"] + ".csv")
                final_runs[m["key"]].append(r)
            track(r, f"final {m['key']} lr {fmt_lr(picks[m['key']])} seed {seed}")
    if args.dry_run:
        return

    summary = {m["key"]: summarize(final_runs[m["key"]]) for m in methods}
    for m in methods:  # the startup line rounds to 0.01 MiB; the exact count must agree with it
        printed = summary[m["key"]]["state_mib_printed"]
        exact = state_bytes[m.get("state", "low_rank" if m["low_rank"] else "adamw")] / MIB
        if printed is not None and abs(printed - exact) > 0.006:
            print(f"warning: {m['key']}: the trainer printed {printed} MiB of optimizer states but "
                  f"memory_accounting counts {exact:.4f} MiB", file=sys.stderr)
    claims, extra = check_claims(summary, state_bytes)
    ctx["load_min"] = min(loads) if loads else float("nan")
    ctx["load_max"] = max(loads) if loads else float("nan")
    ctx["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # the sum of the runs' wall times, so that a table resumed from cached runs reports its whole cost
    all_runs = [r for v in sweep.values() for r in v.values()] + [r for v in final_runs.values() for r in v]
    ctx["total_minutes"] = sum(r["wall_s"] for r in all_runs) / 60
    text = results_markdown(ctx, sweep if sweeping else None, picks, summary, claims, extra, state_bytes,
                            accounting, args.quick)
    plot_curves(ctx, final_runs, os.path.join(out, "loss_curves.png"))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({
            "settings": st, "command": ctx["command"], "machine": ctx["machine"], "threads": args.threads,
            "date": ctx["date"], "total_minutes": ctx["total_minutes"],
            "load_average_range": [ctx["load_min"], ctx["load_max"]],
            "model": accounting, "optimizer_state_bytes": state_bytes,
            "optimizer_state_bytes_source": "dev/experiments/memory_accounting.c (the trainer's own functions)",
            "lr_picks": picks,
            "sweep": {k: {repr(lr): r for lr, r in v.items()} for k, v in sweep.items()} if sweeping else None,
            "final_runs": final_runs, "summary": summary, "claims": claims, "claims_extra": extra,
            "paper": {"eval_loss": PAPER_EVAL_LOSS, "wall_time_s": PAPER_WALL_TIME,
                      "ablation_1b": PAPER_ABLATION_1B},
        }, f, indent=1)
    print()
    print(text)
    print(f"wrote {show_path(out)}/results.md, results.json, loss_curves.png, logs/")


if __name__ == "__main__":
    main()
