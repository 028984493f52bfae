"""worldsim-eval end to end on a tiny random-weight bundle and generated BridgeSim episodes."""

from __future__ import annotations

import json

import pytest
import torch

from worldsim.eval.cli import main
from worldsim.eval.success import load_success_model
from worldsim.models.config import get_preset
from worldsim.models.world_model import WorldModel

generate = pytest.importorskip("worldsim.sim.generate", reason="BridgeSim generator not available")


def test_cli_writes_metrics_and_a_self_contained_report(tmp_path):
    torch.manual_seed(0)
    bundle = WorldModel(get_preset("tiny")).save_pretrained(tmp_path / "bundle")
    data = tmp_path / "data"
    generate.main(["--out", str(data), "--episodes", "2", "--split", "val", "--seed", "0",
                   "--resolution", "48,64", "--max-steps", "6"])  # fmt: skip
    out = tmp_path / "eval"
    common = ["--checkpoint", str(bundle), "--out", str(out), "--horizons", "4", "--device", "cpu",
              "--render-resolution", "48,64", "--batch-size", "4", "--no-progress",
              "--policies", "expert,random", "--policy-episodes", "2", "--policy-steps", "5",
              "--success-val-episodes", "2"]  # fmt: skip
    metrics = main(common + ["--data", str(data), "--split", "val", "--counterfactual-episodes", "2",
                             "--success-train-episodes", "3", "--success-steps", "5"])  # fmt: skip

    written = json.loads((out / "metrics.json").read_text())
    assert written["checkpoint"].endswith("model.safetensors") and written["split"] == "val"
    assert written["device"] == "cpu" and written["model"]["preset"] == "tiny"
    assert written["model"]["dtype"] == "float32"  # the default, as every published table
    assert written["model"]["denoise_steps"] == 2  # which sampler made the numbers
    assert written["model"]["stage"] is None  # saved without a training stage in its metadata
    for stage in ("open_loop", "counterfactual"):
        assert len(written[stage]["psnr"]) == len(written[stage]["baseline_psnr"]) == 4
        assert all(isinstance(v, float) for v in written[stage]["psnr"])
    assert written["open_loop"]["count"][0] == 2
    assert written["ranking"]["policies"] == ["expert", "random"]
    assert len(written["ranking"]["sim_success_rate"]) == len(written["ranking"]["world_success_rate"]) == 2
    assert {"pearson_ci", "spearman_ci", "ci_level"} <= set(written["ranking"])  # bootstrap intervals
    assert set(written["timings"]) >= {"open_loop", "counterfactual", "success", "ranking", "total"}
    # The success model saw the renders and their round trip through this model's tokenizer,
    # and it is measured on both kinds of held-out frames.
    assert written["success"]["trained_on_round_trips"] is True
    assert written["success"]["val_round_trip"]["frames"] == written["success"]["val"]["frames"]
    assert written["headline"] == metrics["headline"]
    report = (out / "report.html").read_text()
    assert (
        "plotly" in report.lower()
        and "PSNR (dB) vs horizon" in report
        and "ground truth (top)" in report
        and len(report) > 1_000_000
    )  # js inlined

    # A second run reuses the success model the first one trained instead of training again.
    classifier = out / "success.safetensors"
    assert load_success_model(classifier).cfg.height == 32
    again = main(
        common + ["--stages", "success,ranking", "--success-model", str(classifier), "--dtype", "bfloat16"]
    )
    assert again["success"]["loaded_from"] == str(classifier) and "open_loop" not in again
    assert again["model"]["dtype"] == "bfloat16"
