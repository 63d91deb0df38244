"""
Prepares C4 "en" the way the paper trains on it: the LLaMA tokenizer (32000
ids), documents packed back to back with BOS before each, written as llm.c
shards (the format is in dev/data/shard_format.py).

Online (the default; needs `pip install datasets huggingface_hub`):
    python dev/data/c4.py --out_dir dev/data/c4 --max_tokens 700000000
streams allenai/c4 "en" train and validation from the Hugging Face hub and
tokenizes with the tokenizer.model of --tokenizer (default huggyllama/llama-7b).

Offline:
    python dev/data/c4.py --input c4-train.*.json.gz --val_input c4-validation.*.json.gz \
        --tokenizer path/to/tokenizer.model --out_dir dev/data/c4
--input/--val_input take local .json or .json.gz files with one JSON object per
line and a "text" field (C4's own files are like that); --tokenizer takes a
SentencePiece .model file, or a directory holding tokenizer.model.

Writes to --out_dir:
    c4_train_000000.bin, c4_train_000001.bin, ...   --shard_size tokens each (the last may be shorter)
    c4_val_000000.bin                               the first --val_tokens tokens of the validation split
    decoder.bin                                     the id -> bytes table for printing samples
"""
import argparse
import glob
import gzip
import json
import os
import sys
import time

import numpy as np
import sentencepiece as spm

sys.dont_write_bytecode = True  # no __pycache__ in the repository
from shard_format import ShardWriter, read_shard, write_decoder  # noqa: E402 (after the bytecode switch)

DEFAULT_TOKENIZER = "huggyllama/llama-7b"   # the original LLaMA sentencepiece model, 32000 ids
HF_DATASET, HF_CONFIG = "allenai/c4", "en"
HF_SHUFFLE_SEED = 42      # the seed GaLore's training script shuffles the C4 stream with
ENCODE_BATCH_DOCS = 1024  # documents per sentencepiece call


def load_tokenizer(spec):
    """a SentencePiece model from a .model file, a directory, or a hub repo id"""
    if os.path.isfile(spec):
        path = spec
    elif os.path.isdir(spec):
        path = os.path.join(spec, "tokenizer.model")
        if not os.path.isfile(path):
            sys.exit(f"error: --tokenizer {spec}: no tokenizer.model in that directory;"
                     " hint: pass the SentencePiece .model file itself")
    else:
        try:
            from huggingface_hub import hf_hub_download  # only needed for hub ids
        except ImportError:
            sys.exit(f"error: --tokenizer {spec} is not a local file or directory, and huggingface_hub"
                     " is missing to download it; hint: pip install huggingface_hub, or pass a local .model")
        path = hf_hub_download(repo_id=spec, filename="tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=path)
    if sp.get_piece_size() > 2**16:
        sys.exit(f"error: {path} has {sp.get_piece_size()} ids; shards store uint16, so at most 65536")
    if sp.bos_id() < 0:
        sys.exit(f"error: {path} has no BOS id; documents are packed with BOS before each")
    return sp, path


def local_documents(paths):
    """the "text" field of every line of local .json/.json.gz files, in the order given"""
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    sys.exit(f"error: {path}:{lineno} is not a JSON object with a \"text\" field;"
                             " hint: C4's files have one such object per line")


def hub_documents(split):
    try:
        import datasets  # imported only when streaming
    except ImportError:
        sys.exit("error: streaming C4 needs the `datasets` package; hint: pip install datasets,"
                 " or pass local files with --input/--val_input")
    ds = datasets.load_dataset(HF_DATASET, HF_CONFIG, split=split, streaming=True)
    ds = ds.shuffle(seed=HF_SHUFFLE_SEED)
    for row in ds:
        yield row["text"]


def packed_tokens(sp, docs, num_threads):
    """yields int arrays: BOS + tokens of each document, in order, tokenized in batches"""
    bos = sp.bos_id()
    batch = []

    def flush():
        for ids in sp.encode(batch, num_threads=num_threads):
            yield np.array([bos] + ids, dtype=np.int64)
        batch.clear()

    for text in docs:
        batch.append(text)
        if len(batch) == ENCODE_BATCH_DOCS:
            yield from flush()
    if batch:
        yield from flush()


def write_shards(token_stream, out_dir, prefix, shard_size, max_tokens, max_shards=None):
    """cuts the packed stream into shards of shard_size tokens; returns the paths written"""
    paths, writer, total = [], None, 0
    for toks in token_stream:
        while len(toks) > 0:
            if max_tokens is not None and total >= max_tokens:
                break
            if writer is None:
                if max_shards is not None and len(paths) == max_shards:
                    break
                paths.append(os.path.join(out_dir, f"{prefix}_{len(paths):06d}.bin"))
                writer = ShardWriter(paths[-1])
            take = shard_size - writer.count
            if max_tokens is not None:
                take = min(take, max_tokens - total)
            writer.write(toks[:take])
            total += min(take, len(toks))
            toks = toks[take:]
            if writer.count == shard_size:
                writer.close()
                print(f"  wrote {paths[-1]} ({shard_size} tokens, {total} so far)", flush=True)
                writer = None
        if max_tokens is not None and total >= max_tokens:
            break
        if writer is None and max_shards is not None and len(paths) == max_shards:
            break
    if writer is not None:
        writer.close()
        print(f"  wrote {paths[-1]} ({writer.count} tokens, {total} so far)", flush=True)
    return paths


def check_shard(path, vocab_size):
    toks = read_shard(path)  # checks magic, version and size against the header
    assert len(toks) > 0, f"{path}: empty"
    assert int(toks.max()) < vocab_size, f"{path}: id {int(toks.max())} >= vocab {vocab_size}"
    return len(toks)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", help="local train .json/.json.gz files (default: stream from the hub)")
    parser.add_argument("--val_input", nargs="+", help="local validation .json/.json.gz files")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                        help="SentencePiece .model file, a directory with tokenizer.model, or a hub repo id")
    parser.add_argument("--out_dir", default="dev/data/c4")
    parser.add_argument("--shard_size", type=int, default=100_000_000, help="tokens per train shard")
    parser.add_argument("--max_tokens", type=int, default=None, help="stop after this many train tokens")
    parser.add_argument("--val_tokens", type=int, default=10_000_000,
                        help="tokens in the val shard (GaLore evaluates on 10M validation tokens)")
    parser.add_argument("--num_threads", type=int, default=os.cpu_count(), help="tokenizer threads")
    args = parser.parse_args()
    if (args.input is None) != (args.val_input is None):
        sys.exit("error: give both --input and --val_input (local files), or neither (stream from the hub)")
    if not 0 < args.shard_size < 2**31:
        sys.exit("error: --shard_size must be in 1..2^31-1 (the header stores the count as int32)")
    if not 0 < args.val_tokens < 2**31:
        sys.exit("error: --val_tokens must be in 1..2^31-1 (it is one shard)")
    for p in (args.input or []) + (args.val_input or []):
        if not os.path.isfile(p):
            sys.exit(f"error: input file {p} does not exist")

    sp, tok_path = load_tokenizer(args.tokenizer)
    V = sp.get_piece_size()
    print(f"tokenizer: {tok_path}, {V} ids, BOS {sp.bos_id()}, EOS {sp.eos_id()}")
    os.makedirs(args.out_dir, exist_ok=True)
    for old in glob.glob(os.path.join(args.out_dir, "c4_*.bin")):
        os.remove(old)  # a shorter rerun must not leave stale shards for the glob to pick up
    write_decoder(os.path.join(args.out_dir, "decoder.bin"), sp)

    t0 = time.time()
    val_docs = local_documents(args.val_input) if args.val_input else hub_documents("validation")
    print(f"validation -> {args.out_dir}/c4_val_000000.bin")
    val_paths = write_shards(packed_tokens(sp, val_docs, args.num_threads), args.out_dir, "c4_val",
                             args.val_tokens, args.val_tokens, max_shards=1)
    train_docs = local_documents(args.input) if args.input else hub_documents("train")
    print(f"train -> {args.out_dir}/c4_train_*.bin")
    train_paths = write_shards(packed_tokens(sp, train_docs, args.num_threads), args.out_dir, "c4_train",
                               args.shard_size, args.max_tokens)

    # read every shard back: header, size, ids < vocab
    n_val = sum(check_shard(p, V) for p in val_paths)
    n_train = sum(check_shard(p, V) for p in train_paths)
    print(f"done in {time.time() - t0:.1f}s: {len(train_paths)} train shard(s), {n_train} tokens;"
          f" {len(val_paths)} val shard, {n_val} tokens; all validated (ids < {V})")


if __name__ == "__main__":
    main()
