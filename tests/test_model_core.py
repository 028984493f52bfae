"""The world model core: presets, causality, KV-cached rollout == uncached computation, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldsim.models.config import PRESETS, WorldModelConfig, get_preset
from worldsim.models.dynamics import frame_mask_to_tokens, training_frame_mask
from worldsim.models.flow import RectifiedFlow, motion_weights, sampling_times
from worldsim.models.rollout import Rollout, _to_model_frames
from worldsim.models.tokenizer import Tokenizer
from worldsim.models.world_model import CheckpointError, WorldModel


def random_model(name: str = "tiny", seed: int = 0) -> WorldModel:
    """A model whose zero-initialised layers (AdaLN-Zero, action MLP, output) are randomised, so
    every path through the network matters (a fresh model would hide bugs behind zeros)."""
    torch.manual_seed(seed)
    model = WorldModel(get_preset(name))
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.05)
    return model.eval()


def sequence_inputs(cfg: WorldModelConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Fr = cfg.num_frames
    z = torch.randn(batch, 2 * Fr - 1, cfg.latent_channels, cfg.latent_height, cfg.latent_width, generator=g)
    t = torch.rand(batch, 2 * Fr - 1, generator=g)
    actions = torch.randn(batch, 2 * Fr - 1, cfg.action_dim, generator=g)
    pos = torch.cat([torch.arange(Fr), torch.arange(1, Fr)])
    mask = frame_mask_to_tokens(training_frame_mask(Fr, cfg.num_context_frames), cfg.tokens_per_frame)
    return z, t, actions, pos, mask


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta_device(name: str) -> None:
    with torch.device("meta"):
        model = WorldModel(get_preset(name))
    n = sum(p.numel() for p in model.parameters())
    assert n > 0
    if name == "2b":
        assert 1.8e9 <= n <= 2.3e9, f"2b preset has {n / 1e9:.2f} B parameters"


def test_small_preset_is_at_least_128x160() -> None:
    cfg = get_preset("small")
    assert cfg.height >= 128 and cfg.width >= 160


def test_bad_config_is_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        get_preset("tiny", dim=65)
    with pytest.raises(ValueError, match="gripper_signal"):
        get_preset("tiny", gripper_signal="closed")


def test_training_mask_is_block_causal_with_window() -> None:
    m = training_frame_mask(6, window=2)  # [clean 0..5, noisy 1..5]
    assert m[0, 0] and not m[0, 1]  # clean_0 sees only itself
    assert m[3, 1] and m[3, 3] and not m[3, 0] and not m[3, 4]  # clean_3 sees clean_1..3
    noisy_3 = 6 + 2
    assert m[noisy_3, 1] and m[noisy_3, 2] and not m[noisy_3, 3]  # clean_1..2 but not its own clean frame
    assert m[noisy_3, noisy_3] and not m[noisy_3, noisy_3 - 1]  # itself, no other noisy frame


@pytest.mark.parametrize("what", ["action", "frame"])
def test_changing_step_k_never_changes_earlier_predictions(what: str) -> None:
    model = random_model()
    cfg = model.cfg
    Fr, k = cfg.num_frames, 5
    z, t, actions, pos, mask = sequence_inputs(cfg)
    with torch.no_grad():
        before, _ = model.dynamics(z, t, actions, pos, mask)
        z2, a2 = z.clone(), actions.clone()
        # frame k appears as clean_k (index k) and noisy_k (index Fr - 1 + k); so does its action
        for index in (k, Fr - 1 + k):
            if what == "action":
                a2[:, index] += 1.0
            else:
                z2[:, index] += 1.0
        after, _ = model.dynamics(z2, t, a2, pos, mask)
    frame_of = torch.cat([torch.arange(Fr), torch.arange(1, Fr)])
    earlier = frame_of < k
    assert torch.equal(before[:, earlier], after[:, earlier])
    assert not torch.allclose(before[:, frame_of == k], after[:, frame_of == k])


@pytest.mark.parametrize("merge_commit", [True, False])
def test_kv_cached_rollout_matches_uncached_full_sequence(merge_commit: bool) -> None:
    """Both commit schemes, past a full ring of slots (the ring wraps)."""
    model = random_model()
    cfg = model.cfg
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, cfg.height, cfg.width, 3), dtype=np.uint8)
    actions = rng.normal(0, 0.02, (cfg.num_context_frames + 4, 2, 7))  # past the window: the ring wraps
    latents = {}
    for use_cache in (True, False):
        rollout = model.rollout(batch_size=2, use_cache=use_cache, seed=3, merge_commit=merge_commit)
        rollout.reset(frames)
        latents[use_cache] = []
        for a in actions:
            rollout.step(a)
            latents[use_cache].append(rollout.latents.clone())
    for step, (cached, full) in enumerate(zip(latents[True], latents[False])):
        err = (cached - full).abs().max().item()
        assert err < 1e-4, f"step {step}: cached and uncached latents differ by {err}"


def test_velocity_from_skips_only_what_nobody_reads() -> None:
    """velocity_from=1 (a merged pass's last block and final layer skip the first frame): the same
    velocity for the later frames and the same keys and values of every frame, under a mask."""
    model = random_model()
    dyn, cfg = model.dynamics, model.cfg
    torch.manual_seed(0)
    B, Fr, n = 2, 2, cfg.tokens_per_frame
    z = torch.randn(B, Fr, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    t, a = torch.rand(B, Fr), torch.randn(B, Fr, cfg.action_dim)
    mask = torch.ones(B, 1, Fr * n, Fr * n, dtype=torch.bool)
    mask[:, :, :n, n:] = False  # the first frame does not see the second
    full, kv_full = dyn(z, t, a, torch.arange(Fr), mask)
    tail, kv_tail = dyn(z, t, a, torch.arange(Fr), mask, velocity_from=1)
    assert tail.shape == (B, Fr - 1, *full.shape[2:])
    torch.testing.assert_close(tail, full[:, 1:], rtol=1e-5, atol=1e-6)
    for (k1, v1), (k2, v2) in zip(kv_full, kv_tail):
        torch.testing.assert_close(k1, k2, rtol=0, atol=0)
        torch.testing.assert_close(v1, v2, rtol=0, atol=0)


class _SeparateCommitRollout(Rollout):
    """The step as it was before the merged pass: commit the pending frame with a pass of its own
    (keys and values only), then S single-frame denoising passes."""

    def advance(self, actions, noise, eps, index, all_valid):  # noqa: ANN001, ANN201
        self._commit_pending()
        latents = self.denoise(actions, noise)
        self._set_pending(latents, actions, 1.0, eps)
        return latents, self._to_uint8(self._decode(latents))


@pytest.mark.parametrize("denoise_steps", [1, 2])
@pytest.mark.parametrize("own_noise", [False, True])
def test_merged_commit_pass_matches_a_separate_commit_pass(denoise_steps: int, own_noise: bool) -> None:
    """A step's first denoising pass also commits the previous frame (one 2-frame pass): the latents
    match a rollout that commits with a pass of its own, past a full ring of slots and through partial
    and full resets, with the shared generator or the worlds' own noise streams."""
    model = random_model()
    cfg = model.cfg
    K = cfg.num_context_frames
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (3, cfg.height, cfg.width, 3), dtype=np.uint8)
    actions = rng.normal(0, 0.02, (2 * K + 4, 3, 7))
    latents = []
    variants = [
        (Rollout, {"merge_commit": True}),
        (Rollout, {"merge_commit": False}),
        (_SeparateCommitRollout, {}),
    ]
    for cls, kwargs in variants:
        r = cls(model, batch_size=3, denoise_steps=denoise_steps, seed=7, **kwargs)
        if own_noise:
            r.seed_worlds([1, 2, 3])
        r.reset(frames)
        out = []
        for step, a in enumerate(actions):
            if step == K // 2:
                r.reset(frames[2:3], which=np.array([False, True, False]))
            if step == K + 1:
                r.reset(frames[:2], which=np.array([0, 2]))
            if step == 2 * K:
                r.reset(frames[::-1].copy())
            r.step(a)
            out.append(r.latents.clone())
        latents.append(torch.stack(out))
    *advanced, reference = latents
    for name, got in zip(("merged", "separate"), advanced):
        for step, (m, s) in enumerate(zip(got, reference)):
            err = (m - s).abs().max().item()
            assert err < 1e-5, (
                f"step {step}: the {name} commit in advance() and the reference differ by {err}"
            )


@pytest.mark.parametrize("denoise_steps", [1, 2])
@pytest.mark.parametrize("merge_commit", [True, False])
def test_a_step_runs_one_transformer_pass_per_euler_step(denoise_steps: int, merge_commit: bool) -> None:
    """Merged, the commit rides along with the first denoising pass: a step is S passes, the first over
    2 frames (the previous frame and the new one); else it is a pass of its own (S + 1 single-frame
    passes). A reset runs none. By default a single world merges, a batch does not."""
    model = random_model()
    cfg = model.cfg
    assert model.rollout(batch_size=1).merge_commit and not model.rollout(batch_size=2).merge_commit
    calls: list[int] = []
    hook = model.dynamics.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[1]))
    passes = [2] + [1] * (denoise_steps - 1) if merge_commit else [1] * (denoise_steps + 1)
    try:
        r = model.rollout(batch_size=2, denoise_steps=denoise_steps, seed=0, merge_commit=merge_commit)
        r.reset(np.zeros((2, cfg.height, cfg.width, 3), dtype=np.uint8))
        assert calls == []
        for step in range(cfg.num_context_frames + 2):
            if step == 3:
                r.reset(np.zeros((1, cfg.height, cfg.width, 3), dtype=np.uint8), which=np.array([1]))
                assert calls == []
            r.step(np.zeros((2, 7)))
            assert calls == passes, f"step {step}: frames per pass {calls}"
            calls.clear()
    finally:
        hook.remove()


def test_same_seed_gives_identical_rollout_and_other_seed_differs() -> None:
    model = random_model()
    cfg = model.cfg
    frames = np.full((1, cfg.height, cfg.width, 3), 100, dtype=np.uint8)
    actions = np.tile([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], (4, 1, 1))

    def run(seed: int) -> np.ndarray:
        rollout = model.rollout(batch_size=1, seed=seed)
        rollout.reset(frames)
        return np.stack([rollout.step(a) for a in actions])

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("own_noise", [True, False])
@pytest.mark.parametrize("merge_commit", [True, False])
def test_cuda_graph_steps_match_eager_steps(own_noise: bool, merge_commit: bool) -> None:
    """The captured step (masked while ring slots are empty, then full; noise from the shared generator
    or the worlds' own streams; the commit merged or a pass of its own) makes the frames the eager step
    makes, through a partial reset."""
    model = random_model().to("cuda")
    cfg = model.cfg
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, cfg.height, cfg.width, 3), dtype=np.uint8)
    actions = rng.normal(0, 0.02, (cfg.num_context_frames + 3, 3, 7))  # past a full ring of slots

    def run(graphed: bool) -> np.ndarray:
        r = model.rollout(batch_size=3, seed=5, merge_commit=merge_commit)
        r.reset(frames)
        if graphed:
            r.enable_cuda_graph()  # before the worlds get their own streams: noise is a graph input
        if own_noise:
            r.seed_worlds([1, 2, 3])
        out = [r.step(a) for a in actions]
        if own_noise:
            r.seed_worlds([9], np.array([1]))
        r.reset(frames[1:2], which=np.array([False, True, False]))
        out += [r.step(a) for a in actions[:3]]
        assert (r.cuda_graph is not None) == graphed
        return np.stack(out).astype(np.int16)

    graphed, eager = run(True), run(False)
    # The same kernels on the same inputs; 1 of 255 allows a rounding flip in the uint8 conversion.
    assert np.abs(graphed - eager).max() <= 1
    assert (graphed != eager).mean() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_partial_resets_match_eager_resets() -> None:
    """With the step graphed and the worlds' own noise, a partial reset is a graph too (padded to a power
    of two with a repeated world): resets of 3 (padded to 4) and then 1 of 5 worlds make the frames the
    eager resets make, and leave the noise streams where the eager path leaves them."""
    model = random_model().to("cuda")
    cfg = model.cfg
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (5, cfg.height, cfg.width, 3), dtype=np.uint8)
    actions = rng.normal(0, 0.02, (cfg.num_context_frames + 2, 5, 7))

    def run(graphed: bool) -> tuple[np.ndarray, torch.Tensor]:
        r = model.rollout(batch_size=5, seed=5)
        r.seed_worlds([11, 12, 13, 14, 15])
        r.reset(frames)
        if graphed:
            r.enable_cuda_graph()
        out = [r.step(a) for a in actions[:3]]
        for which, seeds in ((np.array([0, 2, 3]), [21, 22, 23]), (np.array([4]), [24])):
            r.seed_worlds(seeds, which)
            r.reset(frames[which][::-1].copy(), which=which)
            out += [r.step(a) for a in actions]
        assert (r.cuda_graph is not None and sorted(r.cuda_graph._resets) == [1, 4]) == graphed
        return np.stack(out).astype(np.int16), r.world_noise.counters.cpu()

    (graphed, counters_g), (eager, counters_e) = run(True), run(False)
    assert torch.equal(counters_g, counters_e)
    assert np.abs(graphed - eager).max() <= 1
    assert (graphed != eager).mean() < 1e-3


def test_commit_start_writes_what_an_eager_partial_reset_writes() -> None:
    """`Rollout.commit_start` (the body of the graphed partial reset; run here without a graph, with a
    world repeated as the graph's padding repeats it) leaves the cache, the valid slots, the pending
    frames, the noise streams and the latents as `reset` does (up to float rounding), and the next steps
    make the same frames."""
    model = random_model()
    cfg = model.cfg
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (4, cfg.height, cfg.width, 3), dtype=np.uint8)
    starts = rng.integers(0, 256, (3, cfg.height, cfg.width, 3), dtype=np.uint8)
    actions = rng.normal(0, 0.02, (3, 4, 7))
    rollouts = []
    for _ in range(2):
        r = model.rollout(batch_size=4)
        r.seed_worlds([1, 2, 3, 4])
        r.reset(frames)
        r.step(actions[0])
        r.seed_worlds([7, 8, 9], np.array([0, 1, 3]))
        rollouts.append(r)
    eager, direct = rollouts
    eager.reset(starts, which=np.array([0, 1, 3]))
    padded = _to_model_frames(np.concatenate([starts, starts[-1:]]), direct.device, direct.dtype)
    idx = torch.tensor([0, 1, 3, 3])
    with torch.inference_mode():  # as Rollout.reset runs it
        latents = direct.commit_start(padded, idx)
        direct.latents[idx[:3]] = latents[:3]
    direct.committed[[0, 1, 3]] = 0
    assert direct.frame_index == eager.frame_index
    for a, b in zip(eager.cache_k + eager.cache_v, direct.cache_k + direct.cache_v):
        torch.testing.assert_close(a, b)
    assert torch.equal(eager.slot_valid, direct.slot_valid)
    torch.testing.assert_close(eager.pending_z, direct.pending_z)
    assert torch.equal(eager.pending_action, direct.pending_action)
    assert torch.equal(eager.pending_action_mask, direct.pending_action_mask)
    assert torch.equal(eager.world_noise.counters, direct.world_noise.counters)
    torch.testing.assert_close(eager.latents, direct.latents)
    for a in actions[1:]:  # a batch of 4 rounds its sums unlike one of 3: a grey level here and there
        diff = np.abs(eager.step(a).astype(np.int16) - direct.step(a).astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_partial_reset_leaves_other_worlds_untouched() -> None:
    model = random_model()
    cfg = model.cfg
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, cfg.height, cfg.width, 3), dtype=np.uint8)
    a = rng.normal(0, 0.02, (2, 7))
    r = model.rollout(batch_size=2, seed=0)
    r.reset(frames)
    r.step(a)
    k_before = [k[1].clone() for k in r.cache_k]
    r.reset(frames[:1], which=np.array([True, False]))
    assert all(torch.equal(k[1], kb) for k, kb in zip(r.cache_k, k_before))
    # the start frames are committed by the first step; world 0's new start frame is pending
    assert r.slot_valid[0].sum() == 0 and r.slot_valid[1].sum() == 1


def test_host_count_of_committed_frames_says_which_slots_are_valid() -> None:
    """The CUDA-graph path picks its unmasked graph from `committed` without a device sync: it must
    agree with slot_valid through steps, full and partial resets."""
    model = random_model()
    cfg = model.cfg
    K = cfg.num_context_frames
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, cfg.height, cfg.width, 3), dtype=np.uint8)
    r = model.rollout(batch_size=3, seed=0)
    r.reset(frames)
    for step in range(3 * K):
        if step == K + 1:
            r.reset(frames[1:2], which=np.array([False, True, False]))
        if step == 2 * K:
            r.reset(frames)
        assert np.array_equal(r.committed >= K, r.slot_valid.all(dim=1).numpy()), f"step {step}"
        r.step(rng.normal(0, 0.02, (3, 7)))


def test_flex_attention_block_mask_attends_exactly_like_the_dense_mask() -> None:
    """The GPU training path (flex-attention, empty tiles skipped) computes what the dense mask does
    (forward on the CPU: flex-attention has no CPU backward)."""
    from worldsim.models.dynamics import training_block_mask

    model = random_model()
    cfg = model.cfg
    z, t, actions, pos, mask = sequence_inputs(cfg)
    block_mask = training_block_mask(cfg.num_frames, cfg.num_context_frames, cfg.tokens_per_frame, "cpu")
    with torch.no_grad():
        dense, _ = model.dynamics(z, t, actions, pos, mask)
        flex, _ = model.dynamics(z, t, actions, pos, block_mask)
    assert (dense - flex).abs().max().item() < 1e-4


def test_flex_forward_tile_sets_the_training_kernel_options():
    """trainer.flex_forward_tile's effect: the forward tiles the training flex-attention is called with."""
    from worldsim.models import dynamics

    before = dynamics.FLEX_KERNEL_OPTIONS
    try:
        dynamics.set_flex_forward_tile(0)
        assert dynamics.FLEX_KERNEL_OPTIONS is None  # flex-attention's own defaults
        dynamics.set_flex_forward_tile(32)
        assert dynamics.FLEX_KERNEL_OPTIONS == {"BLOCK_M": 32, "BLOCK_N": 32}
        dynamics.set_flex_forward_tile(-1, head_dim=64)  # by head size: 64 x 64 for heads of 64
        assert dynamics.FLEX_KERNEL_OPTIONS == {"BLOCK_M": 64, "BLOCK_N": 64}
        dynamics.set_flex_forward_tile(-1, head_dim=128)  # flex-attention's own for heads of 128
        assert dynamics.FLEX_KERNEL_OPTIONS is None
        with pytest.raises(ValueError, match="48"):
            dynamics.set_flex_forward_tile(48)
    finally:
        dynamics.FLEX_KERNEL_OPTIONS = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex-attention's backward needs a CUDA device")
def test_flex_training_loss_and_gradients_match_the_dense_mask_on_cuda() -> None:
    """The GPU training path with its tuned forward tiles (`FLEX_KERNEL_OPTIONS`): the `small` flow loss
    and its gradients, flex-attention against SDPA with the dense mask, same noise, fp32."""
    torch.manual_seed(0)
    model = WorldModel(get_preset("small")).cuda()
    cfg = model.cfg
    z = torch.randn(
        2, cfg.num_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device="cuda"
    )
    a = torch.randn(2, cfg.num_frames - 1, cfg.action_dim, device="cuda")
    results = []
    for attention in ("sdpa", "flex"):
        model.zero_grad()
        torch.manual_seed(1)
        loss, _ = RectifiedFlow(cfg, attention).loss(model.dynamics, z, a)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.dynamics.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    (dense_loss, dense_grads), (flex_loss, flex_grads) = results
    assert torch.allclose(dense_loss, flex_loss, rtol=1e-4)
    assert (dense_grads - flex_grads).norm() <= 1e-3 * dense_grads.norm()


def test_training_flops_count_only_the_attention_the_mask_allows() -> None:
    from worldsim.train.metrics import train_flops_per_window

    cfg = get_preset("small")
    narrow, wide = (train_flops_per_window(cfg.replace(num_context_frames=k), "action") for k in (1, 8))
    assert narrow < wide  # same matmuls, fewer allowed query-key pairs


def test_bad_actions_get_clear_errors() -> None:
    model = random_model()
    cfg = model.cfg
    r = model.rollout(batch_size=2)
    with pytest.raises(RuntimeError, match="reset"):
        r.step(np.zeros((2, 7)))
    r.reset(np.zeros((2, cfg.height, cfg.width, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
        r.step(np.zeros((2, 6)))
    bad = np.zeros((2, 7))
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        r.step(bad)
    with pytest.raises(ValueError, match="reset frames"):
        r.reset(np.zeros((2, cfg.height + 8, cfg.width, 3), dtype=np.uint8))


def test_sampling_times_run_from_noise_to_data() -> None:
    for shift in (1.0, 3.0):
        t = sampling_times(4, shift)
        assert t[0] == 1.0 and t[-1] == 0.0 and bool((t[1:] < t[:-1]).all())


def test_safetensors_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = random_model()
    cfg = model.cfg
    start = {"images": np.zeros((3, cfg.height, cfg.width, 3), np.uint8), "ee_states": np.zeros((3, 7))}
    model.save_pretrained(tmp_path / "bundle", start_frames=start)
    loaded = WorldModel.from_pretrained(tmp_path / "bundle")
    assert loaded.cfg == cfg
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert WorldModel.start_frames(tmp_path / "bundle")["images"].shape == (3, cfg.height, cfg.width, 3)
    with pytest.raises(CheckpointError, match="not found"):
        WorldModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        WorldModel.from_pretrained(tmp_path / "junk.safetensors")


def test_zero_initialised_action_layers_start_silent_then_learn() -> None:
    """A fresh model ignores actions exactly (so video2world post-trains smoothly); training opens them."""
    torch.manual_seed(0)
    model = WorldModel(get_preset("tiny"))
    cfg = model.cfg
    flow = RectifiedFlow(cfg)
    z = torch.randn(2, cfg.num_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    a = torch.randn(2, cfg.num_frames - 1, cfg.action_dim)
    t = torch.rand(2, cfg.num_frames)
    with torch.no_grad():
        assert torch.equal(
            model.dynamics.conditioning(t, a[:, :1].expand(-1, cfg.num_frames, -1), None),
            model.dynamics.conditioning(t, None, None),
        )
    opt = torch.optim.AdamW(model.dynamics.parameters(), lr=1e-3)
    for _ in range(5):
        loss, logs = flow.loss(model.dynamics, z, a)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(logs["flow_mse"])
    assert model.dynamics.action_embed.fc2.weight.abs().sum() > 0
    with torch.no_grad():
        conditioned = model.dynamics.conditioning(t, a[:, :1].expand(-1, cfg.num_frames, -1), None)
        assert not torch.allclose(conditioned, model.dynamics.conditioning(t, None, None))


def test_training_flow_times_follow_the_sampler_shift():
    """small samples 2 Euler steps at t = 1 and shift_time(0.5, 6) = 0.857; training draws its flow times
    with the same shift, so half of them lie above 0.857 (3.7% without the shift)."""
    small = get_preset("small")
    torch.manual_seed(0)
    t_mid = float(sampling_times(small.denoise_steps, small.time_shift)[1])
    shifted = RectifiedFlow(small).sample_t((200_000,), torch.device("cpu"))
    plain = RectifiedFlow(get_preset("small", train_time_shift=1.0)).sample_t((200_000,), torch.device("cpu"))
    assert 0 < float(shifted.min()) and float(shifted.max()) < 1
    assert float((shifted > t_mid).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((plain > t_mid).float().mean()) == pytest.approx(0.037, abs=0.005)


def test_focused_reconstruction_loss_weights_each_pixel_by_its_share_of_the_error() -> None:
    """recon_focus 1: a pixel with k times the frame's mean error counts k times (capped at 50, no gradient
    through the weight); uniform errors and recon_focus 0 give plain L1 + MSE."""
    plain_tok = Tokenizer(get_preset("tiny", recon_focus=0.0))
    focus_tok = Tokenizer(get_preset("tiny", recon_focus=1.0))
    uniform = torch.full((2, 3, 8, 8), 0.1)
    plain = (uniform.abs() + uniform.pow(2)).mean()
    assert torch.allclose(focus_tok._focused(uniform), plain)
    assert torch.allclose(plain_tok._focused(uniform), plain)
    # One block of 2x2 pixels off by 0.5 in one channel, the rest off by 0.01: its weight is its error over
    # the frame's mean per-pixel error (mean over channels).
    err = torch.full((1, 3, 8, 8), 0.01)
    err[0, 1, :2, :2] = 0.5
    size = err.abs().mean(1, keepdim=True)
    weight = size / size.mean()
    assert weight.max() > 8 and weight.min() < 0.5
    expected = (weight * (err.abs() + err.pow(2))).mean()
    assert torch.allclose(focus_tok._focused(err), expected)
    assert focus_tok._focused(err) > 5 * plain_tok._focused(err)
    e = err.clone().requires_grad_(True)
    focus_tok._focused(e).backward()
    torch.testing.assert_close(e.grad, weight.expand_as(err) * (1 + 2 * err) / err.numel())
    lone = torch.zeros(1, 3, 32, 32)
    lone[0, 0, 0, 0] = 1.0  # its error is 1024 times the mean: the weight stops at 50
    assert torch.allclose(focus_tok._focused(lone), torch.tensor(50 * 2.0 / lone.numel()))


def test_motion_weights_favour_what_moves_and_keep_the_loss_scale():
    """One latent position changes between frames 1 and 2: it (and only it) weighs more, the weights
    average 1 per window, and a still window is weighted uniformly."""
    z = torch.zeros(2, 4, 3, 5, 6)
    z[0, 2:, :, 1, 2] = 2.0  # window 0: something moves into (1, 2) at frame 2 and stays
    w = motion_weights(z, strength=3.0)
    assert w.shape == (2, 3, 1, 5, 6)
    assert torch.allclose(w.mean(dim=(1, 2, 3, 4)), torch.ones(2))
    moved = w[0, 1, 0, 1, 2]
    assert moved > 10 * w[0, 0, 0, 1, 2]  # the frame it appears in, against the frame before
    rest = torch.ones_like(w[0], dtype=torch.bool)
    rest[1, 0, 1, 2] = False
    assert torch.allclose(w[0][rest], w[0][rest][0].expand(int(rest.sum())))  # the rest share one weight
    assert torch.allclose(w[1], torch.ones_like(w[1]))  # still window: uniform


def test_motion_weighted_loss_reweights_the_same_errors():
    """With the same noise, motion_weight changes the optimised loss but not the logged plain MSE; a
    negative weight is refused."""
    model = WorldModel(get_preset("tiny"))
    cfg = model.cfg
    z = torch.randn(2, cfg.num_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    a = torch.randn(2, cfg.num_frames - 1, cfg.action_dim)
    out = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        with torch.no_grad():
            out[weight] = RectifiedFlow(cfg, motion_weight=weight).loss(model.dynamics, z, a)
    (plain, plain_logs), (weighted, weighted_logs) = out[0.0], out[2.0]
    assert torch.equal(plain, plain_logs["flow_mse"])
    assert torch.equal(plain_logs["flow_mse"], weighted_logs["flow_mse"])
    assert not torch.allclose(plain, weighted)
    with pytest.raises(ValueError, match="motion_weight"):
        RectifiedFlow(cfg, motion_weight=-1.0)


def test_distill_loss_is_zero_for_a_one_step_teacher_and_trains_only_the_student():
    """Distilling a 1-step sampler into itself is exact (the loss is 0); with a 2-step teacher the loss
    is positive, and its gradient reaches the student but never the frozen teacher."""
    teacher = random_model(seed=1).dynamics
    cfg = teacher.cfg
    z = torch.randn(2, cfg.num_frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    a = torch.randn(2, cfg.num_frames - 1, cfg.action_dim)
    flow = RectifiedFlow(cfg)
    with torch.no_grad():
        same, logs = flow.distill_loss(teacher, teacher, z, a, teacher_steps=1, teacher_shift=cfg.time_shift)
    assert float(same) < 1e-10 and set(logs) == {"distill_mse", "teacher_latent_mse"}
    student = random_model(seed=1).dynamics.train()
    teacher.requires_grad_(False)
    loss, _ = flow.distill_loss(student, teacher, z, a, teacher_steps=2, teacher_shift=6.0)
    assert float(loss) > 1e-6
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0


def test_a_distilled_bundle_warns_when_sampled_with_other_steps(tmp_path) -> None:
    """A bundle whose dynamics stage=distill made knows it (metadata "stage" / "dynamics_stage"); sampling it with another number of
    Euler steps than its config's warns (its intermediate flow times are untrained), its own does not."""
    import warnings

    cfg = get_preset("tiny", denoise_steps=1)
    WorldModel(cfg).save_pretrained(tmp_path / "student", extra_metadata={"stage": "distill"})
    WorldModel(cfg).save_pretrained(tmp_path / "plain", extra_metadata={"stage": "action"})
    # a lighter decoder trained under the student (stage=decoder) keeps the student's dynamics
    meta = {"stage": "decoder", "dynamics_stage": "distill"}
    WorldModel(cfg).save_pretrained(tmp_path / "decoder", extra_metadata=meta)
    student = WorldModel.from_pretrained(tmp_path / "student")
    assert student.dynamics_stage == "distill" and WorldModel(cfg).dynamics_stage is None
    for m in (student, WorldModel.from_pretrained(tmp_path / "decoder")):
        with pytest.warns(UserWarning, match="distilled to sample in 1 Euler step"):
            m.rollout(denoise_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student.rollout()
        WorldModel.from_pretrained(tmp_path / "plain").rollout(denoise_steps=2)
