"""`load_path=...`: initial model weights from another run, checked against the new model before any work.

Accepted sources:
- a DCP checkpoint of worldsim-train: its `iter_*` folder, the `model` folder inside it, or a job's
  `checkpoints` folder (its latest complete checkpoint);
- a worldsim safetensors export (`model.safetensors` or its folder, config in the metadata);
- a converted `.pt` (`torch.load(weights_only=True)`): a state dict, or a dict with "model" / "ema".
Model weights only (no optimiser, step or data position). When an action post-training starts from a
tokenizer or video2world checkpoint, `dynamics.action_embed.*` is dropped and stays zero-initialised
(so the model starts exactly as the video2world one). When a decoder stage's model has another decoder
shape than the source (`model.overrides.decoder_channels`: a lighter decoder for faster frames), the decoder
starts fresh and everything else is loaded: the encoder's latents, which the dynamics knows, stay as they
are. Other shape mismatches raise `LoadPathError` naming the file and the first offending tensors.

`tokenizer_path=...` takes the tokenizer's tensors (`tokenizer.*`, its latent statistics included) from a
second source of the same kinds (a file holding only `tokenizer.*` will do): a newly trained tokenizer under
the dynamics of `load_path` (whose own tokenizer is then not read, so it may even differ in shape), or the
tokenizer a tokenizer stage trains on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from worldsim.models.config import WorldModelConfig
from worldsim.models.world_model import WorldModel, recorded_lineage
from worldsim.train.checkpoint import LATEST

ACTION_PREFIX = "dynamics.action_embed."
TOKENIZER_PREFIX = "tokenizer."
DECODER_PREFIX = "tokenizer.decoder."


def _named(path: Path, part: str) -> str:
    """How errors name a source: by the config key it came from, `load_path=` or `tokenizer_path=`."""
    key = "tokenizer_path" if part == "tokenizer" else "load_path"
    return f"{key}={str(path)!r}"


class LoadPathError(ValueError):
    """load_path is missing, unreadable or does not fit the model; the message names the path."""


@dataclass
class InitialWeights:
    """Where each of the new model's tensors comes from in a `load_path`, already shape-checked."""

    path: Path
    kind: str  # "dcp" | "safetensors" | "pt"
    source_stage: str | None
    keys: dict[str, str]  # model key -> key in the source
    dropped: list[str] = field(default_factory=list)
    part: str = "all"  # which of the model's tensors it gives: all | tokenizer | no_tokenizer
    fresh: str = ""  # what the dropped tensors are, for the log: "action layers" | "decoder"
    # The source's model config (None where it records none) and the stage that trained its dynamics
    # (a decoder stage keeps its source's dynamics, so it keeps this too)
    source_config: dict | None = None
    source_dynamics_stage: str | None = None

    def load_into(self, model: WorldModel) -> None:
        """Copy the weights into a plain (unsharded) model."""
        if self.kind == "dcp":
            state = {
                src: torch.empty(shape)
                for src, shape in self._dcp_shapes().items()
                if src in self.keys.values()
            }
            dcp.load(state, checkpoint_id=self.path, no_dist=True)
        elif self.kind == "safetensors":
            state = load_file(str(self.path))
        else:
            state = _pt_state(self.path, self.part)
        ours = model.state_dict()
        with torch.no_grad():
            for name, src in self.keys.items():
                ours[name].copy_(state[src].to(ours[name].dtype))

    def _dcp_shapes(self) -> dict[str, tuple[int, ...]]:
        return _dcp_shapes(self.path)


def _dcp_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {k: tuple(m.size) for k, m in meta.items() if isinstance(m, TensorStorageMetadata)}


def _pt_state(path: Path, part: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise LoadPathError(f"{_named(path, part)}: cannot read .pt weights ({e})") from e
    if not isinstance(obj, dict):
        raise LoadPathError(f"{_named(path, part)}: expected a dict of tensors, got {type(obj).__name__}")
    flat: dict[str, torch.Tensor] = {}
    for k, v in obj.items():  # {"model": {...}, "ema": {...}} or a plain state dict
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, torch.Tensor)})
        elif isinstance(v, torch.Tensor):
            flat[k] = v
    return flat


def _resolve(path: Path, part: str) -> tuple[Path, str]:
    if not path.exists():
        raise LoadPathError(f"{_named(path, part)}: no such file or folder")
    if path.is_dir():
        if (path / LATEST).is_file():  # a job's checkpoints folder
            path = path / (path / LATEST).read_text().strip()
        if (path / "model" / ".metadata").is_file():
            path = path / "model"
        if (path / ".metadata").is_file():
            return path, "dcp"
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors", "safetensors"
        raise LoadPathError(
            f"{_named(path, part)}: a folder without a DCP checkpoint (.metadata) or model.safetensors"
        )
    if path.suffix == ".safetensors":
        return path, "safetensors"
    if path.suffix in (".pt", ".pth"):
        return path, "pt"
    raise LoadPathError(f"{_named(path, part)}: expected a DCP folder, .safetensors or .pt file")


def _source(path: Path, kind: str, part: str) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Shapes of every tensor in the source, and what it records of itself: its training stage, the stage
    that trained its dynamics and its model config (each None where it records none)."""
    try:
        if kind == "dcp":
            meta_file = path.parent / "meta.json"
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
            shapes, config = _dcp_shapes(path), meta.get("model_config")
        elif kind == "safetensors":
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                meta = f.metadata() or {}
            config = json.loads(meta["config"]) if "config" in meta else None
        else:  # a .pt state records neither
            shapes, meta, config = {k: tuple(v.shape) for k, v in _pt_state(path, part).items()}, {}, None
        stage, dynamics_stage = recorded_lineage(meta)
        return shapes, {"stage": stage, "dynamics_stage": dynamics_stage, "config": config}
    except LoadPathError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable metadata of any kind
        raise LoadPathError(f"{_named(path, part)}: cannot read checkpoint metadata ({e})") from e


def inspect_load_path(
    load_path: str, cfg: WorldModelConfig, stage: str, use_ema: bool, part: str = "all"
) -> InitialWeights:
    """Resolve `load_path` and map and shape-check every tensor of a `WorldModel(cfg)`; reads no weights.

    part: "all" tensors, "tokenizer" (only `tokenizer.*`: a `tokenizer_path`, so named in errors) or
    "no_tokenizer" (all but those: a `load_path` beside a `tokenizer_path`).
    """
    path, kind = _resolve(Path(load_path), part)
    shapes, recorded = _source(path, kind, part)
    source_stage, source_cfg = recorded["stage"], recorded["config"]
    if source_cfg is not None and source_cfg.get("heads") not in (None, cfg.heads):
        raise LoadPathError(
            f"{_named(path, part)}: saved with heads={source_cfg['heads']}, the model has heads={cfg.heads}"
        )
    if stage == "distill" and source_stage in ("tokenizer", "video2world"):
        raise LoadPathError(
            f"{_named(path, part)}: a {source_stage} checkpoint; stage=distill needs a trained action model "
            "(stage action or distill) as its teacher"
        )
    with torch.device("meta"):
        target = {k: tuple(v.shape) for k, v in WorldModel(cfg).state_dict().items()}
    drop_actions = stage == "action" and source_stage in ("tokenizer", "video2world")
    candidates_of = (lambda n: [f"ema.{n}", f"model.{n}", n]) if use_ema else (lambda n: [f"model.{n}", n])
    # A decoder stage whose decoder has another shape than the source's: a fresh decoder of that shape
    fresh_decoder = stage == "decoder" and any(
        next((shapes[c] for c in candidates_of(name) if c in shapes), None) != shape
        for name, shape in target.items()
        if name.startswith(DECODER_PREFIX)
    )
    keys: dict[str, str] = {}
    dropped, missing, mismatched = [], [], []
    for name, shape in target.items():
        if part != "all" and name.startswith(TOKENIZER_PREFIX) != (part == "tokenizer"):
            continue
        if (drop_actions and name.startswith(ACTION_PREFIX)) or (
            fresh_decoder and name.startswith(DECODER_PREFIX)
        ):
            dropped.append(name)
            continue
        src = next((c for c in candidates_of(name) if c in shapes), None)
        if src is None:
            missing.append(name)
        elif shapes[src] != shape:
            mismatched.append(f"{name}: checkpoint {list(shapes[src])} vs model {list(shape)}")
        else:
            keys[name] = src
    if missing or mismatched:
        raise LoadPathError(
            f"{_named(path, part)} does not fit model preset {cfg.name!r}: "
            + (f"{len(mismatched)} shape mismatches ({'; '.join(mismatched[:3])}) " if mismatched else "")
            + (f"{len(missing)} missing tensors ({', '.join(missing[:3])})" if missing else "")
        )
    fresh = "decoder" if fresh_decoder else "action layers" if dropped else ""
    return InitialWeights(
        path, kind, source_stage, keys, dropped, part, fresh, source_cfg, recorded["dynamics_stage"]
    )
