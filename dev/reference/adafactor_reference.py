"""
Writes dev/reference/adafactor_reference.bin: trajectories of
transformers.optimization.Adafactor with the settings the authors'
torchrun_main.py gives it for --optimizer adafactor (lr external:
relative_step, scale_parameter and warmup_init off; eps (1e-30, 1e-3);
clip_threshold 1.0; decay_rate -0.8; beta1 None when their --beta1 is 0, else
that value; weight_decay as given). test_subtrack.c replays each case through
adafactor_update and compares W and the states after every step.

    python dev/reference/adafactor_reference.py

Format (little-endian): int32[4] magic ADAFACTOR_REF_MAGIC (20261206),
version 1, cases, 0; per case int32[4] rows, cols, steps, 0 (rows 1: a vector,
transformers' non-factored case; a matrix: factored), float32[4] lr, beta1
(0: no first moment), weight_decay, 0, float32[rows cols] W0, then per step
float32 arrays: G (rows cols), W after the step (rows cols), the first moment
exp_avg (rows cols; zeros without one), and the statistics: exp_avg_sq_row
(rows) then exp_avg_sq_col (cols) for a matrix, exp_avg_sq (cols) for a vector.
"""
import argparse
import os
import struct

import torch
from transformers.optimization import Adafactor

ADAFACTOR_REF_MAGIC = 20261206
VERSION = 1

# (rows, cols, steps, lr, beta1, weight_decay, gradient scale, seed). the
# gradient scales make some steps' update RMS exceed clip_threshold 1 and
# others not (the generator counts both)
CASES = [
    (64, 48, 10, 1e-2, 0.0, 0.0, 1.0, 31),     # the authors' configs: no first moment
    (33, 70, 10, 3e-3, 0.9, 0.1, 0.01, 32),    # a first moment and the decay
    (96, 17, 8, 1e-2, 0.0, 0.5, 100.0, 33),
    (1, 130, 10, 1e-2, 0.0, 0.1, 1.0, 34),     # a vector (a norm's weight): not factored
    (1, 57, 8, 3e-2, 0.9, 0.0, 0.1, 35),
]


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def run(rows, cols, steps, lr, beta1, wd, scale, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (cols,) if rows == 1 else (rows, cols)
    W = torch.nn.Parameter(0.5 * torch.randn(shape, generator=g, dtype=torch.float32))
    W0 = W.detach().clone()
    opt = Adafactor([W], lr=lr, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8,
                    beta1=None if beta1 == 0.0 else beta1, weight_decay=wd, relative_step=False,
                    scale_parameter=False, warmup_init=False)
    out, clipped = [], 0
    for _ in range(steps):
        # a low-rank part makes rows and columns differ in scale, and noise
        G = scale * (torch.randn(shape, generator=g, dtype=torch.float32)
                     + (3.0 * torch.outer(torch.randn(rows, generator=g), torch.randn(cols, generator=g))
                        if rows > 1 else 0.0))
        W.grad = G.clone()
        opt.step()
        st = opt.state[W]
        M = st["exp_avg"].clone() if "exp_avg" in st else torch.zeros(shape)
        stats = (torch.cat([st["exp_avg_sq_row"], st["exp_avg_sq_col"]]) if rows > 1
                 else st["exp_avg_sq"].clone())
        # did this step clip? recompute the update's RMS as transformers does
        if rows > 1:
            r, c = st["exp_avg_sq_row"], st["exp_avg_sq_col"]
            u = (r / r.mean()).rsqrt().unsqueeze(-1) * c.unsqueeze(-2).rsqrt() * G
        else:
            u = st["exp_avg_sq"].rsqrt() * G
        clipped += int(float(u.norm() / u.numel() ** 0.5) > 1.0)
        out.append((G, W.detach().clone(), M, stats))
    return W0, out, clipped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "adafactor_reference.bin"))
    opts = ap.parse_args()
    torch.set_num_threads(1)
    out = bytearray(struct.pack("<4i", ADAFACTOR_REF_MAGIC, VERSION, len(CASES), 0))
    total_clipped = total_steps = 0
    for rows, cols, steps, lr, b1, wd, scale, seed in CASES:
        lr, b1, wd = (f32(x) for x in (lr, b1, wd))
        W0, rows_out, clipped = run(rows, cols, steps, lr, b1, wd, scale, seed)
        total_clipped += clipped
        total_steps += steps
        out += struct.pack("<4i", rows, cols, steps, 0) + struct.pack("<4f", lr, b1, wd, 0)
        out += W0.numpy().astype("<f4").tobytes()
        for step in rows_out:
            for x in step:
                out += x.contiguous().numpy().astype("<f4").tobytes()
    if not 0 < total_clipped < total_steps:
        raise SystemExit("error: every step clipped or none did (%d of %d); change the gradient scales"
                         % (total_clipped, total_steps))
    with open(opts.out, "wb") as f:
        f.write(out)
    import transformers
    print(f"wrote {opts.out}: {len(CASES)} cases, {len(out)} bytes, {total_clipped} of {total_steps} steps "
          f"clipped, torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
