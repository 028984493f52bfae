"""BridgeSim: the MuJoCo ground-truth tabletop, stepped with Bridge actions at 5 Hz.

    sim = BridgeSim(task="pick_place", resolution=(480, 640))
    obs = sim.reset(seed=0)            # {"image": (H, W, 3) uint8, "ee_state": (7,) float64}
    obs = sim.step(action)             # action: the JSON `action` row (gripper 1 = open)
    sim.is_success(); sim.instruction; sim.close()

Everything random in an episode (object poses, colours, light, camera jitter, task target, home pose)
comes from `numpy.random.default_rng(seed)`, so an episode is reproducible from its seed. With
`render=False` the sim steps physics only and observations carry `image=None` (fast evaluation).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the mujoco import

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from worldsim.sim.controller import EndEffectorController  # noqa: E402
from worldsim.sim.scene import (  # noqa: E402
    BLOCK_HALF,
    BLOCK_NAMES,
    FINGER_JOINTS,
    FINGER_TRAVEL,
    apply_appearance,
    build_mjcf,
    sample_appearance,
)
from worldsim.sim.tasks import Task, make_task, sample_task  # noqa: E402

HOME_POSE = np.array([0.22, 0.0, 0.17, 0.0, 0.0, 0.0])  # x, y, z, roll, pitch, yaw of `ee` at reset
HOME_JOINTS_GUESS = np.array([0.0, -0.2, 1.1, 0.0, 0.7, 0.0])  # elbow-up seed for the home IK
OBJECT_REGION = ((0.2, 0.42), (-0.2, 0.2))  # x and y ranges (m) where blocks and the bowl are placed
CAMERA = "over_shoulder"


class BridgeSim:
    """A WidowX-like arm, three blocks and a bowl; Bridge actions in, Bridge observations out."""

    def __init__(
        self,
        task: str | None = None,
        resolution: tuple[int, int] = (480, 640),
        camera_jitter: bool = True,
        render: bool = True,
        shadowsize: int = 1024,
    ) -> None:
        """`task`: registry name or None for a random task per reset; `resolution`: (H, W) of images."""
        self.task_name = task
        self.height, self.width = resolution
        self.camera_jitter = camera_jitter
        self.render_enabled = render
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(self.height, self.width, shadowsize))
        self.data = mujoco.MjData(self.model)
        self.controller = EndEffectorController(self.model)
        self._renderer: mujoco.Renderer | None = None
        self._body = {
            n: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, n) for n in (*BLOCK_NAMES, "bowl")
        }
        self._finger_bodies = {
            mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, n) for n in FINGER_JOINTS
        }
        self._colours: dict[str, str] = {}
        self.task: Task = make_task(task or "pick_place")
        self.steps = 0

    # --- episode -------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, task: str | None = None) -> dict:
        """Start an episode: new appearance, object poses, task target and home pose, all from `seed`."""
        rng = np.random.default_rng(seed)
        appearance = sample_appearance(rng, self.camera_jitter)
        apply_appearance(self.model, appearance)
        self._colours = dict(zip(BLOCK_NAMES, appearance.block_colours))
        mujoco.mj_resetData(self.model, self.data)
        self._place_objects(rng)
        home = HOME_POSE.copy()
        home[0:3] += rng.uniform([-0.03, -0.05, -0.02], [0.05, 0.05, 0.03])
        home[5] = rng.uniform(-0.3, 0.3)
        self.data.qpos[self.controller.arm_qpos] = HOME_JOINTS_GUESS
        q = self.controller.solve_ik(self.data, home, iterations=300)
        self.data.qpos[self.controller.arm_qpos] = q
        self.data.qpos[self.controller.finger_qpos] = FINGER_TRAVEL
        self.controller.set_joint_targets(self.data, q, gripper=1.0)
        for _ in range(50):  # 0.1 s for objects to settle onto the table
            mujoco.mj_step(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)
        name = task or self.task_name
        self.task = make_task(name) if name else sample_task(rng)
        self.task.reset(self, rng)
        self.steps = 0
        return self._observation()

    def _place_objects(self, rng: np.random.Generator) -> None:
        """Rejection-sample bowl and block positions so nothing overlaps and blocks sit outside the bowl."""
        (x0, x1), (y0, y1) = OBJECT_REGION
        while True:
            bowl = rng.uniform([x0 + 0.03, y0 + 0.03], [x1, y1 - 0.03])
            blocks = [rng.uniform([x0, y0], [x1, y1]) for _ in BLOCK_NAMES]
            far_from_bowl = all(np.abs(b - bowl).max() > 0.12 for b in blocks)
            apart = all(
                np.linalg.norm(blocks[i] - blocks[j]) > 0.08
                for i in range(len(blocks))
                for j in range(i + 1, len(blocks))
            )
            if far_from_bowl and apart:
                break
        self._set_free_body("bowl", np.array([*bowl, 0.0]), rng.uniform(-0.4, 0.4))
        for name, xy in zip(BLOCK_NAMES, blocks):
            self._set_free_body(name, np.array([*xy, BLOCK_HALF]), rng.uniform(-np.pi / 4, np.pi / 4))

    def _set_free_body(self, name: str, pos: np.ndarray, yaw: float) -> None:
        adr = self.model.jnt_qposadr[self.model.body_jntadr[self._body[name]]]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def step(self, action: np.ndarray) -> dict:
        """Apply one Bridge action (7,) for 0.2 s; returns the new observation."""
        action = np.asarray(action, dtype=np.float64).reshape(7)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        self.controller.step(self.data, action)
        self.steps += 1
        return self._observation()

    def _observation(self) -> dict:
        return {"image": self.render() if self.render_enabled else None, "ee_state": self.ee_state()}

    # --- state ---------------------------------------------------------------------------------
    def ee_state(self) -> np.ndarray:
        """(x, y, z, roll, pitch, yaw, gripper closure 0 open .. 1 closed) of the gripper, world frame."""
        return self.controller.ee_state(self.data)

    def is_success(self) -> bool:
        """Whether the current task's success predicate holds now."""
        return bool(self.task.is_success(self))

    @property
    def instruction(self) -> str:
        return self.task.instruction

    def body_pos(self, name: str) -> np.ndarray:
        """World position of a block or the bowl (body origin)."""
        return self.data.xpos[self._body[name]]

    def body_yaw(self, name: str) -> float:
        """Yaw of a body about the world z axis (rad)."""
        R = self.data.xmat[self._body[name]].reshape(3, 3)
        return float(np.arctan2(R[1, 0], R[0, 0]))

    def project(self, points: np.ndarray) -> np.ndarray:
        """Image positions of world points (..., 3) in the camera image, normalised to [-1, 1] across the
        width (x, to the right) and the height (y, downwards); pixel centres span the range."""
        cam = self.model.camera(CAMERA)
        R = self.data.cam_xmat[cam.id].reshape(3, 3)  # columns: camera right, up, backward (world frame)
        p = (np.asarray(points, dtype=np.float64) - self.data.cam_xpos[cam.id]) @ R  # camera frame
        depth = -p[..., 2]
        f = 1.0 / np.tan(np.deg2rad(self.model.cam_fovy[cam.id]) / 2)  # in half-heights
        y = -f * p[..., 1] / depth
        x = f * p[..., 0] / depth * self.height / self.width
        # [-1, 1] spans pixel edges; the grids used for images span pixel centres.
        return np.stack([x * self.width / (self.width - 1), y * self.height / (self.height - 1)], axis=-1)

    def block_colour(self, name: str) -> str:
        return self._colours[name]

    def is_grasped(self, name: str) -> bool:
        """A block is grasped when both fingers touch it."""
        body = self._body[name]
        touching = set()
        for c in self.data.contact[: self.data.ncon]:
            b1, b2 = self.model.geom_bodyid[c.geom1], self.model.geom_bodyid[c.geom2]
            if b1 == body and b2 in self._finger_bodies:
                touching.add(b2)
            elif b2 == body and b1 in self._finger_bodies:
                touching.add(b1)
        return len(touching) == 2

    def get_state(self) -> dict:
        """A snapshot (physics state, controls, task, step count) that `set_state` restores exactly."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, self.data, physics, spec)
        return {
            "physics": physics,
            "task": self.task.copy(),
            "colours": dict(self._colours),
            "steps": self.steps,
        }

    def set_state(self, state: dict) -> None:
        """Restore a `get_state` snapshot (appearance is not part of it: same episode only)."""
        mujoco.mj_setState(self.model, self.data, state["physics"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(self.model, self.data)
        self.task, self._colours, self.steps = state["task"].copy(), dict(state["colours"]), state["steps"]

    # --- rendering -----------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """The over-the-shoulder camera image, (H, W, 3) uint8."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        self._renderer.update_scene(self.data, camera=CAMERA)
        return self._renderer.render().copy()

    def close(self) -> None:
        """Free the GL context (EGL contexts are not reclaimed by garbage collection reliably)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
