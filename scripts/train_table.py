#!/usr/bin/env python3
"""Every model on every built-in task: final held-out accuracy and wall time.

Runs `edifice train` (release build) once per (model, task) with the same
small model sizes, steps and seed, and prints a markdown table for the
README. Needs only python3 and cargo.

    python3 scripts/train_table.py [--seq-len 64] [--steps 1000] [--threads 2]
"""

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Small versions of every model (width 32, 2 layers), so a run takes seconds.
MODELS = {
    "sliding_window (window = T)": 'model = "sliding_window"\nnum_heads = 2\nhead_dim = 16\nnum_layers = 2\nffn_dim = 64\ndropout = 0.0\n',
    "sliding_window (window 8)": 'model = "sliding_window"\nwindow_size = 8\nnum_heads = 2\nhead_dim = 16\nnum_layers = 2\nffn_dim = 64\ndropout = 0.0\n',
    "dual_chunk (chunk 16)": 'model = "dual_chunk"\nhidden_size = 32\nnum_heads = 2\nnum_layers = 2\nchunk_size = 16\ndropout = 0.0\n',
    "ring (4 chunks)": 'model = "ring"\nhidden_size = 32\nnum_heads = 2\nnum_layers = 2\nnum_chunks = 4\ndropout = 0.0\n',
    "hybrid (LSTM 32)": 'model = "hybrid"\nlstm_hidden = 32\nnum_heads = 2\nhead_dim = 16\ndropout = 0.0\n',
    "shifted_sparse (strided)": 'model = "shifted_sparse"\nhidden_size = 32\nnum_heads = 4\nnum_layers = 2\nlocal_window = 4\ndropout = 0.0\n',
}
TASKS = ["lookback", "recall", "frames"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "edifice-cli"], cwd=ROOT, check=True)
    binary = ROOT / "target" / "release" / "edifice"
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in MODELS.items():
            cells = []
            for task in TASKS:
                config = Path(tmp) / "run.toml"
                config.write_text(f"[model]\n{model}[task]\nkind = \"{task}\"\nseq_len = {args.seq_len}\n"
                                  f"embed_dim = 24\n[train]\nsteps = {args.steps}\n")
                out = subprocess.run([str(binary), "train", "--quiet", "--config", str(config), "--out",
                                      str(Path(tmp) / "run")], env=env, capture_output=True, text=True)
                done = re.search(r"in ([0-9.]+) s; held-out accuracy ([0-9.]+)", out.stdout)
                cells.append(f"{float(done[2]):.3f} ({float(done[1]):.0f} s)" if done else "error")
                print(f"{name} / {task}: {cells[-1]}", flush=True)
            rows.append((name, cells))
    print(f"\nseq_len {args.seq_len}, {args.steps} steps, batch 32, {args.threads} threads; held-out accuracy (wall time)\n")
    print("| model | " + " | ".join(TASKS) + " |")
    print("|---|" + "---|" * len(TASKS))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
