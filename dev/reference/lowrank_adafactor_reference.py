"""
Writes dev/reference/lowrank_adafactor_reference.bin: trajectories of Adafactor
in a low-rank subspace (--optimizer low_rank_adafactor) for one weight matrix.
test_subtrack.c replays each case through lowrank_adamw_step with Adafactor in
the subspace, and compares S, the states and W after every step.

    python dev/reference/lowrank_adafactor_reference.py

What the reference is. The authors' LowRankAdafactor stops with an error at its
first step (it takes their projector's (gradient, basis) pair for the
gradient), so it has no run to compare with. What its code reads as, and what
the C code implements, is:
  - the subspace S of step t from subtrack_reference.py's LowRankReference (the
    PyTorch implementation of ../shared/SUBTRACK.md): the SVD at the first step,
    then a GaLore refresh or a geodesic tracking step every k steps; the moments
    are not rotated, and there is no recovery scaling (their class has neither);
  - transformers.optimization.Adafactor, with the settings of the authors'
    torchrun_main.py (lr external: relative_step, scale_parameter and
    warmup_init off; eps (1e-30, 1e-3); clip_threshold 1; decay_rate -0.8;
    beta1 None when it is 0), stepped on a parameter X of the projected
    gradient's shape (left: S^T G (R, n); right: G S (m, R)) that is zeroed
    before each step, so that the step leaves X = -U: the update with lr and
    clipping, through the first moment when there is one;
  - then, in their class's order, W = W - lr wd W and W = W - alpha S U (U back in
    W's orientation).

Format (little-endian): int32[4] magic LOWRANK_ADAFACTOR_REF_MAGIC (20261207),
version 1, cases, 0. Per case: int32[8] m, n, R, steps, method (0 galore, 1
subtrack), k, proj (0 std, 1 reverse_std, 2 left, 3 right), 0; float32[8]
alpha, eta, lr, weight_decay, beta1 (0: no first moment), 0, 0, 0; char[32]
name; float32 W0 (m n); then per step float32 arrays: G (m n), S (P R), the
first moment (the projected gradient's shape; zeros without one), the
statistics as the C code keeps them (rows then columns of the projected
gradient's shape; with R = 1 the one vector of q: see below), and W (m n).

With R = 1 the projected gradient is a (1, n) or (m, 1) matrix, which
transformers factors (a row and a column statistic) and the C code keeps as
one vector of second moments, as it does a norm's weight. The two agree up to
rounding: the factored form's other factor is the ratio of two exponential
averages of the same means. The file then holds transformers' statistic of
the long side (its exp_avg_sq_col of a (1, n), its exp_avg_sq_row of an
(m, 1)), and the C test's tolerance covers that rounding as well.
"""
import argparse
import os
import struct
import sys

import torch
from transformers.optimization import Adafactor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from subtrack_reference import (ETA, METHOD_GALORE, METHOD_SUBTRACK, PROJ_NAMES, LowRankReference,  # noqa: E402
                                f32, gradient_stream, projects_right)

LOWRANK_ADAFACTOR_REF_MAGIC = 20261207
VERSION = 1
CASE_NAME_BYTES = 32
STEPS = 10
GRAD_SCALE = 4.0

# (name, m, n, R, k, method, proj, lr, beta1, weight_decay). the authors'
# configs give Adafactor no first moment (beta1 0); each method, side and
# R = 1 on both sides, with and without the first moment and the decay
CASES = [
    ("galore", 12, 20, 3, 3, METHOD_GALORE, "std", 1e-2, 0.0, 0.0),
    ("subtrack", 20, 12, 4, 2, METHOD_SUBTRACK, "std", 1e-2, 0.9, 0.1),
    ("subtrack", 16, 16, 5, 3, METHOD_SUBTRACK, "reverse_std", 3e-3, 0.0, 0.1),
    ("galore", 9, 23, 2, 2, METHOD_GALORE, "right", 1e-2, 0.9, 0.0),
    ("galore", 12, 20, 1, 3, METHOD_GALORE, "std", 1e-2, 0.0, 0.1),
    ("subtrack", 23, 9, 1, 3, METHOD_SUBTRACK, "std", 3e-2, 0.9, 0.0),
]


class LowRankAdafactorReference:
    def __init__(self, m, n, cfg, dtype):
        self.proj = LowRankReference(m, n, cfg, dtype)   # the subspace only
        self.right = self.proj.right
        self.cfg = cfg
        r = cfg["r"]
        shape = (m, r) if self.right else (r, n)         # the projected gradient, in W's orientation
        self.X = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        self.opt = Adafactor([self.X], lr=cfg["lr"], eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8,
                             beta1=None if cfg["beta1"] == 0.0 else cfg["beta1"], weight_decay=0.0,
                             relative_step=False, scale_parameter=False, warmup_init=False)
        self.clipped = 0

    def step(self, W, G, t):
        cfg = self.cfg
        Gw = G.T if self.right else G                    # (P, Q): the left orientation
        Ww = W.T if self.right else W
        S_new = self.proj.new_subspace(Gw, t)
        if S_new is not None:
            self.proj.S = S_new
        S = self.proj.S
        Gt = S.T @ Gw                                    # (R, Q)
        with torch.no_grad():
            self.X.zero_()
        self.X.grad = (Gt.T if self.right else Gt).contiguous()
        self.opt.step()
        st = self.opt.state[self.X]
        r, c = st["exp_avg_sq_row"], st["exp_avg_sq_col"]
        u = (r / r.mean()).rsqrt().unsqueeze(-1) * c.unsqueeze(-2).rsqrt() * self.X.grad
        self.clipped += int(float(u.norm() / u.numel() ** 0.5) > 1.0)
        U = -self.X.detach()
        U = U.T if self.right else U                     # (R, Q)
        if cfg["wd"] > 0:
            Ww = Ww - cfg["lr"] * cfg["wd"] * Ww
        Ww = Ww - cfg["alpha"] * (S @ U)
        return (Ww.T if self.right else Ww).contiguous()

    def states(self):
        """the first moment (zeros without one) and the statistics, in the C code's layout."""
        st = self.opt.state[self.X]
        M = st["exp_avg"].clone() if "exp_avg" in st else torch.zeros_like(self.X.detach())
        row, col = st["exp_avg_sq_row"], st["exp_avg_sq_col"]
        if self.cfg["r"] == 1:
            stats = row.clone() if self.right else col.clone()   # the long side's (see the docstring)
        else:
            stats = torch.cat([row, col])
        return M, stats


def run_case(m, n, cfg, grads, W0, dtype):
    opt = LowRankAdafactorReference(m, n, cfg, dtype)
    W = W0.to(dtype)
    rows = []
    for t, G in enumerate(grads):
        W = opt.step(W, G.to(dtype), t)
        M, stats = opt.states()
        rows.append((opt.proj.S.clone(), M, stats, W.clone()))
    return rows, opt.proj.log, opt.clipped


def relative_gap(rows, rows64, W0):
    """max over steps and tensors of |a - b| / max|b| (W: of the update W - W0), b the float64 run."""
    worst = 0.0
    for a, b in zip(rows, rows64):
        for i in range(4):
            scale = (b[i] - W0.double()).abs().max() if i == 3 else b[i].abs().max()
            if float(scale) > 0:
                worst = max(worst, float((a[i].double() - b[i]).abs().max() / scale))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "lowrank_adafactor_reference.bin"))
    opts = ap.parse_args()
    torch.set_num_threads(1)
    out = bytearray(struct.pack("<4i", LOWRANK_ADAFACTOR_REF_MAGIC, VERSION, len(CASES), 0))
    total_clipped = 0
    for ci, (name, m, n, r, k, method, proj, lr, beta1, wd) in enumerate(CASES):
        cfg = dict(r=r, k=k, method=method, adaptive=0, proj=PROJ_NAMES.index(proj), alpha=f32(0.25),
                   eta=f32(ETA), lr=f32(lr), wd=f32(wd), beta1=f32(beta1))
        other = projects_right(m, n, cfg["proj"]) != projects_right(m, n, 0)
        # a seed whose float32 run is within 1e-5 of its float64 run, and whose
        # SVDs and tracking steps are well defined (the trajectories' conditions)
        for attempt in range(200):
            seed = 7000 + 31 * ci + 100003 * attempt
            grads = gradient_stream(m, n, r, STEPS, seed, GRAD_SCALE, other_side_fast=other)
            gW = torch.Generator().manual_seed(seed + 1)
            W0 = (0.02 * torch.randn(m, n, generator=gW, dtype=torch.float64)).to(torch.float32)
            rows, log, clipped = run_case(m, n, cfg, grads, W0, torch.float32)
            rows64, _, _ = run_case(m, n, cfg, grads, W0, torch.float64)
            if relative_gap(rows, rows64, W0) > 1e-5:
                continue
            if all(e[0] != "svd" or (e[1][0] >= 0.03 and e[1][1] >= 0.01) for e in log) and \
               all(e[0] != "track" or (e[2] / e[1] <= 0.7 and 0.05 <= e[3] <= 1.2) for e in log):
                break
        else:
            sys.exit("error: no seed gives a well-conditioned case for %s %dx%d r%d" % (name, m, n, r))
        total_clipped += clipped
        label = ("%s@%s r%d %dx%d" % (name, proj, r, m, n)).encode("ascii")
        assert len(label) < CASE_NAME_BYTES
        out += struct.pack("<8i", m, n, r, STEPS, method, k, cfg["proj"], 0)
        out += struct.pack("<8f", cfg["alpha"], cfg["eta"], cfg["lr"], cfg["wd"], cfg["beta1"], 0, 0, 0)
        out += label + b"\0" * (CASE_NAME_BYTES - len(label))
        out += W0.numpy().astype("<f4").tobytes()
        for G, row in zip(grads, rows):
            out += G.contiguous().numpy().astype("<f4").tobytes()
            for x in row:
                out += x.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        print("%-30s seed %7d: %d of %d steps clipped, %s" % (label.decode(), seed, clipped, STEPS,
              " ".join(e[0] for e in log)))
    if not 0 < total_clipped < STEPS * len(CASES):
        raise SystemExit("error: every step clipped or none did (%d); change the gradient scale" % total_clipped)
    with open(opts.out, "wb") as f:
        f.write(out)
    import transformers
    print(f"wrote {opts.out}: {len(CASES)} cases, {len(out)} bytes, {total_clipped} of {STEPS * len(CASES)} steps "
          f"clipped, torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
