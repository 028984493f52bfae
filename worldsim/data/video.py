"""Video I/O with PyAV: decode any mp4 the Bridge release uses (mpeg4, h264), write h264 atomically.

PyAV is imported where a video is read or written: stepping a model (the envs, the rollout engine)
never touches a video file, and importing FFmpeg's bindings costs 170 ms.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from worldsim.atomic import atomic_write


class VideoError(ValueError):
    """A video file is missing, unreadable or truncated; the message names the file."""


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video into a (T, H, W, 3) uint8 RGB array."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream in file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: cannot decode video ({e})") from e
    if not frames:
        raise VideoError(f"{path}: video has no decodable frames (empty or truncated file)")
    return np.stack(frames)


def encode_video(frames: np.ndarray, path: str | os.PathLike, fps: float = 5.0, crf: int = 18) -> None:
    """Encode (T, H, W, 3) uint8 frames to a browser-playable h264 mp4 at `path` (not atomic)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    T, H, W, _ = frames.shape
    # yuv420p needs even sizes; pad by edge replication rather than failing on odd renders.
    ph, pw = H % 2, W % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height = W + pw, H + ph
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: float = 5.0, crf: int = 18) -> Path:
    """Atomically write an h264 mp4: encode to a temporary file beside `path`, then rename."""
    return atomic_write(path, lambda tmp: encode_video(frames, tmp, fps=fps, crf=crf))
