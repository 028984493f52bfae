"""One config type for the whole world model (tokenizer + dynamics + sampling), and its named presets.

Presets differ only in numbers. A checkpoint stores its `WorldModelConfig` as JSON, so a loader
rebuilds the model with nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorldModelConfig:
    """Every number that shapes a world model. Units in the comments."""

    name: str = "custom"
    # --- frames ---
    height: int = 128  # pixel rows of a frame the model sees
    width: int = 160  # pixel columns
    # --- tokenizer (per-frame conv autoencoder, 8x spatial downsampling, no temporal compression) ---
    latent_channels: int = 8  # channels of the latent grid (height/8, width/8)
    tokenizer_channels: tuple[int, ...] = (32, 64, 128)  # encoder widths at /1, /2, /4 (then /8)
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)  # decoder widths at /8, /4, /2, /1
    kl_weight: float = 1e-6  # weight of the KL term that keeps the latent space smooth
    # Reconstruction loss focus: each pixel's error is weighted by (its error / the frame's mean error) to
    # this power (detached, capped at 50), so small saturated objects (a green block on a wooden table: 0.1%
    # of the pixels) are not left to the end of training; 0 = plain L1 + MSE
    recon_focus: float = 1.0
    # --- dynamics transformer ---
    patch_size: int = 2  # latent pixels per token side
    dim: int = 256  # transformer width
    depth: int = 6  # transformer blocks
    heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / dim
    action_dim: int = 7  # Bridge action: 6-D relative pose + gripper
    num_frames: int = 13  # frames in a training window: 1 conditioning + 12 predicted (Cosmos's shape)
    num_context_frames: int = 8  # K: past frames a new frame attends to (sliding KV-cache window)
    # --- rectified flow ---
    denoise_steps: int = 4  # Euler steps per frame at sampling time
    time_shift: float = 1.0  # sampling-schedule shift (>1 spends more steps at high noise)
    # training: the logit-normal flow time warped by this shift (SD3), so training sees the noise levels
    # a few-step sampler visits (with 2 steps at time_shift 6 those are t = 1 and 0.857)
    train_time_shift: float = 1.0
    context_noise_max: float = 0.1  # training: context frames are noised with t ~ U(0, this)
    context_noise: float = 0.02  # sampling: noise level given to (and added to) context frames
    action_dropout: float = 0.1  # training: probability a sample's actions are dropped (unconditional)
    # --- data conventions (stored so the model is used the way it was trained) ---
    action_scaler: float = 20.0  # Cosmos: pose * 20, gripper * 1
    gripper_signal: str = "command"  # "command" (1 - action[6]) or "state" (continuous_gripper_state)
    fps: float = 5.0  # frames per second of the data (Bridge ~5 Hz)

    @property
    def latent_height(self) -> int:
        return self.height // 8

    @property
    def latent_width(self) -> int:
        return self.width // 8

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

    def __post_init__(self) -> None:
        problems = []
        if self.height % (8 * self.patch_size) or self.width % (8 * self.patch_size):
            problems.append(f"height/width ({self.height}x{self.width}) must be multiples of 8*patch_size")
        if self.dim % self.heads:
            problems.append(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        head_dim = self.dim // max(1, self.heads)
        if head_dim % 8:
            problems.append(f"head dim ({head_dim}) must be a multiple of 8 (3-D RoPE splits it)")
        if self.num_context_frames < 1 or self.num_frames < 2:
            problems.append("num_context_frames must be >= 1 and num_frames >= 2")
        if self.gripper_signal not in ("command", "state"):
            problems.append(f"gripper_signal must be 'command' or 'state', got {self.gripper_signal!r}")
        if self.denoise_steps < 1:
            problems.append("denoise_steps must be >= 1")
        if problems:
            raise ValueError(f"invalid WorldModelConfig {self.name!r}: " + "; ".join(problems))

    def replace(self, **changes: Any) -> WorldModelConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> WorldModelConfig:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown WorldModelConfig keys {unknown}: checkpoint from a newer worldsim?")
        for key in ("tokenizer_channels", "decoder_channels"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


PRESETS: dict[str, WorldModelConfig] = {
    # CPU tests: seconds to build, train a few steps and roll out.
    "tiny": WorldModelConfig(
        name="tiny",
        height=32,
        width=48,
        latent_channels=4,
        tokenizer_channels=(8, 16, 16),
        decoder_channels=(16, 16, 8, 8),
        patch_size=1,
        dim=64,
        depth=2,
        heads=2,
        num_context_frames=4,
        denoise_steps=2,
    ),
    # The bundled default: real-time on a laptop CPU (>= 20 frames/s on 2 cores, decoder included).
    # 2 Euler steps on a schedule shifted towards high noise (time_shift 6): measured on 30 BridgeSim
    # val episodes with the bundled weights, as faithful as 3-4 plain steps up to horizon 30 (PSNR at
    # horizon 12: 21.0 dB vs 20.1 for 4 uniform steps) at half the passes; 3 steps hold up better at
    # horizon 60 (Rollout(denoise_steps=3) or the env's denoise_steps=3). Training draws its flow times
    # with the same shift (train_time_shift): the unshifted logit-normal put 3.7% of them above 0.857.
    "small": WorldModelConfig(name="small", denoise_steps=2, time_shift=6.0, train_time_shift=6.0),
    # One GPU, Cosmos's resolution.
    "base": WorldModelConfig(
        name="base",
        height=256,
        width=320,
        latent_channels=16,
        tokenizer_channels=(64, 128, 256),
        decoder_channels=(256, 128, 64, 32),
        dim=768,
        depth=12,
        # Heads of 128, as Cosmos-Predict2.5 and `2b`: the block-causal training attention runs 1.44x faster
        # than with 12 heads of 64 (forward + backward, H200), a whole training step 1.17x (README, "Training")
        heads=6,
        denoise_steps=4,
    ),
    # Cosmos-Predict2.5-2B scale (28 blocks of width 2048); trained with FSDP2 across GPUs.
    "2b": WorldModelConfig(
        name="2b",
        height=256,
        width=320,
        latent_channels=16,
        tokenizer_channels=(64, 128, 256),
        decoder_channels=(256, 128, 64, 32),
        dim=2048,
        depth=28,
        heads=16,
        denoise_steps=4,
    ),
}


def get_preset(name: str, **overrides: Any) -> WorldModelConfig:
    """A named preset, optionally with some fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


__all__ = ["WorldModelConfig", "PRESETS", "get_preset"]
