"""The rollout engine: the one routine that steps a world model (env, vector env, app, infer, eval).

A `Rollout` holds a batch of B worlds. It keeps a KV cache of each world's last K committed frames
(a ring of K slots, one per frame), and for each step:
  1. denoises the new frame's latents in S Euler steps, the new tokens attending to the cache;
  2. commits the frame: one more pass over its (lightly re-noised) latents writes its keys and values
     into the oldest slot — exactly the attention pattern `training_frame_mask` trains;
  3. decodes the latents to pixels.
Chunk mode (1 conditioning frame + 12 actions -> 12 frames, Cosmos's sample shape) is `step` run 12
times. Worlds in a batch may be reset independently (gymnasium autoreset).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from worldsim.data.actions import env_action_to_model
from worldsim.models.cuda_graph import HostStaging
from worldsim.models.dynamics import rope_tables
from worldsim.models.flow import add_noise, sampling_times
from worldsim.models.noise import WorldNoise
from worldsim.models.world_model import WorldModel


class Rollout:
    """B worlds stepped together by one `WorldModel`; see the module docstring."""

    def __init__(
        self,
        model: WorldModel,
        batch_size: int = 1,
        denoise_steps: int | None = None,
        num_context_frames: int | None = None,
        context_noise: float | None = None,
        guidance: float = 1.0,
        use_cache: bool = True,
        seed: int | None = None,
    ) -> None:
        cfg = model.cfg
        self.model, self.cfg, self.batch_size = model, cfg, batch_size
        self.denoise_steps = denoise_steps or cfg.denoise_steps
        if model.dynamics_stage == "distill" and self.denoise_steps != cfg.denoise_steps:
            # A distilled student has forgotten the intermediate flow times its teacher used: lease 13 with
            # 2 / 3 steps scored 25.0 / 24.8 dB at horizon 12 against 28.4 with its own 1 (12 val episodes).
            warnings.warn(
                f"this model was distilled to sample in {cfg.denoise_steps} Euler step(s); "
                f"denoise_steps={self.denoise_steps} gives worse frames, not better",
                stacklevel=3,
            )
        self.window = num_context_frames or cfg.num_context_frames  # K; the model was trained with cfg's
        self.context_noise = cfg.context_noise if context_noise is None else context_noise
        self.guidance = guidance
        self.use_cache = use_cache
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else seed)
        self.world_noise: WorldNoise | None = None  # per-world streams; see seed_worlds
        dyn = model.dynamics
        self.N = cfg.tokens_per_frame
        self.latent_shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        H, Dh, K = cfg.heads, dyn.head_dim, self.window
        shape = (batch_size, H, (K + 1) * self.N, Dh)  # K ring slots, then scratch for the new frame
        self.cache_k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in dyn.blocks]
        self.cache_v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in dyn.blocks]
        self.slot_valid = torch.zeros(batch_size, K, dtype=torch.bool, device=self.device)
        # frames committed since each world's reset, on the host: once all reach K every slot is valid
        # (what slot_valid says, without a device sync)
        self.committed = np.zeros(batch_size, dtype=np.int64)
        self.frame_index = 0  # global frame counter: the RoPE time position of the next committed frame
        # Python floats: the times are constants of the sampling loop (no device sync, graph-capturable)
        self.times_list = sampling_times(self.denoise_steps, cfg.time_shift).tolist()
        self.cuda_graph = None  # set by enable_cuda_graph()
        self.graph_resets = True  # partial resets as graphs where they apply (False: eager; for A/B timing)
        # Without a cache (the reference path for tests and benchmarks): every committed frame since
        # reset, re-run through the network at every denoising step. (z, actions, action_mask, index)
        self.history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        self.latents: torch.Tensor | None = None  # (B, C, h, w) latents of the current frame
        # uint8 (B, H, W, 3) frames of the last step, on the device (for consumers such as a success
        # model); with a CUDA graph, its output buffer, which the next step overwrites
        self.frames: torch.Tensor | None = None
        self._staging = HostStaging()  # pinned buffer of the frames' copy to the host (CUDA)
        # cuDNN's and oneDNN's convolutions run faster on channels-last activations (decoder per frame at
        # batch 1: 0.49 -> 0.41 ms on an H100; 9.5 -> 5.7 ms on 2 CPU cores in bf16, where the latents go
        # in channels-last too: `_decode`); converting the weights is idempotent and keeps their values.
        model.tokenizer.decoder.to(memory_format=torch.channels_last)
        self._rope_index, self._rope_tables = -1, None

    # ----------------------------------------------------------------------------------- public
    @torch.inference_mode()
    def reset(
        self, frames: np.ndarray | torch.Tensor, which: np.ndarray | torch.Tensor | None = None
    ) -> None:
        """Start worlds from frames: uint8 (B, H, W, 3) at the model's resolution, or for the worlds
        selected by the bool mask / indices `which`, frames for just those worlds."""
        idx = self._indices(which)
        x = _to_model_frames(frames, self.device, self.dtype)  # (b, 3, H, W) in [-1, 1]
        if x.shape[0] != len(idx) or tuple(x.shape[-2:]) != (self.cfg.height, self.cfg.width):
            raise ValueError(
                f"reset frames must be ({len(idx)}, {self.cfg.height}, {self.cfg.width}, 3) uint8, got {tuple(frames.shape)}"
            )
        if self._graphed_reset_applies(len(idx)):
            # A vector env's autoreset of a few worlds, once the step is a CUDA graph: the same work as
            # below, as one graph launch (`GraphedAdvance.reset`) instead of hundreds of eager kernels.
            self.frame_index -= 1  # as below: the start frame takes the place of the current frame
            latents = self.cuda_graph.reset(x, idx)
            self.committed[idx.numpy()] = 1
            self.latents[idx.to(self.device)] = latents
            self.frame_index += 1
            return
        latents = self.model.tokenizer.encode(x)  # (b, C, h, w)
        self.slot_valid[idx] = False
        # A partial reset puts the new start frame in place of these worlds' current frame (position
        # frame_index - 1): advancing the shared clock would leave every other world a gap in time.
        self.frame_index -= int(self.latents is not None and len(idx) < self.batch_size)
        if len(idx) == self.batch_size:
            # RoPE is relative, but keys are rounded after rotation (bf16 especially), so the same
            # episode must see the same absolute positions: a full reset restarts the clock.
            self.frame_index = 0
        if not self.use_cache:
            if len(idx) != self.batch_size:
                raise ValueError("the uncached reference rollout resets all worlds at once")
            self.history = []
        no_action = torch.zeros(len(idx), self.cfg.action_dim, device=self.device, dtype=self.dtype)
        self._commit(latents, no_action, torch.zeros(len(idx), device=self.device), idx)
        self.committed[idx.numpy()] = 1
        if self.latents is None:
            self.latents = torch.zeros(
                self.batch_size, *self.latent_shape, device=self.device, dtype=self.dtype
            )
        self.latents[idx] = latents
        self.frame_index += 1

    def seed_worlds(self, seeds: Sequence[int], which: np.ndarray | torch.Tensor | None = None) -> None:
        """Give the worlds `which` (default all) their own noise streams, seeded by `seeds`.

        From then on each world draws its noise from its own counter-based stream (worldsim/models/
        noise.py; worlds not seeded yet start from seed 0), computed for the whole batch at once on the
        model's device. A world's noise depends on its seed and the draws since alone, not on the batch
        it is in: a vector env of N worlds reproduces N single envs. Seeds are integers in
        [-2**63, 2**64).
        """
        idx = self._indices(which)
        if len(seeds) != len(idx):
            raise ValueError(f"seed_worlds: {len(seeds)} seeds for {len(idx)} worlds")
        if self.world_noise is None:
            self.world_noise = WorldNoise(self.batch_size, self.device)
        self.world_noise.seed(seeds, idx)

    def step(
        self, actions: np.ndarray | torch.Tensor, env_convention: bool = True, copy: bool = True
    ) -> np.ndarray:
        """Advance every world by one action; returns the new frames, uint8 (B, H, W, 3).

        actions: (B, 7). With `env_convention` they are Bridge JSON actions (gripper 1 = open,
        unscaled), converted as the model was trained; else already-scaled model inputs.
        copy=False (CUDA): the frames are a view of a pinned staging buffer that the next step
        overwrites (for callers that copy them anyway: saves a host copy, 63 MB at batch 1024).
        """
        return self.to_host(self.step_device(actions, env_convention), copy)

    @torch.inference_mode()
    def step_device(self, actions: np.ndarray | torch.Tensor, env_convention: bool = True) -> torch.Tensor:
        """`step` without the copy to the host: the new uint8 frames (B, H, W, 3) on the model's device
        (`self.frames`), the work perhaps still queued there. A caller can queue more work on them (a
        success model, say) before one `to_host` waits for all of it."""
        if self.latents is None:
            raise RuntimeError("call reset(frames) before step(actions)")
        a = self._check_actions(actions, env_convention)  # (B, A)
        every = torch.arange(self.batch_size)
        graphed = self.cuda_graph is not None and self.use_cache and self.guidance == 1.0
        if graphed and self.cuda_graph.draws_noise != (self.world_noise is not None):
            self.enable_cuda_graph()  # the worlds got their own noise streams since the capture
        if graphed and self.cuda_graph.draws_noise:
            noise = eps = None  # drawn inside the graph
        else:
            noise = self._noise((1, *self.latent_shape))  # (B, 1, C, h, w)
            eps = self._noise(self.latent_shape) if self.context_noise > 0 else None  # commit noise
        if graphed:
            all_valid = bool((self.committed >= self.window).all())
            latents, frames = self.cuda_graph.replay(a, noise, eps, all_valid)
            latents = latents.clone()  # the graph's buffer: the next replay overwrites it
        elif self.use_cache and self.guidance == 1.0:
            index = torch.full((1,), self.frame_index, device=self.device, dtype=torch.long)
            latents, frames = self.advance(a, noise, eps, index, self._cache_mask(every))
        else:  # guidance or the uncached reference path
            latents = self.denoise(a, noise)
            self._commit(latents, a, torch.ones(self.batch_size, device=self.device), every, eps)
            frames = self._to_uint8(self._decode(latents))
        self.latents, self.frames = latents, frames
        self.frame_index += 1
        self.committed += 1
        return frames

    def to_host(self, frames: torch.Tensor, copy: bool = True) -> np.ndarray:
        """Device uint8 frames -> numpy, waiting for the work queued before; on CUDA through a pinned
        buffer (`HostStaging`), copied out unless not `copy` (then a view of the buffer, which the next
        call overwrites)."""
        if frames.device.type != "cuda":
            return frames.cpu().numpy()  # a new tensor every eager step: no copy needed
        host = self._staging.copy(frames).numpy()
        return host.copy() if copy else host

    def advance(
        self,
        actions: torch.Tensor,
        noise: torch.Tensor,
        eps: torch.Tensor | None,
        index: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise, commit and decode one frame for all worlds: the hot path, made only of tensor ops
        on fixed buffers so that a CUDA graph can capture it (see worldsim/models/cuda_graph.py).

        index: (1,) long, the frame index of the new frame (its RoPE time and its ring slot); mask: the
        cache mask (`slot_mask`), or None when every slot is valid. Marks the new frame's slot valid.
        Returns latents (B, C, h, w) and uint8 frames (B, H, W, 3), still on the device."""
        dyn, B = self.model.dynamics, self.batch_size
        rope = rope_tables(index, *dyn.grid, dyn.head_dim)
        slot = index % self.window
        slot_tokens = slot * self.N + torch.arange(self.N, device=self.device)
        a = actions[:, None]  # (B, 1, A)
        ones = torch.ones(B, 1, device=self.device)
        past_kv = list(zip(self.cache_k, self.cache_v))
        x = noise
        for t_now, t_next in zip(self.times_list[:-1], self.times_list[1:]):
            t = torch.full((B, 1), t_now, device=self.device)
            v, _ = dyn(x, t, a, None, mask, action_mask=ones, past_kv=past_kv, rope=rope)
            x = x + (t_next - t_now) * v
        z = x if eps is None else add_noise(x, self._context_t(B), eps[:, None])
        _, kv = dyn(
            z, self._context_t(B), a, None, mask, action_mask=ones, past_kv=past_kv, rope=rope, kv_only=True
        )
        for (k_new, v_new), k_buf, v_buf in zip(kv, self.cache_k, self.cache_v):
            k_buf.index_copy_(2, slot_tokens, k_new)
            v_buf.index_copy_(2, slot_tokens, v_new)
        self.slot_valid.index_fill_(1, slot, True)
        latents = x[:, 0]
        return latents, self._to_uint8(self._decode(latents))

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor | None = None) -> np.ndarray:
        """Latents (B, C, h, w) (default: the current frame) -> uint8 frames (B, H, W, 3)."""
        x = self._decode(self.latents if latents is None else latents)
        return self._to_uint8(x).cpu().numpy()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The tokenizer's decoder on (B, C, h, w) latents. On a CPU they go in channels-last, like the
        decoder's weights (oneDNN, 2 cores, bf16, batch 1: the decoder 9.5 -> 5.7 ms, 7.0 with NCHW
        latents; a whole step 46.4 -> 45.3 ms median, interleaved in one process); CUDA's captured and
        compiled decoder takes them as they come."""
        if self.device.type == "cpu":
            latents = latents.contiguous(memory_format=torch.channels_last)
        return self.model.tokenizer.decode(latents)

    @torch.inference_mode()
    def enable_cuda_graph(self) -> None:
        """Capture the hot path (`advance`) as one CUDA graph: a step becomes a single launch."""
        from worldsim.models.cuda_graph import GraphedAdvance

        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.cuda_graph = GraphedAdvance(self)

    # --------------------------------------------------------------------------------- internals
    def denoise(self, actions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """S Euler steps from `noise` (B, 1, C, h, w) to the next frame's latents (B, C, h, w)."""
        B = self.batch_size
        x = noise
        a = actions[:, None]  # (B, 1, A)
        ones = torch.ones(B, 1, device=self.device)
        for t_now, t_next in zip(self.times_list[:-1], self.times_list[1:]):
            t = torch.full((B, 1), t_now, device=self.device)
            v = self._velocity(x, t, a, ones)
            if self.guidance != 1.0:  # action guidance: push away from the unconditional prediction
                v_uncond = self._velocity(x, t, a, torch.zeros_like(ones))
                v = v_uncond + self.guidance * (v - v_uncond)
            x = x + (t_next - t_now) * v
        return x[:, 0]

    def _velocity(
        self, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, action_mask: torch.Tensor
    ) -> torch.Tensor:
        if not self.use_cache:
            return self._velocity_uncached(x, t, a, action_mask)
        v, _ = self.model.dynamics(
            x,
            t,
            a,
            None,
            self._cache_mask(torch.arange(self.batch_size)),
            action_mask=action_mask,
            past_kv=list(zip(self.cache_k, self.cache_v)),
            rope=self._rope(),
        )
        return v

    def _rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables of the frame being made, computed once per frame index."""
        if self._rope_index != self.frame_index:
            pos = torch.tensor([self.frame_index], device=self.device)
            self._rope_tables = rope_tables(pos, *self.model.dynamics.grid, self.model.dynamics.head_dim)
            self._rope_index = self.frame_index
        return self._rope_tables

    def _commit(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor,
        idx: torch.Tensor,
        eps: torch.Tensor | None = None,
    ) -> None:
        """Write the K/V of frames (b, C, h, w) of worlds `idx` into the ring slot of this frame index
        (the slow path: resets and guidance; `advance` is the fast one)."""
        b = len(idx)
        if self.context_noise > 0:
            eps = self._noise(self.latent_shape, idx) if eps is None else eps  # (b, C, h, w)
            z = add_noise(latents[:, None], self._context_t(b), eps[:, None])
        else:
            z = latents[:, None]
        if not self.use_cache:
            self.history.append((z, actions[:, None], action_mask[:, None], self.frame_index))
            return
        full = b == self.batch_size  # indexing copies the buffers: only when a subset resets
        # A subset (a vector env's autoreset of 1, 2, 3... worlds) runs eagerly even when the model is
        # compiled: `forward` bypasses the compiled __call__. Compiling each subset size cost about 10 s
        # the first time each size came up (an H100, bundled small); the eager pass costs milliseconds.
        dynamics = self.model.dynamics if full else self.model.dynamics.forward
        _, kv = dynamics(
            z,
            self._context_t(b),
            actions[:, None],
            None,
            self._cache_mask(idx),
            action_mask=action_mask[:, None],
            past_kv=[(k, v) if full else (k[idx], v[idx]) for k, v in zip(self.cache_k, self.cache_v)],
            rope=self._rope(),
            kv_only=True,
        )
        slot_tokens = self._slot_tokens()
        for (k_new, v_new), k_buf, v_buf in zip(kv, self.cache_k, self.cache_v):
            k_buf[idx[:, None], :, slot_tokens] = k_new.transpose(1, 2)  # (b, N, H, Dh) advanced-index view
            v_buf[idx[:, None], :, slot_tokens] = v_new.transpose(1, 2)
        self.slot_valid[idx, self.frame_index % self.window] = True

    def _context_t(self, b: int) -> torch.Tensor:
        return torch.full((b, 1), self.context_noise, device=self.device)

    def _slot_tokens(self) -> torch.Tensor:
        """Token positions (N,) of the ring slot that the frame being made is committed to."""
        start = (self.frame_index % self.window) * self.N
        return torch.arange(start, start + self.N, device=self.device)

    @staticmethod
    def _to_uint8(x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) on the same device."""
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def _noise(self, shape: tuple[int, ...], idx: torch.Tensor | None = None) -> torch.Tensor:
        """Standard normal (len(idx), *shape) for worlds idx (default all): from the shared generator, or
        each world's own stream (seed_worlds)."""
        if self.world_noise is None:
            b = self.batch_size if idx is None else len(idx)
            return torch.randn(b, *shape, generator=self.generator, device=self.device, dtype=self.dtype)
        return self.world_noise.draw(shape, idx, self.dtype)

    def _graphed_reset_applies(self, b: int) -> bool:
        """Whether a reset of b worlds runs as a graph: a partial reset, with the step graphed and the
        worlds' own noise streams (the shared generator cannot be replayed)."""
        return (
            self.graph_resets
            and self.cuda_graph is not None
            and self.cuda_graph.draws_noise  # captured with the worlds' own streams
            and self.use_cache
            and self.latents is not None
            and b < self.batch_size
        )

    def commit_start(self, x: torch.Tensor, idx: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """A partial reset's work as tensor ops on fixed buffers (graph-capturable, like `advance`):
        encode start frames x (b, 3, H, W) in [-1, 1] (`reset`'s model input) of worlds `idx` (b,) (a
        device tensor; a world may repeat, with the same frame), and commit them at frame `index` (1,)
        with the mask of their (now empty) ring slots, as `reset` and `_commit` do. Returns their latents
        (b, C, h, w)."""
        dyn, b = self.model.dynamics, len(idx)
        latents = self.model.tokenizer.encode(x)
        self.slot_valid.index_fill_(0, idx, False)
        t = self._context_t(b)
        z = latents[:, None]
        if self.context_noise > 0:
            eps = self.world_noise.draw(self.latent_shape, idx, self.dtype, graphed=False)
            z = add_noise(z, t, eps[:, None])
        mask = _slot_mask(self.slot_valid.index_select(0, idx), self.N)
        _, kv = dyn.forward(
            z,
            t,
            torch.zeros(b, 1, self.cfg.action_dim, device=self.device, dtype=self.dtype),
            None,
            mask,
            action_mask=torch.zeros(b, 1, device=self.device),
            past_kv=[
                (k.index_select(0, idx), v.index_select(0, idx)) for k, v in zip(self.cache_k, self.cache_v)
            ],
            rope=rope_tables(index, *dyn.grid, dyn.head_dim),
            kv_only=True,
        )
        slot = index % self.window
        slot_tokens = slot * self.N + torch.arange(self.N, device=self.device)
        for (k_new, v_new), k_buf, v_buf in zip(kv, self.cache_k, self.cache_v):
            k_buf[idx[:, None], :, slot_tokens] = k_new.transpose(1, 2)  # (b, N, H, Dh) advanced-index view
            v_buf[idx[:, None], :, slot_tokens] = v_new.transpose(1, 2)
        self.slot_valid.view(-1).index_fill_(0, idx * self.window + slot, True)
        return latents

    def world_draws(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step's draws from the worlds' own streams, in `step`'s order: the denoising noise
        (B, 1, C, h, w) and the commit noise (B, C, h, w) (None without context noise). Plain tensor ops
        on the streams' buffers, so a CUDA graph of the step can hold them (`GraphedAdvance`)."""
        if self.world_noise is None:
            raise RuntimeError("world_draws needs the worlds' own noise streams (seed_worlds)")
        noise = self.world_noise.draw((1, *self.latent_shape), dtype=self.dtype, graphed=False)
        eps = None
        if self.context_noise > 0:
            eps = self.world_noise.draw(self.latent_shape, dtype=self.dtype, graphed=False)
        return noise, eps

    def _cache_mask(self, idx: torch.Tensor) -> torch.Tensor | None:
        """`slot_mask` of worlds idx, or None when all their slots are valid (a host sync: eager paths)."""
        valid = self.slot_valid[idx]
        return None if bool(valid.all()) else _slot_mask(valid, self.N)

    def slot_mask(self) -> torch.Tensor:
        """(B, 1, 1, (K+1)*N) bool attention mask of the cache: the valid ring slots, then the new frame
        (scratch). Tensor ops only (no host sync): a CUDA graph computes it on every replay."""
        return _slot_mask(self.slot_valid, self.N)

    # ---- uncached reference path: recompute every frame since reset at every denoising step
    def _velocity_uncached(
        self, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, action_mask: torch.Tensor
    ) -> torch.Tensor:
        B, N = self.batch_size, self.N
        zs = torch.cat([h[0] for h in self.history] + [x], dim=1)  # (B, F, C, h, w)
        acts = torch.cat([h[1] for h in self.history] + [a], dim=1)  # (B, F, A)
        amask = torch.cat([h[2] for h in self.history] + [action_mask], dim=1)  # (B, F)
        ctx_t = torch.full((B, len(self.history)), self.context_noise, device=self.device)
        times = torch.cat([ctx_t, t], dim=1)
        pos = torch.tensor([h[3] for h in self.history] + [self.frame_index], device=self.device)
        # The cache's rule as a mask: frame f attends frame g iff 0 <= pos_f - pos_g <= K.
        d = pos[:, None] - pos[None, :]
        frame_mask = (d >= 0) & (d <= self.window)
        mask = frame_mask.repeat_interleave(N, 0).repeat_interleave(N, 1)[None, None]
        v, _ = self.model.dynamics(zs, times, acts, pos, mask, action_mask=amask)
        return v[:, -1:]

    def _indices(self, which: np.ndarray | torch.Tensor | None) -> torch.Tensor:
        if which is None:
            return torch.arange(self.batch_size)
        w = torch.as_tensor(np.asarray(which))
        return torch.nonzero(w).flatten() if w.dtype == torch.bool else w.long()

    def _check_actions(self, actions: np.ndarray | torch.Tensor, env_convention: bool) -> torch.Tensor:
        a = np.asarray(
            actions.detach().cpu() if isinstance(actions, torch.Tensor) else actions, dtype=np.float64
        )
        if a.shape != (self.batch_size, self.cfg.action_dim):
            raise ValueError(
                f"actions must have shape ({self.batch_size}, {self.cfg.action_dim}), got {a.shape}"
            )
        if not np.isfinite(a).all():
            raise ValueError("actions contain NaN or inf")
        if env_convention:
            a = env_action_to_model(a, self.cfg.action_scaler)
        return torch.as_tensor(a, device=self.device, dtype=self.dtype)


def _slot_mask(valid: torch.Tensor, n: int) -> torch.Tensor:
    """(b, K) valid ring slots -> (b, 1, 1, (K+1)*n) token mask: the slots' n tokens each, then the new
    frame's n tokens (always attended)."""
    cache = valid.repeat_interleave(n, dim=1)  # (b, K*n)
    self_part = torch.ones(valid.shape[0], n, dtype=torch.bool, device=valid.device)
    return torch.cat([cache, self_part], dim=1)[:, None, None, :]


def _to_model_frames(
    frames: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> (B, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (B, H, W, 3), got shape {tuple(x.shape)}")
    return (x.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1.0).to(dtype)
