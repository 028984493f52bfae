"""Policy ranking: correlation on known inputs, and the object belief the policies act through."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from worldsim.eval.policy_ranking import (
    ObjectBelief,
    RankingResult,
    ranking_confidence,
    ranking_correlation,
    sim_policy_episode,
)
from worldsim.sim.scene import BLOCK_HALF, BOWL_FLOOR
from worldsim.sim.tasks import make_task


def test_correlation_of_known_rankings():
    sim = np.array([0.9, 0.7, 0.5, 0.2, 0.0])
    assert ranking_correlation(sim, sim) == pytest.approx(
        {"pearson": 1.0, "spearman": 1.0, "pearson_p": 0.0, "spearman_p": 0.0}, abs=1e-6
    )
    reversed_ = ranking_correlation(sim, 1.0 - sim)  # the ranking upside down
    assert reversed_["pearson"] == pytest.approx(-1.0) and reversed_["spearman"] == pytest.approx(-1.0)
    # Same order, different spacing: Spearman stays 1, Pearson is the textbook formula.
    world = sim**3
    r = ranking_correlation(sim, world)
    x, y = sim - sim.mean(), world - world.mean()
    assert r["spearman"] == pytest.approx(1.0)
    assert r["pearson"] == pytest.approx((x @ y) / np.sqrt((x @ x) * (y @ y)), abs=1e-4)
    assert r["pearson"] < 1.0
    swapped = ranking_correlation(sim, np.array([0.9, 0.5, 0.7, 0.2, 0.0]))
    assert swapped["spearman"] == pytest.approx(stats.spearmanr(sim, [0.9, 0.5, 0.7, 0.2, 0.0])[0], abs=1e-4)


def test_bootstrap_intervals_are_tight_for_a_faithful_world_and_wide_for_a_blind_one():
    """Paired resampling: a world that reproduces every episode's outcome keeps correlation 1 in every
    resample; one whose outcomes are drawn independently of the policy's skill gets an interval around 0;
    more episodes narrow the interval."""
    rng = np.random.default_rng(0)
    skill = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
    sim = rng.random((5, 100)) < skill[:, None]
    faithful = ranking_confidence(sim, sim.copy())
    assert faithful["pearson_ci"] == [1.0, 1.0] and faithful["spearman_ci"] == [1.0, 1.0]
    blind = ranking_confidence(sim, rng.random((5, 100)) < 0.4)
    assert blind["pearson_ci"][0] < 0 < blind["pearson_ci"][1]
    noisy_world = np.where(
        rng.random((5, 400)) < 0.7, rng.random((5, 400)) < skill[:, None], rng.random((5, 400)) < 0.5
    )
    sim400 = rng.random((5, 400)) < skill[:, None]
    wide = ranking_confidence(sim400[:, :50], noisy_world[:, :50])["pearson_ci"]
    narrow = ranking_confidence(sim400, noisy_world)["pearson_ci"]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    # every policy at the same rate in every resample: no correlation is defined, so no interval
    assert ranking_confidence(np.ones((5, 30), bool), sim[:, :30])["pearson_ci"] is None


def test_correlation_is_undefined_for_a_constant_world():
    r = ranking_correlation(np.array([0.1, 0.5, 0.9]), np.zeros(3))
    assert r["pearson"] is None and r["spearman"] is None


def _belief() -> ObjectBelief:
    positions = {
        "block_0": np.array([0.30, 0.00, BLOCK_HALF]),
        "block_1": np.array([0.30, -0.15, BLOCK_HALF]),
        "block_2": np.array([0.40, 0.15, BLOCK_HALF]),
        "bowl": np.array([0.25, 0.15, 0.0]),
    }
    return ObjectBelief(make_task("pick_place"), positions, dict.fromkeys(positions, 0.0), np.zeros(7))


def test_belief_carries_a_closed_on_block_and_drops_it_into_the_bowl():
    belief = _belief()
    close, open_ = np.array([0, 0, 0, 0, 0, 0, 0.0]), np.array([0, 0, 0, 0, 0, 0, 1.0])
    belief.observe(np.array([0.30, 0.005, 0.02, 0, 0, 0, 0]), close)  # fingers close around block_0
    assert belief.is_grasped("block_0") and not belief.is_grasped("block_1")
    belief.observe(np.array([0.25, 0.155, 0.12, 0, 0, 0, 1]), close)  # carried above the bowl
    np.testing.assert_allclose(belief.body_pos("block_0"), [0.25, 0.15, 0.12])
    belief.observe(np.array([0.25, 0.155, 0.12, 0, 0, 0, 0]), open_)  # let go: falls onto the bowl floor
    assert not belief.is_grasped("block_0")
    np.testing.assert_allclose(belief.body_pos("block_0"), [0.25, 0.15, BOWL_FLOOR + BLOCK_HALF])


def test_belief_pushes_a_block_ahead_of_low_closed_fingers():
    belief = _belief()
    close = np.array([0, 0, 0, 0, 0, 0, 0.0])
    belief.observe(np.array([0.30, -0.06, 0.022, 0, 0, 0, 1]), close)
    belief.observe(np.array([0.30, -0.02, 0.022, 0, 0, 0, 1]), close)  # sweeping +y into block_0
    assert belief.body_pos("block_0")[1] > -0.02 + BLOCK_HALF
    assert not belief.is_grasped("block_0")


def test_belief_open_fingers_do_not_push_a_block():
    # A grasp's descent: open fingers straddle the block at table height and jitter sideways. The believed
    # block must stay put (it once walked away ahead of the fingers, with the policy chasing it).
    belief = _belief()
    open_ = np.array([0, 0, 0, 0, 0, 0, 1.0])
    belief.observe(np.array([0.30, -0.004, 0.022, 0, 0, 0, 0]), open_)
    belief.observe(np.array([0.30, 0.004, 0.022, 0, 0, 0, 0]), open_)
    belief.observe(np.array([0.30, 0.010, 0.022, 0, 0, 0, 0]), open_)
    np.testing.assert_allclose(belief.body_pos("block_0"), [0.30, 0.00, BLOCK_HALF])


def test_noisy_policy_grasps_through_the_belief():
    # Seed 2002 draws a lift task. With the sweep applied to open fingers too, every noisy policy failed
    # every grasp task in both worlds, and the noisy levels were not graded at all.
    episode = sim_policy_episode("noisy_0.5", 2002, 60, (48, 64), (32, 48))
    assert episode["instruction"].startswith("lift"), episode["instruction"]
    assert episode["success"]


def test_expert_succeeds_in_bridgesim_through_the_belief():
    episodes = [sim_policy_episode("expert", 2000 + i, 60, (48, 64), (32, 48)) for i in range(2)]
    assert all(e["success"] for e in episodes)
    assert episodes[0]["start"].shape == (32, 48, 3) and episodes[0]["start"].dtype == np.uint8


def test_ranking_summary_says_how_the_worlds_disagree():
    sim = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    world = np.array([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=bool)
    summary = RankingResult(["expert", "no_grasp"], sim, world).summary()
    assert summary["sim_success_rate"] == [0.5, 0.0] and summary["world_success_rate"] == [0.5, 0.75]
    assert summary["episode_agreement"] == 0.375
    assert summary["world_only_success_rate"] == [0.25, 0.75]  # successes the learned world invents
    assert summary["sim_only_success_rate"] == [0.25, 0.0]  # ones it misses
    assert summary["sim_episodes"] == ["1100", "0000"] and summary["world_episodes"] == ["1010", "0111"]
