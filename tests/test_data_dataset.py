"""BridgeWindowDataset: window indexing, item contents, the frame cache, resizing and sampling."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bridge_fixtures import frame_level, rewrite_json, write_episode
from torch.utils.data import DataLoader, DistributedSampler

import worldsim.data.bridge as bridge
from worldsim.data.bridge import BridgeFormatError
from worldsim.data.dataset import BridgeWindowDataset, resize_frames

LENGTHS = {0: 6, 1: 4, 2: 9, 3: 3}  # episode id -> T; with 5-frame windows, episode 3 has none


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridge")
    for i, T in LENGTHS.items():
        write_episode(root, i, T=T, split="train", seed=i)
    return root


def make(root, tmp_path, **kwargs):
    kwargs.setdefault("num_frames", 5)
    kwargs.setdefault("resolution", (24, 32))
    return BridgeWindowDataset(root, "train", cache_dir=tmp_path / "cache", **kwargs)


def test_window_count_is_sum_over_episodes(root, tmp_path):
    ds = make(root, tmp_path)
    assert len(ds) == sum(T - 5 + 1 for T in LENGTHS.values() if T >= 5) == 2 + 5
    assert len(ds.episodes) == 4  # short episodes stay available for rollouts, just without windows
    assert len(make(root, tmp_path, stride=2)) == 1 + 3  # T=6: start 0; T=9: starts 0, 2, 4
    assert [ds[i]["start"] for i in range(len(ds))] == [0, 1, 0, 1, 2, 3, 4]


def test_item_shapes_dtypes_and_alignment(root, tmp_path):
    ds = make(root, tmp_path, gripper_signal="state")
    item = ds[3]  # episode "2", start 1
    assert item["episode"] == 2 and item["start"] == 1
    assert item["video"].shape == (5, 3, 24, 32) and item["video"].dtype == torch.uint8
    assert item["action"].shape == (4, 7) and item["action"].dtype == torch.float32
    ep = ds.episodes[2]
    expected = ep.model_actions("state", 20.0)[1:5]
    np.testing.assert_array_equal(item["action"].numpy(), expected)
    np.testing.assert_array_equal(ds.episode_actions(2), ep.model_actions("state", 20.0))
    # Frames are the source frames 1..5: the corner brightness identifies each one.
    corner = item["video"][:, :, 1, 1].float().mean(1).numpy()
    np.testing.assert_allclose(corner, [frame_level(t) for t in range(1, 6)], atol=5)
    whole = ds.episode_frames(2)
    assert whole.shape == (9, 24, 32, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(whole[1:6], item["video"].permute(0, 2, 3, 1).numpy())


def test_command_signal_gripper_is_one_minus_json_action(root, tmp_path):
    ds = make(root, tmp_path)  # default gripper_signal="command"
    ep = ds.episodes[0]
    np.testing.assert_array_equal(ds[0]["action"][:, 6].numpy(), 1.0 - ep.action[:4, 6])
    np.testing.assert_allclose(ds[0]["action"][:, :6].numpy(), ep.model_actions()[:4, :6])


def test_cache_written_once_then_reused_without_decoding(root, tmp_path, monkeypatch):
    ds = make(root, tmp_path)
    assert not any(ds.is_cached(i) for i in range(4))
    assert ds.build_cache(progress=False) == 4
    assert all(ds.is_cached(i) for i in range(4))
    assert ds.build_cache(progress=False) == 0
    first = ds[4]["video"]

    def no_decode(path):
        raise AssertionError(f"decoded {path} despite a valid cache")

    monkeypatch.setattr(bridge, "read_video", no_decode)
    again = make(root, tmp_path)
    np.testing.assert_array_equal(again[4]["video"], first)
    assert again.episode_frames(0).shape == (6, 24, 32, 3)
    assert not list((tmp_path / "cache").glob("*.tmp")) and not list((tmp_path / "cache").glob(".*"))


def test_cache_built_in_worker_processes_equals_the_serial_build(root, tmp_path):
    serial = make(root, tmp_path / "serial")
    assert serial.build_cache(progress=False) == 4
    parallel = BridgeWindowDataset(
        root, "train", num_frames=5, resolution=(24, 32), cache_dir=tmp_path / "par"
    )
    assert parallel.build_cache(workers=2, progress=False) == 4
    for i in range(4):
        assert parallel.is_cached(i)
        np.testing.assert_array_equal(np.load(parallel.cache_paths(i)[0]), np.load(serial.cache_paths(i)[0]))


def test_cache_default_location_and_invalidation(tmp_path):
    write_episode(tmp_path, 0, T=5)
    ds = BridgeWindowDataset(tmp_path, "train", num_frames=5, resolution=(24, 32))
    ds.prepare(progress=False)
    npy, sidecar = ds.cache_paths(0)
    assert npy == tmp_path / ".cache" / "frames_24x32" / "train" / "0.npy" and sidecar.is_file()
    write_episode(tmp_path, 0, T=5, size=(64, 96), seed=1)  # a new source video replaces the old
    assert not ds.is_cached(0)
    assert ds.build_cache(progress=False) == 1 and ds.is_cached(0)


def test_uncached_mode_decodes_the_same_frames(root, tmp_path):
    cached = make(root, tmp_path)
    fresh = BridgeWindowDataset(
        root, "train", num_frames=5, resolution=(24, 32), cache_dir=tmp_path / "unused", cache=False
    )
    np.testing.assert_array_equal(cached[5]["video"], fresh[5]["video"])
    np.testing.assert_array_equal(cached.episode_frames(2), fresh.episode_frames(2))
    assert not (tmp_path / "unused").exists()


def test_resize_is_antialiased():
    # A 1-pixel checkerboard shrunk 5x: plain bilinear samples single pixels (pure black/white),
    # an antialiased filter averages to mid-gray.
    yy, xx = np.mgrid[0:60, 0:80]
    board = (((yy + xx) % 2) * 255).astype(np.uint8)
    board = np.repeat(board[None, :, :, None], 3, axis=-1)  # (1, 60, 80, 3)
    out = resize_frames(board, (12, 16))
    assert out.shape == (1, 3, 12, 16) and out.dtype == np.uint8
    assert abs(out.astype(float).mean() - 127.5) < 3 and out.astype(float).std() < 3
    aliased = F.interpolate(
        torch.from_numpy(board).permute(0, 3, 1, 2).float(), size=(12, 16), mode="bilinear"
    )
    assert aliased.std() > 100  # the test would catch a resize without antialiasing


def test_distributed_sampler_covers_all_indices(root, tmp_path):
    ds = make(root, tmp_path)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3, drop_last=False)
        sampler.set_epoch(1)
        seen += list(sampler)
    assert set(seen) == set(range(len(ds)))


def test_pickles_and_loads_in_worker_processes(root, tmp_path):
    ds = make(root, tmp_path)
    ds[0]  # opens a memmap in this process; pickling must not carry it
    assert pickle.loads(pickle.dumps(ds))._memmaps == {}
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(b["video"].shape[0] for b in batches) == len(ds)
    assert batches[0]["video"].shape == (3, 5, 3, 24, 32) and batches[0]["action"].shape == (3, 4, 7)
    np.testing.assert_array_equal(batches[0]["start"].numpy(), [0, 1, 0])


def test_bad_video_raises_or_is_skipped_by_prepare(tmp_path):
    for i in range(3):
        write_episode(tmp_path, i, T=5, seed=i, video_frames=4 if i == 1 else None)
    ds = BridgeWindowDataset(tmp_path, "train", num_frames=3, resolution=(24, 32))
    with pytest.raises(BridgeFormatError, match=r"1\.json.*has 4 frames"):
        ds.prepare(progress=False)
    ds = BridgeWindowDataset(tmp_path, "train", num_frames=3, resolution=(24, 32), skip_bad=True)
    with pytest.warns(UserWarning, match=r"1\.json"):
        ds.prepare(progress=False)
    assert [e.episode_id for e in ds.episodes] == ["0", "2"] and len(ds) == 2 * 3
    # the same in worker processes: the error crosses the process boundary, and skip_bad still skips
    ds = BridgeWindowDataset(tmp_path, "train", num_frames=3, resolution=(24, 32), cache_dir=tmp_path / "c1")
    with pytest.raises(BridgeFormatError, match=r"1\.json.*has 4 frames"):
        ds.build_cache(workers=2, progress=False)
    ds = BridgeWindowDataset(
        tmp_path, "train", num_frames=3, resolution=(24, 32), skip_bad=True, cache_dir=tmp_path / "c2"
    )
    with pytest.warns(UserWarning, match=r"1\.json"):
        assert ds.build_cache(workers=2, progress=False) == 2
    assert [e.episode_id for e in ds.episodes] == ["0", "2"]


def test_skip_bad_json_in_dataset(tmp_path):
    for i in range(2):
        write_episode(tmp_path, i, T=4, seed=i)
    rewrite_json(tmp_path / "annotation" / "train" / "0.json", continuous_gripper_state=[0.0])
    with pytest.raises(BridgeFormatError, match=r"0\.json.*continuous_gripper_state"):
        BridgeWindowDataset(tmp_path, "train", num_frames=3, resolution=(24, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = BridgeWindowDataset(tmp_path, "train", num_frames=3, resolution=(24, 32), skip_bad=True)
    assert len(ds.episodes) == 1 and len(ds) == 2
