"""`worldsim-convert`: a DCP training checkpoint -> plain weight files and a bundle to ship.

    worldsim-convert JOB/checkpoints/iter_000001000/model OUT_DIR [--start-frames DATA_ROOT --split val]

writes, as Cosmos-Predict2.5's converter does:
    OUT_DIR/model.pt             {"model": weights, "ema": EMA weights, "config": json, "stage": str,
                                  "dynamics_stage": str (the stage that trained the dynamics)}
    OUT_DIR/model_ema_fp32.pt    {"model": EMA weights (fp32), "config": json, "stage": str, "dynamics_stage": str}
    OUT_DIR/model_ema_bf16.pt    the same in bf16 (recommended for inference)
    OUT_DIR/bundle/model.safetensors (+ start_frames.npz)   EMA weights with the config in the metadata:
                                 what `WorldModel.from_pretrained`, BridgeWorld-v0 and the app load.
Every `.pt` holds only tensors and strings, so `torch.load(path, weights_only=True)` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from worldsim.atomic import atomic_write
from worldsim.models.config import WorldModelConfig
from worldsim.models.world_model import WorldModel


class ConvertError(ValueError):
    """The checkpoint folder is not a complete worldsim DCP checkpoint; the message names it."""


def read_checkpoint(model_dir: Path) -> tuple[dict, dict, WorldModelConfig, dict[str, str]]:
    """(weights, EMA weights, config, lineage) of `iter_X/model` (the folder or its parent iter_X); lineage:
    the training stage and the stage that trained the dynamics (a decoder stage keeps its source's)."""
    model_dir = Path(model_dir)
    if (model_dir / "model" / ".metadata").is_file():
        model_dir = model_dir / "model"
    if not (model_dir / ".metadata").is_file():
        raise ConvertError(
            f"{model_dir}: not a DCP checkpoint folder (no .metadata); pass JOB/checkpoints/iter_*/model"
        )
    meta = read_checkpoint_meta(model_dir)
    cfg = WorldModelConfig.from_json(meta["model_config"])
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(model_dir), f"{tmp}/state.pt")
        state = torch.load(f"{tmp}/state.pt", map_location="cpu", weights_only=True)
    if "model" not in state:
        raise ConvertError(f"{model_dir}: checkpoint has no 'model' entry")
    weights = state["model"]
    # The EMA covers parameters only; buffers (latent statistics) come from the live weights.
    ema = {**weights, **state.get("ema", {})}
    stage = str(meta.get("stage", "action"))
    return weights, ema, cfg, {"stage": stage, "dynamics_stage": str(meta.get("dynamics_stage", stage))}


def start_frames_from(
    data_root: Path, split: str, cfg: WorldModelConfig, count: int
) -> dict[str, np.ndarray]:
    """First frames (resized to the model) and states of up to `count` episodes: reset states for the env."""
    from worldsim.data.bridge import load_split
    from worldsim.data.dataset import resize_frames

    episodes = load_split(data_root, split)[:count]
    if not episodes:
        raise ConvertError(f"{data_root}: no episodes in split {split!r} for start frames")
    images = [
        resize_frames(ep.frames()[:1], (cfg.height, cfg.width))[0].transpose(1, 2, 0) for ep in episodes
    ]
    ee = [np.concatenate([ep.state[0, :6], [ep.continuous_gripper_state[0]]]) for ep in episodes]
    return {
        "images": np.stack(images).astype(np.uint8),
        "ee_states": np.stack(ee).astype(np.float32),
        "instructions": np.array([ep.texts[0] if ep.texts else "" for ep in episodes], dtype=np.str_),
    }


def convert(
    model_dir: Path, out_dir: Path, start_frames: dict[str, np.ndarray] | None = None
) -> dict[str, Path]:
    """Write the files listed in the module docstring; returns them by name."""
    weights, ema, cfg, lineage = read_checkpoint(model_dir)
    model = WorldModel(cfg)
    missing, unexpected = model.load_state_dict(ema, strict=False)
    if missing or unexpected:
        raise ConvertError(
            f"{model_dir}: weights do not match config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = cfg.to_json()
    files = {
        "model.pt": {"model": weights, "ema": ema, "config": config, **lineage},
        "model_ema_fp32.pt": {"model": {k: v.float() if v.is_floating_point() else v for k, v in ema.items()},
                              "config": config, **lineage},
        "model_ema_bf16.pt": {"model": {k: v.bfloat16() if v.is_floating_point() else v for k, v in ema.items()},
                              "config": config, **lineage},
    }  # fmt: skip
    written = {}
    for name, obj in files.items():
        atomic_write(out_dir / name, lambda tmp, obj=obj: torch.save(obj, tmp))
        written[name] = out_dir / name
    bundle = model.save_pretrained(out_dir / "bundle", start_frames=start_frames, extra_metadata=lineage)
    written["bundle"] = bundle
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="worldsim-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="JOB/checkpoints/iter_XXXXXXXXX/model (DCP folder)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--start-frames", type=Path, default=None, help="Bridge-format data root for start frames"
    )
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-start-frames", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        cfg = WorldModelConfig.from_json(read_checkpoint_meta(args.checkpoint)["model_config"])
        starts = (
            start_frames_from(args.start_frames, args.split, cfg, args.num_start_frames)
            if args.start_frames
            else None
        )
        written = convert(args.checkpoint, args.out_dir, starts)
    except (ConvertError, ValueError, OSError) as e:
        print(f"worldsim-convert: error: {e}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def read_checkpoint_meta(model_dir: Path) -> dict:
    """meta.json of a DCP checkpoint (`iter_X` or its `model` folder): stage, iteration, model config."""
    model_dir = Path(model_dir)
    folder = model_dir if (model_dir / "meta.json").is_file() else model_dir.parent
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise ConvertError(f"{meta_file}: missing (pass JOB/checkpoints/iter_*/model)")
    return json.loads(meta_file.read_text())


if __name__ == "__main__":
    sys.exit(main())
