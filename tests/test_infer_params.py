"""worldsim-infer's inputs: the Cosmos params schema, the actions and frames it feeds the model, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bridge_fixtures import frame_level, write_episode

from worldsim.data.actions import relative_pose_actions
from worldsim.data.bridge import BridgeFormatError, load_episode
from worldsim.inference.checkpoint import load_converted, load_model
from worldsim.inference.infer import episode_input, main, select_annotations
from worldsim.inference.params import ParamsError, ParamsWarning, load_params
from worldsim.models.config import get_preset
from worldsim.models.world_model import CheckpointError, WorldModel

COSMOS_BRIDGE_EXAMPLE = {
    "name": "bridge_example", "input_json_sub_folder": "annotation/test",
    "save_root": "results/action2world", "guidance": 0, "resolution": "256,320", "camera_id": 0,
    "start": 0, "end": 100, "fps_downsample_ratio": 1, "gripper_scale": 1.0,
    "gripper_key": "continuous_gripper_state", "state_key": "state", "reverse": False,
    "single_chunk": False, "start_frame_idx": 0, "save_fps": 20, "num_latent_conditional_frames": 1,
    "action_scaler": 20.0, "use_quat": False, "seed": 0,
    "action_load_fn": "cosmos_predict2._src.predict2.action.datasets.dataset_local.load_action",
    "prompt": "a robot arm", "negative_prompt": "blurry",
}  # fmt: skip


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Hand-made Bridge root with test episodes "0", "2", "10" of 15 frames (14 actions)."""
    root = tmp_path / "bridge"
    for i, eid in enumerate((0, 2, 10)):
        write_episode(root, episode_id=eid, T=15, split="test", seed=i)
    return root


def write_params(tmp_path: Path, **changes) -> Path:
    data = {k: v for k, v in changes.items() if v is not None}
    path = tmp_path / "inference_params.json"
    path.write_text(json.dumps(data))
    return path


def test_cosmos_bridge_example_loads_unchanged(tmp_path, dataset):
    path = write_params(tmp_path, **COSMOS_BRIDGE_EXAMPLE, input_root=str(dataset))
    p = load_params(path)
    assert p.name == "bridge_example" and p.input_root == dataset.resolve()
    assert p.resolution_hw == (256, 320) and p.action_guidance == 1.0  # Cosmos guidance 0 = ours off
    # start/end index the naturally sorted list ("2" < "10"), end exclusive and clipped
    assert [f.stem for f in select_annotations(p)] == ["0", "2", "10"]
    p2 = load_params(
        write_params(tmp_path, **{**COSMOS_BRIDGE_EXAMPLE, "start": 1, "end": 2}, input_root=str(dataset))
    )
    assert [f.stem for f in select_annotations(p2)] == ["2"]


def test_relative_input_root_is_found_beside_the_params_file(tmp_path, dataset, monkeypatch):
    monkeypatch.chdir("/")
    p = load_params(write_params(tmp_path, input_root="bridge", input_json_sub_folder="annotation/test"))
    assert p.input_root == dataset.resolve() and p.name == "inference_params"


def test_unknown_and_ignored_keys_warn(tmp_path, dataset):
    path = write_params(
        tmp_path, input_root=str(dataset), input_json_sub_folder="annotation/test", colour="red", reverse=True
    )
    with pytest.warns(ParamsWarning) as record:
        load_params(path)
    messages = " ".join(str(w.message) for w in record)
    assert "unknown keys ['colour']" in messages and "'reverse' is ignored" in messages


BAD_PARAMS = [
    # (changes to a valid params dict, words the message must contain)
    ({"use_quat": True}, ["use_quat", "not supported"]),
    ({"action_load_fn": "my_pkg.loaders.load"}, ["action_load_fn", "my_pkg.loaders.load"]),
    ({"resolution": "256x320"}, ["resolution", '"H,W"']),
    ({"start": 5, "end": 2}, ["start", "start (5) > end (2)"]),
    ({"num_latent_conditional_frames": 2}, ["num_latent_conditional_frames", "must be 1"]),
    ({"start": "0"}, ["'start'", "expected a JSON int"]),
    ({"input_root": None}, ["input_root", "missing"]),
    ({"input_json_sub_folder": "annotation/nope"}, ["input_json_sub_folder", "does not exist"]),
    ({"input_root": "/no/such/root"}, ["input_root", "not found"]),
    ({"fps_downsample_ratio": 0}, ["fps_downsample_ratio", "> 0"]),
    ({"input_root": None, "image": "frame.png"}, ["'image' and 'actions' go together"]),
]


@pytest.mark.parametrize(
    "changes, words", BAD_PARAMS, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(BAD_PARAMS)]
)
def test_bad_params_name_the_file_and_the_key(tmp_path, dataset, changes, words):
    (tmp_path / "frame.png").write_bytes(b"")  # exists, so only the pairing rule can fail
    base = {"input_root": str(dataset), "input_json_sub_folder": "annotation/test"}
    path = write_params(tmp_path, **{**base, **changes})
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert str(e.value).startswith(str(path))
    for word in words:
        assert word in str(e.value)


def test_bad_json_and_missing_file(tmp_path):
    bad = tmp_path / "params.json"
    bad.write_text('{"input_root": "x",')
    with pytest.raises(ParamsError, match="not valid JSON"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.json")
    bad.write_text("[1, 2]")
    with pytest.raises(ParamsError, match="top level must be a JSON object"):
        load_params(bad)


def test_cli_reports_errors_without_a_traceback(tmp_path, dataset, world_bundle):
    params = write_params(tmp_path, input_root=str(dataset), input_json_sub_folder="annotation/test")
    with pytest.raises(SystemExit) as e:
        main(["-i", str(params), "-o", str(tmp_path / "out"), "--checkpoint-path", str(tmp_path / "nope.pt")])
    assert "worldsim-infer: error" in str(e.value) and "nope.pt: checkpoint not found" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["-i", str(params), "-o", str(tmp_path / "out"), "--checkpoint-path", str(tmp_path)])
    assert "model.safetensors" in str(e.value)
    bad = write_params(
        tmp_path, input_root=str(dataset), input_json_sub_folder="annotation/test", use_quat=True
    )
    with pytest.raises(SystemExit, match="use_quat"):
        main(["-i", str(bad), "--checkpoint-path", str(world_bundle)])


def test_episode_actions_are_the_training_actions(tmp_path, dataset):
    p = load_params(write_params(tmp_path, input_root=str(dataset), input_json_sub_folder="annotation/test"))
    json_path = dataset / "annotation" / "test" / "2.json"
    ep = load_episode(json_path)
    for signal in ("command", "state"):
        cfg = get_preset("tiny", gripper_signal=signal)
        item = episode_input(json_path, p, cfg)
        np.testing.assert_allclose(item.actions, ep.model_actions(signal, 20.0), atol=1e-5)
        assert item.ground_truth.shape == (15, cfg.height, cfg.width, 3)


def test_downsampling_start_frame_and_gripper_scale(tmp_path, dataset):
    p = load_params(
        write_params(
            tmp_path, input_root=str(dataset), input_json_sub_folder="annotation/test",
            fps_downsample_ratio=2, start_frame_idx=1, gripper_scale=0.5, action_scaler=10.0,
        )
    )  # fmt: skip
    json_path = dataset / "annotation" / "test" / "0.json"
    ep = load_episode(json_path)
    cfg = get_preset("tiny", gripper_signal="state")
    item = episode_input(json_path, p, cfg)
    # 15 frames -> kept 0, 2, ..., 14 (8 frames, 7 actions); from kept frame 1 on: 6 actions
    assert item.actions.shape == (6, 7)
    kept = ep.state[::2]
    np.testing.assert_allclose(item.actions[:, :6], relative_pose_actions(kept)[1:] * 10.0, atol=1e-5)
    np.testing.assert_allclose(item.actions[:, 6], ep.continuous_gripper_state[::2][2:] * 0.5, atol=1e-6)
    # ground truth frame k is source frame 2 * (1 + k): the fixture's background level tells which
    levels = [float(np.median(f[:4, :4])) for f in item.ground_truth]
    assert np.allclose(levels, [frame_level(2 * (1 + k)) for k in range(7)], atol=4)


def test_converted_pt_loads_with_weights_only(tmp_path, world_bundle):
    ref = WorldModel.from_pretrained(world_bundle)
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    pt = tmp_path / "model_ema_bf16.pt"
    torch.save({"model": state, "config": ref.cfg.to_json()}, pt)
    model = load_model(pt)
    assert model.cfg == ref.cfg and not model.training
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, state[k].float())
    # model.pt holds regular and EMA weights: inference uses the EMA ones
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save({"model": zeros, "ema": state, "config": ref.cfg.to_json()}, tmp_path / "model.pt")
    emb = next(iter(state))
    torch.testing.assert_close(load_converted(tmp_path / "model.pt").state_dict()[emb], state[emb].float())


@pytest.mark.parametrize(
    "content, words",
    [
        (lambda cfg, sd: {"model": sd}, "expected a dict with 'config'"),
        (lambda cfg, sd: {"model": sd, "config": "{bad"}, "bad 'config' entry"),
        (lambda cfg, sd: {"model": {}, "config": cfg.to_json()}, "do not match config"),
        (lambda cfg, sd: {"model": sd, "config": cfg.to_json(), "extra": Path("x")}, "weights_only"),
    ],
)
def test_bad_converted_checkpoints(tmp_path, content, words):
    cfg = get_preset("tiny")
    sd = WorldModel(cfg).state_dict()
    pt = tmp_path / "bad.pt"
    torch.save(content(cfg, sd), pt)
    with pytest.raises(CheckpointError, match=words) as e:
        load_model(pt)
    assert str(e.value).startswith(str(pt))


def test_selection_and_camera_errors(tmp_path, dataset):
    base = {"input_root": str(dataset), "input_json_sub_folder": "annotation/test"}
    p = load_params(write_params(tmp_path, **base, start=3, end=9))
    with pytest.raises(ParamsError, match=r"start=3, end=9 select no annotation \(3 in"):
        select_annotations(p)
    p = load_params(write_params(tmp_path, **base, camera_id=1))
    with pytest.raises(BridgeFormatError, match=r"0\.json: field 'videos': camera_id=1 but 1 video"):
        episode_input(dataset / "annotation" / "test" / "0.json", p, get_preset("tiny"))
    p = load_params(write_params(tmp_path, **base, start_frame_idx=14))
    with pytest.raises(BridgeFormatError, match="start_frame_idx=14 leaves no action"):
        episode_input(dataset / "annotation" / "test" / "0.json", p, get_preset("tiny"))
