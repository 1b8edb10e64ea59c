#!/usr/bin/env python3
"""Every model on UCR/UEA data sets with one fixed recipe: test accuracy
over three seeds (mean and spread) beside the published MLP, FCN and ResNet accuracies.

The recipe is the same for every data set (no per-data-set tuning):
configs/ucr.toml's [train] table (4000 steps of 16 at lr 1e-3, weight decay
0.05, Gaussian noise of σ 0.05 and time shifts of up to 1% on the training
inputs) and command-line flags (5-frame patches, 10% of the training file
per class held out for validation, the test file scored with the last
checkpoint), with the small models of scripts/train_table.py at the
recipe's dropout; the ring row is configs/ucr.toml itself. Fetches the data with scripts/ucr.sh. Needs
python3 (3.11: tomllib) and cargo.

    python3 scripts/ucr_table.py [--datasets GunPoint,ItalyPowerDemand,BasicMotions] [--models ...]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_table import MODELS as SMALL  # noqa: E402

RECIPE_CONFIG = ROOT / "configs" / "ucr.toml"
RECIPE_TABLES = tomllib.loads(RECIPE_CONFIG.read_text())
# train_table's small models, with the recipe's dropout and chunk counts that
# the archive's lengths allow.
MODELS = {
    name.split(" (")[0]: config.replace("dropout = 0.0", f"dropout = {RECIPE_TABLES['model']['dropout']}")
    .replace("chunk_size = 16", "chunk_size = 4")
    .replace("num_chunks = 4", "num_chunks = 2")
    for name, config in SMALL.items()
    if name != "sliding_window (window 8)"
}


def toml_lines(table):
    """A flat TOML table's `key = value` lines (numbers and strings)."""
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())


RECIPE = "[train]\n" + toml_lines(RECIPE_TABLES["train"])
# The ring row is configs/ucr.toml's own model.
MODELS["ring"] = toml_lines(RECIPE_TABLES["model"])

# The flags README's commands give with configs/ucr.toml.
RECIPE_FLAGS = ["--patch", "5", "--val-split", "0.1", "--test-with", "last"]
# Fawaz et al. 2019, "Deep learning for time series classification: a
# review": MLP, FCN and ResNet, mean test accuracy over their runs, from the
# authors' results files (github.com/hfawaz/dl-4-tsc, results/results-uea-
# avg-std.csv and results-mts-avg-std.csv). BasicMotions is not among them.
PUBLISHED = {
    "GunPoint": (0.927, 1.0, 0.991),
    "ItalyPowerDemand": (0.954, 0.961, 0.963),
    "ArrowHead": (0.778, 0.843, 0.845),
    "OSULeaf": (0.557, 0.977, 0.979),
    "JapaneseVowels": (0.976, 0.993, 0.992),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="GunPoint,ItalyPowerDemand,BasicMotions")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    datasets, models, seeds = args.datasets.split(","), args.models.split(","), args.seeds.split(",")
    subprocess.run(["scripts/ucr.sh", *datasets], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-p", "edifice-cli"], cwd=ROOT, check=True)
    binary = ROOT / "target" / "release" / "edifice"
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cells = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            config = Path(tmp) / "run.toml"
            config.write_text(f"[model]\n{MODELS[model]}{RECIPE}")
            for data in datasets:
                accs, secs = [], []
                for seed in seeds:
                    d = ROOT / "data" / data
                    out = subprocess.run([str(binary), "train", "--quiet", "--config", str(config), "--seed", seed,
                                          "--data", str(d / f"{data}_TRAIN.ts"), "--test", str(d / f"{data}_TEST.ts"),
                                          *RECIPE_FLAGS, "--out", str(Path(tmp) / "run")],
                                         env=env, capture_output=True, text=True)
                    test = re.search(r"test: accuracy ([0-9.]+)", out.stdout)
                    took = re.search(r"in ([0-9.]+) s;", out.stdout)
                    if test is None:
                        print(f"{model} / {data} / seed {seed}: {out.stderr.strip()[-200:]}", flush=True)
                        break
                    accs.append(float(test[1]))
                    secs.append(float(took[1]))
                    print(f"{model} / {data} / seed {seed}: {accs[-1]:.4f} ({secs[-1]:.0f} s)", flush=True)
                cells[model, data] = (
                    f"{statistics.mean(accs):.3f} ± {statistics.pstdev(accs):.3f} ({statistics.mean(secs):.0f} s)"
                    if len(accs) == len(seeds) else "error"
                )
    print(f"\ntest accuracy, mean ± spread over seeds {args.seeds} (mean training time), {args.threads} threads\n")
    print("| model | " + " | ".join(datasets) + " |")
    print("|---|" + "---|" * len(datasets))
    for model in models:
        print(f"| {model} | " + " | ".join(cells[model, d] for d in datasets) + " |")
    for i, name in enumerate(["MLP", "FCN", "ResNet"]):
        row = [f"{PUBLISHED[d][i]:.3f}" if d in PUBLISHED else "-" for d in datasets]
        print(f"| published {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
