"""`worldsim-infer`: roll a world model out over Bridge episodes, as Cosmos-Predict2.5's action-conditioned inference.

    worldsim-infer -i inference_params.json -o outputs/ [--checkpoint-path model_ema_bf16.pt] [--device auto]

The params file is Cosmos's schema (see worldsim/inference/params.py for what each key does here).
Every selected annotation is rolled out from its frame `start_frame_idx` with its own actions, by one
`Rollout` for the whole episode: where Cosmos restarts each 12-action chunk from the decoded last
frame, chunk k+1 here continues from chunk k's KV cache (nothing is re-encoded), so `single_chunk`
only cuts the action list at `chunk_size`. The actions are the Bridge formula (worldsim/data/actions.py)
on the `state_key` states, pose * action_scaler; the gripper column follows the checkpoint's
`gripper_signal`, the signal the model was trained on: "state" reads `gripper_key` (Cosmos's choice),
"command" is 1 - the JSON action's gripper; then * gripper_scale.

Outputs, at the model's resolution, in OUT_DIR/<name>/ (OUT_DIR defaults to the params' save_root):
    <stem>.mp4        prediction | ground truth, side by side; frame 0 is the start frame as the
                      tokenizer reconstructs it, then one frame per action
    <stem>_pred.mp4   the prediction alone
    <stem>.json       per-frame PSNR (dB) against ground truth, and that of the copy-the-start-frame baseline
    summary.json      per-episode means, mean PSNR per horizon across episodes, the params, the checkpoint

`--experiment NAME` is accepted for Cosmos's command line and recorded in summary.json; it does not
pick weights (converted checkpoints have no fixed location): pass --checkpoint-path, or get the
bundled model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from worldsim.data.actions import env_action_to_model, relative_pose_actions
from worldsim.data.bridge import BridgeFormatError, load_episode
from worldsim.data.dataset import resize_frames
from worldsim.data.video import VideoError, write_video
from worldsim.eval.metrics import frame_psnr
from worldsim.inference.checkpoint import load_model
from worldsim.inference.params import InferenceParams, ParamsError, ParamsWarning, load_params
from worldsim.models.config import WorldModelConfig
from worldsim.models.world_model import CheckpointError, WorldModel, best_device

COSMOS_GRIPPER_KEY = "continuous_gripper_state"


@dataclass
class RolloutInput:
    """What one rollout needs, at the model's resolution."""

    name: str  # output file stem
    start_frame: np.ndarray  # (H, W, 3) uint8
    actions: np.ndarray  # (N, 7) float32 model actions (scaled, gripper 1 = closed)
    ground_truth: np.ndarray | None  # (N + 1, H, W, 3) uint8, frame 0 = start frame; None for image input
    source: dict[str, Any]  # where the input came from, for the JSON


# ------------------------------------------------------------------------------------------- inputs
def select_annotations(params: InferenceParams) -> list[Path]:
    """The annotation JSONs [start:end) of input_root/input_json_sub_folder, sorted naturally."""
    folder = params.json_folder
    files = sorted(folder.glob("*.json"), key=_natural_key)
    if not files:
        raise ParamsError(f"{params.source}: key 'input_json_sub_folder': no *.json annotations in {folder}")
    selected = files[params.start : params.end]
    if not selected:
        raise ParamsError(
            f"{params.source}: key 'start': start={params.start}, end={params.end} select no annotation "
            f"({len(files)} in {folder})"
        )
    return selected


def episode_input(json_path: Path, params: InferenceParams, cfg: WorldModelConfig) -> RolloutInput:
    """Frames and actions of one annotation, downsampled, cut at start_frame_idx and single_chunk."""
    ep = load_episode(
        json_path, params.input_root, allow_missing_gripper_state=params.gripper_key != COSMOS_GRIPPER_KEY
    )
    raw = json.loads(json_path.read_text())
    ep = dataclasses.replace(ep, video_path=_camera_video(raw, json_path, params))
    state = ep.state if params.state_key == "state" else _series(raw, params.state_key, json_path, ndim=2)
    if params.gripper_key == COSMOS_GRIPPER_KEY:
        closure = ep.continuous_gripper_state
    else:
        closure = _series(raw, params.gripper_key, json_path, ndim=1)
    if len(state) != ep.num_frames or len(closure) != ep.num_frames:
        raise BridgeFormatError(
            f"{json_path}: keys '{params.state_key}' and '{params.gripper_key}' must have one row per frame "
            f"(T={ep.num_frames}), got {len(state)} and {len(closure)}"
        )
    keep = np.arange(0, ep.num_frames, params.fps_downsample_ratio)  # frame indices after downsampling
    actions = downsampled_actions(state, closure, ep.action, keep, cfg.gripper_signal, params)
    first = params.start_frame_idx
    if first >= len(actions):
        raise BridgeFormatError(
            f"{json_path}: start_frame_idx={first} leaves no action: the episode has {len(keep)} frames "
            f"after fps_downsample_ratio={params.fps_downsample_ratio}"
        )
    actions = actions[first:]
    if params.single_chunk:
        actions = actions[: params.chunk_size]
    frames = ep.frames()[keep[first : first + len(actions) + 1]]  # (N + 1, H0, W0, 3)
    frames = np.ascontiguousarray(resize_frames(frames, (cfg.height, cfg.width)).transpose(0, 2, 3, 1))
    source = {"annotation": str(json_path), "source_video": str(ep.video_path), "episode_id": ep.episode_id}
    return RolloutInput(json_path.stem, frames[0], actions, frames, source)  # frames: (N + 1, H, W, 3)


def downsampled_actions(
    state: np.ndarray,
    closure: np.ndarray,
    json_action: np.ndarray,
    keep: np.ndarray,
    gripper_signal: str,
    params: InferenceParams,
) -> np.ndarray:
    """(len(keep) - 1, 7) float32 model actions between the kept frames.

    Pose: the Bridge formula on the kept states, * action_scaler. Gripper (1 = closed) of each target
    frame, * gripper_scale: its closure (`state` signal, Cosmos) or the last command that led to it,
    1 - JSON action[:, 6] (`command` signal).
    """
    pose = relative_pose_actions(state[keep]) * params.action_scaler  # (N, 6)
    target = keep[1:]
    grip = closure[target] if gripper_signal == "state" else 1.0 - json_action[target - 1, 6]
    return np.concatenate([pose, grip[:, None] * params.gripper_scale], axis=1).astype(np.float32)


def image_input(params: InferenceParams, cfg: WorldModelConfig) -> RolloutInput:
    """A start image and env actions (Bridge JSON convention) from the params' `image` + `actions`."""
    try:
        with Image.open(params.image) as im:
            image = np.array(im.convert("RGB"))  # writable: resize_frames hands it to torch
    except OSError as e:
        raise ParamsError(f"{params.source}: key 'image': cannot read {params.image} ({e})") from e
    frame = resize_frames(image[None], (cfg.height, cfg.width)).transpose(0, 2, 3, 1)[0]
    actions = env_action_to_model(np.asarray(params.actions), params.action_scaler)
    actions[:, 6] *= params.gripper_scale
    if params.single_chunk:
        actions = actions[: params.chunk_size]
    source = {"image": str(params.image)}
    return RolloutInput(Path(params.image).stem, np.ascontiguousarray(frame), actions, None, source)


def _camera_video(raw: dict, json_path: Path, params: InferenceParams) -> Path:
    """input_root / videos[camera_id] (a {"video_path": ...} dict or a plain path, as Cosmos reads it)."""
    videos = raw.get("videos")
    if not isinstance(videos, list) or params.camera_id >= len(videos):
        n = len(videos) if isinstance(videos, list) else 0
        raise BridgeFormatError(f"{json_path}: field 'videos': camera_id={params.camera_id} but {n} video(s)")
    entry = videos[params.camera_id]
    rel = entry.get("video_path") if isinstance(entry, dict) else entry
    if not isinstance(rel, str):
        raise BridgeFormatError(f"{json_path}: field 'videos[{params.camera_id}]': no video path")
    path = params.input_root / rel
    if not path.is_file():
        raise BridgeFormatError(f"{json_path}: field 'videos[{params.camera_id}]': video not found: {path}")
    return path


def _series(raw: dict, key: str, json_path: Path, ndim: int) -> np.ndarray:
    """A finite float array raw[key] of `ndim` dims ((T, >=6) states or (T,) gripper closures)."""
    if key not in raw:
        raise BridgeFormatError(f"{json_path}: missing field '{key}' (named by the params)")
    try:
        arr = np.asarray(raw[key], dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise BridgeFormatError(f"{json_path}: field '{key}': not a numeric array ({e})") from e
    if arr.ndim != ndim or (ndim == 2 and arr.shape[1] < 6) or not np.isfinite(arr).all():
        want = "(T, >=6) finite states" if ndim == 2 else "(T,) finite values"
        raise BridgeFormatError(f"{json_path}: field '{key}': expected {want}, got shape {arr.shape}")
    return arr


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


# ------------------------------------------------------------------------------------------ rollout
def roll_out(model: WorldModel, params: InferenceParams, item: RolloutInput) -> np.ndarray:
    """(N + 1, H, W, 3) uint8: the reconstructed start frame, then one predicted frame per action."""
    rollout = model.rollout(
        batch_size=1,
        denoise_steps=params.denoise_steps,
        num_context_frames=params.num_context_frames,
        guidance=params.action_guidance,
        seed=params.seed,
    )
    rollout.reset(item.start_frame[None])
    frames = [rollout.decode()[0]]
    for action in item.actions:
        frames.append(rollout.step(action[None], env_convention=False)[0])
    return np.stack(frames)


def check_against_model(params: InferenceParams, cfg: WorldModelConfig) -> None:
    """Warn where the params ask for something the model was not trained with."""
    where = params.source
    if params.resolution_hw not in (None, (cfg.height, cfg.width)):
        h, w = params.resolution_hw
        warnings.warn(
            f"{where}: resolution {h},{w} differs from the model's {cfg.height},{cfg.width}: frames are "
            f"resized to the model's resolution and the outputs are written at it",
            ParamsWarning,
            stacklevel=2,
        )
    if params.action_scaler != cfg.action_scaler:
        warnings.warn(
            f"{where}: action_scaler {params.action_scaler} differs from the {cfg.action_scaler} the model "
            "was trained with",
            ParamsWarning,
            stacklevel=2,
        )
    if cfg.gripper_signal == "command" and params.gripper_key != COSMOS_GRIPPER_KEY:
        warnings.warn(
            f"{where}: gripper_key {params.gripper_key!r} is unused: this model was trained on the "
            "commanded gripper (1 - JSON action[:, 6])",
            ParamsWarning,
            stacklevel=2,
        )
    if params.num_context_frames is not None and params.num_context_frames > cfg.num_context_frames:
        warnings.warn(
            f"{where}: num_context_frames {params.num_context_frames} > the {cfg.num_context_frames} the "
            "model was trained with",
            ParamsWarning,
            stacklevel=2,
        )


def run(params: InferenceParams, out_dir: str | Path, model: WorldModel, checkpoint: str = "") -> dict:
    """Roll out every input of `params`, write the videos and JSONs; returns the summary."""
    cfg = model.cfg
    check_against_model(params, cfg)
    out = Path(out_dir) / params.name
    out.mkdir(parents=True, exist_ok=True)
    inputs = select_annotations(params) if params.image is None else [None]
    episodes = []
    for json_path in tqdm(inputs, desc=f"worldsim-infer {params.name}", unit="ep"):
        item = image_input(params, cfg) if json_path is None else episode_input(json_path, params, cfg)
        predicted = roll_out(model, params, item)
        record = {"episode": item.name, **item.source, "num_predicted_frames": len(item.actions)}
        write_video(predicted, out / f"{item.name}_pred.mp4", fps=params.save_fps)
        record["prediction_video"] = str(out / f"{item.name}_pred.mp4")
        if item.ground_truth is not None:
            gt = item.ground_truth
            write_video(
                np.concatenate([predicted, gt], axis=2), out / f"{item.name}.mp4", fps=params.save_fps
            )
            scores = [frame_psnr(p, g) for p, g in zip(predicted[1:], gt[1:])]
            record.update(
                comparison_video=str(out / f"{item.name}.mp4"),
                psnr=scores,
                mean_psnr=float(np.mean(scores)),
                copy_start_frame_psnr=[frame_psnr(gt[0], g) for g in gt[1:]],
            )
        (out / f"{item.name}.json").write_text(json.dumps(record, indent=2))
        episodes.append(record)
    summary = _summary(params, cfg, checkpoint, episodes)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _summary(params: InferenceParams, cfg: WorldModelConfig, checkpoint: str, episodes: list[dict]) -> dict:
    scored = [e["psnr"] for e in episodes if "psnr" in e]
    horizon = max((len(s) for s in scored), default=0)
    per_horizon = [[s[h] for s in scored if len(s) > h] for h in range(horizon)]
    params_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(params).items()}
    return {
        "name": params.name,
        "checkpoint": checkpoint,
        "model": cfg.name,
        "resolution": [cfg.height, cfg.width],
        "action_guidance": params.action_guidance,
        "num_episodes": len(episodes),
        "mean_psnr": float(np.mean([np.mean(s) for s in scored])) if scored else None,
        "psnr_per_horizon": [float(np.mean(v)) for v in per_horizon],  # index h: frame h + 1 after the start
        "episodes_per_horizon": [len(v) for v in per_horizon],
        "episodes": [
            {"episode": e["episode"], "mean_psnr": e.get("mean_psnr"), "frames": e["num_predicted_frames"]}
            for e in episodes
        ],
        "params": params_json,
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `worldsim-infer` console script."""
    parser = argparse.ArgumentParser(prog="worldsim-infer", description=__doc__.split("\n")[0])
    parser.add_argument(
        "-i", "--input-file", type=Path, required=True, help="inference_params.json (Cosmos schema)"
    )
    parser.add_argument(
        "-o", "--output-dir", type=Path, default=None, help="output root (default: save_root)"
    )
    parser.add_argument(
        "--checkpoint-path",
        default=None,
        help="converted .pt, safetensors file or bundle folder (default: the bundled model)",
    )
    parser.add_argument("--experiment", default=None, help="recorded only (Cosmos compatibility)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use auto or cpu)")
    try:
        params = load_params(args.input_file)
        if args.experiment and args.checkpoint_path is None:
            warnings.warn(
                f"--experiment {args.experiment!r} does not select weights; using the bundled model "
                "(pass --checkpoint-path for a converted checkpoint)",
                ParamsWarning,
                stacklevel=1,
            )
        model = load_model(args.checkpoint_path, device=best_device(args.device))
        label = str(args.checkpoint_path or "bundled") + (
            f" (experiment {args.experiment})" if args.experiment else ""
        )
        summary = run(params, args.output_dir or params.save_root, model, checkpoint=label)
    except (ParamsError, CheckpointError, BridgeFormatError, VideoError) as e:
        hint = (
            " [use --checkpoint-path]" if isinstance(e, CheckpointError) and not args.checkpoint_path else ""
        )
        raise SystemExit(f"worldsim-infer: error: {e}{hint}") from e
    out = Path(args.output_dir or params.save_root) / params.name
    mean = summary["mean_psnr"]
    print(
        f"wrote {summary['num_episodes']} rollouts to {out}"
        + (f"; mean PSNR {mean:.2f} dB" if mean is not None else "")
    )


if __name__ == "__main__":
    main()
