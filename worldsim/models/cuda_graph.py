"""One rollout step as one CUDA graph.

A step of a small world model is hundreds of tiny kernels (S denoising passes, the first of them
also committing the previous frame, + the decoder); launched one by one from Python they take ~10 ms
on an H100, replayed as a graph about 1 ms. `Rollout.advance` is written only with tensor ops on fixed
buffers (the KV cache, the valid slots, the pending frame), so it is captured as is; what changes
between steps (actions, noise, the frame index) is copied into static input buffers before each
replay, and everything derived from the frame index (RoPE tables, the ring slot, the attention masks
of the merged pass and of the valid slots) is computed inside the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from worldsim.models.rollout import Rollout


class HostStaging:
    """Pinned host buffers for copies off the device, one per (shape, dtype), reused by later copies: a
    direct DMA, about twice as fast as a copy to pageable memory for a batch of frames."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def copy(self, x: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        """x copied into its pinned buffer, which the next copy of that shape overwrites. non_blocking:
        the copy is only queued on x's stream; the next wait for that stream covers it."""
        key = (tuple(x.shape), x.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        buf.copy_(x, non_blocking=non_blocking)
        return buf


class GraphedCall:
    """fn(*inputs) captured as a CUDA graph for inputs of fixed shapes, dtypes and devices.

    Calling it copies new inputs into the static input buffers (a Python int fills its buffer; None
    leaves it as is) and replays the graph; it returns the graph's static outputs, which the next call
    overwrites: copy what must outlive it. fn runs `warmup` times on a side stream before capture (so
    lazy initialisation and autotuning happen outside the graph), for real: fn's side effects happen.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: Sequence[torch.Tensor | None],
        warmup: int = 2,
        pool: Any = None,
        device: torch.device | None = None,
    ) -> None:
        """pool: another graph's memory pool (`graph.pool()`) to share, for graphs never run at once.
        device: where fn runs, needed only when no input tensor says (fn reads its own buffers)."""
        self.inputs = [None if x is None else x.clone() for x in inputs]
        if device is None:
            device = next(x.device for x in inputs if x is not None)
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor | int | None) -> Any:
        for buf, x in zip(self.inputs, inputs):
            if x is None or buf is None:
                continue
            if isinstance(x, int):
                buf.fill_(x)
            else:
                buf.copy_(x)
        self.graph.replay()
        return self.outputs


class GraphedAdvance:
    """`Rollout.advance` for the rollout's batch size, captured twice: with the per-world masks of the
    cache's valid slots (while some worlds' ring slots are still empty: after a reset) and without
    (every slot valid, the steady state: the merged pass's mask is then one for all worlds, and the
    single-frame passes take SDPA's faster unmasked kernels: 8-14% of a pass at batch 512 on an H100).
    Both share one memory pool.

    When the worlds have their own noise streams (`Rollout.seed_worlds`), the step's two draws run inside
    the graph, on the streams' keys and counters in place: a step is then one launch with the actions as
    its only input (`draws_noise`). Otherwise the noise is drawn from the shared generator outside and
    copied in."""

    def __init__(self, rollout: Rollout, warmup: int = 2) -> None:
        self.rollout = r = rollout
        B, dev, dt = r.batch_size, r.device, r.dtype
        self.draws_noise = r.world_noise is not None
        actions = torch.zeros(B, r.cfg.action_dim, device=dev, dtype=dt)
        index = torch.full((1,), r.frame_index, device=dev, dtype=torch.long)  # the new frame's index
        # Warm-up and capture run the step for real; keep the cache, the valid slots, the pending frames
        # and the noise streams' counters as they were.
        state = r.cache_k + r.cache_v + [r.slot_valid, r.pending_z, r.pending_action, r.pending_action_mask]
        if self.draws_noise:
            state.append(r.world_noise.counters)
            inputs = [actions, index]

            def step(a: torch.Tensor, index: torch.Tensor, all_valid: bool) -> Any:
                noise, eps = r.world_draws()
                return r.advance(a, noise, eps, index, all_valid)
        else:
            inputs = [
                actions,
                torch.zeros(B, 1, *r.latent_shape, device=dev, dtype=dt),  # noise
                torch.zeros(B, *r.latent_shape, device=dev, dtype=dt) if r.context_noise > 0 else None,  # eps
                index,
            ]

            def step(a, noise, eps, index, all_valid):  # type: ignore[misc]
                return r.advance(a, noise, eps, index, all_valid)

        saved = [b.clone() for b in state]
        self.masked = GraphedCall(lambda *xs: step(*xs, False), inputs, warmup)
        self.full = GraphedCall(lambda *xs: step(*xs, True), inputs, warmup, pool=self.masked.graph.pool())
        for buf, old in zip(state, saved):
            buf.copy_(old)
        self.warmup = warmup
        self._resets: dict[int, GraphedCall] = {}  # Rollout.commit_start per padded number of worlds

    def replay(
        self,
        actions: torch.Tensor,
        noise: torch.Tensor | None,
        eps: torch.Tensor | None,
        all_valid: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one step with these inputs (`all_valid`: every world's ring slots are filled before the
        step's commit; noise and eps None when the graph `draws_noise`); returns (latents, uint8
        frames), the graph's own output buffers: the next replay overwrites them."""
        call = self.full if all_valid else self.masked
        if self.draws_noise:
            return call(actions, self.rollout.frame_index)
        return call(actions, noise, eps, self.rollout.frame_index)

    def reset(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """`Rollout.commit_start` for a partial reset of worlds idx (b,) from start frames x (b, 3, H, W)
        on the device, in [-1, 1], as a graph per power of two of b (padded with copies of the last world
        and frame: the same values written twice); returns the b worlds' latents (a fresh tensor). No
        transformer pass: the encoder, the commit noise, and the worlds' pending frames and empty slots
        (the next step's merged pass commits the start frames).

        A size's first call captures its graph with these very inputs: the warm-up runs do the reset for
        real (writing the same slots and pending frames the replay writes again), so only the noise
        streams' counters, advanced by each run, are put back before the replay."""
        r = self.rollout
        b = len(idx)
        size = 1 << (b - 1).bit_length()
        i = idx.to(r.device, non_blocking=True)
        if size > b:
            x = torch.cat([x, x[-1:].expand(size - b, *x.shape[1:])])
            i = torch.cat([i, i[-1:].expand(size - b)])
        graph = self._resets.get(size)
        if graph is None:
            counters = r.world_noise.counters.clone()
            graph = GraphedCall(r.commit_start, [x, i], self.warmup, pool=self.masked.graph.pool())
            r.world_noise.counters.copy_(counters)
            self._resets[size] = graph
        return graph(x, i)[:b].clone()
