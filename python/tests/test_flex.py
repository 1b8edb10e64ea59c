"""edifice.flex_attention against torch's own flex_attention (forward, on
the CPU) and float64 masked attention (gradients), for BlockMasks from
mask_mods built by torch's create_block_mask and by ours."""

import pytest
import torch
from torch.nn.attention import flex_attention as torch_flex

import edifice

from conftest import assert_gradients_match, assert_lse_matches

L = 300  # not a multiple of the block size: edge blocks are partial


def causal(b, h, q, kv):
    return q >= kv


def sliding(b, h, q, kv):
    return (q >= kv) & (q - kv < 70)


DOC = torch.tensor([0] * 90 + [1] * 130 + [2] * 80)
DOC_PER_BATCH = torch.stack([DOC, DOC.flip(0)])


def document(b, h, q, kv):
    return DOC_PER_BATCH[b, q] == DOC_PER_BATCH[b, kv]


def prefix_lm(b, h, q, kv):
    return (kv < 100) | (q >= kv)


RANDOM = torch.rand(2, 4, L, L, generator=torch.Generator().manual_seed(3)) < 0.3
# Whole blocks of it dropped, so some blocks are empty, some full, some partial.
RANDOM &= (torch.rand(2, 4, 3, 3, generator=torch.Generator().manual_seed(4)) < 0.6).repeat_interleave(128, 2).repeat_interleave(128, 3)[:, :, :L, :L]
RANDOM |= torch.zeros(2, 4, 3, 3, dtype=torch.bool).index_fill_(2, torch.tensor([1]), True).repeat_interleave(128, 2).repeat_interleave(128, 3)[:, :, :L, :L] & (torch.arange(L)[None, :] < 128)


def random_heads(b, h, q, kv):
    return RANDOM[b, h, q, kv]


MASKS = {
    "causal": (causal, None, None),
    "sliding": (sliding, None, None),
    "document": (document, 2, None),
    "prefix_lm": (prefix_lm, None, None),
    "random": (random_heads, 2, 4),
}


def dense(mask_mod, b, h):
    i = torch.arange(L)
    return torch.stack([torch.stack([mask_mod(torch.tensor(bb), torch.tensor(hh), i[:, None], i[None, :]) for hh in range(h)]) for bb in range(b)])


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("maker", ["torch", "edifice"])
@pytest.mark.parametrize("gqa", [False, True])
def test_matches_torch_flex_and_float64_gradients(name, maker, gqa):
    mask_mod, mb, mh = MASKS[name]
    create = torch_flex.create_block_mask if maker == "torch" else edifice.create_block_mask
    block_mask = create(mask_mod, mb, mh, L, L, device="cpu")
    hkv = 2 if gqa else 4
    q = torch.randn(2, 4, L, 32)
    k, v = torch.randn(2, hkv, L, 32), torch.randn(2, hkv, L, 32)

    want, want_lse = torch_flex.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa, return_lse=True)
    q1, k1, v1 = (t.clone().requires_grad_() for t in (q, k, v))
    got, lse = edifice.flex_attention(q1, k1, v1, block_mask=block_mask, enable_gqa=gqa, return_lse=True)
    assert (got - want).abs().max() < 1e-5
    assert_lse_matches(lse, want_lse)
    mask = dense(mask_mod, mb or 1, mh or 1).expand(2, 4, L, L)
    assert_gradients_match(got, (q1, k1, v1), (q, k, v), mask)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_our_block_masks_equal_torchs(name):
    mask_mod, mb, mh = MASKS[name]
    ours = edifice.create_block_mask(mask_mod, mb, mh, L, L, BLOCK_SIZE=64)
    theirs = torch_flex.create_block_mask(mask_mod, mb, mh, L, L, device="cpu", BLOCK_SIZE=64)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    full = lambda m: m.full_kv_num_blocks.sum().item()
    assert (ours.kv_num_blocks.sum().item(), full(ours)) == (theirs.kv_num_blocks.sum().item(), full(theirs))


def test_uneven_lengths_and_block_sizes():
    def mod(b, h, q, kv):
        return (kv <= q + 37) & ((q + kv) % 5 != 0)

    block_mask = edifice.create_block_mask(mod, None, None, 77, 190, BLOCK_SIZE=(16, 32))
    q, k, v = torch.randn(1, 2, 77, 8), torch.randn(1, 2, 190, 8), torch.randn(1, 2, 190, 8)
    want = torch_flex.flex_attention(q, k, v, block_mask=block_mask)
    assert (edifice.flex_attention(q, k, v, block_mask=block_mask) - want).abs().max() < 1e-5


def test_no_block_mask_is_dense_attention_and_bf16_runs():
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (edifice.flex_attention(q, k, v) - want).abs().max() < 1e-5
    out = edifice.flex_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=0.2)
    assert out.dtype == torch.bfloat16


def test_the_mask_is_converted_once():
    block_mask = edifice.create_block_mask(causal, None, None, 64, 64, BLOCK_SIZE=16)
    calls = []

    def counting(b, h, q, kv):
        calls.append(1)
        return q >= kv

    block_mask.mask_mod = counting
    q = torch.randn(1, 1, 64, 8)
    edifice.flex_attention(q, q, q, block_mask=block_mask)
    n = len(calls)
    edifice.flex_attention(q, q, q, block_mask=block_mask)
    assert n > 0 and len(calls) == n


def test_compiles_with_a_block_mask():
    block_mask = edifice.create_block_mask(sliding, None, None, L, L)
    q = torch.randn(1, 2, L, 16, requires_grad=True)
    f = torch.compile(lambda q: edifice.flex_attention(q, q, q, block_mask=block_mask).sum(), backend="aot_eager", fullgraph=True)
    f(q).backward()
    assert torch.isfinite(q.grad).all()
