"""Bit-identity of f32 outputs between two edifice binaries: attn (every pattern kind, with gradients), init + forward of every default model, and 30 training steps with a fixed seed.

Usage: python3 scripts/bit_identical.py BEFORE_BINARY AFTER_BINARY [WORKDIR]
(run from the repository root; needs only the Python standard library)
"""
import json, struct, subprocess, sys, os, random
B = sys.argv[1]
A = sys.argv[2]
W = sys.argv[3] if len(sys.argv) > 3 else "/tmp/edifice-bit-identical"
os.makedirs(W, exist_ok=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def read(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = (v["dtype"], v["shape"], body[s:e])
    return out

def write(path, tensors):
    header, blobs, off = {}, [], 0
    for k, (shape, vals) in tensors.items():
        raw = struct.pack("<%df" % len(vals), *vals)
        header[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw); off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

def run(bin, args):
    r = subprocess.run([bin] + args, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        print("FAILED", bin, args, r.stderr); sys.exit(1)
    return r.stdout

random.seed(1)
rnd = lambda n: [random.uniform(-1, 1) for _ in range(n)]
shape = [2, 4, 100, 32]
n = 2 * 4 * 100 * 32
write(f"{W}/qkv.safetensors", {"q": (shape, rnd(n)), "k": (shape, rnd(n)), "v": (shape, rnd(n)), "do": (shape, rnd(n))})
same = True
for pat in ["full", "window:16", "chunk:8", "strided:4:8", "shifted:16", "global:3", "strided:4:8|global:2"]:
    for causal in [[], ["--causal"]]:
        outs = []
        for b in [B, A]:
            o = f"{W}/o_{len(outs)}.safetensors"
            run(b, ["attn", "--input", f"{W}/qkv.safetensors", "--output", o, "--pattern", pat] + causal)
            outs.append(read(o))
        ok = outs[0] == outs[1]
        same &= ok
        print(f"attn {pat}{'+causal' if causal else ''}: o, lse, dq, dk, dv bit-identical: {ok}")
# forward: every default model config with random weights from init (same seed)
for m in ["dual_chunk", "sliding_window", "hybrid", "hybrid_mlp", "ring", "shifted_sparse"]:
    cfg = f"configs/defaults/{m}.toml"
    res = []
    for tag, b in [("before", B), ("after", A)]:
        w = f"{W}/w_{m}_{tag}.safetensors"
        run(b, ["init", "--config", cfg, "--seed", "3", "--out", w])
        res.append(read(w))
    ok_w = res[0] == res[1]
    # input
    import re
    txt = open(os.path.join(ROOT, cfg)).read()
    emb = int(re.search(r"embed_dim\s*=\s*(\d+)", txt).group(1))
    # The default configs' lengths (Edifice's defaults).
    T = {"dual_chunk": 64, "shifted_sparse": 64}.get(m, 60)
    write(f"{W}/x_{m}.safetensors", {"x": ([2, T, emb], rnd(2 * T * emb))})
    ys = []
    for tag, b in [("before", B), ("after", A)]:
        y = f"{W}/y_{m}_{tag}.safetensors"
        run(b, ["forward", "--config", cfg, "--weights", f"{W}/w_{m}_before.safetensors", "--input", f"{W}/x_{m}.safetensors", "--output", y, "--all-timesteps"])
        ys.append(read(y))
    ok = ok_w and ys[0] == ys[1]
    same &= ok
    print(f"init + forward {m} (T {T}): weights and outputs bit-identical: {ok_w} / {ys[0] == ys[1]}")
# train: default run, 30 steps, fixed seed; compare metrics and weights
ms = []
for tag, b in [("before", B), ("after", A)]:
    out = f"{W}/run_{tag}"
    run(b, ["train", "--quiet", "--steps", "30", "--seed", "7", "--out", out])
    losses = [(r["step"], r["split"], r["loss"], r["accuracy"]) for r in map(json.loads, open(f"{out}/metrics.jsonl"))]
    weights = {k: v for k, v in read(f"{out}/checkpoint.safetensors").items() if k != "__optimizer__"}
    ms.append((losses, weights))
ok = ms[0][0] == ms[1][0] and ms[0][1] == ms[1][1]
same &= ok
print(f"train 30 steps, seed 7: losses and weights bit-identical: {ms[0][0] == ms[1][0]} / {ms[0][1] == ms[1][1]}")
print("ALL BIT-IDENTICAL" if same else "DIFFERENCES FOUND")
sys.exit(0 if same else 1)
