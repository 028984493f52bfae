"""worldsim-teleop: drive the gripper inside the learned world in a browser and watch every predicted frame.

    worldsim-teleop [--checkpoint PATH] [--host 127.0.0.1] [--port 7860] [--share]
    python -m worldsim.apps.teleop --checkpoint checkpoints/bridge_small

The model is loaded once and shared; each browser session keeps its own world (a `TeleopSession`
in `gr.State`). `build_app(checkpoint)` builds the page without starting a server, so tests import
this module freely; only `main()` launches. Binds to 127.0.0.1 unless --host says otherwise, and
makes no public share link unless --share.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # must precede the gradio import

import argparse  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from worldsim.apps.teleop_session import COMMANDS, EpisodeTruth, TeleopSession, command_action  # noqa: E402
from worldsim.apps.teleop_starts import (  # noqa: E402
    MAX_UPLOAD_BYTES,
    StartError,
    bundle_start,
    episode_start,
    image_start,
    sim_start,
)
from worldsim.apps.teleop_views import path_figure, status_text  # noqa: E402
from worldsim.models.world_model import WorldModel, load_shared  # noqa: E402

# key -> button label (command); the page prints this map and its script clicks the buttons.
KEY_MAP: dict[str, str] = {
    "w": "+x", "s": "-x", "a": "+y", "d": "-y", "r": "+z", "f": "-z",
    "j": "+roll", "l": "-roll", "i": "+pitch", "k": "-pitch", "q": "+yaw", "e": "-yaw",
    "o": "open", "c": "close", "u": "undo",
}  # fmt: skip
FRAME_HEIGHT = 360  # CSS pixels a frame is shown at: the browser scales it up with square pixels
SOURCES = ("bundle start frame", "dataset episode", "uploaded image", "BridgeSim")
WORLD_CONCURRENCY = 16  # events of different sessions that may wait at once; MODEL_LOCK runs one forward
SERVER_MAX_FILE_SIZE = 5 * MAX_UPLOAD_BYTES  # beyond this Gradio itself refuses; below, we explain why


def elem_id(command: str) -> str:
    """A button's elem_id: '+x' -> 'btn-plus-x', 'open' -> 'btn-open'."""
    sign = {"+": "plus-", "-": "minus-"}.get(command[0], "")
    return "btn-" + sign + command.lstrip("+-")


def _keyboard_js() -> str:
    """Page-load script: keys click the buttons (not while typing in a text field), and frames are
    scaled up by the browser with square pixels (sending them at model resolution keeps the PNG
    encode per step ~10x cheaper than sending them upscaled)."""
    keys = {key: elem_id(command) for key, command in KEY_MAP.items()}
    return f"""() => {{
  if (window.__worldsimTeleop) return;
  window.__worldsimTeleop = true;
  const style = document.createElement("style");
  style.textContent = "#frame img, #truth img {{ image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }}";
  document.head.appendChild(style);
  const keys = {keys!r};
  const typing = (t) => t && (t.isContentEditable || t.tagName === "TEXTAREA" ||
    (t.tagName === "INPUT" && !["range", "checkbox", "radio", "button"].includes(t.type)));
  document.addEventListener("keydown", (event) => {{
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const button = document.getElementById(keys[event.key.toLowerCase()]);
    if (button) {{ event.preventDefault(); button.click(); }}
  }});
}}"""


def _key_help() -> str:
    pairs = [f"`{k}` {c}" for k, c in KEY_MAP.items()]
    return "**Keys:** " + " · ".join(pairs) + " (moves are in the gripper frame)"


def _parse_seed(seed: str | float | None) -> int:
    """The seed box: an integer, or empty for a random one."""
    if seed is None or str(seed).strip() == "":
        return int(np.random.default_rng().integers(1_000_000))
    try:
        return int(float(str(seed).strip()))
    except ValueError as e:
        raise StartError(f"the seed must be a whole number or empty (random), got {seed!r}") from e


class TeleopApp:
    """The page's event handlers over one shared model; every per-visitor value comes in as `session`."""

    def __init__(self, model: WorldModel, start_frames: dict[str, np.ndarray] | None) -> None:
        self.model, self.start_frames = model, start_frames
        self.resolution = (model.cfg.height, model.cfg.width)

    # ---------------------------------------------------------------------------------- views
    def views(self, session: TeleopSession) -> tuple[Any, ...]:
        """(session, frame, ground truth, status, plot) for the page's outputs."""
        truth = session.truth_frame()
        truth_update = gr.update(value=truth, visible=session.start.truth is not None)
        return (
            session,
            session.frames[-1],
            truth_update,
            status_text(session),
            path_figure(session.path()),
        )

    def _new_session(self, start: Any, seed: int) -> TeleopSession:
        return TeleopSession(self.model, start, seed=seed)

    def _ensure(self, session: TeleopSession | None) -> TeleopSession:
        """The visitor's world; API clients (gradio_client) skip the page-load event that makes one."""
        return session if session is not None else self.load(None)[0]

    # ------------------------------------------------------------------------------- handlers
    def load(self, session: TeleopSession | None) -> tuple[Any, ...]:
        """First page load: a random bundled start frame (or BridgeSim when the bundle ships none)."""
        if session is None:
            seed = int(np.random.default_rng().integers(1_000_000))
            try:
                start = bundle_start(self.start_frames, seed, self.resolution)
            except StartError:
                try:
                    start = sim_start(seed, self.resolution)
                except StartError as e:
                    raise gr.Error(f"no start frame: the checkpoint ships none and {e}") from e
            session = self._new_session(start, seed)
        return self.views(session)

    def command(
        self, session: TeleopSession | None, command: str, translation_cm: float, rotation_rad: float
    ) -> tuple:
        """One button press or key: step the world by that action."""
        session = self._ensure(session)
        with session.lock:
            action = command_action(command, translation_cm / 100, rotation_rad, session.gripper_open)
            session.step(action)
            return self.views(session)

    def undo(self, session: TeleopSession | None) -> tuple[Any, ...]:
        session = self._ensure(session)
        with session.lock:
            if not session.undo():
                gr.Info("nothing to undo: this is the start frame")
            return self.views(session)

    def reset(
        self,
        session: TeleopSession | None,
        source: str,
        seed: str | float | None,
        episode_path: str,
        episode_frame: float | None,
        upload: str | None,
    ) -> tuple[Any, ...]:
        """Start a new world from the chosen source; on a bad input, warn and keep the current world."""
        try:
            seed = _parse_seed(seed)
            if source == "dataset episode":
                start = episode_start(episode_path or "", int(episode_frame or 0), self.resolution)
            elif source == "uploaded image":
                if not upload:
                    raise StartError("choose an image file to upload first")
                ee = None if self.start_frames is None else self.start_frames["ee_states"][0]
                start = image_start(upload, self.resolution, ee)
            elif source == "BridgeSim":
                start = sim_start(seed, self.resolution)
            else:
                start = bundle_start(self.start_frames, seed, self.resolution)
        except StartError as e:
            gr.Warning(str(e))
            return self.views(session) if session is not None else self.load(None)
        if session is not None:
            with session.lock:
                session.close()
        return self.views(self._new_session(start, seed))

    def replay(self, session: TeleopSession | None):  # noqa: ANN201 - a generator of view tuples
        """Restart from the episode's start frame and step its recorded actions, one frame per update."""
        session = self._ensure(session)
        truth = session.start.truth
        if not isinstance(truth, EpisodeTruth):
            gr.Warning("replay needs a dataset-episode start: choose 'dataset episode' and reset first")
            yield self.views(session)
            return
        truth.on_track = 1  # the recording is followed again from its start frame
        session = self._new_session(session.start, session.seed)
        yield self.views(session)
        for action in truth.actions:
            with session.lock:
                session.step(action)
                views = self.views(session)
            yield views

    def export(self, session: TeleopSession | None) -> dict[str, Any]:
        """The rollout as an mp4 for download (predicted frames, start frame first)."""
        session = self._ensure(session)
        with session.lock:
            folder = Path(tempfile.gettempdir()) / "worldsim-teleop"
            folder.mkdir(exist_ok=True)
            path = folder / f"rollout-{uuid.uuid4().hex[:8]}-{session.num_steps}steps.mp4"
            return gr.update(value=str(session.export(path)), visible=True)


def build_app(
    checkpoint: str | os.PathLike | None = None, device: str = "cpu", compile: bool = False
) -> gr.Blocks:
    """The teleop page over the model at `checkpoint` (default: the bundled model), not yet launched."""
    model = load_shared(checkpoint, device=device, compile=compile)
    app = TeleopApp(model, WorldModel.start_frames(checkpoint))
    world = dict(concurrency_id="world", concurrency_limit=WORLD_CONCURRENCY, trigger_mode="once")
    with gr.Blocks(title="worldsim teleop") as demo:
        gr.Markdown(
            "## worldsim teleop\nDrive the WidowX gripper inside the learned world: every button or key is "
            "one Bridge action and one predicted frame.  \n" + _key_help()
        )
        session = gr.State(None, delete_callback=lambda s: s.close() if s is not None else None)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    frame = gr.Image(
                        label="predicted frame",
                        format="png",
                        interactive=False,
                        height=FRAME_HEIGHT,
                        elem_id="frame",
                    )
                    truth = gr.Image(
                        label="ground truth",
                        format="png",
                        interactive=False,
                        visible=False,
                        height=FRAME_HEIGHT,
                        elem_id="truth",
                    )
                status = gr.Markdown("loading the world ...", elem_id="status")
            with gr.Column(scale=2):
                plot = gr.Plot(label="end-effector path", elem_id="ee-plot")
        with gr.Row():
            with gr.Column(scale=3):
                buttons = {}
                for group in (COMMANDS[0:6], COMMANDS[6:12], COMMANDS[12:]):
                    with gr.Row():
                        for command in group:
                            buttons[command] = gr.Button(command, elem_id=elem_id(command), min_width=60)
                        if group == COMMANDS[12:]:
                            undo = gr.Button("undo", elem_id="btn-undo", min_width=60)
                with gr.Row():
                    translation = gr.Slider(0.2, 5.0, value=2.0, step=0.1, label="step: translation (cm)")
                    rotation = gr.Slider(0.01, 0.25, value=0.1, step=0.01, label="step: rotation (rad)")
            with gr.Column(scale=2):
                source = gr.Radio(list(SOURCES), value=SOURCES[0], label="reset from", elem_id="source")
                seed = gr.Textbox(
                    "",
                    label="seed: start frame index / BridgeSim seed",
                    placeholder="empty = random",
                    elem_id="seed",
                )
                with gr.Row():
                    episode_path = gr.Textbox(label="episode annotation .json", elem_id="episode-path")
                    episode_frame = gr.Number(0, precision=0, label="episode start frame", minimum=0)
                upload = gr.File(
                    label="start image", file_types=["image"], type="filepath", height=120, elem_id="upload"
                )
                with gr.Row():
                    reset = gr.Button("reset", variant="primary", elem_id="btn-reset")
                    replay = gr.Button("replay episode actions", elem_id="btn-replay")
                    stop = gr.Button("stop replay", elem_id="btn-stop")
                with gr.Row():
                    export = gr.Button("export mp4", elem_id="btn-export")
                    video_file = gr.File(
                        label="rollout mp4", interactive=False, visible=False, elem_id="export-file"
                    )
        views = [session, frame, truth, status, plot]
        steps = [translation, rotation]
        for command, button in buttons.items():
            button.click(
                lambda s, t, r, c=command: app.command(s, c, t, r), [session, *steps], views,
                api_name=elem_id(command).replace("-", "_"), show_progress="minimal", **world,
            )  # fmt: skip
        undo.click(app.undo, [session], views, api_name="undo", show_progress="minimal", **world)
        reset.click(
            app.reset,
            [session, source, seed, episode_path, episode_frame, upload],
            views,
            api_name="reset",
            **world,
        )
        replaying = replay.click(app.replay, [session], views, api_name="replay", **world)
        stop.click(None, cancels=[replaying])
        export.click(app.export, [session], [video_file], api_name="export", **world)
        demo.load(app.load, [session], views, api_name=False)
        demo.load(None, js=_keyboard_js())
    return demo


def launch(
    demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **kwargs: Any
) -> Any:
    """Serve the page (blocking unless prevent_thread_lock=True is passed)."""
    return demo.queue(default_concurrency_limit=WORLD_CONCURRENCY).launch(
        server_name=host, server_port=port, share=share, max_file_size=SERVER_MAX_FILE_SIZE, **kwargs
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`worldsim-teleop` options; the defaults bind to localhost with no public link."""
    parser = argparse.ArgumentParser(prog="worldsim-teleop", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", default=None, help="model bundle folder or .safetensors (default: bundled)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes it to the network)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, ...)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (slower start, ~20%% faster steps)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: `worldsim-teleop`."""
    args = parse_args(argv)
    launch(
        build_app(args.checkpoint, device=args.device, compile=args.compile), args.host, args.port, args.share
    )


def __getattr__(name: str) -> Any:
    """`teleop.demo`: the page over the bundled model, built on first access (STYLE.md's module-level
    Blocks, made lazy because building it loads the model, which importing must not)."""
    if name == "demo":
        globals()["demo"] = build_app()
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
