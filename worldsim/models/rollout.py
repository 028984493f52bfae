"""The rollout engine: the one routine that steps a world model (env, vector env, app, infer, eval).

A `Rollout` holds a batch of B worlds. It keeps a KV cache of each world's last K committed frames
(a ring of K slots, one per frame) and one *pending* frame: the last frame it made (or a reset's start
frame), made but not yet committed to the cache. Each step, for a new frame k+1 after pending frame k:
  1. one merged pass over 2 frames, [frame k, frame k+1]: frame k's committed latents (lightly
     re-noised) and frame k+1's pure noise. Frame k's queries attend the ring (frames k-K..k-1) and
     itself: its keys and values are its commit, written into its ring slot (k % K, which held frame
     k-K); frame k+1's queries attend the ring but frame k-K, frame k and itself: its first Euler step.
     Exactly the attention pattern `training_frame_mask` trains (clean_k sees clean_{k-K..k}; noisy_{k+1}
     sees clean_{k+1-K..k} and itself);
  2. the other S-1 Euler steps of frame k+1, single-frame passes attending the ring (now k-K+1..k);
  3. decodes frame k+1's latents to pixels; frame k+1 becomes the pending frame.
So a step costs S passes (the commit rides along with the first denoising pass), not S+1: the default
for a single world (`merge_commit`); batched, the commit is a pass of its own before step 2 (the merged
pass's mask keeps it off the flash kernel, slower at batch 256 on a GPU). A reset
makes the start frame pending without any pass (its commit is the first step's merged pass).
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
        merge_commit: bool | None = None,
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
        # Commit the pending frame inside the first denoising pass (one 2-frame pass, S passes a step) or
        # with a pass of its own (S + 1). Merged is faster for one world (H200, graphed, 1 step: 0.81 ->
        # 0.67 ms; 2 AVX2 cores: 95 -> 84 ms) but slower batched (batch 256: 8.8 -> 9.6 ms): the merged
        # pass always carries a mask, so no flash kernel. None: merged for a single world only.
        self.merge_commit = batch_size == 1 if merge_commit is None else merge_commit
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else seed)
        self.world_noise: WorldNoise | None = None  # per-world streams; see seed_worlds
        dyn = model.dynamics
        self.N = cfg.tokens_per_frame
        self.latent_shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        H, Dh, K, N = cfg.heads, dyn.head_dim, self.window, self.N
        # K ring slots, then scratch for 2 frames: a single-frame pass sees the ring and N scratch
        # positions (`_past_one`), the merged pass the ring and 2N (`_past_two`); `Attention` writes a
        # pass's new keys and values into the last positions of the buffers it is given.
        shape = (batch_size, H, (K + 2) * N, Dh)
        self.cache_k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in dyn.blocks]
        self.cache_v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in dyn.blocks]
        self._past_two = list(zip(self.cache_k, self.cache_v))
        self._past_one = [(k[:, :, : (K + 1) * N], v[:, :, : (K + 1) * N]) for k, v in self._past_two]
        self.slot_valid = torch.zeros(batch_size, K, dtype=torch.bool, device=self.device)
        # frames committed to the ring since each world's reset, on the host: once all reach K every slot
        # is valid (what slot_valid says, without a device sync). The pending frame is not counted.
        self.committed = np.zeros(batch_size, dtype=np.int64)
        # The pending frame of each world (the current frame, made but not yet committed: the next step's
        # merged pass commits it), in fixed buffers that a CUDA graph updates in place: its latents as
        # the commit sees them (re-noised with the commit noise drawn when it was made), the action that
        # led into it and that action's mask (0 for a start frame). Its position is frame_index - 1.
        self.pending_z = torch.zeros(batch_size, 1, *self.latent_shape, device=self.device, dtype=self.dtype)
        self.pending_action = torch.zeros(batch_size, cfg.action_dim, device=self.device, dtype=self.dtype)
        self.pending_action_mask = torch.zeros(batch_size, device=self.device)
        # global frame counter: the RoPE time position of the next frame made (the pending frame's + 1)
        self.frame_index = 0
        # Python floats: the times are constants of the sampling loop (no device sync, graph-capturable)
        self.times_list = sampling_times(self.denoise_steps, cfg.time_shift).tolist()
        self.cuda_graph = None  # set by enable_cuda_graph()
        self.graph_resets = True  # partial resets as graphs where they apply (False: eager; for A/B timing)
        # Without a cache (the reference path for tests and benchmarks): every committed frame since
        # reset, re-run through the network at every denoising step. (z, actions, action_mask, index);
        # the pending frame joins it at the start of the next step, as the cache's commit does.
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
        self._rope_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

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
        if not self.use_cache:
            if len(idx) != self.batch_size:
                raise ValueError("the uncached reference rollout resets all worlds at once")
            self.history = []
        if self._graphed_reset_applies(len(idx)):
            # A vector env's autoreset of a few worlds, once the step is a CUDA graph: the same work as
            # below, as one graph launch (`GraphedAdvance.reset`) instead of dozens of eager kernels.
            latents = self.cuda_graph.reset(x, idx)
        else:
            # The start frame becomes these worlds' pending frame, at position frame_index - 1: a partial
            # reset puts it in place of their current frame (advancing the shared clock would leave every
            # other world a gap in time), and the next step's commit commits it.
            if self.latents is None or len(idx) == self.batch_size:
                # RoPE is relative, but keys are rounded after rotation (bf16 especially), so the same
                # episode must see the same absolute positions: a full reset restarts the clock (the start
                # frame at position 0).
                self.frame_index = 1
            latents = self.commit_start(x, idx.to(self.device))  # (b, C, h, w)
        self.committed[idx.numpy()] = 0
        if self.latents is None:
            self.latents = torch.zeros(
                self.batch_size, *self.latent_shape, device=self.device, dtype=self.dtype
            )
        self.latents[idx.to(self.device)] = latents

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
        graphed = self.cuda_graph is not None and self.use_cache and self.guidance == 1.0
        if graphed and self.cuda_graph.draws_noise != (self.world_noise is not None):
            self.enable_cuda_graph()  # the worlds got their own noise streams since the capture
        if graphed and self.cuda_graph.draws_noise:
            noise = eps = None  # drawn inside the graph
        else:
            noise = self._noise((1, *self.latent_shape))  # (B, 1, C, h, w)
            # the new frame's commit noise: used when the next step commits it
            eps = self._noise(self.latent_shape) if self.context_noise > 0 else None
        # every world's ring full before this step's commit (a host count, no device sync): the passes
        # need no per-world mask of empty slots
        all_valid = bool((self.committed >= self.window).all())
        if graphed:
            latents, frames = self.cuda_graph.replay(a, noise, eps, all_valid)
            latents = latents.clone()  # the graph's buffer: the next replay overwrites it
        elif self.use_cache and self.guidance == 1.0:
            index = torch.full((1,), self.frame_index, device=self.device, dtype=torch.long)
            latents, frames = self.advance(a, noise, eps, index, all_valid)
        else:  # guidance or the uncached reference path: the commit as a pass of its own, then denoising
            self._commit_pending()
            latents = self.denoise(a, noise)
            self._set_pending(latents, a, 1.0, eps)
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
        all_valid: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Commit the pending frame, denoise and decode the next one for all worlds: the hot path, made
        only of tensor ops on fixed buffers so that a CUDA graph can capture it (worldsim/models/
        cuda_graph.py).

        actions (B, A) lead into the new frame; noise (B, 1, C, h, w) is its start; eps (B, C, h, w), its
        commit noise (None without context noise), re-noises it as the pending frame that the next step
        commits. index: (1,) long, the new frame's position (the pending frame's + 1). all_valid: every
        world's ring slots were valid before this step (`committed` >= K): the single-frame passes then
        go unmasked. With `merge_commit` the first Euler step is the merged 2-frame pass that also commits
        the pending frame into ring slot (index - 1) % K (marked valid; see the module docstring), else
        a pass of its own commits it first. Returns the new frame's
        latents (B, C, h, w) and uint8 frames (B, H, W, 3), still on the device."""
        dyn, B, N = self.model.dynamics, self.batch_size, self.N
        times = self.times_list
        rope_two = rope_tables(torch.cat([index - 1, index]), *dyn.grid, dyn.head_dim)  # (2N, Dh/2) each
        rope_one = (rope_two[0][N:], rope_two[1][N:])  # the new frame's
        slot = (index - 1) % self.window  # the pending frame's slot, holding frame index - 1 - K
        ones = torch.ones(B, 1, device=self.device)
        if self.merge_commit:
            z = torch.cat([self.pending_z, noise], dim=1)  # (B, 2, C, h, w)
            t = torch.cat([self._context_t(B), torch.full((B, 1), times[0], device=self.device)], dim=1)
            a = torch.stack([self.pending_action, actions], dim=1)  # (B, 2, A)
            action_mask = torch.cat([self.pending_action_mask[:, None], ones], dim=1)
            valid = None if all_valid else self.slot_valid
            mask = _pair_mask(valid, slot, self.window, N)
            # the velocity of the new frame only: the pending frame's last-block output is never read
            v, kv = dyn(
                z, t, a, None, mask, action_mask=action_mask, past_kv=self._past_two, rope=rope_two,
                velocity_from=1,
            )  # fmt: skip
            self._write_slot(kv, slot)
            x, times = noise + (times[1] - times[0]) * v, times[1:]  # the first Euler step is done
        else:  # the commit as a pass of its own: the pending frame attends the whole ring and itself
            mask = None if all_valid else _slot_mask(self.slot_valid, N)
            self._commit_pass(mask, (rope_two[0][:N], rope_two[1][:N]), slot)
            x = noise
        # the denoising passes' mask, after the commit marked the pending frame's slot valid
        mask = None if all_valid else _slot_mask(self.slot_valid, N)
        a = actions[:, None]  # (B, 1, A)
        for t_now, t_next in zip(times[:-1], times[1:]):
            t = torch.full((B, 1), t_now, device=self.device)
            v, _ = dyn(x, t, a, None, mask, action_mask=ones, past_kv=self._past_one, rope=rope_one)
            x = x + (t_next - t_now) * v
        latents = x[:, 0]
        self._set_pending(latents, actions, 1.0, eps)
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
            self._cache_mask(),
            action_mask=action_mask,
            past_kv=self._past_one,
            rope=self._rope(self.frame_index),
        )
        return v

    def _rope(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables of one frame at position `pos`, computed once per position (the eager paths)."""
        if pos not in self._rope_cache:
            if len(self._rope_cache) > 4:  # a step uses 2 positions: the pending frame's and the new one's
                self._rope_cache.clear()
            dyn = self.model.dynamics
            frame_pos = torch.tensor([pos], device=self.device)
            self._rope_cache[pos] = rope_tables(frame_pos, *dyn.grid, dyn.head_dim)
        return self._rope_cache[pos]

    def _commit_pending(self) -> None:
        """Commit every world's pending frame (at position frame_index - 1) with a pass of its own: its
        keys and values into its ring slot (the slow path, for guidance; `advance` merges the commit into
        the first denoising pass). Without a cache, the frame joins the history instead."""
        pos = self.frame_index - 1
        z, a, action_mask = self.pending_z, self.pending_action[:, None], self.pending_action_mask[:, None]
        if not self.use_cache:  # copies: the pending buffers are overwritten in place
            self.history.append((z.clone(), a.clone(), action_mask.clone(), pos))
            return
        slot = torch.full((1,), pos % self.window, device=self.device, dtype=torch.long)
        self._commit_pass(self._cache_mask(), self._rope(pos), slot)

    def _commit_pass(
        self, mask: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor], slot: torch.Tensor
    ) -> None:
        """One kv-only pass over every world's pending frame (attending the ring under `mask` and itself,
        at RoPE tables `rope`) that writes its keys and values into ring slot `slot` (1,). Tensor ops
        only: `advance` (graph-capturable) and `_commit_pending` (eager) both commit through it."""
        _, kv = self.model.dynamics(
            self.pending_z,
            self._context_t(self.batch_size),
            self.pending_action[:, None],
            None,
            mask,
            action_mask=self.pending_action_mask[:, None],
            past_kv=self._past_one,
            rope=rope,
            kv_only=True,
        )
        self._write_slot(kv, slot)

    def _write_slot(self, kv: list[tuple[torch.Tensor, torch.Tensor]], slot: torch.Tensor) -> None:
        """Write the keys and values of the first frame of a pass (each block's (k, v): (B, H, F*N, Dh))
        into ring slot `slot` (1,) of every world, and mark it valid. Tensor ops only."""
        N = self.N
        slot_tokens = slot * N + torch.arange(N, device=self.device)
        for (k_new, v_new), k_buf, v_buf in zip(kv, self.cache_k, self.cache_v):
            k_buf.index_copy_(2, slot_tokens, k_new[:, :, :N])
            v_buf.index_copy_(2, slot_tokens, v_new[:, :, :N])
        self.slot_valid.index_fill_(1, slot, True)

    def _set_pending(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        action_mask: float,
        eps: torch.Tensor | None,
        idx: torch.Tensor | None = None,
    ) -> None:
        """Make frames (b, C, h, w) the pending frames of worlds idx (a device tensor; default all): their
        latents re-noised to the context noise level with their commit noise eps (b, C, h, w) (None: as
        they are), the actions (b, A) that led into them and that action's mask (1, or 0 for a start
        frame). In place, with tensor ops only (graph-capturable)."""
        z = latents[:, None]
        if eps is not None:
            z = add_noise(z, self._context_t(len(latents)), eps[:, None])
        if idx is None:
            self.pending_z.copy_(z)
            self.pending_action.copy_(actions)
            self.pending_action_mask.fill_(action_mask)
        else:
            self.pending_z.index_copy_(0, idx, z)
            self.pending_action.index_copy_(0, idx, actions)
            self.pending_action_mask.index_fill_(0, idx, action_mask)

    def _context_t(self, b: int) -> torch.Tensor:
        return torch.full((b, 1), self.context_noise, device=self.device)

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

    def commit_start(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """A reset's work as tensor ops on fixed buffers (graph-capturable, like `advance`: a partial
        reset's graph when the worlds draw their own noise; `reset` runs it eagerly otherwise): encode
        start frames x (b, 3, H, W) in [-1, 1] (`reset`'s model input) of worlds `idx` (b,) (a device
        tensor; a world may repeat, with the same frame), empty their ring slots and make the frames their
        pending frames with their commit noise (no transformer pass: the next step commits them). Returns
        their latents (b, C, h, w)."""
        latents = self.model.tokenizer.encode(x)
        self.slot_valid.index_fill_(0, idx, False)
        # the commit noise, drawn now (as the commit pass drew it when a reset ran one)
        eps = self._noise(self.latent_shape, idx) if self.context_noise > 0 else None
        no_action = torch.zeros(len(idx), self.cfg.action_dim, device=self.device, dtype=self.dtype)
        self._set_pending(latents, no_action, 0.0, eps, idx)
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

    def _cache_mask(self) -> torch.Tensor | None:
        """`_slot_mask` of a single-frame pass, or None when all slots are valid (a host sync: eager
        paths)."""
        return None if bool(self.slot_valid.all()) else _slot_mask(self.slot_valid, self.N)

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
    """(b, K) valid ring slots -> (b, 1, 1, (K+1)*n) token mask of a single-frame pass: the slots' n
    tokens each, then the new frame's n tokens (always attended)."""
    cache = valid.repeat_interleave(n, dim=1)  # (b, K*n)
    self_part = torch.ones(valid.shape[0], n, dtype=torch.bool, device=valid.device)
    return torch.cat([cache, self_part], dim=1)[:, None, None, :]


def _pair_mask(valid: torch.Tensor | None, slot: torch.Tensor, window: int, n: int) -> torch.Tensor:
    """The merged pass's token mask (b or 1, 1, 2n, (K+2)*n) over [ring of K slots, pending frame, new
    frame], from the (b, K) valid ring slots (None: all valid) and the pending frame's slot (1,) long.
    The pending frame's queries attend the valid slots and itself (clean_k: clean_{k-K..k}); the new
    frame's the valid slots but the pending frame's (which holds frame k-K, outside its window), the
    pending frame and itself (noisy_{k+1}: clean_{k+1-K..k} and itself). Tensor ops only (no host
    sync): a CUDA graph computes it on every replay."""
    device = slot.device
    ring = torch.ones(1, window, dtype=torch.bool, device=device) if valid is None else valid  # (b, K)
    ring_new = ring & (torch.arange(window, device=device) != slot)
    yes = torch.ones(ring.shape[0], 1, dtype=torch.bool, device=device)
    pending_row = torch.cat([ring, yes, ~yes], dim=1)  # keys: ring, pending frame, new frame
    new_row = torch.cat([ring_new, yes, yes], dim=1)
    frames = torch.stack([pending_row, new_row], dim=1)  # (b, 2, K+2): query frame x key frame
    return frames.repeat_interleave(n, dim=1).repeat_interleave(n, dim=2)[:, None]


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
