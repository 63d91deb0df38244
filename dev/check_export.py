"""
Checks dev/export_hf.py end to end: the Hugging Face model exported from a
checkpoint must give the same logits as the C forward pass of that checkpoint.

usage:
    gcc -O2 -fopenmp -o dev/export_logits dev/export_logits.c -lm   # once
    python dev/check_export.py CKPT_DIR [--B 2] [--T 32] [--seed 0]

It exports CKPT_DIR to a temporary directory with export_hf.export_checkpoint,
loads it with transformers.LlamaForCausalLM.from_pretrained (float32, eager
attention), draws a fixed random batch of token ids, runs dev/export_logits (the
C forward) and the HF model on it, and compares the logits. Exit 0 on pass,
1 on failure.

Tolerance: max |C - HF| over all logits, divided by the logits' scale (their
largest magnitude), at most 1e-5. Both sides compute in float32 from the same
float32 weights; only the order of summation differs (blocked gemm and OpenMP
reductions in C, torch's kernels in HF), which moves the result by a few fp32
ulps per layer. test_subtrack.c measures ~5e-7 on its model reference, so 1e-5
leaves a wide margin, while any mapping bug (a swapped or transposed matrix, a
wrong norm, a wrong rope theta or eps) moves the logits by far more.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_hf  # noqa: E402  (the script next to this one)

REPO_ROOT = export_hf.REPO_ROOT
EXPORT_LOGITS = os.path.join(REPO_ROOT, "dev", "export_logits")
EXPORT_LOGITS_SOURCES = [os.path.join(REPO_ROOT, "dev", "export_logits.c"),
                         os.path.join(REPO_ROOT, "train_llama_subtrack.c")]
BUILD_COMMAND = "gcc -O2 -fopenmp -o dev/export_logits dev/export_logits.c -lm"
RELATIVE_TOLERANCE = 1e-5   # fp32 on both sides, different summation order (see the docstring)
DEFAULT_B = 2
MAX_DEFAULT_T = 32


def fail(msg):
    print(f"check_export.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def c_logits(ckpt_file, tokens, work_dir):
    """the C forward pass: tokens (B, T) int32 -> logits (B, T, V) float32"""
    B, T = tokens.shape
    tokens_path = os.path.join(work_dir, "tokens.bin")
    logits_path = os.path.join(work_dir, "logits_c.bin")
    with open(tokens_path, "wb") as f:
        f.write(np.array([B, T], dtype="<i4").tobytes())
        f.write(tokens.astype("<i4").tobytes())
    run = subprocess.run([EXPORT_LOGITS, ckpt_file, tokens_path, logits_path], capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"{EXPORT_LOGITS} failed (exit {run.returncode}):\n{run.stderr.strip()}")
    return np.fromfile(logits_path, dtype="<f4")


def hf_logits(hf_dir, tokens):
    """the Hugging Face forward pass, float32, eager attention, positions 0..T-1"""
    import torch
    import transformers
    from transformers import LlamaForCausalLM
    transformers.utils.logging.disable_progress_bar()  # the per-tensor loading bar is noise here
    model, loading = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32,
                                                      output_loading_info=True)
    # every HF weight must come from the file, none left at HF's random init
    problems = {k: v for k, v in loading.items() if v}
    if problems:
        fail(f"transformers loaded {hf_dir} with problems: {problems}")
    # the C model has a separate lm_head; a tied one would only match by accident
    if model.config.tie_word_embeddings or model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        fail(f"{hf_dir}: lm_head is tied to embed_tokens; config.json must say tie_word_embeddings false")
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.astype(np.int64)), use_cache=False)
    return out.logits.float().numpy()


def check(ckpt, B, T, seed, keep=None):
    """returns (passed, relative error)"""
    if not os.path.isfile(EXPORT_LOGITS):
        fail(f"{EXPORT_LOGITS} is missing; build it from the repository root with:\n    {BUILD_COMMAND}")
    newest_source = max(os.path.getmtime(p) for p in EXPORT_LOGITS_SOURCES if os.path.exists(p))
    if os.path.getmtime(EXPORT_LOGITS) < newest_source:
        print(f"warning: {EXPORT_LOGITS} is older than its sources; rebuild it with\n    {BUILD_COMMAND}")
    try:
        info = export_hf.read_checkpoint_header(ckpt)
    except export_hf.ExportError as e:
        fail(str(e))
    if T is None:
        T = min(MAX_DEFAULT_T, info["max_seq_len"])
    if B <= 0 or T <= 0 or T > info["max_seq_len"]:
        fail(f"--B {B} --T {T}: both must be positive and T at most max_seq_len {info['max_seq_len']}")
    V = info["V"]
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, size=(B, T), dtype=np.int32)  # (B, T)
    print(f"checkpoint: {info['path']} (step {info['step']}, V={V} C={info['C']} F={info['F']} "
          f"NH={info['NH']} L={info['L']})")
    print(f"batch:      B={B} T={T} random token ids (seed {seed})")
    with tempfile.TemporaryDirectory(prefix="check_export_") as work_dir:
        hf_dir = keep or os.path.join(work_dir, "hf")
        try:
            export_hf.export_checkpoint(ckpt, hf_dir, tokenizer=None, log=lambda s: print(f"export:     {s}"))
        except export_hf.ExportError as e:
            fail(str(e))
        logits_c = c_logits(info["path"], tokens, work_dir)
        if logits_c.size != B * T * V:
            fail(f"{EXPORT_LOGITS} wrote {logits_c.size} logits, expected B*T*V = {B * T * V}")
        logits_c = logits_c.reshape(B, T, V)
        logits_hf = hf_logits(hf_dir, tokens)
    if logits_hf.shape != logits_c.shape:
        fail(f"HF logits have shape {logits_hf.shape}, the C ones {logits_c.shape}")
    if not (np.isfinite(logits_c).all() and np.isfinite(logits_hf).all()):
        fail("NaN or Inf in the logits")
    max_abs = float(np.max(np.abs(logits_c.astype(np.float64) - logits_hf.astype(np.float64))))
    scale = float(np.max(np.abs(logits_c)))
    rel = max_abs / scale if scale > 0 else max_abs
    passed = rel <= RELATIVE_TOLERANCE
    print(f"logits:     max |C - HF| = {max_abs:.3e}, scale max |logit| = {scale:.3f}, "
          f"relative {rel:.3e} (tolerance {RELATIVE_TOLERANCE:.0e})")
    print("PASS: the exported model matches the C forward pass" if passed else
          "FAIL: the exported model's logits differ from the C forward pass")
    return passed, rel


def main(argv=None):
    ap = argparse.ArgumentParser(description="check that export_hf.py's output gives the C model's logits")
    ap.add_argument("checkpoint", help="a --save_dir of a training run (holding checkpoint.bin), or the file")
    ap.add_argument("--B", type=int, default=DEFAULT_B, help=f"batch size (default {DEFAULT_B})")
    ap.add_argument("--T", type=int, default=None, help=f"sequence length (default min({MAX_DEFAULT_T}, max_seq_len))")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random token batch")
    ap.add_argument("--keep", help="export into this directory and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    passed, _ = check(args.checkpoint, args.B, args.T, args.seed, args.keep)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
