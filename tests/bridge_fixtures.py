"""Hand-made Bridge episodes for the data tests: tiny h264 videos plus consistent annotation JSON.

Frame t has a flat background of brightness `frame_level(t)` and a coloured square, so a test can
tell which source frame a decoded (and resized) frame came from by its mean brightness.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.actions import relative_pose_actions
from worldsim.data.video import write_video


def frame_level(t: int) -> int:
    """Background brightness of frame t (distinct per frame, far apart so h264 keeps them apart)."""
    return 16 + (37 * t) % 224


def make_frames(T: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(T, H, W, 3) uint8: per-frame background level plus a red square that moves right."""
    H, W = size
    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    s = max(4, H // 4)
    for t in range(T):
        frames[t] = frame_level(t)
        x0 = (4 * t) % max(1, W - s)
        frames[t, H // 2 - s // 2 : H // 2 + s // 2, x0 : x0 + s] = (230, 30, 30)
    return frames


def make_annotation(T: int, seed: int = 0, episode_id: Any = 0) -> dict[str, Any]:
    """A consistent annotation: smooth random end-effector path, JSON actions derived from it.

    The gripper closes half way through: continuous_gripper_state (1 = closed) steps 0 -> 1, and the
    JSON action's gripper column (1 = open) is its complement on the target frame.
    """
    rng = np.random.default_rng(seed)
    state = np.zeros((T, 7))
    state[0, :3] = [0.3, 0.0, 0.1]
    state[1:, :3] = state[0, :3] + np.cumsum(rng.normal(0, 0.01, (T - 1, 3)), axis=0)
    state[:, 3:6] = np.cumsum(rng.normal(0, 0.05, (T, 3)), axis=0)
    grip = (np.arange(T) >= T // 2).astype(np.float64)
    state[:, 6] = grip
    action = np.concatenate([relative_pose_actions(state), (1.0 - grip[1:])[:, None]], axis=1)
    return {
        "texts": ["put the red block in the bowl"],
        "episode_id": episode_id,
        "state": state.tolist(),
        "continuous_gripper_state": grip.tolist(),
        "action": action.tolist(),
        "task": "place",
        "success": True,
    }


def write_episode(
    root: Path,
    episode_id: int | str = 0,
    T: int = 6,
    layout: str = "irasim",
    split: str = "train",
    size: tuple[int, int] = (48, 64),
    video_frames: int | None = None,
    video_key: bool = True,
    seed: int = 0,
    frames: np.ndarray | None = None,
    **fields: Any,
) -> Path:
    """Write one episode under `root` in `layout` ("irasim" or "flat"); returns the JSON path.

    `video_frames` writes a video of a different length than T; `video_key=False` omits `videos`
    (flat layout then uses videos/<id>.mp4); extra keyword arguments replace JSON fields.
    """
    root = Path(root)
    ann = make_annotation(T, seed=seed, episode_id=episode_id)
    if layout == "irasim":
        rel_video = f"videos/{split}/{episode_id}/rgb.mp4"
        json_path = root / "annotation" / split / f"{episode_id}.json"
    elif layout == "flat":
        rel_video = f"videos/{episode_id}.mp4"
        json_path = root / "annotations" / f"{episode_id}.json"
    else:
        raise ValueError(layout)
    if frames is None:
        frames = make_frames(video_frames if video_frames is not None else T, size)
    write_video(frames, root / rel_video)
    if video_key:
        ann["videos"] = [{"video_path": rel_video}]
    ann.update(fields)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(ann))
    return json_path


def rewrite_json(json_path: Path, **changes: Any) -> None:
    """Replace fields of an annotation in place; a value of `DELETE` removes the key."""
    data = json.loads(json_path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    json_path.write_text(json.dumps(data))


DELETE = object()
