"""The three training stages as one module whose forward is the loss — the FSDP2 root.

- tokenizer: reconstruction + KL of every frame of the window (the dynamics is frozen and unused);
- decoder: the same loss with the encoder frozen too: a trained model's decoder is sharpened while the
  latents its dynamics was trained on stay exactly as they are;
- video2world: rectified-flow loss on the frozen tokenizer's latents, actions dropped (pre-training);
- action: the same loss conditioned on the actions (the flow drops a sample's actions with
  probability `action_dropout` itself, for an unconditional branch);
- distill: a trained action model (the teacher, frozen, from `load_path`) taught to sample in one step
  what its own few-step sampler makes (`RectifiedFlow.distill_loss`): one transformer pass a frame.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from worldsim.models.flow import RectifiedFlow
from worldsim.models.world_model import WorldModel


def to_model_frames(video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [-1, 1]."""
    return video.to(dtype) / 127.5 - 1.0


RECONSTRUCTION_STAGES = ("tokenizer", "decoder")  # the stages whose loss is the tokenizer's


def trainable_part(model: WorldModel, stage: str) -> nn.Module:
    """The submodule a stage trains; everything else is frozen."""
    if stage == "tokenizer":
        return model.tokenizer
    return model.tokenizer.decoder if stage == "decoder" else model.dynamics


class StageModule(nn.Module):
    """forward(video, action) -> (loss, logs) for one stage of `WorldModel` training."""

    def __init__(
        self,
        model: WorldModel,
        stage: str,
        compute_dtype: torch.dtype = torch.float32,
        attention: str = "sdpa",
        motion_weight: float = 0.0,
        teacher: nn.Module | None = None,
        teacher_steps: int = 2,
    ) -> None:
        super().__init__()
        self.model, self.stage = model, stage
        if (stage == "distill") != (teacher is not None):
            raise ValueError("a teacher's dynamics is needed by stage 'distill', and only by it")
        # A tuple keeps the teacher out of this module's parameters, state dict and FSDP2 sharding: it is
        # frozen, replicated on every rank, and restored from load_path (not the checkpoint) on resume.
        self.teacher = (teacher.requires_grad_(False).eval(),) if teacher is not None else ()
        self.teacher_steps = teacher_steps
        # FSDP2 casts the parameters to bf16; autocast also casts the fp32 tensors the model makes itself
        # (timestep embeddings, noise, latents) at each matmul, so mixed precision needs no model change.
        self.compute_dtype = compute_dtype
        self.flow = RectifiedFlow(model.cfg, attention, motion_weight)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable_part(model, stage).parameters():
            p.requires_grad_(True)

    def forward(
        self,
        video: torch.Tensor | None,
        action: torch.Tensor,
        reconstruct: bool = False,
        latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """video: uint8 (B, F, 3, H, W); action: (B, F-1, 7) scaled model actions. The dynamics stages
        take the encoder's unnormalised latent means (B, F, C, h, w) instead of the frames, as
        `worldsim.train.latents` caches them (video None).

        `reconstruct` (tokenizer stage, validation): the deterministic encode -> decode round trip's
        MSE and PSNR instead of the sampled training loss.
        """
        if (video is None) == (latents is None):
            raise ValueError("StageModule takes either video or latents")
        if latents is not None and self.stage in RECONSTRUCTION_STAGES:
            raise ValueError(f"stage {self.stage!r} trains on frames, not cached latents")
        low = self.compute_dtype != torch.float32
        with torch.autocast(action.device.type, dtype=self.compute_dtype, enabled=low):
            return self._loss(video, action, reconstruct, latents)

    def _loss(
        self,
        video: torch.Tensor | None,
        action: torch.Tensor,
        reconstruct: bool,
        latents: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if latents is not None:
            latents = self.model.tokenizer.normalize(latents).float()  # as encode() gives them
        else:
            assert video is not None
            frames = to_model_frames(video)
        if self.stage in RECONSTRUCTION_STAGES:
            frames = frames.flatten(0, 1)  # every frame of the window
            if not reconstruct:
                return self.model.tokenizer.loss(frames)
            tok = self.model.tokenizer
            mse = (tok.decoder(tok.moments(frames)[0]).float() - frames).pow(2).mean()
            psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # peak-to-peak range 2 in [-1, 1]
            return mse, {"recon_mse": mse.detach(), "recon_psnr": psnr.detach()}
        if latents is None:
            with torch.no_grad():
                latents = self.model.tokenizer.encode(frames).float()  # (B, F, C, h, w)
        if self.stage == "distill":
            return self.flow.distill_loss(
                self.model.dynamics,
                self.teacher[0],
                latents,
                action,
                self.teacher_steps,
                self.model.cfg.time_shift,
            )
        drop = self.stage == "video2world"
        return self.flow.loss(self.model.dynamics, latents, action, drop_actions=drop)


def resolve_attention(attention: str, device: torch.device) -> str:
    """'auto' -> flex-attention on CUDA, SDPA elsewhere (flex-attention has no backward on the CPU)."""
    if attention == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    if attention == "flex" and device.type != "cuda":
        raise ValueError("trainer.attention=flex needs CUDA (flex-attention has no backward on the CPU)")
    return attention


def latent_stats_are_default(model: WorldModel) -> bool:
    """True while the tokenizer's latent normalisation is still the identity (shift 0, scale 1)."""
    tok = model.tokenizer
    return bool((tok.latent_shift == 0).all() and (tok.latent_scale == 1).all())


@torch.no_grad()
def set_latent_stats(model: WorldModel, batches: list[dict], device: torch.device) -> tuple[list, list]:
    """Set the tokenizer's per-channel latent shift / scale to the mean / std of its latent means.

    Each rank encodes its own `batches` (or reads their cached means); sums are all-reduced so every rank
    sets the same buffers.
    Called on the plain model before sharding (an FSDP2 submodule must not run before its root).
    """
    tok = model.tokenizer
    C = tok.latent_shift.numel()
    sums = torch.zeros(3, C, dtype=torch.float64, device=device)  # count, sum, sum of squares
    for batch in batches:
        if "latents" in batch:  # cached means (worldsim.train.latents)
            mean = batch["latents"].to(device).flatten(0, 1).float()
        else:
            mean, _ = tok.moments(to_model_frames(batch["video"].to(device)).flatten(0, 1))  # (N, C, h, w)
        m = mean.double().transpose(0, 1).flatten(1)  # (C, N*h*w)
        sums[0] += m.shape[1]
        sums[1] += m.sum(1)
        sums[2] += (m * m).sum(1)
    dist.all_reduce(sums)
    mu = sums[1] / sums[0]
    std = (sums[2] / sums[0] - mu * mu).clamp_min(1e-12).sqrt()
    tok.latent_shift.copy_(mu.to(tok.latent_shift.dtype))
    tok.latent_scale.copy_(std.to(tok.latent_scale.dtype))
    return mu.tolist(), std.tolist()
