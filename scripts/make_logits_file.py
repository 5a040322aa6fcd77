#!/usr/bin/env python3
"""Writes a safetensors file of `logits` [rows, vocab] f32 and `targets` [rows]
i64 for timing `daa stats` end to end (standard library only, no numpy):

    scripts/make_logits_file.py /var/tmp/logits-1g.safetensors --rows 2048 --vocab 128256
    /usr/bin/time -v target/release/daa stats --logits /var/tmp/logits-1g.safetensors --k 10 --summary-only

The logits are draws of 4·N(0, 1), each row a different window of one block
of draws, so rows differ and the top-k statistics are not degenerate.
"""

import argparse
import array
import json
import random
import struct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows, vocab = args.rows, args.vocab
    rng = random.Random(args.seed)
    block = array.array("f", (4.0 * rng.gauss(0.0, 1.0) for _ in range(2 * vocab)))
    targets = array.array("q", (rng.randrange(vocab) for _ in range(rows)))
    logits_bytes = rows * vocab * 4
    header = {
        # Targets first, 8-byte aligned; the logits follow at a multiple of 8.
        "targets": {"dtype": "I64", "shape": [rows], "data_offsets": [0, rows * 8]},
        "logits": {"dtype": "F32", "shape": [rows, vocab], "data_offsets": [rows * 8, rows * 8 + logits_bytes]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(args.path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        out.write(targets.tobytes())
        for r in range(rows):
            start = (r * 7919) % vocab
            out.write(block[start : start + vocab].tobytes())
    print(f"{args.path}: logits [{rows}, {vocab}] f32 ({logits_bytes / 1e9:.2f} GB), targets [{rows}] i64")


if __name__ == "__main__":
    main()
