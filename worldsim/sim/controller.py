"""End-effector control at Bridge's 5 Hz: a 7-D Bridge action -> joint position targets -> physics.

The action is the JSON `action` row (see `worldsim.data.actions`): a[0:3] a translation in the current
gripper frame (m), a[3:6] a relative rotation as ZYX euler in the gripper frame, a[6] the gripper
(1 = open, 0 = closed). `integrate_actions` (the exact inverse of the Bridge action formula) turns it
into the commanded target pose; the target is clipped to a reachable box; damped-least-squares IK on
the `ee` site Jacobian (`mj_jacSite`) solves for joint targets on a scratch `MjData`, and the joint
position actuators track a smooth interpolation to them over the physics substeps of one 0.2 s step.
Objects are held by finger contact and friction only (no welds).
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from worldsim.data.actions import euler2rotm, integrate_actions, rotm2euler
from worldsim.sim.scene import ARM_JOINTS, FINGER_JOINTS, FINGER_TRAVEL

CONTROL_DT = 0.2  # s; Bridge records at 5 Hz


@dataclass(frozen=True)
class Workspace:
    """Reachable box for the commanded `ee` site position (m, world frame) and tilt limits (rad)."""

    low: tuple[float, float, float] = (0.12, -0.30, 0.018)
    high: tuple[float, float, float] = (0.46, 0.30, 0.32)
    max_tilt: float = 0.8  # |roll|, |pitch| of the commanded pose; keeps the gripper pointing downwards

    def clip_pose(self, pose: np.ndarray) -> np.ndarray:
        """Clip an (x, y, z, roll, pitch, yaw) pose into the box and tilt limits."""
        pose = np.array(pose, dtype=np.float64)
        pose[0:3] = np.clip(pose[0:3], self.low, self.high)
        pose[3:5] = np.clip(pose[3:5], -self.max_tilt, self.max_tilt)
        return pose


class EndEffectorController:
    """Drives the arm's position actuators so the `ee` site follows Bridge actions."""

    def __init__(self, model: mujoco.MjModel, workspace: Workspace | None = None) -> None:
        self.model = model
        self.workspace = workspace or Workspace()
        self.site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "ee")
        joint_ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in ARM_JOINTS]
        self.arm_qpos = np.array([model.jnt_qposadr[j] for j in joint_ids])
        self.arm_dof = np.array([model.jnt_dofadr[j] for j in joint_ids])
        self.arm_range = model.jnt_range[joint_ids].copy()
        self.finger_qpos = np.array(
            [model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in FINGER_JOINTS]
        )
        actuator = {mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i): i for i in range(model.nu)}
        self.arm_act = np.array([actuator[j] for j in ARM_JOINTS])
        self.finger_act = np.array([actuator[j] for j in FINGER_JOINTS])
        self.substeps = round(CONTROL_DT / model.opt.timestep)
        self._scratch = mujoco.MjData(model)  # IK runs here so the simulated state is never disturbed
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    # --- state ---------------------------------------------------------------------------------
    def ee_pose(self, data: mujoco.MjData) -> np.ndarray:
        """(x, y, z, roll, pitch, yaw) of the `ee` site in the world frame (needs up-to-date kinematics)."""
        R = data.site_xmat[self.site_id].reshape(3, 3)
        return np.concatenate([data.site_xpos[self.site_id], rotm2euler(R)])

    def gripper_closure(self, data: mujoco.MjData) -> float:
        """Continuous closure from finger positions: 0 = fully open .. 1 = fully closed."""
        opening = float(np.mean(data.qpos[self.finger_qpos])) / FINGER_TRAVEL
        return float(np.clip(1.0 - opening, 0.0, 1.0))

    def ee_state(self, data: mujoco.MjData) -> np.ndarray:
        """The Bridge state (x, y, z, roll, pitch, yaw, gripper closure), float64 (7,)."""
        return np.concatenate([self.ee_pose(data), [self.gripper_closure(data)]])

    # --- inverse kinematics --------------------------------------------------------------------
    def solve_ik(
        self, data: mujoco.MjData, target_pose: np.ndarray, iterations: int = 30, damping: float = 0.02
    ) -> np.ndarray:
        """Joint targets (6,) that put the `ee` site at `target_pose` (x, y, z, roll, pitch, yaw).

        Damped least squares (Wampler 1986): dq = J^T (J J^T + damping^2 I)^-1 err, starting from the
        current joint positions, on a scratch copy so the physics state is untouched.
        """
        scratch = self._scratch
        scratch.qpos[:] = data.qpos
        target_pos, target_R = target_pose[0:3], euler2rotm(target_pose[3:6])
        q = scratch.qpos[self.arm_qpos].copy()
        for _ in range(iterations):
            scratch.qpos[self.arm_qpos] = q
            mujoco.mj_kinematics(self.model, scratch)
            mujoco.mj_comPos(self.model, scratch)
            pos_err = target_pos - scratch.site_xpos[self.site_id]
            R = scratch.site_xmat[self.site_id].reshape(3, 3)
            rot_err = Rotation.from_matrix(target_R @ R.T).as_rotvec()
            err = np.concatenate([pos_err, rot_err])
            if np.linalg.norm(pos_err) < 1e-4 and np.linalg.norm(rot_err) < 1e-3:
                break
            mujoco.mj_jacSite(self.model, scratch, self._jacp, self._jacr, self.site_id)
            J = np.concatenate([self._jacp, self._jacr])[:, self.arm_dof]  # (6, 6)
            dq = J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(6), err)
            # Cap the step so a far target does not throw the arm into a different IK branch.
            dq *= min(1.0, 0.3 / (np.abs(dq).max() + 1e-12))
            q = np.clip(q + dq, self.arm_range[:, 0], self.arm_range[:, 1])
        return q

    # --- control -------------------------------------------------------------------------------
    def target_pose(self, data: mujoco.MjData, action: np.ndarray) -> np.ndarray:
        """Commanded pose: the current `ee` pose integrated with the action, clipped to the workspace."""
        state = np.concatenate([self.ee_pose(data), [0.0]])
        return self.workspace.clip_pose(integrate_actions(state, action)[1, 0:6])

    def set_joint_targets(self, data: mujoco.MjData, q: np.ndarray, gripper: float) -> None:
        """Hold the arm at joint positions `q` and the fingers at `gripper` (1 = open) immediately."""
        data.ctrl[self.arm_act] = q
        data.ctrl[self.finger_act] = float(np.clip(gripper, 0.0, 1.0)) * FINGER_TRAVEL

    def step(self, data: mujoco.MjData, action: np.ndarray) -> None:
        """Run one 0.2 s control step of `action` (7,): IK once, then track it over the substeps."""
        action = np.asarray(action, dtype=np.float64)
        q_target = self.solve_ik(data, self.target_pose(data, action))
        q_start = data.ctrl[self.arm_act].copy()
        data.ctrl[self.finger_act] = float(np.clip(action[6], 0.0, 1.0)) * FINGER_TRAVEL
        # Reach the joint target in the first 60% of the step along a smoothstep, then hold and settle.
        ramp = int(0.6 * self.substeps)
        for i in range(self.substeps):
            s = min(1.0, (i + 1) / ramp)
            data.ctrl[self.arm_act] = q_start + (3 * s**2 - 2 * s**3) * (q_target - q_start)
            mujoco.mj_step(self.model, data)
        mujoco.mj_kinematics(self.model, data)  # site poses for ee_state of the new frame
