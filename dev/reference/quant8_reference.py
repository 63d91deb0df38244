"""
Writes dev/reference/quant8_reference.bin, which test_subtrack.c uses to check
the C blockwise 8-bit quantization (quantize_blockwise, dequantize_blockwise
and quant8_dynamic_map in train_llama_subtrack.c) against bitsandbytes.

    pip install bitsandbytes==0.49.2      # with dev/requirements.txt
    python dev/reference/quant8_reference.py            # writes dev/reference/quant8_reference.bin

Every number in the file comes from bitsandbytes itself: the maps from
bitsandbytes.functional.create_dynamic_map, and the codes, absmax and
dequantized values from bitsandbytes.functional.quantize_blockwise and
dequantize_blockwise on the CPU. Only the inputs are made here (seeded numpy).

WHY bitsandbytes 0.49.2 AND NOT THE NEWEST VERSION: bnb 0.50's CPU kernel looks
codes up in a table of 65536 bins over [-1, 1]. It does not search for the
nearest entry: 0 comes out as 2.1e-5 and 1e-6 as 2.1e-5, for example. 0.49's
kernel (lookup_code_index) searches for the nearest map entry exactly, which
is the algorithm of the paper. Older kernels divide by absmax instead of
multiplying by its reciprocal (as the CUDA kernels do), and have no case for
an all-zero block (0 / 0). So the script refuses any other version.

A quirk of bnb 0.49 that the file records: its CPU kernel writes -1.0 over
entry 0 of the map it is given ("to cover the full range"), and then searches
and dequantizes with that changed map. The script passes a copy, and stores
both the map that create_dynamic_map returns and the map that bnb actually
searched. test_subtrack.c compares codes, absmax and dequantized values, bit for
bit, with the C code run on the searched map. With the true maps it accepts a
difference only where the changed entry 0 moves the nearest entry.

The maps depend on how torch computes linspace in float32. On this build
(torch 2.15, x86 with AVX512) each point is one fused multiply-add. The script
checks that and stops if torch computes it another way: the committed file
would then no longer match, in the last bit, what a rerun writes.

Format (little-endian, no padding other than what is stated):

| part | type | content |
|---|---|---|
| header | int32[8] | [0] magic QUANT8_REF_MAGIC = 20261108, [1] version 1, [2] number of vectors, [3] block size (2048), [4] map size (256), rest 0 |
| maps | float32[256] | create_dynamic_map(signed=True), sorted ascending |
| | float32[256] | create_dynamic_map(signed=False) |
| | float32[256] | the signed map as bnb 0.49.2's CPU kernel searched it (entry 0 set to -1.0) |
| | float32[256] | the unsigned map as bnb searched it (entry 0 set to -1.0) |
| per vector | int32[4] | [0] n, [1] 1 signed map / 0 unsigned map, [2] blocks = ceil(n / block size), [3] 0 |
| | char[32] | name, ASCII, NUL-padded |
| | float32[n] | x, the input |
| | uint8[n] | bnb's codes, then zero bytes up to a multiple of 4 |
| | float32[blocks] | bnb's absmax |
| | float32[n] | bnb's dequantized values (searched map, bnb's codes and absmax) |
"""

import argparse
import os
import struct
import sys

import numpy as np
import torch

QUANT8_REF_MAGIC = 20261108
QUANT8_REF_VERSION = 1
HEADER_INTS = 8
BLOCK = 2048              # QUANT8_BLOCK in train_llama_subtrack.c
MAP_SIZE = 256
NAME_BYTES = 32
BNB_VERSION = "0.49.2"    # see the docstring: the last CPU kernel with an exact nearest-entry search
MAX_FILE_BYTES = 200 * 1024
SEED = 20261108

REFERENCE_DIR = os.path.dirname(os.path.abspath(__file__))


def check_linspace_is_fused():
    """torch.linspace(0.1, 1, k) in float32 must be what fmaf gives (see the docstring)."""
    f32 = np.float32
    for steps in (2, 3, 5, 9, 17, 33, 65, 129):
        got = torch.linspace(0.1, 1, steps, dtype=torch.float32).numpy()
        step = f32((f32(1.0) - f32(0.1)) / f32(steps - 1))
        want = np.empty(steps, dtype=f32)
        for i in range(steps):
            # float64 holds step * i + start exactly, so one rounding to float32 is fmaf
            if i < steps // 2:
                want[i] = f32(np.float64(step) * i + np.float64(f32(0.1)))
            else:
                want[i] = f32(np.float64(-step) * (steps - 1 - i) + 1.0)
        if not np.array_equal(got.view(np.int32), want.view(np.int32)):
            sys.exit("error: this torch computes linspace(0.1, 1, %d) in float32 without fused multiply-adds; "
                     "the dynamic maps would differ in the last bit from the committed file and from the C code. "
                     "run the script with torch 2.15 on x86-64 (dev/requirements.txt)" % steps)


def midpoint_ties(m, first):
    """float32 values y between neighbouring entries a = m[k] < b = m[k + 1],
    k >= first, at which the float distances y - a and b - y are equal (exact
    ties), each with its two float neighbours."""
    out = []
    for k in range(first, MAP_SIZE - 1):
        a, b = m[k], m[k + 1]
        y = np.float32((np.float64(a) + np.float64(b)) / 2)
        if np.float32(y - a) == np.float32(b - y):
            out += [y, np.nextafter(y, np.float32(-2)), np.nextafter(y, np.float32(2))]
    return np.array(out, dtype=np.float32)


def nearest_code(m, y):
    """the nearest entry of sorted map m to float32 y by float distance, ties to
    the lower entry. used only to choose inputs: every expected output in the
    file comes from bitsandbytes."""
    k = int(np.searchsorted(m, y, side="left"))
    if k == 0:
        return 0
    if k == MAP_SIZE:
        return MAP_SIZE - 1
    return k if np.float32(m[k] - y) < np.float32(y - m[k - 1]) else k - 1


def normalization_sensitive(m, absmax, count):
    """up to count float32 values x, |x| < absmax, whose nearest code differs
    between y = x * (1 / absmax) and y = x / absmax (both in float32); found
    within 64 ulps of absmax times each midpoint between neighbouring entries."""
    absmax = np.float32(absmax)
    inv = np.float32(1) / absmax
    out = []
    for k in range(MAP_SIZE - 2):
        x = np.float32((np.float64(m[k]) + np.float64(m[k + 1])) / 2 * np.float64(absmax))
        for _ in range(64):
            x = np.nextafter(x, np.float32(-np.inf))
        for _ in range(128):
            if nearest_code(m, np.float32(x * inv)) != nearest_code(m, np.float32(x / absmax)):
                out.append(x)
                break
            x = np.nextafter(x, np.float32(np.inf))
        if len(out) == count:
            break
    return np.array(out, dtype=np.float32)


def log_uniform(rng, n, lo_exp, hi_exp, signed):
    mag = 10.0 ** rng.uniform(lo_exp, hi_exp, n)
    if signed:
        mag *= rng.choice([-1.0, 1.0], n)
    return mag.astype(np.float32)


def make_vectors(searched):
    """(name, signed, x) for each test vector, seeded."""
    rng = np.random.default_rng(SEED)
    vecs = []

    # signed, n = 5000: blocks of 2048, 2048 and a tail of 904
    ties = midpoint_ties(searched[True], 0)
    print("signed: %d exact ties between map entries, with their float neighbours" % (len(ties) // 3))
    # where bnb's entry 0 (-1.0 instead of -0.99297) changes the nearest entry: (-0.98945, -0.98594)
    window = rng.uniform(-0.9894, -0.9860, 40).astype(np.float32)
    fixed = np.concatenate([[1.0, -1.0], ties, window, np.zeros(100, np.float32)]).astype(np.float32)
    block0 = np.concatenate([fixed, log_uniform(rng, BLOCK - len(fixed), -9, 0, True)])
    rng.shuffle(block0)  # absmax stays exactly 1, so x / absmax = x and the ties are ties
    block1 = np.zeros(BLOCK, np.float32)  # all zeros: absmax 0
    tail = log_uniform(rng, 904, -12, -2.5, True)
    tail[rng.integers(0, 904, 30)] = 0.0
    tail[500] = np.float32(-3.7e-3)  # the largest magnitude is negative: absmax 3.7e-3 maps to code 0
    vecs.append(("signed 5000 mixed", True, np.concatenate([block0, block1, tail])))

    # unsigned, n = 5000, never negative (like a second moment)
    ties = midpoint_ties(searched[False], 1)  # not between bnb's -1.0 and map[1]: no negative inputs
    print("unsigned: %d exact ties between map entries, with their float neighbours" % (len(ties) // 3))
    # below half of map[1] (1.6e-7), where bnb's entry 0 (-1.0 instead of 0) changes the nearest entry
    tiny = rng.uniform(0.0, 1.6e-7, 40).astype(np.float32)
    fixed = np.concatenate([[1.0], ties, tiny, np.zeros(100, np.float32)]).astype(np.float32)
    block0 = np.concatenate([fixed, log_uniform(rng, BLOCK - len(fixed), -10, 0, False)])
    rng.shuffle(block0)
    block1 = np.zeros(BLOCK, np.float32)
    tail = (rng.standard_normal(904) ** 2 * 1e-6).astype(np.float32)
    tail[rng.integers(0, 904, 30)] = 0.0
    vecs.append(("unsigned 5000 mixed", False, np.concatenate([block0, block1, tail])))

    # one full block exactly, no tail; absmax not a power of 2. it also holds
    # values whose code depends on how x is normalized: x * (1 / absmax) (bnb,
    # and the C code) against x / absmax
    x = (rng.standard_normal(BLOCK) * 1e3).astype(np.float32)
    sensitive = normalization_sensitive(searched[True], np.abs(x).max(), 200)
    print("signed 2048: %d values whose code differs between x * (1 / absmax) and x / absmax" % len(sensitive))
    keep = int(np.abs(x).argmax())
    slots = [i for i in range(BLOCK) if i != keep][:len(sensitive)]
    x[slots] = sensitive
    vecs.append(("signed 2048 gaussian", True, x))
    # a tail block alone
    vecs.append(("unsigned 7", False, np.array([0.0, 1e-8, 3e-7, 0.5, 2.0, 1e-3, 7.25], np.float32)))
    vecs.append(("signed 1", True, np.array([-0.3], np.float32)))
    return vecs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REFERENCE_DIR, "quant8_reference.bin"))
    args = ap.parse_args()

    import bitsandbytes
    import bitsandbytes.functional as bnbf
    if bitsandbytes.__version__ != BNB_VERSION:
        sys.exit("error: bitsandbytes %s is installed; this script needs %s (pip install bitsandbytes==%s). "
                 "0.50's CPU kernel uses a 65536-bin lookup table, not a nearest-entry search; see the docstring"
                 % (bitsandbytes.__version__, BNB_VERSION, BNB_VERSION))
    check_linspace_is_fused()

    maps = {s: bnbf.create_dynamic_map(signed=s).numpy().copy() for s in (True, False)}
    searched = {}
    for s in (True, False):
        code = torch.from_numpy(maps[s].copy())
        bnbf.quantize_blockwise(torch.ones(4), code=code, blocksize=BLOCK)  # bnb changes code in place
        searched[s] = code.numpy().copy()
        changed = np.nonzero(searched[s] != maps[s])[0]
        if not (list(changed) == [0] and searched[s][0] == -1.0):
            sys.exit("error: bitsandbytes changed entries %s of the map, expected only entry 0 to -1.0; "
                     "update the docstring, README and test_subtrack.c" % list(changed))

    blobs = []
    vecs = make_vectors(searched)
    for name, signed, x in vecs:
        n = len(x)
        code = torch.from_numpy(searched[signed].copy())
        q, state = bnbf.quantize_blockwise(torch.from_numpy(x.copy()), code=code, blocksize=BLOCK)
        deq = bnbf.dequantize_blockwise(q, state).numpy()
        q = q.numpy()
        absmax = state.absmax.numpy()
        blocks = -(-n // BLOCK)
        assert state.blocksize == BLOCK and absmax.shape == (blocks,) and q.dtype == np.uint8
        assert np.array_equal(state.code.numpy(), searched[signed]), "bnb searched another map"
        assert deq.dtype == np.float32 and np.all(np.isfinite(deq))
        header = struct.pack("<4i", n, 1 if signed else 0, blocks, 0)
        label = name.encode("ascii")
        assert len(label) < NAME_BYTES
        codes = q.tobytes() + b"\0" * ((-n) % 4)
        blobs.append(header + label.ljust(NAME_BYTES, b"\0") + x.astype("<f4").tobytes() + codes +
                     absmax.astype("<f4").tobytes() + deq.astype("<f4").tobytes())
        print("%-22s n %5d blocks %d absmax %s" % (name, n, blocks, " ".join("%.6g" % a for a in absmax)))

    head = struct.pack("<%di" % HEADER_INTS, QUANT8_REF_MAGIC, QUANT8_REF_VERSION, len(vecs), BLOCK, MAP_SIZE,
                       0, 0, 0)
    body = b"".join(m.astype("<f4").tobytes() for m in (maps[True], maps[False], searched[True], searched[False]))
    data = head + body + b"".join(blobs)
    assert len(data) < MAX_FILE_BYTES, "reference file too large: %d bytes" % len(data)
    with open(args.out, "wb") as f:
        f.write(data)
    print("wrote %s (%d bytes, %d vectors, bitsandbytes %s, torch %s)"
          % (args.out, len(data), len(vecs), bitsandbytes.__version__, torch.__version__))


if __name__ == "__main__":
    main()
