"""Training windows over a Bridge split: 1 + N frames and the N model actions that lead between them.

Decoding an mp4 per item would starve a GPU, so each episode's frames are decoded once, resized
(antialiased) to the dataset resolution and cached as a uint8 `.npy` of shape (T, 3, H, W):

    cache_dir (default ROOT/.cache/frames_{H}x{W}/<split>/) / <json stem>.npy  + <json stem>.json

The sidecar JSON records the source video's path, size and mtime; a changed video invalidates the
entry. Both files are written atomically (temporary file + os.replace), so concurrent DataLoader
workers that race to build the same entry are harmless. Memmaps are opened lazily in each process
(never in __init__, so the dataset pickles cheaply into workers) and kept in a small LRU, because an
open memmap holds a file descriptor and a split has tens of thousands of episodes.

Call `prepare()` (or `build_cache(workers=...)`) once before training to decode everything with a
progress bar; otherwise entries are built on first access.
"""

from __future__ import annotations

import json
import multiprocessing
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from worldsim.atomic import atomic_write
from worldsim.data.actions import ACTION_SCALER, GripperSignal
from worldsim.data.bridge import BridgeFormatError, Episode, load_split

_MAX_OPEN_MEMMAPS = 256  # well under the usual 1024 open-file soft limit


def resize_frames(frames: np.ndarray, resolution: tuple[int, int], chunk: int = 16) -> np.ndarray:
    """(T, H0, W0, 3) uint8 -> (T, 3, H, W) uint8, bilinear with antialiasing (no aliasing on downscale).

    Works in chunks of frames so a 640x480 episode never needs its whole float copy in memory.
    """
    H, W = resolution
    out = np.empty((frames.shape[0], 3, H, W), dtype=np.uint8)
    for i in range(0, frames.shape[0], chunk):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + chunk]))  # (t, H0, W0, 3)
        x = x.permute(0, 3, 1, 2)  # (t, 3, H0, W0)
        if x.shape[-2:] != (H, W):
            x = F.interpolate(x.float(), size=(H, W), mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        out[i : i + chunk] = x.numpy()
    return out


def _save_npy(path: str, array: np.ndarray) -> None:
    """np.save to exactly `path` (np.save on a name would append ".npy" to a temporary name)."""
    with open(path, "wb") as f:
        np.save(f, array)


def write_cache_entry(npy: Path, sidecar: Path, array: np.ndarray, key: dict[str, Any]) -> None:
    """A cache entry, each file atomically: the array first, then the sidecar JSON that marks it complete."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(npy, lambda tmp: _save_npy(tmp, array))
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(key)))


def lru_memmap(open_maps: OrderedDict[int, np.ndarray], i: int, load: Callable[[], np.ndarray]) -> np.ndarray:
    """`open_maps[i]`, or `load()` kept there; past `_MAX_OPEN_MEMMAPS` the least recently used is dropped
    (an open memmap holds a file descriptor). `open_maps` is per process: not pickled into workers."""
    if i in open_maps:
        open_maps.move_to_end(i)
        return open_maps[i]
    array = open_maps[i] = load()
    if len(open_maps) > _MAX_OPEN_MEMMAPS:
        open_maps.popitem(last=False)
    return array


def cache_entry_is_current(npy: Path, sidecar: Path, key: dict[str, Any]) -> bool:
    """True if the entry's array exists and its sidecar records exactly `key`."""
    try:
        return npy.is_file() and json.loads(sidecar.read_text()) == key
    except (OSError, json.JSONDecodeError):
        return False


class BridgeWindowDataset(Dataset):
    """Map-style dataset of (1 + N)-frame windows, every `stride`-th start frame of every long-enough episode.

    Item: {"video": uint8 (F, 3, H, W), "action": float32 (F-1, 7) model actions (pose * action_scaler,
    gripper 1 = closed from `gripper_signal`), "episode": index into `episodes`, "start": first frame}.

    Args:
        root: dataset root (IRASim `annotation/` or flat `annotations/` layout).
        split: "train", "val", "test" (any name for the flat layout).
        num_frames: frames per window, 1 conditioning frame + N predicted (Cosmos: 13).
        resolution: (H, W) the frames are resized to (Cosmos: 256x320).
        gripper_signal: "command" (1 - JSON action[:, 6]) or "state" (continuous_gripper_state[1:]).
        action_scaler: multiplies the 6 pose columns (Cosmos Bridge: 20).
        cache_dir: where decoded frames are cached; None = ROOT/.cache/frames_{H}x{W}/<split>/.
        cache: False decodes and resizes the episode on every item (slow; for measurement and read-only roots).
        skip_bad: skip (with a warning) episodes that fail to load instead of raising.
        stride: step between window start frames.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_frames: int = 13,
        resolution: tuple[int, int] = (256, 320),
        gripper_signal: GripperSignal = "command",
        action_scaler: float = ACTION_SCALER,
        cache_dir: str | Path | None = None,
        skip_bad: bool = False,
        stride: int = 1,
        cache: bool = True,
    ) -> None:
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (1 context frame + >= 1 action), got {num_frames}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.root = Path(root)
        self.split = split
        self.num_frames = num_frames
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.gripper_signal = gripper_signal
        self.action_scaler = action_scaler
        self.skip_bad = skip_bad
        self.stride = stride
        self.cache = cache
        H, W = self.resolution
        default_dir = self.root / ".cache" / f"frames_{H}x{W}" / split
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_dir
        self.episodes: list[Episode] = load_split(self.root, split, skip_bad=skip_bad)
        self._reindex()
        self._memmaps: OrderedDict[int, np.ndarray] = OrderedDict()  # per process, opened lazily

    def _reindex(self) -> None:
        """Model actions per episode and the (episode, start) table of windows."""
        self._actions = [
            ep.model_actions(self.gripper_signal, self.action_scaler) for ep in self.episodes
        ]  # each (T-1, 7) float32
        starts = [
            (i, s)
            for i, ep in enumerate(self.episodes)
            for s in range(0, ep.num_frames - self.num_frames + 1, self.stride)
        ]
        self._windows = np.array(starts, dtype=np.int64).reshape(-1, 2)  # (num_windows, 2)

    def __getstate__(self) -> dict[str, Any]:
        # Memmaps are per process: a DataLoader worker opens its own.
        state = self.__dict__.copy()
        state["_memmaps"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return int(self._windows.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode, start = (int(v) for v in self._windows[index])
        video = self._episode_video(episode)[start : start + self.num_frames]  # (F, 3, H, W)
        action = self._actions[episode][start : start + self.num_frames - 1]  # (F-1, 7)
        return {
            "video": torch.from_numpy(np.array(video)),  # a copy: the memmap is read-only
            "action": torch.from_numpy(action.copy()),
            "episode": episode,
            "start": start,
        }

    def episode_frames(self, i: int) -> np.ndarray:
        """Episode i's whole video at the dataset resolution, (T, H, W, 3) uint8 (for validation rollouts)."""
        return np.ascontiguousarray(np.asarray(self._episode_video(i)).transpose(0, 2, 3, 1))

    def episode_actions(self, i: int) -> np.ndarray:
        """Episode i's (T-1, 7) float32 model actions, as the windows slice them."""
        return self._actions[i].copy()

    # --- frame cache -------------------------------------------------------------------------------

    def cache_paths(self, i: int) -> tuple[Path, Path]:
        """(frames .npy, sidecar .json) of episode i's cache entry."""
        stem = self.episodes[i].json_path.stem
        return self.cache_dir / f"{stem}.npy", self.cache_dir / f"{stem}.json"

    def _source_key(self, i: int) -> dict[str, Any]:
        """What a cache entry must match: source video identity and the resize target."""
        ep = self.episodes[i]
        st = ep.video_path.stat()
        return {
            "video": str(ep.video_path.resolve()),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "resolution": list(self.resolution),
            "num_frames": ep.num_frames,
        }

    def is_cached(self, i: int) -> bool:
        """True if episode i has a complete cache entry matching its current video."""
        return cache_entry_is_current(*self.cache_paths(i), self._source_key(i))

    def _decode(self, i: int) -> np.ndarray:
        """Decode and resize episode i: (T, 3, H, W) uint8. Checks the frame count against the JSON."""
        return resize_frames(self.episodes[i].frames(), self.resolution)

    def _build_entry(self, i: int) -> None:
        """Decode episode i and write its cache entry atomically (frames first, then the sidecar)."""
        write_cache_entry(*self.cache_paths(i), self._decode(i), self._source_key(i))

    def _episode_video(self, i: int) -> np.ndarray:
        """Episode i's (T, 3, H, W) uint8 frames: a memmap of the cache, or a fresh decode if cache=False."""
        if not self.cache:
            return self._decode(i)
        return lru_memmap(self._memmaps, i, lambda: self._open_entry(i))

    def _open_entry(self, i: int) -> np.ndarray:
        """Episode i's cache entry as a memmap, built first if missing or stale, its shape checked."""
        if not self.is_cached(i):
            self._build_entry(i)
        frames = np.load(self.cache_paths(i)[0], mmap_mode="r")
        expected = (self.episodes[i].num_frames, 3, *self.resolution)
        if frames.shape != expected or frames.dtype != np.uint8:
            raise BridgeFormatError(
                f"{self.cache_paths(i)[0]}: cache entry has {frames.shape} {frames.dtype}, expected {expected} "
                "uint8; delete it to rebuild"
            )
        return frames

    def build_cache(self, workers: int = 1, progress: bool = True, only: Sequence[int] | None = None) -> int:
        """Decode every episode not yet cached (of those in `only`, if given), in `workers` processes;
        returns how many were built.

        A video that fails to decode (corrupt, wrong frame count) raises BridgeFormatError, unless the
        dataset was made with skip_bad=True: then the episode is dropped (with a warning) and the window
        index rebuilt - so call this before handing the dataset to a sampler.
        """
        if not self.cache:
            raise RuntimeError("build_cache() on a dataset made with cache=False")
        todo = [i for i in (range(len(self.episodes)) if only is None else only) if not self.is_cached(i)]
        bad: dict[int, str] = {}
        bar = tqdm(total=len(todo), desc=f"caching {self.split} frames", unit="ep", disable=not progress)
        pool = None
        if workers > 1 and len(todo) > 1:
            # Processes, not threads: 54 threads on a 64-core host cached only ~23 episodes/s (6,000 in
            # 262 s), most likely the per-frame Python work serialised on the GIL; 31 processes on 32 cores
            # did 106 episodes/s. Forked where the OS can (spawn would re-run a `python -` or notebook
            # __main__ it cannot find), as DataLoader workers are, and like them each child resizes with one
            # torch thread: no OpenMP team inherited from the parent is entered, and N processes do not
            # each start a team of every core.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = ProcessPoolExecutor(
                min(workers, len(todo)),
                mp_context=multiprocessing.get_context(method),
                initializer=_init_cache_worker,
                initargs=(self,),
            )
        with bar, pool or nullcontext():
            if pool:
                reasons = pool.map(_build_in_worker, todo, chunksize=4)
            else:
                reasons = (_build_cache_entry(self, i) for i in todo)
            for i, reason in zip(todo, reasons):
                if reason is not None:
                    bad[i] = reason
                bar.update(1)
        if bad:
            for reason in bad.values():
                warnings.warn(f"skipping bad Bridge episode: {reason}", stacklevel=2)
            self.episodes = [ep for i, ep in enumerate(self.episodes) if i not in bad]
            self._memmaps.clear()
            self._reindex()
        return len(todo) - len(bad)

    def prepare(self, workers: int = 1, progress: bool = True) -> BridgeWindowDataset:
        """Build the frame cache (see `build_cache`) and return self, for chaining."""
        if self.cache:
            self.build_cache(workers=workers, progress=progress)
        return self


def _build_cache_entry(ds: BridgeWindowDataset, i: int) -> str | None:
    """Builds episode i's cache entry; returns why it was skipped (skip_bad) or None. Other errors raise."""
    try:
        ds._build_entry(i)
    except BridgeFormatError as e:
        if not ds.skip_bad:
            raise
        return str(e)
    return None


_WORKER_DATASET: BridgeWindowDataset | None = None  # the dataset a cache-building process works on


def _init_cache_worker(ds: BridgeWindowDataset) -> None:
    global _WORKER_DATASET
    torch.set_num_threads(1)
    _WORKER_DATASET = ds


def _build_in_worker(i: int) -> str | None:
    assert _WORKER_DATASET is not None, "_init_cache_worker did not run"
    return _build_cache_entry(_WORKER_DATASET, i)
