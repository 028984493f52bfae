"""Read Bridge annotations in the IRASim layout (as Cosmos-Predict2.5 reads them) or the seed's flat one.

Layouts (see DESIGN.md, "Data"):

    irasim:  ROOT/annotation/{train,val,test}/<id>.json  + the video path inside the JSON
             (`videos[0].video_path`, relative to ROOT, e.g. `videos/val/0/rgb.mp4`)
    flat:    ROOT/annotations/*.json + ROOT/videos/*.mp4  (Cosmos's download instructions)

The flat layout has no splits: its one folder is served under any split name (a warning says so
for names other than "train", because then train and val are the same episodes). Its video path is
the JSON's `videos[0].video_path` when present, else `videos/<json stem>.mp4`.

Every problem raises `BridgeFormatError` whose message starts with the offending file and names
the field, so a bad episode among 25k is found from the message alone. Checks on the JSON are
eager (cheap); the video's frame count is checked when frames are decoded (`Episode.frames`,
`validate(episode, check_video=True)`), because decoding every video at index time is slow.

A missing `continuous_gripper_state` is an error by default: old exports lack it, but the 7th
`state` column's convention is not pinned by the format (BridgeData's proprio gripper is an
opening, 1 = open), so a silent fallback could invert the gripper. `allow_missing_gripper_state=True`
falls back to `state[:, 6]` as is, and records `extra["continuous_gripper_state_source"]`.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from worldsim.data.actions import ACTION_DIM, ACTION_SCALER, GripperSignal
from worldsim.data.actions import model_actions as _model_actions
from worldsim.data.video import VideoError, read_video

Layout = Literal["irasim", "flat"]
STATE_DIM = 7  # x, y, z, roll, pitch, yaw, gripper
_KNOWN_KEYS = {"texts", "videos", "state", "continuous_gripper_state", "action", "episode_id"}


class BridgeFormatError(ValueError):
    """A Bridge annotation, its video or a split folder is malformed; the message names file and field."""


@dataclass
class Episode:
    """One annotated Bridge episode: T frames, T states, T-1 actions."""

    json_path: Path
    video_path: Path
    episode_id: str
    texts: list[str]
    state: np.ndarray  # (T, 7) float64: x, y, z, roll, pitch, yaw (world frame), gripper
    continuous_gripper_state: np.ndarray  # (T,) float64, 0 = open, 1 = closed
    action: np.ndarray  # (T-1, 7) float64: JSON action, gripper column 1 = open
    extra: dict[str, Any] = field(default_factory=dict)  # other JSON keys: task, policy, success, ...

    @property
    def num_frames(self) -> int:
        """T, the number of frames (= states)."""
        return int(self.state.shape[0])

    def frames(self) -> np.ndarray:
        """Decode the video to (T, H, W, 3) uint8, checking that it has exactly T frames."""
        try:
            frames = read_video(self.video_path)
        except VideoError as e:
            raise BridgeFormatError(f"{self.json_path}: field 'videos[0].video_path': {e}") from e
        if frames.shape[0] != self.num_frames:
            raise BridgeFormatError(
                f"{self.json_path}: field 'videos[0].video_path': video {self.video_path} has "
                f"{frames.shape[0]} frames but 'state' has T={self.num_frames}"
            )
        return frames

    def model_actions(
        self, signal: GripperSignal = "command", action_scaler: float = ACTION_SCALER
    ) -> np.ndarray:
        """(T-1, 7) float32 actions as the model sees them (scaled pose, gripper 1 = closed)."""
        return _model_actions(
            self.state, self.action, self.continuous_gripper_state, signal=signal, action_scaler=action_scaler
        )


@dataclass
class SkippedEpisode:
    """An annotation that failed to load, and why."""

    json_path: Path
    reason: str


def _natural_key(path: Path) -> list[Any]:
    """Sort key so that "2" < "10": digit runs compare as numbers."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.stem)]


def detect_layout(root: str | Path) -> Layout:
    """The layout of a dataset root: irasim if ROOT/annotation/ exists, else flat if ROOT/annotations/ does."""
    root = Path(root)
    if (root / "annotation").is_dir():
        return "irasim"
    if (root / "annotations").is_dir():
        return "flat"
    raise BridgeFormatError(
        f"{root}: not a Bridge dataset root (expected an 'annotation/<split>/' or 'annotations/' folder)"
    )


def list_splits(root: str | Path) -> list[str]:
    """Split names present under ROOT (the flat layout reports its single folder as "train")."""
    root = Path(root)
    if detect_layout(root) == "flat":
        return ["train"]
    return sorted(p.name for p in (root / "annotation").iterdir() if p.is_dir())


def list_episodes(root: str | Path, split: str) -> list[Path]:
    """Annotation JSON files of a split, sorted naturally by id ("2" < "10")."""
    root = Path(root)
    if detect_layout(root) == "flat":
        folder = root / "annotations"
        if split != "train":
            warnings.warn(
                f"{root}: flat 'annotations/' layout has no splits; serving all its episodes as split "
                f"{split!r} (the same episodes as 'train')",
                stacklevel=2,
            )
    else:
        folder = root / "annotation" / split
        if not folder.is_dir():
            raise BridgeFormatError(f"{folder}: unknown split {split!r}; available: {list_splits(root)}")
    files = sorted((p for p in folder.glob("*.json") if p.is_file()), key=_natural_key)
    if not files:
        raise BridgeFormatError(f"{folder}: split {split!r} is empty (no *.json annotation files)")
    return files


def _infer_root(json_path: Path) -> tuple[Path, Layout]:
    """Dataset root and layout from an annotation's own location."""
    if json_path.parent.parent.name == "annotation":
        return json_path.parents[2], "irasim"
    if json_path.parent.name == "annotations":
        return json_path.parents[1], "flat"
    raise BridgeFormatError(
        f"{json_path}: cannot infer the dataset root from this path (expected .../annotation/<split>/ "
        "or .../annotations/); pass root="
    )


def _array(data: dict, key: str, json_path: Path) -> np.ndarray:
    """A numeric float64 array from data[key], or a BridgeFormatError naming file and field."""
    value = data[key]
    if not isinstance(value, list):
        raise BridgeFormatError(f"{json_path}: field '{key}': expected a list, got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise BridgeFormatError(f"{json_path}: field '{key}': not a rectangular numeric array ({e})") from e
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise BridgeFormatError(f"{json_path}: field '{key}': non-finite value (NaN/inf) at index {bad}")
    return arr


def _video_path(data: dict, json_path: Path, root: Path, layout: Layout) -> Path:
    """The episode's video: `videos[0].video_path` relative to ROOT, or flat's `videos/<stem>.mp4`."""
    if "videos" not in data:
        if layout == "flat":
            return root / "videos" / f"{json_path.stem}.mp4"
        raise BridgeFormatError(f"{json_path}: missing required field 'videos'")
    videos = data["videos"]
    if not isinstance(videos, list) or not videos:
        raise BridgeFormatError(
            f"{json_path}: field 'videos': expected a non-empty list of {{'video_path': ...}}"
        )
    first = videos[0]
    if not isinstance(first, dict) or not isinstance(first.get("video_path"), str):
        raise BridgeFormatError(f"{json_path}: field 'videos[0].video_path': missing or not a string")
    return root / first["video_path"]


def load_episode(
    json_path: str | Path, root: str | Path | None = None, allow_missing_gripper_state: bool = False
) -> Episode:
    """Parse and validate one annotation JSON (the video is checked to exist, not decoded).

    `root` defaults to the dataset root implied by the file's location (annotation/<split>/ or
    annotations/). Raises BridgeFormatError naming the file and the field on any problem.
    """
    json_path = Path(json_path)
    inferred_root, layout = _infer_root(json_path) if root is None else (Path(root), detect_layout(root))
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BridgeFormatError(f"{json_path}: not valid JSON ({e})") from e
    except OSError as e:
        raise BridgeFormatError(f"{json_path}: cannot read annotation ({e})") from e
    if not isinstance(data, dict):
        raise BridgeFormatError(f"{json_path}: top level must be a JSON object, got {type(data).__name__}")

    required = ["state", "action"] + ([] if allow_missing_gripper_state else ["continuous_gripper_state"])
    for key in required:
        if key not in data:
            raise BridgeFormatError(f"{json_path}: missing required field '{key}'")

    state = _array(data, "state", json_path)
    if state.ndim != 2 or state.shape[1] != STATE_DIM:
        raise BridgeFormatError(f"{json_path}: field 'state': expected shape (T, 7), got {state.shape}")
    T = state.shape[0]
    if T < 2:
        raise BridgeFormatError(f"{json_path}: field 'state': need T >= 2 frames for one action, got T={T}")
    action = _array(data, "action", json_path)
    if action.ndim != 2 or action.shape != (T - 1, ACTION_DIM):
        raise BridgeFormatError(
            f"{json_path}: field 'action': expected shape (T-1, 7) = ({T - 1}, 7) with T={T} states, "
            f"got {action.shape}"
        )
    extra = {k: v for k, v in data.items() if k not in _KNOWN_KEYS}
    if "continuous_gripper_state" in data:
        grip = _array(data, "continuous_gripper_state", json_path)
        if grip.shape != (T,):
            raise BridgeFormatError(
                f"{json_path}: field 'continuous_gripper_state': expected length T={T} (one per state), "
                f"got shape {grip.shape}"
            )
    else:
        grip = state[:, 6].copy()
        extra["continuous_gripper_state_source"] = "state[:, 6]"

    texts = data.get("texts", [])
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BridgeFormatError(f"{json_path}: field 'texts': expected a list of strings")

    video_path = _video_path(data, json_path, inferred_root, layout)
    if not video_path.is_file():
        raise BridgeFormatError(
            f"{json_path}: field 'videos[0].video_path': video file not found: {video_path}"
        )
    return Episode(
        json_path=json_path,
        video_path=video_path,
        episode_id=str(data.get("episode_id", json_path.stem)),
        texts=list(texts),
        state=state,
        continuous_gripper_state=grip,
        action=action,
        extra=extra,
    )


def validate(episode: Episode, check_video: bool = True) -> None:
    """Re-check an episode's files; with `check_video`, decode it and check its frame count is T."""
    if not episode.video_path.is_file():
        raise BridgeFormatError(
            f"{episode.json_path}: field 'videos[0].video_path': video file not found: {episode.video_path}"
        )
    if check_video:
        episode.frames()


def scan_split(
    root: str | Path, split: str, check_video: bool = False, allow_missing_gripper_state: bool = False
) -> tuple[list[Episode], list[SkippedEpisode]]:
    """Load every episode of a split, collecting failures instead of raising (split-level errors still raise)."""
    episodes: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    for path in list_episodes(root, split):
        try:
            episode = load_episode(path, root, allow_missing_gripper_state=allow_missing_gripper_state)
            validate(episode, check_video=check_video)
        except BridgeFormatError as e:
            skipped.append(SkippedEpisode(path, str(e)))
            continue
        episodes.append(episode)
    return episodes, skipped


def load_split(
    root: str | Path,
    split: str,
    skip_bad: bool = False,
    check_video: bool = False,
    allow_missing_gripper_state: bool = False,
) -> list[Episode]:
    """Load a split's episodes in natural id order.

    By default the first bad episode raises BridgeFormatError. With `skip_bad=True` each bad one is
    reported by a warning naming the file and the reason, then a summary warning gives the count
    (use `scan_split` to get the skipped list as data). `check_video` also decodes every video.
    """
    if not skip_bad:
        return [
            _checked(load_episode(p, root, allow_missing_gripper_state), check_video)
            for p in list_episodes(root, split)
        ]
    episodes, skipped = scan_split(root, split, check_video, allow_missing_gripper_state)
    for s in skipped:
        warnings.warn(f"skipping bad Bridge episode: {s.reason}", stacklevel=2)
    if skipped:
        warnings.warn(
            f"{root}: split {split!r}: skipped {len(skipped)} of {len(skipped) + len(episodes)} episodes",
            stacklevel=2,
        )
    if not episodes:
        raise BridgeFormatError(f"{root}: split {split!r}: every episode is bad ({len(skipped)} skipped)")
    return episodes


def _checked(episode: Episode, check_video: bool) -> Episode:
    validate(episode, check_video=check_video)
    return episode
