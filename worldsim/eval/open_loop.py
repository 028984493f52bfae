"""Open-loop rollout quality: each val episode replayed from its first frame with its own actions.

For every episode the model starts from frame 0 (resized to the model's resolution exactly as the
training windows are) and is stepped with the episode's model actions (`episode_actions`, the same
scaled actions training saw, `env_convention=False`). Predicted frame h is compared with the ground-truth
frame h for h = 1..H (H capped per episode at T - 1), and so is the copy-last-frame baseline (frame 0
repeated), the number a model has to beat to show it predicts motion at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from worldsim.data.dataset import BridgeWindowDataset
from worldsim.eval.metrics import mean_per_horizon, psnr, ssim
from worldsim.models.world_model import WorldModel


@dataclass
class OpenLoopResult:
    """Per-episode, per-horizon scores; NaN where an episode is shorter than the horizon."""

    horizon: int  # H: frames predicted per episode at most
    episode_ids: list[str]  # ids of the evaluated episodes, in row order
    psnr: np.ndarray  # (E, H) dB of the model's frame h+1 vs ground truth
    ssim: np.ndarray  # (E, H)
    baseline_psnr: np.ndarray  # (E, H) copy-last-frame baseline (frame 0 repeated)
    baseline_ssim: np.ndarray  # (E, H)
    seconds: float = 0.0  # wall time of the rollouts and metrics
    frames_generated: int = 0
    # The first episode's frames, "truth" and "pred" (T, H, W, 3), both starting with frame 0.
    examples: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict:
        """Mean per horizon (and the episode count behind each mean) as JSON-ready lists."""
        out: dict = {"horizons": list(range(1, self.horizon + 1)), "episodes": len(self.episode_ids)}
        for name in ("psnr", "ssim", "baseline_psnr", "baseline_ssim"):
            mean, count = mean_per_horizon(getattr(self, name))
            out[name] = _json_list(mean)
        out["count"] = mean_per_horizon(self.psnr)[1].astype(int).tolist()
        out["seconds"] = round(self.seconds, 3)
        out["frames_per_second"] = round(self.frames_generated / max(self.seconds, 1e-9), 2)
        return out


def _json_list(values: np.ndarray) -> list[float | None]:
    """NaN -> None (valid JSON), floats rounded to 4 decimals."""
    return [None if not np.isfinite(v) else round(float(v), 4) for v in values]


def make_dataset(root: str, split: str, model: WorldModel, num_frames: int = 2) -> BridgeWindowDataset:
    """The split at the model's resolution, with the model's action conventions (frames cached), in windows
    of `num_frames` (2: every start frame of an episode; the rollouts read whole episodes)."""
    cfg = model.cfg
    return BridgeWindowDataset(
        root,
        split,
        num_frames=num_frames,
        resolution=(cfg.height, cfg.width),
        gripper_signal=cfg.gripper_signal,  # type: ignore[arg-type]
        action_scaler=cfg.action_scaler,
    )


def evaluate_open_loop(
    model: WorldModel,
    dataset: BridgeWindowDataset,
    horizon: int = 60,
    episodes: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    metric_device: str | None = None,
) -> OpenLoopResult:
    """Roll out the first `episodes` episodes of `dataset` (all by default), `batch_size` at a time."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    n = len(dataset.episodes) if episodes is None else min(episodes, len(dataset.episodes))
    if n == 0:
        raise ValueError(f"no episodes in {dataset.root} split {dataset.split!r}")
    shape = (n, horizon)
    scores = {k: np.full(shape, np.nan) for k in ("psnr", "ssim", "baseline_psnr", "baseline_ssim")}
    examples: dict[str, np.ndarray] = {}
    frames_generated, start = 0, time.perf_counter()
    bar = tqdm(total=n, desc="open-loop rollouts", unit="ep", disable=not progress)
    for b0 in range(0, n, batch_size):
        idx = list(range(b0, min(n, b0 + batch_size)))
        truth = [dataset.episode_frames(i) for i in idx]  # each (T, H, W, 3)
        actions = [dataset.episode_actions(i) for i in idx]  # each (T-1, 7), scaled model actions
        steps = [min(horizon, len(a)) for a in actions]
        rollout = model.rollout(batch_size=len(idx), seed=seed + b0)
        rollout.reset(np.stack([t[0] for t in truth]))
        pred = np.empty((len(idx), max(steps), *truth[0].shape[1:]), dtype=np.uint8)
        for h in range(max(steps)):
            # Episodes that already ended are stepped with a zero action; their frames are ignored.
            a = np.stack([act[h] if h < len(act) else np.zeros_like(act[0]) for act in actions])
            pred[:, h] = rollout.step(a, env_convention=False)
        frames_generated += len(idx) * max(steps)
        for row, (i, T_h) in enumerate(zip(idx, steps)):
            gt = truth[row][1 : T_h + 1]  # (T_h, H, W, 3)
            first = np.broadcast_to(truth[row][0], gt.shape)
            scores["psnr"][i, :T_h] = psnr(pred[row, :T_h], gt)
            scores["ssim"][i, :T_h] = ssim(pred[row, :T_h], gt, device=metric_device)
            scores["baseline_psnr"][i, :T_h] = psnr(first, gt)
            scores["baseline_ssim"][i, :T_h] = ssim(first, gt, device=metric_device)
        if not examples:
            examples = {
                "truth": truth[0][: steps[0] + 1],
                "pred": np.concatenate([truth[0][:1], pred[0, : steps[0]]]),
            }
        bar.update(len(idx))
    bar.close()
    return OpenLoopResult(
        horizon=horizon,
        episode_ids=[dataset.episodes[i].episode_id for i in range(n)],
        seconds=time.perf_counter() - start,
        frames_generated=frames_generated,
        examples=examples,
        **scores,
    )
