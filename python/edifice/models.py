"""Edifice's models and real-time streams from Python.

=====================  ==============================  =====================
call                   input                           output
=====================  ==============================  =====================
``Model.forward``      ``x [B, T, E]`` float32          ``[B, output_size]``
``... all=True``       ``x [B, T, E]``                  ``[B, T, output_size]``
``Stream.step``        ``frame [E]`` float32            ``[output_size]``
=====================  ==============================  =====================

Inputs may be NumPy arrays or CPU torch tensors (no gradient); outputs come
back as the same kind.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import _edifice


def _as_array(x, name: str):
    """A float32 C-contiguous NumPy view (or copy) of ``x`` and whether it
    was a torch tensor."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            raise TypeError(f"{name}: expected float32, got {x.dtype}")
        return np.ascontiguousarray(x), False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name}: edifice runs on the CPU; got a tensor on {x.device}")
        if x.dtype != torch.float32:
            raise TypeError(f"{name}: expected float32, got {x.dtype}")
        return x.detach().contiguous().numpy(), True
    raise TypeError(f"{name}: expected a NumPy array or torch tensor, got {type(x).__name__}")


def _like(out: np.ndarray, torch_input: bool):
    if torch_input:
        import torch

        return torch.from_numpy(out)
    return out


class Model:
    """One of Edifice's models (``ring``, ``sliding_window``, ``hybrid``,
    ``hybrid_mlp``, ``dual_chunk``, ``shifted_sparse``) with its weights."""

    def __init__(self, native: _edifice.Model):
        self._native = native

    @classmethod
    def from_config(cls, config: dict | str | os.PathLike, seed: int = 0) -> Model:
        """From a config dict (``{"model": "ring", ...}``) or file (TOML, or
        JSON when it ends in ``.json``), weights drawn from ``seed``."""
        if isinstance(config, dict):
            return cls(_edifice.Model.from_json(json.dumps(config), seed))
        if isinstance(config, (str, os.PathLike)):
            return cls(_edifice.Model.from_path(os.fspath(config), seed))
        raise TypeError(f"config: expected a dict or a path, got {type(config).__name__}")

    def load_weights(self, path: str | os.PathLike) -> Model:
        """Loads safetensors weights (PyTorch names or Edifice's); on error
        the weights are unchanged. Returns the model."""
        self._native.load_weights(os.fspath(path))
        return self

    def save_weights(self, path: str | os.PathLike) -> None:
        """Writes the weights as safetensors."""
        self._native.save_weights(os.fspath(path))

    @property
    def name(self) -> str:
        return self._native.name

    @property
    def config(self) -> dict:
        return json.loads(self._native.config_json())

    @property
    def input_dims(self) -> tuple[int, int]:
        """``(seq_len, embed_dim)`` of the config."""
        return self._native.input_dims

    @property
    def output_size(self) -> int:
        return self._native.output_size

    def forward(self, x, all: bool = False):
        """``x [B, T, E]`` → ``[B, output_size]`` (the last position), or
        ``[B, T, output_size]`` with ``all=True``."""
        array, was_torch = _as_array(x, "x")
        if array.ndim != 3:
            raise ValueError(f"x: expected 3 dims (B, T, E), got shape {array.shape}")
        b, t, e = array.shape
        if all:
            out = np.empty((b, t, self.output_size), dtype=np.float32)
            self._native.forward_all(array, (b, t, e), out)
        else:
            out = np.empty((b, self.output_size), dtype=np.float32)
            self._native.forward(array, (b, t, e), out)
        return _like(out, was_torch)

    __call__ = forward

    def __repr__(self) -> str:
        return f"edifice.Model({self.name}, input {self.input_dims}, output {self.output_size})"


class Stream:
    """One real-time stream of a model: a frame in, an output out, in
    microseconds; ``rewind(k)`` undoes the last ``k`` steps (``k <=
    rollback``); ``snapshot()`` / ``restore()`` save and restore the state."""

    def __init__(self, model: Model, rollback: int = 0, max_len: int = 4096):
        if not isinstance(model, Model):
            raise TypeError(f"model: expected an edifice.Model, got {type(model).__name__}")
        for name, n in (("rollback", rollback), ("max_len", max_len)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {n!r}")
        self._native = _edifice.Stream(model._native, rollback, max_len)

    def step(self, frame):
        """Feeds ``frame [E]``; returns the output ``[output_size]`` (a new
        array). On error the stream is unchanged."""
        array, was_torch = _as_array(frame, "frame")
        if array.shape != (self._native.input_size,):
            raise ValueError(f"frame: expected shape ({self._native.input_size},), got {array.shape}")
        out = np.empty(self._native.output_size, dtype=np.float32)
        self._native.step(array, out)
        return _like(out, was_torch)

    def rewind(self, k: int) -> None:
        self._native.rewind(k)

    def reset(self) -> None:
        self._native.reset()

    @property
    def position(self) -> int:
        return self._native.position

    def snapshot(self) -> bytes:
        return self._native.snapshot()

    def restore(self, state: bytes) -> None:
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise TypeError(f"state: expected bytes, got {type(state).__name__}")
        self._native.restore(bytes(state))
