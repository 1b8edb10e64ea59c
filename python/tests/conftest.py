"""Shared helpers: dense reference masks written from the pattern rules in
``edifice.patterns`` (independently of the kernel) and float64 SDPA."""

import pytest
import torch
import torch.nn.functional as F


def rule(spec: str, h: int, heads: int, i, j):
    """Whether aligned query position ``i`` of head ``h`` reads key ``j``
    under one pattern string (broadcast tensors)."""
    if "|" in spec:
        out = torch.zeros(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool)
        for part in spec.split("|"):
            out |= rule(part, h, heads, i, j)
        return out
    name, *args = spec.split(":")
    a = [int(x) for x in args]
    if name == "full":
        return torch.ones(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool)
    if name == "window":
        return (i - j).abs() < a[0]
    if name == "chunk":
        return i // a[0] == j // a[0]
    if name == "strided":
        return ((i - j).abs() < a[1]) | (j % a[0] == h % a[0])
    if name == "shifted":
        shift = 0 if h < heads // 2 else a[0] // 2
        return (i + shift) // a[0] == (j + shift) // a[0]
    if name == "global":
        return (j < a[0]) | (i < a[0])
    raise ValueError(spec)


def dense_mask(spec: str, heads: int, nq: int, nk: int, causal: bool) -> torch.Tensor:
    """``[heads, nq, nk]`` bool: queries aligned to the end of the keys."""
    i = torch.arange(nq)[:, None] + (nk - nq)
    j = torch.arange(nk)[None, :]
    masks = []
    for h in range(heads):
        m = rule(spec, h, heads, i, j)
        if causal:
            m = m & (j <= i)
        masks.append(m)
    return torch.stack(masks)


def sdpa64(q, k, v, mask, scale=None):
    """float64 masked attention; rows with no allowed key give 0 (as the
    kernel and FlexAttention do)."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


def rel_err(got, want):
    """Largest difference relative to the largest value of ``want``."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp(min=1e-30)).item()


def assert_lse_matches(lse, want):
    """Equal -inf rows (no allowed key), finite values within 1e-5."""
    finite = want.isfinite()
    assert torch.equal(finite, lse.isfinite())
    assert (lse[finite].double() - want[finite].double()).abs().max() < 1e-5


def assert_gradients_match(o, leaves, inputs, mask):
    """Sends one random output gradient back through ``o`` (computed from
    the ``leaves``) and through float64 masked attention of ``inputs``:
    every gradient within 1e-4 of the largest reference gradient."""
    d_o = torch.randn_like(o)
    (o * d_o).sum().backward()
    ref = [t.detach().double().requires_grad_() for t in inputs]
    (sdpa64(*ref, mask) * d_o.double()).sum().backward()
    for got, want in zip(leaves, ref):
        assert rel_err(got.grad, want.grad) < 1e-4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
