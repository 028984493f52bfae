"""Where a teleop world starts: a bundled start frame, a dataset episode, an uploaded image, BridgeSim.

Every loader returns a `Start` at the model's resolution. Problems a visitor can cause (a bad
upload, a wrong episode path) raise `StartError` with a message meant for the UI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worldsim.apps.teleop_session import EpisodeTruth, SimTruth, Start, to_model_resolution

MAX_UPLOAD_BYTES = 20 * 2**20  # an uploaded start image is one camera frame; 20 MB is plenty
MAX_UPLOAD_PIXELS = 40_000_000  # refuse decompression bombs before decoding them
BRIDGE_ASPECT = 4 / 3  # width / height of Bridge's 640x480 camera, which the model was trained on
# Where an uploaded image's commanded path starts when the bundle has no start state to borrow:
# BridgeSim's home pose (x, y, z m; roll, pitch, yaw rad) with the gripper open.
FALLBACK_EE_STATE = np.array([0.22, 0.0, 0.17, 0.0, 0.0, 0.0, 0.0])


class StartError(ValueError):
    """A start frame could not be made; the message is shown to the visitor as is."""


def bundle_start(
    start_frames: dict[str, np.ndarray] | None, index: int, resolution: tuple[int, int]
) -> Start:
    """Start frame `index` (taken modulo the count) of the frames shipped with the model."""
    if start_frames is None or len(start_frames["images"]) == 0:
        raise StartError("this checkpoint ships no start frames: start from an episode, image or BridgeSim")
    index = int(index) % len(start_frames["images"])
    image = to_model_resolution(start_frames["images"][index : index + 1], resolution)[0]
    ee_state = np.asarray(start_frames["ee_states"][index], dtype=np.float64)
    return Start(image, ee_state, f"bundle start frame {index}")


def episode_start(json_path: str | Path, frame_index: int, resolution: tuple[int, int]) -> Start:
    """Frame `frame_index` of a Bridge-format episode (its annotation JSON); its later frames and
    recorded actions become the ground truth for "replay episode actions"."""
    from worldsim.data.bridge import BridgeFormatError, load_episode

    path = Path(str(json_path).strip()).expanduser()
    if not str(json_path).strip() or not path.is_file():
        raise StartError(f"no episode annotation at {str(json_path)!r}: give the path of its .json file")
    try:
        episode = load_episode(path)
        frames = to_model_resolution(episode.frames(), resolution)
    except BridgeFormatError as e:
        raise StartError(f"cannot read that episode: {e}") from e
    k = int(frame_index)
    if not 0 <= k < episode.num_frames:
        raise StartError(f"frame {k} is outside the episode (it has frames 0..{episode.num_frames - 1})")
    ee_state = np.concatenate([episode.state[k, :6], [episode.continuous_gripper_state[k]]])
    truth = EpisodeTruth(frames=frames[k:], actions=episode.action[k:])
    return Start(frames[k], ee_state, f"episode {episode.episode_id} frame {k}", truth)


def image_start(path: str | Path, resolution: tuple[int, int], ee_state: np.ndarray | None) -> Start:
    """An uploaded image, centre-cropped to Bridge's 4:3 and resized as the training data is.

    Its end-effector state is unknown: `ee_state` (e.g. a bundled start state) anchors the path.
    """
    path = Path(path)
    name = path.name
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise StartError(
            f"{name} is {size / 2**20:.1f} MB; start images up to {MAX_UPLOAD_BYTES // 2**20} MB are accepted"
        )
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                raise StartError(
                    f"{name} is {image.width}x{image.height} pixels; that is too large for a start frame"
                )
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise StartError(f"{name} is not an image (png, jpeg, webp, ... expected)") from e
    except OSError as e:  # truncated or corrupt image data
        raise StartError(f"{name} could not be decoded as an image ({e})") from e
    h, w = rgb.shape[:2]
    if w > h * BRIDGE_ASPECT:  # too wide: crop the sides
        cw = round(h * BRIDGE_ASPECT)
        rgb = rgb[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:  # too tall: crop top and bottom
        ch = round(w / BRIDGE_ASPECT)
        rgb = rgb[(h - ch) // 2 : (h - ch) // 2 + ch]
    image = to_model_resolution(rgb[None], resolution)[0]
    ee = FALLBACK_EE_STATE if ee_state is None else np.asarray(ee_state, dtype=np.float64)
    return Start(image, ee.copy(), f"uploaded image {name}")


def sim_start(seed: int, resolution: tuple[int, int]) -> Start:
    """A BridgeSim episode's first frame; the simulator then steps beside the learned world."""
    try:
        truth = SimTruth(int(seed), resolution)
    except Exception as e:  # noqa: BLE001 - MuJoCo/GL failures vary by machine; tell the visitor why
        raise StartError(f"BridgeSim could not start here ({type(e).__name__}: {e})") from e
    return Start(truth.frames[0], truth.ee_state, f"BridgeSim seed {int(seed)}: {truth.instruction}", truth)
