"""End-effector control: gripper-frame actions move the gripper as commanded; contact grasps lift blocks."""

from __future__ import annotations

import numpy as np

from worldsim.data.actions import euler2rotm, integrate_actions, relative_pose_actions
from worldsim.sim.bridge_sim import BridgeSim
from worldsim.sim.policies import move_action


def make_sim(seed: int = 0) -> BridgeSim:
    sim = BridgeSim(task="lift", render=False)
    sim.reset(seed)
    return sim


def test_translation_of_2cm_along_gripper_x_moves_the_gripper_2cm_along_its_x():
    sim = make_sim()
    for _ in range(6):  # yaw the gripper so its frame differs from the world frame
        sim.step(move_action(sim.ee_state(), sim.ee_state()[:3], yaw=0.6, gripper=1.0))
    before = sim.ee_state()
    sim.step(np.array([0.02, 0, 0, 0, 0, 0, 1.0]))
    after = sim.ee_state()
    moved_in_gripper_frame = euler2rotm(before[3:6]).T @ (after[:3] - before[:3])
    np.testing.assert_allclose(moved_in_gripper_frame, [0.02, 0, 0], atol=0.002)
    assert abs(before[5] - 0.6) < 0.05  # the frame really was rotated away from the world frame


def test_recorded_motion_matches_the_commanded_target_pose():
    sim = make_sim(1)
    action = np.array([0.01, -0.02, 0.015, 0.1, -0.05, 0.2, 1.0])
    before = sim.ee_state()
    sim.step(action)
    target = integrate_actions(before, action)[1]
    np.testing.assert_allclose(sim.ee_state()[:6], target[:6], atol=0.003)
    recovered = relative_pose_actions(np.stack([before, sim.ee_state()]))[0]
    np.testing.assert_allclose(recovered, action[:6], atol=0.003)


def test_targets_are_clipped_to_the_workspace():
    sim = make_sim()
    for _ in range(15):
        sim.step(np.array([0, 0, -0.05, 0, 0, 0, 1.0]))
    assert sim.ee_state()[2] > 0.015  # never drives the fingers through the table


def test_closing_on_a_block_and_lifting_raises_it_by_contact_alone():
    sim = make_sim(2)
    block = sim.task.target
    start_z = sim.body_pos(block)[2]
    ee = sim.ee_state()
    for goal_z in (0.12, 0.022):
        for _ in range(6):
            ee = sim.ee_state()
            goal = np.array([*sim.body_pos(block)[:2], goal_z])
            yaw = sim.body_yaw(block)
            sim.step(move_action(ee, goal, yaw + np.round((ee[5] - yaw) / (np.pi / 2)) * np.pi / 2, 1.0))
    for _ in range(2):
        sim.step(np.array([0, 0, 0, 0, 0, 0, 0.0]))
    assert sim.is_grasped(block)
    closure = sim.ee_state()[6]
    assert 0.2 < closure < 0.8  # fingers stopped on the block, not fully closed
    for _ in range(3):
        sim.step(np.array([0, 0, 0.03, 0, 0, 0, 0.0]))  # gripper z is world z when pointing down
    assert sim.body_pos(block)[2] > start_z + 0.07
    assert sim.model.neq == 0  # no weld constraints: friction holds it


def test_get_state_set_state_restores_the_rollout_exactly():
    sim = make_sim(3)
    sim.step(np.array([0.02, 0.01, -0.02, 0, 0, 0.1, 0.5]))
    snapshot = sim.get_state()
    action = np.array([0.01, 0.0, -0.03, 0.05, 0, 0, 0.0])
    sim.step(action)
    expected = sim.ee_state()
    sim.set_state(snapshot)
    sim.step(action)
    np.testing.assert_array_equal(sim.ee_state(), expected)
