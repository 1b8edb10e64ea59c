"""The README's Python example, run by the tests (python/tests/test_examples.py)."""

import os
import tempfile

import torch

import edifice
from edifice import create_block_mask, flex_attention  # was: from torch.nn.attention.flex_attention import ...
from edifice import patterns as P

L = 2048
q = torch.randn(1, 8, L, 64, requires_grad=True)  # [B, Hq, L, E]
k, v = torch.randn(2, 1, 2, L, 64)  # [B, Hkv, S, E]; Hkv divides Hq
o = edifice.attention(q, k, v, pattern=P.window(256) | P.global_tokens(4), causal=True)
o.sum().backward()  # our backward, from the saved lse

# FlexAttention code moves over by changing its import.
doc = torch.randint(0, 4, (L,)).sort().values
mask = create_block_mask(lambda b, h, i, j: doc[i] == doc[j], None, None, L, L)
out = flex_attention(q, q, q, block_mask=mask)  # differentiable on the CPU
out.sum().backward()

# A model and a real-time stream (a game agent's loop).
model = edifice.Model.from_config({"model": "sliding_window", "embed_dim": 287})
with tempfile.TemporaryDirectory() as tmp:
    model.save_weights(os.path.join(tmp, "w.safetensors"))
    model.load_weights(os.path.join(tmp, "w.safetensors"))
stream = edifice.Stream(model, rollback=8)
for t in range(10):
    action = stream.step(torch.randn(287))  # [287] -> [output_size]
state = stream.snapshot()
stream.rewind(3)
stream.restore(state)
print(f"o {tuple(o.shape)}, flex {tuple(out.shape)}, action {tuple(action.shape)} at position {stream.position}")
