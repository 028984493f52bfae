"""The frame success classifier learns BridgeSim's success predicate and round-trips through safetensors."""

from __future__ import annotations

import numpy as np
import pytest

from worldsim.eval.success import (
    SuccessConfig,
    classification_metrics,
    collect_success_frames,
    evaluate_success_model,
    load_success_model,
    parse_instruction,
    train_success_model,
)

SMALL = {
    "resolution": (48, 64),
    "render_resolution": (48, 64),
    "max_steps": 25,
    "tasks": ("lift",),
    "policies": ("expert", "no_grasp"),
    "progress": False,
}


def test_instructions_map_to_task_and_colour():
    assert parse_instruction("put the red block in the bowl") == ("pick_place", "red")
    assert parse_instruction("push the blue block to the left") == ("push_left", "blue")
    assert parse_instruction("push the green block to the right") == ("push_right", "green")
    assert parse_instruction("lift the yellow block") == ("lift", "yellow")
    with pytest.raises(ValueError, match="instruction"):
        parse_instruction("open the drawer")


def test_classification_metrics_on_known_predictions():
    m = classification_metrics(np.array([1, 1, 0, 0, 0, 1], bool), np.array([1, 0, 0, 0, 1, 1], bool))
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert m["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2, abs=1e-4)


def test_success_classifier_beats_chance_on_held_out_episodes(tmp_path):
    train = collect_success_frames(24, seed=0, **SMALL)
    val = collect_success_frames(8, seed=100, **SMALL)  # other seeds: other scenes, colours, poses
    assert train.labels.any() and (~train.labels).any() and val.labels.any()
    model = train_success_model(
        train, SuccessConfig(height=48, width=64), steps=120, batch_size=32, progress=False
    )

    assert evaluate_success_model(model, train)["balanced_accuracy"] > 0.9
    held_out = evaluate_success_model(model, val)
    assert held_out["balanced_accuracy"] > 0.6, held_out  # chance is 0.5

    loaded = load_success_model(model.save(tmp_path, {"val": held_out}).parent)
    instructions = [val.instructions[e] for e in val.episode]
    np.testing.assert_allclose(
        loaded.predict_proba(val.frames, val.starts[val.episode], instructions),
        model.predict_proba(val.frames, val.starts[val.episode], instructions),
        atol=1e-6,
    )
    assert loaded.predict(val.frames[:3], val.starts[val.episode[:3]], instructions[:3]).dtype == bool
