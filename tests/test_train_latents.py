"""dataset.latents: the dynamics stages train on the frozen encoder's cached latent means."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from bridge_fixtures import write_episode

from worldsim.data.bridge import BridgeFormatError
from worldsim.data.dataset import BridgeWindowDataset
from worldsim.models.config import get_preset
from worldsim.models.world_model import WorldModel
from worldsim.train.latents import LatentWindowDataset, cache_latents
from worldsim.train.stages import StageModule, to_model_frames

LENGTHS = {0: 7, 1: 5, 2: 9}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridge")
    for i, T in LENGTHS.items():
        write_episode(root, i, T=T, split="train", seed=i)
    return root


def frames_dataset(root, tmp_path) -> BridgeWindowDataset:
    cfg = get_preset("tiny")
    return BridgeWindowDataset(
        root, "train", num_frames=5, resolution=(cfg.height, cfg.width), cache_dir=tmp_path / "frames"
    )


def tiny_model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(get_preset("tiny")).eval()


def build(frames, model, tmp_path, **kwargs) -> LatentWindowDataset:
    return cache_latents(
        frames,
        model.tokenizer,
        str(tmp_path / "cache"),
        torch.device("cpu"),
        torch.float32,
        progress=False,
        **kwargs,
    )


def test_items_hold_the_encoders_means_of_the_window(root, tmp_path):
    frames, model = frames_dataset(root, tmp_path), tiny_model()
    latents = build(frames, model, tmp_path, chunk=3)  # episodes span several encoder calls
    assert len(latents) == len(frames) == 3 + 1 + 5
    for index in (0, 4, 8):
        item, source = latents[index], frames[index]
        assert (item["episode"], item["start"]) == (source["episode"], source["start"])
        torch.testing.assert_close(item["action"], source["action"], rtol=0, atol=0)
        with torch.no_grad():
            mean, _ = model.tokenizer.moments(to_model_frames(source["video"]))
        assert item["latents"].dtype == torch.float32 and item["latents"].shape == mean.shape
        torch.testing.assert_close(item["latents"], mean, rtol=1e-5, atol=1e-6)


def test_entries_are_reused_and_keyed_by_the_encoder(root, tmp_path):
    frames = frames_dataset(root, tmp_path)
    first = build(frames, tiny_model(0), tmp_path)
    npy = first.paths(2)[0]
    stamp = npy.stat().st_mtime_ns
    again = build(frames, tiny_model(0), tmp_path)
    assert again.folder == first.folder and npy.stat().st_mtime_ns == stamp  # nothing encoded again
    other = build(frames, tiny_model(1), tmp_path)  # another encoder: its own entries
    assert other.folder != first.folder and other.folder.parent.parent == first.folder.parent.parent
    assert not torch.equal(other[0]["latents"], first[0]["latents"])
    # A changed video invalidates its entry, as in the frame cache.
    video = frames.episodes[1].video_path
    os.utime(video, ns=(stamp, stamp + 10**9))
    assert not first.is_cached(1) and first.is_cached(0)


def test_bf16_entries_keep_the_bits(root, tmp_path):
    frames, model = frames_dataset(root, tmp_path), tiny_model()
    latents = cache_latents(
        frames, model.tokenizer, str(tmp_path / "cache"), torch.device("cpu"), torch.bfloat16, progress=False
    )
    item = latents[0]
    assert item["latents"].dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mean, _ = model.tokenizer.moments(to_model_frames(frames[0]["video"]))
    assert torch.equal(item["latents"], mean.to(torch.bfloat16))


def test_a_damaged_entry_names_its_file(root, tmp_path):
    frames, model = frames_dataset(root, tmp_path), tiny_model()
    latents = build(frames, model, tmp_path)
    npy = latents.paths(0)[0]
    np.save(npy, np.zeros((2, 3), dtype=np.float32))  # the sidecar still says it is complete
    fresh = LatentWindowDataset(frames, latents.folder, latents.digest, torch.float32)
    with pytest.raises(BridgeFormatError, match=str(npy)):
        fresh[0]
    npy.write_bytes(b"not an array")
    with pytest.raises(BridgeFormatError, match="delete it to rebuild"):
        LatentWindowDataset(frames, latents.folder, latents.digest, torch.float32)[0]


@pytest.mark.parametrize("stage", ["action", "video2world"])
def test_the_loss_on_cached_latents_equals_the_loss_on_frames(root, tmp_path, stage):
    frames, model = frames_dataset(root, tmp_path), tiny_model()
    latents = build(frames, model, tmp_path)
    batch = [frames[i] for i in (0, 5)]
    video = torch.stack([b["video"] for b in batch])
    action = torch.stack([b["action"] for b in batch])
    cached = torch.stack([latents[i]["latents"] for i in (0, 5)])
    with torch.no_grad():  # not the identity: the cached means are normalised as encode() does
        model.tokenizer.latent_shift.copy_(cached.float().mean((0, 1, 3, 4)))
        model.tokenizer.latent_scale.copy_(cached.float().std((0, 1, 3, 4)))
    stage_module = StageModule(model, stage)
    torch.manual_seed(3)
    from_frames, _ = stage_module(video, action)
    torch.manual_seed(3)
    from_latents, _ = stage_module(None, action, latents=cached)
    torch.testing.assert_close(from_latents, from_frames, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="either video or latents"):
        stage_module(video, action, latents=cached)
    with pytest.raises(ValueError, match="not cached latents"):
        StageModule(model, "tokenizer")(None, action, latents=cached)
