"""Open-loop evaluation on generated BridgeSim episodes with a tiny random-weight model bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldsim.eval.open_loop import evaluate_open_loop, make_dataset
from worldsim.models.config import get_preset
from worldsim.models.world_model import WorldModel

generate = pytest.importorskip("worldsim.sim.generate", reason="BridgeSim generator not available")


@pytest.fixture(scope="module")
def val_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("bridge_sim")
    args = ["--out", str(out), "--episodes", "3", "--split", "val", "--seed", "0", "--resolution", "48,64"]
    generate.main(args + ["--max-steps", "8"])
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    path = WorldModel(get_preset("tiny")).save_pretrained(tmp_path_factory.mktemp("bundle"))
    return WorldModel.from_pretrained(path)


def _psnr_numpy(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_open_loop_scores_every_horizon_and_the_copy_last_baseline(val_data, tiny_model):
    dataset = make_dataset(str(val_data), "val", tiny_model)
    lengths = [ep.num_frames for ep in dataset.episodes]
    horizon = 10  # longer than every episode (T - 1 <= 8 actions): horizons are capped per episode
    result = evaluate_open_loop(tiny_model, dataset, horizon=horizon, batch_size=2, progress=False)

    assert result.psnr.shape == result.ssim.shape == result.baseline_psnr.shape == (len(lengths), horizon)
    for e, T in enumerate(lengths):
        assert np.isfinite(result.psnr[e, : T - 1]).all() and np.isnan(result.psnr[e, T - 1 :]).all()
        assert ((result.ssim[e, : T - 1] > -1) & (result.ssim[e, : T - 1] <= 1)).all()
        truth = dataset.episode_frames(e)
        expected = [_psnr_numpy(truth[0], truth[h]) for h in range(1, T)]
        np.testing.assert_allclose(result.baseline_psnr[e, : T - 1], expected, rtol=1e-10)

    summary = result.summary()
    assert len(summary["psnr"]) == len(summary["baseline_ssim"]) == len(summary["count"]) == horizon
    assert summary["count"][0] == len(lengths) and summary["count"][-1] == 0
    assert summary["psnr"][-1] is None  # no episode reaches horizon 10: no number, not a made-up one
    assert result.examples["pred"].shape == result.examples["truth"].shape == (lengths[0], 32, 48, 3)


def test_open_loop_rollouts_are_seeded(val_data, tiny_model):
    dataset = make_dataset(str(val_data), "val", tiny_model)
    a = evaluate_open_loop(tiny_model, dataset, horizon=3, episodes=2, seed=5, progress=False)
    b = evaluate_open_loop(tiny_model, dataset, horizon=3, episodes=2, seed=5, progress=False)
    np.testing.assert_array_equal(a.psnr, b.psnr)
    assert a.psnr.shape == (2, 3)
