"""Rectified flow: noising, the training loss and the sampling schedule. The network never sees this.

x_t = (1 - t) * x0 + t * eps, the network predicts the velocity v = eps - x0 (Liu et al. 2022,
"Flow straight and fast"; SD3's logit-normal t). Training follows the KV-cached rollout exactly: a
clean context stream (each frame lightly noised, its level an input: noise augmentation) and a noisy
stream whose frames each have their own t (diffusion forcing), laid out by `training_frame_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldsim.models.config import WorldModelConfig
from worldsim.models.dynamics import (
    DynamicsTransformer,
    frame_mask_to_tokens,
    training_block_mask,
    training_frame_mask,
)

ATTENTION_BACKENDS = ("sdpa", "flex")
# mean |frame-to-frame latent change| below which a window counts as still (the latents have about unit std)
MOTION_FLOOR = 0.05


def training_sequence_frames(num_frames: int) -> int:
    """Frames one training window puts through the transformer: the clean stream (all F frames) and the
    noisy stream (frames 1..F-1), as `RectifiedFlow.loss` lays them out."""
    return 2 * num_frames - 1


def add_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, with t broadcast from (B, F) over (B, F, C, h, w)."""
    t = t.to(x0.dtype)[..., None, None, None]
    return (1 - t) * x0 + t * noise


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift: t -> shift t / (1 + (shift - 1) t); shift > 1 moves times towards 1 (more noise)."""
    return shift * t / (1 + (shift - 1) * t)


def motion_weights(latents: torch.Tensor, strength: float, floor: float = MOTION_FLOOR) -> torch.Tensor:
    """Per-position loss weights (B, F-1, 1, h, w) for predicting frames 1..F-1 of latents (B, F, C, h, w):
    1 + strength * m / (mean(m) + floor), where m is the mean absolute latent change from the previous
    frame, then scaled to mean 1 in each window. The places where something moves (the arm, and a block it
    pushes or carries, about one latent position at 128x160) weigh more than the still background, which
    the context already gives away; a still window (mean change below `floor`) stays close to uniform."""
    m = (latents[:, 1:] - latents[:, :-1]).abs().mean(2, keepdim=True)
    w = 1 + strength * m / (m.mean(dim=(1, 2, 3, 4), keepdim=True) + floor)
    return w / w.mean(dim=(1, 2, 3, 4), keepdim=True)


def sampling_times(steps: int, shift: float = 1.0, device: torch.device | None = None) -> torch.Tensor:
    """Decreasing flow times t_0 = 1 > ... > t_steps = 0 (SD3's shift warps the uniform grid)."""
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


@dataclass
class RectifiedFlow:
    """The flow-matching objective for a `DynamicsTransformer`.

    attention: how the training layout's block-causal mask is applied: "sdpa" (a dense bool mask,
    every score computed) or "flex" (flex-attention with a block mask: the tiles nobody attends are
    skipped; the GPU default, see `worldsim.train`).
    motion_weight: how much more the loss weighs latent positions that change from the previous frame
    (`motion_weights`; 0 = plain MSE). The logged `flow_mse` is always the plain MSE."""

    cfg: WorldModelConfig
    attention: str = "sdpa"
    motion_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if not self.motion_weight >= 0:
            raise ValueError(f"motion_weight must be >= 0, got {self.motion_weight!r}")

    def sample_t(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Logit-normal flow times (SD3): sigmoid of a standard normal, favouring the middle, warped by
        `train_time_shift` towards the noise levels the sampler visits."""
        return shift_time(torch.sigmoid(torch.randn(shape, device=device)), self.cfg.train_time_shift)

    def training_inputs(
        self, latents: torch.Tensor, actions: torch.Tensor | None, drop_actions: bool = False
    ) -> dict:
        """One window's training layout, noise drawn: the clean stream's inputs, the noisy stream's noise
        and flow times, and what both streams share (positions, actions, mask). See `loss`."""
        cfg = self.cfg
        B, Fr = latents.shape[:2]
        device = latents.device
        # Clean stream: every frame, lightly noised (noise augmentation keeps long rollouts stable).
        tau = torch.rand(B, Fr, device=device) * cfg.context_noise_max
        clean_in = add_noise(latents, tau, torch.randn_like(latents))
        # Noisy stream: frames 1..F-1, each with its own t (diffusion forcing).
        t = self.sample_t((B, Fr - 1), device)
        noise = torch.randn_like(latents[:, 1:])
        frame_pos = torch.cat([torch.arange(Fr, device=device), torch.arange(1, Fr, device=device)])
        seq_actions = seq_mask = None
        if actions is not None and not drop_actions:
            none = torch.zeros_like(actions[:, :1])  # frame 0 has no action leading into it
            seq_actions = torch.cat([none, actions, actions], dim=1)  # (B, 2F-1, A)
            keep = (torch.rand(B, device=device) >= cfg.action_dropout).float()  # per-sample dropout
            seq_mask = torch.ones(B, training_sequence_frames(Fr), device=device) * keep[:, None]
            seq_mask[:, 0] = 0.0
        if self.attention == "flex":
            mask = training_block_mask(Fr, cfg.num_context_frames, cfg.tokens_per_frame, device)
        else:
            mask = frame_mask_to_tokens(
                training_frame_mask(Fr, cfg.num_context_frames, device), cfg.tokens_per_frame
            )
        return dict(clean_in=clean_in, tau=tau, t=t, noise=noise, frame_pos=frame_pos,
                    actions=seq_actions, action_mask=seq_mask, mask=mask)  # fmt: skip

    @staticmethod
    def velocity(net: DynamicsTransformer, inputs: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's velocity (B, F-1, C, h, w) for the noisy stream x at flow times t (B, F-1), the
        clean stream of `inputs` as its context."""
        Fr = inputs["clean_in"].shape[1]
        z = torch.cat([inputs["clean_in"], x.to(inputs["clean_in"].dtype)], dim=1)  # (B, 2F-1, C, h, w)
        times = torch.cat([inputs["tau"], t], dim=1)
        v, _ = net(
            z,
            times,
            inputs["actions"],
            inputs["frame_pos"],
            inputs["mask"],
            action_mask=inputs["action_mask"],
        )
        return v[:, Fr:]

    def loss(
        self,
        net: DynamicsTransformer,
        latents: torch.Tensor,
        actions: torch.Tensor | None,
        drop_actions: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Velocity MSE on the predicted frames 1..F-1 of a window (weighted by `motion_weights` when
        `motion_weight` > 0).

        latents: (B, F, C, h, w) normalised clean latents; actions: (B, F-1, A) scaled actions, action
        k leading from frame k to frame k+1, or None for video2world training (no actions).
        """
        inputs = self.training_inputs(latents, actions, drop_actions)
        noisy = add_noise(latents[:, 1:], inputs["t"], inputs["noise"])
        v_pred = self.velocity(net, inputs, noisy, inputs["t"])
        target = inputs["noise"] - latents[:, 1:]
        err = (v_pred.float() - target.float()).pow(2)
        mse = err.mean()
        loss = mse if self.motion_weight == 0 else (err * motion_weights(latents, self.motion_weight)).mean()
        return loss, {"flow_mse": mse.detach()}  # a tensor: the trainer syncs once per log interval

    def distill_loss(
        self,
        student: DynamicsTransformer,
        teacher: DynamicsTransformer,
        latents: torch.Tensor,
        actions: torch.Tensor,
        teacher_steps: int,
        teacher_shift: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Distil the teacher's `teacher_steps`-step Euler sampler into one student step.

        Every predicted frame of the window starts from pure noise (t = 1) with the clean stream as its
        context (the rollout's attention: `training_frame_mask`); the teacher samples all of them at once
        (no gradient), and the student learns the single velocity that lands on the teacher's sample:
        x0_student = noise - v_student(noise, t=1). Same noise, context noise and action dropout for both,
        so the unconditional branch is distilled too. Logs `distill_mse` (the loss) and
        `teacher_latent_mse`, the teacher's sample against the data (what the student can at best match).
        """
        inputs = self.training_inputs(latents, actions)
        noise = inputs["noise"]
        B, F1 = noise.shape[:2]
        times = sampling_times(teacher_steps, teacher_shift).tolist()
        with torch.no_grad():
            x = noise
            for t_now, t_next in zip(times[:-1], times[1:]):
                t = torch.full((B, F1), t_now, device=noise.device)
                x = x + (t_next - t_now) * self.velocity(teacher, inputs, x, t).float()
            target = noise.float() - x  # one Euler step from t = 1 to 0 lands on x
        ones = torch.ones(B, F1, device=noise.device)
        v_pred = self.velocity(student, inputs, noise, ones)
        loss = (v_pred.float() - target).pow(2).mean()
        teacher_err = (x - latents[:, 1:].float()).pow(2).mean()
        return loss, {"distill_mse": loss.detach(), "teacher_latent_mse": teacher_err}
