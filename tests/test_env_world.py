"""BridgeWorld-v0, the learned simulator as a single gymnasium env, over a tiny random-weight bundle."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from bridge_fixtures import write_episode
from conftest import constant_success_model, make_world_bundle
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401  (registers BridgeWorld-v0)
from worldsim.data.actions import integrate_actions
from worldsim.data.bridge import load_episode
from worldsim.envs.bridge_world import BridgeWorldEnv, BridgeWorldVectorEnv, resize_images
from worldsim.eval.success import parse_instruction, task_code
from worldsim.models.world_model import CheckpointError, WorldModel
from worldsim.sim.spaces import ACTION_HIGH, ACTION_LOW, bridge_action_space, bridge_observation_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = (32, 48)  # the tiny preset's frame size


@pytest.fixture
def env(world_bundle):
    env = BridgeWorldEnv(checkpoint=world_bundle, device="cpu", render_mode="rgb_array")
    yield env
    env.close()


def random_actions(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(ACTION_LOW, ACTION_HIGH, (n, 7)).astype(np.float32)


def rollout_images(env: BridgeWorldEnv, seed: int, actions: np.ndarray) -> np.ndarray:
    obs, _ = env.reset(seed=seed)
    return np.stack([obs["image"]] + [env.step(a)[0]["image"] for a in actions])


def test_check_env_passes_including_render(world_bundle):
    env = gym.make("BridgeWorld-v0", checkpoint=world_bundle, device="cpu", render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity")  # ee_state is unbounded by design
        check_env(env.unwrapped, skip_render_check=False)
    env.close()


def test_spaces_are_the_shared_bridge_spaces_and_resolution_resizes(env, world_bundle):
    assert env.action_space == bridge_action_space()
    assert env.observation_space == bridge_observation_space(*SIZE)
    big = BridgeWorldEnv(checkpoint=world_bundle, device="cpu", resolution=(48, 64))
    obs, _ = big.reset(seed=0)
    assert big.observation_space == bridge_observation_space(48, 64)
    assert obs["image"].shape == (48, 64, 3)
    obs, *_ = big.step(np.zeros(7, np.float32))
    assert big.observation_space.contains(obs)


def test_default_reset_draws_a_start_frame_shipped_with_the_checkpoint(env, world_bundle):
    start = WorldModel.start_frames(world_bundle)
    drawn = set()
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        k = next(i for i, im in enumerate(start["images"]) if np.array_equal(im, obs["image"]))
        np.testing.assert_allclose(obs["ee_state"], start["ee_states"][k], atol=1e-6)
        assert info["frame_index"] == 0 and "is_success" not in info
        drawn.add(k)
    assert len(drawn) > 1  # the seed picks the start frame


def test_episode_option_starts_from_that_frame_and_state(env, tmp_path):
    json_path = write_episode(tmp_path / "bridge", T=6, size=(48, 64))
    obs, info = env.reset(seed=0, options={"episode": str(json_path), "frame": 3})
    episode = load_episode(json_path)
    frames = resize_images(episode.frames(), SIZE)
    # The start is frame 3: closest of all frames, and exactly its antialiased resize.
    assert int(np.argmin([np.abs(f.astype(int) - obs["image"]).mean() for f in frames])) == 3
    np.testing.assert_array_equal(obs["image"], frames[3])
    expected = np.concatenate([episode.state[3, :6], [episode.continuous_gripper_state[3]]])
    np.testing.assert_allclose(info["ee_state"], expected, atol=1e-12)
    obs0, _ = env.reset(options={"episode": json_path})  # frame defaults to 0
    np.testing.assert_array_equal(obs0["image"], frames[0])


def test_image_option_accepts_any_size_and_resizes_with_antialiasing(env):
    image = np.random.default_rng(0).integers(0, 256, (100, 60, 3), dtype=np.uint8)
    ee = np.array([0.3, -0.1, 0.2, 0.1, -0.2, 0.3, 1.0])
    obs, info = env.reset(seed=0, options={"image": image, "ee_state": ee})
    np.testing.assert_array_equal(obs["image"], resize_images(image[None], SIZE)[0])
    np.testing.assert_allclose(info["ee_state"], ee)
    assert obs["ee_state"].dtype == np.float32 and env.observation_space.contains(obs)


def test_bad_reset_options_get_clear_errors(env, tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\['colour'\] not understood"):
        env.reset(options={"colour": "red"})
    with pytest.raises(ValueError, match="not understood"):
        env.reset(options={"image": image})  # the state is needed too
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        env.reset(options={"episode": tmp_path / "nowhere.json"})
    json_path = write_episode(tmp_path / "bridge", T=4, size=(48, 64))
    with pytest.raises(ValueError, match=r"options\['frame'\] must be an int in \[0, 4\)"):
        env.reset(options={"episode": json_path, "frame": 4})
    with pytest.raises(ValueError, match="uint8"):
        env.reset(options={"image": image.astype(np.float32), "ee_state": np.zeros(7)})
    with pytest.raises(ValueError, match="7 finite numbers"):
        env.reset(options={"image": image, "ee_state": [0.0, np.nan, 0, 0, 0, 0, 0]})


def test_bad_actions_get_clear_errors(env):
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(7, np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(6, np.float32))
    bad = np.zeros(7, np.float32)
    bad[4] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first at index \[4\]\)"):
        env.step(bad)
    bad[4] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(bad)


def test_out_of_range_actions_are_clipped_with_one_warning(env):
    obs, info = env.reset(seed=0)
    start = info["ee_state"]
    too_big = np.array([0.2, -0.2, 0.0, 1.0, 0.0, 0.0, 2.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env.step(too_big)
        _, _, _, _, info = env.step(too_big)
    assert sum("clipped" in str(w.message) for w in caught) == 1
    clipped = np.clip(too_big, ACTION_LOW, ACTION_HIGH)
    np.testing.assert_allclose(info["ee_state"], integrate_actions(start, [clipped, clipped])[-1], atol=1e-12)


def test_clip_warn_false_is_silent(world_bundle):
    env = BridgeWorldEnv(checkpoint=world_bundle, device="cpu", clip_warn=False)
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.step(np.full(7, 5.0))


def test_ee_state_is_the_commanded_pose_integrated_from_the_actions(env):
    ee0 = np.array([0.25, 0.05, 0.15, 0.3, -0.4, 1.2, 0.0])
    env.reset(seed=0, options={"image": np.zeros((40, 40, 3), np.uint8), "ee_state": ee0})
    actions = random_actions(10)
    states = [env.step(a)[0]["ee_state"] for a in actions]
    expected = integrate_actions(ee0, actions.astype(np.float64))[1:]
    np.testing.assert_allclose(np.stack(states), expected, atol=1e-6)
    np.testing.assert_allclose(states[-1][6], 1.0 - actions[-1, 6], atol=1e-7)  # gripper: 1 = closed


def test_same_seed_and_actions_give_identical_frames_and_others_differ(env, world_bundle):
    actions = random_actions(5)
    first = rollout_images(env, 3, actions)
    other_env = BridgeWorldEnv(checkpoint=world_bundle, device="cpu")
    np.testing.assert_array_equal(rollout_images(other_env, 3, actions), first)
    assert not np.array_equal(rollout_images(env, 4, actions), first)
    assert not np.array_equal(rollout_images(env, 3, random_actions(5, seed=1)), first)  # actions matter


def test_time_limit_truncates_after_60_steps(world_bundle):
    env = gym.make("BridgeWorld-v0", checkpoint=world_bundle, device="cpu")
    env.reset(seed=0)
    flags = [env.step(np.zeros(7, np.float32))[2:4] for _ in range(60)]
    assert all(not terminated for terminated, _ in flags)
    assert [truncated for _, truncated in flags] == [False] * 59 + [True]


def test_render_returns_the_current_frame(env, world_bundle):
    env.reset(seed=0)
    obs, reward, *_ = env.step(np.zeros(7, np.float32))
    np.testing.assert_array_equal(env.render(), obs["image"])
    assert reward == 0.0
    assert BridgeWorldEnv(checkpoint=world_bundle, device="cpu").render() is None
    with pytest.raises(ValueError, match="render_mode"):
        BridgeWorldEnv(checkpoint=world_bundle, device="cpu", render_mode="human")


@pytest.fixture(scope="module")
def judged_bundle(tmp_path_factory):
    """The tiny world bundle with a success model and instructions for its start frames."""
    path = make_world_bundle(tmp_path_factory.mktemp("judged") / "bundle")
    frames = WorldModel.start_frames(path)
    frames["instructions"] = np.array(
        ["put the red block in the bowl", "lift the red block", "open the drawer"]
    )
    WorldModel.from_pretrained(path).save_pretrained(path, start_frames=frames)
    constant_success_model(*SIZE).save(path)
    return path


def test_success_model_gives_is_success_reward_and_termination(judged_bundle):
    env = gym.make("BridgeWorld-v0", checkpoint=judged_bundle, device="cpu")
    image = np.full((*SIZE, 3), 128, np.uint8)
    start = {"image": image, "ee_state": np.zeros(7)}
    obs, info = env.reset(seed=0, options={**start, "instruction": "put the red block in the bowl"})
    assert info["instruction"] == "put the red block in the bowl" and info["is_success"] is True
    _, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
    assert (reward, terminated, truncated, info["is_success"]) == (1.0, True, False, True)

    _, info = env.reset(seed=0, options={**start, "instruction": "lift the red block"})
    _, reward, terminated, _, info = env.step(np.zeros(7, np.float32))
    assert (reward, terminated, info["is_success"]) == (0.0, False, False)

    _, info = env.reset(seed=0, options=start)  # no instruction: nothing to judge
    assert info["instruction"] is None and "is_success" not in info
    assert "is_success" not in env.step(np.zeros(7, np.float32))[4]
    with pytest.raises(ValueError, match=r"options\['instruction'\].*cannot read"):
        env.reset(seed=0, options={**start, "instruction": "open the drawer"})
    with pytest.raises(ValueError, match=r"options\['instruction'\] must be a str"):
        env.reset(seed=0, options={**start, "instruction": 3})
    env.close()


def test_shipped_start_frames_carry_their_instructions(judged_bundle):
    env = BridgeWorldEnv(checkpoint=judged_bundle, device="cpu")
    seen = {}
    for seed in range(20):
        _, info = env.reset(seed=seed)
        seen[info["instruction"]] = "is_success" in info
    # The third start frame's text is not a BridgeSim task: kept in info, not judged.
    assert seen == {
        "put the red block in the bowl": True,
        "lift the red block": True,
        "open the drawer": False,
    }
    env.close()


def test_vector_env_judges_each_world_by_its_own_instruction_parsing_each_text_once(judged_bundle):
    parse_instruction.cache_clear()
    task_code.cache_clear()
    envs = BridgeWorldVectorEnv(num_envs=8, checkpoint=judged_bundle, device="cpu")
    envs.reset(seed=5)  # worlds 0-7 start with each of the three shipped instructions
    seen = set()
    for _ in range(4):  # the worlds "in the bowl" succeed at once, so they are reset again and again
        _, rewards, terminated, _, info = envs.step(np.zeros((8, 7), np.float32))
        texts = info["instruction"]
        seen |= set(texts)
        np.testing.assert_array_equal(info["_is_success"], texts != "open the drawer")
        in_bowl = texts == "put the red block in the bowl"
        np.testing.assert_array_equal(info["is_success"], in_bowl)
        assert not rewards[~in_bowl].any()
    assert seen == {"put the red block in the bowl", "lift the red block", "open the drawer"}
    assert parse_instruction.cache_info().misses == 3  # once per text, however many resets
    envs.close()


def test_success_model_choice_and_size_check(judged_bundle, tmp_path):
    env = BridgeWorldEnv(checkpoint=judged_bundle, device="cpu", success_model=None)
    _, info = env.reset(seed=0)
    assert "is_success" not in info and env.step(np.zeros(7, np.float32))[1] == 0.0
    wrong = constant_success_model(64, 80).save(tmp_path)
    with pytest.raises(ValueError, match="success_model: it sees 64x80 frames, the world model makes 32x48"):
        BridgeWorldEnv(checkpoint=judged_bundle, device="cpu", success_model=wrong)


def test_missing_checkpoint_or_start_frames_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr("worldsim.models.world_model.DEFAULT_CHECKPOINT", tmp_path / "bridge_small")
    with pytest.raises(CheckpointError, match="bundled model is missing"):
        BridgeWorldEnv(device="cpu")
    bare = make_world_bundle(tmp_path / "bare", with_start_frames=False)
    env = BridgeWorldEnv(checkpoint=bare, device="cpu")
    with pytest.raises(ValueError, match="ships no start frames"):
        env.reset(seed=0)
    obs, _ = env.reset(seed=0, options={"image": np.zeros((8, 8, 3), np.uint8), "ee_state": np.zeros(7)})
    assert obs["image"].shape == (*SIZE, 3)


def test_compiled_env_matches_eager_frames_and_stays_deterministic(world_bundle):
    actions = np.random.default_rng(5).uniform(ACTION_LOW, ACTION_HIGH, (4, 7)).astype(np.float32)

    def run(env: BridgeWorldEnv) -> np.ndarray:
        obs, _ = env.reset(seed=11)
        return np.stack([obs["image"]] + [env.step(a)[0]["image"] for a in actions])

    eager = run(BridgeWorldEnv(checkpoint=world_bundle, device="cpu", dtype="float32"))
    compiled_env = BridgeWorldEnv(checkpoint=world_bundle, device="cpu", dtype="float32", compile=True)
    first, second = run(compiled_env), run(compiled_env)
    assert np.array_equal(first, second)
    # Fused kernels round differently: at most a few grey levels apart on a few pixels.
    diff = np.abs(first.astype(int) - eager)
    assert diff.max() <= 3 and (diff > 1).mean() < 0.01, (diff.max(), (diff > 1).mean())


def test_compiled_vector_env_partial_resets_do_not_recompile(world_bundle):
    """Autoresets come in every size (1, 2, 3... worlds at once): compiling the dynamics for each one
    cost ~10 s per new size on an H100. Subsets run eagerly; only full-batch shapes are compiled."""
    import torch._dynamo.utils as dynamo_utils

    env = BridgeWorldVectorEnv(
        num_envs=4, checkpoint=world_bundle, device="cpu", dtype="float32", compile=True
    )
    actions = np.random.default_rng(2).uniform(ACTION_LOW, ACTION_HIGH, (6, 4, 7)).astype(np.float32)
    env.reset(seed=0)
    for a in actions[:2]:
        env.step(a)  # full-batch step and commit shapes compiled here
    compiled = dynamo_utils.counters["stats"]["unique_graphs"]
    rng = np.random.default_rng(0)
    for size, a in zip((1, 2, 3), actions[2:]):  # the worlds' reset, as the vector env's autoreset runs it
        env.worlds.reset(
            np.arange(size), [env.worlds.start(None, rng) for _ in range(size)], list(range(size))
        )
        env.step(a)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == compiled
