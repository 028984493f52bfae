"""Block-causal, action-conditioned diffusion transformer over latent frames.

Frames are token blocks: attention is full inside a frame and causal across frames, with a sliding
window of `num_context_frames` past frames, so a rollout keeps past frames in a KV cache and denoises
only the new frame. Each frame carries its own conditioning — flow time t and the action that leads
into it — applied with AdaLN-Zero (DiT). Positions use 3-D RoPE (time, row, column) as Cosmos does;
RoPE is relative, so a sliding window works at any absolute frame index.

The network never knows the noising process (see worldsim/models/flow.py); the training sequence
layout (clean context stream + noisy stream) lives in `training_frame_mask` below.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from worldsim.models.config import WorldModelConfig


# ----------------------------------------------------------------------------------------- positions
def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Head-dim channels given to the (time, row, column) axes; each even."""
    dim_t = (head_dim // 4) // 2 * 2
    dim_h = ((head_dim - dim_t) // 2) // 2 * 2
    return dim_t, dim_h, head_dim - dim_t - dim_h


def _axis_angles(pos: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(L,) positions -> (L, dim/2) angles, in float64 so large frame indices keep their precision."""
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim)
    return pos.to(torch.float64)[:, None] * freqs[None, :]


def rope_tables(
    frame_pos: torch.Tensor, grid_h: int, grid_w: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (L, head_dim/2) for tokens of frames at `frame_pos` (F,), L = F * grid_h * grid_w."""
    dim_t, dim_h, dim_w = rope_split(head_dim)
    device = frame_pos.device
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)  # (N,)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    n = grid_h * grid_w
    ang_t = _axis_angles(frame_pos, dim_t).repeat_interleave(n, dim=0)  # (F*N, dim_t/2)
    ang_hw = torch.cat([_axis_angles(rows, dim_h), _axis_angles(cols, dim_w)], dim=-1)
    ang = torch.cat([ang_t, ang_hw.repeat(len(frame_pos), 1)], dim=-1)  # (F*N, head_dim/2)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (B, H, L, Dh) by the angles of tables (L, Dh/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, L, Dh/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


# ---------------------------------------------------------------------------------------- embeddings
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times t in [0, 1], any shape -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    """in -> dim -> dim MLP; `zero_init` makes its output exactly 0 at initialisation."""

    def __init__(self, in_dim: int, dim: int, zero_init: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, dim), nn.Linear(dim, dim)
        if zero_init:  # so a video2world checkpoint post-trains into an action-conditioned one smoothly
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


# -------------------------------------------------------------------------------------------- blocks
class Attention(nn.Module):
    """Multi-head self-attention with QK-RMSNorm, 3-D RoPE and an optional KV-cache prefix."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.RMSNorm(self.head_dim), nn.RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], queries: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """x (B, L, D) -> q, k, v (B, H, L, Dh), q and k normed and rotated; q None without `queries`."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return (apply_rope(self.q_norm(q), *rope) if queries else None), apply_rope(self.k_norm(k), *rope), v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        queries_from: int = 0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, L, D); mask bool broadcastable to (B, H, L, Lk), True = may attend, or a flex-attention
        `BlockMask` (which skips the blocks nobody attends). Returns out, this (k, v).

        past_kv: KV-cache buffers (B, H, Lk, Dh) whose last L positions are scratch space for these
        tokens: their keys and values are written there and attention runs over the whole buffer
        (no concatenation on the hot path). Without it, attention is over these tokens alone.
        queries_from: attend only for the tokens from this one on (out is (B, L - queries_from, D)); the
        keys and values are still those of all L tokens (a merged pass's last block, see
        `DynamicsTransformer.forward`'s velocity_from). A dense mask only.
        """
        B, L, D = x.shape
        q, k, v = self.project(x, rope)
        if queries_from:
            if isinstance(mask, BlockMask):
                raise ValueError("queries_from takes a dense mask or none, not a flex-attention BlockMask")
            q = q[:, :, queries_from:]
            mask = None if mask is None else mask[..., queries_from:, :]
        k_all, v_all = k, v
        if past_kv is not None:
            k_all, v_all = past_kv
            k_all[:, :, -L:] = k
            v_all[:, :, -L:] = v
        if isinstance(mask, BlockMask):  # block-sparse training layout (`training_block_mask`)
            out = _compiled_flex_attention()(
                q, k_all, v_all, block_mask=mask, kernel_options=FLEX_KERNEL_OPTIONS
            )
        else:
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, L - queries_from, D)), (k, v)


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated per frame (AdaLN-Zero)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)  # AdaLN-Zero: each block starts as the identity
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        frames_from: int = 0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, F, N, D); cond (B, F, D) per frame. Returns x and this block's (k, v) of the F*N tokens.
        frames_from: x is returned for the frames from this one on only (their attention, MLP); the
        keys and values are still every frame's."""
        B, Fr, N, D = x.shape
        mods = self.modulation(F.silu(cond))[:, :, None]  # (B, F, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods.chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        attn_out, kv = self.attn(h.reshape(B, Fr * N, D), rope, mask, past_kv, frames_from * N)
        if frames_from:
            x, gate1, scale2, shift2, gate2 = (y[:, frames_from:] for y in (x, gate1, scale2, shift2, gate2))
        x = x + gate1 * attn_out.view(B, Fr - frames_from, N, D)
        x = x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)
        return x, kv

    def keys_values(
        self, x: torch.Tensor, cond: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Only this block's (k, v) of x (B, F, N, D), as `forward` makes them: what a commit pass
        needs from the last block, whose attention output, MLP and the final layer nobody reads."""
        B, Fr, N, D = x.shape
        shift1, scale1 = self.modulation(F.silu(cond))[:, :, None, : 2 * D].chunk(2, dim=-1)
        h = (self.norm1(x) * (1 + scale1) + shift1).reshape(B, Fr * N, D)
        _, k, v = self.attn.project(h, rope, queries=False)
        return k, v


class FinalLayer(nn.Module):
    """AdaLN-modulated norm + linear back to latent patches (zero-initialised)."""

    def __init__(self, dim: int, patch_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch_dim)
        for layer in (self.modulation, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(cond))[:, :, None].chunk(2, dim=-1)
        return self.linear(self.norm(x) * (1 + scale) + shift)


# ------------------------------------------------------------------------------------------ the model
class DynamicsTransformer(nn.Module):
    """Predicts the flow velocity of every frame's latents, each frame seeing only its allowed past."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, C = cfg.patch_size, cfg.latent_channels
        self.grid = (cfg.latent_height // p, cfg.latent_width // p)
        self.patch_embed = nn.Linear(C * p * p, cfg.dim)
        self.time_embed = MLPEmbedder(256, cfg.dim)
        self.action_embed = MLPEmbedder(cfg.action_dim, cfg.dim, zero_init=True)
        self.blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg.dim, C * p * p)

    @property
    def head_dim(self) -> int:
        return self.cfg.dim // self.cfg.heads

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """(B, F, C, h, w) -> (B, F, N, C*p*p)."""
        p = self.cfg.patch_size
        B, Fr, C, h, w = z.shape
        z = z.view(B, Fr, C, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)  # (B, F, gh, gw, C, p, p)
        return z.reshape(B, Fr, (h // p) * (w // p), C * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, N, C*p*p) -> (B, F, C, h, w)."""
        p, C = self.cfg.patch_size, self.cfg.latent_channels
        gh, gw = self.grid
        B, Fr = x.shape[:2]
        x = x.view(B, Fr, gh, gw, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, F, C, gh, p, gw, p)
        return x.reshape(B, Fr, C, gh * p, gw * p)

    def conditioning(
        self, t: torch.Tensor, actions: torch.Tensor | None, action_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-frame conditioning (B, F, D) from flow times t (B, F) and actions (B, F, A) (masked by (B, F))."""
        dtype = self.patch_embed.weight.dtype  # bf16 under mixed precision: the sinusoids are made in fp32
        cond = self.time_embed(timestep_embedding(t, 256).to(dtype))
        if actions is not None:
            a = self.action_embed(actions.to(cond.dtype))
            cond = cond + (a if action_mask is None else a * action_mask[..., None].to(a.dtype))
        return cond

    def forward(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor | None,
        frame_pos: torch.Tensor,
        mask: torch.Tensor | None,
        action_mask: torch.Tensor | None = None,
        past_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_only: bool = False,
        velocity_from: int = 0,
    ) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Velocity for every frame, and each block's (k, v) of these frames' tokens.

        z: (B, F, C, h, w) latents at their own noise levels; t: (B, F) flow times; actions: (B, F, A)
        scaled actions leading into each frame, or None (unconditional); frame_pos: (F,) temporal
        positions; mask: bool token mask (B or 1, 1, F*N, past + F*N), True = may attend, or None for
        full attention; past_kv: per block KV-cache buffers (B, H, past + F*N, Dh), keys stored after
        RoPE (so only new tokens need tables), the last F*N positions scratch (see `Attention`);
        rope: precomputed `rope_tables(frame_pos, ...)`, which a rollout reuses across denoising steps.
        kv_only: return (None, kv) and skip what only the velocity needs (the last block past its
        keys and values, the final layer): a rollout's commit pass.
        velocity_from: return the velocity of the frames from this one on only, (B, F - velocity_from,
        C, h, w): the last block's attention, MLP and the final layer skip the earlier frames, whose
        keys and values are all a rollout's merged pass needs of them (a dense mask or none).
        """
        B, Fr = z.shape[:2]
        x = self.patch_embed(self.patchify(z))  # (B, F, N, D)
        cond = self.conditioning(t, actions, action_mask)  # (B, F, D)
        if rope is None:
            rope = rope_tables(frame_pos, *self.grid, self.head_dim)
        new_kv = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if kv_only and i == last:
                new_kv.append(block.keys_values(x, cond, rope))
                return None, new_kv
            frames_from = velocity_from if i == last else 0
            x, kv = block(x, cond, rope, mask, None if past_kv is None else past_kv[i], frames_from)
            new_kv.append(kv)
        return self.unpatchify(self.final(x, cond[:, velocity_from:])), new_kv


# ------------------------------------------------------------------------------------------- layouts
def frame_mask_to_tokens(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Expand a (..., Fq, Fk) frame-level mask to (..., 1, Fq*N, Fk*N) tokens (block structure)."""
    n = tokens_per_frame
    m = frame_mask.repeat_interleave(n, dim=-2).repeat_interleave(n, dim=-1)
    return m.unsqueeze(-3)


def training_frame_mask(num_frames: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """Frame mask of the training sequence [clean_0 .. clean_{F-1}, noisy_1 .. noisy_{F-1}].

    clean_i attends clean_{i-window .. i} (what it sees when it is committed to the cache);
    noisy_i attends clean_{i-window .. i-1} and itself (what a frame being denoised sees).
    Exactly the attention of the KV-cached rollout, so training and sampling match.
    """
    Fr = num_frames
    i = torch.arange(Fr, device=device)
    d = i[:, None] - i[None, :]  # query index - key index
    clean_clean = (d >= 0) & (d <= window)
    noisy_clean = (d >= 1) & (d <= window)
    noisy_noisy = torch.eye(Fr, dtype=torch.bool, device=device)
    top = torch.cat([clean_clean, torch.zeros(Fr, Fr - 1, dtype=torch.bool, device=device)], dim=1)
    bottom = torch.cat([noisy_clean[1:], noisy_noisy[1:, 1:]], dim=1)
    return torch.cat([top, bottom], dim=0)  # (2F-1, 2F-1)


def training_block_mask(
    num_frames: int, window: int, tokens_per_frame: int, device: torch.device | str, block_size: int = 128
) -> BlockMask:
    """`training_frame_mask` as a flex-attention `BlockMask` of block_size x block_size tiles: the same
    attention, but tiles of the (2F-1)N x (2F-1)N score matrix that no query may attend are never computed
    (F = 13, K = 8: 26% of the query-key pairs are allowed; 72% of the 128x128 tiles are skipped for
    `base`, 58% for `small`). Tiles that straddle a frame boundary evaluate the mask per element; with a
    block size that divides N (64 for `base`'s 320 tokens) there are none. Cached: a training run builds
    it once."""
    return _training_block_mask(num_frames, window, tokens_per_frame, str(torch.device(device)), block_size)


@functools.lru_cache(maxsize=8)
def _training_block_mask(num_frames: int, window: int, n: int, device: str, block_size: int) -> BlockMask:
    allowed = training_frame_mask(num_frames, window, torch.device(device))
    length = allowed.shape[0] * n

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 (flex-attention's signature)
        return allowed[q_idx // n, kv_idx // n]

    return create_block_mask(mask_mod, None, None, length, length, device=device, BLOCK_SIZE=block_size)


# Flex-attention's forward tiles in training, for heads of 64 (`flex_forward_tile_for`): 64 x 64 instead of
# its defaults. The training attention of `base` as it was (batch 8, 12 heads x 64, 8,000 tokens, 28% of
# the 128 x 128 mask blocks computed) on an H100: forward 6.54 -> 2.07 ms, forward + backward 11.99 ->
# 7.64 ms, outputs within bf16 rounding (`benchmarks/flex_block_size.py`); the backward keeps its defaults.
FLEX_KERNEL_OPTIONS: dict[str, int] | None = {"BLOCK_M": 64, "BLOCK_N": 64}
# What `set_flex_forward_tile` takes: -1 = by head size (`flex_forward_tile_for`), 0 = flex-attention's defaults
FLEX_FORWARD_TILES = (-1, 0, 16, 32, 64, 128)


def flex_forward_tile_for(head_dim: int) -> int:
    """The training forward tiles measured fastest for a head size (README, "Training"): 64 x 64 for heads
    of 64 (`base` with 12 heads x 64: the attention 1.57x faster than with flex-attention's own tiles on an
    H100, the whole trainer 1.20x on an H200), flex-attention's own above (6 heads x 128: its own tiles
    made a whole training step 1.08x faster than 64 x 64 on an H200)."""
    return 64 if head_dim <= 64 else 0


def set_flex_forward_tile(tile: int, head_dim: int = 64) -> None:
    """Set the training flex-attention's forward tiles (BLOCK_M = BLOCK_N = tile) for this process,
    flex-attention's own defaults with 0, or the measured choice for `head_dim` with -1
    (`trainer.flex_forward_tile`; other GPUs may prefer others)."""
    global FLEX_KERNEL_OPTIONS
    if tile not in FLEX_FORWARD_TILES:
        raise ValueError(f"flex forward tile must be one of {FLEX_FORWARD_TILES}, got {tile!r}")
    if tile == -1:
        tile = flex_forward_tile_for(head_dim)
    FLEX_KERNEL_OPTIONS = {"BLOCK_M": tile, "BLOCK_N": tile} if tile else None


@functools.cache
def _compiled_flex_attention():  # noqa: ANN202
    """flex_attention compiled once: uncompiled it runs a slow reference implementation."""
    return torch.compile(flex_attention, dynamic=False)
