"""Policy ranking: do policies of graded skill succeed as often in the learned world as in BridgeSim?

A learned simulator earns its keep if it ranks policies as the real world would. Every policy runs the
same episodes (start seeds) in both worlds; success rates are then correlated (Pearson, Spearman).

The honest part is what the policies may see. The scripted policies of `worldsim.sim.policies` read live
object poses and grasp contacts from the simulator, which the learned world does not have. So in *both*
worlds they act through an `ObjectBelief`: the object poses and task known at reset (the start frame
comes from a BridgeSim reset with a known seed), the world's end-effector observation (measured in
BridgeSim, the commanded pose integrated from the actions in the learned world, as BridgeWorld-v0
reports it), and a kinematic belief update — a block closed on follows the gripper until it is let go
(then it drops to the table or the bowl floor), a block the closed fingers sweep into at table height is
pushed ahead of them. The policy is closed-loop in ee_state and open-loop in objects, identically in the
two worlds. Success is the task predicate in BridgeSim and the same predicate on the success model's
state estimate (`success.py`) in the learned world, an episode succeeding once it holds on
`confirm_frames` consecutive frames (BridgeSim episodes end at the first success, as BridgeSim-v0 terminates).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from tqdm import tqdm

from worldsim.data.actions import integrate_actions
from worldsim.data.dataset import resize_frames
from worldsim.eval.sim_pool import get_sim, sim_map
from worldsim.eval.success import SuccessModel
from worldsim.models.world_model import WorldModel
from worldsim.sim.bridge_sim import BridgeSim
from worldsim.sim.policies import Policy, make_policy
from worldsim.sim.scene import BLOCK_HALF, BLOCK_NAMES, BOWL_FLOOR, BOWL_INNER_HALF
from worldsim.sim.tasks import TASKS, Task

GRASP_REACH = 0.025  # m: a block whose centre is this close (xy) to the closing fingers is taken hold of
FINGER_CONTACT = BLOCK_HALF + 0.012  # m: fingers this close to a block centre at table height push it


class ObjectBelief:
    """The `SimView` a policy sees in both worlds: reset-time objects, observed ee_state, kinematic updates."""

    def __init__(
        self,
        task: Task,
        positions: dict[str, np.ndarray],
        yaws: dict[str, float],
        ee_state: np.ndarray,
    ) -> None:
        self.task = task
        self.positions = {k: np.array(v, dtype=np.float64) for k, v in positions.items()}
        self.yaws = dict(yaws)
        self._ee = np.array(ee_state, dtype=np.float64)
        self.held: str | None = None
        self.offset = np.zeros(3)
        self.closed = False  # the last gripper command; the arm starts open at reset

    @classmethod
    def from_sim(cls, sim: BridgeSim) -> ObjectBelief:
        """What is known right after `sim.reset`: the task, block and bowl poses, the gripper pose."""
        names = (*BLOCK_NAMES, "bowl")
        return cls(
            sim.task.copy(),
            {n: sim.body_pos(n).copy() for n in names},
            {n: sim.body_yaw(n) for n in names},
            sim.ee_state(),
        )

    def copy(self) -> ObjectBelief:
        return copy.deepcopy(self)

    # --- the SimView the scripted policies read
    def ee_state(self) -> np.ndarray:
        return self._ee.copy()

    def body_pos(self, name: str) -> np.ndarray:
        return self.positions[name].copy()

    def body_yaw(self, name: str) -> float:
        return self.yaws[name]

    def is_grasped(self, name: str) -> bool:
        return self.held == name

    # --- belief update after a step
    def observe(self, ee_state: np.ndarray, action: np.ndarray) -> None:
        """Update with the world's new ee_state (7,) after `action` (JSON convention, 1 = open)."""
        previous = self._ee[0:3].copy()
        self._ee = np.array(ee_state, dtype=np.float64)
        ee, closed = self._ee[0:3], action[6] < 0.5
        closing, self.closed = closed and not self.closed, closed
        if self.held is not None:
            if closed:
                self.positions[self.held] = ee + self.offset
                return
            self._drop(self.held)
            self.held = None
        if closing:  # only fingers that close around a block take hold of it (a closed sweep pushes)
            for name in BLOCK_NAMES:
                block = self.positions[name]
                near = np.linalg.norm(block[0:2] - ee[0:2]) < GRASP_REACH
                if near and -0.01 < ee[2] - block[2] < 0.03:
                    self.held, self.offset = name, block - ee
                    return
        # Only closed fingers sweep a block along: open ones straddle it (a grasp's descent), and a jitter
        # there once walked the believed block away from the real one, step by step, with the policy
        # chasing it (every noisy policy lost every grasp task that way).
        moved = ee[1] - previous[1]
        if closed and ee[2] < 2 * BLOCK_HALF + 0.01 and abs(moved) > 1e-4:
            for name in BLOCK_NAMES:
                block = self.positions[name]
                if abs(block[0] - ee[0]) < FINGER_CONTACT and abs(block[1] - ee[1]) < FINGER_CONTACT:
                    block[1] = ee[1] + np.sign(moved) * FINGER_CONTACT  # swept ahead of the fingers

    def _drop(self, name: str) -> None:
        block, bowl = self.positions[name], self.positions["bowl"]
        in_bowl = bool(np.all(np.abs(block[0:2] - bowl[0:2]) < BOWL_INNER_HALF))
        block[2] = (bowl[2] + BOWL_FLOOR if in_bowl else 0.0) + BLOCK_HALF


def start_episode(sim: BridgeSim, policy_name: str, seed: int) -> tuple[ObjectBelief, Policy, int]:
    """Reset `sim` to ranking episode `seed` (its task and scene drawn from the seed) and start
    `policy_name` on an `ObjectBelief` of it; returns the belief, the policy and the policy's seed."""
    rng = np.random.default_rng(seed)
    task = tuple(TASKS)[int(rng.integers(len(TASKS)))]
    sim.reset(seed=int(rng.integers(2**31 - 1)), task=task)
    belief = ObjectBelief.from_sim(sim)
    policy_seed = int(rng.integers(2**31 - 1))
    policy = make_policy(policy_name)
    policy.reset(belief, np.random.default_rng(policy_seed))
    return belief, policy, policy_seed


def sim_policy_episode(
    policy_name: str,
    seed: int,
    max_steps: int,
    render_resolution: tuple[int, int],
    resolution: tuple[int, int],
) -> dict:
    """Run `policy_name` through an `ObjectBelief` in BridgeSim from the start drawn from `seed`.

    Returns the start (frame at the model `resolution`, initial belief, instruction, policy seed) the
    learned world replays, and the ground-truth outcome.
    """
    sim = get_sim(render_resolution)
    belief, policy, policy_seed = start_episode(sim, policy_name, seed)
    start = resize_frames(sim.render()[None], resolution)[0].transpose(1, 2, 0)
    initial = belief.copy()
    success, steps = False, 0
    for steps in range(1, max_steps + 1):  # noqa: B007 - the step count is part of the result
        action = policy.act(belief)
        sim.step(action)
        belief.observe(sim.ee_state(), action)
        if sim.is_success():
            success = True
            break
    return {
        "policy": policy_name,
        "start": np.ascontiguousarray(start),
        "belief": initial,
        "policy_seed": policy_seed,
        "instruction": sim.instruction,
        "success": success,
        "steps": steps,
    }


def world_policy_episodes(
    model: WorldModel,
    success_model: SuccessModel,
    episodes: list[dict],
    max_steps: int,
    confirm_frames: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay `sim_policy_episode` starts in the learned world, all in one batch.

    Returns (success (B,) bool, steps (B,) int): steps is the frame at which success was confirmed.
    """
    B = len(episodes)
    beliefs = [e["belief"].copy() for e in episodes]
    policies = [make_policy(e["policy"]) for e in episodes]
    for policy, belief, e in zip(policies, beliefs, episodes):
        policy.reset(belief, np.random.default_rng(e["policy_seed"]))
    starts = np.stack([e["start"] for e in episodes])
    instructions = [e["instruction"] for e in episodes]
    ee = np.stack([b.ee_state() for b in beliefs])  # (B, 7) commanded pose
    rollout = model.rollout(batch_size=B, seed=seed)
    rollout.reset(starts)
    start_state = success_model.estimate(starts)  # once per episode: "pushed 8 cm" is measured from it
    streak, done, steps = np.zeros(B, int), np.zeros(B, bool), np.full(B, max_steps)
    last_action = np.zeros((B, 7))
    last_action[:, 6] = 1.0
    for t in range(1, max_steps + 1):
        actions = last_action.copy()
        actions[:, 0:6] = 0.0  # finished worlds hold still
        for i in np.flatnonzero(~done):
            actions[i] = policies[i].act(beliefs[i])
        frames = rollout.step(actions, env_convention=True)
        for i in np.flatnonzero(~done):
            ee[i] = integrate_actions(ee[i], actions[i])[-1]
            beliefs[i].observe(ee[i], actions[i])
        last_action = actions
        hit = success_model.predict(frames, instructions, start=start_state)
        streak = np.where(hit, streak + 1, 0)
        newly = ~done & (streak >= confirm_frames)
        steps[newly], done = t, done | newly
        if done.all():
            break
    return done, steps


def ranking_correlation(sim_rates: np.ndarray, world_rates: np.ndarray) -> dict[str, float | None]:
    """Pearson and Spearman correlation (and p-values) of two success-rate vectors; None if undefined."""
    x, y = np.asarray(sim_rates, dtype=float), np.asarray(world_rates, dtype=float)
    out: dict[str, float | None] = {}
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:  # a constant vector has no correlation
        return {"pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
            r, p = fn(x, y)
            out[name] = None if not np.isfinite(r) else round(float(r), 4)
            out[f"{name}_p"] = None if not np.isfinite(p) else float(p)
    return out


def ranking_confidence(
    sim_success: np.ndarray,
    world_success: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """Bootstrap confidence intervals of the ranking's Pearson and Spearman correlations.

    sim_success, world_success: (P, E) bool outcomes, paired by episode (the same start and policy seed in
    both worlds). Each resample draws E episodes with replacement per policy, the same ones for both
    worlds, and recomputes the success rates and their correlations; the interval holds the central
    `level` of them (percentile bootstrap). It says how much of a correlation is the luck of the episodes
    drawn: with 50-100 episodes per policy, near-ties between policies swing Spearman by a rank or two.
    It is the spread of the values other episodes would give, not a bias-corrected range: the observed value
    can lie above it (resampling breaks ties, e.g. among policies that almost never succeed, which lowers a
    rank correlation in most resamples)."""
    sim, world = np.asarray(sim_success, dtype=float), np.asarray(world_success, dtype=float)
    P, E = sim.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, E, size=(resamples, P, E))
    rows = np.arange(P)[None, :, None]
    sim_rates, world_rates = sim[rows, idx].mean(axis=2), world[rows, idx].mean(axis=2)  # (resamples, P)
    out: dict[str, list[float] | None] = {}
    tail = 100 * (1 - level) / 2
    for name, (x, y) in (
        ("pearson", (sim_rates, world_rates)),
        ("spearman", (stats.rankdata(sim_rates, axis=1), stats.rankdata(world_rates, axis=1))),
    ):
        with warnings.catch_warnings():  # a constant row (no correlation defined) gives NaN, left out below
            warnings.simplefilter("ignore")
            r = stats.pearsonr(x, y, axis=1).statistic
        r = r[np.isfinite(r)]
        out[f"{name}_ci"] = (
            None
            if len(r) < resamples // 2
            else [round(float(v), 4) for v in np.percentile(r, [tail, 100 - tail])]
        )
    out["ci_level"] = level
    return out


@dataclass
class RankingResult:
    """Success rates per policy in both worlds, and their correlation."""

    policies: list[str]
    sim_success: np.ndarray  # (P, E) bool
    world_success: np.ndarray  # (P, E) bool
    sim_seconds: float = 0.0
    world_seconds: float = 0.0
    correlation: dict = field(default_factory=dict)

    def summary(self) -> dict:
        sim, world = self.sim_success, self.world_success

        def rates(x: np.ndarray) -> list[float]:
            return [round(float(v), 4) for v in x.mean(axis=1)]

        return {
            "policies": self.policies,
            "episodes_per_policy": int(sim.shape[1]),
            "sim_success_rate": rates(sim),
            "world_success_rate": rates(world),
            # Per-episode agreement of the two worlds' outcomes (same start, same policy seed), and how
            # they disagree, per policy: successes the learned world invents, and ones it misses.
            "episode_agreement": round(float((sim == world).mean()), 4),
            "world_only_success_rate": rates(world & ~sim),
            "sim_only_success_rate": rates(sim & ~world),
            # per policy, one character per episode: 1 = success (for analyses after the fact)
            "sim_episodes": ["".join("1" if v else "0" for v in row) for row in sim],
            "world_episodes": ["".join("1" if v else "0" for v in row) for row in world],
            **self.correlation,
            "sim_seconds": round(self.sim_seconds, 2),
            "world_seconds": round(self.world_seconds, 2),
        }


def evaluate_ranking(
    model: WorldModel,
    success_model: SuccessModel,
    policies: list[str],
    episodes: int = 50,
    max_steps: int = 60,
    seed: int = 2000,
    batch_size: int = 64,
    confirm_frames: int = 2,
    render_resolution: tuple[int, int] = (480, 640),
    workers: int = 1,
    progress: bool = True,
) -> RankingResult:
    """Every policy on the episodes of seeds seed..seed+episodes-1 in BridgeSim, then in the model."""
    if len(policies) < 2:
        raise ValueError("ranking needs at least two policies")
    resolution = (model.cfg.height, model.cfg.width)
    start = time.perf_counter()
    jobs = [
        (p, seed + i, max_steps, tuple(render_resolution), resolution)
        for p in policies
        for i in range(episodes)
    ]
    sim_eps = sim_map(sim_policy_episode, jobs, workers, desc="ranking: BridgeSim", progress=progress)
    sim_seconds = time.perf_counter() - start
    start = time.perf_counter()
    world = np.zeros(len(jobs), dtype=bool)
    bar = tqdm(total=len(jobs), desc="ranking: learned world", unit="ep", disable=not progress)
    for b0 in range(0, len(jobs), batch_size):
        batch = sim_eps[b0 : b0 + batch_size]
        world[b0 : b0 + len(batch)] = world_policy_episodes(
            model, success_model, batch, max_steps, confirm_frames, seed=seed + b0
        )[0]
        bar.update(len(batch))
    bar.close()
    sim = np.array([e["success"] for e in sim_eps]).reshape(len(policies), episodes)
    world = world.reshape(len(policies), episodes)
    return RankingResult(
        policies=list(policies),
        sim_success=sim,
        world_success=world,
        sim_seconds=sim_seconds,
        world_seconds=time.perf_counter() - start,
        correlation={
            **ranking_correlation(sim.mean(axis=1), world.mean(axis=1)),
            **ranking_confidence(sim, world),
        },
    )
