"""Per-frame convolutional autoencoder (KL-regularised): 8x spatial downsampling, no temporal compression.

One frame in, one latent grid out, so one env.step is one new latent frame. The decoder is kept light
(pixel-shuffle upsampling, narrow full-resolution layers) because it runs on every step of a CPU rollout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldsim.models.config import WorldModelConfig


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(8, channels // 4) or 1, num_channels=channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _group_norm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = _group_norm(channels), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, 2*C, H/8, W/8): mean and log-variance of the latent."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        chans = cfg.tokenizer_channels
        self.stem = nn.Conv2d(3, chans[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(chans):
            c_next = chans[min(i + 1, len(chans) - 1)]
            layers += [ResBlock(c), nn.Conv2d(c, c_next, 4, stride=2, padding=1)]  # /2 each level
        self.down = nn.Sequential(*layers)
        self.mid = ResBlock(chans[-1])
        self.out = nn.Sequential(
            _group_norm(chans[-1]), nn.SiLU(), nn.Conv2d(chans[-1], 2 * cfg.latent_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(self.down(self.stem(x))))


class Decoder(nn.Module):
    """(B, C, H/8, W/8) -> (B, 3, H, W) in about [-1, 1]."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        chans = cfg.decoder_channels  # widths at /8, /4, /2, /1
        self.stem = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        layers: list[nn.Module] = [ResBlock(chans[0])]
        for c, c_next in zip(chans[:-1], chans[1:]):
            # Pixel shuffle: a conv at the low resolution makes 4x the channels, then rearranges them.
            layers += [nn.Conv2d(c, 4 * c_next, 3, padding=1), nn.PixelShuffle(2), ResBlock(c_next)]
        self.up = nn.Sequential(*layers)
        self.out = nn.Sequential(_group_norm(chans[-1]), nn.SiLU(), nn.Conv2d(chans[-1], 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.stem(z)))


class Tokenizer(nn.Module):
    """KL autoencoder for single frames; latents are scaled to about unit variance for flow matching."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # Per-channel statistics of the latents over the training data, set after tokenizer training
        # (Stable Diffusion's scale_factor, per channel): the flow model sees (z - shift) / scale.
        self.register_buffer("latent_shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_scale", torch.ones(cfg.latent_channels))

    def moments(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> mean, logvar, each (B, C, H/8, W/8), unnormalised."""
        mean, logvar = self.encoder(frames).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_shift[:, None, None]) / self.latent_scale[:, None, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_scale[:, None, None] + self.latent_shift[:, None, None]

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) in [-1, 1] -> normalised latent means (..., C, H/8, W/8)."""
        lead = frames.shape[:-3]
        mean, _ = self.moments(frames.reshape(-1, *frames.shape[-3:]))
        return self.normalize(mean).reshape(*lead, *mean.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., C, h, w) normalised latents -> (..., 3, H, W) frames in about [-1, 1]."""
        lead = latents.shape[:-3]
        x = self.decoder(self.denormalize(latents.reshape(-1, *latents.shape[-3:])))
        return x.reshape(*lead, *x.shape[1:])

    def _focused(self, err: torch.Tensor) -> torch.Tensor:
        """L1 + MSE with each pixel weighted by its own share of the frame's error (`recon_focus`)."""
        abs_err = err.abs()
        per_pixel = abs_err + err.pow(2)
        if self.cfg.recon_focus == 0:
            return per_pixel.mean()
        size = abs_err.detach().mean(1, keepdim=True)  # (B, 1, H, W)
        weight = (size / size.mean((2, 3), keepdim=True).clamp_min(1e-8)).pow(self.cfg.recon_focus)
        return (weight.clamp(max=50.0) * per_pixel).mean()

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction (L1 + MSE, focused: see `recon_focus`) plus a light KL; frames (B, 3, H, W) in
        [-1, 1]. The logs (plain L1, MSE, KL, PSNR) are detached 0-d tensors (no host sync per step)."""
        mean, logvar = self.moments(frames)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        err = self.decoder(z) - frames
        l1, mse = err.abs().mean(), err.pow(2).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = self._focused(err) + self.cfg.kl_weight * kl
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))  # peak-to-peak range 2 in [-1, 1]
        logs = {"l1": l1, "mse": mse, "kl": kl, "psnr": psnr}
        return loss, {k: v.detach() for k, v in logs.items()}
