"""The BridgeSim MuJoCo scene: a table, a WidowX-250-like arm with a parallel gripper, blocks, a bowl.

The arm is built from primitive geoms (no mesh can be downloaded here) with WidowX-250-like link lengths
(upper arm 0.25 m, forearm 0.25 m, wrist + gripper ~0.17 m) and six revolute joints: waist (yaw),
shoulder, elbow, forearm roll, wrist pitch, wrist roll. The gripper site `ee` is the point between the
finger pads; its frame is world-aligned when the gripper points straight down with zero yaw, so the
Bridge (roll, pitch, yaw) of the home pose is near zero and far from the ZYX-euler gimbal lock.

`SceneRandomizer` re-draws per-episode appearance (object colours from a named palette, light
direction and intensity, a small camera jitter) from a seeded generator; object poses are set by the
sim at reset. The table top is the plane z = 0; the robot base stands on it at the origin, facing +x.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_pitch", "wrist_roll")
FINGER_JOINTS = ("finger_left", "finger_right")
FINGER_TRAVEL = 0.035  # m per finger from closed (pads touching) to fully open: 7 cm max opening
BLOCK_HALF = 0.02  # m; blocks are 4 cm cubes
BLOCK_NAMES = ("block_0", "block_1", "block_2")
BOWL_INNER_HALF = 0.065  # m; half the inner width of the square bowl
BOWL_WALL_HEIGHT = 0.04  # m
BOWL_FLOOR = 0.006  # m; top of the bowl's floor slab

# Named colours for instructions ("put the red block in the bowl"); RGB in 0..1.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.15, 0.30, 0.85),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.55, 0.20, 0.70),
    "orange": (0.95, 0.50, 0.10),
}
BOWL_COLOURS = ((0.85, 0.85, 0.82), (0.55, 0.45, 0.35), (0.30, 0.55, 0.60))

CAMERA_POS = np.array([-0.2, 0.3, 0.58])  # behind, left of and above the base: over the shoulder
CAMERA_TARGET = np.array([0.33, -0.04, 0.0])


def _camera_axes(pos: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image x and y axes (world frame) of a camera at `pos` looking at `target`, world z up in the image."""
    forward = np.asarray(target, dtype=float) - pos
    forward /= np.linalg.norm(forward)
    x = np.cross(forward, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    return x, np.cross(x, forward)


def _bowl_geoms() -> str:
    """A square open bowl from five boxes: a floor slab and four walls, so blocks can drop inside."""
    h, t, wall = BOWL_INNER_HALF, 0.006, BOWL_WALL_HEIGHT
    zc = wall / 2
    geoms = [
        f'<geom name="bowl_floor" type="box" size="{h + t} {h + t} {BOWL_FLOOR / 2}" pos="0 0 {BOWL_FLOOR / 2}"/>'
    ]
    for i, (px, py, sx, sy) in enumerate(
        [
            (h + t / 2, 0, t / 2, h + t),
            (-h - t / 2, 0, t / 2, h + t),
            (0, h + t / 2, h, t / 2),
            (0, -h - t / 2, h, t / 2),
        ]
    ):
        geoms.append(f'<geom name="bowl_wall_{i}" type="box" size="{sx} {sy} {zc}" pos="{px} {py} {zc}"/>')
    return "\n      ".join(geoms)


def build_mjcf(height: int = 480, width: int = 640, shadowsize: int = 1024) -> str:
    """The scene as an MJCF string; `height`/`width` size the offscreen buffer for the renderer."""
    blocks = "\n".join(
        f"""    <body name="{name}" pos="{0.25 + 0.06 * i} 0 {BLOCK_HALF}">
      <freejoint name="{name}_free"/>
      <geom name="{name}_geom" type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}" mass="0.05"
            friction="1.2 0.01 0.001" material="block"/>
    </body>"""
        for i, name in enumerate(BLOCK_NAMES)
    )
    cam_xyaxes = " ".join(f"{v:.6f}" for v in np.concatenate(_camera_axes(CAMERA_POS, CAMERA_TARGET)))
    return f"""<mujoco model="bridge_sim">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{max(width, 64)}" offheight="{max(height, 64)}"/>
    <quality shadowsize="{shadowsize}"/>
    <headlight ambient="0.25 0.25 0.25" diffuse="0.3 0.3 0.3" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.75 0.75 0.78" rgb2="0.45 0.45 0.48"
             width="32" height="32"/>
    <texture name="wood" type="2d" builtin="checker" rgb1="0.62 0.50 0.36" rgb2="0.58 0.46 0.33"
             width="256" height="256"/>
    <material name="table" texture="wood" texrepeat="6 6" reflectance="0.05"/>
    <texture name="floor" type="2d" builtin="flat" rgb1="0.35 0.35 0.38" width="16" height="16"/>
    <material name="floor" texture="floor"/>
    <material name="arm" rgba="0.12 0.12 0.13 1" specular="0.3"/>
    <material name="joint" rgba="0.35 0.35 0.38 1"/>
    <material name="block" rgba="1 0 0 1"/>
    <material name="bowl" rgba="0.85 0.85 0.82 1"/>
  </asset>
  <default>
    <joint damping="0.5" armature="0.02"/>
    <geom condim="3" friction="1 0.01 0.001"/>
    <default class="bowl">
      <geom material="bowl"/>
    </default>
    <default class="finger">
      <geom condim="4" friction="2.0 0.02 0.002" material="joint" solref="0.004 1"/>
    </default>
  </default>
  <worldbody>
    <light name="key" pos="0.3 -0.4 1.2" dir="0 0.3 -1" directional="true" castshadow="true"
           diffuse="0.6 0.6 0.6" specular="0.1 0.1 0.1"/>
    <light name="fill" pos="-0.5 0.5 1.0" dir="0.5 -0.5 -1" directional="true" castshadow="false"
           diffuse="0.25 0.25 0.25" specular="0 0 0"/>
    <geom name="floor" type="plane" size="2 2 0.1" pos="0 0 -0.75" material="floor"/>
    <geom name="table" type="box" size="0.45 0.45 0.02" pos="0.25 0 -0.02" material="table"/>
    <geom name="back_wall" type="box" size="0.02 0.6 0.35" pos="0.75 0 0.25" rgba="0.78 0.76 0.72 1"/>
    <camera name="over_shoulder" pos="{CAMERA_POS[0]} {CAMERA_POS[1]} {CAMERA_POS[2]}"
            xyaxes="{cam_xyaxes}" fovy="50"/>
    <body name="base" pos="0 0 0">
      <geom type="box" size="0.06 0.06 0.02" pos="0 0 0.02" material="arm"/>
      <body name="turret" pos="0 0 0.04" gravcomp="1">
        <joint name="waist" axis="0 0 1" range="-3.1 3.1"/>
        <geom type="cylinder" size="0.045 0.035" pos="0 0 0.035" material="joint"/>
        <body name="upper_arm" pos="0 0 0.07" gravcomp="1">
          <joint name="shoulder" axis="0 1 0" range="-1.9 1.9"/>
          <geom type="capsule" fromto="0 0 0 0 0 0.25" size="0.025" material="arm"/>
          <body name="forearm" pos="0 0 0.25" gravcomp="1">
            <joint name="elbow" axis="0 1 0" range="-2.3 1.7"/>
            <geom type="capsule" fromto="0 0 0 0.1 0 0" size="0.022" material="arm"/>
            <body name="forearm_link" pos="0.1 0 0" gravcomp="1">
              <joint name="forearm_roll" axis="1 0 0" range="-3.1 3.1"/>
              <geom type="capsule" fromto="0 0 0 0.15 0 0" size="0.02" material="arm"/>
              <body name="wrist" pos="0.15 0 0" gravcomp="1">
                <joint name="wrist_pitch" axis="0 1 0" range="-2.0 2.2"/>
                <geom type="capsule" fromto="0 0 0 0.065 0 0" size="0.018" material="joint"/>
                <body name="gripper" pos="0.065 0 0" gravcomp="1">
                  <joint name="wrist_roll" axis="1 0 0" range="-3.1 3.1"/>
                  <geom type="box" size="0.02 0.05 0.02" pos="0.02 0 0" material="arm"/>
                  <site name="ee" pos="0.1 0 0" euler="0 -1.5707963 0" size="0.005" rgba="1 0 0 0"/>
                  <body name="finger_left" pos="0.04 0 0" gravcomp="1">
                    <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}" damping="1"
                           armature="0.01"/>
                    <geom class="finger" type="box" size="0.0325 0.006 0.012" pos="0.0425 0.006 0"/>
                  </body>
                  <body name="finger_right" pos="0.04 0 0" gravcomp="1">
                    <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}" damping="1"
                           armature="0.01"/>
                    <geom class="finger" type="box" size="0.0325 0.006 0.012" pos="0.0425 -0.006 0"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
{blocks}
    <body name="bowl" pos="0.3 0.15 0" childclass="bowl">
      <freejoint name="bowl_free"/>
      <inertial pos="0 0 0.01" mass="0.4" diaginertia="0.002 0.002 0.003"/>
      {_bowl_geoms()}
    </body>
  </worldbody>
  <actuator>
    <position name="waist" joint="waist" kp="2000" kv="40" forcerange="-150 150"/>
    <position name="shoulder" joint="shoulder" kp="3000" kv="60" forcerange="-200 200"/>
    <position name="elbow" joint="elbow" kp="2000" kv="40" forcerange="-150 150"/>
    <position name="forearm_roll" joint="forearm_roll" kp="500" kv="8" forcerange="-40 40"/>
    <position name="wrist_pitch" joint="wrist_pitch" kp="600" kv="10" forcerange="-40 40"/>
    <position name="wrist_roll" joint="wrist_roll" kp="300" kv="5" forcerange="-30 30"/>
    <position name="finger_left" joint="finger_left" kp="300" kv="10" forcerange="-12 12"
              ctrlrange="0 {FINGER_TRAVEL}"/>
    <position name="finger_right" joint="finger_right" kp="300" kv="10" forcerange="-12 12"
              ctrlrange="0 {FINGER_TRAVEL}"/>
  </actuator>
  <contact>
    <exclude body1="base" body2="turret"/>
    <exclude body1="turret" body2="upper_arm"/>
    <exclude body1="gripper" body2="finger_left"/>
    <exclude body1="gripper" body2="finger_right"/>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
</mujoco>
"""


@dataclass(frozen=True)
class Appearance:
    """One episode's look: which palette colour each block wears, the bowl colour, light and camera."""

    block_colours: tuple[str, ...]  # palette names, one per block in BLOCK_NAMES order
    bowl_rgb: tuple[float, float, float]
    key_light_dir: tuple[float, float, float]
    key_light_intensity: float  # diffuse gain of the key light
    camera_offset: tuple[float, float, float]  # m, added to CAMERA_POS
    camera_target_offset: tuple[float, float, float]  # m, added to CAMERA_TARGET


def sample_appearance(rng: np.random.Generator, camera_jitter: bool = True) -> Appearance:
    """Draw an episode's appearance: distinct block colours, bowl colour, light and camera jitter."""
    names = list(PALETTE)
    colours = tuple(names[i] for i in rng.choice(len(names), size=len(BLOCK_NAMES), replace=False))
    bowl = BOWL_COLOURS[int(rng.integers(len(BOWL_COLOURS)))]
    # Key light from above, tilted up to ~35 degrees off vertical in a random azimuth.
    tilt, azimuth = rng.uniform(0.1, 0.6), rng.uniform(-np.pi, np.pi)
    light_dir = (np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), -np.cos(tilt))
    intensity = float(rng.uniform(0.45, 0.8))
    if camera_jitter:
        cam = tuple(float(v) for v in rng.uniform(-0.015, 0.015, size=3))
        target = tuple(float(v) for v in rng.uniform(-0.01, 0.01, size=3))
    else:
        cam, target = (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    return Appearance(colours, bowl, tuple(float(v) for v in light_dir), intensity, cam, target)


def apply_appearance(model: mujoco.MjModel, appearance: Appearance) -> None:
    """Write an `Appearance` into the compiled model (colours, key light, camera pose) in place."""
    for name, colour in zip(BLOCK_NAMES, appearance.block_colours):
        gid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, f"{name}_geom")
        model.geom_rgba[gid] = (*PALETTE[colour], 1.0)
        # Geom colour must win over the material colour, so drop the material for blocks.
        model.geom_matid[gid] = -1
    bowl_body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "bowl")
    for gid in np.flatnonzero(model.geom_bodyid == bowl_body):
        model.geom_rgba[gid] = (*appearance.bowl_rgb, 1.0)
        model.geom_matid[gid] = -1
    key = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_LIGHT, "key")
    model.light_dir[key] = appearance.key_light_dir
    model.light_diffuse[key] = [appearance.key_light_intensity] * 3
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "over_shoulder")
    pos = CAMERA_POS + np.asarray(appearance.camera_offset)
    target = CAMERA_TARGET + np.asarray(appearance.camera_target_offset)
    x, y = _camera_axes(pos, target)
    z = np.cross(x, y)  # MuJoCo cameras look along -z
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.stack([x, y, z], axis=1).ravel())
    model.cam_pos[cam] = pos
    model.cam_quat[cam] = quat
