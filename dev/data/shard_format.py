"""
The two binary formats that dev/data/ writes and train_llama_subtrack.c reads.
Both are little-endian. Shared by kjv.py and c4.py, so each format is written
by one function here.

Token shard (llm.c's format, so llm.c tooling reads it too):
    int32[256] header: [0] SHARD_MAGIC 20240520, [1] SHARD_VERSION 1,
                       [2] number of tokens N, the rest 0
    uint16[N]  token ids

Decoder file (this project's format, read by decoder_load() in C):
    int32[8] header: [0] DECODER_MAGIC 20261103, [1] DECODER_VERSION 1,
                     [2] vocab size V, [3] bos id, [4] eos id, [5] unk id,
                     [6] longest entry in bytes, [7] sum of all entry lengths
    then for each id 0..V-1: uint16 length, then that many raw bytes
The bytes of an id are what it contributes to the decoded text: SentencePiece's
'\u2581' becomes a space, a byte-fallback piece <0xNN> becomes the byte NN,
control pieces (<s>, </s>) are empty, and <unk> is SentencePiece's " \u2047 ".
"""
import struct

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4

DECODER_MAGIC = 20261103
DECODER_VERSION = 1
DECODER_HEADER_INTS = 8
DECODER_MAX_ENTRY_BYTES = 65535  # the length field is uint16


def shard_header(num_tokens):
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[0] = SHARD_MAGIC
    header[1] = SHARD_VERSION
    header[2] = num_tokens
    return header.tobytes()


def write_shard(path, tokens):
    """tokens: any sequence of ints in [0, 65535]"""
    toks = np.asarray(tokens, dtype=np.int64)
    assert toks.ndim == 1
    assert len(toks) < 2**31, "the header stores the token count as int32"
    assert toks.min(initial=0) >= 0 and toks.max(initial=0) < 2**16, "ids must fit uint16"
    with open(path, "wb") as f:
        f.write(shard_header(len(toks)))
        f.write(toks.astype("<u2").tobytes())


class ShardWriter:
    """appends tokens to a shard and fills in the count on close (for streaming)"""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "wb")
        self.f.write(shard_header(0))
        self.count = 0

    def write(self, tokens):
        toks = np.asarray(tokens, dtype=np.int64)
        assert toks.min(initial=0) >= 0 and toks.max(initial=0) < 2**16, "ids must fit uint16"
        self.f.write(toks.astype("<u2").tobytes())
        self.count += len(toks)

    def close(self):
        assert self.count < 2**31, "the header stores the token count as int32"
        self.f.seek(0)
        self.f.write(shard_header(self.count))
        self.f.close()


def read_shard(path):
    """returns the tokens as a uint16 array; raises ValueError on any format problem"""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < SHARD_HEADER_BYTES:
        raise ValueError(f"{path}: shorter than the {SHARD_HEADER_BYTES}-byte header")
    header = np.frombuffer(data[:SHARD_HEADER_BYTES], dtype="<i4")
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"{path}: magic {header[0]}, expected {SHARD_MAGIC}")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"{path}: version {header[1]}, expected {SHARD_VERSION}")
    n = int(header[2])
    if len(data) != SHARD_HEADER_BYTES + 2 * n:
        raise ValueError(f"{path}: {len(data)} bytes, header says {n} tokens")
    return np.frombuffer(data[SHARD_HEADER_BYTES:], dtype="<u2")


def piece_bytes(sp, i):
    """the raw bytes that id i contributes to decoded text (see the module doc)"""
    if sp.is_control(i):
        return b""
    if sp.is_unknown(i):
        return " \u2047 ".encode("utf-8")  # what sp.decode() prints for <unk>
    piece = sp.id_to_piece(i)
    if sp.is_byte(i):
        # byte-fallback pieces are spelled <0xNN>
        assert len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"), piece
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def write_decoder(path, sp):
    """writes the decoder file for a sentencepiece.SentencePieceProcessor"""
    V = sp.get_piece_size()
    entries = [piece_bytes(sp, i) for i in range(V)]
    longest = max(len(e) for e in entries)
    assert longest <= DECODER_MAX_ENTRY_BYTES
    header = struct.pack("<8i", DECODER_MAGIC, DECODER_VERSION, V, sp.bos_id(),
                         sp.eos_id(), sp.unk_id(), longest, sum(len(e) for e in entries))
    with open(path, "wb") as f:
        f.write(header)
        for e in entries:
            f.write(struct.pack("<H", len(e)))
            f.write(e)


def read_decoder(path):
    """returns (header dict, list of bytes) so Python checks can decode shards"""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, V, bos, eos, unk, longest, total = struct.unpack_from("<8i", data, 0)
    if magic != DECODER_MAGIC or version != DECODER_VERSION:
        raise ValueError(f"{path}: not a version {DECODER_VERSION} decoder file")
    pos, entries = DECODER_HEADER_INTS * 4, []
    for _ in range(V):
        (n,) = struct.unpack_from("<H", data, pos)
        entries.append(data[pos + 2:pos + 2 + n])
        pos += 2 + n
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} trailing bytes")
    return dict(vocab_size=V, bos_id=bos, eos_id=eos, unk_id=unk), entries
