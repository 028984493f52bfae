"""BridgeSim tasks: a text instruction plus a success predicate computed from the simulator state.

Tasks are registered by name in `TASKS`; `sample_task(rng)` draws one. A task is reset once per
episode against the sim (it picks its target block and remembers initial positions) and is then
asked `is_success(sim)` after every step. Tasks only read the sim through the small `SimView`
protocol, so they stay independent of rendering and control. Each goal is written once, as `holds` on
arrays of B scenes: `is_success` is `holds` on the one sim, and the success model's judge applies it
to a whole batch of estimated scenes at once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from worldsim.sim.scene import BLOCK_HALF, BLOCK_NAMES, BOWL_FLOOR, BOWL_INNER_HALF, BOWL_WALL_HEIGHT


class SimView(Protocol):
    """What a task needs to see of the simulator."""

    def body_pos(self, name: str) -> np.ndarray: ...

    def block_colour(self, name: str) -> str: ...

    def is_grasped(self, name: str) -> bool: ...


@dataclass
class Task:
    """Base task: one target block, picked uniformly at reset; subclasses define the goal."""

    name: str = "task"
    target: str = BLOCK_NAMES[0]  # body name of the block the instruction refers to
    colour: str = "red"  # palette name of the target block (for the instruction)
    start: dict[str, np.ndarray] = field(default_factory=dict)  # initial block positions

    def reset(self, sim: SimView, rng: np.random.Generator) -> None:
        """Pick the target block and record the initial positions of all blocks."""
        self.target = BLOCK_NAMES[int(rng.integers(len(BLOCK_NAMES)))]
        self.colour = sim.block_colour(self.target)
        self.start = {b: sim.body_pos(b).copy() for b in BLOCK_NAMES}

    @property
    def instruction(self) -> str:
        raise NotImplementedError

    def is_success(self, sim: SimView) -> bool:
        """Whether the goal holds in the sim now (`holds` on this one scene)."""
        start = self.start.get(self.target, np.full(3, np.nan))  # unknown before reset: no movement
        holds = self.holds(
            block=sim.body_pos(self.target)[None],
            start=start[None],
            bowl=sim.body_pos("bowl")[None],
            grasped=np.array([sim.is_grasped(self.target)]),
        )
        return bool(holds[0])

    def holds(
        self, block: np.ndarray, start: np.ndarray, bowl: np.ndarray, grasped: np.ndarray
    ) -> np.ndarray:
        """The goal on B scenes at once: the target block's position now (B, 3) and at the start (B, 3),
        the bowl's position (B, 3) and whether the block is held (B,) bool -> (B,) bool."""
        raise NotImplementedError

    def copy(self) -> Task:
        """A deep copy (for `BridgeSim.get_state`)."""
        return copy.deepcopy(self)


@dataclass
class PickPlace(Task):
    """Put the target block in the bowl: its centre inside the bowl's walls and resting low in it."""

    name: str = "pick_place"

    @property
    def instruction(self) -> str:
        return f"put the {self.colour} block in the bowl"

    def holds(
        self, block: np.ndarray, start: np.ndarray, bowl: np.ndarray, grasped: np.ndarray
    ) -> np.ndarray:
        inside = np.all(np.abs(block[:, 0:2] - bowl[:, 0:2]) < BOWL_INNER_HALF, axis=1)
        # Resting on the floor (possibly tilted on another block) and below the rim: it was let go.
        low = block[:, 2] - bowl[:, 2] < BOWL_FLOOR + BOWL_WALL_HEIGHT + BLOCK_HALF
        return inside & low & ~grasped


@dataclass
class Push(Task):
    """Push the target block sideways by `threshold` metres (left = +y, the robot's left)."""

    name: str = "push_left"
    direction: int = 1  # +1 left, -1 right
    threshold: float = 0.08  # m of displacement along the direction

    @property
    def instruction(self) -> str:
        return f"push the {self.colour} block to the {'left' if self.direction > 0 else 'right'}"

    def holds(
        self, block: np.ndarray, start: np.ndarray, bowl: np.ndarray, grasped: np.ndarray
    ) -> np.ndarray:
        moved = self.direction * (block[:, 1] - start[:, 1])
        on_table = block[:, 2] < 2 * BLOCK_HALF
        return (moved > self.threshold) & on_table


@dataclass
class Lift(Task):
    """Lift the target block `threshold` metres above its start while holding it."""

    name: str = "lift"
    threshold: float = 0.06  # m

    @property
    def instruction(self) -> str:
        return f"lift the {self.colour} block"

    def holds(
        self, block: np.ndarray, start: np.ndarray, bowl: np.ndarray, grasped: np.ndarray
    ) -> np.ndarray:
        risen = block[:, 2] - start[:, 2]
        return (risen > self.threshold) & grasped


TASKS: dict[str, type[Task] | tuple[type[Task], dict]] = {
    "pick_place": PickPlace,
    "push_left": (Push, {"name": "push_left", "direction": 1}),
    "push_right": (Push, {"name": "push_right", "direction": -1}),
    "lift": Lift,
}


def make_task(name: str) -> Task:
    """A fresh task by registry name (see `TASKS`)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    entry = TASKS[name]
    cls, kwargs = entry if isinstance(entry, tuple) else (entry, {})
    return cls(**kwargs)


def sample_task(rng: np.random.Generator, names: list[str] | tuple[str, ...] | None = None) -> Task:
    """A task drawn uniformly from `names` (default: all registered tasks)."""
    names = list(names or TASKS)
    return make_task(names[int(rng.integers(len(names)))])
