"""
Writes dev/reference/adam_reference.bin: trajectories of torch.optim.Adam, the
optimizer the authors' --optimizer adam builds (torch.optim.Adam(params, lr,
weight_decay)), whose weight decay is L2: wd W is added to the gradient before
the moments. test_subtrack.c replays each case through adamw_update with l2 on
(our --optimizer adam) and compares W, M and V after every step.

    python dev/reference/adam_reference.py

Format (little-endian): int32[4] magic ADAM_REF_MAGIC (20261205), version 1,
cases, 0; per case int32[4] n, steps, 0, 0, float32[5] lr, beta1, beta2, eps,
weight_decay, float32[3] padding 0, float32[n] W0, then per step float32[n]
each of G, W, M (exp_avg), V (exp_avg_sq) after the step.
"""
import argparse
import os
import struct

import torch

ADAM_REF_MAGIC = 20261205
VERSION = 1

# (n, steps, lr, beta1, beta2, eps, weight_decay, seed), gradients N(0, 1).
# eps is 0: torch adds eps outside the bias correction (sqrt(V / bc2) + eps),
# ours inside the step (the spec's form: c M / (sqrt(V) + eps)), which moves
# an update of a small gradient by up to eps (1 - sqrt(bc2)) / sqrt(V)
# relative (3e-4 for |G| ~ 1e-3 on the first step). without eps both forms
# are the same update, and the cases check what --optimizer adam adds: L2
CASES = [
    (1031, 12, 1e-2, 0.9, 0.999, 0.0, 0.1, 11),
    (257, 12, 3e-3, 0.9, 0.95, 0.0, 0.5, 12),
    (64, 8, 1e-2, 0.9, 0.999, 0.0, 0.0, 13),
]


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def run(n, steps, lr, beta1, beta2, eps, wd, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(0.5 * torch.randn(n, generator=g, dtype=torch.float32))
    W0 = W.detach().clone()
    opt = torch.optim.Adam([W], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, foreach=False)
    rows = []
    for _ in range(steps):
        G = torch.randn(n, generator=g, dtype=torch.float32)
        W.grad = G.clone()
        opt.step()
        st = opt.state[W]
        rows.append((G, W.detach().clone(), st["exp_avg"].clone(), st["exp_avg_sq"].clone()))
    return W0, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "adam_reference.bin"))
    opts = ap.parse_args()
    torch.set_num_threads(1)
    out = bytearray(struct.pack("<4i", ADAM_REF_MAGIC, VERSION, len(CASES), 0))
    for n, steps, lr, b1, b2, eps, wd, seed in CASES:
        # the file's float32 hyperparameters are what torch computes with
        lr, b1, b2, eps, wd = (f32(x) for x in (lr, b1, b2, eps, wd))
        W0, rows = run(n, steps, lr, b1, b2, eps, wd, seed)
        out += struct.pack("<4i", n, steps, 0, 0) + struct.pack("<8f", lr, b1, b2, eps, wd, 0, 0, 0)
        out += W0.numpy().astype("<f4").tobytes()
        for G, W, M, V in rows:
            for x in (G, W, M, V):
                out += x.numpy().astype("<f4").tobytes()
    with open(opts.out, "wb") as f:
        f.write(out)
    print(f"wrote {opts.out}: {len(CASES)} cases, {len(out)} bytes, torch {torch.__version__}")


if __name__ == "__main__":
    main()
