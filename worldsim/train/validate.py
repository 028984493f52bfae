"""Validation: the stage's loss on held-out windows, and for the dynamics stages a short rollout.

The loss runs through the sharded training module on every rank (seeded noise, so successive
validations are comparable and training's RNG streams are untouched). The rollout runs on rank 0 with
the EMA weights gathered into a plain `WorldModel` — the model `worldsim-convert` would export — stepped
by the same `Rollout` the env uses: reset on a validation episode's first frame, then its own actions;
PSNR per frame against the ground truth, and an mp4 with ground truth (left) beside prediction (right).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from worldsim.data.dataset import BridgeWindowDataset
from worldsim.data.video import write_video
from worldsim.eval.metrics import frame_psnr
from worldsim.models.world_model import WorldModel
from worldsim.train.ema import EMA
from worldsim.train.stages import RECONSTRUCTION_STAGES, StageModule


@torch.no_grad()
def validation_loss(
    root: StageModule, batches: list[dict], device: torch.device, seed: int
) -> dict[str, float]:
    """Mean of the stage's logs over this rank's batches, averaged over ranks (collective)."""
    root.eval()
    totals: dict[str, float] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in batches:
            reconstruct = root.stage in RECONSTRUCTION_STAGES
            loss, logs = root(batch["video"].to(device), batch["action"].to(device), reconstruct=reconstruct)
            for k, v in {"loss": loss, **logs}.items():
                totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
    root.train()
    keys = sorted(totals)
    t = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {f"val_{k}": v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def gather_ema_model(ema: EMA, live: WorldModel, into: WorldModel | None, is_main: bool) -> WorldModel | None:
    """Full EMA weights (and the live buffers) in a plain model on rank 0's device (collective)."""
    full = {}
    for name, t in ema.state_dict().items():
        full[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu()  # one tensor at a time
    if not is_main:
        return None
    device = live.tokenizer.latent_shift.device  # a plain buffer: on this rank's device
    model = into if into is not None else WorldModel(live.cfg).to(device)
    state = model.state_dict()
    with torch.no_grad():
        for name, value in full.items():
            state[name].copy_(value)
        for name, buf in live.named_buffers():
            state[name].copy_(buf.detach())
    return model.eval()


@torch.no_grad()
def validation_rollout(
    model: WorldModel, dataset: BridgeWindowDataset, steps: int, seed: int, video_path: Path | None
) -> dict[str, float]:
    """Roll validation episode 0 out from its first frame with its own actions; PSNR vs ground truth."""
    frames = dataset.episode_frames(0)  # (T, H, W, 3)
    actions = dataset.episode_actions(0)  # (T-1, 7) model actions
    steps = min(steps, len(actions))
    rollout = model.rollout(batch_size=1, seed=seed)
    rollout.reset(frames[:1])
    predicted = [frames[0]]
    for k in range(steps):
        predicted.append(rollout.step(actions[k : k + 1], env_convention=False)[0])
    scores = [frame_psnr(p, g) for p, g in zip(predicted[1:], frames[1 : steps + 1])]
    if video_path is not None:
        write_video(
            np.concatenate([frames[: steps + 1], np.stack(predicted)], axis=2), video_path, fps=model.cfg.fps
        )
    return {
        "val_rollout_psnr": float(np.mean(scores)),
        "val_rollout_psnr_last": scores[-1],
        "val_rollout_steps": steps,
    }
