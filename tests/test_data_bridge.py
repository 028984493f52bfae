"""Loading Bridge annotations in both layouts, and rejecting malformed ones with a message naming file + field."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from bridge_fixtures import DELETE, frame_level, make_annotation, rewrite_json, write_episode

from worldsim.data.actions import model_actions
from worldsim.data.bridge import (
    BridgeFormatError,
    detect_layout,
    list_episodes,
    list_splits,
    load_episode,
    load_split,
    scan_split,
    validate,
)


def test_irasim_layout_loads_episode_and_frames(tmp_path):
    for i in (10, 2, 0):
        write_episode(tmp_path, i, T=6, split="val", seed=i)
    write_episode(tmp_path, 0, T=5, split="train")
    assert detect_layout(tmp_path) == "irasim"
    assert list_splits(tmp_path) == ["train", "val"]
    assert [p.stem for p in list_episodes(tmp_path, "val")] == ["0", "2", "10"]  # natural order

    ep = load_episode(tmp_path / "annotation" / "val" / "2.json")  # root inferred from the path
    assert ep.video_path == tmp_path / "videos" / "val" / "2" / "rgb.mp4"
    assert ep.episode_id == "2" and ep.texts == ["put the red block in the bowl"]
    assert (
        ep.state.shape == (6, 7) and ep.action.shape == (5, 7) and ep.continuous_gripper_state.shape == (6,)
    )
    assert ep.extra == {"task": "place", "success": True}
    ann = make_annotation(6, seed=2)
    np.testing.assert_array_equal(ep.state, ann["state"])
    frames = ep.frames()
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
    # Frame t's background brightness survives h264: frames are in order.
    np.testing.assert_allclose(frames[:, 2, 2].mean(-1), [frame_level(t) for t in range(6)], atol=4)
    m = ep.model_actions("state", 20.0)
    np.testing.assert_array_equal(m, model_actions(ep.state, ep.action, ep.continuous_gripper_state, "state"))
    assert [e.episode_id for e in load_split(tmp_path, "val")] == ["0", "2", "10"]


def test_flat_layout_with_and_without_video_key(tmp_path):
    write_episode(tmp_path, 1, T=4, layout="flat")
    write_episode(tmp_path, 3, T=5, layout="flat", video_key=False)  # falls back to videos/<stem>.mp4
    assert detect_layout(tmp_path) == "flat"
    assert list_splits(tmp_path) == ["train"]
    eps = load_split(tmp_path, "train")
    assert [e.video_path.name for e in eps] == ["1.mp4", "3.mp4"]
    assert [e.frames().shape[0] for e in eps] == [4, 5]
    with pytest.warns(UserWarning, match="no splits"):  # served under any name, with a warning
        assert len(load_split(tmp_path, "val")) == 2


def test_optional_fields_default(tmp_path):
    path = write_episode(tmp_path, "ep7", T=3)
    rewrite_json(path, texts=DELETE, episode_id=DELETE)
    ep = load_episode(path)
    assert ep.texts == [] and ep.episode_id == "ep7"


def test_missing_gripper_state_is_an_error_unless_fallback_allowed(tmp_path):
    path = write_episode(tmp_path, 0, T=4)
    rewrite_json(path, continuous_gripper_state=DELETE)
    with pytest.raises(BridgeFormatError, match=r"0\.json.*'continuous_gripper_state'"):
        load_episode(path)
    ep = load_episode(path, allow_missing_gripper_state=True)
    np.testing.assert_array_equal(ep.continuous_gripper_state, ep.state[:, 6])
    assert ep.extra["continuous_gripper_state_source"] == "state[:, 6]"


def _bad(tmp_path, **changes):
    path = write_episode(tmp_path, "bad", T=5)
    rewrite_json(path, **changes)
    return path


def _raises(path, field, **kwargs):
    """Loading `path` raises BridgeFormatError whose message names the file and `field`."""
    pattern = re.escape(str(path)) + r".*" + re.escape(field)
    with pytest.raises(BridgeFormatError, match=pattern):
        load_episode(path, **kwargs)


ANN5 = make_annotation(5)
MALFORMED = {
    "missing_state": ({"state": DELETE}, "'state'"),
    "missing_action": ({"action": DELETE}, "'action'"),
    "missing_videos": ({"videos": DELETE}, "'videos'"),
    "state_wrong_width": ({"state": [row[:6] for row in ANN5["state"]]}, "'state': expected shape (T, 7)"),
    "state_ragged": ({"state": ANN5["state"][:4] + [[0.0] * 6]}, "'state'"),
    "state_not_list": ({"state": "0,0,0"}, "'state': expected a list"),
    "state_strings": ({"state": [["a"] * 7] * 5}, "'state'"),
    "action_length": ({"action": ANN5["action"][:3]}, "'action': expected shape (T-1, 7)"),
    "action_width": ({"action": [row[:6] for row in ANN5["action"]]}, "'action'"),
    "gripper_length": (
        {"continuous_gripper_state": [0.0] * 4},
        "'continuous_gripper_state': expected length",
    ),
    "nan_state": ({"state": [[float("nan")] * 7] + ANN5["state"][1:]}, "'state': non-finite"),
    "inf_action": ({"action": ANN5["action"][:4] + [[float("inf")] * 7]}, "'action': non-finite"),
    "nan_gripper": ({"continuous_gripper_state": [0.0, float("nan"), 0.0, 1.0, 1.0]}, "non-finite"),
    "one_frame": ({"state": ANN5["state"][:1], "action": []}, "need T >= 2"),
    "videos_empty": ({"videos": []}, "'videos': expected a non-empty list"),
    "videos_no_path": ({"videos": [{"path": "x.mp4"}]}, "'videos[0].video_path'"),
    "video_missing": ({"videos": [{"video_path": "videos/nowhere.mp4"}]}, "video file not found"),
    "texts_wrong_type": ({"texts": [1, 2]}, "'texts'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_annotation_names_file_and_field(tmp_path, case):
    changes, field = MALFORMED[case]
    _raises(_bad(tmp_path, **changes), field)


def test_not_json_and_not_an_object(tmp_path):
    path = write_episode(tmp_path, "x", T=3)
    path.write_text("{ this is not json")
    _raises(path, "not valid JSON")
    path.write_text(json.dumps([1, 2, 3]))
    _raises(path, "must be a JSON object, got list")


def test_truncated_mp4_is_wrapped_with_json_name(tmp_path):
    path = write_episode(tmp_path, "cut", T=6, size=(64, 96))
    video = load_episode(path).video_path
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    ep = load_episode(path)  # the JSON is fine; the video is only decoded on demand
    with pytest.raises(BridgeFormatError, match=re.escape(str(path)) + r".*'videos\[0\]\.video_path'"):
        ep.frames()
    with pytest.raises(BridgeFormatError, match="cut.json"):
        validate(ep, check_video=True)
    validate(ep, check_video=False)  # the cheap check passes: the file exists


def test_frame_count_mismatch(tmp_path):
    path = write_episode(tmp_path, "short", T=6, video_frames=5)
    ep = load_episode(path)
    with pytest.raises(BridgeFormatError, match=r"short\.json.*has 5 frames but 'state' has T=6"):
        ep.frames()
    with pytest.raises(BridgeFormatError, match="has 5 frames"):
        load_split(tmp_path, "train", check_video=True)


def test_split_level_errors(tmp_path):
    with pytest.raises(BridgeFormatError, match="not a Bridge dataset root"):
        detect_layout(tmp_path)
    write_episode(tmp_path, 0, T=3, split="train")
    with pytest.raises(BridgeFormatError, match=r"annotation/test.*unknown split 'test'.*\['train'\]"):
        list_episodes(tmp_path, "test")
    (tmp_path / "annotation" / "val").mkdir()
    with pytest.raises(BridgeFormatError, match=r"annotation/val.*split 'val' is empty"):
        load_split(tmp_path, "val")


def test_skip_bad_reports_and_skips(tmp_path):
    for i in range(4):
        write_episode(tmp_path, i, T=4, seed=i)
    rewrite_json(tmp_path / "annotation" / "train" / "1.json", state=DELETE)
    rewrite_json(tmp_path / "annotation" / "train" / "3.json", action=[[0.0] * 7])
    with pytest.raises(BridgeFormatError, match=r"1\.json: missing required field 'state'"):
        load_split(tmp_path, "train")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps = load_split(tmp_path, "train", skip_bad=True)
    assert [e.episode_id for e in eps] == ["0", "2"]
    messages = [str(w.message) for w in caught]
    assert any("1.json" in m and "'state'" in m for m in messages)
    assert any("3.json" in m and "'action'" in m for m in messages)
    assert any("skipped 2 of 4 episodes" in m for m in messages)
    good, skipped = scan_split(tmp_path, "train")
    assert len(good) == 2 and [s.json_path.name for s in skipped] == ["1.json", "3.json"]
