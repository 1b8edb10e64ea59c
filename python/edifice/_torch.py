"""The kernel as torch operators: ``edifice::attention`` and its backward
``edifice::attention_backward``, registered with ``torch.library`` (fake
implementations for ``torch.compile``, autograd from the saved ``lse``).

CPU tensors cross to the kernel as NumPy views of their memory (no copy);
bf16 crosses as its int16 bits. The GIL is released while the kernel runs.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _kernels

_DTYPES = (torch.float32, torch.bfloat16)


def _buffer(t: torch.Tensor):
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A new CPU tensor in NumPy's memory. Measured at N = 64, the kernel
    writes its outputs ~20 us faster into memory from NumPy's allocator than
    from torch's (which hands out cold blocks); the tensor is an ordinary
    one sharing the array's memory (only its storage cannot be resized)."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.empty(shape, np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.empty(shape, np.float32))


def _plain(t: torch.Tensor) -> torch.Tensor:
    t = t.detach() if t.requires_grad else t
    return t if t.is_contiguous() else t.contiguous()


def check(q, k, v) -> tuple:
    """Checks types, devices and dtypes; returns the call's sizes
    ``(B, Hq, Hkv, Nq, Nk, E)``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_cpu:
            raise ValueError(f"{name}: edifice runs on the CPU; got a tensor on {t.device}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: expected float32 or bfloat16, got {t.dtype}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} differs from q's {q.dtype}")
    return _sizes(q, k, v)


def _sizes(q, k, v) -> tuple:
    return _kernels.check_shapes(tuple(q.shape), tuple(k.shape), tuple(v.shape))


def forward(q, k, v, shape: tuple, pattern: str, causal: bool, scale):
    """``(o, lse)`` of CPU tensors of sizes ``shape`` (detached and made
    contiguous here), computed by the kernel."""
    q, k, v = _plain(q), _plain(k), _plain(v)
    kern = _kernels.kernel(shape, pattern, causal, scale)
    b, hq, _, nq, _, e = shape
    o = _empty((b, hq, nq, e), q.dtype)
    lse = _empty((b, hq, nq), torch.float32)
    kern.forward(_buffer(q), _buffer(k), _buffer(v), _buffer(o), lse.numpy())
    return o, lse


def backward(d_o, q, k, v, o, lse, pattern: str, causal: bool, scale):
    """``(dq, dk, dv)`` from the forward's inputs and outputs, by the kernel."""
    q, k, v, o, d_o = (_plain(t) for t in (q, k, v, o, d_o.to(q.dtype)))
    shape = _sizes(q, k, v)
    kern = _kernels.kernel(shape, pattern, causal, scale)
    dq, dk, dv = (_empty(tuple(t.shape), t.dtype) for t in (q, k, v))
    kern.backward(*(_buffer(t) for t in (q, k, v, o)), _plain(lse).numpy(), _buffer(d_o), _buffer(dq), _buffer(dk), _buffer(dv))
    return dq, dk, dv


@torch.library.custom_op("edifice::attention", mutates_args=(), device_types="cpu")
def attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str, causal: bool, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return forward(q, k, v, _sizes(q, k, v), pattern, causal, scale)


@attention_op.register_fake
def _(q, k, v, pattern, causal, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("edifice::attention_backward", mutates_args=(), device_types="cpu")
def attention_backward_op(
    d_o: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    pattern: str,
    causal: bool,
    scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backward(d_o, q, k, v, o, lse, pattern, causal, scale)


@attention_backward_op.register_fake
def _(d_o, q, k, v, o, lse, pattern, causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _save(ctx, q, k, v, o, lse, call: tuple) -> None:
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.call = call
    # The backward is the kernel's, which differentiates o only.
    ctx.mark_non_differentiable(lse)


def _setup_context(ctx, inputs, output):
    q, k, v, *call = inputs
    _save(ctx, q, k, v, *output, tuple(call))


def _backward(ctx, d_o, _d_lse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(d_o, q, k, v, o, lse, *ctx.call)
    return dq, dk, dv, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)


class _Attention(torch.autograd.Function):
    """The same forward and backward as the operator, for eager autograd:
    a Function costs a few microseconds per call where the dispatcher's
    round trip to a Python operator costs tens."""

    @staticmethod
    def forward(ctx, q, k, v, shape, pattern, causal, scale):
        o, lse = forward(q, k, v, shape, pattern, causal, scale)
        _save(ctx, q, k, v, o, lse, (pattern, causal, scale))
        return o, lse

    @staticmethod
    def backward(ctx, d_o, _d_lse):
        return (*backward(d_o, *ctx.saved_tensors, *ctx.call), None, None, None, None)


def attention(q, k, v, shape: tuple, pattern: str, causal: bool, scale):
    """``(o, lse)``: the registered operator under torch.compile, an
    autograd Function when gradients are wanted, else the kernel directly."""
    if torch.compiler.is_compiling():
        return attention_op(q, k, v, pattern, causal, scale)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _Attention.apply(q, k, v, shape, pattern, causal, scale)
    return forward(q, k, v, shape, pattern, causal, scale)
