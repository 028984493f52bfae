"""BridgeSim-v0 as a gymnasium env: the env checker, rewards, termination and info."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from worldsim.envs.bridge_sim import BridgeSimEnv
from worldsim.sim.policies import make_policy
from worldsim.sim.spaces import bridge_action_space, bridge_observation_space


@pytest.fixture
def env():
    env = BridgeSimEnv(resolution=(48, 64))
    yield env
    env.close()


def test_check_env_passes_including_render():
    import worldsim  # noqa: F401  (registers BridgeSim-v0)

    env = gym.make("BridgeSim-v0", resolution=(48, 64))
    try:
        check_env(env.unwrapped, skip_render_check=False)
    finally:
        env.close()


def test_spaces_are_the_shared_bridge_spaces(env):
    assert env.action_space == bridge_action_space()
    assert env.observation_space == bridge_observation_space(48, 64)
    np.testing.assert_allclose(env.action_space.high, [0.05] * 3 + [0.25] * 3 + [1.0])


def test_reset_is_deterministic_for_a_seed_and_options_pick_the_task(env):
    obs1, info1 = env.reset(seed=7, options={"task": "lift"})
    obs2, info2 = env.reset(seed=7, options={"task": "lift"})
    assert info1["task"] == "lift" and info1["instruction"].startswith("lift the ")
    np.testing.assert_array_equal(obs1["image"], obs2["image"])
    np.testing.assert_array_equal(obs1["ee_state"], obs2["ee_state"])
    assert obs1["ee_state"].dtype == np.float32 and obs1["image"].shape == (48, 64, 3)


def test_expert_earns_reward_one_and_terminates_on_success(env):
    obs, info = env.reset(seed=3, options={"task": "lift"})
    policy = make_policy("expert")
    policy.reset(env.sim, np.random.default_rng(0))
    for _ in range(60):
        obs, reward, terminated, truncated, info = env.step(policy.act(env.sim).astype(np.float32))
        if terminated:
            break
    assert terminated and reward == 1.0 and info["is_success"]
    assert set(info) >= {"is_success", "ee_state", "instruction", "task"}
