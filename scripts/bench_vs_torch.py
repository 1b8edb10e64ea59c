#!/usr/bin/env python3
"""Side-by-side attention benchmark: edifice vs PyTorch, in one run.

Runs `edifice bench kernel --json` (optionally with the Rust peers: burn's
Flex attention and candle's CPU flash attention), then times on the same
shapes, inputs and thread count:

* PyTorch `scaled_dot_product_attention`, dense (a boolean mask for the
  sparse patterns, `is_causal` for plain causal);
* compiled FlexAttention on the CPU, with a block mask built from the same
  rule.

Useful GFLOP/s = 4 x allowed pairs x D / time for everyone (edifice reports
the allowed pairs), so a dense implementation does not get credit for
computing masked pairs. Prints a ratio table and writes every record to
--out (JSON).

Needs a venv with torch and numpy (`python3 -m venv .venv-bench &&
.venv-bench/bin/pip install torch numpy`). Usage:

    .venv-bench/bin/python scripts/bench_vs_torch.py --threads 2 [--peers] \
        [--sizes 1024,4096,16384] [--patterns full,full+causal] [--no-flex]

With --models it compares whole models instead: for every config in
configs/defaults/ (Edifice's defaults, 287-wide frames), one training step
(forward, mean squared last-timestep output, backward, AdamW) at --batch 32
against the PyTorch eager port in python/reference.py (same shapes, same
loss, torch.optim.AdamW), and a batch-1 forward (the per-frame use):

    .venv-bench/bin/python scripts/bench_vs_torch.py --models --threads 2 --rounds 3

With --stream it compares the per-frame use: for every config in
configs/stream/, `edifice stream --json` (one stream, one thread: p50, p99 of
its incremental step, and of Edifice's per-frame recompute) against PyTorch
eager recomputing the same model over the last seq_len frames per frame
(python/reference.py, inference mode, one call timed at a time):

    .venv-bench/bin/python scripts/bench_vs_torch.py --stream --threads 1

With --python it times the Python package (`pip install ./python` into the
venv first) instead of the CLI: `edifice.attention` on torch tensors,
forward and forward + backward through autograd, against SDPA (dense, or
masked for the sparse patterns) and compiled FlexAttention (forward), in
one process; then the per-call overhead at N = 64 (the API call minus the
native kernel call on the same, preallocated buffers):

    .venv-py/bin/python scripts/bench_vs_torch.py --python --threads 2
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_pattern(spec):
    """`KIND[:ARGS][+causal]` -> (kind, [ints], causal)."""
    causal = spec.endswith("+causal")
    body = spec[: -len("+causal")] if causal else spec
    kind, *args = body.split(":")
    return kind, [int(a) for a in args], causal


def allowed(spec, heads, n, torch):
    """Boolean mask [H, N, N] (True = allowed) from the same rules as
    edifice_kernels::Pattern (queries aligned with keys: Nq == Nk)."""
    kind, args, causal = parse_pattern(spec)
    i = torch.arange(n).view(1, n, 1)
    j = torch.arange(n).view(1, 1, n)
    h = torch.arange(heads).view(heads, 1, 1)
    if kind == "full":
        m = torch.ones(1, n, n, dtype=torch.bool)
    elif kind == "window":
        (w,) = args
        m = (i - j).abs() <= w - 1
    elif kind == "chunk":
        (c,) = args
        m = (i // c) == (j // c)
    elif kind == "strided":
        s, l = args
        m = ((i - j).abs() < l) | ((j % s) == (h % s))
    elif kind == "shifted":
        (g,) = args
        shift = (h >= heads // 2).long() * (g // 2)
        m = ((i + shift) // g) == ((j + shift) // g)
    else:
        raise SystemExit(f"unknown pattern {spec}")
    if causal:
        m = m & (j <= i)
    return m.expand(heads, n, n) if m.shape[0] == 1 else m


def mask_mod(spec, heads):
    """The same rule as a FlexAttention mask_mod."""
    kind, args, causal = parse_pattern(spec)

    def rule(b, h, q, kv):
        if kind == "full":
            ok = q >= 0
        elif kind == "window":
            ok = (q - kv).abs() <= args[0] - 1
        elif kind == "chunk":
            ok = (q // args[0]) == (kv // args[0])
        elif kind == "strided":
            ok = ((q - kv).abs() < args[1]) | ((kv % args[0]) == (h % args[0]))
        elif kind == "shifted":
            g = args[0]
            shift = (h >= heads // 2).to(q.dtype) * (g // 2)
            ok = ((q + shift) // g) == ((kv + shift) // g)
        if causal:
            ok = ok & (kv <= q)
        return ok

    return rule


def time_it(fn, min_time):
    fn()
    start = time.perf_counter()
    fn()
    warm = time.perf_counter() - start
    iters = max(1, min(200, math.ceil(min_time / max(warm, 1e-9))))
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return samples[len(samples) // 2]


def inputs(n_elems, seed):
    """Uniform [-1, 1) f32 inputs (the same distribution edifice uses;
    timings do not depend on the values)."""
    import numpy as np

    return np.random.default_rng(seed).random(n_elems, dtype=np.float32) * 2.0 - 1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="1024,4096,16384")
    ap.add_argument("--patterns", default=None, help="default: edifice's standard set")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="repeat every case this many times, alternating implementations, and keep each one's "
                         "best (this machine is shared and noisy)")
    ap.add_argument("--peers", action="store_true", help="also time burn and candle (builds with --features peers)")
    ap.add_argument("--no-flex", action="store_true", help="skip compiled FlexAttention")
    ap.add_argument("--no-sdpa-above", type=int, default=16384, help="skip dense SDPA above this N")
    ap.add_argument("--backward", action="store_true",
                    help="also time forward + backward (gradients of q, k, v) for N up to --backward-max-n")
    ap.add_argument("--backward-max-n", type=int, default=4096)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="storage type of q, k, v (bf16: f32 accumulation on both sides)")
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "bench_vs_torch.json"))
    ap.add_argument("--models", action="store_true", help="compare the models (see above) instead of the kernel")
    ap.add_argument("--batch", type=int, default=32, help="--models: training batch size")
    ap.add_argument("--configs", default=None,
                    help="--models / --stream: comma-separated config files (default: configs/defaults/* / configs/stream/*)")
    ap.add_argument("--stream", action="store_true", help="compare per-frame streaming (see above) instead of the kernel")
    ap.add_argument("--frames", type=int, default=2000, help="--stream: frames per stream timing")
    ap.add_argument("--python", action="store_true", help="time the Python package's API (see above)")
    args = ap.parse_args()
    if args.python:
        return python_api(args)
    if args.models:
        return models(args)
    if args.stream:
        return stream(args)

    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    features = ["--features", "peers"] if args.peers else []
    subprocess.run(["cargo", "build", "--release", "-p", "edifice-cli", *features], cwd=ROOT, check=True)
    binary = str(ROOT / "target" / "release" / "edifice")
    if args.patterns is None:
        listed = subprocess.run([binary, "bench", "kernel", "--list-patterns"], check=True, capture_output=True, text=True)
        args.patterns = ",".join(listed.stdout.split())
    patterns = args.patterns.split(",")
    def edifice(spec, n):
        """Our kernel (and the peers), run right before torch on the same case
        so that both see the same machine state."""
        cmd = [
            binary, "bench", "kernel", "--json",
            "--threads", str(args.threads), "--sizes", str(n), "--patterns", spec,
            "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--min-time", str(args.min_time),
            "--dtype", args.dtype,
        ]
        if args.peers:
            cmd.append("--peers")
        if args.backward and n <= args.backward_max_n:
            cmd.append("--backward")
        out = json.loads(subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
        for r in out:
            print(f"{r['impl_name']:>14} {r['pass']:<16} {spec:<22} {n:>6} {r['ms']:>10.2f} ms "
                  f"{r['gflops']:>8.1f} GFLOP/s", file=sys.stderr)
        return out

    records = []
    flex_attention = create_block_mask = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        torch._dynamo.config.cache_size_limit = 64
        flex_attention = torch.compile(flex_attention, dynamic=False)

    h, d = args.heads, args.head_dim
    for spec in patterns:
        kind, _, causal = parse_pattern(spec)
        for n in sizes:
            best = {}

            def keep(rec):
                key = (rec["impl_name"], rec["pass"])
                if key not in best or rec["gflops"] > best[key]["gflops"]:
                    best[key] = rec

            block_mask = None
            if flex_attention is not None and spec != "full":
                block_mask = create_block_mask(mask_mod(spec, h), 1, h, n, n, device="cpu")
            mask = None if kind == "full" or n > args.no_sdpa_above else allowed(spec, h, n, torch).unsqueeze(0)
            for _ in range(args.rounds):
                ours = edifice(spec, n)
                for rec in ours:
                    keep(rec)
                p = ours[0]["allowed_pairs"]
                grads = args.backward and n <= args.backward_max_n
                dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
                q = torch.from_numpy(inputs(h * n * d, 1)).view(1, h, n, d).to(dtype)
                k = torch.from_numpy(inputs(h * n * d, 2)).view(1, h, n, d).to(dtype)
                v = torch.from_numpy(inputs(h * n * d, 3)).view(1, h, n, d).to(dtype)

                def record(name, secs, pass_="forward", **extra):
                    # Forward + backward counts 3.5x the forward FLOPs (2 + 5 matmuls), as edifice does.
                    flops = 4 * p * d * (3.5 if pass_ != "forward" else 1.0)
                    rec = dict(impl_name=name, pass_=None, pattern=spec, n=n, batch=1, heads=h, head_dim=d,
                               threads=args.threads, ms=secs * 1e3, gflops=flops / secs / 1e9,
                               allowed_pairs=p, **extra)
                    rec["pass"] = rec.pop("pass_") or pass_
                    keep(rec)
                    print(f"{name:>14} {pass_:<16} {spec:<22} {n:>6} {secs * 1e3:>10.2f} ms "
                          f"{rec['gflops']:>8.1f} GFLOP/s", file=sys.stderr)

                def fwd_bwd(attend):
                    """Times attend(q, k, v) followed by its backward pass."""
                    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
                    g = torch.from_numpy(inputs(h * n * d, 4)).view(1, h, n, d).to(q.dtype)

                    def step():
                        qg.grad = kg.grad = vg.grad = None
                        attend(qg, kg, vg).backward(g)

                    return step

                with torch.inference_mode():
                    if n <= args.no_sdpa_above:
                        sdpa = torch.nn.functional.scaled_dot_product_attention
                        if kind == "full":
                            fn = lambda: sdpa(q, k, v, is_causal=causal)
                        else:
                            fn = lambda: sdpa(q, k, v, attn_mask=mask)
                        record("torch-sdpa", time_it(fn, args.min_time))
                    if flex_attention is not None:
                        t0 = time.perf_counter()
                        flex_attention(q, k, v, block_mask=block_mask)
                        compile_s = time.perf_counter() - t0
                        fn = lambda: flex_attention(q, k, v, block_mask=block_mask)
                        record("torch-flex", time_it(fn, args.min_time), first_call_s=compile_s)
                if grads:
                    sdpa = torch.nn.functional.scaled_dot_product_attention
                    if kind == "full":
                        step = fwd_bwd(lambda a, b, c: sdpa(a, b, c, is_causal=causal))
                    else:
                        step = fwd_bwd(lambda a, b, c: sdpa(a, b, c, attn_mask=mask))
                    record("torch-sdpa", time_it(step, args.min_time), pass_="forward+backward")
                    # No FlexAttention here: torch 2.15 raises "FlexAttention does not
                    # support backward on CPU", and once its compiled function has
                    # raised, later forward calls measured 3-10x slower.
            records += best.values()

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=1))

    by = {(r["impl_name"], r["pass"], r["pattern"], r["n"]): r for r in records}
    for pass_ in ["forward", "forward+backward"]:
        others = [name for name in ["torch-sdpa", "torch-flex", "burn-flex", "candle-flash"]
                  if (name, pass_) in {(r["impl_name"], r["pass"]) for r in records}]
        if not any(r["pass"] == pass_ for r in records):
            continue
        print(f"\n{pass_}: threads={args.threads} B=1 H={h} D={d} {args.dtype}; best of {args.rounds} rounds; useful GFLOP/s "
              f"(4 x allowed pairs x D{' x 3.5' if pass_ != 'forward' else ''} / time); "
              f"ratio = edifice throughput / other's")
        print("| pattern | N | edifice GFLOP/s | " + " | ".join(f"{o} GFLOP/s | edifice / {o}" for o in others) + " |")
        print("|" + "---|" * (3 + 2 * len(others)))
        for spec in patterns:
            for n in sizes:
                e = by.get(("edifice", pass_, spec, n))
                if e is None:
                    continue
                cells = [spec, str(n), f"{e['gflops']:.1f}"]
                for o in others:
                    r = by.get((o, pass_, spec, n))
                    cells += [f"{r['gflops']:.1f}", f"{e['gflops'] / r['gflops']:.2f}x"] if r else ["-", "-"]
                print("| " + " | ".join(cells) + " |")
    print(f"\nrecords written to {args.out}")


def python_api(args):
    """The Python package vs SDPA and compiled Flex, in one process."""
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    import edifice

    torch.set_num_threads(args.threads)
    flex = torch.compile(flex_attention, dynamic=False)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    h, d = args.heads, args.head_dim
    cases = [("window:256+causal", 16384), ("full+causal", 4096)]
    if args.patterns:
        cases = [(spec, int(n)) for spec in args.patterns.split(",") for n in args.sizes.split(",")]
    rows = []
    for spec, n in cases:
        kind, _, causal = parse_pattern(spec)
        pattern = spec.removesuffix("+causal")
        q, k, v, g = (torch.from_numpy(inputs(h * n * d, s)).view(1, h, n, d) for s in (1, 2, 3, 4))
        if kind == "full":
            theirs = lambda a, b, c: sdpa(a, b, c, is_causal=causal)
            flex_mask = None
        else:
            # One [N, N] mask broadcast over heads when the rule ignores the head.
            mask = allowed(spec, h, n, torch)
            mask = mask[:1] if bool((mask == mask[:1]).all()) else mask
            theirs = lambda a, b, c: sdpa(a, b, c, attn_mask=mask.unsqueeze(0))
            flex_mask = create_block_mask(mask_mod(spec, h), 1, h, n, n, device="cpu")
        ours = lambda a, b, c: edifice.attention(a, b, c, pattern, causal=causal)

        def fwd_bwd(attend):
            qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

            def step():
                qg.grad = kg.grad = vg.grad = None
                attend(qg, kg, vg).backward(g)

            return step

        best = {}
        for _ in range(args.rounds):
            timings = {}
            with torch.inference_mode():
                timings[("edifice", "forward")] = time_it(lambda: ours(q, k, v), args.min_time)
                timings[("torch-sdpa", "forward")] = time_it(lambda: theirs(q, k, v), args.min_time)
                if not args.no_flex:
                    timings[("torch-flex", "forward")] = time_it(lambda: flex(q, k, v, block_mask=flex_mask), args.min_time)
            timings[("edifice", "forward+backward")] = time_it(fwd_bwd(ours), args.min_time)
            timings[("torch-sdpa", "forward+backward")] = time_it(fwd_bwd(theirs), args.min_time)
            for key, secs in timings.items():
                best[key] = min(best.get(key, secs), secs)
                print(f"{key[0]:>11} {key[1]:<16} {spec:<20} {n:>6} {secs * 1e3:>10.2f} ms", file=sys.stderr)
        for pass_ in ("forward", "forward+backward"):
            for other in ("torch-sdpa", "torch-flex"):
                if (other, pass_) in best:
                    e, o = best[("edifice", pass_)], best[(other, pass_)]
                    rows.append((spec, n, pass_, other, e * 1e3, o * 1e3, o / e))
    print(f"\nthrough Python: threads={args.threads} B=1 H={h} D={d} f32; best of {args.rounds} rounds; "
          "speed-up = other's time / edifice's")
    print("| pattern | N | pass | vs | edifice ms | other ms | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for spec, n, pass_, other, e, o, r in rows:
        print(f"| {spec} | {n} | {pass_} | {other} | {e:.1f} | {o:.1f} | {r:.2f}x |")
    call_overhead(torch, edifice, h, d, args.rounds)


def call_overhead(torch, edifice, h, d, rounds, n=64, calls=2000):
    """Per-call cost of the Python layer at N = 64: medians over interleaved
    batches of calls of the API and of the native kernel on preallocated
    buffers (the same kernel, pool and thread), and of the API with the
    kernel replaced by a no-op (the Python layer alone)."""
    from edifice import _kernels

    q, k, v, g = (torch.from_numpy(inputs(h * n * d, s)).view(1, h, n, d) for s in (1, 2, 3, 4))
    kern = _kernels.kernel((1, h, h, n, n, d), "full", False, None)
    qn, kn, vn, gn = q.numpy(), k.numpy(), v.numpy(), g.numpy()
    o, lse = torch.empty_like(q).numpy(), torch.empty(1, h, n).numpy()
    dq, dk, dv = (torch.empty_like(q).numpy() for _ in range(3))
    kern.forward(qn, kn, vn, o, lse)
    qg = q.clone().requires_grad_(True)

    class NoKernel:
        def forward(self, *buffers):
            pass

    def python_layer_alone():
        real = _kernels.kernel
        _kernels.kernel = lambda *key: NoKernel()
        try:
            edifice.attention(q, k, v)
        finally:
            _kernels.kernel = real

    ways = {
        "native forward, preallocated": lambda: kern.forward(qn, kn, vn, o, lse),
        "native forward, new outputs": lambda: kern.forward(qn, kn, vn, torch.empty_like(q).numpy(), torch.empty(1, h, n).numpy()),
        "edifice.attention forward": lambda: edifice.attention(q, k, v),
        "Python layer alone (no-op kernel)": python_layer_alone,
        "torch.ops.edifice.attention forward": lambda: torch.ops.edifice.attention(q, k, v, "full", False, None),
        "torch sdpa forward": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
        "native forward + backward, preallocated": lambda: (kern.forward(qn, kn, vn, o, lse), kern.backward(qn, kn, vn, o, lse, gn, dq, dk, dv)),
        "edifice.attention forward + backward": lambda: edifice.attention(qg, k, v).backward(g),
        "torch sdpa forward + backward": lambda: torch.nn.functional.scaled_dot_product_attention(qg, k, v).backward(g),
    }
    samples = {name: [] for name in ways}
    for _ in range(max(rounds, 5)):
        for name, fn in ways.items():
            for _ in range(100):
                fn()
            t = time.perf_counter()
            for _ in range(calls // 10):
                fn()
            samples[name].append((time.perf_counter() - t) / (calls // 10) * 1e6)
    med = {name: sorted(s)[len(s) // 2] for name, s in samples.items()}
    print(f"\ncall overhead at N={n}, B=1, H={h}, D={d}: median us per call over {max(rounds, 5)} interleaved batches")
    print("| call | us per call | minus native |")
    print("|---|---|---|")
    for name, us in med.items():
        base = med["native forward + backward, preallocated" if "backward" in name else "native forward, preallocated"]
        print(f"| {name} | {us:.1f} | {'-' if 'alone' in name else f'{us - base:+.1f}'} |")


def model_setup(args, config_dir):
    """torch and python/reference.py with --threads, the built binary, and
    the configs to run (--configs, else configs/<config_dir>/*.toml)."""
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch

    sys.path.insert(0, str(ROOT / "python"))
    import reference

    torch.set_num_threads(args.threads)
    subprocess.run(["cargo", "build", "--release", "-p", "edifice-cli"], cwd=ROOT, check=True)
    binary = str(ROOT / "target" / "release" / "edifice")
    configs = args.configs.split(",") if args.configs else sorted(str(p) for p in (ROOT / "configs" / config_dir).glob("*.toml"))
    return torch, reference, binary, configs


def models(args):
    """Training step (batch --batch) and batch-1 forward, edifice vs PyTorch eager."""
    torch, reference, binary, configs = model_setup(args, "defaults")
    import tomllib

    best = {}
    for rnd in range(args.rounds):
        for path in configs:
            config = tomllib.loads(Path(path).read_text())
            name = config["model"]
            for pass_, batch in (("train_step", args.batch), ("forward", 1)):
                cmd = [binary, "bench", "model", "--json", "--config", path, "--batch", str(batch),
                       "--threads", str(args.threads), "--min-time", str(args.min_time)]
                if pass_ == "train_step":
                    cmd.append("--train")
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                ours = json.loads(out)[0]["ms"]

                torch.manual_seed(0)
                model = reference.build(config)
                x = torch.randn(batch, reference.seq_len(config), config["embed_dim"])
                if pass_ == "train_step":
                    model.train()
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

                    def step():
                        y = model(x)[:, -1]
                        loss = (y * y).mean()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                else:
                    model.eval()

                    def step():
                        with torch.inference_mode():
                            model(x)[:, -1]
                theirs = time_it(step, args.min_time) * 1e3
                key = (name, pass_, batch)
                prev = best.get(key, (math.inf, math.inf))
                best[key] = (min(prev[0], ours), min(prev[1], theirs))
                print(f"round {rnd + 1}: {name:<15} {pass_:<10} batch {batch:<3} edifice {ours:9.2f} ms  "
                      f"torch {theirs:9.2f} ms", file=sys.stderr)
    print(f"\n{args.threads} threads, best of {args.rounds} interleaved rounds; speedup = torch ms / edifice ms\n")
    print("| model | pass | batch | edifice ms | PyTorch eager ms | speedup |")
    print("|---|---|---|---|---|---|")
    for (name, pass_, batch), (ours, theirs) in best.items():
        print(f"| {name} | {pass_} | {batch} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps([dict(model=k[0], pass_=k[1], batch=k[2], edifice_ms=v[0], torch_ms=v[1])
                                          for k, v in best.items()], indent=1))


def stream(args):
    """One frame in, one output out: edifice's stream step vs PyTorch eager per-frame recompute."""
    import statistics

    torch, reference, binary, configs = model_setup(args, "stream")
    import tomllib

    rows = []
    for path in configs:
        config = tomllib.loads(Path(path).read_text())
        out = subprocess.run([binary, "stream", "--json", "--config", path, "--frames", str(args.frames),
                              "--threads", str(args.threads)], check=True, capture_output=True, text=True).stdout
        ours = json.loads(out)
        # The reference has no attention_window: over a window of seq_len
        # frames, a window as long is the full causal range.
        torch_config = {k: v for k, v in config.items() if k != "attention_window"}
        torch.manual_seed(0)
        model = reference.build(torch_config).eval()
        x = torch.randn(1, reference.seq_len(torch_config), config["embed_dim"])
        times, deadline = [], time.perf_counter() + max(args.min_time, 2.0)
        with torch.inference_mode():
            model(x)[:, -1]
            while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 2000):
                start = time.perf_counter()
                model(x)[:, -1]
                times.append((time.perf_counter() - start) * 1e6)
        theirs = statistics.median(times)
        inc, rec = ours["incremental"], ours["recompute"]
        rows.append(dict(config=Path(path).name, model=config["model"], p50_us=inc["p50_us"], p99_us=inc["p99_us"],
                         recompute_p50_us=rec["p50_us"], torch_p50_us=theirs, torch_steps=len(times)))
        print(f"{Path(path).name:<28} stream p50 {inc['p50_us']:8.1f} us  p99 {inc['p99_us']:8.1f} us  "
              f"recompute {rec['p50_us']:10.1f} us  torch {theirs:10.1f} us", file=sys.stderr)
    print(f"\n{args.threads} thread(s), one stream; x = PyTorch eager per-frame recompute p50 / stream p50\n")
    print("| config | stream p50 µs | stream p99 µs | Edifice-style recompute p50 µs | PyTorch eager recompute p50 µs | x |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['recompute_p50_us']:.1f} | "
              f"{r['torch_p50_us']:.1f} | {r['torch_p50_us'] / r['p50_us']:.1f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
