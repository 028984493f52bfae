"""BridgeWorld-v0: the learned simulator as a gymnasium environment, single and natively batched.

Both envs are thin adapters over the one rollout engine, `worldsim.models.rollout.Rollout`. `_Worlds`
holds a Rollout of B worlds plus what an env adds around it (start states, commanded poses, action
checks); `BridgeWorldEnv` is B = 1 and `BridgeWorldVectorEnv` steps B = num_envs worlds in one
forward pass. Each world draws its noise from its own stream, seeded from its env's `np_random`, so a
vector env reproduces N single envs with the same seeds and actions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldsim.data.actions import euler2rotm, rotm2euler
from worldsim.data.bridge import Episode, load_episode
from worldsim.data.dataset import resize_frames
from worldsim.envs import MAX_EPISODE_STEPS
from worldsim.models.rollout import Rollout
from worldsim.models.world_model import WorldModel, best_device, load_shared
from worldsim.sim.spaces import ACTION_HIGH, ACTION_LOW, bridge_action_space, bridge_observation_space

Obs = dict[str, np.ndarray]
_SEED_HIGH = 2**63 - 1  # rollout noise seeds are drawn from np_random in [0, this)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_OPTIONS_HELP = (
    "use no options (a start frame shipped with the checkpoint), {'episode': PATH_TO_ANNOTATION_JSON, "
    "'frame': k} or {'image': uint8 (H, W, 3), 'ee_state': (7,)}"
)


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
        self.started = False

    # ---------------------------------------------------------------------------------- starts
    def start(
        self, options: dict[str, Any] | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The start image (uint8 (H, W, 3), any size) and ee_state (7,) that reset `options` ask for."""
        options = options or {}
        keys = set(options)
        if not keys:
            if self.start_frames is None:
                raise ValueError(
                    f"this checkpoint ships no start frames, so reset needs options: {_OPTIONS_HELP}"
                )
            k = int(rng.integers(len(self.start_frames["images"])))
            return self.start_frames["images"][k], self.start_frames["ee_states"][k].astype(np.float64)
        if "episode" in keys and keys <= {"episode", "frame"}:
            return self._episode_start(options["episode"], options.get("frame", 0))
        if keys == {"image", "ee_state"}:
            return _check_image(options["image"]), _check_ee_state(options["ee_state"])
        raise ValueError(f"reset options with keys {sorted(keys)} not understood: {_OPTIONS_HELP}")

    def _episode_start(self, path: str | Path, frame: Any) -> tuple[np.ndarray, np.ndarray]:
        """Frame k of a Bridge episode and its state; the decoded video is kept for the next reset."""
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
        return frames[frame], ee

    def reset(self, idx: np.ndarray, starts: list[tuple[np.ndarray, np.ndarray]], seeds: list[int]) -> None:
        """Start worlds `idx` from `starts` (image, ee_state), their noise streams seeded by `seeds`."""
        frames = np.stack([resize_images(image[None], self.model_size)[0] for image, _ in starts])
        self.rollout.seed_worlds(seeds, idx)
        self.rollout.reset(frames, which=idx)
        for i, (image, ee) in zip(idx, starts):
            self.images[i] = resize_images(image[None], self.size)[0]
            self.xyz[i], self.rotation[i], self.gripper[i] = ee[:3], euler2rotm(ee[3:6]), ee[6]
        self.steps[idx] = 0
        self.started = True

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
        self.images = resize_images(self.rollout.step(actions), self.size)
        # integrate_actions (worldsim/data/actions.py), one step batched over worlds: the pose moves in
        # the current gripper frame, the gripper state becomes the command's closure.
        self.xyz = self.xyz + np.einsum("bij,bj->bi", self.rotation, actions[:, 0:3])
        self.rotation = self.rotation @ euler2rotm(actions[:, 3:6])
        self.gripper = 1.0 - actions[:, 6]
        self.steps += 1

    def ee_states(self) -> np.ndarray:
        """(B, 7) float64 commanded poses: x, y, z, roll, pitch, yaw, gripper (1 = closed)."""
        return np.concatenate([self.xyz, rotm2euler(self.rotation), self.gripper[:, None]], axis=1)


def _check_render_mode(render_mode: str | None) -> None:
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")


class BridgeWorldEnv(gym.Env):
    """
    ## Description

    The learned simulator: a WidowX tabletop as an action-conditioned video world model (a per-frame
    autoencoder and a block-causal latent diffusion transformer, trained on Bridge-format data) instead
    of a physics engine. Each `step` feeds one Bridge action to the model, which predicts the next
    camera frame in a few denoising steps while keeping past frames in a KV cache. It has the same
    spaces and step (5 Hz) as the MuJoCo ground truth `BridgeSim-v0`, so a policy runs in both.

    ## Action Space

    `Box(low, high, (7,), float32)`, the Bridge JSON `action` row (what a Bridge policy emits): a
    relative end-effector motion in the *current gripper frame* over one step.

    | Num | Action                                   | Min   | Max  | Unit |
    |-----|------------------------------------------|-------|------|------|
    | 0-2 | translation x, y, z in the gripper frame | -0.05 | 0.05 | m    |
    | 3-5 | rotation roll, pitch, yaw (ZYX euler)    | -0.25 | 0.25 | rad  |
    | 6   | gripper command (1 = open, 0 = closed)   | 0     | 1    |      |

    Out-of-range actions are clipped (with a one-time warning); a wrong shape or NaN/inf raises
    `ValueError`. The model sees the action as it was trained: scaled by the checkpoint's
    `action_scaler`, gripper as closure `1 - action[6]`.

    ## Observation Space

    `Dict(image, ee_state)`:

    | Key        | Space                           | Meaning                                                |
    |------------|---------------------------------|--------------------------------------------------------|
    | `image`    | `Box(0, 255, (H, W, 3), uint8)` | the predicted RGB frame (the model's size by default)  |
    | `ee_state` | `Box(-inf, inf, (7,), float32)` | x, y, z (m), roll, pitch, yaw (rad), gripper closure   |

    `ee_state` is the *commanded* pose: the start state with every action applied by
    `worldsim.data.actions.integrate_actions`, exactly as the data defines actions; its gripper is
    `1 - action[6]` (1 = closed, the convention of Bridge's `continuous_gripper_state`). A learned
    model has no measured state: where the arm is shows only in the image.

    ## Rewards

    Always 0.0: the checkpoint carries no reward model yet. `info["is_success"]` appears only when a
    success model is attached (the `success_fn` attribute: `obs -> bool`, None until one ships).

    ## Starting State

    `reset(seed=..., options=...)` picks the start frame:
    - no options: one of the start frames shipped with the checkpoint, drawn with `self.np_random`;
    - `{"episode": PATH_TO_ANNOTATION_JSON, "frame": k}`: frame k (default 0) of a Bridge-format
      episode and its state (gripper from `continuous_gripper_state`);
    - `{"image": uint8 (H, W, 3), "ee_state": (7,)}`: any image, resized with antialiasing.
    The reset observation is the start image itself. The rollout's noise is seeded from
    `self.np_random`, so the same seed and actions give identical frames on a given device.

    ## Episode End

    Never terminated (no success model yet). Truncation is left to the `TimeLimit` wrapper
    (`max_episode_steps=60` in the registration, 12 s at 5 Hz).

    ## Arguments

    ```python
    env = gym.make("BridgeWorld-v0", checkpoint=None, device="auto", render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    ```

    - `checkpoint`: a bundle folder or `.safetensors` file; None = the bundled `checkpoints/bridge_small`.
      The weights are loaded once per process and shared by every env on the same device and dtype.
    - `device`: `"auto"` (CUDA when available), `"cpu"`, `"cuda"`, ...; `dtype`: `"auto"` (bf16 on
      CUDA and on CPUs with native bf16 kernels, else fp32), `"float32"`, `"bfloat16"` or `"float16"`.
    - `denoise_steps`, `num_context_frames`, `context_noise`: sampling settings; None = the checkpoint's.
    - `render_mode`: None or `"rgb_array"`; `render()` returns the current frame.
    - `resolution`: (H, W) of observed images; None = the model's; other sizes are resized (antialiased).
    - `clip_warn`: warn (once) when an action is clipped.
    - `compile`: `torch.compile` the transformer (about 20 s at the first step; then about 20% faster
      steps on a CPU). On CUDA, `Rollout.enable_cuda_graph` is the faster route.

    `info` holds `ee_state` (float64) and `frame_index` (frames predicted since reset).
    For many worlds in one forward pass use `gym.make_vec("BridgeWorld-v0", num_envs=N,
    vectorization_mode="vector_entry_point")` (`BridgeWorldVectorEnv`).

    ## Version History

    - v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        denoise_steps: int | None = None,
        num_context_frames: int | None = None,
        context_noise: float | None = None,
        render_mode: str | None = None,
        resolution: tuple[int, int] | None = None,
        clip_warn: bool = True,
        compile: bool = False,
    ) -> None:
        _check_render_mode(render_mode)
        self.render_mode = render_mode
        self.worlds = _Worlds(
            1,
            checkpoint,
            device,
            dtype,
            denoise_steps,
            num_context_frames,
            context_noise,
            resolution,
            clip_warn,
            compile,
        )
        self.metadata = {**self.metadata, "render_fps": self.worlds.model.cfg.fps}
        self.action_space = bridge_action_space()
        self.observation_space = bridge_observation_space(*self.worlds.size)
        self.success_fn: Callable[[Obs], bool] | None = None  # hook for a success model

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        start = self.worlds.start(options, self.np_random)  # drawn before the noise seed, as the vector env
        self.worlds.reset(np.array([0]), [start], [int(self.np_random.integers(_SEED_HIGH))])
        obs = self._obs()
        return obs, self._info(obs)

    def step(self, action: np.ndarray) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        a = self.worlds.check_actions(action, (7,))
        self.worlds.step(a[None])
        obs = self._obs()
        return obs, 0.0, False, False, self._info(obs)

    def render(self) -> np.ndarray | None:
        return self.worlds.images[0].copy() if self.render_mode == "rgb_array" else None

    def _obs(self) -> Obs:
        return {
            "image": self.worlds.images[0].copy(),
            "ee_state": self.worlds.ee_states()[0].astype(np.float32),
        }

    def _info(self, obs: Obs) -> dict[str, Any]:
        info: dict[str, Any] = {
            "ee_state": self.worlds.ee_states()[0],
            "frame_index": int(self.worlds.steps[0]),
        }
        if self.success_fn is not None:
            info["is_success"] = bool(self.success_fn(obs))
        return info


class BridgeWorldVectorEnv(VectorEnv):
    """`num_envs` BridgeWorld-v0 worlds stepped by one forward pass of one `Rollout` (see `BridgeWorldEnv`
    for spaces, options and arguments).

    Gymnasium 1.x semantics: autoreset mode NEXT_STEP (a world that terminated or truncated at step t is
    reset during step t + 1, its action ignored, and that step returns its reset observation); its own
    time limit of `max_episode_steps` (None = never truncate), since `make_vec` does not wrap a vector
    entry point. `reset(seed=s)` seeds world i with s + i (or a list of seeds), like `SyncVectorEnv`,
    so world i reproduces a single env reset with that seed, given the same actions; `options` apply to
    every world and `options["reset_mask"]` resets a subset. Autoresets reuse the last reset's options.
    `render()` returns all frames, (num_envs, H, W, 3). `info` holds `ee_state` and `frame_index` arrays.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = MAX_EPISODE_STEPS,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        denoise_steps: int | None = None,
        num_context_frames: int | None = None,
        context_noise: float | None = None,
        render_mode: str | None = None,
        resolution: tuple[int, int] | None = None,
        clip_warn: bool = True,
        compile: bool = False,
    ) -> None:
        _check_render_mode(render_mode)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs, self.render_mode = num_envs, render_mode
        self.max_episode_steps = max_episode_steps
        self.worlds = _Worlds(
            num_envs,
            checkpoint,
            device,
            dtype,
            denoise_steps,
            num_context_frames,
            context_noise,
            resolution,
            clip_warn,
            compile,
        )
        self.metadata = {**self.metadata, "render_fps": self.worlds.model.cfg.fps}
        self.single_action_space = bridge_action_space()
        self.single_observation_space = bridge_observation_space(*self.worlds.size)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.np_randoms: list[np.random.Generator | None] = [None] * num_envs  # one per world, as single envs
        self.success_fn: Callable[[Obs], np.ndarray] | None = None  # hook: batched obs -> (num_envs,) bool
        self._options: dict[str, Any] = {}
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        n = self.num_envs
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(n, dtype=bool)
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (n,) or not mask.any():
            raise ValueError(
                f"options['reset_mask'] must be a bool array of shape ({n},) with a True, got {mask!r}"
            )
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else seed + i for i in range(n)]
        else:
            seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"seed must be None, an int or a list of {n} seeds, got {len(seeds)} seeds")
        idx = np.flatnonzero(mask)
        for i in idx:
            if seeds[i] is not None or self.np_randoms[i] is None:
                self.np_randoms[i], _ = seeding.np_random(seeds[i])
        self._reset_worlds(idx, options)
        self._options = options
        self._autoreset[idx] = False
        obs = self._obs()
        return obs, self._info(obs)

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        a = self.worlds.check_actions(actions, (n, 7), used=~self._autoreset)
        self.worlds.step(a)  # worlds being reset are stepped too, and their frame replaced below: one batch
        done = np.flatnonzero(self._autoreset)
        if len(done):
            self._reset_worlds(done, self._options)
        terminated = np.zeros(n, dtype=bool)
        truncated = self.worlds.steps >= (
            np.inf if self.max_episode_steps is None else self.max_episode_steps
        )
        self._autoreset = terminated | truncated
        obs = self._obs()
        return obs, np.zeros(n), terminated, truncated, self._info(obs)

    def render(self) -> np.ndarray | None:
        return self.worlds.images.copy() if self.render_mode == "rgb_array" else None

    def _reset_worlds(self, idx: np.ndarray, options: dict[str, Any]) -> None:
        starts, seeds = [], []
        for i in idx:  # per world: the start first, then the noise seed, as BridgeWorldEnv.reset draws them
            rng = self.np_randoms[i]
            starts.append(self.worlds.start(options, rng))
            seeds.append(int(rng.integers(_SEED_HIGH)))
        self.worlds.reset(idx, starts, seeds)

    def _obs(self) -> Obs:
        return {"image": self.worlds.images.copy(), "ee_state": self.worlds.ee_states().astype(np.float32)}

    def _info(self, obs: Obs) -> dict[str, Any]:
        every = np.ones(self.num_envs, dtype=bool)  # gymnasium's vector-info masks: every world reports
        info: dict[str, Any] = {
            "ee_state": self.worlds.ee_states(),
            "_ee_state": every,
            "frame_index": self.worlds.steps.copy(),
            "_frame_index": every.copy(),
        }
        if self.success_fn is not None:
            info["is_success"] = np.asarray(self.success_fn(obs), dtype=bool)
            info["_is_success"] = every.copy()
        return info
