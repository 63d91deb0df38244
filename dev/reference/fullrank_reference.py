"""
Writes dev/reference/fullrank_reference.bin: trajectories of the torch
optimizers behind the authors' full-rank --optimizer adam and sgd
(torchrun_main.py builds torch.optim.Adam(params, lr, weight_decay) and
torch.optim.SGD(params, lr, weight_decay, momentum=beta1)). Both decay by L2:
wd W is added to the gradient before the moments. test_subtrack.c replays
each case through adamw_update with l2 on (our adam) or sgd_update (our
sgd), and compares W and the states after every step.

    python dev/reference/fullrank_reference.py

Format (little-endian): int32[4] magic FULLRANK_REF_MAGIC (20261205), version
1, cases, 0; per case int32[4] n, steps, optimizer (0 adam, 1 sgd), 0,
float32[8] lr, beta1 (SGD: the momentum), beta2, eps, weight_decay, 0, 0, 0,
float32[n] W0, then per step float32[n] each of G, W, M, V after the step
(adam: exp_avg and exp_avg_sq; sgd: the momentum buffer, and zeros).
"""
import argparse
import os
import struct

import torch

FULLRANK_REF_MAGIC = 20261205
VERSION = 1
ADAM, SGD = 0, 1

# (optimizer, n, steps, lr, beta1, beta2, eps, weight_decay, seed), gradients
# N(0, 1). Adam's eps is 0: torch adds eps outside the bias correction
# (sqrt(V / bc2) + eps), ours inside the step (the spec's form: c M /
# (sqrt(V) + eps)), which moves an update of a small gradient by up to
# eps (1 - sqrt(bc2)) / sqrt(V) relative (3e-4 for |G| ~ 1e-3 on the first
# step). without eps both forms are the same update, and the cases check what
# --optimizer adam adds: L2
CASES = [
    (ADAM, 1031, 12, 1e-2, 0.9, 0.999, 0.0, 0.1, 11),
    (ADAM, 257, 12, 3e-3, 0.9, 0.95, 0.0, 0.5, 12),
    (ADAM, 64, 8, 1e-2, 0.9, 0.999, 0.0, 0.0, 13),
    (SGD, 1031, 12, 1e-2, 0.9, 0.0, 0.0, 0.1, 21),   # momentum and L2
    (SGD, 257, 12, 3e-2, 0.0, 0.0, 0.0, 0.5, 22),    # their default: no momentum (no buffer)
    (SGD, 64, 8, 1e-2, 0.5, 0.0, 0.0, 0.0, 23),
]


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def run(kind, n, steps, lr, beta1, beta2, eps, wd, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(0.5 * torch.randn(n, generator=g, dtype=torch.float32))
    W0 = W.detach().clone()
    if kind == ADAM:
        opt = torch.optim.Adam([W], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, foreach=False)
    else:
        opt = torch.optim.SGD([W], lr=lr, momentum=beta1, weight_decay=wd, foreach=False)
    rows = []
    for _ in range(steps):
        G = torch.randn(n, generator=g, dtype=torch.float32)
        W.grad = G.clone()
        opt.step()
        st = opt.state[W]
        if kind == ADAM:
            M, V = st["exp_avg"].clone(), st["exp_avg_sq"].clone()
        else:
            buf = st.get("momentum_buffer")
            M = buf.clone() if buf is not None else torch.zeros(n)
            V = torch.zeros(n)
        rows.append((G, W.detach().clone(), M, V))
    return W0, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "fullrank_reference.bin"))
    opts = ap.parse_args()
    torch.set_num_threads(1)
    out = bytearray(struct.pack("<4i", FULLRANK_REF_MAGIC, VERSION, len(CASES), 0))
    for kind, n, steps, lr, b1, b2, eps, wd, seed in CASES:
        # the file's float32 hyperparameters are what torch computes with
        lr, b1, b2, eps, wd = (f32(x) for x in (lr, b1, b2, eps, wd))
        W0, rows = run(kind, n, steps, lr, b1, b2, eps, wd, seed)
        out += struct.pack("<4i", n, steps, kind, 0) + struct.pack("<8f", lr, b1, b2, eps, wd, 0, 0, 0)
        out += W0.numpy().astype("<f4").tobytes()
        for step in rows:
            for x in step:
                out += x.numpy().astype("<f4").tobytes()
    with open(opts.out, "wb") as f:
        f.write(out)
    print(f"wrote {opts.out}: {len(CASES)} cases, {len(out)} bytes, torch {torch.__version__}")


if __name__ == "__main__":
    main()
