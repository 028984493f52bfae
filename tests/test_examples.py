"""The README's scripted-policy example runs in both worlds and prints both success rates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import constant_success_model, make_world_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scripted_policy.py"


def load_example():
    spec = importlib.util.spec_from_file_location("scripted_policy", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scripted_policy_example_reports_both_success_rates(tmp_path, capsys):
    bundle = make_world_bundle(tmp_path / "bundle")
    constant_success_model(32, 48).save(bundle)  # judges every "in the bowl" task done, "lift" never
    rates = load_example().main(["--episodes", "3", "--max-steps", "4", "--checkpoint", str(bundle)])
    out = capsys.readouterr().out
    assert set(rates) == {"BridgeSim-v0", "BridgeWorld-v0"} and all(0 <= r <= 1 for r in rates.values())
    assert "BridgeSim-v0: expert success rate" in out and "BridgeWorld-v0: expert success rate" in out
    # Same starts in both worlds: each episode line names one instruction, and the learned world's
    # verdicts follow the (constant) success model: pick-and-place done at once, every other task not.
    lines = [line for line in out.splitlines() if line.startswith("episode")]
    assert len(lines) == 3
    for line in lines:
        assert line.endswith(f"BridgeWorld-v0 {'in the bowl' in line}")
