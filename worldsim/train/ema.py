"""Exponential moving average of the weights, in fp32, kept shard by shard beside the FSDP2 parameters.

Each EMA tensor has the same type and placement as its parameter (a DTensor shard under FSDP2), so it
costs one fp32 copy of this rank's shard, needs no communication to update, and goes into the DCP
checkpoint as it is (resharding on load works like the model's own).
"""

from __future__ import annotations

import torch
from torch import nn

from worldsim.train.parallelize import clean_name


class EMA:
    """ema = decay * ema + (1 - decay) * param, with a warm-up so early averages are not stuck at init."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = {clean_name(n): p for n, p in model.named_parameters()}
        self.shadow: dict[str, torch.Tensor] = {
            n: p.detach().to(torch.float32, copy=True) for n, p in self.params.items()
        }

    def decay_at(self, step: int) -> float:
        """The usual warm-up (1 + step) / (10 + step), capped at the configured decay."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move every average toward its parameter; only trainable ones can have changed."""
        w = 1.0 - self.decay_at(step)
        names = [n for n, p in self.params.items() if p.requires_grad]
        ema = [_local(self.shadow[n]) for n in names]
        cur = [_local(self.params[n]).float() for n in names]
        if ema:
            torch._foreach_lerp_(ema, cur, w)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by plain `WorldModel` parameter name (loaded in place by DCP)."""
        return self.shadow


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: writing it writes the DTensor), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t
