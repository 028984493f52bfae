"""Per-world noise streams (worldsim/models/noise.py): SplitMix64 bit for bit, a world's noise independent
of its batch, and standard normal, uncorrelated across seeds, draws and elements."""

from __future__ import annotations

import math

import pytest
import torch

from worldsim.models.noise import GAMMA, WorldNoise, splitmix64

SHAPE = (8, 16, 20)  # the bundled model's latent (C, h, w)


def test_splitmix64_reproduces_the_reference_sequence():
    # splitmix64.c (Vigna) seeded with 1234567: output i is mix(seed + i * GAMMA)
    expected = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431]
    state = 1234567 + torch.arange(1, 5) * GAMMA  # int64 arithmetic wraps as uint64 does
    got = [int(x) % 2**64 for x in splitmix64(state)]
    assert got == expected


def test_a_world_draws_the_same_noise_in_any_batch_and_with_any_thread_count():
    seeds = [3, 2**63 + 5, 0, 12345678901234, -1]
    batch = WorldNoise(5, "cpu")
    batch.seed(seeds)
    first = batch.draw(SHAPE)  # (5, C, h, w)
    batch.draw(SHAPE, torch.tensor([3, 1]))  # only worlds 3 and 1 advance
    second = batch.draw(SHAPE)
    for i, seed in enumerate(seeds):
        alone = WorldNoise(1, "cpu")
        alone.seed([seed])
        assert torch.equal(alone.draw(SHAPE)[0], first[i])
        if i in (3, 1):
            alone.draw(SHAPE)
        assert torch.equal(alone.draw(SHAPE)[0], second[i]), f"world {i}"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        batch.seed(seeds)
        one_thread = batch.draw((64, 64, 64))
        torch.set_num_threads(2)
        batch.seed(seeds)
        assert torch.equal(batch.draw((64, 64, 64)), one_thread)
    finally:
        torch.set_num_threads(threads)


def test_seeding_restarts_only_the_seeded_worlds_and_other_seeds_differ():
    noise = WorldNoise(3, "cpu")
    noise.seed([7, 7, 8])
    a = noise.draw(SHAPE)
    assert torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])
    b = noise.draw(SHAPE)
    assert not torch.equal(a[0], b[0])  # the counter moved on
    noise.seed([7], torch.tensor([1]))  # world 1 restarts; world 0 goes on to its third draw
    c = noise.draw(SHAPE)
    assert torch.equal(c[1], a[0]) and not torch.equal(c[0], a[0]) and not torch.equal(c[0], b[0])
    assert noise.draw(SHAPE, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_draws_are_standard_normal():
    noise = WorldNoise(4, "cpu")
    noise.seed([0, 1, 2, 3])
    x = noise.draw((250_001,)).double().flatten()  # odd: the last Box-Muller pair is cut
    n = len(x)
    se = 1 / math.sqrt(n)
    assert abs(float(x.mean())) < 5 * se
    assert abs(float(x.std()) - 1) < 5 * se
    z = (x - x.mean()) / x.std()
    assert abs(float((z**3).mean())) < 5 * math.sqrt(6 / n)  # skewness
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(24 / n)  # kurtosis
    # Kolmogorov-Smirnov against the normal CDF; 1.95 / sqrt(n) is the 0.1% critical value
    cdf = torch.special.ndtr(x.sort().values)
    steps = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.maximum(steps - cdf, cdf - (steps - 1 / n)).max()
    assert float(ks) < 1.95 * se
    assert float(x.abs().max()) < math.sqrt(2 * 24 * math.log(2)) + 1e-3  # 24-bit uniforms


def test_streams_are_uncorrelated_across_seeds_draws_and_neighbouring_elements():
    n = 1_000_000
    noise = WorldNoise(3, "cpu")
    noise.seed([0, 1, GAMMA])  # neighbouring seeds, and one a SplitMix64 step away from 0
    a, b = noise.draw((n,)).double(), noise.draw((n,)).double()  # two draws of each world
    bound = 5 / math.sqrt(n)

    def corr(u: torch.Tensor, v: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([u, v]))[0, 1])

    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert abs(corr(a[i], a[j])) < bound, (i, j)
    for i in range(3):
        assert abs(corr(a[i], b[i])) < bound  # consecutive draws of one world
        assert abs(corr(a[i, :-1], a[i, 1:])) < bound  # neighbours, Box-Muller pairs included
        assert abs(corr(a[i, :-1] ** 2, a[i, 1:] ** 2)) < 3 * bound  # independent, not just uncorrelated


def test_bad_seeds_get_clear_errors():
    noise = WorldNoise(2, "cpu")
    with pytest.raises(ValueError, match="2 seeds for 1 worlds"):
        noise.seed([1, 2], torch.tensor([0]))
    for bad in (2**64, -(2**63) - 1, 1.5, "3", True):
        with pytest.raises(ValueError, match="integers in"):
            noise.seed([bad, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_draws_replay_a_graph_of_the_same_stream():
    graphed, eager = WorldNoise(3, "cuda"), WorldNoise(3, "cuda")
    for noise in (graphed, eager):
        noise.seed([1, 2, 3])
    with torch.inference_mode():
        for shape in ((2, 5), (2, 5), (10,), (2, 5)):
            assert torch.equal(graphed.draw(shape), eager._draw(shape, None, torch.float32))
    assert torch.equal(graphed.counters, eager.counters)
    graphed.seed([7], torch.tensor([1]))
    eager.seed([7], torch.tensor([1]))
    with torch.inference_mode():
        assert torch.equal(graphed.draw((2, 5)), eager._draw((2, 5), None, torch.float32))
