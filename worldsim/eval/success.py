"""Success detection from frames: a small CNN that says whether a BridgeSim task is done in an image.

The learned world has no simulator state to evaluate a task's success predicate on, only frames. This
classifier is trained on BridgeSim frames labelled by the task's own predicate (`BridgeSim.is_success`
after every step of scripted-policy episodes of every skill) and ships beside a model bundle as
`success.safetensors`, its `SuccessConfig` in the metadata; BridgeWorld-v0 uses it for
`info["is_success"]` and the evaluation for policy success rates in the learned world.

What it sees, and why:
- the current frame and the episode's start frame (and their difference): "pushed 8 cm to the left" and
  "lifted 6 cm" are changes from the start, not properties of one image;
- the instruction, as a one-hot task (pick_place, push_left, push_right, lift) and a one-hot target colour,
  broadcast as extra input planes so the first convolutions can look for *that* block: one conditioned
  network instead of one per task family, since the tasks share most of what matters (where the blocks,
  the bowl and the fingers are).

    model = load_success_model("checkpoints/bridge_small")
    done = model.predict(frames, start_frames, ["put the red block in the bowl", ...])   # (B,) bool
"""

from __future__ import annotations

import dataclasses
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

from worldsim.data.dataset import resize_frames
from worldsim.eval.sim_pool import get_sim, sim_map
from worldsim.sim.policies import POLICIES, make_policy
from worldsim.sim.scene import PALETTE
from worldsim.sim.tasks import TASKS

SUCCESS_WEIGHTS = "success.safetensors"
NEAR_SUCCESS = 5  # steps before the first success whose frames are all kept (hard negatives)
AFTER_SUCCESS = 4  # steps an episode goes on after its first success (positives)
NEGATIVE_STRIDE = 3  # other negative frames: every third


@dataclass(frozen=True)
class SuccessConfig:
    """Shape of the success classifier; stored in the safetensors metadata."""

    height: int = 128  # frame rows (the world model's resolution)
    width: int = 160  # frame columns
    channels: tuple[int, ...] = (16, 32, 32, 64)  # conv widths, each stage halves the resolution
    input_pool: int = 1  # frames are average-pooled by this factor first (CPU training in about a minute)
    tasks: tuple[str, ...] = tuple(TASKS)  # one-hot order of the task id
    colours: tuple[str, ...] = tuple(PALETTE)  # one-hot order of the target block's colour
    threshold: float = 0.5  # probability above which a frame counts as success

    @property
    def cond_dim(self) -> int:
        return len(self.tasks) + len(self.colours)


def parse_instruction(text: str, cfg: SuccessConfig = SuccessConfig()) -> tuple[str, str]:
    """(task, colour) of a BridgeSim instruction, e.g. "push the red block to the left" -> (push_left, red)."""
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


class SuccessNet(nn.Module):
    """Conv stack over [frame, start, frame - start, instruction planes] -> one success logit."""

    def __init__(self, cfg: SuccessConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = 9 + cfg.cond_dim
        for i, c in enumerate(cfg.channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(width, c, k, stride=2, padding=k // 2), nn.GroupNorm(8, c), nn.SiLU()]
            width = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * width + cfg.cond_dim, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, frames: torch.Tensor, start: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """frames, start: (B, 3, H, W) in [-1, 1]; cond: (B, cond_dim) one-hots. Returns logits (B,)."""
        if self.cfg.input_pool > 1:
            frames = F.avg_pool2d(frames, self.cfg.input_pool)
            start = F.avg_pool2d(start, self.cfg.input_pool)
        B, _, H, W = frames.shape
        planes = cond[:, :, None, None].expand(B, cond.shape[1], H, W)
        x = self.features(torch.cat([frames, start, frames - start, planes], dim=1))  # (B, C, h, w)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), cond], dim=1)
        return self.head(pooled)[:, 0]


class SuccessModel:
    """A trained `SuccessNet` and its config: uint8 frames + instructions in, success out."""

    def __init__(self, net: SuccessNet, device: str | torch.device = "cpu") -> None:
        self.cfg = net.cfg
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    def condition(self, instructions: Sequence[str]) -> torch.Tensor:
        """(B, cond_dim) task and colour one-hots of the instructions."""
        cond = torch.zeros(len(instructions), self.cfg.cond_dim)
        for i, text in enumerate(instructions):
            task, colour = parse_instruction(text, self.cfg)
            cond[i, self.cfg.tasks.index(task)] = 1.0
            cond[i, len(self.cfg.tasks) + self.cfg.colours.index(colour)] = 1.0
        return cond.to(self.device)

    @torch.inference_mode()
    def predict_proba(
        self, frames: np.ndarray, start_frames: np.ndarray, instructions: Sequence[str], chunk: int = 256
    ) -> np.ndarray:
        """Success probability (B,) of uint8 frames (B, H, W, 3) given start frames and instructions."""
        frames, start_frames = np.asarray(frames), np.asarray(start_frames)
        expected = (self.cfg.height, self.cfg.width, 3)
        if frames.shape[1:] != expected or start_frames.shape != frames.shape:
            raise ValueError(
                f"frames and start frames must be (B, {expected}) uint8, got {frames.shape}, {start_frames.shape}"
            )
        cond = self.condition(instructions)
        out = []
        for i in range(0, len(frames), chunk):
            x, s = (
                _to_input(frames[i : i + chunk], self.device),
                _to_input(start_frames[i : i + chunk], self.device),
            )
            out.append(torch.sigmoid(self.net(x, s, cond[i : i + chunk])).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def predict(
        self, frames: np.ndarray, start_frames: np.ndarray, instructions: Sequence[str]
    ) -> np.ndarray:
        """Success (B,) bool: probability above the config's threshold."""
        return self.predict_proba(frames, start_frames, instructions) > self.cfg.threshold

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> Path:
        """Write `success.safetensors` into the bundle folder `path` (or to `path` if it ends in .safetensors)."""
        path = Path(path)
        file = path if path.suffix == ".safetensors" else path / SUCCESS_WEIGHTS
        file.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        meta = {"config": json.dumps(dataclasses.asdict(self.cfg)), "format": "worldsim-success"}
        if metrics:
            meta["metrics"] = json.dumps(metrics)
        save_file(tensors, str(file), metadata=meta)
        return file


def load_success_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> SuccessModel:
    """Load `success.safetensors` from a bundle folder (or the file itself); never unpickles code."""
    from safetensors import safe_open

    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / SUCCESS_WEIGHTS
    if not file.exists():
        raise FileNotFoundError(f"{file}: no success classifier (train one with worldsim-eval)")
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "worldsim-success":
        raise ValueError(
            f"{file}: not a worldsim success classifier (metadata format {meta.get('format')!r})"
        )
    raw = json.loads(meta["config"])
    cfg = SuccessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    net = SuccessNet(cfg)
    net.load_state_dict(load_file(str(file)))
    return SuccessModel(net, device)


def _to_input(frames: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] on device."""
    x = torch.as_tensor(np.asarray(frames)).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- labelled sim frames
@dataclass
class SuccessFrames:
    """Labelled frames: frame i belongs to episode `episode[i]`, whose start frame is `starts[episode[i]]`."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) bool: the task's success predicate held at that frame
    episode: np.ndarray  # (N,) int
    starts: np.ndarray  # (E, H, W, 3) uint8
    instructions: list[str]  # (E,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def sim_success_episode(
    seed: int,
    render_resolution: tuple[int, int],
    resolution: tuple[int, int],
    max_steps: int = 60,
    tasks: tuple[str, ...] = tuple(TASKS),
    policies: tuple[str, ...] = tuple(POLICIES),
) -> dict:
    """One scripted episode (task and policy drawn from `seed`) with every step's success label.

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
    frames, labels = [sim.render()], [sim.is_success()]
    first_success = None
    for step in range(1, max_steps + 1):
        sim.step(policy.act(sim))
        frames.append(sim.render())
        labels.append(sim.is_success())
        if labels[-1] and first_success is None:
            first_success = step
        if first_success is not None and step - first_success >= AFTER_SUCCESS:
            break
    near = first_success - NEAR_SUCCESS if first_success is not None else len(frames)
    keep = [t for t in range(1, len(frames)) if t >= near or t % NEGATIVE_STRIDE == 0]
    video = resize_frames(np.stack([frames[0]] + [frames[t] for t in keep]), resolution).transpose(0, 2, 3, 1)
    return {
        "start": np.ascontiguousarray(video[0]),
        "frames": np.ascontiguousarray(video[1:]),
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
    """Labelled frames of `episodes` scripted BridgeSim episodes, seeds seed..seed+episodes-1.

    Task and policy are drawn per episode from `tasks` and `policies` (default: all of each).
    """
    jobs = [
        (seed + i, tuple(render_resolution), tuple(resolution), max_steps, tuple(tasks), tuple(policies))
        for i in range(episodes)
    ]
    eps = sim_map(sim_success_episode, jobs, workers, desc="success frames: BridgeSim", progress=progress)
    return SuccessFrames(
        frames=np.concatenate([e["frames"] for e in eps]),
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


def train_success_model(
    data: SuccessFrames,
    cfg: SuccessConfig,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> SuccessModel:
    """Train a `SuccessNet` with AdamW on balanced minibatches (half positives when there are any)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    net = SuccessNet(cfg).to(device)
    model = SuccessModel(net, device)
    cond = model.condition(data.instructions)  # (E, cond_dim)
    pos, neg = np.flatnonzero(data.labels), np.flatnonzero(~data.labels)
    if len(neg) == 0:
        raise ValueError("success training data has no negative frames")
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    for _ in tqdm(range(steps), desc="success classifier", unit="step", disable=not progress):
        n_pos = min(batch_size // 2, len(pos)) if len(pos) else 0
        idx = np.concatenate([rng.choice(pos, n_pos), rng.choice(neg, batch_size - n_pos)])
        x = _augment(_to_input(data.frames[idx], torch.device("cpu")), generator).to(device)
        s = _augment(_to_input(data.starts[data.episode[idx]], torch.device("cpu")), generator).to(device)
        y = torch.as_tensor(data.labels[idx], dtype=torch.float32, device=device)
        loss = F.binary_cross_entropy_with_logits(net(x, s, cond[data.episode[idx]]), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    return model


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


def evaluate_success_model(model: SuccessModel, data: SuccessFrames) -> dict[str, float | int]:
    """Per-frame `classification_metrics` of the model on labelled frames."""
    starts = data.starts[data.episode]
    instructions = [data.instructions[e] for e in data.episode]
    return classification_metrics(model.predict(data.frames, starts, instructions), data.labels)


def build_success_model(
    resolution: tuple[int, int],
    train_episodes: int = 160,
    val_episodes: int = 40,
    steps: int = 600,
    seed: int = 0,
    render_resolution: tuple[int, int] = (480, 640),
    workers: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[SuccessModel, dict]:
    """Collect train and held-out (other seeds) sim frames, train, and measure; returns (model, metrics)."""
    start = time.perf_counter()
    kwargs = {
        "resolution": resolution,
        "render_resolution": render_resolution,
        "workers": workers,
        "progress": progress,
    }
    train = collect_success_frames(train_episodes, seed=seed, **kwargs)
    val = collect_success_frames(val_episodes, seed=seed + 1_000_000, **kwargs)
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
        "collect_seconds": round(collect_seconds, 2),
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    return model, metrics
