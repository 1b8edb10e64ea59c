#!/usr/bin/env python3
"""PyTorch reference of edifice's five models, written from
shared/spec/edifice-semantics.md (not from the Rust code).

Module attribute names equal edifice's weight names (docs/weights.md), so a
state_dict loads edifice's safetensors as they are and the other way round.

Two uses:

* `python python/reference.py golden` writes tests/golden/reference/*.safetensors:
  cases Edifice itself cannot produce (strict_causal, combine = sum, longer
  sequences where the window and the chunks matter, two LSTM layers), each
  holding `config` (JSON, in the metadata), the weights, input `x`, and
  outputs `y` (last timestep) and `y_all` (every timestep), computed in
  float64. `cargo test` checks edifice against them.
* `scripts/bench_vs_torch.py --models` imports `build` to time PyTorch eager
  training steps of the same models.

Needs torch, numpy and safetensors.
"""

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = {
    "dual_chunk": dict(hidden_size=256, num_heads=8, num_layers=4, chunk_size=64, dropout=0.1,
                       seq_len=None, window_size=None, strict_causal=False, combine="Gate"),
    "sliding_window": dict(window_size=60, num_heads=4, head_dim=64, num_layers=2, ffn_dim=256,
                           dropout=0.1, seq_len=None, hidden_size=None),
    "hybrid": dict(lstm_hidden=256, lstm_layers=1, num_heads=4, head_dim=64, dropout=0.1,
                   window_size=60, seq_len=None, mlp_sizes=[]),
    "ring": dict(hidden_size=256, num_heads=4, num_chunks=4, num_layers=4, dropout=0.1, window_size=60),
}
DEFAULTS["hybrid_mlp"] = dict(DEFAULTS["hybrid"], mlp_sizes=[256, 256])
DEFAULTS["shifted_sparse"] = dict(hidden_size=256, num_heads=8, num_layers=4, dropout=0.1, seq_len=64,
                                  pattern="strided", stride=None, local_window=16, global_tokens=0,
                                  group_size=None, causal=True, allow_uncovered=False)


def options(config):
    """Edifice defaults overlaid with `config` (which names the model)."""
    opts = dict(DEFAULTS[config["model"]])
    opts.update({k: v for k, v in config.items() if k != "model"})
    return opts


def masked_softmax(scores, allowed, eps=0.0):
    """Softmax over allowed entries; rows with none allowed give zeros."""
    scores = scores.masked_fill(~allowed, -math.inf)
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(scores - m) * allowed
    return e / (e.sum(-1, keepdim=True) + eps).clamp_min(1e-300)


def attend(q, k, v, allowed):
    """softmax(q kᵀ / sqrt(hd)) v over `allowed` [.., Tq, Tk]."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return masked_softmax(s, allowed) @ v


def heads(x, nh):
    b, t, w = x.shape
    return x.view(b, t, nh, w // nh).transpose(1, 2)


def merge(x):
    b, nh, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, nh * hd)


class Ffn(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.up, self.down = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class DualChunkAttention(nn.Module):
    """Spec §2.3; strict_causal: token queries over earlier chunks' means."""

    def __init__(self, h, nh, chunk, strict, combine):
        super().__init__()
        self.qkv, self.out = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.gate = nn.Parameter(torch.zeros(nh, h // nh))
        self.nh, self.chunk, self.strict, self.combine = nh, chunk, strict, combine

    def forward(self, x):
        b, t, _ = x.shape
        c, nc = self.chunk, t // self.chunk
        q, k, v = (heads(z, self.nh) for z in self.qkv(x).chunk(3, -1))
        hd = q.shape[-1]
        pos = torch.arange(t)
        same_chunk_causal = (pos[:, None] >= pos[None, :]) & (pos[:, None] // c == pos[None, :] // c)
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        intra = masked_softmax(s, same_chunk_causal, eps=1e-8) @ v
        qs, ks, vs = (z.reshape(b, self.nh, nc, c, hd).mean(3) for z in (q, k, v))
        if self.strict:
            earlier = torch.arange(nc)[None, :] < (pos[:, None] // c)
            inter = attend(q, ks, vs, earlier)
        else:
            chunk_causal = torch.arange(nc)[:, None] >= torch.arange(nc)[None, :]
            s2 = qs @ ks.transpose(-1, -2) / math.sqrt(hd)
            inter = (masked_softmax(s2, chunk_causal, eps=1e-8) @ vs).repeat_interleave(c, dim=2)
        if self.combine == "Sum":
            out = intra + inter
        else:
            g = torch.sigmoid(self.gate).view(1, self.nh, 1, hd)
            out = g * inter + (1 - g) * intra
        return self.out(merge(out))


class RingAttention(nn.Module):
    """Spec §4.3: exact causal attention (the ring order only changes summation order)."""

    def __init__(self, h, nh):
        super().__init__()
        self.qkv, self.out_proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.nh = nh

    def forward(self, x):
        q, k, v = (heads(z, self.nh) for z in self.qkv(x).chunk(3, -1))
        t = x.shape[1]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True) if q.dtype == torch.float32 else \
            attend(q, k, v, torch.ones(t, t, dtype=torch.bool).tril())
        return self.out_proj(merge(o))


class SparseAttention(nn.Module):
    """Shifted sparse attention: per-head boolean patterns (README, kernel docs)."""

    def __init__(self, h, o):
        super().__init__()
        self.qkv, self.out_proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.nh, self.o = o["num_heads"], o

    def allowed(self, t):
        o, nh = self.o, self.nh
        i = torch.arange(t).view(1, t, 1)
        j = torch.arange(t).view(1, 1, t)
        h = torch.arange(nh).view(nh, 1, 1)
        if o["pattern"].lower() == "strided":
            s, g = o["stride"] or nh, o["global_tokens"]
            m = ((i - j).abs() < o["local_window"]) | ((j % s) == (h % s)) | (j < g)
            if not o["causal"]:
                m = m | (i < g)
        else:
            g = o["group_size"] or max(o["seq_len"] // 4, 1)
            shift = (h >= nh // 2).long() * (g // 2)
            m = ((i + shift) // g) == ((j + shift) // g)
        if o["causal"]:
            m = m & (j <= i)
        return m.expand(nh, t, t)

    def forward(self, x):
        q, k, v = (heads(z, self.nh) for z in self.qkv(x).chunk(3, -1))
        return self.out_proj(merge(attend(q, k, v, self.allowed(x.shape[1]))))


class Block(nn.Module):
    def __init__(self, h, attn, dropout):
        super().__init__()
        self.attn_norm, self.attn = nn.LayerNorm(h, eps=1e-5), attn
        self.ffn_norm, self.ffn = nn.LayerNorm(h, eps=1e-5), Ffn(h)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.attn_norm(x)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class Backbone(nn.Module):
    """ModelBuilder.build_sequence_model with pre-norm blocks (spec §1.2, §1.3)."""

    def __init__(self, e, h, blocks, inter_dropout):
        super().__init__()
        self.input_projection = nn.Linear(e, h) if e != h else None
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(h, eps=1e-5)
        self.inter = nn.Dropout(inter_dropout)

    def forward(self, x):
        if self.input_projection is not None:
            x = self.input_projection(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i + 1 < len(self.blocks):
                x = self.inter(x)
        return self.final_norm(x)


class SlidingWindow(nn.Module):
    """Spec §3.6: post-norm, sine positions, windowed causal attention without out-projection."""

    def __init__(self, o):
        super().__init__()
        hd = o["hidden_size"] // o["num_heads"] if o["hidden_size"] else o["head_dim"]
        width = o["num_heads"] * hd
        self.nh, self.window = o["num_heads"], o["window_size"]
        self.input_proj = nn.Linear(o["embed_dim"], width)
        self.layers = nn.ModuleList()
        for _ in range(o["num_layers"]):
            layer = nn.Module()
            layer.attn = nn.Module()
            layer.attn.qkv = nn.Linear(width, 3 * width)
            layer.norm1, layer.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            layer.ffn1, layer.ffn2 = nn.Linear(width, o["ffn_dim"]), nn.Linear(o["ffn_dim"], width)
            self.layers.append(layer)
        self.drop = nn.Dropout(o["dropout"])

    def forward(self, x):
        x = self.input_proj(x)
        t, e = x.shape[1], x.shape[2]
        pos = torch.arange(t, dtype=x.dtype)[:, None]
        d = torch.arange(e, dtype=x.dtype)[None, :]
        x = x + torch.sin(pos * (1.0 / (1.0 + d * 0.01)))
        i = torch.arange(t)
        window = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < self.window)
        for layer in self.layers:
            q, k, v = (heads(z, self.nh) for z in layer.attn.qkv(x).chunk(3, -1))
            x = layer.norm1(x + merge(attend(q, k, v, window)))
            x = layer.norm2(x + self.drop(layer.ffn2(F.gelu(layer.ffn1(x)))))
        return x


class LstmStack(nn.Module):
    """Single-layer LSTMs in PyTorch's layout, named weight_ih_l{n} etc."""

    def __init__(self, sizes, u):
        super().__init__()
        self.n, self.u = len(sizes), u
        for n, inp in enumerate(sizes):
            for name, shape in [("weight_ih", (4 * u, inp)), ("weight_hh", (4 * u, u)),
                                ("bias_ih", (4 * u,)), ("bias_hh", (4 * u,))]:
                self.register_parameter(f"{name}_l{n}", nn.Parameter(torch.empty(shape)))
            bound = 1 / math.sqrt(u)
            for p in self.layer(n):
                nn.init.uniform_(p, -bound, bound)

    def layer(self, n):
        return [getattr(self, f"{k}_l{n}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def run(self, n, x):
        z = x.new_zeros(1, x.shape[0], self.u)
        out, _, _ = torch.lstm(x, (z, z), self.layer(n), True, 1, 0.0, self.training, False, True)
        return out


class Hybrid(nn.Module):
    """Spec §3.7 / §3.8 with a zero LSTM initial state."""

    def __init__(self, o):
        super().__init__()
        u, nh, hd, e = o["lstm_hidden"], o["num_heads"], o["head_dim"], o["embed_dim"]
        width = nh * hd
        self.nh = nh
        self.input_ln = nn.LayerNorm(e, eps=1e-6)
        self.lstm = LstmStack([e] + [u] * (o["lstm_layers"] - 1), u)
        self.lstm_norms = nn.ModuleList(nn.LayerNorm(u, eps=1e-6) for _ in range(o["lstm_layers"]))
        self.lstm_to_attn_proj = nn.Linear(u, width)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.output = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=1e-5)
        sizes = [width] + list(o["mlp_sizes"])
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.drop = nn.Dropout(o["dropout"])

    def forward(self, x):
        x = self.input_ln(x)
        for n, norm in enumerate(self.lstm_norms):
            x = norm(self.lstm.run(n, x))
            if n + 1 < len(self.lstm_norms):
                x = self.drop(x)
        x = self.lstm_to_attn_proj(x)
        q, k, v = (heads(z, self.nh) for z in self.attn.qkv(x).chunk(3, -1))
        if q.dtype == torch.float32:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            t = x.shape[1]
            o = attend(q, k, v, torch.ones(t, t, dtype=torch.bool).tril())
        x = self.attn_norm(x + self.drop(self.attn.output(merge(o))))
        for layer in self.mlp:
            x = self.drop(F.relu(layer(x)))
        return x


def build(config):
    """The model of `config` (a dict with a `model` key and Edifice options).
    `forward(x [B, T, E])` returns every timestep `[B, T, out]`."""
    o = options(config)
    kind = config["model"]
    if kind == "dual_chunk":
        h, nh = o["hidden_size"], o["num_heads"]
        blocks = [Block(h, DualChunkAttention(h, nh, o["chunk_size"], o["strict_causal"], o["combine"]), o["dropout"])
                  for _ in range(o["num_layers"])]
        return Backbone(o["embed_dim"], h, blocks, 0.0)
    if kind == "ring":
        h = o["hidden_size"]
        blocks = [Block(h, RingAttention(h, o["num_heads"]), o["dropout"]) for _ in range(o["num_layers"])]
        return Backbone(o["embed_dim"], h, blocks, o["dropout"])
    if kind == "shifted_sparse":
        h = o["hidden_size"]
        blocks = [Block(h, SparseAttention(h, o), o["dropout"]) for _ in range(o["num_layers"])]
        return Backbone(o["embed_dim"], h, blocks, 0.0)
    if kind == "sliding_window":
        return SlidingWindow(o)
    if kind in ("hybrid", "hybrid_mlp"):
        return Hybrid(o)
    raise SystemExit(f"unknown model {kind}")


def seq_len(config):
    o = options(config)
    if config["model"] == "ring":
        return o["window_size"]
    if config["model"] == "dual_chunk":
        return o["seq_len"] or o["window_size"] or 64
    if config["model"] == "shifted_sparse":
        return o["seq_len"]
    return o["seq_len"] or o["window_size"]


GOLDEN_CASES = {
    "shifted_sparse_strided_global": {"model": "shifted_sparse", "embed_dim": 20, "hidden_size": 32, "num_heads": 4,
                                      "num_layers": 2, "seq_len": 150, "stride": 4, "local_window": 9,
                                      "global_tokens": 3, "dropout": 0.0},
    "shifted_sparse_strided_bidirectional": {"model": "shifted_sparse", "embed_dim": 16, "hidden_size": 16,
                                             "num_heads": 2, "num_layers": 1, "seq_len": 70, "stride": 2,
                                             "local_window": 5, "global_tokens": 2, "causal": False,
                                             "dropout": 0.0},
    "shifted_sparse_shifted": {"model": "shifted_sparse", "embed_dim": 24, "hidden_size": 32, "num_heads": 4,
                               "num_layers": 2, "seq_len": 96, "pattern": "shifted", "dropout": 0.0},
    "dual_chunk_strict_gate": {"model": "dual_chunk", "embed_dim": 24, "hidden_size": 32, "num_heads": 4,
                               "num_layers": 2, "chunk_size": 8, "seq_len": 64, "dropout": 0.0,
                               "strict_causal": True},
    "dual_chunk_sum": {"model": "dual_chunk", "embed_dim": 32, "hidden_size": 32, "num_heads": 2,
                       "num_layers": 2, "chunk_size": 16, "seq_len": 128, "dropout": 0.0, "combine": "Sum"},
    "dual_chunk_strict_sum": {"model": "dual_chunk", "embed_dim": 20, "hidden_size": 16, "num_heads": 2,
                              "num_layers": 1, "chunk_size": 4, "seq_len": 24, "dropout": 0.0,
                              "strict_causal": True, "combine": "Sum"},
    "sliding_window_t80_w16": {"model": "sliding_window", "embed_dim": 20, "window_size": 16, "seq_len": 80,
                               "num_heads": 2, "head_dim": 8, "num_layers": 2, "ffn_dim": 24, "dropout": 0.0},
    "ring_t64_nc8": {"model": "ring", "embed_dim": 24, "hidden_size": 32, "num_heads": 4, "num_chunks": 8,
                     "num_layers": 2, "dropout": 0.0, "window_size": 64},
    "hybrid_mlp_two_lstm_layers": {"model": "hybrid_mlp", "embed_dim": 12, "lstm_hidden": 16, "lstm_layers": 2,
                                   "num_heads": 2, "head_dim": 8, "dropout": 0.0, "window_size": 20,
                                   "mlp_sizes": [12, 6]},
}


def golden():
    from safetensors.torch import save_file

    out_dir = ROOT / "tests" / "golden" / "reference"
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, config) in enumerate(GOLDEN_CASES.items()):
        torch.manual_seed(1000 + i)
        model = build(config).double().eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() == 1 and pname.endswith("norm.weight") or pname.endswith("_ln.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif p.dim() == 1 and "lstm_norms" in pname and pname.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif p.dim() == 1:
                    p.normal_(0, 0.3)
                else:
                    p.normal_(0, 1.0 / math.sqrt(p.shape[-1]))
            x = torch.randn(2, seq_len(config), config["embed_dim"], dtype=torch.float64)
            y_all = model(x)
        tensors = {k: v.float().contiguous() for k, v in model.state_dict().items()}
        tensors["x"] = x.float()
        tensors["y_all"] = y_all.float()
        tensors["y"] = y_all[:, -1].float().contiguous()
        save_file(tensors, str(out_dir / f"{name}.safetensors"), metadata={"config": json.dumps(config)})
        print(f"wrote {name}: y {tuple(tensors['y'].shape)}, {len(tensors) - 3} weights")


if __name__ == "__main__":
    if sys.argv[1:] == ["golden"]:
        golden()
    else:
        raise SystemExit(__doc__)
