"""Attention patterns as objects: ``window(256) | global_tokens(4)``.

A pattern says which keys each query reads; the kernel derives its tile map
from it and never builds an ``Nq x Nk`` mask. Every pattern has the string
form the command line and ``edifice.attention`` accept (``str(p)``).

=================  =====================  =====================================
object             string                 query ``i`` reads key ``j`` when
=================  =====================  =====================================
``full()``         ``full``               always
``window(W)``      ``window:W``           ``|i - j| < W``
``chunk(C)``       ``chunk:C``            ``i // C == j // C``
``strided(S, L)``  ``strided:S:L``        ``|i - j| < L`` or ``j % S == h % S``
``shifted(G)``     ``shifted:G``          same group: ``p // G`` for heads
                                          ``h < H/2``, ``(p + G/2) // G`` after
``global_tokens``  ``global:G``           ``i < G`` or ``j < G``
``a | b``          ``a|b``                ``a`` or ``b`` allows it
=================  =====================  =====================================

``causal=True`` (an argument of the call, not of the pattern) also requires
``j <= i`` with queries aligned to the end of the keys. The exact rules live
in the kernel (``crates/edifice-kernels/src/pattern``); ``edifice patterns``
on the command line prints them.
"""

from __future__ import annotations

from . import _edifice

__all__ = ["Pattern", "full", "window", "chunk", "strided", "shifted", "global_tokens", "parse"]


class Pattern:
    """A checked attention pattern; ``a | b`` is the union of two."""

    __slots__ = ("_spec",)

    def __init__(self, spec: str):
        if not isinstance(spec, str):
            raise TypeError(f"pattern: expected a string or Pattern, got {type(spec).__name__}")
        _edifice.check_pattern(spec)
        self._spec = spec.strip()

    def __or__(self, other: Pattern | str) -> Pattern:
        return Pattern(f"{self}|{parse(other)}")

    def __ror__(self, other: str) -> Pattern:
        return Pattern(f"{parse(other)}|{self}")

    def __str__(self) -> str:
        return self._spec

    def __repr__(self) -> str:
        return f"Pattern({self._spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other._spec == self._spec

    def __hash__(self) -> int:
        return hash(self._spec)


def parse(pattern: Pattern | str) -> Pattern:
    """A pattern from its object or string form; ``ValueError`` if bad."""
    return pattern if isinstance(pattern, Pattern) else Pattern(pattern)


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def full() -> Pattern:
    """Every key."""
    return Pattern("full")


def window(size: int) -> Pattern:
    """Keys less than ``size`` positions away."""
    return Pattern(f"window:{_positive('size', size)}")


def chunk(size: int) -> Pattern:
    """Keys in the same chunk of ``size`` positions."""
    return Pattern(f"chunk:{_positive('size', size)}")


def strided(stride: int, local: int) -> Pattern:
    """Keys less than ``local`` away (0: none), and every ``stride``-th key,
    the residue shifting by one per head ``h``."""
    if isinstance(local, bool) or not isinstance(local, int) or local < 0:
        raise ValueError(f"local must be an int >= 0, got {local!r}")
    return Pattern(f"strided:{_positive('stride', stride)}:{local}")


def shifted(group: int) -> Pattern:
    """Shifted sparse attention with groups of ``group`` positions."""
    return Pattern(f"shifted:{_positive('group', group)}")


def global_tokens(tokens: int) -> Pattern:
    """The first ``tokens`` positions read and are read by every position."""
    return Pattern(f"global:{_positive('tokens', tokens)}")
