"""The engine side of BridgeWorld-v0: B worlds over one `Rollout`, with what an env adds to it —
start states (bundle start frames, dataset episodes, any image), commanded end-effector poses and
action checks. `BridgeWorldEnv` (B = 1) and `BridgeWorldVectorEnv` are thin gymnasium adapters over it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.profiler import record_function

from worldsim.data.actions import euler2rotm, rotm2euler
from worldsim.data.bridge import Episode, load_episode
from worldsim.data.dataset import resize_frames
from worldsim.eval.success import (
    SUCCESS_WEIGHTS,
    SceneEstimate,
    SuccessModel,
    load_success_model,
    parse_instruction,
    task_code,
)
from worldsim.models.cuda_graph import HostStaging
from worldsim.models.rollout import Rollout
from worldsim.models.world_model import WorldModel, best_device, load_shared, resolve_weights
from worldsim.sim.spaces import ACTION_HIGH, ACTION_LOW

_SEED_HIGH = 2**63 - 1  # rollout noise seeds are drawn from np_random in [0, this)
# Up to this many worlds a step is one CUDA graph launch (models/cuda_graph.py: 51 -> 3.5 ms for one env on
# an H100, 2.6 ms compiled), and partial resets are graphed too. Larger batches stay eager (a captured graph
# pins its peak memory). At N = 1024 launching the eager step took 15 ms of about 80 (H100, session 10); one
# graph per step there gave 14,221 frames/s against 11,859 eager in the steady state (H200, session 12,
# `benchmarks/env_speed.py --graph-max-worlds 1024` vs 256), so graphs now go up to 1024 worlds.
CUDA_GRAPH_MAX_WORLDS = 1024
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_OPTIONS_HELP = (
    "use no options (a start frame shipped with the checkpoint), {'episode': PATH_TO_ANNOTATION_JSON, "
    "'frame': k} or {'image': uint8 (H, W, 3), 'ee_state': (7,)}, each optionally with 'instruction': str"
)
Start = tuple[np.ndarray, np.ndarray, "str | None"]  # image (H, W, 3) uint8, ee_state (7,), instruction


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, H0, W0, 3) uint8 -> (B, H, W, 3) uint8, bilinear with antialiasing, as the training data."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return np.ascontiguousarray(resize_frames(images, size).transpose(0, 2, 3, 1))


def _check_image(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise ValueError(f"options['image'] must be a uint8 (H, W, 3) RGB array, got {img.dtype} {img.shape}")
    return img


def _check_ee_state(ee_state: Any) -> np.ndarray:
    ee = np.asarray(ee_state, dtype=np.float64)
    if ee.shape != (7,) or not np.isfinite(ee).all():
        raise ValueError(
            f"options['ee_state'] must be 7 finite numbers (x, y, z, roll, pitch, yaw, gripper), got {ee!r}"
        )
    return ee


class _Worlds:
    """B worlds over one `Rollout`, with what an env adds: start states, commanded poses, action checks."""

    def __init__(
        self,
        num_worlds: int,
        checkpoint: str | Path | None,
        device: str | torch.device,
        dtype: str | torch.dtype,
        denoise_steps: int | None,
        num_context_frames: int | None,
        context_noise: float | None,
        resolution: tuple[int, int] | None,
        clip_warn: bool,
        compile: bool = False,
        success_model: str | Path | SuccessModel | None = "auto",
    ) -> None:
        if isinstance(dtype, str):
            if dtype not in _DTYPES and dtype != "auto":
                raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES.get(dtype)  # "auto" -> None: worldsim.models.world_model.inference_dtype
        self.model = load_shared(
            checkpoint, best_device(device) if isinstance(device, str) else device, dtype, compile=compile
        )
        cfg = self.model.cfg
        self.model_size = (cfg.height, cfg.width)
        self.size = (int(resolution[0]), int(resolution[1])) if resolution is not None else self.model_size
        self.rollout = Rollout(
            self.model,
            batch_size=num_worlds,
            denoise_steps=denoise_steps,
            num_context_frames=num_context_frames,
            context_noise=context_noise,
        )
        self.start_frames = WorldModel.start_frames(checkpoint)
        self.success = _success_model(
            success_model, checkpoint, self.model_size, self.rollout.device, compile=compile
        )
        self.instructions: list[str | None] = [None] * num_worlds  # the task of each world, if known
        # each world's instruction as the success model reads it (`task_code`, parsed once per text):
        # the task's index in its cfg.tasks, -1 where it reads none, and the target block's keypoint
        self.tasks = np.full(num_worlds, -1, dtype=np.int64)
        self.keypoints = np.zeros(num_worlds, dtype=np.int64)
        # the success model's estimates of each world's start frame and of its current frame
        self.start_state: SceneEstimate | None = None
        self.now_state: SceneEstimate | None = None
        self._staging = HostStaging()  # pinned buffers of the success model's estimates (CUDA)
        self.clip_warn = clip_warn
        self._clip_warned = False
        self._episode: tuple[tuple[str, int], Episode, np.ndarray] | None = None  # last decoded episode
        B = num_worlds
        self.images = np.zeros((B, *self.size, 3), dtype=np.uint8)  # current frames, observation size
        # The commanded pose, kept as position + rotation matrix so integrating never round-trips eulers.
        self.xyz = np.zeros((B, 3))
        self.rotation = np.tile(np.eye(3), (B, 1, 1))
        self.gripper = np.zeros(B)  # 1 = closed, as the data's continuous_gripper_state
        self.steps = np.zeros(B, dtype=np.int64)  # frames predicted since each world's reset
        self._ee: np.ndarray | None = None  # ee_states() of the current poses, once computed
        self.started = False

    # ---------------------------------------------------------------------------------- starts
    def start(self, options: dict[str, Any] | None, rng: np.random.Generator) -> Start:
        """The start image (uint8 (H, W, 3), any size), ee_state (7,) and instruction (None if unknown)
        that reset `options` ask for."""
        options = dict(options or {})
        instruction = self._check_instruction(options.pop("instruction", None))
        keys = set(options)
        if not keys:
            if self.start_frames is None:
                raise ValueError(
                    f"this checkpoint ships no start frames, so reset needs options: {_OPTIONS_HELP}"
                )
            k = int(rng.integers(len(self.start_frames["images"])))
            shipped = self.start_frames.get("instructions")
            text = instruction or (str(shipped[k]) if shipped is not None else "") or None
            return self.start_frames["images"][k], self.start_frames["ee_states"][k].astype(np.float64), text
        if "episode" in keys and keys <= {"episode", "frame"}:
            image, ee, texts = self._episode_start(options["episode"], options.get("frame", 0))
            return image, ee, instruction or next(iter(texts), None)
        if keys == {"image", "ee_state"}:
            return _check_image(options["image"]), _check_ee_state(options["ee_state"]), instruction
        raise ValueError(f"reset options with keys {sorted(keys)} not understood: {_OPTIONS_HELP}")

    def _check_instruction(self, text: Any) -> str | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValueError(f"options['instruction'] must be a str, got {type(text).__name__}")
        if self.success is not None:
            try:
                parse_instruction(text, self.success.cfg)
            except ValueError as e:
                raise ValueError(
                    f"options['instruction']: {e} (the success model knows BridgeSim's tasks)"
                ) from e
        return text

    def _episode_start(self, path: str | Path, frame: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Frame k of a Bridge episode, its state and texts; the decoded video is kept for the next reset."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"options['episode']: annotation JSON not found: {path}")
        key = (str(path.resolve()), path.stat().st_mtime_ns)
        if self._episode is None or self._episode[0] != key:
            episode = load_episode(path)
            self._episode = (key, episode, episode.frames())
        _, episode, frames = self._episode
        T = episode.num_frames
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < T:
            raise ValueError(
                f"options['frame'] must be an int in [0, {T}) for {path} ({T} frames), got {frame!r}"
            )
        # The data's gripper closure (1 = closed) is continuous_gripper_state; the state's 7th column
        # has no pinned convention (see worldsim/data/bridge.py).
        ee = np.concatenate([episode.state[frame, :6], [episode.continuous_gripper_state[frame]]])
        return frames[frame], ee, episode.texts

    @record_function("worlds: reset")
    def reset(self, idx: np.ndarray, starts: list[Start], seeds: list[int]) -> None:
        """Start worlds `idx` from `starts` (image, ee_state, instruction), noise streams seeded by `seeds`."""
        frames = np.stack([resize_images(image[None], self.model_size)[0] for image, _, _ in starts])
        with record_function("worlds: reset: rollout"):
            self.rollout.seed_worlds(seeds, idx)
            self.rollout.reset(frames, which=idx)
        for i, (image, ee, instruction) in zip(idx, starts):
            self.images[i] = resize_images(image[None], self.size)[0]
            self.xyz[i], self.rotation[i], self.gripper[i] = ee[:3], euler2rotm(ee[3:6]), ee[6]
            self.instructions[i] = instruction
            if self.success is not None:
                self.tasks[i], self.keypoints[i] = task_code(instruction, self.success.cfg)
        self._ee = None  # the poses changed
        if self.success is not None:
            with record_function("worlds: reset: success model"):
                estimate = self.success.estimate(frames)
            if self.start_state is None:
                B, K = len(self.steps), self.success.cfg.keypoints
                self.start_state, self.now_state = (
                    SceneEstimate(np.zeros((B, K, 3)), np.zeros((B, K)), self.success.cfg.colours)
                    for _ in range(2)
                )
            for state in (self.start_state, self.now_state):
                state.positions[idx], state.grasp[idx] = estimate.positions, estimate.grasp
        self.steps[idx] = 0
        self.started = True

    @property
    def judged(self) -> np.ndarray:
        """(B,) bool: worlds whose instruction the success model reads (a real Bridge text usually is not)."""
        return self.tasks >= 0

    @record_function("worlds: success flags")
    def success_flags(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(is_success (B,), judged (B,)) for the current frames: the success model applied to worlds whose
        instruction it can read (`judged`); None without a success model. The frames were estimated when
        they were made (`reset`, `step`)."""
        if self.success is None:
            return None
        judged = self.judged
        flags = np.zeros(len(judged), dtype=bool)
        idx = np.flatnonzero(judged)
        if len(idx) and self.start_state is not None:
            now, start = self.now_state[idx], self.start_state[idx]
            flags[idx] = self.success.judge_tasks(now, start, self.tasks[idx], self.keypoints[idx])
        return flags, judged

    # ----------------------------------------------------------------------------------- steps
    def check_actions(
        self, actions: Any, shape: tuple[int, ...], used: np.ndarray | None = None
    ) -> np.ndarray:
        """Actions as float64 of `shape`, clipped into the action space (warning once); rows not `used`
        (worlds being reset) are set to zero and not checked."""
        a = np.array(actions, dtype=np.float64)
        if a.shape != shape:
            raise ValueError(
                f"action must have shape {shape} (the Bridge action, 7 numbers per world), got {a.shape}"
            )
        if used is not None:
            a[~used] = 0.0
        bad = np.argwhere(~np.isfinite(a))
        if len(bad):
            raise ValueError(f"action contains NaN or inf (first at index {bad[0].tolist()}): {a}")
        clipped = np.clip(a, ACTION_LOW, ACTION_HIGH)
        if self.clip_warn and not self._clip_warned and not np.array_equal(clipped, a):
            self._clip_warned = True
            warnings.warn(
                f"BridgeWorld: action outside the action space was clipped to [{ACTION_LOW}, {ACTION_HIGH}] "
                "(warned once per env; pass clip_warn=False to silence)",
                stacklevel=3,
            )
        return clipped

    def step(self, actions: np.ndarray) -> None:
        """Predict every world's next frame for checked actions (B, 7); advance the commanded poses."""
        if not self.started:
            raise gym.error.ResetNeeded("call reset() before step()")
        if (
            self.rollout.device.type == "cuda"
            and self.rollout.cuda_graph is None
            and len(self.steps) <= CUDA_GRAPH_MAX_WORLDS
        ):
            self.rollout.enable_cuda_graph()
        with record_function("worlds: rollout step"):
            frames = self.rollout.step_device(actions)
        idx = np.flatnonzero(self.judged) if self.success is not None else np.zeros(0, dtype=np.int64)
        estimate = None
        if len(idx):
            # The success model's work is queued behind the step's, and its result copied to the host
            # before the frames: one wait for both (on CUDA; a CPU runs them in order anyway).
            with record_function("worlds: success model"):
                chosen = (
                    frames if len(idx) == len(frames) else frames[torch.as_tensor(idx, device=frames.device)]
                )
                estimate = self.success.launch(chosen)
                if estimate.device.type == "cuda":
                    estimate = self._staging.copy(estimate, non_blocking=True)
        # While the device works: integrate_actions (worldsim/data/actions.py), one step batched over
        # worlds: the pose moves in the current gripper frame, the gripper state becomes the command's
        # closure.
        self.xyz = self.xyz + np.einsum("bij,bj->bi", self.rotation, actions[:, 0:3])
        self.rotation = self.rotation @ euler2rotm(actions[:, 3:6])
        self.gripper = 1.0 - actions[:, 6]
        self.steps += 1
        self._ee = None
        self.ee_states()
        # copy=False: a view of the rollout's staging buffer (the next step overwrites it); _obs and
        # render copy
        with record_function("worlds: frames to host"):
            self.images = resize_images(self.rollout.to_host(frames, copy=False), self.size)
        if estimate is not None:
            now = self.success.scene(estimate.numpy())
            self.now_state.positions[idx], self.now_state.grasp[idx] = now.positions, now.grasp

    def ee_states(self) -> np.ndarray:
        """(B, 7) float64 commanded poses: x, y, z, roll, pitch, yaw, gripper (1 = closed); a new array
        each call (computed once per step or reset)."""
        if self._ee is None:
            self._ee = np.concatenate([self.xyz, rotm2euler(self.rotation), self.gripper[:, None]], axis=1)
        return self._ee.copy()


def _success_model(
    choice: str | Path | SuccessModel | None,
    checkpoint: str | Path | None,
    size: tuple[int, int],
    device: torch.device,
    compile: bool = False,
) -> SuccessModel | None:
    """The success model an env uses, on the world model's device (compiled for large batches with the
    env's `compile`): "auto" = the bundle's `success.safetensors` if it ships one, None = none, a path =
    that file or folder, or a loaded `SuccessModel` (used where and as it is)."""
    if choice is None or isinstance(choice, SuccessModel):
        model = choice
    elif isinstance(choice, str) and choice == "auto":
        file = resolve_weights(checkpoint).parent / SUCCESS_WEIGHTS
        model = load_success_model(file, device, compile=compile) if file.exists() else None
    else:
        model = load_success_model(choice, device, compile=compile)
    if model is not None and (model.cfg.height, model.cfg.width) != tuple(size):
        raise ValueError(
            f"success_model: it sees {model.cfg.height}x{model.cfg.width} frames, the world model makes "
            f"{size[0]}x{size[1]}"
        )
    return model
