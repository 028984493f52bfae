"""One rollout step as one CUDA graph.

A step of a small world model is hundreds of tiny kernels (S denoising passes + a commit pass + the
decoder); launched one by one from Python they take ~10 ms on an H100, replayed as a graph well under
2 ms. `Rollout.advance` is written only with tensor ops on fixed buffers, so it is captured as is;
what changes between steps (actions, noise, attention mask, RoPE tables, ring slot) is copied into
static input buffers before each replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from worldsim.models.rollout import Rollout


class GraphedAdvance:
    """A captured `Rollout.advance` for the rollout's batch size, with static input buffers."""

    def __init__(self, rollout: Rollout, warmup: int = 2) -> None:
        self.rollout = r = rollout
        B, N, K = r.batch_size, r.N, r.window
        dev, dt = r.device, r.dtype
        self.actions = torch.zeros(B, r.cfg.action_dim, device=dev, dtype=dt)
        self.noise = torch.zeros(B, 1, *r.latent_shape, device=dev, dtype=dt)
        self.eps = torch.zeros(B, *r.latent_shape, device=dev, dtype=dt) if r.context_noise > 0 else None
        # Always pass a mask (all-True once every slot is filled): one graph serves warm-up and resets.
        self.mask = torch.ones(B, 1, 1, (K + 1) * N, dtype=torch.bool, device=dev)
        cos, sin = r._rope()
        self.rope = (torch.zeros_like(cos), torch.zeros_like(sin))
        self.slot_tokens = torch.arange(N, device=dev)

        # Warm-up and capture run the step for real; keep the cache as it was.
        saved = [b.clone() for b in r.cache_k + r.cache_v]
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.latents, self.frames = self._run()
        for buf, old in zip(r.cache_k + r.cache_v, saved):
            buf.copy_(old)

    def _run(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rollout.advance(
            self.actions, self.noise, self.eps, self.mask, self.rope, self.slot_tokens
        )

    def replay(
        self, actions: torch.Tensor, noise: torch.Tensor, eps: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one step with these inputs; returns (latents, uint8 frames) (copies of graph outputs)."""
        r = self.rollout
        self.actions.copy_(actions)
        self.noise.copy_(noise)
        if eps is not None:
            self.eps.copy_(eps)
        self.mask[:, 0, 0, : r.window * r.N] = r.slot_valid.repeat_interleave(r.N, dim=1)
        cos, sin = r._rope()
        self.rope[0].copy_(cos)
        self.rope[1].copy_(sin)
        self.slot_tokens.copy_(r._slot_tokens())
        self.graph.replay()
        return self.latents.clone(), self.frames.clone()
