"""worldsim-infer end to end: rollouts over Bridge episodes, videos and PSNR JSONs, converted checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bridge_fixtures import make_frames, write_episode
from PIL import Image

from worldsim.data.video import read_video
from worldsim.inference.checkpoint import load_model
from worldsim.inference.infer import RolloutInput, main, roll_out
from worldsim.inference.params import load_params
from worldsim.models.world_model import WorldModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_params(folder: Path, **values) -> Path:
    path = folder / "inference_params.json"
    path.write_text(json.dumps({"denoise_steps": 1, "save_fps": 5, **values}))
    return path


def test_infer_rolls_out_every_generated_episode(tmp_path, world_bundle):
    generate = pytest.importorskip("worldsim.sim.generate", reason="BridgeSim generator not available")
    root = tmp_path / "bridge_sim"
    generate.main(["--out", str(root), "--episodes", "2", "--split", "test", "--seed", "0",
                   "--resolution", "48,64", "--max-steps", "6"])  # fmt: skip
    params = write_params(
        tmp_path, name="bridge_example", input_root=str(root), input_json_sub_folder="annotation/test",
        resolution="256,320", guidance=0, prompt="ignored",
    )  # fmt: skip
    with pytest.warns(UserWarning, match="differs from the model's 32,48"):
        main(["-i", str(params), "-o", str(tmp_path / "out"), "--checkpoint-path", str(world_bundle)])
    out = tmp_path / "out" / "bridge_example"
    lengths = []
    for stem in ("0", "1"):
        T = len(json.loads((root / "annotation" / "test" / f"{stem}.json").read_text())["state"])
        side_by_side = read_video(out / f"{stem}.mp4")
        assert side_by_side.shape == (T, 32, 2 * 48, 3)  # start frame + one per action; prediction | truth
        assert read_video(out / f"{stem}_pred.mp4").shape == (T, 32, 48, 3)
        record = json.loads((out / f"{stem}.json").read_text())
        assert len(record["psnr"]) == len(record["copy_start_frame_psnr"]) == T - 1
        assert all(0 < v < 99 for v in record["psnr"])
        assert record["mean_psnr"] == pytest.approx(np.mean(record["psnr"]))
        assert record["source_video"].endswith(f"videos/test/{stem}/rgb.mp4")
        assert Path(record["comparison_video"]) == out / f"{stem}.mp4"
        # the right half of the video is the ground truth, resized: close to the decoded source frames
        truth = read_video(root / "videos" / "test" / stem / "rgb.mp4")
        assert abs(float(side_by_side[:, :, 48:].mean()) - float(truth.mean())) < 3
        lengths.append(T - 1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_episodes"] == 2 and summary["action_guidance"] == 1.0
    assert len(summary["psnr_per_horizon"]) == max(lengths)
    counts = summary["episodes_per_horizon"]
    assert counts[0] == 2 and counts[-1] == lengths.count(max(lengths))


def test_single_chunk_and_start_end_select_what_cosmos_would(tmp_path, world_bundle):
    root = tmp_path / "bridge"
    for i, eid in enumerate((0, 2, 10)):
        write_episode(root, episode_id=eid, T=16, split="test", seed=i)
    params = write_params(
        tmp_path, name="chunk", input_root=str(root), input_json_sub_folder="annotation/test",
        start=1, end=2, single_chunk=True,
    )  # fmt: skip
    main(["-i", str(params), "-o", str(tmp_path / "out"), "--checkpoint-path", str(world_bundle)])
    out = tmp_path / "out" / "chunk"
    assert sorted(p.name for p in out.iterdir()) == ["2.json", "2.mp4", "2_pred.mp4", "summary.json"]
    assert read_video(out / "2.mp4").shape[0] == 13  # 1 conditioning frame + 12 predicted
    assert len(json.loads((out / "2.json").read_text())["psnr"]) == 12


def test_converted_pt_and_image_input(tmp_path, world_bundle):
    ref = WorldModel.from_pretrained(world_bundle)
    pt = tmp_path / "model_ema_fp32.pt"
    torch.save({"model": ref.state_dict(), "config": ref.cfg.to_json()}, pt)
    Image.fromarray(make_frames(1, (48, 64))[0]).save(tmp_path / "start.png")
    actions = [[0.01, 0.0, -0.01, 0.0, 0.0, 0.05, 1.0], [0.0, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0]] * 2
    params = write_params(tmp_path, name="img", image="start.png", actions=actions, seed=3)
    main(["-i", str(params), "-o", str(tmp_path / "out"), "--checkpoint-path", str(pt)])
    out = tmp_path / "out" / "img"
    predicted = read_video(out / "start_pred.mp4")
    assert predicted.shape == (5, 32, 48, 3)
    record = json.loads((out / "start.json").read_text())
    assert record["num_predicted_frames"] == 4 and "psnr" not in record  # no ground truth to score
    # the .pt model rolls out exactly as the safetensors one, and the params' seed fixes the noise
    p = load_params(params)
    start = np.array(Image.open(tmp_path / "start.png").resize((48, 32)))
    item = RolloutInput("x", start, np.zeros((3, 7), np.float32), ground_truth=None, source={})
    a = roll_out(load_model(pt), p, item)
    b = roll_out(ref, p, item)
    np.testing.assert_array_equal(a, b)
    c = roll_out(ref, load_params(write_params(tmp_path, image="start.png", actions=actions, seed=4)), item)
    assert np.abs(c.astype(int) - b.astype(int)).max() > 0
