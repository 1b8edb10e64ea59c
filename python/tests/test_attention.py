"""edifice.attention against float64 masked attention: every pattern,
grouped-query heads, f32 and bf16, NumPy, autograd, torch.compile and
torch.library.opcheck."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice import patterns as P

from conftest import assert_gradients_match, assert_lse_matches, dense_mask, sdpa64

PATTERNS = ["full", "window:7", "chunk:16", "strided:5:3", "strided:4:0", "shifted:8", "global:3", "window:4|global:2", "strided:6:2|global:3|window:3"]


def inputs(b=2, hq=4, hkv=2, nq=50, nk=50, e=16, dtype=torch.float32):
    return (torch.randn(b, hq, nq, e, dtype=dtype), torch.randn(b, hkv, nk, e, dtype=dtype), torch.randn(b, hkv, nk, e, dtype=dtype))


@pytest.mark.parametrize("spec", PATTERNS)
@pytest.mark.parametrize("causal", [False, True])
def test_forward_and_gradients_match_float64(spec, causal):
    q, k, v = inputs()
    mask = dense_mask(spec, 4, 50, 50, causal)
    want = sdpa64(q, k, v, mask)
    q1, k1, v1 = (t.clone().requires_grad_() for t in (q, k, v))
    o, lse = edifice.attention(q1, k1, v1, pattern=spec, causal=causal, return_lse=True)
    assert (o.double() - want).abs().max() < 1e-5
    # lse = log Σ exp(scaled allowed scores); -inf on rows with none.
    s = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) / 4.0
    want_lse = torch.logsumexp(s.masked_fill(~mask, float("-inf")), dim=-1)
    assert_lse_matches(lse, want_lse)
    assert_gradients_match(o, (q1, k1, v1), (q, k, v), mask)


def test_pattern_objects_equal_their_strings():
    q, k, v = inputs()
    pattern = P.window(4) | P.global_tokens(2)
    assert str(pattern) == "window:4|global:2"
    assert torch.equal(edifice.attention(q, k, v, pattern, causal=True), edifice.attention(q, k, v, "window:4|global:2", causal=True))
    assert str(P.strided(8, 16) | "chunk:4") == "strided:8:16|chunk:4"


def test_queries_aligned_to_the_end_of_longer_keys_and_a_scale():
    q, k, v = inputs(nq=9, nk=40)
    mask = dense_mask("window:6", 4, 9, 40, True)
    o = edifice.attention(q, k, v, "window:6", causal=True, scale=0.3)
    assert (o.double() - sdpa64(q, k, v, mask, scale=0.3)).abs().max() < 1e-5


def test_bf16_is_close_and_stays_bf16():
    q, k, v = inputs(dtype=torch.bfloat16)
    q.requires_grad_()
    o = edifice.attention(q, k, v, "window:8", causal=True)
    assert o.dtype == torch.bfloat16
    want = sdpa64(q.detach(), k, v, dense_mask("window:8", 4, 50, 50, True))
    assert (o.double() - want).abs().max() < 2e-2
    o.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()


def test_numpy_forward_equals_torch():
    q, k, v = inputs()
    got = edifice.attention(q.numpy(), k.numpy(), v.numpy(), "chunk:16", causal=True)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert np.array_equal(got, edifice.attention(q, k, v, "chunk:16", causal=True).numpy())


def test_non_contiguous_inputs_are_copied_not_refused():
    q, k, v = inputs()
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not qt.is_contiguous()
    assert torch.equal(edifice.attention(qt, k, v, "window:5"), edifice.attention(q, k, v, "window:5"))
    qt.requires_grad_()
    edifice.attention(qt, k, v, "window:5").sum().backward()
    assert qt.grad.shape == q.shape


def test_opcheck():
    q, k, v = (t.requires_grad_() for t in inputs(nq=20, nk=20))
    for args in ((q, k, v, "window:5", True, None), (q, k, v, "full", False, 0.5)):
        torch.library.opcheck(torch.ops.edifice.attention.default, args)


def test_torch_compile_forward_and_backward():
    q, k, v = inputs(nq=24, nk=24)

    def f(q, k, v):
        return (edifice.attention(q, k, v, "window:5", causal=True) * 2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    q1 = q.clone().requires_grad_()
    q2 = q.clone().requires_grad_()
    compiled(q1, k, v).backward()
    f(q2, k, v).backward()
    assert torch.equal(q1.grad, q2.grad)


def test_a_small_model_trains_through_the_op_as_through_sdpa():
    torch.manual_seed(1)
    x = torch.randn(4, 32, 16)
    y = x.roll(1, dims=1).sum(-1, keepdim=True)
    mask = dense_mask("window:4", 2, 32, 32, True)

    class Net(torch.nn.Module):
        def __init__(self, attend):
            super().__init__()
            self.qkv, self.out, self.attend = torch.nn.Linear(16, 48), torch.nn.Linear(16, 1), attend

        def forward(self, x):
            q, k, v = self.qkv(x).view(4, 32, 3, 2, 8).permute(2, 0, 3, 1, 4)
            return self.out(self.attend(q, k, v).transpose(1, 2).reshape(4, 32, 16))

    ours = Net(lambda q, k, v: edifice.attention(q, k, v, "window:4", causal=True))
    ref = Net(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    ref.load_state_dict(ours.state_dict())
    losses = {}
    for name, net in (("ours", ours), ("ref", ref)):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        losses[name] = []
        for _ in range(30):
            opt.zero_grad()
            loss = F.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["ours"][-1] < 0.5 * losses["ours"][0]
    assert max(abs(a - b) for a, b in zip(losses["ours"], losses["ref"])) < 1e-4


def test_inductor_compiles_the_op_into_a_graph():
    q = torch.randn(1, 2, 64, 16, requires_grad=True)

    def f(q):
        return (edifice.attention(torch.tanh(q), q, q, "window:8", causal=True) * 2).sum()

    compiled = torch.compile(f, fullgraph=True)
    compiled(q).backward()
    got, q.grad = q.grad, None
    f(q).backward()
    assert torch.allclose(got, q.grad, atol=1e-5)


def test_the_gil_is_released_while_the_kernel_runs():
    import threading
    import time

    q = torch.randn(1, 8, 2048, 64)
    edifice.attention(q, q, q, "full")
    t = time.perf_counter()
    edifice.attention(q, q, q, "full")
    one_call = time.perf_counter() - t
    done, gaps = threading.Event(), []

    def work():
        for _ in range(3):
            edifice.attention(q, q, q, "full")
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    last = time.perf_counter()
    while not done.is_set():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    worker.join()
    # Holding the GIL would stall this loop for a whole kernel call.
    assert max(gaps) < one_call / 4, (max(gaps), one_call)
