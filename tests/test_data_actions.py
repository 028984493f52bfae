"""The Bridge action formula (worldsim.data.actions) and the two gripper conventions."""

from __future__ import annotations

import numpy as np
import pytest

from worldsim.data.actions import (
    ACTION_SCALER,
    euler2rotm,
    gripper_input,
    integrate_actions,
    model_actions,
    relative_pose_actions,
    rotm2euler,
    scale_actions,
)


def test_euler2rotm_rotm2euler_round_trip():
    rng = np.random.default_rng(0)
    rpy = rng.uniform([-np.pi, -np.pi / 2 + 1e-3, -np.pi], [np.pi, np.pi / 2 - 1e-3, np.pi], (200, 3))
    R = euler2rotm(rpy)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(rotm2euler(R), rpy, atol=1e-9)


def test_euler2rotm_is_rz_ry_rx():
    a, b, c = 0.3, -0.2, 1.1
    Rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    Ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    Rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    np.testing.assert_allclose(euler2rotm([a, b, c]), Rz @ Ry @ Rx, atol=1e-12)


def test_world_x_move_with_yaw_90_is_minus_y_in_gripper_frame():
    # R = Rz(90deg) turns gripper -y onto world +x, so by hand R.T @ [0.01, 0, 0] = [0, -0.01, 0].
    yaw = np.pi / 2
    state = np.array([[0, 0, 0, 0, 0, yaw, 0], [0.01, 0, 0, 0, 0, yaw, 0]], dtype=np.float64)
    np.testing.assert_allclose(relative_pose_actions(state), [[0, -0.01, 0, 0, 0, 0]], atol=1e-12)


def test_yaw_step_is_relative_rotation():
    # Same position, yaw 90deg -> 100deg: R_prev.T @ R_next = Rz(10deg), so drpy = (0, 0, 10deg).
    state = np.array([[0.1, 0.2, 0.3, 0, 0, np.pi / 2, 0], [0.1, 0.2, 0.3, 0, 0, np.deg2rad(100), 0]])
    np.testing.assert_allclose(relative_pose_actions(state), [[0, 0, 0, 0, 0, np.deg2rad(10)]], atol=1e-12)


def test_integrate_actions_inverts_relative_pose_actions():
    rng = np.random.default_rng(1)
    T = 20
    state = np.zeros((T, 7))
    state[:, :3] = np.cumsum(rng.normal(0, 0.02, (T, 3)), axis=0)
    state[:, 3:6] = np.cumsum(rng.normal(0, 0.2, (T, 3)), axis=0).clip(-1.2, 1.2)
    grip = (rng.random(T) > 0.5).astype(float)
    state[:, 6] = grip
    env_actions = np.concatenate([relative_pose_actions(state), (1 - grip[1:])[:, None]], axis=1)
    path = integrate_actions(state[0], env_actions)  # (T, 7)
    np.testing.assert_allclose(path[:, :3], state[:, :3], atol=1e-10)
    np.testing.assert_allclose(euler2rotm(path[:, 3:6]), euler2rotm(state[:, 3:6]), atol=1e-10)
    np.testing.assert_allclose(path[1:, 6], grip[1:])  # command 1 - open = closed


def test_scaler_leaves_gripper_column_alone():
    a = np.array([[0.01, -0.02, 0.03, 0.1, -0.1, 0.2, 1.0]])
    scaled = scale_actions(a, ACTION_SCALER)
    np.testing.assert_allclose(scaled[0, :6], a[0, :6] * 20.0)
    assert scaled[0, 6] == 1.0
    assert ACTION_SCALER == 20.0


def test_gripper_conventions_json_open_is_one_state_closed_is_one():
    # Frames 0,1 open; 2,3 closed. The JSON action (1 = open) commands the target frame's gripper.
    cgs = np.array([0.0, 0.0, 1.0, 1.0])  # continuous_gripper_state: 1 = closed
    json_action = np.zeros((3, 7))
    json_action[:, 6] = [1.0, 0.0, 0.0]  # open, then close, close
    np.testing.assert_array_equal(gripper_input(json_action, cgs, "command"), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(gripper_input(json_action, cgs, "state"), cgs[1:])
    with pytest.raises(ValueError, match="gripper signal"):
        gripper_input(json_action, cgs, "width")


def test_model_actions_shape_dtype_and_columns():
    state = np.zeros((4, 7))
    state[:, 0] = [0.0, 0.01, 0.02, 0.02]
    cgs = np.array([0.0, 0.0, 0.6, 1.0])
    json_action = np.zeros((3, 7))
    json_action[:, 6] = [1.0, 0.0, 0.0]
    for signal, expected in (("command", [0.0, 1.0, 1.0]), ("state", [0.0, 0.6, 1.0])):
        m = model_actions(state, json_action, cgs, signal=signal)
        assert m.shape == (3, 7) and m.dtype == np.float32
        np.testing.assert_allclose(m[:, 0], [0.2, 0.2, 0.0], atol=1e-6)  # 0.01 m * 20
        np.testing.assert_allclose(m[:, 6], expected)
