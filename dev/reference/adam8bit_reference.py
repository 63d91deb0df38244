"""
Writes dev/reference/adam8bit_reference.bin: steps of bitsandbytes' Adam8bit
(bnb.optim.Adam8bit, as the authors' torchrun_main.py builds it for
--optimizer adam8bit: lr and weight decay given, the rest its defaults).
test_subtrack.c replays every step through adam8bit_update_q8 and
adam8bit_update and compares the states and W.

    python dev/reference/adam8bit_reference.py

bnb runs its 8-bit optimizer step on a GPU only: its CPU build has no kernel
for it. So this script runs the library's own class (its state layout, its
maps, its 256-value blocks, its 4096-value threshold below which a parameter
keeps fp32 moments) with the library's own pure-PyTorch reference for that
step, bitsandbytes.backends.triton.kernels_optim.
optimizer_update_8bit_blockwise_pytorch, registered as the CPU kernel of the
bitsandbytes::optimizer_update_8bit_blockwise op. Two switches make that run
on the CPU: bitsandbytes.functional.is_on_gpu (the wrapper's check that every
tensor is on a GPU) returns True. The fp32-moment parameters take bnb's own
default (PyTorch) kernel for the 32-bit step, which is registered on the CPU
already. Nothing of the optimizer's arithmetic is written here.

To give the C test the fp32 moments as they were before they were quantized,
the script wraps the library's _quantize_blockwise_pytorch and keeps a copy of
what it is given (it calls the original unchanged).

Format (little-endian): int32[4] magic ADAM8BIT_REF_MAGIC (20261208), version 1,
cases, 0. Per case: int32[8] rows, cols (rows 1: a vector), steps, q8 (1:
8-bit moments, 0: fp32), blocks (of 256 values), 0, 0, 0; float32[8] lr,
beta1, beta2, eps, weight_decay, 0, 0, 0; float32[n] W0; then per step: G
(n), W after the step (n), and with q8: the fp32 M and V that were quantized
(n each), the codes of M then of V (n uint8 each, then zeros up to a
multiple of 4), the absmax of M then of V (blocks each); with fp32 moments:
M and V after the step (n each).
"""
import argparse
import os
import struct

import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.backends.triton import kernels_optim as K

ADAM8BIT_REF_MAGIC = 20261208
VERSION = 1
STEPS = 6

# (rows, cols): 8-bit moments from 4096 values on. the first has whole blocks
# (4608 = 18 x 256) and a block whose gradient is always 0 (a zero block: bnb keeps absmax 1 for
# it), the second a short last block (4290 = 16 x 256 + 194); the other two keep
# fp32 moments (600 values, and a norm-like vector of 100)
PARAMS = [(48, 96), (33, 130), (20, 30), (1, 100)]
RUNS = [  # (lr, weight_decay, seed)
    (1e-2, 0.0, 41),
    (3e-3, 0.1, 42),
]

captured = []


def capture_quantize(original):
    def wrapped(A, code, blocksize):
        captured.append(A.detach().clone())
        return original(A, code, blocksize)
    return wrapped


def install_cpu_step():
    @torch.library.register_kernel("bitsandbytes::optimizer_update_8bit_blockwise", "cpu")
    def _(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1,
          absmax2, weight_decay, gnorm_scale, skip_zeros=False):
        K.optimizer_update_8bit_blockwise_pytorch(p, g, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr,
                                                  qmap1, qmap2, absmax1, absmax2, weight_decay, gnorm_scale,
                                                  skip_zeros, optimizer_name=optimizer_name)
    F.is_on_gpu = lambda tensors: True
    K._quantize_blockwise_pytorch = capture_quantize(K._quantize_blockwise_pytorch)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def le(x):
    return x.detach().contiguous().numpy().astype("<f4").tobytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "adam8bit_reference.bin"))
    opts = ap.parse_args()
    torch.set_num_threads(1)
    install_cpu_step()
    cases = []
    for lr, wd, seed in RUNS:
        lr, wd = f32(lr), f32(wd)
        g = torch.Generator().manual_seed(seed)
        params = [torch.nn.Parameter(0.3 * torch.randn((c,) if r == 1 else (r, c), generator=g)) for r, c in PARAMS]
        W0 = [p.detach().clone() for p in params]
        # betas and eps: bnb's defaults, as float32 values (the C trainer's flags are float32)
        opt = bnb.optim.Adam8bit(params, lr=lr, betas=(f32(0.9), f32(0.999)), eps=f32(1e-8), weight_decay=wd)
        rows = [[] for _ in params]
        for t in range(STEPS):
            grads = []
            for k, p in enumerate(params):
                # noise whose scale differs by column, so blocks differ in absmax
                scale = torch.exp(torch.linspace(-3.0, 1.0, p.shape[-1]))
                G = torch.randn(p.shape, generator=g) * scale
                if k == 0:
                    G.view(-1)[:256] = 0.0          # block 0 of the first parameter: always zero
                p.grad = G
                grads.append(G.clone())
            captured.clear()
            opt.step()
            at = 0
            for k, p in enumerate(params):
                st = opt.state[p]
                if st["state1"].dtype == torch.uint8:
                    M_pre, V_pre = captured[at], captured[at + 1]
                    at += 2
                    rows[k].append((grads[k], p.detach().clone(), M_pre, V_pre, st["state1"].clone(),
                                    st["state2"].clone(), st["absmax1"].clone(), st["absmax2"].clone()))
                else:
                    rows[k].append((grads[k], p.detach().clone(), st["state1"].clone(), st["state2"].clone()))
            if at != len(captured):
                raise SystemExit("error: %d quantizations captured, %d expected" % (len(captured), at))
        for k, (r, c) in enumerate(PARAMS):
            cases.append((r, c, lr, wd, W0[k], rows[k]))
    out = bytearray(struct.pack("<4i", ADAM8BIT_REF_MAGIC, VERSION, len(cases), 0))
    zero_blocks = 0
    for r, c, lr, wd, W0, steps in cases:
        n = r * c
        q8 = len(steps[0]) == 8
        blocks = (n + 255) // 256
        out += struct.pack("<8i", r, c, STEPS, int(q8), blocks if q8 else 0, 0, 0, 0)
        out += struct.pack("<8f", lr, f32(0.9), f32(0.999), f32(1e-8), wd, 0, 0, 0)
        out += le(W0)
        for row in steps:
            out += le(row[0]) + le(row[1])
            if q8:
                G, W, M_pre, V_pre, c1, c2, a1, a2 = row
                out += le(M_pre) + le(V_pre)
                for codes in (c1, c2):
                    b = codes.contiguous().numpy().astype("u1").tobytes()
                    out += b + b"\0" * ((-len(b)) % 4)
                out += le(a1) + le(a2)
                zero_blocks += int((a1 == 1.0).sum()) if float(M_pre.reshape(-1)[:256].abs().max()) == 0 else 0
            else:
                out += le(row[2]) + le(row[3])
    if zero_blocks == 0:
        raise SystemExit("error: no all-zero block was written")
    with open(opts.out, "wb") as f:
        f.write(out)
    print(f"wrote {opts.out}: {len(cases)} cases, {len(out)} bytes, torch {torch.__version__}, "
          f"bitsandbytes {bnb.__version__}")


if __name__ == "__main__":
    main()
