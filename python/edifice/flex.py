"""A drop-in for ``torch.nn.attention.flex_attention`` on the CPU, with the
backward pass torch's CPU FlexAttention lacks.

Change one import::

    # from torch.nn.attention.flex_attention import flex_attention, create_block_mask
    from edifice import flex_attention, create_block_mask

A ``BlockMask`` (torch's own, from either ``create_block_mask``) becomes the
kernel's explicit block-sparse pattern: its full key blocks are read whole,
its partial blocks through a bitmask evaluated once from its ``mask_mod``
(``block_q · block_k`` bits per partial block, cached on the mask), and
every other block is skipped, so memory grows with the partial blocks,
never with ``Nq x Nk``.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention.flex_attention import BlockMask, noop_mask

from . import _edifice, _kernels, _torch

__all__ = ["flex_attention", "create_block_mask"]

# Pairs evaluated per mask_mod call (bounds the memory of the evaluation).
_EVAL_PAIRS = 1 << 22


def _indexing():
    """torch's context that lets a mask_mod index tensors with the vmapped
    0-d indices (``doc[q_idx]``), as torch's own create_block_mask does."""
    try:
        from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex
    except ImportError:  # pragma: no cover - older or newer torch
        return contextlib.nullcontext()
    return TransformGetItemToIndex()


def _block_sizes(block_size) -> tuple[int, int]:
    sizes = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    if len(sizes) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"BLOCK_SIZE: expected a positive int or a pair of them, got {block_size!r}")
    return sizes


def create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN, device="cpu", BLOCK_SIZE=128, _compile=False) -> BlockMask:
    """torch's ``BlockMask`` for ``mask_mod(b, h, q_idx, kv_idx) -> bool``,
    built on the CPU a few query blocks at a time (torch's eager version
    holds the whole ``B x H x Q_LEN x KV_LEN`` mask). ``B`` or ``H`` None
    means the mask is the same for every batch or head. Positions past the
    lengths count as masked, as in torch, so edge blocks are partial.
    The result works with torch's ``flex_attention`` too."""
    if not callable(mask_mod):
        raise TypeError(f"mask_mod: expected a callable, got {type(mask_mod).__name__}")
    if str(torch.device(device)) != "cpu":
        raise ValueError(f"device: edifice builds block masks on the CPU, got {device}")
    b_n, h_n = B or 1, H or 1
    for name, n in (("B", b_n), ("H", h_n), ("Q_LEN", Q_LEN), ("KV_LEN", KV_LEN)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name}: expected a positive int, got {n!r}")
    bq, bk = _block_sizes(BLOCK_SIZE)
    q_blocks, k_blocks = -(-Q_LEN // bq), -(-KV_LEN // bk)
    fn = torch.vmap(mask_mod, in_dims=(None, None, None, 0))
    for dims in ((None, None, 0, None), (None, 0, None, None), (0, None, None, None)):
        fn = torch.vmap(fn, in_dims=dims)
    kv = torch.arange(k_blocks * bk)
    per_block = max(1, _EVAL_PAIRS // (b_n * h_n * bq * kv.numel()))
    full, part = [], []
    with _indexing():
        for first in range(0, q_blocks, per_block):
            rows = min(per_block, q_blocks - first)
            q = torch.arange(first * bq, (first + rows) * bq)
            allowed = fn(torch.arange(b_n), torch.arange(h_n), q.clamp(max=Q_LEN - 1), kv.clamp(max=KV_LEN - 1))
            allowed = allowed & (q < Q_LEN)[:, None] & (kv < KV_LEN)
            blocks = allowed.reshape(b_n, h_n, rows, bq, k_blocks, bk).transpose(3, 4)
            count = blocks.sum(dim=(-2, -1))
            full.append(count == bq * bk)
            part.append((count > 0) & (count < bq * bk))
    full, part = torch.cat(full, dim=2), torch.cat(part, dim=2)

    def lists(flags):
        # Listed blocks first, in ascending order (torch's layout).
        return flags.sum(-1, dtype=torch.int32), torch.argsort(~flags, dim=-1, stable=True).to(torch.int32)

    (num, idx), (full_num, full_idx) = lists(part), lists(full)
    return BlockMask.from_kv_blocks(num, idx, full_num, full_idx, BLOCK_SIZE=(bq, bk), mask_mod=mask_mod, seq_lengths=(Q_LEN, KV_LEN))


def _partial_bits(block_mask: BlockMask, rows, kb, q_blocks, planes) -> torch.Tensor:
    """``[partial blocks, block_q · block_k]`` uint8: the mask_mod on each
    partial block (rows and keys past the ends are clamped: the kernel
    ignores them)."""
    (q_len, kv_len), (bq, bk) = block_mask.seq_lengths, block_mask.BLOCK_SIZE
    mask_mod = block_mask.mask_mod or noop_mask
    plane, qb = rows // q_blocks, rows % q_blocks
    b, h = plane // planes[1], plane % planes[1]
    q = (qb[:, None] * bq + torch.arange(bq)).clamp(max=q_len - 1)
    kv = (kb[:, None] * bk + torch.arange(bk)).clamp(max=kv_len - 1)
    fn = torch.vmap(mask_mod, in_dims=(None, None, None, 0))
    fn = torch.vmap(fn, in_dims=(None, None, 0, None))
    fn = torch.vmap(fn, in_dims=(0, 0, 0, 0))
    step = max(1, _EVAL_PAIRS // (bq * bk))
    out = torch.empty((len(rows), bq * bk), dtype=torch.uint8)
    with _indexing():
        for s in range(0, len(rows), step):
            e = s + step
            out[s:e] = fn(b[s:e], h[s:e], q[s:e], kv[s:e]).reshape(-1, bq * bk).to(torch.uint8)
    return out


@torch.compiler.assume_constant_result
def _blocks_of(block_mask: BlockMask) -> str:
    """The pattern token of ``block_mask``'s kernel pattern (built once per
    mask, then cached on it)."""
    cached = getattr(block_mask, "_edifice_blocks", None)
    if cached is not None and cached[0] is block_mask.kv_indices:
        return cached[1]
    num = block_mask.kv_num_blocks
    if num.device.type != "cpu":
        raise ValueError(f"block_mask: edifice runs on the CPU; the mask is on {num.device}")
    planes, q_blocks = (num.shape[0], num.shape[1]), num.shape[2]
    width = block_mask.kv_indices.shape[-1]
    num, idx = num.reshape(-1).to(torch.int32), block_mask.kv_indices.reshape(-1, width).to(torch.int32)
    if block_mask.full_kv_num_blocks is None:
        full_num, full_idx = torch.zeros_like(num), torch.zeros((len(num), 1), dtype=torch.int32)
    else:
        full_num = block_mask.full_kv_num_blocks.reshape(-1).to(torch.int32)
        full_idx = block_mask.full_kv_indices.reshape(len(full_num), -1).to(torch.int32)
    listed = torch.arange(width)[None, :] < num[:, None].clamp(min=0)
    rows, slots = listed.nonzero(as_tuple=True)
    kb = idx[rows, slots].to(torch.int64)
    bits = _partial_bits(block_mask, rows, kb, q_blocks, planes)
    blocks = _edifice.Blocks(
        tuple(block_mask.seq_lengths),
        tuple(block_mask.BLOCK_SIZE),
        planes,
        *(t.contiguous().numpy() for t in (num, idx, full_num, full_idx, bits)),
    )
    token = _kernels.register_blocks(blocks)
    block_mask._edifice_blocks = (block_mask.kv_indices, token, blocks)
    return token


def flex_attention(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False, return_lse=False, kernel_options=None):
    """``torch.nn.attention.flex_attention.flex_attention`` on our kernel:
    ``query [B, Hq, L, E]``, ``key, value [B, Hkv, S, E]`` (CPU, float32 or
    bfloat16); ``block_mask`` a ``BlockMask`` of lengths ``(L, S)`` with
    batch and head dims of 1 or ``B``, ``Hq`` (None: every pair).
    Differentiable in query, key and value. ``score_mod`` is not supported
    (masks only); ``kernel_options`` is accepted and ignored. Returns the
    output, or ``(output, lse)`` with ``return_lse`` (natural log, no
    gradient)."""
    if score_mod is not None:
        raise NotImplementedError("score_mod: edifice.flex_attention supports masks (block_mask) only, not score_mod")
    shape = _torch.check(query, key, value)
    b, hq, hkv, nq, nk, _ = shape
    if hq != hkv and not enable_gqa:
        raise ValueError(f"key: {hkv} heads differ from query's {hq}; pass enable_gqa=True for grouped-query attention")
    if block_mask is None:
        pattern = "full"
    elif not isinstance(block_mask, BlockMask):
        raise TypeError(f"block_mask: expected a torch BlockMask or None, got {type(block_mask).__name__}")
    else:
        if tuple(block_mask.seq_lengths) != (nq, nk):
            raise ValueError(f"block_mask: made for lengths {tuple(block_mask.seq_lengths)}, the call has ({nq}, {nk})")
        mb, mh = block_mask.kv_num_blocks.shape[:2]
        if mb not in (1, b) or mh not in (1, hq):
            raise ValueError(f"block_mask: its batch and head dims ({mb}, {mh}) must be 1 or the call's ({b}, {hq})")
        pattern = _blocks_of(block_mask)
    o, lse = _torch.attention(query, key, value, shape, pattern, False, _kernels.check_scale(scale))
    return (o, lse) if return_lse else o
