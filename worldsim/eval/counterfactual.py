"""Counterfactual actions: teleop-like random action sequences, in BridgeSim and in the model, from one start.

The data's actions come from scripted policies that head for blocks and the bowl; a simulator must also
follow actions nobody recorded. Here a person at the teleop keys is imitated: the gripper is moved
along a random world direction at a random speed for a few steps (one "key press"), then another, with
slow yaw turns and occasional gripper toggles, the commanded pose kept inside the workspace box. The
same sequence is applied in BridgeSim (frames rendered at the data's 480x640 and resized with the
training pipeline's `resize_frames`) and in the model (Bridge env actions, `env_convention=True`, as
BridgeWorld-v0 steps it), both from the same reset frame; PSNR/SSIM per horizon compare the two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from worldsim.data.actions import euler2rotm
from worldsim.data.dataset import resize_frames
from worldsim.eval.metrics import mean_per_horizon, psnr, ssim
from worldsim.eval.sim_pool import get_sim, sim_map
from worldsim.models.world_model import WorldModel
from worldsim.sim.spaces import MAX_ROTATION, MAX_TRANSLATION, clip_action

WORKSPACE = np.array([[0.15, -0.2, 0.04], [0.42, 0.2, 0.2]])  # commanded xyz box (m): table region, above it
PRESS_STEPS = (2, 7)  # a key press lasts 2..6 steps
GRIPPER_TOGGLE = 0.2  # probability that a key press also toggles the gripper


def teleop_actions(rng: np.random.Generator, ee_state: np.ndarray, steps: int) -> np.ndarray:
    """(steps, 7) Bridge JSON actions (gripper 1 = open) of a random teleop session from `ee_state` (7,)."""
    xyz, R = np.array(ee_state[0:3], dtype=np.float64), euler2rotm(np.asarray(ee_state[3:6]))
    gripper = 1.0 if ee_state[6] < 0.5 else 0.0  # start from the current opening (state 1 = closed)
    actions, left = [], 0
    velocity, yaw_rate = np.zeros(3), 0.0
    for _ in range(steps):
        if left == 0:  # a new key press
            left = int(rng.integers(*PRESS_STEPS))
            direction = rng.normal(size=3) * np.array([1.0, 1.0, 0.6])
            velocity = direction / np.linalg.norm(direction) * rng.uniform(0.3, 0.9) * MAX_TRANSLATION
            yaw_rate = rng.uniform(-0.4, 0.4) * MAX_ROTATION if rng.random() < 0.3 else 0.0
            if rng.random() < GRIPPER_TOGGLE:
                gripper = 1.0 - gripper
        left -= 1
        target = xyz + velocity
        out = (target < WORKSPACE[0]) | (target > WORKSPACE[1])
        velocity[out] *= -1.0  # bounce off the workspace walls
        xyz = xyz + velocity
        action = np.concatenate([R.T @ velocity, [0.0, 0.0, yaw_rate], [gripper]])  # in the gripper frame
        R = R @ euler2rotm(np.array([0.0, 0.0, yaw_rate]))
        actions.append(clip_action(action))
    return np.stack(actions)


def sim_teleop_episode(
    seed: int, steps: int, render_resolution: tuple[int, int], resolution: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Reset BridgeSim with `seed`, draw a teleop sequence, apply it; frames at the model `resolution`."""
    sim = get_sim(render_resolution)
    rng = np.random.default_rng(seed)
    sim.reset(seed=int(rng.integers(2**31 - 1)))
    actions = teleop_actions(rng, sim.ee_state(), steps)
    frames = [sim.render()]
    for a in actions:
        sim.step(a)
        frames.append(sim.render())
    video = resize_frames(np.stack(frames), resolution).transpose(0, 2, 3, 1)  # (T, H, W, 3)
    return {"frames": np.ascontiguousarray(video), "actions": actions}


@dataclass
class CounterfactualResult:
    """Model vs BridgeSim under the same random teleop actions; (E, H) arrays."""

    horizon: int
    psnr: np.ndarray
    ssim: np.ndarray
    baseline_psnr: np.ndarray  # copy-last-frame: the start frame vs the sim's frame h
    sim_seconds: float = 0.0
    model_seconds: float = 0.0

    def summary(self) -> dict:
        out: dict = {"horizons": list(range(1, self.horizon + 1)), "episodes": int(self.psnr.shape[0])}
        for name in ("psnr", "ssim", "baseline_psnr"):
            mean, _ = mean_per_horizon(getattr(self, name))
            out[name] = [None if not np.isfinite(v) else round(float(v), 4) for v in mean]
        out["sim_seconds"] = round(self.sim_seconds, 3)
        out["model_seconds"] = round(self.model_seconds, 3)
        return out


def evaluate_counterfactual(
    model: WorldModel,
    episodes: int = 32,
    horizon: int = 60,
    seed: int = 1000,
    batch_size: int = 16,
    render_resolution: tuple[int, int] = (480, 640),
    workers: int = 1,
    progress: bool = True,
    metric_device: str | None = None,
) -> CounterfactualResult:
    """`episodes` teleop sessions of `horizon` steps, seeds seed..seed+episodes-1."""
    resolution = (model.cfg.height, model.cfg.width)
    start = time.perf_counter()
    jobs = [(seed + i, horizon, tuple(render_resolution), resolution) for i in range(episodes)]
    sims = sim_map(sim_teleop_episode, jobs, workers, desc="counterfactual: BridgeSim", progress=progress)
    sim_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = {k: np.full((episodes, horizon), np.nan) for k in ("psnr", "ssim", "baseline_psnr")}
    bar = tqdm(total=episodes, desc="counterfactual: model", unit="ep", disable=not progress)
    for b0 in range(0, episodes, batch_size):
        batch = sims[b0 : b0 + batch_size]
        rollout = model.rollout(batch_size=len(batch), seed=seed + b0)
        rollout.reset(np.stack([s["frames"][0] for s in batch]))
        pred = np.stack(
            [rollout.step(np.stack([s["actions"][h] for s in batch])) for h in range(horizon)], axis=1
        )  # (b, H, h, w, 3)
        truth = np.stack([s["frames"][1:] for s in batch])
        first = np.broadcast_to(np.stack([s["frames"][0] for s in batch])[:, None], truth.shape)
        rows = slice(b0, b0 + len(batch))
        scores["psnr"][rows] = psnr(pred, truth)
        scores["ssim"][rows] = ssim(pred, truth, device=metric_device)
        scores["baseline_psnr"][rows] = psnr(first, truth)
        bar.update(len(batch))
    bar.close()
    return CounterfactualResult(
        horizon, sim_seconds=sim_seconds, model_seconds=time.perf_counter() - start, **scores
    )
