"""`worldsim-gen`: write BridgeSim episodes in the Bridge / IRASim layout that Cosmos-Predict2.5 reads.

    worldsim-gen --out datasets/bridge_sim --episodes 200 --split train --seed 0 --workers 2

writes, per episode `<id>`:

    DIR/videos/<split>/<id>/rgb.mp4        h264, 5 fps, one frame per state (the first is the reset frame)
    DIR/annotation/<split>/<id>.json       texts, videos, state, continuous_gripper_state, action, episode_id,
                                           + task, policy, success, seed

The JSON `action` is computed from the *recorded* states with `relative_pose_actions`, as in the real
release, with column 6 the commanded gripper (1 = open). Episode i's seed derives from (seed, split, i)
only, so the output does not depend on --workers. The video is written first and the JSON last, each
to a temporary file renamed into place, so an interrupted run never shows a half-written episode; run
again, the same command keeps the episodes already written and makes the rest (a JSON records the run
settings that shape its episode, `generator`; an episode file of another run is an error, never
overwritten).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldsim.atomic import atomic_write
from worldsim.data.actions import relative_pose_actions
from worldsim.data.video import write_video
from worldsim.sim.bridge_sim import BridgeSim
from worldsim.sim.policies import POLICIES, make_policy
from worldsim.sim.tasks import TASKS

SPLITS = ("train", "val", "test")
FPS = 5
STEPS_AFTER_SUCCESS = 2  # keep a couple of frames of the finished task, as Bridge episodes do


@dataclass(frozen=True)
class GenConfig:
    """What every episode of a run shares."""

    out: Path  # dataset root (contains annotation/ and videos/)
    split: str  # train, val or test
    seed: int  # run seed; episode seeds derive from (seed, split, index)
    resolution: tuple[int, int] = (480, 640)  # (H, W) of the rendered frames
    max_steps: int = 60  # actions per episode at most (T <= max_steps + 1 frames)
    policies: tuple[str, ...] = tuple(POLICIES)  # drawn uniformly per episode
    tasks: tuple[str, ...] = tuple(TASKS)  # drawn uniformly per episode

    def settings(self) -> dict:
        """What shapes an episode besides its seed: stored in its JSON, compared when a run resumes."""
        return {
            "resolution": list(self.resolution),
            "max_steps": self.max_steps,
            "policies": list(self.policies),
            "tasks": list(self.tasks),
        }


@dataclass
class Episode:
    """One recorded rollout: T frames and states, T-1 commanded gripper values."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    states: np.ndarray  # (T, 7) x, y, z, roll, pitch, yaw, gripper closure (1 = closed)
    gripper_commands: np.ndarray  # (T-1,) JSON gripper column, 1 = open
    instruction: str
    task: str
    policy: str
    success: bool


def episode_seed(seed: int, split: str, index: int) -> int:
    """A 32-bit episode seed from (run seed, split, index); independent of worker count and order."""
    return int(np.random.SeedSequence([seed, SPLITS.index(split), index]).generate_state(1)[0])


def run_episode(
    sim: BridgeSim, seed: int, tasks: tuple[str, ...], policies: tuple[str, ...], max_steps: int
) -> Episode:
    """Draw a task and a policy from `seed`, roll out until success (+2 frames) or `max_steps`."""
    rng = np.random.default_rng(seed)
    task = tasks[int(rng.integers(len(tasks)))]
    policy_name = policies[int(rng.integers(len(policies)))]
    obs = sim.reset(seed=int(rng.integers(2**31 - 1)), task=task)
    policy = make_policy(policy_name)
    policy.reset(sim, np.random.default_rng(int(rng.integers(2**31 - 1))))
    frames, states, commands = [obs["image"]], [obs["ee_state"]], []
    success, since_success = False, 0
    for _ in range(max_steps):
        action = policy.act(sim)
        obs = sim.step(action)
        frames.append(obs["image"])
        states.append(obs["ee_state"])
        commands.append(float(action[6]))
        success = success or sim.is_success()
        since_success += success
        if since_success > STEPS_AFTER_SUCCESS:
            break
    return Episode(
        np.stack(frames), np.stack(states), np.array(commands), sim.instruction, task, policy_name, success
    )


def annotation(
    episode: Episode, split: str, episode_id: int, seed: int, settings: dict | None = None
) -> dict:
    """The Bridge/IRASim annotation JSON for an episode (plus BridgeSim's task/policy/success/seed, and
    the run `settings` that made it)."""
    pose = relative_pose_actions(episode.states)  # from recorded states, like the real release
    action = np.concatenate([pose, episode.gripper_commands[:, None]], axis=1)
    return {
        "texts": [episode.instruction],
        "videos": [{"video_path": f"videos/{split}/{episode_id}/rgb.mp4"}],
        "state": episode.states.tolist(),
        "continuous_gripper_state": episode.states[:, 6].tolist(),
        "action": action.tolist(),
        "episode_id": episode_id,
        "task": episode.task,
        "policy": episode.policy,
        "success": bool(episode.success),
        "seed": seed,
        **({"generator": settings} if settings is not None else {}),
    }


def _write_json(data: dict, path: Path) -> None:
    """Atomically write JSON (a reader sees the whole episode or none of it)."""

    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f)

    atomic_write(path, dump)


def annotation_path(out: Path, split: str, episode_id: int) -> Path:
    """Where episode `episode_id`'s annotation JSON lives (its existence marks a complete episode)."""
    return out / "annotation" / split / f"{episode_id}.json"


def write_episode(out: Path, split: str, episode_id: int, frames: np.ndarray, data: dict) -> None:
    """Video first, JSON last: the loader only sees episodes whose JSON exists, so both are complete."""
    write_video(frames, out / "videos" / split / str(episode_id) / "rgb.mp4", fps=FPS)
    _write_json(data, annotation_path(out, split, episode_id))


_SIM: BridgeSim | None = None  # one simulator (and GL context) per worker process


def generate_one(config: GenConfig, index: int) -> bool:
    """Generate and write episode `index` of the run; returns whether it succeeded."""
    global _SIM
    if _SIM is None or (_SIM.height, _SIM.width) != tuple(config.resolution):
        if _SIM is not None:
            _SIM.close()
        _SIM = BridgeSim(resolution=config.resolution)
    seed = episode_seed(config.seed, config.split, index)
    episode = run_episode(_SIM, seed, config.tasks, config.policies, config.max_steps)
    write_episode(
        config.out,
        config.split,
        index,
        episode.frames,
        annotation(episode, config.split, index, seed, config.settings()),
    )
    return episode.success


def _generate_star(args: tuple[GenConfig, int]) -> bool:
    return generate_one(*args)


class EpisodeConflict(ValueError):
    """An episode file in the way was not written by this run (or cannot be read)."""


def written_success(config: GenConfig, index: int) -> bool | None:
    """Whether episode `index` succeeded, if this run wrote it already (same seed and settings); None if
    it is not there. An episode of another run in its place raises `EpisodeConflict`: it is never
    overwritten."""
    path = annotation_path(config.out, config.split, index)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EpisodeConflict(f"{path}: cannot read it ({e}); remove it to regenerate it") from e
    seed = episode_seed(config.seed, config.split, index)
    theirs = (data.get("seed"), data.get("generator")) if isinstance(data, dict) else (None, None)
    if theirs != (seed, config.settings()):
        raise EpisodeConflict(
            f"{path}: written by another run (seed {theirs[0]}, settings {theirs[1]}); this run's episode "
            f"{index} has seed {seed}, settings {config.settings()}. Choose another --out, or remove it"
        )
    return bool(data.get("success"))


def generate(config: GenConfig, episodes: int, workers: int = 1, progress: bool = True) -> list[bool]:
    """Write `episodes` episodes with `workers` processes (spawn: each builds its own renderer), keeping
    those an earlier run of the same command wrote already."""
    results: list[bool | None] = [written_success(config, i) for i in range(episodes)]
    jobs = [(config, i) for i, ok in enumerate(results) if ok is None]
    kept = episodes - len(jobs)
    bar = tqdm(
        total=episodes, initial=kept, desc=f"worldsim-gen {config.split}", unit="ep", disable=not progress
    )
    if kept and progress:
        tqdm.write(f"worldsim-gen: keeping {kept} episodes already written by this run")
    if workers <= 1:
        made = (_generate_star(job) for job in jobs)
        for (_, i), ok in zip(jobs, made):
            results[i] = ok
            bar.update()
    elif jobs:
        with mp.get_context("spawn").Pool(workers) as pool:
            for (_, i), ok in zip(jobs, pool.imap(_generate_star, jobs)):
                results[i] = ok
                bar.update()
    bar.close()
    return [bool(ok) for ok in results]


def _names(text: str, known: dict, kind: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {kind} {unknown}; known: {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `worldsim-gen` console script."""
    parser = argparse.ArgumentParser(prog="worldsim-gen", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset root directory")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes to write")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--seed", type=int, default=0, help="run seed (episode i's seed derives from it)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--resolution", default="480,640", help="H,W of the frames (default 480,640)")
    parser.add_argument("--max-steps", type=int, default=60, help="actions per episode at most")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"comma list of {', '.join(POLICIES)}")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.resolution.split(","))
    config = GenConfig(
        out=args.out,
        split=args.split,
        seed=args.seed,
        resolution=(height, width),
        max_steps=args.max_steps,
        policies=_names(args.policies, POLICIES, "policies"),
        tasks=_names(args.tasks, TASKS, "tasks"),
    )
    kept = sum(annotation_path(args.out, args.split, i).exists() for i in range(args.episodes))
    start = time.perf_counter()
    try:
        results = generate(config, args.episodes, workers=args.workers)
    except EpisodeConflict as e:
        raise SystemExit(f"worldsim-gen: {e}") from None
    elapsed, made = time.perf_counter() - start, len(results) - kept
    print(
        f"wrote {made} episodes to {args.out} ({args.split}) in {elapsed:.1f} s: "
        f"{made / elapsed:.2f} episodes/s"
        + (f" ({kept} kept from an earlier run)" if kept else "")
        + f", success rate {np.mean(results) if results else 0:.2f}"
    )


if __name__ == "__main__":
    main()
