"""Argument checks and the cache of native kernels, shared by the NumPy and
torch front ends. Shapes: ``q [B, Hq, Nq, E]``, ``k, v [B, Hkv, Nk, E]``."""

from __future__ import annotations

import functools
import math
import weakref

from . import _edifice

# Block-sparse masks by token ("blocks:7"): the string a torch op can carry
# through the dispatcher and torch.compile. Each lives as long as the
# BlockMask that made it (which holds it); a compiled graph that outlives
# its BlockMask gets a clear error, not a stale mask.
_BLOCKS: "weakref.WeakValueDictionary[str, _edifice.Blocks]" = weakref.WeakValueDictionary()
_NEXT_TOKEN = iter(range(1, 1 << 62))

BLOCKS_PREFIX = "blocks#"


def register_blocks(blocks: _edifice.Blocks) -> str:
    """A token naming ``blocks`` in a pattern argument."""
    token = f"{BLOCKS_PREFIX}{next(_NEXT_TOKEN)}"
    _BLOCKS[token] = blocks
    return token


@functools.lru_cache(maxsize=128)
def kernel(shape: tuple, pattern: str, causal: bool, scale: float | None) -> _edifice.Kernel:
    """The native kernel of one call's sizes, pattern and scale (cached: the
    tile map is built once per distinct call)."""
    if pattern.startswith(BLOCKS_PREFIX):
        blocks = _BLOCKS.get(pattern)
        if blocks is None:
            raise ValueError(f"block_mask: the BlockMask behind {pattern!r} no longer exists")
        return _edifice.Kernel.with_blocks(shape, blocks, scale)
    return _edifice.Kernel(shape, pattern, causal, scale)


def check_scale(scale) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_shapes(q_shape, k_shape, v_shape) -> tuple:
    """``(B, Hq, Hkv, Nq, Nk, E)`` of a call, or ``ValueError`` naming the
    argument at fault."""
    for name, shape in (("q", q_shape), ("k", k_shape), ("v", v_shape)):
        if len(shape) != 4:
            raise ValueError(f"{name}: expected 4 dims (B, H, L, E), got shape {tuple(shape)}")
    (b, hq, nq, e), (bk, hkv, nk, ek) = q_shape, k_shape
    if tuple(v_shape) != tuple(k_shape):
        raise ValueError(f"v: expected the shape of k {tuple(k_shape)}, got {tuple(v_shape)}")
    if bk != b:
        raise ValueError(f"k: batch {bk} differs from q's batch {b}")
    if ek != e:
        raise ValueError(f"k: head dim {ek} differs from q's head dim {e}")
    if e == 0:
        raise ValueError("q: the head dim must be at least 1")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"k: its {hkv} heads must divide q's {hq} heads (grouped-query attention)")
    return (b, hq, hkv, nq, nk, e)
