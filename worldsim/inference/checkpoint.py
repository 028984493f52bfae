"""Load a world model from any exported format: a safetensors bundle (file or folder) or a converted `.pt`.

`worldsim-convert` writes `model.pt`, `model_ema_fp32.pt` and `model_ema_bf16.pt` as plain dicts
`{"model": state_dict, "config": WorldModelConfig JSON, ["ema": state_dict]}`; they are read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers, so loading
never runs code. When a `.pt` holds EMA weights, those are used (the weights Cosmos recommends for
inference). bf16 weights are cast to the dtype asked for.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from worldsim.models.config import WorldModelConfig
from worldsim.models.world_model import WEIGHTS_NAME, CheckpointError, WorldModel


def load_model(
    path: str | os.PathLike | None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WorldModel:
    """A `.pt` file, a safetensors bundle file or folder, or None (the bundled model), in eval mode."""
    if path is not None and Path(path).suffix == ".pt":
        return load_converted(path, device=device, dtype=dtype)
    if path is not None and Path(path).is_dir() and not (Path(path) / WEIGHTS_NAME).exists():
        converted = sorted(p.name for p in Path(path).glob("*.pt"))
        if converted:
            raise CheckpointError(
                f"{path}: no {WEIGHTS_NAME} here; pass one of the converted files instead: {converted} "
                "(model_ema_bf16.pt is the one meant for inference)"
            )
    return WorldModel.from_pretrained(path, device=device, dtype=dtype)


def load_converted(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WorldModel:
    """A `worldsim-convert` `.pt` file: config from its "config" entry, weights from "ema" or "model"."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True): it holds pickled objects, not a plain "
            f"state dict (worldsim never unpickles code) ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(obj, dict) or "config" not in obj or not ({"model", "ema"} & set(obj)):
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not a worldsim-convert checkpoint: expected a dict with 'config' and 'model' "
            f"(or 'ema'), got {keys}"
        )
    try:
        cfg = WorldModelConfig.from_json(obj["config"])
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: bad 'config' entry ({e})") from e
    entry = "ema" if "ema" in obj else "model"
    state = obj[entry]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: entry {entry!r} is not a state dict of tensors")
    model = WorldModel(cfg)
    model.set_lineage(obj)
    missing, unexpected = model.load_state_dict(state, strict=False)  # copies cast bf16 -> model dtype
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: {entry!r} weights do not match config {cfg.name!r} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device=device, dtype=dtype).eval()


__all__ = ["load_model", "load_converted"]
