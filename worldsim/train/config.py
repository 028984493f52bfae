"""Training configs: dataclasses, named experiments, and command-line overrides through OmegaConf.

`load_config(["experiment=bridge_tiny", "dataset.root=DIR", "trainer.max_iter=100"])` starts from the
named experiment, merges the dotted overrides (OmegaConf checks every key and type against the
dataclasses) and then checks the values. Any problem raises `ConfigError` naming the key, before any
data is read or any device is touched. Key names follow Cosmos-Predict2.5 (`dataset.root`,
`trainer.max_iter`, `checkpoint.save_iter`, `job.name`, `load_path`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from worldsim.models.config import PRESETS, WorldModelConfig, get_preset
from worldsim.models.dynamics import FLEX_FORWARD_TILES
from worldsim.models.flow import ATTENTION_BACKENDS

STAGES = ("tokenizer", "decoder", "video2world", "action", "distill")
PRECISIONS = ("auto", "bf16", "fp32")
ATTENTIONS = ("auto", *ATTENTION_BACKENDS)  # auto: flex on CUDA, sdpa elsewhere
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # CUDA graphs do not mix with FSDP2's hooks
POST_TRAINING_LR = 2**-14.5  # Cosmos-Predict2.5 action post-training learning rate


class ConfigError(ValueError):
    """A bad experiment name, override key or value; the message names the key."""


@dataclass
class JobConfig:
    """Where a run writes: $WORLDSIM_OUTPUT_ROOT/project/group/name/."""

    project: str = "worldsim"
    group: str = "bridge"
    name: str = "bridge_tiny"


@dataclass
class DatasetConfig:
    """A Bridge-format folder (see worldsim/data/bridge.py) and how windows are cut from it."""

    root: str = ""  # dataset folder; required
    split: str = "train"
    val_split: str = "val"  # falls back to `split` (with a warning) when the folder has no such split
    num_workers: int = 0  # DataLoader worker processes per rank (0 = load in the training process)
    stride: int = 1  # step between window start frames
    cache_dir: str = ""  # decoded-frame cache; "" = ROOT/.cache/...
    # dynamics stages: encode each episode once with the frozen encoder and train on the cached latent
    # means (worldsim/train/latents.py) instead of encoding every window's frames at every step
    latents: bool = True


@dataclass
class TrainerConfig:
    """Optimisation, logging and validation."""

    max_iter: int = 1000  # optimiser steps
    batch_size: int = 4  # windows per rank per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = POST_TRAINING_LR  # peak learning rate
    lr_final_ratio: float = 0.0  # lr at max_iter / peak lr (linear decay after warm-up)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_iter: int = 100  # linear warm-up from 0 over this many steps
    clip_grad_norm: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.999  # EMA of the weights, kept in fp32
    seed: int = 0
    log_every: int = 10  # metrics.jsonl + progress bar every N steps
    val_every: int = 500  # validation every N steps (0 = never) and at the last step
    val_batches: int = 2  # validation micro-batches per rank
    val_rollout_steps: int = 12  # frames of the validation rollout (dynamics stages)
    compile: bool = False  # torch.compile each transformer block and the tokenizer's encoder and decoder
    # torch.compile's mode for them: "default", or "max-autotune-no-cudagraphs" (inductor times Triton
    # templates for the matmuls and flex-attention's tiles itself: minutes more to compile, and 0.5% on
    # `base`'s dynamics training step on an H200, README "Training")
    compile_mode: str = "default"
    # How the dynamics stages apply the block-causal training mask: flex (flex-attention, skips the
    # tiles nobody attends; CUDA only, it has no CPU backward), sdpa (dense bool mask), auto (flex on CUDA)
    attention: str = "auto"
    # flex-attention's forward tiles in training (BLOCK_M = BLOCK_N); 0 = its defaults; -1 = by head size
    # (64 for heads of 64, its defaults for heads of 128: `flex_forward_tile_for`, README "Training")
    flex_forward_tile: int = -1
    # Dynamics stages: how much more the flow loss weighs the latent positions that change from the previous
    # frame (the arm, a pushed or carried block) than the still background (`motion_weights` in
    # worldsim/models/flow.py); 0 = plain MSE
    motion_weight: float = 0.0
    # stage=distill: Euler steps of the teacher's sampler that the student learns to do in one (the
    # teacher samples on its own config's schedule shift, `time_shift`)
    distill_teacher_steps: int = 2
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    precision: str = "auto"  # bf16 | fp32 | auto (bf16 on CUDA, fp32 on CPU)
    # Wall-clock budget in minutes (0 = none): after `warmup_iter` steps the speed measured over the
    # second half of the warm-up (compilation excluded) sets how many steps fit, and the lr decay is
    # re-aimed at that step. For fixed-length leases (a GPU you hold for 10 minutes); a resumed run gets a
    # fresh budget. Exact resume holds only with 0.
    max_minutes: float = 0.0
    # Stop this run after this many minutes (0 = never) with a checkpoint, the lr schedule left as it is
    # (it still ends at max_iter): for a machine that allows N minutes per command, run the same command
    # again to continue (exact resume). Checked at logging steps, so it stops within log_every steps.
    stop_after_minutes: float = 0.0
    # Profile iterations [profile_start, profile_start + profile_iters) with torch.profiler (0 = never):
    # JOB/profile/rank{r}_ops.txt (operators by device and CPU time) and rank{r}_trace.json (Perfetto)
    profile_start: int = 0
    profile_iters: int = 3


@dataclass
class CheckpointConfig:
    """DCP checkpoints under the job folder's checkpoints/."""

    save_iter: int = 500  # save every N steps (0 = only at the end)
    keep_last: int = 3  # complete checkpoints kept (older ones are deleted); 0 keeps all
    save_final: bool = True  # also save at the last step (benchmarks turn this off)


@dataclass
class ModelConfig:
    """A `WorldModelConfig` preset plus field overrides, e.g. model.overrides.depth=4."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)

    def build(self) -> WorldModelConfig:
        # Lists from the command line become the config's tuples (it is frozen and hashable).
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(self.overrides).items()}
        return get_preset(self.preset, **values)


@dataclass
class TrainConfig:
    """One training run."""

    experiment: str = "bridge_tiny"
    stage: str = "action"  # tokenizer | decoder | video2world | action | distill
    load_path: str = ""  # initial model weights (DCP checkpoint, .pt or .safetensors); "" = none
    # The tokenizer's weights (latent statistics included) from here instead of load_path: a newly trained
    # tokenizer under a trained dynamics, or (stage=tokenizer) the tokenizer to train on; "" = none
    tokenizer_path: str = ""
    load_ema: bool = True  # take the EMA weights from a DCP / converted load_path when it has them
    job: JobConfig = field(default_factory=JobConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def job_dir(self) -> Path:
        root = os.environ.get("WORLDSIM_OUTPUT_ROOT", "/tmp/worldsim-output")
        return Path(root) / self.job.project / self.job.group / self.job.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ registry
def _experiment(name: str, stage: str, preset: str, **sections: dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig(experiment=name, stage=stage, job=JobConfig(name=name), model=ModelConfig(preset))
    for section, values in sections.items():
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    return cfg


def _tiny_trainer(**extra: Any) -> dict[str, Any]:
    # From scratch on a CPU in seconds: a large lr (the post-training lr is for pre-trained weights).
    return dict(max_iter=200, batch_size=2, lr=1e-3, warmup_iter=5, ema_decay=0.99, log_every=5,
                val_every=100, val_batches=1, **extra)  # fmt: skip


EXPERIMENTS: dict[str, TrainConfig] = {
    e.experiment: e
    for e in [
        _experiment("bridge_tiny", "action", "tiny", trainer=_tiny_trainer(), checkpoint={"save_iter": 100}),
        _experiment(
            "bridge_tiny_tokenizer",
            "tokenizer",
            "tiny",
            trainer=_tiny_trainer(),
            checkpoint={"save_iter": 100},
        ),
        _experiment(
            "bridge_small_tokenizer",
            "tokenizer",
            "small",
            trainer=dict(max_iter=20_000, batch_size=8, lr=2e-4, warmup_iter=500, weight_decay=0.0),
        ),
        # Sharpen a trained model's decoder (encoder frozen: its latents, which the dynamics was trained
        # on, stay as they are); `load_path` names the model.
        _experiment(
            "bridge_small_decoder",
            "decoder",
            "small",
            trainer=dict(max_iter=20_000, batch_size=4, lr=1e-4, warmup_iter=200, weight_decay=0.0),
        ),
        _experiment(
            "bridge_small_video2world",
            "video2world",
            "small",
            trainer=dict(max_iter=50_000, batch_size=8, lr=3e-4, warmup_iter=1000),
        ),
        _experiment(
            "bridge_small_action",
            "action",
            "small",
            trainer=dict(max_iter=20_000, batch_size=8, warmup_iter=500),
        ),
        # One-step sampling: the bundled model (load_path) as teacher and starting point; the student keeps
        # its shapes and samples with 1 Euler step (model.overrides.denoise_steps), one pass a frame.
        _experiment(
            "bridge_small_distill",
            "distill",
            "small",
            trainer=dict(max_iter=5_000, batch_size=32, lr=1e-4, warmup_iter=200),
            model={"overrides": {"denoise_steps": 1}},
        ),
        _experiment(
            "bridge_base_action",
            "action",
            "base",
            trainer=dict(max_iter=20_000, batch_size=4, warmup_iter=500, precision="bf16"),
        ),
        _experiment(
            "bridge_2b_action",
            "action",
            "2b",
            trainer=dict(
                max_iter=20_000,
                batch_size=1,
                warmup_iter=500,
                precision="bf16",
                activation_checkpointing=True,
            ),
        ),
    ]
}


# ------------------------------------------------------------------------------------------- loading
def load_config(argv: list[str]) -> TrainConfig:
    """`experiment=NAME` (default bridge_tiny) plus dotted overrides -> a checked `TrainConfig`."""
    try:
        overrides = OmegaConf.from_dotlist(list(argv))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {argv}: {e} (expected key=value)") from e
    name = overrides.pop("experiment", "bridge_tiny")
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment={name!r}: unknown experiment; choose from {sorted(EXPERIMENTS)}")
    base = OmegaConf.structured(EXPERIMENTS[name])
    try:
        merged = OmegaConf.merge(base, overrides)
        cfg: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"bad override for key {key!r}: {str(e).splitlines()[0]}") from e
    cfg.model.overrides = dict(cfg.model.overrides)
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Value checks OmegaConf's type checks cannot do; raises ConfigError naming the key."""
    t = cfg.trainer

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={_get(cfg, key)!r}: {msg}")

    need(cfg.stage in STAGES, "stage", f"must be one of {list(STAGES)}")
    need(
        cfg.stage != "decoder" or bool(cfg.load_path),
        "load_path",
        "required for stage=decoder: it fine-tunes the decoder of a trained model (a DCP checkpoint or bundle)",
    )
    need(
        cfg.stage != "distill" or bool(cfg.load_path),
        "load_path",
        "required for stage=distill: the trained action model (a DCP checkpoint or bundle) that is the "
        "teacher and the student's starting point",
    )
    need(
        not cfg.tokenizer_path or cfg.stage not in ("decoder", "distill"),
        "tokenizer_path",
        "not for stage=decoder or distill (their load_path names the whole trained model)",
    )
    need(
        bool(cfg.dataset.root), "dataset.root", "required: a Bridge-format dataset folder (dataset.root=DIR)"
    )
    need(t.max_iter > 0, "trainer.max_iter", "must be a positive number of iterations")
    need(t.batch_size > 0, "trainer.batch_size", "must be > 0")
    need(t.grad_accum > 0, "trainer.grad_accum", "must be > 0")
    need(t.lr > 0, "trainer.lr", "must be > 0")
    need(0 <= t.lr_final_ratio <= 1, "trainer.lr_final_ratio", "must be in [0, 1]")
    need(t.weight_decay >= 0, "trainer.weight_decay", "must be >= 0")
    need(t.warmup_iter >= 0, "trainer.warmup_iter", "must be >= 0")
    need(t.max_minutes >= 0, "trainer.max_minutes", "must be >= 0 (0 = no wall-clock budget)")
    need(t.stop_after_minutes >= 0, "trainer.stop_after_minutes", "must be >= 0 (0 = never stop early)")
    need(
        t.max_minutes == 0 or t.warmup_iter >= 2,
        "trainer.warmup_iter",
        "must be >= 2 with trainer.max_minutes: the speed that sets the budgeted last step is measured "
        "over the second half of the warm-up",
    )
    need(t.clip_grad_norm >= 0, "trainer.clip_grad_norm", "must be >= 0 (0 disables clipping)")
    need(0 <= t.ema_decay < 1, "trainer.ema_decay", "must be in [0, 1)")
    need(t.log_every > 0, "trainer.log_every", "must be > 0")
    need(t.val_every >= 0, "trainer.val_every", "must be >= 0 (0 = never)")
    need(t.val_batches > 0, "trainer.val_batches", "must be > 0")
    need(t.val_rollout_steps >= 0, "trainer.val_rollout_steps", "must be >= 0")
    need(t.precision in PRECISIONS, "trainer.precision", f"must be one of {list(PRECISIONS)}")
    need(t.attention in ATTENTIONS, "trainer.attention", f"must be one of {list(ATTENTIONS)}")
    need(t.compile_mode in COMPILE_MODES, "trainer.compile_mode", f"must be one of {list(COMPILE_MODES)}")
    need(
        t.flex_forward_tile in FLEX_FORWARD_TILES,
        "trainer.flex_forward_tile",
        f"must be one of {list(FLEX_FORWARD_TILES)}",
    )
    need(t.profile_start >= 0, "trainer.profile_start", "must be >= 0 (0 = no profile)")
    need(t.profile_iters > 0, "trainer.profile_iters", "must be > 0")
    need(t.distill_teacher_steps >= 1, "trainer.distill_teacher_steps", "must be >= 1")
    need(t.motion_weight >= 0, "trainer.motion_weight", "must be >= 0 (0 = plain MSE)")
    need(cfg.dataset.num_workers >= 0, "dataset.num_workers", "must be >= 0")
    need(cfg.dataset.stride > 0, "dataset.stride", "must be > 0")
    need(cfg.checkpoint.save_iter >= 0, "checkpoint.save_iter", "must be >= 0 (0 = only at the end)")
    need(cfg.checkpoint.keep_last >= 0, "checkpoint.keep_last", "must be >= 0 (0 keeps all)")
    for key in ("project", "group", "name"):
        value = getattr(cfg.job, key)
        need(
            bool(value) and "/" not in value and value not in (".", ".."),
            f"job.{key}",
            "must be a plain folder name",
        )
    need(cfg.model.preset in PRESETS, "model.preset", f"unknown preset; choose from {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(WorldModelConfig)}
    for key in cfg.model.overrides:
        need(key in known, f"model.overrides.{key}", "not a WorldModelConfig field")
    try:
        cfg.model.build()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from e


def _get(cfg: TrainConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj
