"""Scripted BridgeSim policies of graded skill, all emitting JSON-convention Bridge actions.

`expert` is a closed-loop state machine over privileged sim state (block and bowl positions):
approach above the target, descend, close, lift, carry, lower, release (pick-and-place); push tasks
approach from the far side with a closed gripper and sweep; lift tasks grasp and raise. The other
policies are the expert with one skill knob turned: `noisy_{level}` adds Gaussian action noise,
`wrong_object` serves a distractor block, `early_release` opens halfway, `no_grasp` closes too high;
`random` is teleop-like random motion. Every policy takes its randomness from the rng passed to
`reset`, so an episode is reproducible from the caller's seed.

    policy = make_policy("noisy_0.5"); policy.reset(sim, rng)
    action = policy.act(sim)   # (7,) float64, inside the action space
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from worldsim.data.actions import euler2rotm, rotm2euler
from worldsim.sim.bridge_sim import BridgeSim
from worldsim.sim.scene import BLOCK_NAMES
from worldsim.sim.spaces import MAX_ROTATION, clip_action
from worldsim.sim.tasks import Lift, Push

OPEN, CLOSED = 1.0, 0.0
CRUISE_Z = 0.12  # m; height of `ee` for moves above the table
GRASP_Z = 0.022  # m; `ee` height that centres the finger pads on a 4 cm block
RELEASE_Z = 0.085  # m; block bottom clears the bowl rim when let go from here
MAX_STEP = 0.045  # m; per-step translation the expert asks for (inside the 0.05 bound)
PHASE_TIMEOUT = 10  # steps before a stuck phase gives up and starts the approach again
NOISE_SCALE = np.array([0.02, 0.02, 0.02, 0.1, 0.1, 0.1, 0.0])  # action noise std at level 1.0


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def move_action(
    ee: np.ndarray, goal: np.ndarray, yaw: float, gripper: float, max_step: float = MAX_STEP
) -> np.ndarray:
    """JSON action that moves `ee` state (7,) towards world `goal` xyz with the gripper down at `yaw`."""
    delta = goal - ee[0:3]
    delta *= min(1.0, max_step / (np.linalg.norm(delta) + 1e-12))
    R = euler2rotm(ee[3:6])
    rotation = rotm2euler(R.T @ euler2rotm(np.array([0.0, 0.0, yaw])))
    rotation = np.clip(rotation, -0.8 * MAX_ROTATION, 0.8 * MAX_ROTATION)
    return clip_action(np.concatenate([R.T @ delta, rotation, [gripper]]))


def grasp_yaw(block_yaw: float, ee_yaw: float) -> float:
    """The block face orientation (block yaw + k pi/2) nearest the current gripper yaw."""
    k = np.round(_wrap(ee_yaw - block_yaw) / (np.pi / 2))
    return _wrap(block_yaw + k * np.pi / 2)


@dataclass(frozen=True)
class Skill:
    """Knobs that turn the expert into a weaker policy; the default is the expert."""

    noise: float = 0.0  # Gaussian action noise, in units of NOISE_SCALE
    wrong_object: bool = False  # serve a distractor block instead of the instructed one
    early_release: bool = False  # let go (or stop pushing) halfway
    grasp_offset: float = 0.0  # m added to the grasp / push height (closing too high misses)


class ScriptedPolicy:
    """The expert state machine, degraded by a `Skill`."""

    def __init__(self, skill: Skill = Skill()) -> None:
        self.skill = skill
        self.rng = np.random.default_rng(0)
        self.phase, self.phase_steps = "approach", 0
        self.target = BLOCK_NAMES[0]
        self.yaw = 0.0
        self.push_start = np.zeros(3)
        self.start_z = 0.0

    def reset(self, sim: BridgeSim, rng: np.random.Generator) -> None:
        """Start an episode on `sim` (already reset); `rng` is the only source of randomness."""
        self.rng = rng
        self.target = sim.task.target
        if self.skill.wrong_object:
            others = [b for b in BLOCK_NAMES if b != sim.task.target]
            self.target = others[int(rng.integers(len(others)))]
        self.phase, self.phase_steps = "approach", 0
        self.push_start = sim.body_pos(self.target).copy()
        self.start_z = float(self.push_start[2])

    def act(self, sim: BridgeSim) -> np.ndarray:
        """The next JSON action (7,) given the sim's current state."""
        action = self._expert(sim)
        if self.skill.noise > 0:
            action = action + self.rng.normal(0.0, 1.0, size=7) * self.skill.noise * NOISE_SCALE
        return clip_action(action)

    def _goto(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    def _expert(self, sim: BridgeSim) -> np.ndarray:
        self.phase_steps += 1
        if self.phase_steps > PHASE_TIMEOUT and self.phase not in ("done", "push"):
            self._goto("approach")  # stuck (object knocked away, IK limit): start the approach over
        if isinstance(sim.task, Push):
            return self._push(sim, sim.task.direction)
        return self._pick(sim, place=not isinstance(sim.task, Lift))

    def _pick(self, sim: BridgeSim, place: bool) -> np.ndarray:
        """Grasp the target block; then carry it into the bowl (`place`) or just hold it up."""
        ee, block = sim.ee_state(), sim.body_pos(self.target)
        # Relative to the block centre (0.02 m when it rests on the table) so stacked or tilted blocks work.
        grasp_z = block[2] + GRASP_Z - 0.02 + self.skill.grasp_offset
        if self.phase == "approach":
            self.yaw = grasp_yaw(sim.body_yaw(self.target), ee[5])
            goal = np.array([block[0], block[1], CRUISE_Z])
            if np.linalg.norm(goal[0:2] - ee[0:2]) < 0.01 and abs(_wrap(self.yaw - ee[5])) < 0.08:
                self._goto("descend")
            return move_action(ee, goal, self.yaw, OPEN)
        if self.phase == "descend":
            goal = np.array([block[0], block[1], grasp_z])
            if abs(ee[2] - grasp_z) < 0.006 and np.linalg.norm(goal[0:2] - ee[0:2]) < 0.012:
                self._goto("close")
            return move_action(ee, goal, self.yaw, OPEN)
        if self.phase == "close":
            if self.phase_steps >= 2:
                self._goto("lift")
            return move_action(ee, ee[0:3], self.yaw, CLOSED)
        if self.phase == "lift":
            goal = np.array([ee[0], ee[1], CRUISE_Z + 0.02])
            if ee[2] > CRUISE_Z and self.phase_steps > 1:
                if not sim.is_grasped(self.target) and self.skill.grasp_offset == 0.0:
                    self._goto("approach")  # slipped: try again
                    return move_action(ee, goal, self.yaw, OPEN)
                self._goto("carry" if place else "done")
            if self.skill.early_release and not place and block[2] > self.start_z + 0.03:
                self._goto("release")
                return move_action(ee, ee[0:3], self.yaw, OPEN)
            return move_action(ee, goal, self.yaw, CLOSED)
        bowl = sim.body_pos("bowl")
        if self.phase == "carry":
            goal = np.array([bowl[0], bowl[1], CRUISE_Z + 0.02])
            remaining = np.linalg.norm(goal[0:2] - ee[0:2])
            if self.skill.early_release and self.phase_steps >= 2:
                self._goto("release")
                return move_action(ee, ee[0:3], self.yaw, OPEN)
            elif remaining < 0.015:
                self._goto("lower")
            return move_action(ee, goal, self.yaw, CLOSED)
        if self.phase == "lower":
            goal = np.array([bowl[0], bowl[1], RELEASE_Z])
            if abs(ee[2] - RELEASE_Z) < 0.01:
                self._goto("release")
            return move_action(ee, goal, self.yaw, CLOSED)
        if self.phase == "release":
            if self.phase_steps >= 2:
                self._goto("done")
            return move_action(ee, ee[0:3], self.yaw, OPEN)
        # done: rise and hold; a lift task keeps the gripper closed on its block.
        hold = CLOSED if not place and not self.skill.early_release else OPEN
        return move_action(ee, np.array([ee[0], ee[1], CRUISE_Z + 0.03]), self.yaw, hold)

    def _push(self, sim: BridgeSim, direction: int) -> np.ndarray:
        """Sweep the target block along +y (left) or -y (right) with the closed fingers."""
        ee, block = sim.ee_state(), sim.body_pos(self.target)
        push_z = GRASP_Z + self.skill.grasp_offset
        behind = np.array([block[0], block[1] - direction * 0.06, push_z])
        if self.phase == "approach":
            goal = np.array([behind[0], behind[1], CRUISE_Z])
            if np.linalg.norm(goal[0:2] - ee[0:2]) < 0.012:
                self._goto("descend")
            return move_action(ee, goal, 0.0, CLOSED)
        if self.phase == "descend":
            if abs(ee[2] - push_z) < 0.008:
                self.push_start = block.copy()
                self._goto("push")
            return move_action(ee, behind, 0.0, CLOSED)
        if self.phase == "push":
            moved = direction * (block[1] - self.push_start[1])
            limit = 0.04 if self.skill.early_release else 0.12
            goal = np.array([block[0], ee[1] + direction * 0.04, push_z])
            if moved > limit or self.phase_steps > 2 * PHASE_TIMEOUT:
                self._goto("done")
                return move_action(ee, np.array([ee[0], ee[1], CRUISE_Z]), 0.0, CLOSED)
            return move_action(ee, goal, 0.0, CLOSED, max_step=0.03)
        return move_action(ee, np.array([ee[0], ee[1], CRUISE_Z]), 0.0, CLOSED)


class RandomPolicy:
    """Teleop-like random motion: a smoothed random walk in the gripper frame, occasional gripper flips."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.velocity = np.zeros(6)
        self.gripper = OPEN

    def reset(self, sim: BridgeSim, rng: np.random.Generator) -> None:
        self.rng, self.velocity, self.gripper = rng, np.zeros(6), OPEN

    def act(self, sim: BridgeSim) -> np.ndarray:
        scale = np.array([0.02, 0.02, 0.02, 0.06, 0.06, 0.1])
        self.velocity = 0.7 * self.velocity + 0.5 * self.rng.normal(0.0, 1.0, size=6) * scale
        # Drift back towards the table region so random episodes stay in view.
        ee = sim.ee_state()
        self.velocity[0:3] += 0.05 * euler2rotm(ee[3:6]).T @ (np.array([0.3, 0.0, 0.1]) - ee[0:3])
        self.velocity[3:5] -= 0.1 * ee[3:5]
        if self.rng.random() < 0.1:
            self.gripper = 1.0 - self.gripper
        return clip_action(np.concatenate([self.velocity, [self.gripper]]))


Policy = ScriptedPolicy | RandomPolicy
POLICIES: dict[str, Callable[[], Policy]] = {
    "expert": lambda: ScriptedPolicy(Skill()),
    "noisy_0.25": lambda: ScriptedPolicy(Skill(noise=0.25)),
    "noisy_0.5": lambda: ScriptedPolicy(Skill(noise=0.5)),
    "noisy_1.0": lambda: ScriptedPolicy(Skill(noise=1.0)),
    "noisy_0.75": lambda: ScriptedPolicy(Skill(noise=0.75)),
    "wrong_object": lambda: ScriptedPolicy(Skill(wrong_object=True)),
    "early_release": lambda: ScriptedPolicy(Skill(early_release=True)),
    "no_grasp": lambda: ScriptedPolicy(Skill(grasp_offset=0.06)),
    "random": RandomPolicy,
}


def make_policy(name: str) -> Policy:
    """A fresh policy by registry name (see `POLICIES`)."""
    if name not in POLICIES:
        raise KeyError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    return POLICIES[name]()


__all__ = ["POLICIES", "Policy", "RandomPolicy", "ScriptedPolicy", "Skill", "make_policy", "move_action"]
