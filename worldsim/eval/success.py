"""Success detection from frames: estimate where the blocks and the bowl are, then apply the task's own predicate.

The learned world has no simulator state to evaluate a task's success predicate on, only frames. A binary
"is this frame a success" classifier learns that from a few positives per episode and overfits (400 training
episodes: 0.99 train, 0.56 held-out balanced accuracy). So this model learns the *state* the predicates read
instead, with dense supervision on every frame: a small CNN regresses, for every palette colour, the 3-D
position of the block of that colour and whether the fingers hold it, and the bowl's position (BridgeSim
records all of them). A task is then judged by the same `worldsim.sim.tasks` predicate as in BridgeSim,
evaluated on an `EstimatedScene`: "push 8 cm to the left" compares the estimated position now with the
estimate on the episode's start frame, "in the bowl" compares the block with the bowl. Task logic lives
in one place; a new task needs no retraining.

How it sees: coordinate planes are appended to the frame (positions are about *where*), a conv stack
downsamples 4x, one heat map per keypoint (6 colours + bowl) is turned into an expected image position by
a spatial softmax, and the heat-weighted features plus that position go through a shared MLP to (x, y, z,
grasp logit). It ships beside a model bundle as `success.safetensors` (its `SuccessConfig` in the
metadata); BridgeWorld-v0 uses it for `info["is_success"]`, the evaluation for success rates in the
learned world.

    model = load_success_model("checkpoints/bridge_small")
    start = model.estimate(start_frames)                      # SceneEstimate of (B,) start frames
    done = model.predict(frames, instructions, start=start)   # (B,) bool
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from worldsim.atomic import atomic_write
from worldsim.data.dataset import resize_frames
from worldsim.eval.sim_pool import get_sim, sim_map
from worldsim.models.cuda_graph import GraphedCall
from worldsim.models.rollout import Rollout, _to_model_frames
from worldsim.sim.bridge_sim import BridgeSim
from worldsim.sim.policies import POLICIES, make_policy
from worldsim.sim.scene import BLOCK_NAMES, PALETTE
from worldsim.sim.tasks import TASKS, make_task

SUCCESS_WEIGHTS = "success.safetensors"
FORMAT = "worldsim-success-state"
NEAR_SUCCESS = 5  # steps before the first success whose frames are all kept
AFTER_SUCCESS = 4  # steps an episode goes on after its first success (positives)
NEGATIVE_STRIDE = 2  # other frames before that: every second
POSITION_SCALE = 0.1  # m: positions are regressed as (p - POSITION_MEAN) / POSITION_SCALE
POSITION_MEAN = (0.35, 0.0, 0.03)


@dataclass(frozen=True)
class SuccessConfig:
    """Shape of the state estimator; stored in the safetensors metadata."""

    height: int = 128  # frame rows (the world model's resolution)
    width: int = 160  # frame columns
    channels: tuple[int, ...] = (32, 32, 64, 64)  # conv widths; stages 2 and 4 halve the resolution
    input_pool: int = 2  # frames are average-pooled by this factor first
    hidden: int = 128  # width of the per-keypoint MLP
    tasks: tuple[str, ...] = tuple(TASKS)  # tasks the instruction parser knows
    colours: tuple[str, ...] = tuple(PALETTE)  # one keypoint per block colour, then the bowl
    grasp_threshold: float = 0.5  # probability above which a block counts as held

    @property
    def keypoints(self) -> int:
        return len(self.colours) + 1


@functools.lru_cache(maxsize=4096)
def parse_instruction(text: str, cfg: SuccessConfig = SuccessConfig()) -> tuple[str, str]:
    """(task, colour) of a BridgeSim instruction, e.g. "push the red block to the left" -> (push_left, red).

    Cached per (text, cfg): an env's worlds share a few instructions and are reset again and again."""
    words = text.lower().replace(".", " ").split()
    colour = next((c for c in cfg.colours if c in words), None)
    if "bowl" in words:
        task = "pick_place"
    elif "push" in words:
        task = "push_left" if "left" in words else "push_right" if "right" in words else None
    elif "lift" in words:
        task = "lift"
    else:
        task = None
    if task is None or colour is None or task not in cfg.tasks:
        raise ValueError(f"cannot read a BridgeSim task and block colour from the instruction {text!r}")
    return task, colour


@functools.lru_cache(maxsize=4096)
def task_code(text: str | None, cfg: SuccessConfig = SuccessConfig()) -> tuple[int, int]:
    """(index of the task in cfg.tasks, keypoint of the target block) of an instruction, as
    `SuccessModel.judge_tasks` reads it; (-1, -1) for None or a text that names no BridgeSim task (a
    real Bridge instruction, say). Cached, unreadable texts too."""
    if text is None:
        return -1, -1
    try:
        task, colour = parse_instruction(text, cfg)
    except ValueError:
        return -1, -1
    return cfg.tasks.index(task), cfg.colours.index(colour)


class StateNet(nn.Module):
    """Frame -> per-keypoint (x, y, z) in normalised units and grasp logit, via spatial-softmax keypoints."""

    def __init__(self, cfg: SuccessConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = 3 + 2  # RGB + coordinate planes
        for i, c in enumerate(cfg.channels):
            k, stride = (5, 1) if i == 0 else (3, 2 if i % 2 else 1)
            layers += [nn.Conv2d(width, c, k, stride=stride, padding=k // 2), nn.GroupNorm(8, c), nn.SiLU()]
            width = c
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]  # context
        self.features = nn.Sequential(*layers)
        self.heat = nn.Conv2d(width, cfg.keypoints, 1)
        self.embed = nn.Parameter(torch.randn(cfg.keypoints, width) * 0.02)
        self.head = nn.Sequential(
            nn.Linear(width + 2, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(),
            nn.Linear(cfg.hidden, 4),
        )  # fmt: skip

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, 3, H, W) in [-1, 1] -> positions (B, K, 3) normalised, grasp logits (B, K)."""
        out = self.keypoints(frames)
        return out["positions"], out["grasp"]

    def keypoints(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """positions (B, K, 3), grasp logits (B, K), expected image positions `where` (B, K, 2) as (x, y)
        in [-1, 1] over pixel centres, heat-map logits `heat` (B, K, h*w) over the cell centres `cells`
        (h*w, 2) of the feature grid."""
        if self.cfg.input_pool > 1:
            frames = F.avg_pool2d(frames, self.cfg.input_pool)
        B, _, H, W = frames.shape
        grid = _centres(H, W, H, W, frames.device).to(frames.dtype)  # (H, W, 2)
        x = self.features(torch.cat([frames, grid.permute(2, 0, 1)[None].expand(B, 2, H, W)], dim=1))
        h, w = x.shape[2:]
        heat = self.heat(x).flatten(2)  # (B, K, h*w)
        attention = heat.softmax(dim=-1)
        cells = _centres(h, w, H, W, x.device).reshape(h * w, 2).to(attention.dtype)
        where = attention @ cells  # (B, K, 2) expected image position
        pooled = attention @ x.flatten(2).transpose(1, 2)  # (B, K, C) heat-weighted features
        out = self.head(torch.cat([pooled + self.embed, where], dim=-1))  # (B, K, 4)
        return {
            "positions": out[..., 0:3],
            "grasp": out[..., 3],
            "where": where,
            "heat": heat,
            "cells": cells,
        }


def _centres(h: int, w: int, H: int, W: int, device: torch.device) -> torch.Tensor:
    """(h, w, 2) image positions (x, y) of the centres of an h x w grid of cells over an H x W image, in
    the [-1, 1]-over-pixel-centres convention of `BridgeSim.project`."""
    ys = ((torch.arange(h, device=device) + 0.5) * H / h - 0.5) / max(H - 1, 1) * 2 - 1
    xs = ((torch.arange(w, device=device) + 0.5) * W / w - 0.5) / max(W - 1, 1) * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


@dataclass
class SceneEstimate:
    """Estimated state of B frames: per keypoint (colours..., bowl) position in metres and grasp probability."""

    positions: np.ndarray  # (B, K, 3) world metres
    grasp: np.ndarray  # (B, K) probability the fingers hold that block (bowl: meaningless)
    colours: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def __getitem__(self, i) -> SceneEstimate:
        i = [i] if isinstance(i, (int, np.integer)) else i
        return SceneEstimate(self.positions[i], self.grasp[i], self.colours)

    def index(self, name: str) -> int:
        return len(self.colours) if name == "bowl" else self.colours.index(name)


class EstimatedScene:
    """The `worldsim.sim.tasks.SimView` of one estimated frame; blocks are named by their colour."""

    def __init__(self, estimate: SceneEstimate, i: int, grasp_threshold: float) -> None:
        self.estimate, self.i, self.threshold = estimate, i, grasp_threshold

    def body_pos(self, name: str) -> np.ndarray:
        return self.estimate.positions[self.i, self.estimate.index(name)]

    def block_colour(self, name: str) -> str:
        return name

    def is_grasped(self, name: str) -> bool:
        return bool(self.estimate.grasp[self.i, self.estimate.index(name)] > self.threshold)


def judge(instruction: str, now: EstimatedScene, start: EstimatedScene, cfg: SuccessConfig) -> bool:
    """The instruction's task predicate (worldsim.sim.tasks) on one estimated scene: now vs the start,
    through the `SimView` a task reads in BridgeSim. `SuccessModel.judge` does a batch at once."""
    task_name, colour = parse_instruction(instruction, cfg)
    task = make_task(task_name)
    task.target, task.colour = colour, colour
    task.start = {colour: start.body_pos(colour).copy()}
    return bool(task.is_success(now))


class SuccessModel:
    """A trained `StateNet` and its config: uint8 frames in, estimated scenes and task success out."""

    # On CUDA, batches of up to this many frames run as CUDA graphs (one launch instead of ~40 small
    # kernels: 1.9 -> 0.25 ms for one frame on an H100), one per power of two (a batch is padded up to
    # it: autoresets come in every size, and each new size would capture a graph); larger batches are
    # compute-bound and run eagerly (graphed chunks of 64 measured 0.8-0.9x eager at 256-1024 frames).
    # fp32 throughout: the model was validated in fp32, and bf16 would move flags near the thresholds
    # (measured on an H200: 8e-4 off in bf16 and no faster; compiled fp32 6e-6 off).
    GRAPH_MAX_BATCH = 64

    def __init__(self, net: StateNet, device: str | torch.device = "cpu", compile: bool = False) -> None:
        """compile (CUDA): batches above GRAPH_MAX_BATCH run through `torch.compile` (fused GroupNorm and
        SiLU; on an H200 256 frames 2.4 -> 1.5 ms, 1024 frames 8.3 -> 4.0 ms, `benchmarks/host_overhead.py
        --success-variants`), padded to a power of two so that only a few shapes compile (each once,
        some seconds on an H200), in one chunk of up to 1024 frames."""
        self.cfg = net.cfg
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self._graphs: dict[int, GraphedCall] = {}
        self._compiled = None
        if compile and self.device.type == "cuda":
            self._compiled = torch.compile(self._forward, dynamic=False)
        self.chunk = 1024 if self._compiled is not None else 256  # frames per forward in `launch`

    def estimate(self, frames: np.ndarray | torch.Tensor, chunk: int | None = None) -> SceneEstimate:
        """Block and bowl positions (metres) and grasp probabilities of uint8 frames (B, H, W, 3), a
        numpy array or a tensor (on the model's device, it is not copied through the host)."""
        return self.scene(self.launch(frames, chunk).cpu().numpy())

    def scene(self, raw: np.ndarray) -> SceneEstimate:
        """The `SceneEstimate` of `launch`'s output, brought to the host: float32 (B, K, 4)."""
        positions, grasp = raw[..., :3], raw[..., 3]
        return SceneEstimate(positions * POSITION_SCALE + np.array(POSITION_MEAN), grasp, self.cfg.colours)

    @torch.inference_mode()
    def launch(self, frames: np.ndarray | torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """`estimate` up to the host copy: float32 (B, K, 4) on the model's device (normalised positions,
        grasp probabilities), its work perhaps still queued there; `scene` reads it once on the host.
        Frames go through the network `chunk` at a time (default `self.chunk`)."""
        chunk = chunk or self.chunk
        if not isinstance(frames, torch.Tensor):
            frames = np.asarray(frames)
        expected = (self.cfg.height, self.cfg.width, 3)
        uint8 = frames.dtype in (np.uint8, torch.uint8)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != expected or not uint8:
            raise ValueError(
                f"frames must be uint8 (B, {expected}), got {frames.dtype} {tuple(frames.shape)}"
            )
        parts = [self._run(frames[i : i + chunk]) for i in range(0, len(frames), chunk)]
        if not parts:
            return torch.zeros((0, self.cfg.keypoints, 4), device=self.device)
        return (torch.cat(parts) if len(parts) > 1 else parts[0]).float()

    def _run(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (b, H, W, 3) -> (b, K, 4) on the device: normalised position, grasp probability."""
        b = len(frames)
        graphed = b <= self.GRAPH_MAX_BATCH
        if self.device.type != "cuda" or not (graphed or self._compiled is not None):
            return self._forward(frames)
        x = torch.as_tensor(frames).to(self.device, non_blocking=True)
        size = 1 << (b - 1).bit_length()  # 1, 2, 4, ...
        if size > b:  # pad with copies of the last frame; each frame's estimate is its own
            x = torch.cat([x, x[-1:].expand(size - b, *x.shape[1:])])
        if not graphed:  # contiguous: a view (a rollout's frames) would compile a second graph
            return self._compiled(x.contiguous())[:b]
        if size not in self._graphs:
            self._graphs[size] = GraphedCall(self._forward, [x])
        return self._graphs[size](x)[:b].clone()  # the graph's buffer: the next replay overwrites it

    def _forward(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        p, g = self.net(_to_model_frames(frames, self.device, torch.float32))
        return torch.cat([p, torch.sigmoid(g)[..., None]], dim=-1)

    def judge(self, now: SceneEstimate, start: SceneEstimate, instructions: Sequence[str]) -> np.ndarray:
        """(B,) bool: instruction i's task holds in estimate now[i], measured from start[i]. Raises
        ValueError for an instruction that names no BridgeSim task."""
        if not len(now) == len(start) == len(instructions):
            raise ValueError(
                f"need one start and one instruction per frame: {len(now)} frames, "
                f"{len(start)} starts, {len(instructions)} instructions"
            )
        known = {}
        for text in set(instructions):
            parse_instruction(text, self.cfg)  # raises for a text that names no BridgeSim task
            known[text] = task_code(text, self.cfg)
        codes = np.array([known[text] for text in instructions], dtype=np.int64).reshape(-1, 2)  # (B, 2)
        return self.judge_tasks(now, start, codes[:, 0], codes[:, 1])

    def judge_tasks(
        self, now: SceneEstimate, start: SceneEstimate, tasks: np.ndarray, keypoints: np.ndarray
    ) -> np.ndarray:
        """`judge` for instructions already parsed by `task_code`: the tasks (B,) (indices into cfg.tasks;
        a world with -1 is not judged: False) and their target keypoints (B,). Array operations grouped
        by task, no Python loop over worlds: the same flags as `judge` one world at a time."""
        tasks, keypoints = np.asarray(tasks), np.asarray(keypoints)
        B = len(now)
        if not len(start) == B or tasks.shape != (B,) or keypoints.shape != (B,):
            raise ValueError(
                f"need one start, task and keypoint per frame: {B} frames, {len(start)} starts, "
                f"tasks {tasks.shape}, keypoints {keypoints.shape}"
            )
        if tuple(now.colours) != self.cfg.colours or tuple(start.colours) != self.cfg.colours:
            raise ValueError(f"estimates must have this model's keypoints {self.cfg.colours} (+ bowl)")
        judged = tasks >= 0
        bad = (tasks >= len(self.cfg.tasks)) | judged & (
            (keypoints < 0) | (keypoints >= len(self.cfg.colours))
        )
        if bad.any():
            raise ValueError(
                f"tasks must be -1 or indices into {self.cfg.tasks} and keypoints indices into "
                f"{self.cfg.colours}; world {int(np.argmax(bad))} has ({tasks[bad][0]}, {keypoints[bad][0]})"
            )
        rows = np.arange(B)
        k = np.where(judged, keypoints, 0)
        block, block_start = now.positions[rows, k], start.positions[rows, k]  # (B, 3)
        bowl = now.positions[:, -1]
        grasped = now.grasp[rows, k] > self.cfg.grasp_threshold
        flags = np.zeros(B, dtype=bool)
        for index, name in enumerate(self.cfg.tasks):
            group = np.flatnonzero(tasks == index)
            if len(group):
                task = make_task(name)
                flags[group] = task.holds(block[group], block_start[group], bowl[group], grasped[group])
        return flags

    def predict(
        self,
        frames: np.ndarray,
        instructions: Sequence[str],
        start_frames: np.ndarray | None = None,
        start: SceneEstimate | None = None,
    ) -> np.ndarray:
        """Success (B,) bool of frames (B, H, W, 3) for their instructions, from their episodes' start
        frames (or their `estimate`, computed once per episode by the caller)."""
        if start is None:
            if start_frames is None:
                raise ValueError("predict needs the episodes' start_frames or their estimate (start=)")
            start = self.estimate(start_frames)
        return self.judge(self.estimate(frames), start, instructions)

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> Path:
        """Write `success.safetensors` into the bundle folder `path` (or to `path` if it ends in .safetensors)."""
        path = Path(path)
        file = path if path.suffix == ".safetensors" else path / SUCCESS_WEIGHTS
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        meta = {"config": json.dumps(dataclasses.asdict(self.cfg)), "format": FORMAT}
        if metrics:
            meta["metrics"] = json.dumps(metrics)
        atomic_write(file, lambda tmp: save_file(tensors, tmp, metadata=meta))
        return file


def load_success_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", compile: bool = False
) -> SuccessModel:
    """Load `success.safetensors` from a bundle folder (or the file itself); never unpickles code.
    compile: see `SuccessModel`."""
    from safetensors import safe_open

    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / SUCCESS_WEIGHTS
    if not file.exists():
        raise FileNotFoundError(f"{file}: no success model (train one with worldsim-eval --stages success)")
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{file}: not a worldsim success model (metadata 'format' is {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        raw = json.loads(meta["config"])
        cfg = SuccessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: metadata 'config' is missing or not a SuccessConfig: {e}") from e
    net = StateNet(cfg)
    net.load_state_dict(load_file(str(file)))
    return SuccessModel(net, device, compile=compile)


# ----------------------------------------------------------------------------- labelled sim frames
@dataclass
class SuccessFrames:
    """Sim frames with their state: frame i belongs to episode `episode[i]` (start frame `starts[e]`)."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    positions: np.ndarray  # (N, K, 3) float32 metres; NaN for colours not in the scene
    grasped: np.ndarray  # (N, K) bool (bowl column always False)
    image_xy: np.ndarray  # (N, K, 2) float32 image positions, [-1, 1] over pixel centres (x right, y down)
    labels: np.ndarray  # (N,) bool: the task's success predicate held at that frame
    episode: np.ndarray  # (N,) int
    starts: np.ndarray  # (E, H, W, 3) uint8
    instructions: list[str]  # (E,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def scene_state(sim: BridgeSim, colours: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, 3) positions by colour (NaN where no block has it), then the bowl; (K,) grasped flags; (K, 2)
    their image positions (`BridgeSim.project`)."""
    positions = np.full((len(colours) + 1, 3), np.nan, dtype=np.float32)
    grasped = np.zeros(len(colours) + 1, dtype=bool)
    for name in BLOCK_NAMES:
        k = colours.index(sim.block_colour(name))
        positions[k], grasped[k] = sim.body_pos(name), sim.is_grasped(name)
    positions[-1] = sim.body_pos("bowl")
    return positions, grasped, sim.project(positions).astype(np.float32)


def sim_success_episode(
    seed: int,
    render_resolution: tuple[int, int],
    resolution: tuple[int, int],
    max_steps: int = 60,
    tasks: tuple[str, ...] = tuple(TASKS),
    policies: tuple[str, ...] = tuple(POLICIES),
    colours: tuple[str, ...] = tuple(PALETTE),
) -> dict:
    """One scripted episode (task and policy drawn from `seed`) with every kept frame's state and label.

    Frames are rendered at `render_resolution` and resized like the training data; kept are the start
    frame, every frame from NEAR_SUCCESS steps before the first success on, and every NEGATIVE_STRIDE-th
    frame before that.
    """
    sim = get_sim(render_resolution)
    rng = np.random.default_rng(seed)
    task = tasks[int(rng.integers(len(tasks)))]
    policy = make_policy(policies[int(rng.integers(len(policies)))])
    sim.reset(seed=int(rng.integers(2**31 - 1)), task=task)
    policy.reset(sim, np.random.default_rng(int(rng.integers(2**31 - 1))))
    frames, labels, states = [sim.render()], [sim.is_success()], [scene_state(sim, colours)]
    first_success = None
    for step in range(1, max_steps + 1):
        sim.step(policy.act(sim))
        frames.append(sim.render())
        labels.append(sim.is_success())
        states.append(scene_state(sim, colours))
        if labels[-1] and first_success is None:
            first_success = step
        if first_success is not None and step - first_success >= AFTER_SUCCESS:
            break
    near = first_success - NEAR_SUCCESS if first_success is not None else len(frames)
    keep = [t for t in range(len(frames)) if t >= near or t % NEGATIVE_STRIDE == 0]  # 0: the start
    video = resize_frames(np.stack([frames[t] for t in keep]), resolution).transpose(0, 2, 3, 1)
    return {
        "start": np.ascontiguousarray(video[0]),
        "frames": np.ascontiguousarray(video),
        "positions": np.stack([states[t][0] for t in keep]),
        "grasped": np.stack([states[t][1] for t in keep]),
        "image_xy": np.stack([states[t][2] for t in keep]),
        "labels": np.array([labels[t] for t in keep], dtype=bool),
        "instruction": sim.instruction,
    }


def collect_success_frames(
    episodes: int,
    seed: int,
    resolution: tuple[int, int],
    render_resolution: tuple[int, int] = (480, 640),
    workers: int = 1,
    max_steps: int = 60,
    tasks: tuple[str, ...] = tuple(TASKS),
    policies: tuple[str, ...] = tuple(POLICIES),
    progress: bool = True,
) -> SuccessFrames:
    """Frames, states and success labels of `episodes` scripted BridgeSim episodes, seeds seed..seed+episodes-1.

    Task and policy are drawn per episode from `tasks` and `policies` (default: all of each).
    """
    jobs = [
        (seed + i, tuple(render_resolution), tuple(resolution), max_steps, tuple(tasks), tuple(policies))
        for i in range(episodes)
    ]
    eps = sim_map(sim_success_episode, jobs, workers, desc="success frames: BridgeSim", progress=progress)
    return SuccessFrames(
        frames=np.concatenate([e["frames"] for e in eps]),
        positions=np.concatenate([e["positions"] for e in eps]),
        grasped=np.concatenate([e["grasped"] for e in eps]),
        image_xy=np.concatenate([e["image_xy"] for e in eps]),
        labels=np.concatenate([e["labels"] for e in eps]),
        episode=np.concatenate([np.full(len(e["labels"]), i) for i, e in enumerate(eps)]),
        starts=np.stack([e["start"] for e in eps]),
        instructions=[e["instruction"] for e in eps],
    )


# ------------------------------------------------------------------------------------- training
def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness/contrast jitter and, for half the batch, a blur: generated frames are softer than renders."""
    B = x.shape[0]
    gain = 1 + 0.15 * (torch.rand(B, 1, 1, 1, generator=generator) * 2 - 1)
    bias = 0.1 * (torch.rand(B, 1, 1, 1, generator=generator) * 2 - 1)
    x = (x * gain + bias).clamp(-1, 1)
    blur = torch.rand(B, generator=generator) < 0.5
    if bool(blur.any()):
        x = x.clone()
        x[blur] = F.avg_pool2d(x[blur], 3, stride=1, padding=1, count_include_pad=False)
    return x


def state_loss(
    net: StateNet,
    frames: torch.Tensor,
    positions: torch.Tensor,
    grasped: torch.Tensor,
    image_xy: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """For the keypoints present: smooth-L1 on their 3-D positions (normalised units), BCE on the blocks'
    grasp flag, and image-plane supervision of the heat maps (cross-entropy against a Gaussian of one
    cell around the projected position, L1 on the expected position): a keypoint learns *where to look*
    directly instead of through the 3-D regression alone."""
    out = net.keypoints(frames)
    pred, logits, where, heat, cells = out["positions"], out["grasp"], out["where"], out["heat"], out["cells"]
    present = torch.isfinite(positions).all(dim=-1)  # (B, K)
    target = (
        torch.nan_to_num(positions) - torch.tensor(POSITION_MEAN, device=positions.device)
    ) / POSITION_SCALE
    position = F.smooth_l1_loss(pred[present], target[present], beta=0.1)
    blocks = present.clone()
    blocks[:, -1] = False
    grasp = F.binary_cross_entropy_with_logits(logits[blocks], grasped[blocks].float())
    xy = torch.nan_to_num(image_xy)[present]  # (P, 2)
    step = cells[1, 0] - cells[0, 0]  # one cell in [-1, 1] units (square cells: 4x4 input pixels)
    d2 = (((cells[None] - xy[:, None, :]) / step) ** 2).sum(-1)  # (P, h*w) squared distance in cells
    soft_target = torch.softmax(-0.5 * d2, dim=-1)
    heat_ce = -(soft_target * torch.log_softmax(heat[present], dim=-1)).sum(-1).mean()
    image = (where[present] - xy).abs().mean()
    loss = position + 0.2 * grasp + 0.1 * heat_ce + image
    parts = {"position": position, "grasp": grasp, "heat": heat_ce, "image": image}
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def train_success_model(
    data: SuccessFrames,
    cfg: SuccessConfig,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> SuccessModel:
    """Train a `StateNet` with AdamW (one-cycle lr) on random frames; frames near success are drawn more
    often (a quarter of each batch) since that is where the predicates' thresholds are decided."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    net = StateNet(cfg).to(device)
    rng = np.random.default_rng(seed)
    positive = np.flatnonzero(data.labels)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    bar = tqdm(range(steps), desc="success model", unit="step", disable=not progress)
    for _ in bar:
        n_pos = min(batch_size // 4, len(positive))
        idx = np.concatenate([rng.choice(positive, n_pos), rng.integers(len(data), size=batch_size - n_pos)])
        x = _augment(_to_model_frames(data.frames[idx], torch.device("cpu"), torch.float32), generator).to(
            device
        )
        positions = torch.as_tensor(data.positions[idx], device=device)
        grasped = torch.as_tensor(data.grasped[idx], device=device)
        image_xy = torch.as_tensor(data.image_xy[idx], device=device)
        loss, parts = state_loss(net, x, positions, grasped, image_xy)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(parts, refresh=False)
    net.eval()
    return SuccessModel(net, device)


def classification_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """Accuracy, balanced accuracy (mean of the two class recalls), precision and recall of bool arrays."""
    p, y = np.asarray(predicted, dtype=bool), np.asarray(labels, dtype=bool)
    tp, tn = int((p & y).sum()), int((~p & ~y).sum())
    fp, fn = int((p & ~y).sum()), int((~p & y).sum())
    recall = tp / max(tp + fn, 1)
    specificity = tn / max(tn + fp, 1)
    return {
        "accuracy": round((tp + tn) / max(len(y), 1), 4),
        "balanced_accuracy": round((recall + specificity) / 2, 4),
        "precision": round(tp / max(tp + fp, 1), 4),
        "recall": round(recall, 4),
        "frames": int(len(y)),
        "positives": int(y.sum()),
    }


def evaluate_success_model(model: SuccessModel, data: SuccessFrames) -> dict:
    """Success classification of labelled frames (from the estimated start of each episode), and how
    well the state is estimated: median / 90th-percentile position error (cm) of the blocks and the
    bowl, and the accuracy of the grasp flag."""
    now = model.estimate(data.frames)
    start = model.estimate(data.starts)[data.episode]
    instructions = [data.instructions[e] for e in data.episode]
    metrics: dict = classification_metrics(model.judge(now, start, instructions), data.labels)
    error = np.linalg.norm(now.positions - data.positions, axis=-1) * 100  # (N, K) cm, NaN if absent
    blocks, bowl = error[:, :-1][np.isfinite(error[:, :-1])], error[:, -1]
    present = np.isfinite(data.positions[:, :-1]).all(axis=-1)
    held = now.grasp[:, :-1][present] > model.cfg.grasp_threshold
    metrics.update(
        {
            "block_error_cm_median": round(float(np.median(blocks)), 2),
            "block_error_cm_p90": round(float(np.percentile(blocks, 90)), 2),
            "bowl_error_cm_median": round(float(np.median(bowl)), 2),
            "grasp_accuracy": round(float((held == data.grasped[:, :-1][present]).mean()), 4),
        }
    )
    return metrics


@torch.inference_mode()
def tokenizer_round_trip(model: torch.nn.Module, frames: np.ndarray, chunk: int = 64) -> np.ndarray:
    """uint8 frames (N, H, W, 3) through a world model's tokenizer (encode, decode): what its generated
    frames look like at best (blurred small objects, softened colours)."""
    weight = next(model.parameters())
    out = []
    for i in range(0, len(frames), chunk):
        x = _to_model_frames(frames[i : i + chunk], weight.device, weight.dtype)
        out.append(Rollout._to_uint8(model.tokenizer.decode(model.tokenizer.encode(x))).cpu().numpy())
    return np.concatenate(out) if out else frames.copy()


def round_tripped(data: SuccessFrames, model: torch.nn.Module) -> SuccessFrames:
    """The same labelled frames (and start frames) after the world model's tokenizer round trip."""
    return dataclasses.replace(
        data, frames=tokenizer_round_trip(model, data.frames), starts=tokenizer_round_trip(model, data.starts)
    )


def concat_frames(a: SuccessFrames, b: SuccessFrames) -> SuccessFrames:
    """Both sets of labelled frames as one (b's episodes renumbered after a's)."""
    return SuccessFrames(
        frames=np.concatenate([a.frames, b.frames]),
        positions=np.concatenate([a.positions, b.positions]),
        grasped=np.concatenate([a.grasped, b.grasped]),
        image_xy=np.concatenate([a.image_xy, b.image_xy]),
        labels=np.concatenate([a.labels, b.labels]),
        episode=np.concatenate([a.episode, b.episode + len(a.starts)]),
        starts=np.concatenate([a.starts, b.starts]),
        instructions=list(a.instructions) + list(b.instructions),
    )


def build_success_model(
    resolution: tuple[int, int],
    train_episodes: int = 400,
    val_episodes: int = 60,
    steps: int = 2500,
    seed: int = 0,
    render_resolution: tuple[int, int] = (480, 640),
    workers: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    world_model: torch.nn.Module | None = None,
) -> tuple[SuccessModel, dict]:
    """Collect train and held-out (other seeds) sim frames, train, and measure; returns (model, metrics).

    With `world_model`, every training frame is also seen after its tokenizer round trip: a model
    trained on crisp renders alone misreads the world model's softer frames (the bundled one: 13 cm
    median block error on round-tripped frames, 1.7 cm when trained on both), and the held-out
    metrics are reported on round-tripped frames too (`val_round_trip`)."""
    start = time.perf_counter()
    kwargs = {
        "resolution": resolution,
        "render_resolution": render_resolution,
        "workers": workers,
        "progress": progress,
    }
    train = collect_success_frames(train_episodes, seed=seed, **kwargs)
    val = collect_success_frames(val_episodes, seed=seed + 1_000_000, **kwargs)
    if world_model is not None:
        train = concat_frames(train, round_tripped(train, world_model))
    collect_seconds = time.perf_counter() - start
    # Pool the input to at most ~64 rows: success is about where whole blocks are, not texture.
    cfg = SuccessConfig(height=resolution[0], width=resolution[1], input_pool=max(1, resolution[0] // 64))
    start = time.perf_counter()
    model = train_success_model(train, cfg, steps=steps, device=device, seed=seed, progress=progress)
    metrics = {
        "train": evaluate_success_model(model, train),
        "val": evaluate_success_model(model, val),
        "train_episodes": train_episodes,
        "val_episodes": val_episodes,
        "steps": steps,
        "trained_on_round_trips": world_model is not None,
        "collect_seconds": round(collect_seconds, 2),
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    if world_model is not None:
        metrics["val_round_trip"] = evaluate_success_model(model, round_tripped(val, world_model))
    return model, metrics
