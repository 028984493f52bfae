"""BridgeWorld-v0's native vector env: one Rollout for N worlds, equal to N single envs, autoreset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

import worldsim  # noqa: F401  (registers BridgeWorld-v0)
from worldsim.envs.bridge_world import BridgeWorldEnv, BridgeWorldVectorEnv
from worldsim.sim.spaces import ACTION_HIGH, ACTION_LOW, bridge_action_space, bridge_observation_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Exact agreement across batch sizes is a float32 property: in bf16 (the CPU default where the CPU has
# bf16 kernels) a world's keys are rounded after RoPE at its absolute position in the shared clock.
EXACT = {"device": "cpu", "dtype": "float32"}


def make_vec(bundle, num_envs: int, **kwargs) -> BridgeWorldVectorEnv:
    return gym.make_vec(
        "BridgeWorld-v0",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        checkpoint=bundle,
        **EXACT,
        **kwargs,
    )


def assert_same_frame(a: np.ndarray, b: np.ndarray, msg: str = "") -> None:
    """Equal up to float rounding: a batch of N and a batch of 1 sum their matmuls in different orders
    on the CPU, which moves a few pixels by one grey level (a different seed moves them by ~36 on average)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (
        f"{msg}: max diff {diff.max()}, {(diff > 0).mean():.2%} differ"
    )


def test_make_vec_builds_the_native_vector_env_with_batched_spaces(world_bundle):
    envs = make_vec(world_bundle, 3)
    assert isinstance(envs, BridgeWorldVectorEnv) and envs.num_envs == 3
    assert envs.max_episode_steps == 60  # from the registration, since make_vec does not wrap
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.single_action_space == bridge_action_space()
    assert envs.single_observation_space == bridge_observation_space(32, 48)
    assert envs.action_space == batch_space(bridge_action_space(), 3)
    obs, info = envs.reset(seed=0)
    assert envs.observation_space.contains(obs) and info["ee_state"].shape == (3, 7)
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(obs)
    assert rewards.shape == (3,) and not terminated.any() and not truncated.any()
    np.testing.assert_array_equal(info["frame_index"], [1, 1, 1])


def test_vector_env_gives_the_frames_of_n_single_envs_with_the_same_seeds(world_bundle):
    n, steps = 3, 6
    actions = np.random.default_rng(0).uniform(ACTION_LOW, ACTION_HIGH, (steps, n, 7)).astype(np.float32)
    envs = make_vec(world_bundle, n)
    obs, _ = envs.reset(seed=10)
    vec = [obs] + [envs.step(a)[0] for a in actions]
    for i in range(n):
        single = BridgeWorldEnv(checkpoint=world_bundle, **EXACT)
        obs, _ = single.reset(seed=10 + i)  # SyncVectorEnv's convention: world i gets seed + i
        ones = [obs] + [single.step(a[i])[0] for a in actions]
        for t, (v, s) in enumerate(zip(vec, ones)):
            assert_same_frame(v["image"][i], s["image"], f"world {i}, step {t}")
            np.testing.assert_allclose(v["ee_state"][i], s["ee_state"], atol=1e-6)
    assert not np.array_equal(vec[-1]["image"][0], vec[-1]["image"][1])  # worlds are not copies


def test_autoreset_next_step_and_partial_resets_match_single_envs(world_bundle):
    """Worlds reset at different times (a reset_mask, then staggered time limits) still match single
    envs step for step: a reset of one world must not disturb the others."""
    envs = make_vec(world_bundle, 2, max_episode_steps=3)
    singles = [BridgeWorldEnv(checkpoint=world_bundle, **EXACT) for _ in range(2)]
    rng = np.random.default_rng(1)
    actions = rng.uniform(ACTION_LOW, ACTION_HIGH, (6, 2, 7)).astype(np.float32)

    def check(vec_obs, i: int, single_obs) -> None:
        assert_same_frame(vec_obs["image"][i], single_obs["image"], f"world {i}")
        np.testing.assert_allclose(vec_obs["ee_state"][i], single_obs["ee_state"], atol=1e-6)

    envs.reset(seed=0)
    singles[0].reset(seed=0)
    singles[1].reset(seed=1)
    for t in range(2):
        obs, *_ = envs.step(actions[t])
        for i in range(2):
            check(obs, i, singles[i].step(actions[t, i])[0])
    obs, info = envs.reset(options={"reset_mask": np.array([False, True])})  # world 1 only
    check(obs, 1, singles[1].reset()[0])
    assert info["frame_index"].tolist() == [2, 0]

    obs, _, _, truncated, _ = envs.step(actions[2])  # world 0 reaches its limit
    assert truncated.tolist() == [True, False]
    check(obs, 0, singles[0].step(actions[2, 0])[0])
    check(obs, 1, singles[1].step(actions[2, 1])[0])

    ignored = actions[3].copy()
    ignored[0] = np.nan  # world 0 is being reset: its action is ignored, not checked
    obs, _, terminated, truncated, info = envs.step(ignored)
    assert truncated.tolist() == [False, False] and not terminated.any()
    assert info["frame_index"].tolist() == [0, 2]
    check(obs, 0, singles[0].reset()[0])  # the reset observation, drawn from world 0's own np_random
    check(obs, 1, singles[1].step(actions[3, 1])[0])

    obs, _, _, truncated, _ = envs.step(actions[4])
    assert truncated.tolist() == [False, True]
    check(obs, 0, singles[0].step(actions[4, 0])[0])
    check(obs, 1, singles[1].step(actions[4, 1])[0])
    obs, _, _, truncated, _ = envs.step(actions[5])
    check(obs, 0, singles[0].step(actions[5, 0])[0])
    check(obs, 1, singles[1].reset()[0])


def test_copy_false_returns_the_env_frame_buffer_with_the_same_frames(world_bundle):
    """copy=False (gymnasium's SyncVectorEnv argument): the same observations as copy=True, but the image
    is the env's own buffer, which the next step overwrites; copy=True observations stay as returned."""
    rng = np.random.default_rng(4)
    actions = rng.uniform(ACTION_LOW, ACTION_HIGH, (4, 2, 7)).astype(np.float32)
    copied, shared = make_vec(world_bundle, 2), make_vec(world_bundle, 2, copy=False)
    obs_c, _ = copied.reset(seed=7)
    obs_s, _ = shared.reset(seed=7)
    np.testing.assert_array_equal(obs_c["image"], obs_s["image"])
    for a in actions:
        before_c, kept_c = obs_c["image"], obs_c["image"].copy()
        obs_c, *_ = copied.step(a)
        obs_s, *_ = shared.step(a)
        np.testing.assert_array_equal(obs_c["image"], obs_s["image"])
        np.testing.assert_array_equal(obs_c["ee_state"], obs_s["ee_state"])
        np.testing.assert_array_equal(before_c, kept_c)  # a returned copy is never written again
        assert not np.shares_memory(obs_c["image"], copied.worlds.images)
        assert np.shares_memory(obs_s["image"], shared.worlds.images)


def test_vector_env_bad_input_gets_clear_errors(world_bundle):
    envs = make_vec(world_bundle, 2)
    with pytest.raises(ValueError, match="list of 2 seeds"):
        envs.reset(seed=[1, 2, 3])
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
        envs.step(np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        envs.step(np.full((2, 7), np.nan, np.float32))
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.array([False, False])})
    with pytest.raises(ValueError, match="not understood"):
        envs.reset(options={"colour": "red"})


def test_vector_render_returns_every_frame(world_bundle):
    envs = make_vec(world_bundle, 2, render_mode="rgb_array")
    obs, _ = envs.reset(seed=0)
    np.testing.assert_array_equal(envs.render(), obs["image"])
    assert envs.render().shape == (2, 32, 48, 3)


def test_vector_env_judges_each_world_and_autoresets_the_successful_ones(world_bundle, tmp_path):
    from conftest import constant_success_model

    # Always judges "in the bowl" done and "lift" not done (see constant_success_model).
    success = constant_success_model(32, 48)
    envs = make_vec(world_bundle, 3, success_model=success)
    image = np.full((32, 48, 3), 100, np.uint8)
    envs.reset(seed=0, options={"image": image, "ee_state": np.zeros(7), "instruction": "lift the red block"})
    _, rewards, terminated, _, info = envs.step(np.zeros((3, 7), np.float32))
    assert not terminated.any() and not rewards.any()
    assert info["_is_success"].all() and not info["is_success"].any()
    assert list(info["instruction"]) == ["lift the red block"] * 3

    envs.reset(
        seed=0,
        options={"image": image, "ee_state": np.zeros(7), "instruction": "put the red block in the bowl"},
    )
    _, rewards, terminated, _, info = envs.step(np.zeros((3, 7), np.float32))
    assert terminated.all() and (rewards == 1.0).all() and info["is_success"].all()
    _, _, terminated, _, info = envs.step(np.zeros((3, 7), np.float32))  # autoreset step
    assert not terminated.any() and (info["frame_index"] == 0).all()
    envs.close()


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_success_estimates_are_of_the_frames_the_env_returns(world_bundle, device):
    """The env estimates each judged world's frame as the step makes it (on CUDA queued behind the step
    and read back with the frames, one wait): the estimates are those of the observed images, for a mix
    of judged worlds and one whose instruction the success model cannot read."""
    from worldsim.eval.success import StateNet, SuccessConfig, SuccessModel

    torch.manual_seed(0)
    success = SuccessModel(StateNet(SuccessConfig(height=32, width=48)), device)
    envs = gym.make_vec(
        "BridgeWorld-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        checkpoint=world_bundle,
        device=device,
        dtype="float32",
        success_model=success,
    )
    image = np.full((32, 48, 3), 100, np.uint8)
    envs.reset(seed=0, options={"image": image, "ee_state": np.zeros(7), "instruction": "lift the red block"})
    mask = np.array([False, True, False])
    envs.reset(options={"image": image, "ee_state": np.zeros(7), "reset_mask": mask})  # no instruction
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs, _, _, _, info = envs.step(rng.uniform(ACTION_LOW, ACTION_HIGH, (3, 7)).astype(np.float32))
        np.testing.assert_array_equal(info["_is_success"], ~mask)
        expected = success.estimate(obs["image"])
        now = envs.unwrapped.worlds.now_state
        np.testing.assert_allclose(now.positions[~mask], expected.positions[~mask], atol=1e-4)
        np.testing.assert_allclose(now.grasp[~mask], expected.grasp[~mask], atol=1e-5)
    envs.close()
