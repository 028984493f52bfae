"""The teleop app's handlers, called directly (no server): steps, undo, starts, bad uploads, export."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from bridge_fixtures import write_episode
from PIL import Image
from test_model_core import random_model

from worldsim.apps.teleop import KEY_MAP, TeleopApp, build_app, elem_id, parse_args
from worldsim.apps.teleop_session import COMMANDS, TeleopSession, command_action
from worldsim.apps.teleop_starts import MAX_UPLOAD_BYTES
from worldsim.data.video import read_video
from worldsim.models.world_model import WorldModel, load_shared

NUM_START_FRAMES = 3


def make_bundle(path: Path) -> Path:
    """A tiny random-weight bundle (every layer non-zero, so frames change step to step) with start
    frames: smooth colour gradients and end-effector states at the BridgeSim home pose."""
    model = random_model("tiny")
    H, W = model.cfg.height, model.cfg.width
    rows, cols = np.mgrid[0:H, 0:W]
    images = np.stack(
        [
            np.stack([rows * 255 // H, cols * 255 // W, np.full((H, W), 80 * s)], axis=-1)
            for s in range(NUM_START_FRAMES)
        ]
    ).astype(np.uint8)
    ee_states = np.tile([0.22, 0.0, 0.17, 0.0, 0.0, 0.0, 0.0], (NUM_START_FRAMES, 1))
    return model.save_pretrained(path, start_frames={"images": images, "ee_states": ee_states})


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model is fastest on one thread; on a busy CI machine, two OpenMP threads spinning
    against other jobs make each of its steps ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("teleop") / "tiny_bundle")


@pytest.fixture()
def app(bundle: Path) -> TeleopApp:
    return TeleopApp(load_shared(bundle), WorldModel.start_frames(bundle))


def counter(status: str) -> int:
    """The frame counter at the head of the status line (`**frame N**`)."""
    return int(re.match(r"\*\*frame (\d+)\*\*", status).group(1))


def press(app: TeleopApp, session, command: str, cm: float = 2.0, rad: float = 0.1) -> tuple:
    return app.command(session, command, cm, rad)


def test_three_presses_give_three_new_frames_and_a_four_point_path(app: TeleopApp) -> None:
    session, first, _, status, _ = app.load(None)
    assert counter(status) == 0 and first.shape == (*app.resolution, 3)
    shown = [first]
    for _ in range(3):
        session, frame, _, status, figure = press(app, session, "+x")
        shown.append(frame)
    assert counter(status) == 3 and "path 4 points" in status
    assert all(not np.array_equal(a, b) for i, a in enumerate(shown) for b in shown[i + 1 :])
    path = np.stack([figure.data[0].x, figure.data[0].y, figure.data[0].z], axis=1)
    assert path.shape == (4, 3)
    # +x moves along the gripper's x axis; the start gripper frame has zero roll/pitch/yaw.
    np.testing.assert_allclose(np.diff(path, axis=0), [[0.02, 0, 0]] * 3, atol=1e-9)
    assert "ms" in status and "step – ms" not in status


def test_undo_replays_to_exactly_the_same_world(app: TeleopApp) -> None:
    session = app.load(None)[0]
    for command in ("+x", "+y", "close"):
        press(app, session, command)
    before = [f.copy() for f in session.frames]
    session, _, _, status, figure = app.undo(session)
    assert counter(status) == 2 and len(figure.data[0].x) == 3
    assert all(np.array_equal(a, b) for a, b in zip(session.frames, before[:3]))
    assert session.gripper_open  # the undone step was the one that closed it
    press(app, session, "close")  # same action again: same seed, same noise, same frame
    assert np.array_equal(session.frames[3], before[3])
    for _ in range(4):
        session = app.undo(session)[0]
    assert session.num_steps == 0 and np.array_equal(session.frames[0], before[0])


def test_sessions_keep_separate_worlds(app: TeleopApp) -> None:
    a, b = app.load(None)[0], app.load(None)[0]
    press(app, a, "+z")
    press(app, a, "+z")
    press(app, b, "-y")
    assert (a.num_steps, b.num_steps) == (2, 1)
    assert a.path()[-1, 2] > a.path()[0, 2] and b.path()[-1, 1] < b.path()[0, 1]


def test_concurrent_sessions_step_as_if_alone(app: TeleopApp) -> None:
    """Sessions share one model from Gradio's worker threads; each world is exactly what it would
    be alone (the shared weights are read-only, each rollout keeps its own cache and noise)."""
    commands = ["+x", "+z", "-yaw", "close", "-x"]
    start = app.load(None)[0].start
    alone = TeleopSession(app.model, start, seed=7)
    for command in commands:
        alone.step(command_action(command, 0.02, 0.1, alone.gripper_open))
    together = [TeleopSession(app.model, start, seed=7) for _ in range(3)]

    def drive(session: TeleopSession) -> None:
        for command in commands:
            press(app, session, command)

    threads = [threading.Thread(target=drive, args=(s,)) for s in together]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for session in together:
        assert all(np.array_equal(a, b) for a, b in zip(session.frames, alone.frames, strict=True))


def test_gripper_command_persists_across_moves_and_actions_are_clipped() -> None:
    closed_move = command_action("+x", 0.5, 0.1, gripper_open=False)  # 50 cm asked, 5 cm allowed
    np.testing.assert_allclose(closed_move, [0.05, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(command_action("-yaw", 0.02, 0.1, True), [0, 0, 0, 0, 0, -0.1, 1])
    np.testing.assert_allclose(command_action("open", 0.02, 0.1, False), [0, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="unknown command"):
        command_action("+w", 0.02, 0.1, True)


def test_buttons_keys_and_ids_cover_every_command() -> None:
    assert COMMANDS == (
        "+x", "-x", "+y", "-y", "+z", "-z", "+roll", "-roll", "+pitch", "-pitch", "+yaw", "-yaw", "open", "close",
    )  # fmt: skip
    assert set(KEY_MAP.values()) == set(COMMANDS) | {"undo"}
    assert (elem_id("+x"), elem_id("-pitch"), elem_id("open")) == (
        "btn-plus-x",
        "btn-minus-pitch",
        "btn-open",
    )


def test_bad_uploads_warn_and_keep_the_current_world(app: TeleopApp, tmp_path: Path) -> None:
    session = app.load(None)[0]
    press(app, session, "+x")
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 6000)).save(bomb)  # small file, 48 M pixels once decoded
    for path, message in [
        (not_image, "not an image"),
        (huge, "MB"),
        (bomb, "too large"),
        (None, "choose an image"),
    ]:
        with pytest.warns(UserWarning, match=message):
            out = app.reset(session, "uploaded image", "", "", 0, None if path is None else str(path))
        assert out[0] is session and session.num_steps == 1
    with pytest.warns(UserWarning, match="whole number"):
        assert app.reset(session, "BridgeSim", "abc", "", 0, None)[0] is session


def test_uploaded_image_becomes_the_start_frame(app: TeleopApp, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (800, 450), (200, 40, 40)).save(photo)  # 16:9: centre-cropped to 4:3
    session, _, _, status, _ = app.reset(None, "uploaded image", "", "", 0, str(photo))
    assert "uploaded image photo.jpg" in status
    start = session.frames[0]
    assert start.shape == (*app.resolution, 3)
    assert np.abs(start.astype(int) - [200, 40, 40]).max() <= 3  # JPEG's rounding
    press(app, session, "+z")
    assert session.num_steps == 1


def test_export_is_an_mp4_of_every_frame(app: TeleopApp) -> None:
    session = app.load(None)[0]
    for command in ("+x", "-y", "+yaw", "close"):
        press(app, session, command)
    first = Path(app.export(session)["value"])
    video = read_video(app.export(session)["value"])
    assert video.shape == (5, *app.resolution, 3)
    assert not first.exists()  # each export replaces the session's previous file
    # h264 is lossy: each decoded frame is nearer its own predicted frame than any other, in order.
    predicted = np.stack(session.frames).astype(float)
    distance = ((video.astype(float)[:, None] - predicted[None]) ** 2).mean(axis=(2, 3, 4))  # (5, 5)
    assert list(distance.argmin(axis=1)) == [0, 1, 2, 3, 4]
    session.close()
    assert session.export_path is None


def test_episode_start_replays_the_recorded_actions_against_its_frames(
    app: TeleopApp, tmp_path: Path
) -> None:
    json_path = write_episode(tmp_path / "bridge", T=6)
    with pytest.warns(UserWarning, match="outside the episode"):
        app.reset(None, "dataset episode", "", str(json_path), 9, None)
    with pytest.warns(UserWarning, match="no episode annotation"):
        app.reset(None, "dataset episode", "", str(tmp_path / "missing.json"), 0, None)
    session, _, truth, status, _ = app.reset(None, "dataset episode", "", str(json_path), 1, None)
    assert "episode 0 frame 1" in status and truth["visible"]
    updates = list(app.replay(session))
    assert len(updates) == 1 + 4  # the restart, then one update per recorded action from frame 1
    session, _, truth, status, figure = updates[-1]
    assert session.num_steps == 4 and len(figure.data[0].x) == 5
    assert "mean over 4 frames" in status and truth["value"] is not None
    press(app, session, "+x")  # leaving the recording: no ground truth to compare against
    assert app.views(session)[2]["value"] is None


def test_replay_without_an_episode_warns(app: TeleopApp) -> None:
    session = app.load(None)[0]
    with pytest.warns(UserWarning, match="dataset-episode start"):
        updates = list(app.replay(session))
    assert len(updates) == 1 and updates[0][0] is session


def test_bridgesim_start_steps_the_ground_truth_beside_the_world(app: TeleopApp) -> None:
    session, frame, truth, status, _ = app.reset(None, "BridgeSim", "3", "", 0, None)
    try:
        assert "BridgeSim seed 3" in status and truth["visible"]
        assert np.array_equal(truth["value"], frame)  # both start from the sim's rendered frame
        # Gradio runs each event on any worker thread; the simulator's GL context must not care.
        worker = threading.Thread(target=press, args=(app, session, "+z", 4.0))
        worker.start()
        worker.join()
        session, _, truth, status, _ = press(app, session, "-x", cm=4.0)
        assert "PSNR vs ground truth" in status and "over 2 frames" in status
        sim_frames = [f.copy() for f in session.start.truth.frames]
        assert not np.array_equal(sim_frames[0], sim_frames[2])  # the simulated arm moved
        session = app.undo(session)[0]
        press(app, session, "-x", cm=4.0)  # the sim is restored and re-stepped: same frame again
        assert np.array_equal(session.start.truth.frames[2], sim_frames[2])
    finally:
        session.close()


def test_cli_binds_to_localhost_without_a_share_link_by_default(bundle: Path) -> None:
    args = parse_args([])
    assert (args.host, args.port, args.share, args.checkpoint) == ("127.0.0.1", 7860, False, None)
    assert parse_args(["--share", "--host", "0.0.0.0"]).share
    demo = build_app(bundle)  # builds without launching a server
    labels = {getattr(block, "value", None) for block in demo.blocks.values()}
    assert set(COMMANDS) <= labels
