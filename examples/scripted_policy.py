"""Evaluate a scripted policy for N episodes in BridgeSim-v0 (MuJoCo) and in BridgeWorld-v0 (the learned
simulator) from the same starts, and print both success rates.

    python examples/scripted_policy.py --policy expert --episodes 10

A scripted policy reads object poses; the learned world has none, only frames. So in both worlds the
policy acts through an `ObjectBelief` (worldsim/eval/policy_ranking.py): the object poses known at reset,
the world's own end-effector state, and a kinematic guess of what the gripper carries or pushes. Success
is BridgeSim's task predicate in BridgeSim-v0 and the bundled success model (block and bowl positions
estimated from the predicted frame, judged by the same predicate) in BridgeWorld-v0.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import worldsim  # noqa: F401  (registers BridgeSim-v0 and BridgeWorld-v0)
from worldsim.eval.policy_ranking import ObjectBelief
from worldsim.sim.policies import POLICIES, make_policy


def run_episode(env: gym.Env, policy_name: str, belief: ObjectBelief, policy_seed: int) -> bool:
    """One episode of the policy in an env already reset; True if the env reported success."""
    policy = make_policy(policy_name)
    policy.reset(belief, np.random.default_rng(policy_seed))
    while True:
        action = policy.act(belief)
        _, _, terminated, truncated, info = env.step(action)
        belief.observe(info["ee_state"], action)
        if terminated or truncated:
            return bool(info.get("is_success", False))


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="expert", choices=sorted(POLICIES))
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=60, help="time limit of both envs")
    p.add_argument("--checkpoint", default=None, help="world model bundle (default: the bundled one)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    sim_env = gym.make("BridgeSim-v0", max_episode_steps=args.max_steps)
    world_env = gym.make("BridgeWorld-v0", checkpoint=args.checkpoint, max_episode_steps=args.max_steps)
    outcomes = {"BridgeSim-v0": [], "BridgeWorld-v0": []}
    for episode in range(args.episodes):
        seed = args.seed + episode
        obs, info = sim_env.reset(seed=seed)
        start = ObjectBelief.from_sim(sim_env.unwrapped.sim)  # object poses at reset
        start_options = {
            "image": obs["image"],
            "ee_state": info["ee_state"],
            "instruction": info["instruction"],
        }
        outcomes["BridgeSim-v0"].append(run_episode(sim_env, args.policy, start.copy(), seed))
        world_env.reset(seed=seed, options=start_options)  # the same start frame, state and task
        outcomes["BridgeWorld-v0"].append(run_episode(world_env, args.policy, start.copy(), seed))
        print(
            f"episode {episode}: {info['instruction']!r}: BridgeSim-v0 {outcomes['BridgeSim-v0'][-1]}, "
            f"BridgeWorld-v0 {outcomes['BridgeWorld-v0'][-1]}"
        )
    rates = {name: float(np.mean(v)) for name, v in outcomes.items()}
    for name, rate in rates.items():
        print(f"{name}: {args.policy} success rate {rate:.2f} over {args.episodes} episodes")
    return rates


if __name__ == "__main__":
    main()
