"""edifice: block-sparse flash attention for the CPU, forward and backward,
and Edifice's attention models.

* :func:`attention` — one fused call for any pattern (:mod:`edifice.patterns`)
  on torch tensors (autograd, ``torch.compile``) or NumPy arrays.
* :func:`flex_attention`, :func:`create_block_mask` — a drop-in for
  ``torch.nn.attention.flex_attention`` with its ``BlockMask``, with a CPU
  backward.
* :class:`Model`, :class:`Stream` — the models of the ``edifice`` command
  line, and real-time streams with rollback.

The kernels use ``RAYON_NUM_THREADS`` worker threads (default: one per
core), set before the first call.
"""

from . import patterns
from ._attention import attention
from ._edifice import threads
from .models import Model, Stream

__all__ = ["attention", "flex_attention", "create_block_mask", "patterns", "Model", "Stream", "threads"]


def __getattr__(name):
    # The FlexAttention drop-in needs torch; the rest of the package does not.
    if name in ("flex_attention", "create_block_mask"):
        from . import flex

        return getattr(flex, name)
    raise AttributeError(f"module 'edifice' has no attribute {name!r}")
