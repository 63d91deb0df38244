"""report.py: the comparison tables of dev/gpu_check.sh (standard library only).

    python3 dev/gpu_check/report.py curve --gpu run.csv --ref dev/experiments/default_run.csv --out table.md
    python3 dev/gpu_check/report.py steps --gpu gpu.csv --ref cpu.csv --out table.md
    python3 dev/gpu_check/report.py speed --bench bench.log [--peer peer.log] --out table.md

Each writes a markdown table to --out and prints one line, "PASS: ..." or
"FAIL: ...", the verdict that goes into the report's summary. Exit status:
0 pass, 1 fail, 2 unreadable input.

The CSVs are the trainers' --log_file format:
step,train_loss,val_loss,lr,grad_norm,ms,tokens_per_s (val_loss empty when not evaluated).
"""

import argparse
import csv
import math
import re
import sys


class InputError(Exception):
    pass


def read_log(path):
    """{step: row} of a trainer CSV, numbers as floats (None when empty)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}")
    out = {}
    for r in rows:
        try:
            step = int(r["step"])
            out[step] = {k: (float(v) if v not in ("", None) else None) for k, v in r.items() if k != "step"}
        except (KeyError, ValueError, TypeError):
            raise InputError(f"{path}: not a trainer log (step,train_loss,val_loss,...)")
    if not out:
        raise InputError(f"{path}: no rows")
    return out


def fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def rel(a, b):
    if a is None or b is None:
        return None
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-30)


def cmd_curve(a):
    """the GPU run's losses at its eval steps beside a reference run's; judged on the last val loss."""
    gpu, ref = read_log(a.gpu), read_log(a.ref)
    lines = [f"| step | train loss (GPU) | train loss ({a.ref_label}) | diff | "
             f"val loss (GPU) | val loss ({a.ref_label}) | diff | rel |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    eval_steps = [s for s in sorted(gpu) if gpu[s]["val_loss"] is not None]
    last = None
    for s in eval_steps:
        g, r = gpu[s], ref.get(s)
        rt = r["train_loss"] if r else None
        rv = r["val_loss"] if r else None
        dt = None if rt is None else g["train_loss"] - rt
        dv = None if rv is None else g["val_loss"] - rv
        rr = rel(g["val_loss"], rv)
        lines.append(f"| {s} | {fmt(g['train_loss'])} | {fmt(rt)} | {fmt(dt, '+.4f')} | {fmt(g['val_loss'])} | "
                     f"{fmt(rv)} | {fmt(dv, '+.4f')} | {fmt(None if rr is None else 100 * rr, '.2f')}% |")
        if rv is not None:
            last = (s, g["val_loss"], rv, rr)
    bad = [s for s in sorted(gpu) if not math.isfinite(gpu[s]["train_loss"])]
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    steps_done = max(gpu)
    if a.steps and steps_done < a.steps:
        print(f"FAIL: the GPU log stops at step {steps_done} of {a.steps}")
        return 1
    if bad:
        print(f"FAIL: non-finite train loss at step {bad[0]}")
        return 1
    if last is None:
        print("FAIL: no eval step shared with the reference")
        return 1
    s, gv, rv, rr = last
    ok = rr <= a.tol
    print(f"{'PASS' if ok else 'FAIL'}: val loss at step {s} {gv:.4f} vs {rv:.4f} ({a.ref_label}), "
          f"rel {100 * rr:.2f}% (tol {100 * a.tol:.0f}%)")
    return 0 if ok else 1


def cmd_steps(a):
    """per-step train losses of two runs with the same flags, judged in tiers."""
    gpu, ref = read_log(a.gpu), read_log(a.ref)
    lines = ["| step | loss (GPU) | loss (CPU) | rel diff | tol | grad norm (GPU) | grad norm (CPU) | rel diff |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    worst = {"first": 0.0, "early": 0.0, "late": 0.0}
    fails, first_over = [], None
    for s in sorted(set(gpu) | set(ref)):
        g, r = gpu.get(s), ref.get(s)
        gl = g["train_loss"] if g else None
        rl = r["train_loss"] if r else None
        gn = g["grad_norm"] if g else None
        rn = r["grad_norm"] if r else None
        d = rel(gl, rl)
        tier = "first" if s == 1 else "early" if s <= a.early else "late"
        tol = {"first": a.first_tol, "early": a.early_tol, "late": a.late_tol}[tier]
        if d is None:
            fails.append(f"step {s} missing on the {'GPU' if g is None else 'CPU'}")
            mark = "missing"
        else:
            worst[tier] = max(worst[tier], d)
            if d > tol:
                fails.append(f"step {s} rel {d:.2g} > {tol:g}")
            if first_over is None and d > a.early_tol:
                first_over = s
            mark = f"{tol:g}" + ("" if d <= tol else " **over**")
        nd = rel(gn, rn)
        lines.append(f"| {s} | {fmt(gl, '.6f')} | {fmt(rl, '.6f')} | {fmt(d, '.2e')} | {mark} | "
                     f"{fmt(gn, '.5f')} | {fmt(rn, '.5f')} | {fmt(nd, '.2e')} |")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    summary = (f"worst rel diff: step 1 {worst['first']:.1e}, steps 2-{a.early} {worst['early']:.1e}, "
               f"later {worst['late']:.1e}; first step above {a.early_tol:g}: "
               f"{first_over if first_over is not None else 'none'}")
    if a.steps and max(gpu) < a.steps:
        fails.insert(0, f"the GPU log stops at step {max(gpu)} of {a.steps}")
    if fails:
        print(f"FAIL: {fails[0]}{' (and %d more)' % (len(fails) - 1) if len(fails) > 1 else ''}; {summary}")
        return 1
    print(f"PASS: {summary}")
    return 0


KV = re.compile(r"(\w+)=(\S+)")


def parse_lines(path, tag):
    rows, skipped = [], []
    if path is None:
        return rows, skipped
    try:
        text = open(path, errors="replace").read()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}")
    for line in text.splitlines():
        if line.startswith(tag + " "):
            rows.append(dict(KV.findall(line)))
        elif line.startswith("SKIPPED "):
            m = re.match(r"SKIPPED (?:preset|config)=(\S+) reason=(.*)", line)
            if m:
                skipped.append((m.group(1), m.group(2)))
    return rows, skipped


def short(preset):
    return preset[6:] if preset.startswith("llama_") else preset


def num(d, k):
    try:
        return float(d[k])
    except (KeyError, ValueError):
        return None


def cmd_speed(a):
    ours, our_skips = parse_lines(a.bench, "RESULT")
    peers, peer_skips = parse_lines(a.peer, "PEER")
    peer = {p["config"]: p for p in peers}
    label = {"adamw": "AdamW", "subtrack": "SubTrack++", "galore": "GaLore"}
    lines = ["| model | optimizer | rank | B x accum, T | ms/step | tokens/s | MFU | vs AdamW | device MiB | "
             "HF tokens/s | HF peak MiB | ours / HF |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ours:
        name = short(r.get("preset", "?"))
        p = peer.get(name)
        tok = num(r, "tok_s")
        mfu = num(r, "mfu_pct")
        vs = num(r, "vs_adamw_pct")
        ptok = num(p, "tok_s") if p else None
        pmem = num(p, "peak_alloc_mib") if p else None
        ratio = f"{tok / ptok:.2f}x" if tok and ptok else "-"
        method = r.get("method", "?")
        lines.append(
            f"| {name} | {label.get(method, method)} | {r.get('rank', '-') if method != 'adamw' else '-'} | "
            f"{r.get('B')} x {r.get('accum')}, {r.get('T')} | {fmt(num(r, 'step_ms'), '.2f')} | {fmt(tok, ',.0f')} | "
            f"{'-' if mfu is None or mfu < 0 else f'{mfu:.1f}%'} | "
            f"{'-' if method == 'adamw' or vs is None else f'{vs:+.1f}%'} | {fmt(num(r, 'mem_mib'), ',.0f')} | "
            f"{fmt(ptok, ',.0f')} | {'-' if pmem is None or pmem < 0 else f'{pmem:,.0f}'} | {ratio} |")
    ours_names = {short(r.get("preset", "")) for r in ours}
    for p in peers:
        if p.get("config") not in ours_names:
            pmem = num(p, "peak_alloc_mib")
            lines.append(f"| {p.get('config')} | (HF peer only) | | {p.get('B')} x {p.get('accum')}, {p.get('T')} | "
                         f"| | | | | {fmt(num(p, 'tok_s'), ',.0f')} | "
                         f"{'-' if pmem is None or pmem < 0 else f'{pmem:,.0f}'} | - |")
    for name, why in our_skips:
        lines.append(f"| {short(name)} | (ours) | | | skipped: {why} | | | | | | | |")
    for name, why in peer_skips:
        lines.append(f"| {name} | (HF peer) | | | skipped: {why} | | | | | | | |")
    if peers:
        p0 = peers[0]
        peer_mfu = ", ".join(f"{q.get('config')} {q.get('mfu_pct')}%" for q in peers)
        lines.append("")
        lines.append(f"HF peer: LlamaForCausalLM, attn_implementation={p0.get('attn')}, AdamW {p0.get('adamw')}, "
                     f"median of {p0.get('timed')} steps on {p0.get('device')}, the same FLOP count for its MFU "
                     f"(MFU {peer_mfu}). "
                     "Its weights and AdamW states are bf16, as in the authors' scripts, where ours keeps fp32 "
                     "masters, gradients and states: the memory columns are not like for like. Its MiB is "
                     "torch.cuda.max_memory_allocated (max_memory_reserved is in hf_peer.log).")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    if not ours:
        print("FAIL: no RESULT line in the benchmark's output")
        return 1
    harness = any(r.get("harness") == "1" for r in ours)
    print(f"PASS: {len(ours)} measurements{', ' + str(len(our_skips)) + ' skipped' if our_skips else ''}"
          f"{' (harness: numbers meaningless)' if harness else ''}")
    return 0


def main():
    p = argparse.ArgumentParser(description="comparison tables for dev/gpu_check.sh")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curve")
    c.add_argument("--gpu", required=True)
    c.add_argument("--ref", required=True)
    c.add_argument("--ref-label", default="CPU")
    c.add_argument("--tol", type=float, default=0.03, help="relative, on the last shared val loss")
    c.add_argument("--steps", type=int, default=0, help="steps the GPU run should have logged")
    c.add_argument("--out", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--gpu", required=True)
    s.add_argument("--ref", required=True)
    s.add_argument("--first-tol", type=float, default=1e-5)
    s.add_argument("--early", type=int, default=5)
    s.add_argument("--early-tol", type=float, default=1e-3)
    s.add_argument("--late-tol", type=float, default=5e-2)
    s.add_argument("--steps", type=int, default=0)
    s.add_argument("--out", required=True)
    b = sub.add_parser("speed")
    b.add_argument("--bench", required=True)
    b.add_argument("--peer")
    b.add_argument("--out", required=True)
    a = p.parse_args()
    try:
        return {"curve": cmd_curve, "steps": cmd_steps, "speed": cmd_speed}[a.cmd](a)
    except InputError as e:
        print(f"FAIL: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
