"""Bad inputs raise TypeError / ValueError naming the argument; none
crashes the interpreter."""

import numpy as np
import pytest
import torch

import edifice
from edifice import _edifice
from edifice import patterns as P


def qkv(**kw):
    shape = kw.pop("shape", (1, 2, 8, 4))
    return [torch.randn(*shape, **kw) for _ in range(3)]


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda q, k, v: (q.double(), k, v), TypeError, "q: expected float32 or bfloat16"),
        (lambda q, k, v: (q, k.bfloat16(), v), TypeError, "k: dtype"),
        (lambda q, k, v: (q.to("meta"), k, v), ValueError, "q: edifice runs on the CPU"),
        (lambda q, k, v: (q[0], k, v), ValueError, "q: expected 4 dims"),
        (lambda q, k, v: (q, k, v[:, :, :5]), ValueError, "v: expected the shape of k"),
        (lambda q, k, v: (q, k[..., :3], v[..., :3]), ValueError, "k: head dim"),
        (lambda q, k, v: (q, torch.cat([k, k]), torch.cat([v, v])), ValueError, "k: batch"),
        (lambda q, k, v: (torch.cat([q, q[:, :1]], 1), k, v), ValueError, "must divide"),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, "k: expected a NumPy array"),
        (lambda q, k, v: ([1.0], k, v), TypeError, "q: expected a torch.Tensor"),
    ],
)
def test_bad_tensors(change, error, match):
    with pytest.raises(error, match=match):
        edifice.attention(*change(*qkv()))


def test_bad_patterns_and_arguments():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown pattern"):
        edifice.attention(q, k, v, "windw:4")
    with pytest.raises(ValueError, match="pattern"):
        edifice.attention(q, k, v, "window:0")
    with pytest.raises(TypeError, match="pattern"):
        edifice.attention(q, k, v, 4)
    with pytest.raises(ValueError, match="unknown pattern"):
        P.Pattern("nope")
    with pytest.raises(ValueError, match="size must be at least 1"):
        P.window(0)
    with pytest.raises(TypeError, match="causal"):
        edifice.attention(q, k, v, causal="yes")
    with pytest.raises(ValueError, match="scale must be finite"):
        edifice.attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="NumPy arrays must be float32"):
        edifice.attention(*(t.double().numpy() for t in (q, k, v)))


def test_the_native_layer_refuses_what_would_be_unsafe():
    kern = _edifice.Kernel((1, 2, 2, 8, 8, 4), "full", False)
    q = np.zeros((1, 2, 8, 4), np.float32)
    o, lse = np.zeros_like(q), np.zeros((1, 2, 8), np.float32)
    with pytest.raises(ValueError, match="shares memory"):
        kern.forward(q, q, q, q, lse)
    with pytest.raises(ValueError, match="shape"):
        kern.forward(q, q, q, o, lse[:, :1])
    frozen = np.zeros_like(q)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kern.forward(q, q, q, frozen, lse)
    with pytest.raises(ValueError, match="C-contiguous"):
        kern.forward(q.transpose(0, 1, 3, 2), q, q, o, lse)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        kern.forward(q.astype(np.float64), q, q, o, lse)
    with pytest.raises(TypeError, match="expected a NumPy array"):
        kern.forward("q", q, q, o, lse)
    with pytest.raises(ValueError, match="query heads"):
        _edifice.Kernel((1, 3, 2, 8, 8, 4), "full", False)


def test_bad_block_lists_are_refused():
    i32 = lambda *x: np.array(x, np.int32)
    ok = dict(num=i32(1), indices=i32(0), full_num=i32(0), full_indices=i32(0), bits=np.ones(4, np.uint8))
    _edifice.Blocks((2, 2), (2, 2), (1, 1), **ok)
    for change, match in [
        (dict(num=i32(2)), "lists 2 blocks"),
        (dict(indices=i32(5)), "past the"),
        (dict(indices=i32(-1)), "negative"),
        (dict(bits=np.ones(3, np.uint8)), "bits"),
        (dict(bits=np.ones(8, np.uint8)), "more partial-block bits"),
        (dict(full_num=i32(1)), "twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            _edifice.Blocks((2, 2), (2, 2), (1, 1), **{**ok, **change})


def test_bad_flex_calls():
    q = torch.randn(1, 2, 16, 8)
    bm = edifice.create_block_mask(lambda b, h, i, j: i >= j, None, None, 16, 16, BLOCK_SIZE=8)
    with pytest.raises(NotImplementedError, match="score_mod"):
        edifice.flex_attention(q, q, q, score_mod=lambda s, b, h, i, j: s)
    with pytest.raises(ValueError, match="lengths"):
        edifice.flex_attention(q[:, :, :8], q, q, block_mask=bm)
    with pytest.raises(ValueError, match="enable_gqa"):
        edifice.flex_attention(q, q[:, :1], q[:, :1])
    with pytest.raises(TypeError, match="block_mask"):
        edifice.flex_attention(q, q, q, block_mask="causal")
    with pytest.raises(ValueError, match="BLOCK_SIZE"):
        edifice.create_block_mask(lambda b, h, i, j: i >= j, None, None, 16, 16, BLOCK_SIZE=0)
    with pytest.raises(ValueError, match="device"):
        edifice.create_block_mask(lambda b, h, i, j: i >= j, None, None, 16, 16, device="meta")
    bm4 = edifice.create_block_mask(lambda b, h, i, j: i >= j, 3, None, 16, 16, BLOCK_SIZE=8)
    with pytest.raises(ValueError, match="batch and head dims"):
        edifice.flex_attention(torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8), block_mask=bm4)


def test_random_calls_raise_or_run_never_crash():
    """Random shapes, buffer sizes, dtypes and patterns against the native
    layer: every call either runs or raises TypeError / ValueError."""
    rng = np.random.default_rng(7)
    specs = ["full", "window:3", "chunk:0", "strided:0:2", "global:9", "window:2|nope", "shifted:4", ""]
    ran = refused = 0
    for _ in range(1500):
        shape = tuple(int(x) for x in rng.integers(0, 5, size=6))
        try:
            kern = _edifice.Kernel(shape, specs[rng.integers(len(specs))], bool(rng.integers(2)), [None, 0.5, float("inf")][rng.integers(3)])
        except (TypeError, ValueError):
            refused += 1
            continue
        b, hq, hkv, nq, nk, e = shape
        sizes = [b * hq * nq * e, b * hkv * nk * e, b * hkv * nk * e, b * hq * nq * e, b * hq * nq]
        args = [np.zeros(n, np.float32) for n in sizes]
        if rng.random() < 0.5:  # spoil one argument: its size or its dtype
            i = int(rng.integers(5))
            n = max(0, sizes[i] + int(rng.choice([-1, 1])))
            args[i] = np.zeros(n, np.float32) if rng.random() < 0.5 else np.zeros(sizes[i], [np.int16, np.float64][rng.integers(2)])
        try:
            kern.forward(*args)
            ran += 1
        except (TypeError, ValueError):
            refused += 1
    assert ran > 50 and refused > 50, (ran, refused)
