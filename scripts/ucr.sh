#!/usr/bin/env bash
# Fetches UCR/UEA data sets into data/NAME/NAME_{TRAIN,TEST}.ts from the
# aeon wheel on PyPI, which ships them (pip download, no install; the
# edifice binary never downloads anything). Usage:
#
#     scripts/ucr.sh GunPoint ItalyPowerDemand BasicMotions
#
# Data sets in aeon 1.6.0: ACSF1 ArrowHead BasicMotions CardanoSentiment
# Covid3Month GunPoint ItalyPowerDemand JapaneseVowels OSULeaf
# PickupGestureWiimoteZ (and UnitTest).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: scripts/ucr.sh NAME..." >&2; exit 2; }
cache=data/.wheels
mkdir -p "$cache"
wheel=$(ls "$cache"/aeon-1.6.0-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
    python3 -m pip download --quiet --no-deps --dest "$cache" aeon==1.6.0
    wheel=$(ls "$cache"/aeon-1.6.0-*.whl | head -1)
fi
python3 - "$wheel" "$@" <<'PY'
import sys, zipfile, pathlib
wheel, names = sys.argv[1], sys.argv[2:]
with zipfile.ZipFile(wheel) as z:
    files = z.namelist()
    for name in names:
        wanted = [f"aeon/datasets/data/{name}/{name}_{split}.ts" for split in ("TRAIN", "TEST")]
        missing = [w for w in wanted if w not in files]
        if missing:
            known = sorted({f.split("/")[3] for f in files if f.startswith("aeon/datasets/data/") and f.endswith(".ts")})
            sys.exit(f"{name}: not in {wheel}; it has {' '.join(known)}")
        out = pathlib.Path("data") / name
        out.mkdir(parents=True, exist_ok=True)
        for w in wanted:
            (out / pathlib.Path(w).name).write_bytes(z.read(w))
        print(f"data/{name}/{name}_TRAIN.ts, data/{name}/{name}_TEST.ts")
PY
