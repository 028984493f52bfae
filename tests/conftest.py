"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.data.dataset import resize_frames
from worldsim.models.config import get_preset
from worldsim.models.world_model import WorldModel


def make_world_bundle(path: Path, with_start_frames: bool = True, seed: int = 0) -> Path:
    """A `tiny` world model bundle whose zero-initialised layers are randomised (so actions and context
    change the frames), with three BridgeSim renders, resized to the model's size, as start frames."""
    torch.manual_seed(seed)
    model = WorldModel(get_preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.05)
    start = None
    if with_start_frames:
        from worldsim.sim.bridge_sim import BridgeSim

        sim = BridgeSim(resolution=(96, 128))
        try:
            obs = [sim.reset(seed=s) for s in range(3)]
        finally:
            sim.close()
        images = np.stack([o["image"] for o in obs])
        cfg = model.cfg
        start = {
            "images": resize_frames(images, (cfg.height, cfg.width)).transpose(0, 2, 3, 1),
            "ee_states": np.stack([o["ee_state"] for o in obs]),
        }
    return model.save_pretrained(path, start_frames=start)


def constant_success_model(height: int, width: int):
    """A real `StateNet` whose last layer is zero: every keypoint is estimated at the same place, unheld.
    So any block counts as resting in the bowl (pick_place succeeds at once) and nothing rises (lift
    never succeeds), whatever the frame: a success model with a known answer."""
    import torch

    from worldsim.eval.success import StateNet, SuccessConfig, SuccessModel

    net = StateNet(
        SuccessConfig(height=height, width=width, input_pool=1, channels=(8, 8, 16, 16), hidden=16)
    )
    with torch.no_grad():
        last = net.head[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -5.0]))  # at POSITION_MEAN, grasp probability ~0
    return SuccessModel(net)


@pytest.fixture(scope="session")
def world_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny BridgeWorld checkpoint with start frames (built once per test session)."""
    return make_world_bundle(tmp_path_factory.mktemp("world") / "tiny_bundle")


@pytest.fixture
def one_torch_thread():
    """Run torch on one thread: on a busy 2-core machine, intra-op threads of a tiny model mostly wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
