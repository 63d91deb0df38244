"""
Converts a train_llama_subtrack checkpoint into a Hugging Face model directory
that transformers.LlamaForCausalLM.from_pretrained loads as is.

usage:
    python dev/export_hf.py CKPT_DIR --out HF_DIR [--tokenizer PATH | --no_tokenizer]

CKPT_DIR is a --save_dir of a training run (the file CKPT_DIR/checkpoint.bin;
the path of the file itself works too). HF_DIR gets:
    config.json        LlamaConfig, in the form transformers 5.x writes
    model.safetensors  the weights, float32, with Hugging Face names
    tokenizer.model    a copy of the SentencePiece model (see --tokenizer)

Only the header, the settings and the parameter part of the checkpoint are
read (the optimizer state that follows is not needed), through a memory map,
so models larger than RAM export too. A sharded checkpoint (written by
--zero_stage 1 on several GPUs: checkpoint.bin is then a manifest, and each
rank's weights and states are in shards-*/rank-R-of-N.bin beside it) is read
too: its pieces' weights are gathered into one array in memory. The file's CRC32C is checked when the
`crc32c` package is installed (pip install crc32c; it reads the whole file),
and said to be unchecked otherwise. Needs numpy only; dev/check_export.py
checks the result against the C forward pass with transformers, whose C side
(dev/export_logits) always checks the CRC.

The checkpoint format is the comment above `#define CHECKPOINT_MAGIC` in
train_llama_subtrack.c; the parameter table is `parameter_table()` there and its
Hugging Face names are listed in dev/reference/README.md.
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

CHECKPOINT_MAGIC = 20261105
CHECKPOINT_MANIFEST_MAGIC = 20261203  # a sharded checkpoint's manifest
CHECKPOINT_SHARD_MAGIC = 20261204
CHECKPOINT_SHARD_INTS = 8
CHECKPOINT_PIECE_INTS = 6  # tensor, layer, first, count, owner, state floats
CHECKPOINT_VERSION = 2
CHECKPOINT_TRAILER_MAGIC = 0x4352433332435452
TRAILER_BYTES = 16
CHECKPOINT_HEADER_INTS = 64  # int64 slots
CHECKPOINT_FILE = "checkpoint.bin"
HEADER_BYTES = CHECKPOINT_HEADER_INTS * 8
FLOAT_BYTES = 4

# header slots (int64 each)
H_MAGIC, H_VERSION, H_V, H_C, H_F, H_NH, H_L, H_MAX_SEQ_LEN = range(8)
H_NORM_EPS_BITS, H_ROPE_THETA_BITS = 8, 9        # float32 bits
H_LOW_RANK, H_METHOD, H_RANK, H_STEP = 10, 11, 12, 13   # optimizer: 0 adamw/adam, 1 low_rank_adamw, 2 sgd, 3 adafactor,
                                                  # 4 low_rank_adafactor, 5 adam8bit
H_NUM_PARAMS, H_NUM_ADAM, H_LOWRANK_FLOATS = 14, 15, 16
H_Q8_BYTES, H_Q8_BLOCKS = 25, 26                  # 8-bit optimizer states: codes, then float32 block scales
H_ADAFACTOR_STATS = 30                            # --optimizer adafactor: floats of its statistics
H_SETTINGS_BYTES = 24                             # the settings text after the header, padded to 8
H_RANKS, H_PIECES, H_ID = 27, 28, 29              # a manifest's: the ranks (shards), the pieces, the save's id

# the tokenizer's special ids (data/README.md); the C trainer writes BOS = 1 before every document
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(REPO_ROOT, "data", "tokenizer.model")


class ExportError(Exception):
    """a problem with the input, with a message for the user"""


def parameter_table(V, C, F, L):
    """(name, shape, hf name) in the order of parameter_table() in train_llama_subtrack.c.
    layer tensors are stacked on L ("{i}" is the layer index); matrices are in nn.Linear
    layout (out_features, in_features), which is also how Hugging Face stores them."""
    return [
        ("tok_embeddings", (V, C),    "model.embed_tokens.weight"),
        ("attn_norm",      (L, C),    "model.layers.{i}.input_layernorm.weight"),
        ("wq",             (L, C, C), "model.layers.{i}.self_attn.q_proj.weight"),
        ("wk",             (L, C, C), "model.layers.{i}.self_attn.k_proj.weight"),
        ("wv",             (L, C, C), "model.layers.{i}.self_attn.v_proj.weight"),
        ("wo",             (L, C, C), "model.layers.{i}.self_attn.o_proj.weight"),
        ("mlp_norm",       (L, C),    "model.layers.{i}.post_attention_layernorm.weight"),
        ("w_gate",         (L, F, C), "model.layers.{i}.mlp.gate_proj.weight"),
        ("w_up",           (L, F, C), "model.layers.{i}.mlp.up_proj.weight"),
        ("w_down",         (L, C, F), "model.layers.{i}.mlp.down_proj.weight"),
        ("final_norm",     (C,),      "model.norm.weight"),
        ("lm_head",        (V, C),    "lm_head.weight"),
    ]


def float32_from_bits(bits):
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def shortest_float32(x):
    """the shortest decimal that reads back as the same float32 (1e-06, not 9.99999997e-07)"""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-")) if x != 0 else 0.0


def checkpoint_path(path):
    return os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path


def read_checkpoint_header(path):
    """validates the header and the file size; returns a dict describing the checkpoint"""
    path = checkpoint_path(path)
    if not os.path.exists(path):
        raise ExportError(f"{path} does not exist; pass a --save_dir of a training run "
                          f"(the directory that holds {CHECKPOINT_FILE})")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise ExportError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header; "
                          f"the file is corrupt or not a checkpoint")
    with open(path, "rb") as f:
        h = np.frombuffer(f.read(HEADER_BYTES), dtype="<i8")
    if h[H_MAGIC] not in (CHECKPOINT_MAGIC, CHECKPOINT_MANIFEST_MAGIC):
        raise ExportError(f"{path}: magic {h[H_MAGIC]}, expected {CHECKPOINT_MAGIC} (or {CHECKPOINT_MANIFEST_MAGIC}, "
                          f"a sharded checkpoint's manifest); not a checkpoint of train_llama_subtrack")
    sharded = h[H_MAGIC] == CHECKPOINT_MANIFEST_MAGIC
    if h[H_VERSION] != CHECKPOINT_VERSION:
        raise ExportError(f"{path}: format version {h[H_VERSION]}, this script reads version "
                          f"{CHECKPOINT_VERSION}; use the export_hf.py of the trainer that wrote it")
    V, C, F, NH, L, max_seq_len = (int(h[i]) for i in (H_V, H_C, H_F, H_NH, H_L, H_MAX_SEQ_LEN))
    if min(V, C, F, NH, L, max_seq_len) <= 0 or C % NH != 0 or (C // NH) % 2 != 0:
        raise ExportError(f"{path}: impossible model config in the header (V={V} C={C} F={F} NH={NH} "
                          f"L={L} max_seq_len={max_seq_len}); the file is corrupt")
    norm_eps = float32_from_bits(h[H_NORM_EPS_BITS])
    rope_theta = float32_from_bits(h[H_ROPE_THETA_BITS])
    if not (norm_eps > 0 and math.isfinite(norm_eps) and rope_theta > 0 and math.isfinite(rope_theta)):
        raise ExportError(f"{path}: rms_norm_eps={norm_eps} rope_theta={rope_theta} in the header; "
                          f"the file is corrupt")
    num_params, num_adam, lowrank_floats = (int(h[i]) for i in (H_NUM_PARAMS, H_NUM_ADAM, H_LOWRANK_FLOATS))
    settings_bytes = int(h[H_SETTINGS_BYTES])
    if not 0 < settings_bytes <= 4096:
        raise ExportError(f"{path}: settings size {settings_bytes} in the header; the file is corrupt")
    params_offset = HEADER_BYTES + (settings_bytes + 7) // 8 * 8
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        settings = f.read(settings_bytes).decode("utf-8", "replace")
    table = parameter_table(V, C, F, L)
    expect_params = sum(math.prod(shape) for _, shape, _ in table)
    if num_params != expect_params:
        raise ExportError(f"{path}: header says {num_params} parameters, the config V={V} C={C} F={F} "
                          f"L={L} has {expect_params}; the file is corrupt")
    q8_bytes, q8_blocks = int(h[H_Q8_BYTES]), int(h[H_Q8_BLOCKS])
    if num_adam < 0 or lowrank_floats < 0 or q8_bytes < 0 or q8_blocks < 0:
        raise ExportError(f"{path}: negative optimizer sizes in the header; the file is corrupt")
    pad8 = lambda n: (n + 7) // 8 * 8
    ranks, num_pieces = int(h[H_RANKS]), int(h[H_PIECES])
    if sharded and not (0 < ranks <= 100000 and 0 < num_pieces <= 1 << 24):
        raise ExportError(f"{path}: {ranks} ranks and {num_pieces} pieces in the manifest; the file is corrupt")
    if sharded:
        expect_size = params_offset + 8 * CHECKPOINT_PIECE_INTS * num_pieces + TRAILER_BYTES
    else:
        # the moments' floats: sgd keeps one; (low-rank) adafactor its first moment (maybe none) and its statistics
        adafactor = num_adam + int(h[H_ADAFACTOR_STATS])
        moment_floats = {2: num_adam, 3: adafactor, 4: adafactor}.get(int(h[H_LOW_RANK]), 2 * num_adam)
        expect_size = (params_offset + FLOAT_BYTES * (num_params + moment_floats + lowrank_floats)
                       + pad8(q8_bytes) + pad8(FLOAT_BYTES * q8_blocks) + TRAILER_BYTES)
    if size != expect_size:
        raise ExportError(f"{path}: {size} bytes, the header says {expect_size} "
                          f"({'truncated' if size < expect_size else 'trailing data'}); the file is corrupt "
                          f"(an interrupted copy?)")
    crc_checked = verify_trailer(path, size)
    shards = None
    if sharded:
        with open(path, "rb") as f:
            f.seek(params_offset)
            pieces = np.frombuffer(f.read(8 * CHECKPOINT_PIECE_INTS * num_pieces), dtype="<i8")
        pieces = pieces.reshape(num_pieces, CHECKPOINT_PIECE_INTS)
        check_pieces(path, pieces, table, ranks)
        shards = dict(ranks=ranks, pieces=pieces, id=int(h[H_ID]),
                      dir=os.path.join(os.path.dirname(path), f"shards-{int(h[H_STEP]):08d}-{int(h[H_ID]):012x}"))
        crc_checked = crc_checked and all(verify_shard(path, shards, r, int(h[H_STEP])) for r in range(ranks))
    return dict(path=path, shards=shards, V=V, C=C, F=F, NH=NH, L=L, max_seq_len=max_seq_len, norm_eps=norm_eps,
                params_offset=params_offset, settings=settings, crc_checked=crc_checked,
                rope_theta=rope_theta, num_params=num_params, step=int(h[H_STEP]),
                optimizer={0: "adamw", 1: "low_rank_adamw", 2: "sgd", 3: "adafactor", 4: "low_rank_adafactor",
                           5: "adam8bit"}.get(int(h[H_LOW_RANK]), "?"),
                method="subtrack" if h[H_METHOD] else "galore", rank=int(h[H_RANK]), table=table)


def layers_and_size(shape, hf_name):
    """a table tensor's layers and the floats of one: layer tensors are stacked on their first axis"""
    return (shape[0], math.prod(shape[1:])) if "{i}" in hf_name else (1, math.prod(shape))


def check_pieces(path, pieces, table, ranks):
    """the manifest's pieces must tile every layer of every tensor, in the table's order"""
    k = 0
    for i, (name, shape, hf_name) in enumerate(table):
        layers, per = layers_and_size(shape, hf_name)
        for layer in range(layers):
            pos = 0
            while pos < per:
                if k >= len(pieces):
                    raise ExportError(f"{path}: the pieces end before {name} layer {layer}; the file is corrupt")
                tensor, lay, first, count, owner, state = (int(x) for x in pieces[k])
                if (tensor, lay, first) != (i, layer, pos) or not 0 < count <= per - pos or not 0 <= owner < ranks \
                        or state < 0:
                    raise ExportError(f"{path}: piece {k} does not fit its place ({name} layer {layer} at element "
                                      f"{pos}); the file is corrupt")
                pos += count
                k += 1
    if k != len(pieces):
        raise ExportError(f"{path}: {len(pieces)} pieces, the model has {k}; the file is corrupt")


def shard_path(shards, rank):
    return os.path.join(shards["dir"], f"rank-{rank:05d}-of-{shards['ranks']:05d}.bin")


def verify_shard(manifest, shards, rank, step):
    """checks rank's shard file against the manifest (header, length, trailer; the CRC32C when the
    crc32c package is there); returns whether the CRC could be checked"""
    path = shard_path(shards, rank)
    if not os.path.exists(path):
        raise ExportError(f"{path} does not exist, a shard that {manifest} names; the checkpoint is incomplete "
                          f"(its shards were moved or removed): export a whole copy of the directory")
    mine = shards["pieces"][shards["pieces"][:, 4] == rank]
    floats = int(mine[:, 3].sum() + mine[:, 5].sum())
    want = [CHECKPOINT_SHARD_MAGIC, CHECKPOINT_VERSION, step, rank, shards["ranks"], shards["id"], len(mine), floats]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = np.frombuffer(f.read(8 * CHECKPOINT_SHARD_INTS), dtype="<i8")
    if len(head) != CHECKPOINT_SHARD_INTS or [int(x) for x in head] != want:
        raise ExportError(f"{path}: its header does not match the manifest {manifest}; the file is corrupt or of "
                          f"another save")
    expect = 8 * CHECKPOINT_SHARD_INTS + FLOAT_BYTES * floats + TRAILER_BYTES
    if size != expect:
        raise ExportError(f"{path}: {size} bytes, the manifest says {expect}; the file is corrupt "
                          f"(an interrupted copy?)")
    return verify_trailer(path, size)


def verify_trailer(path, size):
    """the file's trailer must be there; then its CRC32C (verify_crc). returns whether the CRC was checked"""
    with open(path, "rb") as f:
        f.seek(size - TRAILER_BYTES)
        trailer_magic, stored_crc = struct.unpack("<qQ", f.read(TRAILER_BYTES))
    if trailer_magic != CHECKPOINT_TRAILER_MAGIC:
        raise ExportError(f"{path}: no checksum trailer at the end; the file is corrupt (an interrupted copy?)")
    return verify_crc(path, size, stored_crc)


def verify_crc(path, size, stored_crc):
    """checks the file's CRC32C when the crc32c package is there; returns whether it could"""
    try:
        import crc32c
    except ImportError:
        return False
    crc = 0
    with open(path, "rb") as f:
        left = size - TRAILER_BYTES
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            crc = crc32c.crc32c(chunk, crc)
            left -= len(chunk)
    if crc != stored_crc:
        raise ExportError(f"{path}: the checksum does not match (CRC32C {crc:08x}, the file says "
                          f"{stored_crc:08x}); the file is corrupt")
    return True


def gather_shards(info):
    """a sharded checkpoint's weights, in the parameter table's layout: each piece from its rank's shard"""
    shards, table = info["shards"], info["table"]
    params = np.empty(info["num_params"], dtype="<f4")
    starts = np.cumsum([0] + [math.prod(shape) for _, shape, _ in table])
    for rank in range(shards["ranks"]):
        body = np.memmap(shard_path(shards, rank), dtype="<f4", mode="r", offset=8 * CHECKPOINT_SHARD_INTS)
        at = 0
        for tensor, layer, first, count, owner, state in shards["pieces"]:
            if owner != rank:
                continue
            _, per = layers_and_size(*table[tensor][1:])
            begin = int(starts[tensor] + layer * per + first)
            params[begin:begin + count] = body[at:at + count]
            at += int(count + state)
    return params


def read_checkpoint_tensors(info):
    """(hf name, array) pairs, one per Hugging Face tensor, memory-mapped from the params part
    (gathered from the shards of a sharded checkpoint)"""
    if info["shards"] is not None:
        params = gather_shards(info)
    else:
        params = np.memmap(info["path"], dtype="<f4", mode="r", offset=info["params_offset"],
                           shape=(info["num_params"],))
    tensors, offset = [], 0
    for name, shape, hf_name in info["table"]:
        n = math.prod(shape)
        t = params[offset:offset + n].reshape(shape)
        offset += n
        if "{i}" in hf_name:
            tensors += [(hf_name.format(i=i), t[i]) for i in range(info["L"])]
        else:
            tensors.append((hf_name, t))
    return tensors


def hf_config(info):
    """config.json for LlamaForCausalLM, as transformers 5.x writes it (rope in rope_parameters)"""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": info["V"],
        "hidden_size": info["C"],
        "intermediate_size": info["F"],
        "num_attention_heads": info["NH"],
        "num_key_value_heads": info["NH"],  # plain multi-head attention, no GQA
        "head_dim": info["C"] // info["NH"],
        "num_hidden_layers": info["L"],
        "max_position_embeddings": info["max_seq_len"],
        "rms_norm_eps": shortest_float32(info["norm_eps"]),
        "rope_parameters": {"rope_type": "default", "rope_theta": shortest_float32(info["rope_theta"])},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "dtype": "float32",
        "torch_dtype": "float32",  # the name transformers 4.x reads
        "use_cache": True,
    }


def write_safetensors(path, tensors, metadata):
    """streams float32 tensors into the safetensors layout: u64 header length, a JSON header
    (dtype, shape, byte range of each tensor), padded with spaces to 8 bytes, then the data.
    finite values only: a NaN in the weights would make every logit NaN downstream."""
    header, begin = {"__metadata__": metadata}, 0
    for name, t in tensors:
        end = begin + t.size * FLOAT_BYTES
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [begin, end]}
        begin = end
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, t in tensors:
            t = np.ascontiguousarray(t, dtype="<f4")
            if not np.isfinite(t).all():
                f.close()
                os.remove(tmp)
                raise ExportError(f"{name} holds NaN or Inf values; the checkpoint is not usable")
            f.write(t.tobytes())
    os.replace(tmp, path)  # a crash never leaves a half-written model.safetensors


def tokenizer_vocab_size(path):
    """the SentencePiece vocab size, or None when sentencepiece is not installed"""
    try:
        import sentencepiece
    except ImportError:
        return None
    try:
        return sentencepiece.SentencePieceProcessor(model_file=path).vocab_size()
    except (OSError, RuntimeError) as e:
        raise ExportError(f"{path}: not a SentencePiece model ({e})")


def export_checkpoint(ckpt, out_dir, tokenizer=None, tokenizer_explicit=False, log=print):
    """writes config.json, model.safetensors (and tokenizer.model) into out_dir; returns the
    checkpoint info. raises ExportError on bad input; the header and sizes are checked before
    anything is written, and model.safetensors goes through a temporary file."""
    info = read_checkpoint_header(ckpt)
    if tokenizer is not None:
        if not os.path.isfile(tokenizer):
            raise ExportError(f"--tokenizer {tokenizer} does not exist; pass --no_tokenizer to skip it")
        tok_V = tokenizer_vocab_size(tokenizer)
        if tok_V is not None and tok_V != info["V"]:
            msg = (f"tokenizer {tokenizer} has {tok_V} tokens, the model's vocab is {info['V']}; "
                   f"it is not the tokenizer this model was trained with")
            if tokenizer_explicit:
                raise ExportError(msg + " (pass the right --tokenizer, or --no_tokenizer)")
            log(f"note: {msg}, so it is not copied")
            tokenizer = None
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"--out {out_dir} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    tensors = read_checkpoint_tensors(info)
    metadata = {"format": "pt", "source": "train_llama_subtrack checkpoint.bin",
                "step": str(info["step"]), "optimizer": info["optimizer"]}
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(info), f, indent=2)
        f.write("\n")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, os.path.join(out_dir, "tokenizer.model"))
    log(f"read  {info['path']}: step {info['step']}, {info['optimizer']}, V={info['V']} C={info['C']} "
        f"F={info['F']} NH={info['NH']} L={info['L']} max_seq_len={info['max_seq_len']}, "
        f"{info['num_params']} parameters; CRC32C "
        f"{'checked' if info['crc_checked'] else 'not checked (pip install crc32c to check it)'}")
    written = ["config.json", "model.safetensors"] + (["tokenizer.model"] if tokenizer else [])
    log(f"wrote {out_dir}: {', '.join(written)} ({len(tensors)} tensors)")
    return info


def main():
    ap = argparse.ArgumentParser(description="convert a train_llama_subtrack checkpoint to a Hugging Face model dir")
    ap.add_argument("checkpoint", help=f"a --save_dir of a training run (holding {CHECKPOINT_FILE}), or the file")
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--tokenizer", help="SentencePiece model to copy in (default data/tokenizer.model, "
                                        "if it exists and its vocab matches the model)")
    ap.add_argument("--no_tokenizer", action="store_true", help="do not copy a tokenizer")
    args = ap.parse_args()
    if args.tokenizer and args.no_tokenizer:
        ap.error("--tokenizer and --no_tokenizer exclude each other")
    tokenizer = None
    if args.tokenizer:
        tokenizer = args.tokenizer
    elif not args.no_tokenizer and os.path.isfile(DEFAULT_TOKENIZER):
        tokenizer = DEFAULT_TOKENIZER
    try:
        export_checkpoint(args.checkpoint, args.out, tokenizer, tokenizer_explicit=bool(args.tokenizer))
    except ExportError as e:
        print(f"export_hf.py: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
