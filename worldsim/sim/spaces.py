"""The action and observation spaces shared by BridgeSim-v0 and the learned BridgeWorld-v0.

Bounds come from the Bridge data at 5 Hz: per-step translations stay within a few centimetres and
rotations within a fraction of a radian, so |translation| <= 0.05 m and |rotation| <= 0.25 rad per
axis covers the data; the gripper command is 0 (closed) .. 1 (open), as in the JSON `action`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gymnasium import spaces

MAX_TRANSLATION = 0.05  # m per step, each axis of the gripper frame
MAX_ROTATION = 0.25  # rad per step, each ZYX euler angle
ACTION_LOW = np.array([-MAX_TRANSLATION] * 3 + [-MAX_ROTATION] * 3 + [0.0], dtype=np.float32)
ACTION_HIGH = np.array([MAX_TRANSLATION] * 3 + [MAX_ROTATION] * 3 + [1.0], dtype=np.float32)


def clip_action(action: np.ndarray) -> np.ndarray:
    """Clip a (..., 7) action into the action-space bounds (float64)."""
    return np.clip(np.asarray(action, dtype=np.float64), ACTION_LOW, ACTION_HIGH)


def bridge_action_space() -> spaces.Box:
    """Box(7,) float32: gripper-frame translation (m), ZYX euler rotation (rad), gripper (1 = open)."""
    from gymnasium import spaces  # imported here so the simulator and policies never need gymnasium

    return spaces.Box(ACTION_LOW, ACTION_HIGH, shape=(7,), dtype=np.float32)


def bridge_observation_space(height: int, width: int) -> spaces.Dict:
    """Dict(image=(H, W, 3) uint8, ee_state=(7,) float32 x, y, z, roll, pitch, yaw, gripper closure)."""
    from gymnasium import spaces

    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8),
            "ee_state": spaces.Box(-np.inf, np.inf, shape=(7,), dtype=np.float32),
        }
    )
