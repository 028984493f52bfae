"""Scripted BridgeSim policies: the expert succeeds, the degraded ones fail more, rollouts are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from worldsim.sim.bridge_sim import BridgeSim
from worldsim.sim.policies import POLICIES, make_policy
from worldsim.sim.spaces import bridge_action_space


def success_rate(task: str, policy: str, seeds: range, max_steps: int = 60) -> float:
    sim = BridgeSim(task=task, render=False)
    wins = 0
    for seed in seeds:
        sim.reset(seed)
        pi = make_policy(policy)
        pi.reset(sim, np.random.default_rng(seed))
        for _ in range(max_steps):
            sim.step(pi.act(sim))
            if sim.is_success():
                wins += 1
                break
    sim.close()
    return wins / len(seeds)


def test_expert_puts_blocks_in_the_bowl_at_least_80_percent():
    assert success_rate("pick_place", "expert", range(1000, 1020)) >= 0.8


@pytest.mark.parametrize("task", ["push_left", "push_right", "lift"])
def test_expert_solves_the_other_tasks(task):
    assert success_rate(task, "expert", range(5)) >= 0.8


@pytest.mark.parametrize("policy", ["wrong_object", "no_grasp", "early_release"])
def test_failure_modes_fail_pick_and_place(policy):
    assert success_rate("pick_place", policy, range(4), max_steps=40) <= 0.25


def rollout_actions(sim: BridgeSim, policy: str, steps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    sim.reset(5)
    pi = make_policy(policy)
    pi.reset(sim, np.random.default_rng(11))
    actions = []
    for _ in range(steps):
        actions.append(pi.act(sim))
        sim.step(actions[-1])
    return np.stack(actions), sim.ee_state()


def test_policies_emit_actions_inside_the_action_space_and_are_deterministic():
    sim, space = BridgeSim(task="pick_place", render=False), bridge_action_space()
    for name in POLICIES:
        actions, final = rollout_actions(sim, name)
        assert all(space.contains(a.astype(np.float32)) for a in actions), name
        again, final_again = rollout_actions(sim, name)
        np.testing.assert_array_equal(actions, again)
        np.testing.assert_array_equal(final, final_again)
    sim.close()
