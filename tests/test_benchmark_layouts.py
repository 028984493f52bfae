"""The attention layouts `benchmarks/flex_block_size.py` times compute the training attention exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from worldsim.models.dynamics import frame_mask_to_tokens, training_frame_mask

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flex_block_size.py"


def test_chunked_attention_equals_the_masked_attention_and_its_gradients():
    spec = importlib.util.spec_from_file_location("flex_block_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    allowed, n = training_frame_mask(6, 3, "cpu"), 5  # 11 frames of 5 tokens: groups of 1..4 key frames
    q, k, v = (
        torch.randn(2, 3, allowed.shape[0] * n, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=frame_mask_to_tokens(allowed, n))
    chunked = module.chunked_attention(q, k, v, allowed, n)
    grad = torch.randn_like(dense)
    for a, b in zip(
        torch.autograd.grad(chunked, (q, k, v), grad), torch.autograd.grad(dense, (q, k, v), grad)
    ):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(chunked, dense)
