"""BridgeSim-v0: the MuJoCo ground-truth tabletop as a gymnasium environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from worldsim.sim.bridge_sim import BridgeSim
from worldsim.sim.spaces import bridge_action_space, bridge_observation_space
from worldsim.sim.tasks import TASKS


class BridgeSimEnv(gym.Env):
    """
    ## Description

    A WidowX-250-like 6-DoF arm with a parallel two-finger gripper on a table with three coloured
    4 cm blocks and a bowl, seen by a fixed over-the-shoulder camera as in the Bridge dataset. It is
    the ground truth for the learned `BridgeWorld-v0`: same action, same observation, same 5 Hz
    step, physics by MuJoCo. Each episode carries a language instruction from one of the tasks:

    | task         | instruction                           | success                                       |
    |--------------|---------------------------------------|-----------------------------------------------|
    | `pick_place` | "put the {colour} block in the bowl"  | block inside the bowl's walls, low, released  |
    | `push_left`  | "push the {colour} block to the left" | block moved > 8 cm towards +y, on the table   |
    | `push_right` | "push the {colour} block to the right"| block moved > 8 cm towards -y, on the table   |
    | `lift`       | "lift the {colour} block"             | block > 6 cm above its start while grasped    |

    ## Action Space

    `Box(low, high, (7,), float32)`, the Bridge JSON `action` row — a relative end-effector motion
    expressed in the *current gripper frame*, applied over one 0.2 s control step:

    | Num | Action                                  | Min   | Max  | Unit |
    |-----|-----------------------------------------|-------|------|------|
    | 0-2 | translation x, y, z in the gripper frame| -0.05 | 0.05 | m    |
    | 3-5 | rotation roll, pitch, yaw (ZYX euler)   | -0.25 | 0.25 | rad  |
    | 6   | gripper command (1 = open, 0 = closed)  | 0     | 1    |      |

    The commanded pose is `worldsim.data.actions.integrate_actions(ee_state, action)`, clipped to a
    reachable box; damped-least-squares IK and joint position actuators track it. Objects are held
    by contact and friction only.

    ## Observation Space

    `Dict(image, ee_state)`:

    | Key        | Space                                  | Meaning                                        |
    |------------|----------------------------------------|------------------------------------------------|
    | `image`    | `Box(0, 255, (H, W, 3), uint8)`        | over-the-shoulder RGB camera                   |
    | `ee_state` | `Box(-inf, inf, (7,), float32)`        | x, y, z (m), roll, pitch, yaw (rad), gripper   |

    `ee_state` is the gripper site's world pose (rpy from `worldsim.data.actions.rotm2euler`) and the
    measured gripper closure, 0 = open .. 1 = closed (Bridge's `continuous_gripper_state`).

    ## Rewards

    1.0 on the step where the task's success predicate holds, 0.0 otherwise.

    ## Starting State

    Block and bowl positions and yaws, block colours (from a named palette), bowl colour, the key
    light's direction and intensity, a small camera jitter, the home pose of the gripper and the
    task's target block are drawn from `self.np_random` at every reset. The task is drawn uniformly
    from all tasks unless fixed by the `task` argument or `options={"task": name}`.

    ## Episode End

    Terminated when the task succeeds. Truncation is left to the `TimeLimit` wrapper
    (`max_episode_steps=60` in the registration, 12 s at 5 Hz).

    ## Arguments

    ```python
    env = gym.make("BridgeSim-v0", resolution=(256, 320), task=None, render_mode="rgb_array")
    obs, info = env.reset(seed=0, options={"task": "pick_place"})
    ```

    - `resolution`: (H, W) of images; default (256, 320), Cosmos's training size.
    - `task`: a task name (see the table) or None for a random task per episode.
    - `camera_jitter`: perturb the camera pose by about 1 cm per episode.
    - `render_mode`: only `"rgb_array"`; `render()` returns the current camera image.

    `info` holds `is_success`, `ee_state`, `instruction` and `task`.

    ## Version History

    - v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        resolution: tuple[int, int] = (256, 320),
        task: str | None = None,
        render_mode: str | None = "rgb_array",
        camera_jitter: bool = True,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        if task is not None and task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
        self.render_mode = render_mode
        self.resolution = tuple(resolution)
        self.task = task
        self.sim = BridgeSim(task=task, resolution=self.resolution, camera_jitter=camera_jitter)
        self.action_space = bridge_action_space()
        self.observation_space = bridge_observation_space(*self.resolution)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        task = (options or {}).get("task", self.task)
        if task is None:  # draw the task here so every random choice comes from self.np_random
            names = sorted(TASKS)
            task = names[int(self.np_random.integers(len(names)))]
        obs = self.sim.reset(seed=int(self.np_random.integers(2**31 - 1)), task=task)
        return self._obs(obs), self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        obs = self.sim.step(action)
        success = self.sim.is_success()
        return self._obs(obs), float(success), success, False, self._info(success)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self.sim.render()

    def close(self) -> None:
        self.sim.close()

    def _obs(self, obs: dict) -> dict[str, np.ndarray]:
        return {"image": obs["image"], "ee_state": obs["ee_state"].astype(np.float32)}

    def _info(self, success: bool | None = None) -> dict[str, Any]:
        return {
            "is_success": self.sim.is_success() if success is None else success,
            "ee_state": self.sim.ee_state(),
            "instruction": self.sim.instruction,
            "task": self.sim.task.name,
        }
