"""
Writes the model reference files that test_subtrack.c checks the C LLaMA against.

An independent implementation (Hugging Face transformers.LlamaForCausalLM in fp32,
eager attention, gradients from torch.autograd) runs one forward and backward pass
of a small model on a fixed batch, and the weights, tokens, logits, loss and every
gradient go into one file. The format is defined in dev/reference/README.md.

usage:
    python dev/reference/model_reference.py --all       # regenerate the committed set
    python dev/reference/model_reference.py --name mine --V 512 --C 96 --F 256 \
        --NH 4 --L 3 --B 2 --T 24 --max_seq_len 64      # writes dev/reference/model_mine.bin
"""

import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

MODEL_REF_MAGIC = 20261101
MODEL_REF_VERSION = 1
HEADER_INTS = 32
IGNORE_INDEX = -100
RMS_NORM_EPS = 1e-6
ROPE_THETA = 10000.0
INIT_STD = 0.02        # N(0, 0.02) for every matrix and the embedding
NORM_WEIGHT_STD = 0.1  # norm weights are 1 + 0.1*N(0,1), not exactly 1, so norm-weight bugs show
IGNORE_FRACTION = 0.1  # share of targets set to IGNORE_INDEX, so the ignore path is tested
MAX_FILE_BYTES = 2 * 1024 * 1024  # committed files stay small

REFERENCE_DIR = os.path.dirname(os.path.abspath(__file__))

# the committed set; "awkward" has no size that is a multiple of 8 (tiling and tail bugs)
COMMITTED_CONFIGS = {
    "tiny":    dict(V=256, C=64, F=176, NH=4, L=2, B=2, T=16, max_seq_len=64, seed=1337),
    "awkward": dict(V=300, C=72, F=200, NH=3, L=2, B=3, T=13, max_seq_len=32, seed=1337),
}

# (name, shape, hf name pattern) in the order of ParameterTensors in train_llama_subtrack.c.
# layer tensors are stacked on L; "{i}" is the layer index. matrices are in nn.Linear
# layout (out_features, in_features), the same as HF stores them.
def parameter_table(V, C, F_, L):
    return [
        ("tok_embeddings", (V, C),     "model.embed_tokens.weight"),
        ("attn_norm",      (L, C),     "model.layers.{i}.input_layernorm.weight"),
        ("wq",             (L, C, C),  "model.layers.{i}.self_attn.q_proj.weight"),
        ("wk",             (L, C, C),  "model.layers.{i}.self_attn.k_proj.weight"),
        ("wv",             (L, C, C),  "model.layers.{i}.self_attn.v_proj.weight"),
        ("wo",             (L, C, C),  "model.layers.{i}.self_attn.o_proj.weight"),
        ("mlp_norm",       (L, C),     "model.layers.{i}.post_attention_layernorm.weight"),
        ("w_gate",         (L, F_, C), "model.layers.{i}.mlp.gate_proj.weight"),
        ("w_up",           (L, F_, C), "model.layers.{i}.mlp.up_proj.weight"),
        ("w_down",         (L, C, F_), "model.layers.{i}.mlp.down_proj.weight"),
        ("final_norm",     (C,),       "model.norm.weight"),
        ("lm_head",        (V, C),     "lm_head.weight"),
    ]

def is_norm(name):
    return name.endswith("norm")

def num_params_of(V, C, F_, L):
    return sum(math.prod(shape) for _, shape, _ in parameter_table(V, C, F_, L))

def build_llama_model(V, C, F_, NH, L, max_seq_len):
    """the fp32 eager HF LLaMA of this project's architecture (HF's own random init)"""
    config = LlamaConfig(
        vocab_size=V, hidden_size=C, intermediate_size=F_,
        num_attention_heads=NH, num_key_value_heads=NH, num_hidden_layers=L,
        max_position_embeddings=max_seq_len, rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        hidden_act="silu", attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        tie_word_embeddings=False, use_cache=False, dtype=torch.float32,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    # guard against silent config drift between transformers versions (the rope argument
    # was renamed in v5): check what the model really uses
    HS = C // NH
    expect_inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, HS, 2, dtype=torch.float64) / HS))
    got_inv_freq = model.model.rotary_emb.inv_freq.double()
    assert torch.allclose(got_inv_freq, expect_inv_freq, rtol=1e-6), "rope theta is not 10000"
    assert model.model.norm.variance_epsilon == RMS_NORM_EPS, "rms_norm_eps is not 1e-6"
    assert model.config._attn_implementation == "eager", "attention is not eager"
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr(), "lm_head is tied"
    return model

def init_parameters(V, C, F_, L, gen):
    """our own seeded init, tensor by tensor in parameter-table order"""
    tensors = {}
    for name, shape, _ in parameter_table(V, C, F_, L):
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        tensors[name] = 1.0 + NORM_WEIGHT_STD * noise if is_norm(name) else INIT_STD * noise
    return tensors

def load_into_model(model, tensors, V, C, F_, L):
    """copy the table tensors into the HF parameters; every HF parameter must be hit once"""
    hf_params = dict(model.named_parameters())
    used = set()
    with torch.no_grad():
        for name, shape, pattern in parameter_table(V, C, F_, L):
            for hf_name, piece in table_pieces(tensors[name], pattern, L):
                assert hf_params[hf_name].shape == piece.shape, f"{hf_name}: shape mismatch"
                hf_params[hf_name].copy_(piece)
                used.add(hf_name)
    unused = set(hf_params) - used
    assert not unused, f"HF parameters missing from the table (biases?): {sorted(unused)}"

def table_pieces(tensor, pattern, L):
    """(hf name, slice) pairs: one per layer for stacked tensors, else the whole tensor"""
    if "{i}" in pattern:
        return [(pattern.format(i=i), tensor[i]) for i in range(L)]
    return [(pattern, tensor)]

def gather_grads(model, V, C, F_, L):
    """the gradients in parameter-table order, stacked on L"""
    hf_params = dict(model.named_parameters())
    grads = {}
    for name, shape, pattern in parameter_table(V, C, F_, L):
        if "{i}" in pattern:
            grads[name] = torch.stack([hf_params[pattern.format(i=i)].grad for i in range(L)])
        else:
            grads[name] = hf_params[pattern].grad.clone()
        assert tuple(grads[name].shape) == shape, f"{name}: grad shape"
    return grads

def make_batch(V, B, T, gen):
    """inputs (B, T) and next-token targets (B, T) from a (B, T+1) window, ~10% ignored"""
    window = torch.randint(0, V, (B, T + 1), generator=gen, dtype=torch.int64)
    # clone, not contiguous(): for B == 1 the slices are already contiguous views of window,
    # and masking the targets would then write -100 into the inputs
    inputs = window[:, :-1].clone()
    targets = window[:, 1:].clone()
    # an exact count, at least one, and never all, so both paths always run
    num_ignored = min(B * T - 1, max(1, round(IGNORE_FRACTION * B * T)))
    ignored = torch.randperm(B * T, generator=gen)[:num_ignored]
    targets.view(-1)[ignored] = IGNORE_INDEX
    assert int(inputs.min()) >= 0, "masking the targets changed the inputs"
    return inputs, targets

def llama_loss(model, inputs, targets):
    """mean cross-entropy over non-ignored targets; also returns the logits (B, T, V)"""
    B, T = inputs.shape
    position_ids = torch.arange(T, dtype=torch.int64).unsqueeze(0).expand(B, T)
    logits = model(input_ids=inputs, position_ids=position_ids).logits
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=IGNORE_INDEX)
    return logits, loss

def float_bits(x):
    return int(np.array([x], dtype="<f4").view("<i4")[0])

def model_reference_bytes(cfg, tensors, inputs, targets, logits, loss, grads):
    V, C, F_, NH, L = cfg["V"], cfg["C"], cfg["F"], cfg["NH"], cfg["L"]
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:14] = [MODEL_REF_MAGIC, MODEL_REF_VERSION, V, C, F_, NH, L, cfg["max_seq_len"],
                   cfg["B"], cfg["T"], IGNORE_INDEX, num_params_of(V, C, F_, L),
                   float_bits(RMS_NORM_EPS), float_bits(ROPE_THETA)]
    order = [name for name, _, _ in parameter_table(V, C, F_, L)]
    def flat(ts):
        return np.concatenate([ts[name].detach().numpy().astype("<f4").ravel() for name in order])
    parts = [
        header,
        flat(tensors),
        inputs.numpy().astype("<i4").ravel(),
        targets.numpy().astype("<i4").ravel(),
        logits.detach().numpy().astype("<f4").ravel(),
        np.array([loss.item()], dtype="<f4"),
        flat(grads),
    ]
    return b"".join(p.tobytes() for p in parts)

def read_model_reference(path):
    """parse a model reference file into a dict; checks magic, version and size"""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER_INTS * 4:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than the header")
    header = np.frombuffer(data, dtype="<i4", count=HEADER_INTS)
    if header[0] != MODEL_REF_MAGIC:
        raise ValueError(f"{path}: bad magic {header[0]}, expected {MODEL_REF_MAGIC}")
    if header[1] != MODEL_REF_VERSION:
        raise ValueError(f"{path}: version {header[1]}, expected {MODEL_REF_VERSION}")
    V, C, F_, NH, L, max_seq_len, B, T, ignore_index, num_params = (int(x) for x in header[2:12])
    ref = dict(V=V, C=C, F=F_, NH=NH, L=L, max_seq_len=max_seq_len, B=B, T=T,
               ignore_index=ignore_index, num_params=num_params,
               rms_norm_eps=float(header[12:13].view("<f4")[0]),
               rope_theta=float(header[13:14].view("<f4")[0]))
    if num_params != num_params_of(V, C, F_, L):
        raise ValueError(f"{path}: num_params {num_params} does not match the config")
    sections = [("params", "<f4", num_params), ("inputs", "<i4", B * T),
                ("targets", "<i4", B * T), ("logits", "<f4", B * T * V),
                ("loss", "<f4", 1), ("grads", "<f4", num_params)]
    expect_bytes = 4 * (HEADER_INTS + sum(n for _, _, n in sections))
    if len(data) != expect_bytes:
        raise ValueError(f"{path}: {len(data)} bytes, the header implies {expect_bytes}")
    offset = HEADER_INTS * 4
    for key, dtype, n in sections:
        ref[key] = np.frombuffer(data, dtype=dtype, count=n, offset=offset)
        offset += 4 * n
    ref["logits"] = ref["logits"].reshape(B, T, V)
    ref["loss"] = float(ref["loss"][0])
    return ref

def write_model_reference(cfg, out_path):
    V, C, F_, NH, L = cfg["V"], cfg["C"], cfg["F"], cfg["NH"], cfg["L"]
    B, T, max_seq_len, seed = cfg["B"], cfg["T"], cfg["max_seq_len"], cfg["seed"]
    if min(V, C, F_, NH, L, B, T) <= 0:
        sys.exit(f"error: every size must be positive, got {cfg}")
    if C % NH != 0 or (C // NH) % 2 != 0:
        sys.exit(f"error: C={C} must split into NH={NH} heads of even size (rope pairs)")
    if T > max_seq_len:
        sys.exit(f"error: T={T} is longer than max_seq_len={max_seq_len}")

    model = build_llama_model(V, C, F_, NH, L, max_seq_len)
    tensors = init_parameters(V, C, F_, L, torch.Generator().manual_seed(seed))
    load_into_model(model, tensors, V, C, F_, L)
    inputs, targets = make_batch(V, B, T, torch.Generator().manual_seed(seed + 1))

    model.zero_grad(set_to_none=True)
    logits, loss = llama_loss(model, inputs, targets)
    loss.backward()
    assert math.isfinite(loss.item()), f"loss is not finite: {loss.item()}"
    grads = gather_grads(model, V, C, F_, L)

    data = model_reference_bytes(cfg, tensors, inputs, targets, logits, loss, grads)
    with open(out_path, "wb") as f:
        f.write(data)

    # read it back with the documented layout, and compare with what went in
    ref = read_model_reference(out_path)
    order = [name for name, _, _ in parameter_table(V, C, F_, L)]
    assert np.array_equal(ref["params"], np.concatenate([tensors[n].numpy().ravel() for n in order]))
    assert np.array_equal(ref["grads"], np.concatenate([grads[n].numpy().ravel() for n in order]))
    assert np.array_equal(ref["inputs"], inputs.numpy().ravel())
    assert np.array_equal(ref["targets"], targets.numpy().ravel())
    assert np.array_equal(ref["logits"], logits.detach().numpy())
    assert ref["loss"] == np.float32(loss.item())
    assert os.path.getsize(out_path) == len(data)

    size = os.path.getsize(out_path)
    num_ignored = int((targets == IGNORE_INDEX).sum())
    shown = os.path.relpath(out_path)
    shown = out_path if shown.startswith("..") else shown
    print(f"{shown}: loss {ref['loss']:.6f} | V {V} C {C} F {F_} NH {NH} "
          f"L {L} B {B} T {T} max_seq_len {max_seq_len} | params {ref['num_params']} | "
          f"ignored targets {num_ignored}/{B * T} | {size} bytes")
    return size

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="regenerate the committed set")
    parser.add_argument("--name", type=str, help="writes model_<name>.bin unless --out is given")
    parser.add_argument("--out", type=str, help="output path")
    parser.add_argument("--V", type=int, default=256)
    parser.add_argument("--C", type=int, default=64)
    parser.add_argument("--F", type=int, default=176)
    parser.add_argument("--NH", type=int, default=4)
    parser.add_argument("--L", type=int, default=2)
    parser.add_argument("--B", type=int, default=2)
    parser.add_argument("--T", type=int, default=16)
    parser.add_argument("--max_seq_len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()

    # one thread and deterministic kernels: the same bytes on every rerun
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    if args.all:
        for name, cfg in COMMITTED_CONFIGS.items():
            size = write_model_reference(cfg, os.path.join(REFERENCE_DIR, f"model_{name}.bin"))
            assert size < MAX_FILE_BYTES, f"model_{name}.bin is {size} bytes, over the 2 MB limit"
        return
    if not args.name and not args.out:
        parser.error("give --all, or --name and/or --out")
    cfg = dict(V=args.V, C=args.C, F=args.F, NH=args.NH, L=args.L, B=args.B, T=args.T,
               max_seq_len=args.max_seq_len, seed=args.seed)
    out = args.out or os.path.join(REFERENCE_DIR, f"model_{args.name}.bin")
    write_model_reference(cfg, out)

if __name__ == "__main__":
    main()
