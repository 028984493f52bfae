"""The Bridge action: relative end-effector pose in the previous gripper frame, plus the gripper.

Formula as Cosmos-Predict2.5 / IRASim compute it from the annotation's `state` (x, y, z, roll, pitch,
yaw, gripper) — see DESIGN.md, "Data":

    R = euler2rotm(rpy[k-1]),  euler2rotm([a, b, c]) = Rz(c) @ Ry(b) @ Rx(a)
    a[0:3] = R.T @ (xyz[k] - xyz[k-1])
    a[3:6] = rotm2euler(R.T @ euler2rotm(rpy[k]))
    a[6]   = gripper signal of frame k

Two gripper conventions meet here and are easy to mix up:
- the JSON `action[:, 6]` (what a Bridge policy emits, our env action) is 1 = open, 0 = closed;
- `continuous_gripper_state` (and the model's gripper input) is 1 = closed, 0 = open.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ACTION_DIM = 7
ACTION_SCALER = 20.0  # Cosmos-Predict2.5 action_scaler for Bridge
GripperSignal = Literal["command", "state"]


def euler2rotm(rpy: np.ndarray) -> np.ndarray:
    """Rotation matrices from (..., 3) roll-pitch-yaw: Rz(yaw) @ Ry(pitch) @ Rx(roll). Returns (..., 3, 3)."""
    rpy = np.asarray(rpy, dtype=np.float64)
    a, b, c = rpy[..., 0], rpy[..., 1], rpy[..., 2]
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    R = np.empty(rpy.shape[:-1] + (3, 3))
    R[..., 0, 0] = cc * cb
    R[..., 0, 1] = cc * sb * sa - sc * ca
    R[..., 0, 2] = cc * sb * ca + sc * sa
    R[..., 1, 0] = sc * cb
    R[..., 1, 1] = sc * sb * sa + cc * ca
    R[..., 1, 2] = sc * sb * ca - cc * sa
    R[..., 2, 0] = -sb
    R[..., 2, 1] = cb * sa
    R[..., 2, 2] = cb * ca
    return R


def rotm2euler(R: np.ndarray) -> np.ndarray:
    """Inverse of `euler2rotm` for (..., 3, 3) matrices; pitch in [-pi/2, pi/2]. Returns (..., 3)."""
    R = np.asarray(R, dtype=np.float64)
    roll = np.arctan2(R[..., 2, 1], R[..., 2, 2])
    pitch = np.arctan2(-R[..., 2, 0], np.hypot(R[..., 2, 1], R[..., 2, 2]))
    yaw = np.arctan2(R[..., 1, 0], R[..., 0, 0])
    return np.stack([roll, pitch, yaw], axis=-1)


def relative_pose_actions(state: np.ndarray) -> np.ndarray:
    """(T, >=6) states -> (T-1, 6) relative poses [dxyz in the previous gripper frame, drpy]."""
    state = np.asarray(state, dtype=np.float64)
    R_prev = euler2rotm(state[:-1, 3:6])  # (T-1, 3, 3)
    R_next = euler2rotm(state[1:, 3:6])
    R_prev_T = np.swapaxes(R_prev, -1, -2)
    dxyz = np.einsum("tij,tj->ti", R_prev_T, state[1:, 0:3] - state[:-1, 0:3])
    drpy = rotm2euler(R_prev_T @ R_next)
    return np.concatenate([dxyz, drpy], axis=-1)


def gripper_input(
    json_action: np.ndarray, continuous_gripper_state: np.ndarray, signal: GripperSignal
) -> np.ndarray:
    """The model's gripper input for steps 1..T-1, in the 1 = closed convention.

    `command`: 1 - JSON action[:, 6] (what the policy asked for; known at env.step time).
    `state`: continuous_gripper_state of the target frame (Cosmos's choice; measured, not commanded).
    """
    if signal == "command":
        return 1.0 - np.asarray(json_action, dtype=np.float64)[:, 6]
    if signal == "state":
        return np.asarray(continuous_gripper_state, dtype=np.float64)[1:]
    raise ValueError(f"gripper signal must be 'command' or 'state', got {signal!r}")


def model_actions(
    state: np.ndarray,
    json_action: np.ndarray,
    continuous_gripper_state: np.ndarray,
    signal: GripperSignal = "command",
    action_scaler: float = ACTION_SCALER,
) -> np.ndarray:
    """(T-1, 7) scaled actions as the model sees them: pose * action_scaler, gripper (1 = closed) * 1."""
    pose = relative_pose_actions(state)
    grip = gripper_input(json_action, continuous_gripper_state, signal)
    return scale_actions(np.concatenate([pose, grip[:, None]], axis=-1), action_scaler).astype(np.float32)


def scale_actions(actions: np.ndarray, action_scaler: float = ACTION_SCALER) -> np.ndarray:
    """Cosmos's scaling: a * [s]*6 + [1] (the gripper column is left as is)."""
    scale = np.array([action_scaler] * 6 + [1.0])
    return np.asarray(actions) * scale


def env_action_to_model(action: np.ndarray, action_scaler: float = ACTION_SCALER) -> np.ndarray:
    """Env/JSON action rows (..., 7), gripper 1 = open -> scaled model input with gripper 1 = closed."""
    action = np.asarray(action, dtype=np.float64)
    out = action.copy()
    out[..., 6] = 1.0 - action[..., 6]
    return scale_actions(out, action_scaler).astype(np.float32)


def integrate_actions(ee_state: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Apply env actions (N, 7) to an end-effector state (7,); returns the (N + 1, 7) commanded path.

    Exact inverse of `relative_pose_actions`: xyz += R @ dxyz, R = R @ euler2rotm(drpy); the state's
    gripper column becomes 1 - action[6] (command, 1 = closed).
    """
    ee_state = np.asarray(ee_state, dtype=np.float64)
    actions = np.atleast_2d(np.asarray(actions, dtype=np.float64))
    path = [ee_state.copy()]
    xyz, R, grip = ee_state[0:3].copy(), euler2rotm(ee_state[3:6]), ee_state[6]
    for a in actions:
        xyz = xyz + R @ a[0:3]
        R = R @ euler2rotm(a[3:6])
        grip = 1.0 - a[6]
        path.append(np.concatenate([xyz, rotm2euler(R), [grip]]))
    return np.stack(path)
