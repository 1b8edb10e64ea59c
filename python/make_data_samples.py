#!/usr/bin/env python3
"""Writes tests/data/sample.{ts,csv,npz,npy,safetensors} and
sample_compressed.npz: the same four sequences (two classes, lengths 3, 2,
3, 1 frames of 2 features) in every format `edifice train --data` reads, for
crates/edifice/tests/data_formats.rs. Needs only NumPy:

    .venv-py/bin/python python/make_data_samples.py
"""

import json
import struct
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data"
X = [
    [[0.5, -1.0], [1.5, 2.0], [2.5, 0.25]],
    [[-3.0, 4.0], [0.0, 1.0]],
    [[7.0, 8.0], [9.0, -9.5], [1.0, 1.0]],
    [[6.0, 5.0]],
]
Y = ["run", "walk", "walk", "run"]
CLASSES = sorted(set(Y))  # alphabetical, as edifice orders string labels
T, E = 3, 2


def padded():
    x = np.zeros((len(X), T, E), np.float32)
    for i, s in enumerate(X):
        x[i, : len(s)] = s
    return x


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    x, lengths = padded(), np.array([len(s) for s in X], np.int64)
    y = np.array([CLASSES.index(c) for c in Y], np.int64)

    # .ts: dimension d of a sequence is feature d of its frames.
    lines = ["# written by python/make_data_samples.py", "@problemName Sample", "@univariate false",
             "@dimensions 2", "@equalLength false", f"@classLabel true {' '.join(CLASSES)}", "@data"]
    for s, label in zip(X, Y):
        dims = [",".join(str(f[d]) for f in s) for d in range(E)]
        lines.append(":".join(dims) + f":{label}")
    (OUT / "sample.ts").write_text("\n".join(lines) + "\n")

    rows = ["sequence,y,f0,f1"] + [f"s{i},{label},{f[0]},{f[1]}" for i, (s, label) in enumerate(zip(X, Y)) for f in s]
    (OUT / "sample.csv").write_text("\n".join(rows) + "\n")

    np.savez(OUT / "sample.npz", x=x, y=y, lengths=lengths)
    np.savez_compressed(OUT / "sample_compressed.npz", x=x, y=y, lengths=lengths)

    # .npy: [N, T, E + 1], every frame real: only the equal-length part (the
    # first frame of each sequence) fits this layout.
    one = np.concatenate([x[:, :1], np.zeros((len(X), 1, 1), np.float32)], axis=2)
    one[:, 0, E] = y
    np.save(OUT / "sample.npy", one)

    # safetensors by hand: an 8-byte header length, a JSON header, the data.
    tensors = {"x": ("F32", x), "y": ("I64", y), "lengths": ("I64", lengths)}
    header, blobs, offset = {}, [], 0
    for name, (dtype, a) in tensors.items():
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (OUT / "sample.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    print(f"wrote {OUT}/sample.*")


if __name__ == "__main__":
    main()
