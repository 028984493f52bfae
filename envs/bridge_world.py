"""BridgeWorld-v0: the learned simulator as a gymnasium environment, single and natively batched.

Both envs are thin adapters over the one rollout engine, `worldsim.models.rollout.Rollout`. `_Worlds`
holds a Rollout of B worlds plus what an env adds around it (start states, commanded poses, action
checks); `BridgeWorldEnv` is B = 1 and `BridgeWorldVectorEnv` steps B = num_envs worlds in one
forward pass. Each world draws its noise from its own stream, seeded from its env's `np_random`, so a
vector env reproduces N single envs with the same seeds and actions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch.profiler import record_function

from worldsim.envs import MAX_EPISODE_STEPS
from worldsim.envs.worlds import _SEED_HIGH, _Worlds, resize_images  # noqa: F401  (resize_images: public)
from worldsim.sim.spaces import bridge_action_space, bridge_observation_space

Obs = dict[str, np.ndarray]


def _check_render_mode(render_mode: str | None) -> None:
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")


class BridgeWorldEnv(gym.Env):
    """
    ## Description

    The learned simulator: a WidowX tabletop as an action-conditioned video world model (a per-frame
    autoencoder and a block-causal latent diffusion transformer, trained on Bridge-format data) instead
    of a physics engine. Each `step` feeds one Bridge action to the model, which predicts the next
    camera frame in one or a few denoising steps (the bundled model: one) while keeping past frames in
    a KV cache. It has the same spaces and step (5 Hz) as the MuJoCo ground truth `BridgeSim-v0`, so a
    policy runs in both.

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

    1.0 on the step where the task is judged done, else 0.0 — as BridgeSim-v0. The judge is the success
    model shipped with the checkpoint (`success.safetensors`, `worldsim.eval.success`): it estimates
    where the blocks and the bowl are in the predicted frame and applies the task's own BridgeSim
    predicate, compared with its estimate on the start frame. It needs the episode's instruction
    (shipped start frames carry theirs; see Starting State). Without a success model or an instruction
    it can read, the reward is always 0.0 and `info` has no `is_success`.

    ## Starting State

    `reset(seed=..., options=...)` picks the start frame:
    - no options: one of the start frames shipped with the checkpoint, drawn with `self.np_random`,
      with its episode's instruction;
    - `{"episode": PATH_TO_ANNOTATION_JSON, "frame": k}`: frame k (default 0) of a Bridge-format
      episode, its state (gripper from `continuous_gripper_state`) and its first text;
    - `{"image": uint8 (H, W, 3), "ee_state": (7,)}`: any image, resized with antialiasing.
    Each may add `"instruction": "put the red block in the bowl"` (the task the success model judges).
    The reset observation is the start image itself. The rollout's noise is seeded from
    `self.np_random`, so the same seed and actions give identical frames on a given device.

    ## Episode End

    Terminated when the success model judges the task done (as BridgeSim-v0 terminates on success).
    Truncation is left to the `TimeLimit` wrapper (`max_episode_steps=60` in the registration, 12 s
    at 5 Hz).

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
    - `compile`: `torch.compile` the transformer, and on CUDA the decoder too (about 20 s at the first
      step; then about 20% faster steps on a CPU, and 3.5 -> 2.6 ms per step for one env on an H100).
      On CUDA every batch of up to 1024 worlds also runs as CUDA graphs, compiled or not.
    - `success_model`: `"auto"` (the checkpoint's `success.safetensors` if it ships one), None (no
      success judgement), a path, or a loaded `worldsim.eval.success.SuccessModel`.

    `info` holds `ee_state` (float64), `frame_index` (frames predicted since reset), `instruction`
    (None if unknown) and, when judged, `is_success`.
    For many worlds in one forward pass use `gym.make_vec("BridgeWorld-v0", num_envs=N,
    vectorization_mode="vector_entry_point")` (`BridgeWorldVectorEnv`).

    ## Version History

    - v0: initial release; success model, reward and termination added 2026-11-26. Also on 2026-11-26
      (evening): the bundled weights (lease 4) and the per-world noise streams (counter-based, drawn on the
      model's device) changed, so a seed gives other frames than before that date; still the same
      frames for the same seed, actions and device. 2026-11-27: the bundled weights are lease 13, which
      samples a frame in one distilled Euler step (its config's `denoise_steps` is 1), so a seed again
      gives other frames than before; later that day lease 14: lease 13 with a 4x lighter decoder (the
      same latents, decoded by other weights into other pixels); and a single world's commit pass merged
      into the next step's first denoising pass (frames within float rounding of before). 2026-11-27
      (session 15): the bundled success model retrained for lease 14's decoder (other `is_success`
      verdicts on some frames); the vector env's `copy` argument; the merged pass skips the pending
      frame's last-block work that nobody reads (frames within float rounding of before).
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
        success_model: str | Path | None = "auto",
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
            success_model,
        )
        self.metadata = {**self.metadata, "render_fps": self.worlds.model.cfg.fps}
        self.action_space = bridge_action_space()
        self.observation_space = bridge_observation_space(*self.worlds.size)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        start = self.worlds.start(options, self.np_random)  # drawn before the noise seed, as the vector env
        self.worlds.reset(np.array([0]), [start], [int(self.np_random.integers(_SEED_HIGH))])
        return self._obs(), self._info(self.worlds.success_flags())

    def step(self, action: np.ndarray) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        a = self.worlds.check_actions(action, (7,))
        self.worlds.step(a[None])
        flags = self.worlds.success_flags()
        success = bool(flags is not None and flags[0][0])
        return self._obs(), float(success), success, False, self._info(flags)

    def render(self) -> np.ndarray | None:
        return self.worlds.images[0].copy() if self.render_mode == "rgb_array" else None

    def _obs(self) -> Obs:
        return {
            "image": self.worlds.images[0].copy(),
            "ee_state": self.worlds.ee_states()[0].astype(np.float32),
        }

    def _info(self, flags: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "ee_state": self.worlds.ee_states()[0],
            "frame_index": int(self.worlds.steps[0]),
            "instruction": self.worlds.instructions[0],
        }
        if flags is not None and flags[1][0]:
            info["is_success"] = bool(flags[0][0])
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
    `render()` returns all frames, (num_envs, H, W, 3). `info` holds `ee_state`, `frame_index` and
    `instruction` arrays, and `is_success` where the success model judges (its mask `_is_success`).

    `copy` (as gymnasium's `SyncVectorEnv` and `AsyncVectorEnv` have it): True (default), `reset` and
    `step` return observations of their own; False, `obs["image"]` is the env's frame buffer itself,
    which the next `step` or `reset` overwrites: for callers that use the frames before stepping again
    (a policy's forward pass), it saves copying every frame on the host each step (63 MB at N = 1024; see
    `benchmarks/env_speed.py --obs-copy True False`).
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
        success_model: str | Path | None = "auto",
        copy: bool = True,
    ) -> None:
        _check_render_mode(render_mode)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs, self.render_mode = num_envs, render_mode
        self.max_episode_steps = max_episode_steps
        self.copy = copy
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
            success_model,
        )
        self.metadata = {**self.metadata, "render_fps": self.worlds.model.cfg.fps}
        self.single_action_space = bridge_action_space()
        self.single_observation_space = bridge_observation_space(*self.worlds.size)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.np_randoms: list[np.random.Generator | None] = [None] * num_envs  # one per world, as single envs
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
        return self._obs(), self._info(self.worlds.success_flags())

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        a = self.worlds.check_actions(actions, (n, 7), used=~self._autoreset)
        self.worlds.step(a)  # worlds being reset are stepped too, and their frame replaced below: one batch
        done = np.flatnonzero(self._autoreset)
        if len(done):
            self._reset_worlds(done, self._options)
        flags = self.worlds.success_flags()
        terminated = np.zeros(n, dtype=bool) if flags is None else flags[0] & flags[1]
        terminated[done] = False  # a world reset this step starts afresh
        truncated = self.worlds.steps >= (
            np.inf if self.max_episode_steps is None else self.max_episode_steps
        )
        self._autoreset = terminated | truncated
        return self._obs(), terminated.astype(np.float64), terminated, truncated, self._info(flags)

    def render(self) -> np.ndarray | None:
        return self.worlds.images.copy() if self.render_mode == "rgb_array" else None

    @record_function("vector env: reset worlds")
    def _reset_worlds(self, idx: np.ndarray, options: dict[str, Any]) -> None:
        starts, seeds = [], []
        for i in idx:  # per world: the start first, then the noise seed, as BridgeWorldEnv.reset draws them
            rng = self.np_randoms[i]
            starts.append(self.worlds.start(options, rng))
            seeds.append(int(rng.integers(_SEED_HIGH)))
        self.worlds.reset(idx, starts, seeds)

    def _obs(self) -> Obs:
        images = self.worlds.images
        return {
            "image": images.copy() if self.copy else images,
            "ee_state": self.worlds.ee_states().astype(np.float32),
        }

    def _info(self, flags: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
        every = np.ones(self.num_envs, dtype=bool)  # gymnasium's vector-info masks: every world reports
        info: dict[str, Any] = {
            "ee_state": self.worlds.ee_states(),
            "_ee_state": every,
            "frame_index": self.worlds.steps.copy(),
            "_frame_index": every.copy(),
            "instruction": np.array(self.worlds.instructions, dtype=object),
            "_instruction": np.array([t is not None for t in self.worlds.instructions]),
        }
        if flags is not None and flags[1].any():
            info["is_success"], info["_is_success"] = flags[0].copy(), flags[1].copy()
        return info
