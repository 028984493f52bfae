"""The world model as one object: tokenizer + dynamics + config, saved and loaded as safetensors.

A bundle is a folder (or a single .safetensors file) holding `model.safetensors` whose metadata
carries the `WorldModelConfig` JSON; loading never unpickles code. Optional start frames
(`start_frames.npz`: images uint8 (S, H, W, 3), ee_states (S, 7) and optionally the episodes'
instructions (S,) str) ship beside the weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from worldsim.atomic import atomic_write
from worldsim.models.config import WorldModelConfig
from worldsim.models.dynamics import DynamicsTransformer
from worldsim.models.tokenizer import Tokenizer

WEIGHTS_NAME = "model.safetensors"
START_FRAMES_NAME = "start_frames.npz"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "bridge_small"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not match the model; the message names the file."""


class WorldModel(nn.Module):
    """Tokenizer and dynamics transformer of one `WorldModelConfig`."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = Tokenizer(cfg)
        self.dynamics = DynamicsTransformer(cfg)
        # The training stage that made the weights, and the one that trained the dynamics (a decoder stage
        # keeps its source's dynamics), from a bundle's metadata (`from_pretrained`), else None.
        # dynamics_stage "distill": a student taught to sample in exactly `cfg.denoise_steps` steps (`Rollout`).
        self.stage: str | None = None
        self.dynamics_stage: str | None = None

    def set_lineage(self, recorded: Mapping[str, object]) -> None:
        """`stage` and `dynamics_stage` from what a checkpoint records of itself (`recorded_lineage`)."""
        self.stage, self.dynamics_stage = recorded_lineage(recorded)

    def rollout(self, batch_size: int = 1, **kwargs):  # noqa: ANN201 - avoid an import cycle in the hint
        """A new `Rollout` session over this model (see worldsim/models/rollout.py)."""
        from worldsim.models.rollout import Rollout

        return Rollout(self, batch_size=batch_size, **kwargs)

    # ------------------------------------------------------------------------------ save / load
    def save_pretrained(
        self,
        path: str | os.PathLike,
        start_frames: dict[str, np.ndarray] | None = None,
        dtype: torch.dtype | None = None,
        extra_metadata: dict[str, str] | None = None,
    ) -> Path:
        """Write `path/model.safetensors` (config in its metadata) atomically, and the start frames."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in self.state_dict().items()
        }
        metadata = {"config": self.cfg.to_json(), "format": "worldsim", **(extra_metadata or {})}
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        if start_frames is not None:
            arrays = {
                "images": np.asarray(start_frames["images"], dtype=np.uint8),
                "ee_states": np.asarray(start_frames["ee_states"], dtype=np.float32),
            }
            if start_frames.get("instructions") is not None:  # the episodes' tasks (success judgement)
                arrays["instructions"] = np.asarray(start_frames["instructions"], dtype=np.str_)
            atomic_write(path / START_FRAMES_NAME, lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> WorldModel:
        """Load a bundle folder or .safetensors file (default: the bundled model) in eval mode."""
        file = resolve_weights(path)
        meta = read_metadata(file)
        cfg = read_config(file, meta)
        model = cls(cfg)
        model.set_lineage(meta)
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: cannot read safetensors weights ({e})") from e
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{file}: weights do not match config {cfg.name!r} (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.to(device=device, dtype=dtype).eval()

    @staticmethod
    def start_frames(path: str | os.PathLike | None = None) -> dict[str, np.ndarray] | None:
        """The start frames shipped beside a bundle's weights, or None."""
        file = resolve_weights(path).parent / START_FRAMES_NAME
        if not file.exists():
            return None
        with np.load(file, allow_pickle=False) as data:
            return {k: data[k] for k in ("images", "ee_states", "instructions") if k in data}


def resolve_weights(path: str | os.PathLike | None) -> Path:
    """Bundle folder or file -> the safetensors file; None -> the bundled default model."""
    p = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if not p.exists():
        hint = (
            " (the bundled model is missing: reinstall worldsim or pass checkpoint=PATH)"
            if path is None
            else ""
        )
        raise CheckpointError(f"{p}: checkpoint not found{hint}")
    if p.suffix != ".safetensors":
        raise CheckpointError(f"{p}: expected a .safetensors file or a folder holding {WEIGHTS_NAME}")
    return p


def read_metadata(file: Path) -> dict[str, str]:
    """A safetensors file's metadata (config JSON, format, training stage)."""
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e


def read_config(file: Path, meta: dict[str, str] | None = None) -> WorldModelConfig:
    """The `WorldModelConfig` stored in a safetensors file's metadata (`meta`, when already read)."""
    meta = read_metadata(file) if meta is None else meta
    if "config" not in meta:
        raise CheckpointError(f"{file}: no 'config' in the safetensors metadata (not a worldsim export)")
    try:
        return WorldModelConfig.from_json(meta["config"])
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: bad 'config' metadata ({e})") from e


_LOADED: dict[tuple[str, str, str], WorldModel] = {}


def inference_dtype(device: str | torch.device) -> torch.dtype:
    """The fastest dtype that keeps rollout quality: bf16 on CUDA, and on CPUs whose oneDNN has bf16
    kernels (AVX512-BF16 / AMX; measured on 2 cores: about 1.3x faster per step, PSNR within 0.05 dB
    of fp32 at horizon 12); fp32 elsewhere, where bf16 would be emulated and slow."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
    return torch.float32


def recorded_lineage(recorded: Mapping[str, object]) -> tuple[str | None, str | None]:
    """(stage, dynamics_stage) from what a checkpoint records of itself (its metadata, meta.json or its
    dict): the training stage that made the weights and the one that trained the dynamics (a decoder
    stage keeps its source's). A missing or non-string entry reads as unrecorded (None), and
    dynamics_stage defaults to stage."""
    stage, dynamics_stage = recorded.get("stage"), recorded.get("dynamics_stage")
    stage = stage if isinstance(stage, str) else None
    return stage, dynamics_stage if isinstance(dynamics_stage, str) else stage


def load_shared(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    compile: bool = False,
) -> WorldModel:
    """`WorldModel.from_pretrained`, loaded once per (file, device, dtype) and shared: many envs, app
    sessions or vector envs hold their own `Rollout` (KV cache) over one set of weights.
    dtype None: `inference_dtype(device)`. `compile`: `torch.compile` the dynamics transformer (static
    shapes; ~20 s at the first step, then ~20% faster CPU steps, measured on 2 cores), and on CUDA the
    decoder too: at batch 256 on an H100 10.1 ms eager, 5.8 ms compiled (3.8 with mode="max-autotune",
    which costs minutes of autotuning at the first step of each batch size, so it is not used here;
    `benchmarks/step_breakdown.py --decoder-batch 256`)."""
    dtype = inference_dtype(device) if dtype is None else dtype
    file = resolve_weights(path).resolve()
    key = (str(file), str(torch.device(device)), str(dtype), compile)
    if key not in _LOADED:
        model = WorldModel.from_pretrained(file, device=device, dtype=dtype)
        if compile:
            # One compiled graph per call shape: each batch size (and partial-reset size), masked and
            # unmasked passes, commit passes. Dynamo's default limit (8) would drop later ones to eager.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            model.dynamics.compile(dynamic=False)
            if torch.device(device).type == "cuda":
                model.tokenizer.decoder.compile(dynamic=False)
        _LOADED[key] = model
    return _LOADED[key]


def best_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
