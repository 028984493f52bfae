"""One teleop session: a learned world driven by actions, with undo, ground truth and mp4 export.

The session knows nothing of Gradio: `apps/teleop.py` keeps one per browser session in `gr.State`.
All sessions share one `WorldModel` (weights) and hold their own `Rollout` (KV cache, noise seed).
Undo replays the kept actions from the start frame with the session's seed, which reproduces the
same frames exactly (the rollout's noise comes only from its seeded generator).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worldsim.data.actions import integrate_actions
from worldsim.data.dataset import resize_frames
from worldsim.data.video import write_video
from worldsim.eval.metrics import frame_psnr
from worldsim.models.rollout import Rollout
from worldsim.models.world_model import WorldModel
from worldsim.sim.spaces import clip_action

# Two CPU cores serve every visitor: concurrent forwards would split the threads and make each step
# as slow as all of them together. Serialising the forward bounds any visitor's wait to one step.
MODEL_LOCK = threading.Lock()
SIM_RENDER_RESOLUTION = (480, 640)  # BridgeSim renders at the Bridge release's size, then is resized
# as the training data is, so the ground truth looks like what the model was trained on.

# Button label -> (action column, sign). Columns 0-2 are metres and 3-5 radians in the gripper frame.
MOTIONS: dict[str, tuple[int, float]] = {
    "+x": (0, 1.0), "-x": (0, -1.0), "+y": (1, 1.0), "-y": (1, -1.0), "+z": (2, 1.0), "-z": (2, -1.0),
    "+roll": (3, 1.0), "-roll": (3, -1.0), "+pitch": (4, 1.0), "-pitch": (4, -1.0),
    "+yaw": (5, 1.0), "-yaw": (5, -1.0),
}  # fmt: skip
COMMANDS = (*MOTIONS, "open", "close")


def command_action(command: str, translation_m: float, rotation_rad: float, gripper_open: bool) -> np.ndarray:
    """The Bridge action (7,) for one button press: a move that keeps the gripper command, or open/close.

    The gripper column is the JSON convention (1 = open); the result is clipped to the action space.
    """
    action = np.zeros(7)
    action[6] = 1.0 if gripper_open else 0.0
    if command in ("open", "close"):
        action[6] = 1.0 if command == "open" else 0.0
    elif command in MOTIONS:
        column, sign = MOTIONS[command]
        action[column] = sign * (translation_m if column < 3 else rotation_rad)
    else:
        raise ValueError(f"unknown command {command!r}; choose from {COMMANDS}")
    return clip_action(action)


def to_model_resolution(images: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    """uint8 (T, H0, W0, 3) -> (T, H, W, 3), resized exactly as the training data is."""
    return resize_frames(np.asarray(images, dtype=np.uint8), resolution).transpose(0, 2, 3, 1)


class SimTruth:
    """BridgeSim driven by the same actions as the learned world: the ground truth beside it.

    MuJoCo's EGL context stays current on the thread that created it, and Gradio runs each event on
    whichever worker thread is free; so every call into the simulator runs on one thread of its own.
    """

    def __init__(self, seed: int, resolution: tuple[int, int]) -> None:
        self.resolution = resolution
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridgesim")
        try:
            self.sim, obs = self._call(self._open, seed)
        except BaseException:
            self._thread.shutdown()
            raise
        self.ee_state = np.asarray(obs["ee_state"], dtype=np.float64)
        self.instruction = self.sim.instruction
        self.frames = [self._resize(obs["image"])]
        self._snapshots = [self._call(self.sim.get_state)]  # physics state after each frame, for undo

    def _call(self, fn, *args):  # noqa: ANN001, ANN202 - any simulator call
        return self._thread.submit(fn, *args).result()

    @staticmethod
    def _open(seed: int):  # noqa: ANN205 - (BridgeSim, first observation)
        from worldsim.sim.bridge_sim import BridgeSim  # imported here: MuJoCo only when asked for

        sim = BridgeSim(resolution=SIM_RENDER_RESOLUTION)
        return sim, sim.reset(seed=seed)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        return to_model_resolution(image[None], self.resolution)[0]

    def step(self, action: np.ndarray, index: int) -> None:
        """Apply action number `index` (0-based) and keep the rendered frame."""
        self.frames.append(self._resize(self._call(self.sim.step, action)["image"]))
        self._snapshots.append(self._call(self.sim.get_state))

    def frame(self, index: int) -> np.ndarray | None:
        return self.frames[index] if index < len(self.frames) else None

    def undo(self) -> None:
        if len(self._snapshots) > 1:
            self._snapshots.pop()
            self.frames.pop()
            self._call(self.sim.set_state, self._snapshots[-1])

    def close(self) -> None:
        self._call(self.sim.close)
        self._thread.shutdown()


@dataclass
class EpisodeTruth:
    """A recorded episode's frames from the start frame on: ground truth while its actions are replayed."""

    frames: np.ndarray  # (T', H, W, 3) uint8 at the model's resolution, frame 0 = the start frame
    actions: np.ndarray  # (T'-1, 7) the recorded JSON actions that lead from one frame to the next
    on_track: int = 1  # how many leading frames of the session still follow the recording

    def step(self, action: np.ndarray, index: int) -> None:
        follows = index < len(self.actions) and np.allclose(
            action, clip_action(self.actions[index]), atol=1e-6
        )
        if follows and self.on_track == index + 1:
            self.on_track += 1

    def frame(self, index: int) -> np.ndarray | None:
        return self.frames[index] if index < self.on_track else None

    def undo(self) -> None:
        pass  # `on_track` is re-derived by the session on undo (it replays every action)

    def close(self) -> None:
        pass


@dataclass
class Start:
    """Where a world starts: the first frame, the end-effector state there, and what it came from."""

    image: np.ndarray  # (H, W, 3) uint8 at the model's resolution
    ee_state: np.ndarray  # (7,) x, y, z (m), roll, pitch, yaw (rad), gripper closure (1 = closed)
    label: str  # shown in the UI, e.g. "bundle start frame 3"
    truth: SimTruth | EpisodeTruth | None = None


@dataclass(eq=False, repr=False)
class TeleopSession:
    """A browser session's world: start, actions so far, predicted frames, step latencies."""

    model: WorldModel
    start: Start
    seed: int = 0  # the rollout's noise seed: fixed, so undo's replay reproduces the same frames
    actions: list[np.ndarray] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one event at a time per session
    export_path: Path | None = None  # the last mp4 written; replaced by the next, removed on close

    def __post_init__(self) -> None:
        self.frames = [self.start.image]
        self.rollout = self._new_rollout()

    def __repr__(self) -> str:
        return f"TeleopSession(start={self.start.label!r}, seed={self.seed}, steps={self.num_steps})"

    def _new_rollout(self) -> Rollout:
        rollout = Rollout(self.model, batch_size=1, seed=self.seed)
        with MODEL_LOCK:
            rollout.reset(self.start.image[None])
        return rollout

    @property
    def num_steps(self) -> int:
        return len(self.actions)

    @property
    def gripper_open(self) -> bool:
        """The current gripper command (1 = open in the action); at the start, from the ee state."""
        return bool(self.actions[-1][6] >= 0.5) if self.actions else bool(self.start.ee_state[6] < 0.5)

    def step(self, action: np.ndarray) -> np.ndarray:
        """Advance the world (and its ground truth) by one Bridge action (7,); returns the new frame."""
        action = clip_action(action)
        with MODEL_LOCK:
            began = time.perf_counter()
            frame = self.rollout.step(action[None])[0]
            self.latencies_ms.append(1000 * (time.perf_counter() - began))
        if self.start.truth is not None:
            self.start.truth.step(action, len(self.actions))
        self.actions.append(action)
        self.frames.append(frame)
        return frame

    def undo(self) -> bool:
        """Drop the last step; the world is rebuilt by replaying the remaining actions. False if none."""
        if not self.actions:
            return False
        kept = self.actions[:-1]
        self.actions, self.frames, self.latencies_ms = [], [self.start.image], []
        self.rollout = self._new_rollout()
        truth = self.start.truth
        if isinstance(truth, SimTruth):
            truth.undo()
        elif isinstance(truth, EpisodeTruth):
            truth.on_track = 1
        for i, action in enumerate(kept):
            with MODEL_LOCK:  # taken per step, so a long replay never holds other visitors up
                began = time.perf_counter()
                self.frames.append(self.rollout.step(action[None])[0])
                self.latencies_ms.append(1000 * (time.perf_counter() - began))
            if isinstance(truth, EpisodeTruth):
                truth.step(action, i)
            self.actions.append(action)
        return True

    def path(self) -> np.ndarray:
        """(N + 1, 7) commanded end-effector path: the start state integrated through the actions."""
        return integrate_actions(self.start.ee_state, np.array(self.actions).reshape(-1, 7))

    def truth_frame(self) -> np.ndarray | None:
        """The ground-truth frame for the current step, or None (no ground truth, or off the recording)."""
        return None if self.start.truth is None else self.start.truth.frame(self.num_steps)

    def truth_psnr(self) -> list[float]:
        """PSNR (dB) of each predicted frame after the start against its ground truth, while one exists."""
        values = []
        for i in range(1, len(self.frames)):
            truth = None if self.start.truth is None else self.start.truth.frame(i)
            if truth is None:
                break
            values.append(frame_psnr(self.frames[i], truth))
        return values

    def export(self, path: str | Path) -> Path:
        """Write the predicted frames (start frame first) as an h264 mp4 at the model's frame rate."""
        self._remove_export()
        self.export_path = write_video(np.stack(self.frames), path, fps=self.model.cfg.fps)
        return self.export_path

    def _remove_export(self) -> None:
        if self.export_path is not None:
            self.export_path.unlink(missing_ok=True)  # Gradio serves its own copy from its cache
            self.export_path = None

    def close(self) -> None:
        """Free the ground truth's GL context and the exported mp4 (when Gradio drops the session)."""
        self._remove_export()
        if self.start.truth is not None:
            self.start.truth.close()
