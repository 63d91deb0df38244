"""
Writes a tiny C4-style sample from the KJV, to test dev/data/c4.py offline:

    python dev/data/c4_sample.py /tmp/c4_sample

makes c4-train.00000-of-00001.json.gz (400 documents) and
c4-validation.00000-of-00001.json.gz (40 documents), one JSON object per line
with C4's fields "text", "timestamp" and "url"; a document is 10 verses.
"""
import gzip
import json
import os
import subprocess
import sys

VERSES_PER_DOC = 10
TRAIN_DOCS, VAL_DOCS = 400, 40


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python dev/data/c4_sample.py OUT_DIR")
    out_dir = sys.argv[1]
    # -f: one verse per line, each prefixed by its reference (e.g. "Ge1:1 In the beginning ...")
    text = subprocess.run(["bible", "-p", "/usr/lib", "-f", "Gen1:1-Rev22:21"],
                          capture_output=True, check=True, text=True).stdout
    verses = [line.split(" ", 1)[1] for line in text.split("\n") if line]
    docs = [" ".join(verses[i:i + VERSES_PER_DOC]) for i in range(0, len(verses), VERSES_PER_DOC)]
    os.makedirs(out_dir, exist_ok=True)
    for name, chunk in [("c4-train.00000-of-00001.json.gz", docs[:TRAIN_DOCS]),
                        ("c4-validation.00000-of-00001.json.gz", docs[TRAIN_DOCS:TRAIN_DOCS + VAL_DOCS])]:
        path = os.path.join(out_dir, name)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for i, d in enumerate(chunk):
                row = {"text": d, "timestamp": "2019-04-25T12:00:00Z", "url": f"https://example.org/kjv/{i}"}
                f.write(json.dumps(row) + "\n")
        print(f"wrote {path}: {len(chunk)} documents")


if __name__ == "__main__":
    main()
