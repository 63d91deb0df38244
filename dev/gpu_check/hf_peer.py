"""hf_peer.py: the peer that dev/gpu_check.sh measures our CUDA trainer against.

Hugging Face LlamaForCausalLM in bf16 with SDPA attention and torch's fused
AdamW, at the authors' model configs and batch sizes (T=256), timed per
optimizer step (accum micro steps of forward + backward, then AdamW) on the
same GPU. No network: the model is built from a LlamaConfig with random
weights, and the tokens are random ids.

    python3 dev/gpu_check/hf_peer.py                          # 60m, 350m, 1b on cuda
    python3 dev/gpu_check/hf_peer.py --configs 60m --iters 10
    python3 dev/gpu_check/hf_peer.py --configs kjv_test --device cpu --B 2 --T 16 --accum 1   # smoke test

bf16 as in the authors' scripts: the weights themselves are bf16 (model.to
(bfloat16)), so AdamW's states are bf16 too; our trainer keeps fp32 masters
and states, so the peer carries less memory per parameter than we do.

Prints one line per config, for dev/gpu_check/report.py:
    PEER config=60m B=128 T=256 accum=2 step_ms=.. tok_s=.. mfu_pct=.. peak_alloc_mib=.. peak_reserved_mib=.. ...
or SKIPPED config=.. reason=.. when it does not fit in memory (or fails).
"""

import argparse
import gc
import statistics
import sys
import time

# the authors' configs (vocab 32000, untied, rms_norm_eps 1e-6) with the
# paper's batch per GPU and total batch; tiny ones for smoke tests
CONFIGS = {
    "60m": dict(V=32000, C=512, F=1376, NH=8, L=8, B=128, total=256),
    "350m": dict(V=32000, C=1024, F=2736, NH=16, L=24, B=64, total=128),
    "1b": dict(V=32000, C=2048, F=5461, NH=32, L=24, B=8, total=16),
    "kjv_test": dict(V=4096, C=32, F=64, NH=2, L=2, B=2, total=4),
    "tiny": dict(V=256, C=64, F=176, NH=4, L=2, B=2, total=4),
}

# dense bf16 peaks, TFLOP/s, matched in order on the lowercase device name
# (the same table as dev/bench_gpu.cu, so both MFUs use one peak)
DEVICE_PEAKS = [
    ("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h200 nvl", 835.0), ("gh200", 989.0),
    ("h100", 989.0), ("h200", 989.0), ("a100", 312.0),
]


def flops_per_token(c, T):
    # as dev/bench_gpu.cu: 6 N for the matrices (lm_head included, not the
    # embedding lookup) plus 12 L C T for attention over the full T x T square
    n = c["L"] * (4 * c["C"] ** 2 + 3 * c["C"] * c["F"]) + c["V"] * c["C"]
    return 6.0 * n + 12.0 * c["L"] * c["C"] * T


def device_peak(torch, device):
    if device != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(0).lower()
    for key, tflops in DEVICE_PEAKS:
        if key in name:
            return tflops * 1e12
    return 0.0


def build(torch, c, device, attn):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(
        vocab_size=c["V"], hidden_size=c["C"], intermediate_size=c["F"], num_hidden_layers=c["L"],
        num_attention_heads=c["NH"], num_key_value_heads=c["NH"], max_position_embeddings=1024,
        rms_norm_eps=1e-6, tie_word_embeddings=False, use_cache=False, hidden_act="silu",
        attention_bias=False, mlp_bias=False, attn_implementation=attn)
    # built on the device in bf16 directly: no fp32 copy of a 1B model on the way
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.to(device=device, dtype=torch.bfloat16)
    model.train()
    return model, model.config._attn_implementation


def make_optimizer(torch, model):
    # fused AdamW; a torch without a fused kernel for this device falls back to foreach, and says so
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True), "fused"
    except (RuntimeError, ValueError, TypeError) as e:
        print(f"note: fused AdamW unavailable ({e}); using foreach", flush=True)
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, foreach=True), "foreach"


def run_config(torch, name, c, args):
    B = args.B or c["B"]
    T = args.T
    accum = args.accum or c["total"] // c["B"]
    dev = args.device
    if dev == "cuda":
        torch.cuda.empty_cache()
    model, attn = build(torch, c, dev, args.attn)
    opt, opt_kind = make_optimizer(torch, model)
    g = torch.Generator(device="cpu").manual_seed(1337)
    ids = [torch.randint(0, c["V"], (B, T), generator=g).to(dev) for _ in range(accum)]
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()

    def step():
        for x in ids:
            out = model(input_ids=x, labels=x)
            (out.loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    times = []
    loss = None
    for i in range(args.warmup + args.iters):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        if dev == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    tok_s = accum * B * T / (ms / 1e3)
    peak = device_peak(torch, dev)
    mfu = 100.0 * tok_s * flops_per_token(c, T) / peak if peak > 0 else -1.0
    if dev == "cuda":
        alloc = torch.cuda.max_memory_allocated() / 2**20
        reserved = torch.cuda.max_memory_reserved() / 2**20
        weights = base / 2**20
    else:
        alloc = reserved = weights = -1.0
    print(f"PEER config={name} B={B} T={T} accum={accum} step_ms={ms:.4f} tok_s={tok_s:.1f} mfu_pct={mfu:.2f} "
          f"peak_alloc_mib={alloc:.1f} peak_reserved_mib={reserved:.1f} weights_mib={weights:.1f} "
          f"loss={float(loss):.4f} attn={attn} adamw={opt_kind} dtype=bfloat16 device={dev} "
          f"timed={len(times)}", flush=True)
    del model, opt, ids


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="60m,350m,1b", help="comma-separated: " + ", ".join(CONFIGS))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--B", type=int, default=0, help="batch per micro step (default: the paper's)")
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--accum", type=int, default=0, help="micro steps per optimizer step (default: total / B)")
    p.add_argument("--iters", type=int, default=5, help="timed optimizer steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    args = p.parse_args()
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or args.iters < 1 or args.warmup < 0:
        p.error(f"unknown config(s) {unknown} (known: {', '.join(CONFIGS)})" if unknown else "--iters >= 1, --warmup >= 0")

    import torch
    import transformers
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: hf_peer.py: torch sees no CUDA device (use --device cpu for a smoke test)", file=sys.stderr)
        return 1
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"peer: torch {torch.__version__}, transformers {transformers.__version__}, {where}", flush=True)
    failed = 0
    for name in names:
        try:
            run_config(torch, name, CONFIGS[name], args)
        except torch.cuda.OutOfMemoryError as e:
            # out of memory is an answer, not a crash: say so and go on
            print(f"SKIPPED config={name} reason=does not fit in memory at this batch ({str(e).splitlines()[0]})",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on to the next config
            print(f"SKIPPED config={name} reason=failed: {type(e).__name__}: {e}", flush=True)
            failed += 1
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
