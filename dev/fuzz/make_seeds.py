"""
Writes a seed corpus for dev/fuzz/fuzz_shard.c: small valid shards (with the
loader settings in header bytes 12..19) and a small valid decoder file.

    python dev/fuzz/make_seeds.py /tmp/fuzz_corpus
"""
import os
import struct
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
from shard_format import DECODER_MAGIC, DECODER_VERSION, SHARD_HEADER_BYTES, shard_header  # noqa: E402


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    # (B-1, T-1, vocab-1 as uint16, shuffle, ranks-1, rank, seed) -> bytes 12..19
    settings = [(1, 2, 99, 0, 0, 0, 0), (0, 7, 199, 1, 2, 1, 5), (3, 3, 65535, 1, 1, 0, 9)]
    for k, (b, t, v, sh, r, rk, seed) in enumerate(settings):
        header = bytearray(shard_header(40 + 10 * k))
        header[12:20] = bytes([b, t, v & 0xFF, v >> 8, sh, r, rk, seed])
        tokens = struct.pack(f"<{40 + 10 * k}H", *[(7 * i) % 100 for i in range(40 + 10 * k)])
        assert len(header) == SHARD_HEADER_BYTES
        with open(os.path.join(out, f"shard_{k}.bin"), "wb") as f:
            f.write(bytes(header) + tokens)
    entries = [b"", b"", b"", b" the", b"\n", b"\xe2\x81\x87"]
    with open(os.path.join(out, "decoder.bin"), "wb") as f:
        f.write(struct.pack("<8i", DECODER_MAGIC, DECODER_VERSION, len(entries), 1, 2, 0,
                            max(map(len, entries)), sum(map(len, entries))))
        for e in entries:
            f.write(struct.pack("<H", len(e)) + e)
    print(f"wrote {len(settings) + 1} seeds to {out}")


if __name__ == "__main__":
    main()
