"""``edifice.attention``: one fused block-sparse attention call on torch
tensors or NumPy arrays."""

from __future__ import annotations

import numpy as np

from . import _kernels
from .patterns import Pattern


def _numpy_forward(q, k, v, pattern: str, causal: bool, scale):
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a NumPy array like q, got {type(a).__name__}")
        if a.dtype != np.float32:
            raise TypeError(f"{name}: NumPy arrays must be float32, got {a.dtype}")
    shape = _kernels.check_shapes(q.shape, k.shape, v.shape)
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    o = np.empty_like(q)
    lse = np.empty(q.shape[:3], dtype=np.float32)
    _kernels.kernel(shape, pattern, causal, scale).forward(q, k, v, o, lse)
    return o, lse


def attention(q, k, v, pattern: Pattern | str = "full", causal: bool = False, scale: float | None = None, return_lse: bool = False):
    """Fused attention ``softmax(scale · q kᵀ + mask) v`` over the pairs
    ``pattern`` allows, never building the ``Nq x Nk`` scores.

    Args:
        q: ``[B, Hq, Nq, E]`` torch tensor (float32 or bfloat16, CPU) or
            float32 NumPy array (forward only).
        k, v: ``[B, Hkv, Nk, E]``; ``Hkv`` divides ``Hq`` (query head ``h``
            reads kv head ``h // (Hq // Hkv)``).
        pattern: a :class:`edifice.patterns.Pattern` or its string
            (``"window:256"``, ``"strided:8:16|global:4"``).
        causal: also require key ``j <= i``, queries aligned to the end of
            the keys (query ``i`` sits at position ``Nk - Nq + i``).
        scale: score scale, ``1/sqrt(E)`` when None.
        return_lse: also return ``lse [B, Hq, Nq]`` (float32, natural log;
            ``-inf`` for a row that reads no key, whose output is 0). It
            carries no gradient.

    Returns:
        ``o [B, Hq, Nq, E]`` in q's dtype, or ``(o, lse)``. Differentiable
        in q, k and v (torch), under ``torch.compile`` too.

    Raises:
        TypeError: a wrong type or dtype, naming the argument.
        ValueError: a wrong device, rank or shape, or a bad pattern.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    if not isinstance(pattern, (str, Pattern)):
        raise TypeError(f"pattern: expected a string or edifice.patterns.Pattern, got {type(pattern).__name__}")
    # A string is checked where the kernel is built (its error names the
    # pattern): no native call here, so torch.compile traces through.
    spec = pattern if isinstance(pattern, str) else str(pattern)
    scale = _kernels.check_scale(scale)
    if isinstance(q, np.ndarray):
        o, lse = _numpy_forward(q, k, v, spec, causal, scale)
    else:
        from . import _torch

        shape = _torch.check(q, k, v)
        o, lse = _torch.attention(q, k, v, shape, spec, causal, scale)
    return (o, lse) if return_lse else o
