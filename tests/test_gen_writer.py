"""worldsim-gen: the Bridge/IRASim layout, reproducible bytes, actions from states, atomic episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from worldsim.data.actions import relative_pose_actions
from worldsim.data.video import read_video
from worldsim.sim import generate
from worldsim.sim.bridge_sim import BridgeSim

RES = "96,128"
ARGS = ["--episodes", "2", "--split", "val", "--seed", "3", "--resolution", RES, "--max-steps", "12"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    generate.main(["--out", str(out), *ARGS])
    return out


def test_layout_and_json_keys(dataset):
    files = sorted(p.name for p in (dataset / "annotation" / "val").iterdir())
    assert files == ["0.json", "1.json"]
    ann = json.loads((dataset / "annotation" / "val" / "0.json").read_text())
    assert ann["videos"] == [{"video_path": "videos/val/0/rgb.mp4"}]
    assert (dataset / ann["videos"][0]["video_path"]).is_file()
    assert set(ann) >= {
        "texts",
        "state",
        "continuous_gripper_state",
        "action",
        "episode_id",
        "task",
        "policy",
    }
    assert isinstance(ann["success"], bool) and isinstance(ann["seed"], int)
    T = len(ann["state"])
    assert len(ann["continuous_gripper_state"]) == T and len(ann["action"]) == T - 1
    assert ann["texts"][0].split()[0] in {"put", "push", "lift"}


def test_same_seed_gives_identical_json_bytes_across_worker_counts(dataset, tmp_path):
    generate.main(["--out", str(tmp_path), *ARGS, "--workers", "2"])
    for name in ("0.json", "1.json"):
        a = (dataset / "annotation" / "val" / name).read_bytes()
        assert a == (tmp_path / "annotation" / "val" / name).read_bytes()


def test_action_is_the_bridge_formula_of_the_recorded_state(dataset):
    ann = json.loads((dataset / "annotation" / "val" / "1.json").read_text())
    state, action = np.array(ann["state"]), np.array(ann["action"])
    np.testing.assert_array_equal(action[:, :6], relative_pose_actions(state))
    np.testing.assert_array_equal(np.array(ann["continuous_gripper_state"]), state[:, 6])
    assert np.all((action[:, 6] >= 0) & (action[:, 6] <= 1))  # commanded gripper, 1 = open


def test_video_has_one_frame_per_state_matching_the_sim_render(dataset):
    ann = json.loads((dataset / "annotation" / "val" / "0.json").read_text())
    video = read_video(dataset / ann["videos"][0]["video_path"])
    assert video.shape == (len(ann["state"]), 96, 128, 3)
    sim = BridgeSim(resolution=(96, 128))
    try:
        episode = generate.run_episode(sim, ann["seed"], tuple(generate.TASKS), tuple(generate.POLICIES), 12)
    finally:
        sim.close()
    np.testing.assert_array_equal(episode.states, np.array(ann["state"]))
    error = np.abs(video.astype(np.float64) - episode.frames.astype(np.float64)).mean(axis=(1, 2, 3))
    assert error.max() < 3.0  # h264 at crf 18 (measured ~1-2 grey levels)


def test_interrupted_write_leaves_no_visible_episode(tmp_path, monkeypatch):
    def crash(data, path):
        raise KeyboardInterrupt("interrupted after the video was written")

    monkeypatch.setattr(generate, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        generate.main(["--out", str(tmp_path), *ARGS])
    assert (tmp_path / "videos" / "val" / "0" / "rgb.mp4").is_file()  # the video made it...
    annotations = tmp_path / "annotation" / "val"
    assert not annotations.exists() or not list(annotations.glob("*.json"))  # ...but no episode is visible


def test_json_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "annotation" / "val" / "0.json"

    def broken_dump(data, f):
        f.write('{"texts": ')
        raise OSError("disk full")

    monkeypatch.setattr(generate.json, "dump", broken_dump)
    with pytest.raises(OSError):
        generate._write_json({"texts": ["x"]}, path)
    assert list(path.parent.iterdir()) == []  # neither the JSON nor its temporary file remains


def test_a_rerun_keeps_what_it_wrote_and_never_overwrites_another_runs_episodes(dataset, tmp_path, capsys):
    """An interrupted run, rerun (here: asked for one more episode), makes only the missing episodes,
    and the result is byte-identical to one uninterrupted run; an episode file of another run in the
    way is an error naming it, left as it was."""
    out = tmp_path / "resumed"
    generate.main(["--out", str(out), *ARGS])
    first = (out / "annotation" / "val" / "0.json").stat().st_mtime_ns
    more = [*ARGS[:1], "3", *ARGS[2:]]  # --episodes 3
    generate.main(["--out", str(out), *more])
    assert "wrote 1 episodes" in capsys.readouterr().out
    assert (out / "annotation" / "val" / "0.json").stat().st_mtime_ns == first  # kept, not rewritten
    fresh = tmp_path / "fresh"
    generate.main(["--out", str(fresh), *more])
    for i in range(3):
        name = f"annotation/val/{i}.json"
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
    before = (out / "annotation" / "val" / "0.json").read_bytes()
    for other in (["--max-steps", "11"], ["--seed", "4"], ["--resolution", "48,64"]):
        args = list(more)
        k = args.index(other[0])
        args[k + 1] = other[1]
        with pytest.raises(SystemExit, match=r"0\.json: written by another run"):
            generate.main(["--out", str(out), *args])
    (out / "annotation" / "val" / "1.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"1\.json: cannot read it"):
        generate.main(["--out", str(out), *more])
    assert (out / "annotation" / "val" / "0.json").read_bytes() == before
