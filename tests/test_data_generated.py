"""The loader and the window dataset read a split written by BridgeSim's `worldsim-gen`."""

from __future__ import annotations

import numpy as np
import pytest

from worldsim.data.actions import relative_pose_actions
from worldsim.data.bridge import load_split, validate
from worldsim.data.dataset import BridgeWindowDataset


def test_generated_split_loads_and_serves_windows(tmp_path):
    generate = pytest.importorskip("worldsim.sim.generate", reason="BridgeSim generator not available")
    out = tmp_path / "bridge_sim"
    generate.main(["--out", str(out), "--episodes", "2", "--split", "val", "--seed", "0",
                   "--resolution", "48,64", "--max-steps", "8"])  # fmt: skip
    episodes = load_split(out, "val")
    assert len(episodes) == 2
    for ep in episodes:
        validate(ep, check_video=True)  # video has exactly T frames
        assert ep.frames().shape == (ep.num_frames, 48, 64, 3)
        # The generator's JSON action is the Bridge formula on its recorded states.
        np.testing.assert_allclose(ep.action[:, :6], relative_pose_actions(ep.state), atol=1e-6)
        assert ((ep.action[:, 6] >= 0) & (ep.action[:, 6] <= 1)).all()  # gripper target, 1 = open
        assert {"task", "policy", "success"} <= set(ep.extra)
    ds = BridgeWindowDataset(out, "val", num_frames=3, resolution=(24, 32), cache_dir=tmp_path / "cache")
    assert len(ds) == sum(ep.num_frames - 2 for ep in episodes)
    item = ds[len(ds) - 1]
    assert item["video"].shape == (3, 3, 24, 32) and item["action"].shape == (2, 7)
