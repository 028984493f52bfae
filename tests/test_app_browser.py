"""The teleop app in real headless Chromium (Debian's chromium driven by Playwright), on a tiny bundle.

Run alone with `pytest -m browser tests/test_app_browser.py`. Also takes the README screenshot:

    python tests/test_app_browser.py --screenshot docs/teleop.png [--checkpoint PATH] [--bridgesim-seed 3]
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldsim.data.video import read_video

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-quic",
]  # fmt: skip
TIMEOUT_MS = 30_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path | None, port: int, log: Path) -> subprocess.Popen:
    """`worldsim-teleop` in a subprocess (the real CLI path), its output in `log` (a pipe nobody reads
    would fill and stall the server); returns once the page answers."""
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    # One torch thread: on a busy 2-core CI machine, OpenMP threads spinning against other jobs make
    # even the tiny model's steps take seconds; one thread keeps them at ~20 ms.
    env.setdefault("OMP_NUM_THREADS", "1")
    args = [sys.executable, "-m", "worldsim.apps.teleop", "--port", str(port)]
    args += [] if checkpoint is None else ["--checkpoint", str(checkpoint)]
    with open(log, "w") as out:  # the child keeps its own handle
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"teleop server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("teleop server did not answer within 90 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from test_app_teleop import make_bundle

    folder, port = tmp_path_factory.mktemp("browser"), free_port()
    proc = start_server(make_bundle(folder / "tiny_bundle"), port, folder / "server.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=20)
    print((folder / "server.log").read_text())  # shown by pytest when a test failed


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(context, url: str):  # noqa: ANN001, ANN201 - playwright types
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    wait_for_frame(page, 0)
    return page


def frame_number(page) -> int | None:  # noqa: ANN001
    """The counter in the status line, or None while Gradio shows its pending overlay there."""
    match = re.search(r"frame (\d+) · step", page.inner_text("#status"))
    return int(match.group(1)) if match else None


def wait_for_frame(page, n: int) -> None:  # noqa: ANN001
    page.wait_for_function(
        "n => /frame (\\d+) · step/.exec(document.querySelector('#status')?.innerText || '')?.[1] == n", arg=n
    )


def wait_for_path(page, points: int) -> np.ndarray:  # noqa: ANN001
    """Wait until the plotly path (trace 0) has `points` points; returns them (points, 3)."""
    js = "() => document.querySelector('#ee-plot .js-plotly-plot')?.data?.[0]?.x?.length"
    page.wait_for_function(f"n => ({js})() === n", arg=points)
    data = page.evaluate("() => document.querySelector('#ee-plot .js-plotly-plot').data[0]")
    return np.stack([data["x"], data["y"], data["z"]], axis=1)


def shown_frame(page) -> tuple[str, np.ndarray]:  # noqa: ANN001
    """(src, pixels) of the predicted frame as the browser shows it."""
    src = page.get_attribute("#frame img", "src")
    return src, np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def click_and_wait(page, elem_id: str, frame: int) -> None:  # noqa: ANN001
    page.click(f"#{elem_id}")
    wait_for_frame(page, frame)


def test_three_clicks_show_three_new_frames_and_a_four_point_path(server: str, browser) -> None:  # noqa: ANN001
    context = browser.new_context()
    page = open_page(context, server)
    frames = [shown_frame(page)]
    for n in (1, 2, 3):
        click_and_wait(page, "btn-plus-x", n)
        frames.append(shown_frame(page))
    sources = [src for src, _ in frames]
    assert len(set(sources)) == 4, sources
    assert all(not np.array_equal(a[1], b[1]) for i, a in enumerate(frames) for b in frames[i + 1 :])
    path = wait_for_path(page, 4)
    np.testing.assert_allclose(np.diff(path, axis=0), [[0.02, 0, 0]] * 3, atol=1e-6)  # 2 cm default step
    assert "path 4 points" in page.inner_text("#status")
    context.close()


def test_keyboard_shortcuts_step_and_undo(server: str, browser) -> None:  # noqa: ANN001
    context = browser.new_context()
    page = open_page(context, server)
    wait_for_path(page, 1)
    page.keyboard.press("r")  # +z
    wait_for_frame(page, 1)
    path = wait_for_path(page, 2)
    np.testing.assert_allclose(path[1] - path[0], [0, 0, 0.02], atol=1e-6)
    page.keyboard.press("u")  # undo
    wait_for_frame(page, 0)
    wait_for_path(page, 1)
    page.fill("#episode-path textarea, #episode-path input", "w")  # typing in a field is not driving
    page.wait_for_timeout(500)
    assert frame_number(page) == 0
    context.close()


def test_export_gives_an_mp4_with_every_frame(server: str, browser, tmp_path: Path) -> None:  # noqa: ANN001
    context = browser.new_context()
    page = open_page(context, server)
    click_and_wait(page, "btn-plus-y", 1)
    click_and_wait(page, "btn-close", 2)
    page.click("#btn-export")
    link = page.wait_for_selector("#export-file a[href*='.mp4']")
    video = tmp_path / "rollout.mp4"
    video.write_bytes(page.request.get(link.get_attribute("href")).body())
    frames = read_video(video)
    assert frames.shape[0] == 3 and frames.dtype == np.uint8
    context.close()


def test_two_browser_contexts_keep_separate_worlds(server: str, browser) -> None:  # noqa: ANN001
    first, second = browser.new_context(), browser.new_context()
    a, b = open_page(first, server), open_page(second, server)
    click_and_wait(a, "btn-plus-x", 1)
    click_and_wait(b, "btn-minus-z", 1)
    click_and_wait(a, "btn-plus-x", 2)
    assert frame_number(a) == 2 and frame_number(b) == 1
    path_a, path_b = wait_for_path(a, 3), wait_for_path(b, 2)
    np.testing.assert_allclose(path_a[-1] - path_a[0], [0.04, 0, 0], atol=1e-6)
    np.testing.assert_allclose(path_b[-1] - path_b[0], [0, 0, -0.02], atol=1e-6)
    b.reload()  # a new page is a new session: a fresh world, and the other one is untouched
    wait_for_frame(b, 0)
    assert frame_number(a) == 2
    first.close()
    second.close()


def test_api_clients_get_their_own_world_too(server: str) -> None:
    """gradio_client skips the page-load event: the first call makes the client's world."""
    from gradio_client import Client
    from test_app_teleop import counter

    first, second = Client(server, verbose=False), Client(server, verbose=False)
    first.predict(2.0, 0.1, api_name="/btn_plus_x")
    status = first.predict(2.0, 0.1, api_name="/btn_plus_y")[2]
    assert counter(status) == 2 and "path 3 points" in status
    assert counter(second.predict(2.0, 0.1, api_name="/btn_open")[2]) == 1
    assert counter(first.predict(api_name="/undo")[2]) == 1


def take_screenshot(url: str, path: Path, bridgesim_seed: int | None, steps: int = 4) -> None:
    """Drive the page a few steps (from a BridgeSim start when a seed is given) and save a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = open_page(browser.new_context(viewport={"width": 1400, "height": 1050}), url)
        if bridgesim_seed is not None:
            page.get_by_label("BridgeSim", exact=True).check()
            page.fill("#seed textarea, #seed input", str(bridgesim_seed))
            page.click("#btn-reset")
            page.wait_for_function(
                "() => /BridgeSim seed/.test(document.querySelector('#status')?.innerText)"
            )
            wait_for_frame(page, 0)
        for n, button in enumerate(["btn-minus-z", "btn-plus-x", "btn-plus-x", "btn-close"][:steps], 1):
            click_and_wait(page, button, n)
        wait_for_path(page, steps + 1)
        page.wait_for_timeout(1000)  # let plotly finish drawing
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        browser.close()


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="screenshot the teleop app")
    parser.add_argument("--screenshot", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--bridgesim-seed", type=int, default=None)
    cli = parser.parse_args()
    port = free_port()
    server_log = Path(tempfile.mkdtemp()) / "server.log"
    server_proc = start_server(cli.checkpoint, port, server_log)
    try:
        take_screenshot(f"http://127.0.0.1:{port}", cli.screenshot, cli.bridgesim_seed)
    finally:
        server_proc.terminate()
        print(server_log.read_text())
