"""Where the policy ranking's learned-world verdicts go wrong: the success model, or the world model?

    python benchmarks/ranking_diagnosis.py --checkpoint checkpoints/bridge_small --episodes 50

The ranking (`worldsim-eval --stages ranking`) runs each policy closed-loop in BridgeSim and in the learned
world and judges the learned world's frames with the success model. This script takes the same episodes
(policies, start seeds, `ObjectBelief`) and splits a wrong verdict into its two possible causes:

- truth: BridgeSim's own predicate, at any step of the episode;
- judge on sim frames: the success model on BridgeSim's rendered frames (resized to the model's size),
  confirmed on `--confirm-frames` consecutive frames, as the ranking confirms: the judge alone;
- world replay: the learned world replaying BridgeSim's actions open-loop from the same start frame,
  judged the same way: the world model (and the judge on its frames).

The policies' actions depend on the objects only through the belief, which is the same in both worlds,
so the replay is what the closed-loop ranking sees, but for the small difference between the measured and
the integrated end-effector pose. Episodes run the full `--steps` (BridgeSim does not stop at success
here, so the replay has actions for every step). Prints per policy and task the three success rates,
the rates' correlations with the truth, and the judge's per-episode agreement; writes JSON to `--out`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from worldsim.data.dataset import resize_frames
from worldsim.eval.policy_ranking import ranking_confidence, ranking_correlation, start_episode
from worldsim.eval.sim_pool import get_sim, sim_map
from worldsim.eval.success import load_success_model
from worldsim.models.world_model import WorldModel
from worldsim.sim.policies import POLICIES
from worldsim.sim.tasks import TASKS


@dataclass
class Args:
    checkpoint: str = "checkpoints/bridge_small"  # bundle with success.safetensors
    policies: tuple[str, ...] = tuple(POLICIES)
    episodes: int = 50  # per policy: start seeds seed .. seed + episodes - 1, as the ranking's
    seed: int = 2000  # the ranking's default
    steps: int = 60  # episode length (BridgeSim-v0's limit)
    confirm_frames: int = 2  # consecutive frames a success must hold, as the ranking's
    render_resolution: tuple[int, int] = (256, 320)  # BridgeSim renders, resized to the model's size
    batch_size: int = 75  # episodes per learned-world batch (and per batch of sim episodes held in memory)
    workers: int = 2  # BridgeSim processes
    threads: int = 2  # torch CPU threads
    device: str = "cpu"
    out: Path = Path("benchmarks/results/ranking_diagnosis.json")


def sim_episode(
    policy_name: str, seed: int, steps: int, render_resolution: tuple[int, int], size: tuple[int, int]
) -> dict:
    """One ranking episode in BridgeSim (`start_episode`, as the ranking starts it), run for all
    `steps`: frames (steps + 1, H, W, 3) at the model's size, actions (steps, 7), truth per step."""
    sim = get_sim(render_resolution)
    belief, policy, _ = start_episode(sim, policy_name, seed)

    def frame() -> np.ndarray:
        return resize_frames(sim.render()[None], size)[0].transpose(1, 2, 0)

    frames, actions, truth = [frame()], [], []
    for _ in range(steps):
        action = policy.act(belief)
        sim.step(action)
        belief.observe(sim.ee_state(), action)
        actions.append(action)
        frames.append(frame())
        truth.append(sim.is_success())
    return {
        "policy": policy_name,
        "task": sim.task.name,
        "instruction": sim.instruction,
        "frames": np.stack(frames),
        "actions": np.stack(actions),
        "truth": np.array(truth),
    }


def confirmed(hits: np.ndarray, frames: int) -> np.ndarray:
    """(T, B) per-step verdicts -> (B,) whether some run of `frames` consecutive steps all hold."""
    streak, done = np.zeros(hits.shape[1], dtype=int), np.zeros(hits.shape[1], dtype=bool)
    for row in hits:
        streak = np.where(row, streak + 1, 0)
        done |= streak >= frames
    return done


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    model = WorldModel.from_pretrained(args.checkpoint, device=args.device)
    success = load_success_model(args.checkpoint, args.device)
    size = (model.cfg.height, model.cfg.width)
    jobs = [
        (p, args.seed + i, args.steps, tuple(args.render_resolution), size)
        for p in args.policies
        for i in range(args.episodes)
    ]
    rows: list[dict] = []
    sim_seconds = world_seconds = 0.0
    for b0 in range(0, len(jobs), args.batch_size):
        t = time.perf_counter()
        eps = sim_map(sim_episode, jobs[b0 : b0 + args.batch_size], args.workers, desc=f"BridgeSim {b0}")
        sim_seconds += time.perf_counter() - t
        t = time.perf_counter()
        texts = [e["instruction"] for e in eps]
        starts = np.stack([e["frames"][0] for e in eps])
        start = success.estimate(starts)
        on_sim = np.stack(
            [
                success.judge(success.estimate(np.stack([e["frames"][s] for e in eps])), start, texts)
                for s in range(1, args.steps + 1)
            ]
        )
        rollout = model.rollout(batch_size=len(eps), seed=args.seed + b0)
        rollout.reset(starts)
        on_world = []
        for s in range(args.steps):
            frames = rollout.step(np.stack([e["actions"][s] for e in eps]))
            on_world.append(success.judge(success.estimate(frames), start, texts))
        world_seconds += time.perf_counter() - t
        judge_sim = confirmed(on_sim, args.confirm_frames)
        world = confirmed(np.stack(on_world), args.confirm_frames)
        for e, js, w in zip(eps, judge_sim, world):
            rows.append(
                {
                    "policy": e["policy"],
                    "task": e["task"],
                    "truth": bool(e["truth"].any()),
                    "judge_on_sim_frames": bool(js),
                    "world_replay": bool(w),
                }
            )
        print(f"{len(rows)} of {len(jobs)} episodes", flush=True)
    result = summarise(rows, args)
    result.update(sim_seconds=round(sim_seconds, 1), world_seconds=round(world_seconds, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


def summarise(rows: list[dict], args: Args) -> dict:
    keys = ("truth", "judge_on_sim_frames", "world_replay")
    print(f"{'policy':14} {'task':11} {'n':>3} " + " ".join(f"{k:>20}" for k in keys))
    per_policy = {}
    for p in args.policies:
        mine = [r for r in rows if r["policy"] == p]
        for task in [*TASKS, "all"]:
            sel = mine if task == "all" else [r for r in mine if r["task"] == task]
            if sel:
                rates = {k: float(np.mean([r[k] for r in sel])) for k in keys}
                print(f"{p:14} {task:11} {len(sel):>3} " + " ".join(f"{rates[k]:>20.2f}" for k in keys))
                if task == "all":
                    per_policy[p] = rates
    truth = np.array([per_policy[p]["truth"] for p in args.policies])
    out = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
        "per_policy": per_policy,
        "episodes": rows,
    }

    def outcomes(key: str) -> np.ndarray:  # (policies, episodes) bool, episodes in seed order
        return np.array([[bool(r[key]) for r in rows if r["policy"] == p] for p in args.policies])

    for k in keys[1:]:
        rates = np.array([per_policy[p][k] for p in args.policies])
        agreement = float(np.mean([r[k] == r["truth"] for r in rows]))
        out[k] = {
            "agreement_with_truth": round(agreement, 4),
            **ranking_correlation(truth, rates),
            **ranking_confidence(outcomes("truth"), outcomes(k)),
        }
        print(
            f"{k}: per-episode agreement with the truth {agreement:.2f}; rates vs truth: Pearson {out[k]['pearson']} "
            f"{out[k]['pearson_ci']}, Spearman {out[k]['spearman']} {out[k]['spearman_ci']} (95% bootstrap intervals)"
        )
    return out


if __name__ == "__main__":
    main(tyro.cli(Args))
