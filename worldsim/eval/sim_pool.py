"""BridgeSim jobs over worker processes: one simulator (and GL context) per process, reused across jobs.

The evaluation's ground-truth side is CPU-bound MuJoCo stepping and rendering, while the learned side
runs batched on the accelerator; `sim_map` spreads the sim jobs over `workers` spawned processes
(spawn, as `worldsim-gen` does: every process builds its own EGL renderer) and keeps result order.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

from worldsim.sim.bridge_sim import BridgeSim

T = TypeVar("T")
_SIMS: dict[tuple[int, int], BridgeSim] = {}  # per process, by render resolution


def get_sim(resolution: tuple[int, int]) -> BridgeSim:
    """This process's BridgeSim at `resolution` (built once; task chosen per reset; images on demand)."""
    key = (int(resolution[0]), int(resolution[1]))
    if key not in _SIMS:
        _SIMS[key] = BridgeSim(resolution=key, render=False)
    return _SIMS[key]


def _call(job: tuple[Callable[..., T], tuple]) -> T:
    fn, args = job
    return fn(*args)


def sim_map(
    fn: Callable[..., T],
    jobs: Sequence[tuple[Any, ...]],
    workers: int = 1,
    desc: str = "",
    progress: bool = True,
) -> list[T]:
    """[fn(*args) for args in jobs], in `workers` processes when > 1; `fn` must be a module-level function."""
    bar = tqdm(total=len(jobs), desc=desc, unit="ep", disable=not progress)
    out: list[T] = []
    with bar:
        if workers <= 1:
            for args in jobs:
                out.append(fn(*args))
                bar.update()
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for result in pool.imap(_call, [(fn, args) for args in jobs]):
                    out.append(result)
                    bar.update()
    return out
