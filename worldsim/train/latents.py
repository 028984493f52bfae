"""The dynamics stages train on cached latents: each episode's frames go through the frozen encoder once.

The dynamics stages (video2world, action, distill) never train the tokenizer, and what they take from it
is deterministic (the posterior means; frames are not augmented), so encoding every window's 13 frames at
every step repeats the same work: about 8% of a `base` training step on an H200, and the whole 256x320
frame batch copied to the GPU. `dataset.latents=true` (the default) encodes each episode once, before the
first step, and trains on the stored means instead:

    CACHE / latents_{H}x{W}_{encoder digest} / <split> / <json stem>.npy  + <json stem>.json

CACHE is `dataset.cache_dir` or ROOT/.cache. The digest covers the encoder's weights and the dtype it ran
in, so another tokenizer (a new `tokenizer_path`, or bf16 on a GPU against fp32 on a CPU) gets its own
entries; the sidecar also records the source video's identity, as the frame cache does, so a changed
video is encoded again. Entries hold the unnormalised means, as the encoder wrote them (bf16 bits as
uint16, or float32), and the stage normalises them with the tokenizer's current latent statistics, so
the loss is the one the frames would give. Every write is atomic; ranks encode disjoint episodes and
wait for each other before reading.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm import tqdm

from worldsim.data.bridge import BridgeFormatError
from worldsim.data.dataset import BridgeWindowDataset, cache_entry_is_current, lru_memmap, write_cache_entry
from worldsim.models.tokenizer import Tokenizer

_STORED = {torch.bfloat16: np.uint16, torch.float32: np.float32}  # bf16 kept bit for bit as uint16


def encoder_digest(tokenizer: Tokenizer, dtype: torch.dtype) -> str:
    """16 hex digits of a hash over the encoder's tensors and the dtype it computes in."""
    h = hashlib.sha256(str(dtype).encode())
    for name, tensor in sorted(tokenizer.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class LatentWindowDataset(Dataset):
    """The windows of a `BridgeWindowDataset`, with the encoder's latent means in place of the frames.

    Item: {"latents": (F, C, H/8, W/8) unnormalised means (bf16 or float32), "action", "episode", "start"}
    — the frame dataset's item with "latents" for "video"; `StageModule` takes either.
    """

    def __init__(
        self, frames: BridgeWindowDataset, folder: str | Path, digest: str, dtype: torch.dtype
    ) -> None:
        self.frames, self.folder, self.digest, self.dtype = frames, Path(folder), digest, dtype
        self._memmaps: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # memmaps are per process: a DataLoader worker opens its own
        state["_memmaps"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.frames)

    def paths(self, i: int) -> tuple[Path, Path]:
        """(latents .npy, sidecar .json) of episode i's entry."""
        stem = self.frames.episodes[i].json_path.stem
        return self.folder / f"{stem}.npy", self.folder / f"{stem}.json"

    def _key(self, i: int) -> dict[str, Any]:
        """What an entry must match: the source video (as the frame cache records it) and the encoder."""
        return {"source": self.frames._source_key(i), "encoder": self.digest, "dtype": str(self.dtype)}

    def is_cached(self, i: int) -> bool:
        return cache_entry_is_current(*self.paths(i), self._key(i))

    def write(self, i: int, means: torch.Tensor) -> None:
        """Store episode i's (T, C, h, w) means: the array first, then the sidecar that validates it."""
        means = means.detach().cpu().contiguous()
        bf16 = self.dtype == torch.bfloat16
        array = means.view(torch.int16).numpy().view(np.uint16) if bf16 else means.numpy()
        write_cache_entry(*self.paths(i), array, self._key(i))

    def episode_latents(self, i: int) -> np.ndarray:
        """Episode i's stored means, (T, C, h, w), as a read-only memmap."""
        return lru_memmap(self._memmaps, i, lambda: self._open(i))

    def _open(self, i: int) -> np.ndarray:
        npy = self.paths(i)[0]
        try:
            array = np.load(npy, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BridgeFormatError(
                f"{npy}: unreadable latent cache entry ({e}); delete it to rebuild"
            ) from e
        if (
            array.ndim != 4
            or array.shape[0] != self.frames.episodes[i].num_frames
            or array.dtype != _STORED[self.dtype]
        ):
            raise BridgeFormatError(
                f"{npy}: latent cache entry has {array.shape} {array.dtype}, expected "
                f"({self.frames.episodes[i].num_frames}, C, h, w) {np.dtype(_STORED[self.dtype])}; delete it to rebuild"
            )
        return array

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode, start = (int(v) for v in self.frames._windows[index])
        window = np.array(self.episode_latents(episode)[start : start + self.frames.num_frames])  # a copy
        latents = torch.from_numpy(window)
        if self.dtype == torch.bfloat16:
            latents = latents.view(torch.bfloat16)
        action = self.frames.episode_actions(episode)[start : start + self.frames.num_frames - 1]
        return {"latents": latents, "action": torch.from_numpy(action), "episode": episode, "start": start}


def latent_folder(frames: BridgeWindowDataset, cache_dir: str, digest: str) -> Path:
    """Where a split's entries for this encoder live."""
    base = Path(cache_dir) if cache_dir else frames.root / ".cache"
    H, W = frames.resolution
    return base / f"latents_{H}x{W}_{digest}" / frames.split


@torch.no_grad()
def cache_latents(
    frames: BridgeWindowDataset,
    tokenizer: Tokenizer,
    cache_dir: str,
    device: torch.device,
    dtype: torch.dtype,
    rank: int = 0,
    world_size: int = 1,
    chunk: int = 64,
    workers: int = 1,
    progress: bool = True,
) -> LatentWindowDataset:
    """Encode every episode of `frames` without a current entry (rank r takes episodes r, r + world_size,
    ...) with the plain, unsharded `tokenizer` on `device`, under autocast to `dtype` as in training, and
    return the latent dataset once every rank is done; the frames not yet decoded are decoded first, in
    `workers` processes (the frame cache's `build_cache`). `dtype` is the training's compute dtype (bf16 or
    float32): the entries hold the means in the dtype the encoder gives under it."""
    if dtype not in _STORED:
        raise ValueError(f"latents are cached for bf16 or float32 training, not {dtype}")
    digest = encoder_digest(tokenizer, dtype)
    out = LatentWindowDataset(frames, latent_folder(frames, cache_dir, digest), digest, dtype)
    mine = [i for i in range(rank, len(frames.episodes), world_size) if not out.is_cached(i)]
    if frames.cache and mine:  # decode the videos first, in parallel processes
        frames.build_cache(workers=workers, progress=progress, only=mine)
    was_training = tokenizer.training
    tokenizer.eval()
    low = dtype != torch.float32
    bar = tqdm(
        total=len(mine), desc=f"encoding {frames.split} latents", unit="ep", disable=not (progress and mine)
    )
    with bar, torch.autocast(device.type, dtype=dtype, enabled=low):
        for i in mine:
            video = frames._episode_video(i)  # (T, 3, H, W) uint8, a read-only memmap
            means = []
            for s in range(0, video.shape[0], chunk):
                x = torch.from_numpy(np.array(video[s : s + chunk])).to(device).float() / 127.5 - 1.0
                means.append(tokenizer.moments(x)[0])  # in the dtype the encoder gives under autocast
            out.write(i, torch.cat(means).to(dtype))
            bar.update(1)
    tokenizer.train(was_training)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    return out
