"""worldsim-train end to end on BridgeSim data: 2 processes over gloo, kill -9 + resume, stage hand-off."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import torch
from train_helpers import (
    REPO,
    alive,
    descendants,
    generate_bridge,
    job_dir,
    kill_tree,
    load_dcp,
    metrics,
    python_cmd,
    run,
    torchrun_cmd,
    train_env,
)

# 30 steps, a checkpoint every 10, validation at 15 and 30 (it must not disturb training's RNG).
RUN_ARGS = ("trainer.max_iter=30", "checkpoint.save_iter=10", "trainer.log_every=1", "trainer.val_every=15")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridgesim")
    generate_bridge(root, "train", episodes=4, seed=0)
    generate_bridge(root, "val", episodes=1, seed=100)
    return root


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("output")


@pytest.fixture(scope="module")
def reference(data, out):
    """An uninterrupted 2-process run of bridge_tiny."""
    run(
        torchrun_cmd(2, "experiment=bridge_tiny", f"dataset.root={data}", "job.name=ref", *RUN_ARGS),
        train_env(out),
    )
    return job_dir(out, "ref")


def test_two_process_training_loss_falls_and_writes_checkpoints(reference):
    train_logs = [m for m in metrics(reference) if "loss" in m]
    assert [m["iter"] for m in train_logs] == list(range(1, 31))
    first = sum(m["loss"] for m in train_logs[:5]) / 5
    last = sum(m["loss"] for m in train_logs[-5:]) / 5
    assert last < first - 0.05, f"loss did not fall: first {first:.4f}, last {last:.4f}"
    for key in ("lr", "grad_norm", "it_per_s", "frames_per_s", "mfu"):
        assert key in train_logs[-1]
    assert train_logs[-1]["mfu"] == "n/a"  # no peak FLOP/s for a CPU
    val = [m for m in metrics(reference) if "val_loss" in m]
    assert [m["iter"] for m in val] == [15, 30]
    assert all(5.0 < m["val_rollout_psnr"] < 99.0 for m in val)
    assert (reference / "val" / "iter_000000030.mp4").stat().st_size > 0
    ckpts = reference / "checkpoints"
    assert (ckpts / "latest_checkpoint.txt").read_text().strip() == "iter_000000030"
    assert sorted(p.name for p in ckpts.glob("iter_*")) == [
        "iter_000000010",
        "iter_000000020",
        "iter_000000030",
    ]
    last_ckpt = ckpts / "iter_000000030"
    for part in ("model/.metadata", "optim/.metadata", "scheduler/scheduler.pt", "trainer/rank_00001.pt"):
        assert (last_ckpt / part).is_file(), part


def test_resume_after_kill_mid_save_matches_uninterrupted_run(data, out, reference, tmp_path):
    cmd = torchrun_cmd(2, "experiment=bridge_tiny", f"dataset.root={data}", "job.name=crash", *RUN_ARGS)
    ckpts = job_dir(out, "crash") / "checkpoints"
    # The save of step 20 stalls after its weights are on disk and before it is marked complete.
    proc = subprocess.Popen(
        cmd, env=train_env(out, WORLDSIM_TEST_SAVE_DELAY="20:120"), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (ckpts / "iter_000000020" / "model" / ".metadata").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before the save of step 20"
            time.sleep(0.2)
        workers = descendants(proc.pid)
        assert len(workers) >= 2
    finally:
        kill_tree(proc.pid)  # the launcher and both ranks, mid-save
        proc.wait()
    time.sleep(0.5)
    assert not any(alive(p) for p in workers), "a rank survived the kill"
    assert (ckpts / "latest_checkpoint.txt").read_text().strip() == "iter_000000010"

    resumed = run(cmd, train_env(out))
    assert "resumed from" in resumed.stdout and "iteration 10" in resumed.stdout
    assert (ckpts / "latest_checkpoint.txt").read_text().strip() == "iter_000000030"
    ref = load_dcp(reference / "checkpoints" / "iter_000000030" / "model", tmp_path)
    got = load_dcp(ckpts / "iter_000000030" / "model", tmp_path)
    assert ref.keys() == got.keys() and any(k.startswith("ema.") for k in ref)
    unequal = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not unequal, f"resumed run differs from the uninterrupted one in {unequal[:5]}"
    ref_opt = load_dcp(reference / "checkpoints" / "iter_000000030" / "optim", tmp_path)
    got_opt = load_dcp(ckpts / "iter_000000030" / "optim", tmp_path)
    assert all(torch.equal(ref_opt[k], got_opt[k]) for k in ref_opt)


def test_stop_after_minutes_then_rerun_matches_uninterrupted_run(data, out, reference, tmp_path):
    """trainer.stop_after_minutes stops both ranks at the same logging step with a checkpoint and the lr
    schedule untouched; the same command again (no limit) ends with the uninterrupted run's weights."""
    args = ("experiment=bridge_tiny", f"dataset.root={data}", "job.name=chunked", *RUN_ARGS)
    first = run(torchrun_cmd(2, *args, "trainer.stop_after_minutes=1e-6"), train_env(out))
    assert "stopped at iteration 1 of 30" in first.stdout, first.stdout[-2000:]
    ckpts = job_dir(out, "chunked") / "checkpoints"
    assert (ckpts / "latest_checkpoint.txt").read_text().strip() == "iter_000000001"
    assert not any("val_loss" in m for m in metrics(job_dir(out, "chunked")))  # no validation at a stop
    second = run(torchrun_cmd(2, *args), train_env(out))
    assert "resumed from" in second.stdout and "iteration 1)" in second.stdout
    for part in ("model", "optim"):
        ref = load_dcp(reference / "checkpoints" / "iter_000000030" / part, tmp_path)
        got = load_dcp(ckpts / "iter_000000030" / part, tmp_path)
        assert ref.keys() == got.keys()
        unequal = [k for k in ref if not torch.equal(ref[k], got[k])]
        assert not unequal, f"chunked run's {part} differs from the uninterrupted one in {unequal[:5]}"


def test_action_stage_starts_from_tokenizer_checkpoint(data, out, tmp_path):
    env = train_env(out)
    run(python_cmd("experiment=bridge_tiny_tokenizer", f"dataset.root={data}", "job.name=tok",
                   "trainer.max_iter=6", "trainer.val_every=6"), env)  # fmt: skip
    tok_ckpts = job_dir(out, "tok") / "checkpoints"
    tok_metrics = metrics(job_dir(out, "tok"))
    assert any("val_recon_psnr" in m for m in tok_metrics)
    # (this run also profiles iterations 2..3 and trains with the motion-weighted loss)
    action = run(python_cmd("experiment=bridge_tiny", f"dataset.root={data}", "job.name=act",
                            "trainer.max_iter=3", "trainer.val_every=0", f"load_path={tok_ckpts}",
                            "trainer.log_every=1", "trainer.profile_start=2", "trainer.profile_iters=2",
                            "trainer.motion_weight=2"), env)  # fmt: skip
    assert "initial weights from" in action.stdout
    ops = (job_dir(out, "act") / "profile" / "rank0_ops.txt").read_text()
    assert "iterations 2..3" in ops and "aten::" in ops
    trace = (job_dir(out, "act") / "profile" / "rank0_trace.json").read_text()
    assert "train: forward + backward" in trace and "train: optimizer" in trace  # the phases' labels
    act_metrics = [m for m in metrics(job_dir(out, "act")) if "flow_mse" in m]
    assert len(act_metrics) == 3  # the optimised (weighted) loss and the plain MSE differ
    assert all(m["loss"] != m["flow_mse"] for m in act_metrics)
    assert (
        "dropped 4 tensors: fresh action layers" in action.stdout
    )  # a tokenizer checkpoint's action layers start fresh
    tok = load_dcp(tok_ckpts / "iter_000000006" / "model", tmp_path)
    act = load_dcp(job_dir(out, "act") / "checkpoints" / "iter_000000003" / "model", tmp_path)
    tokenizer_keys = [k for k in act if k.startswith("model.tokenizer.") and "latent_" not in k]
    assert tokenizer_keys
    for k in tokenizer_keys:  # frozen in the action stage: still the tokenizer run's EMA weights
        assert torch.equal(act[k], tok["ema." + k.removeprefix("model.")]), k
    assert not torch.equal(
        act["model.tokenizer.latent_scale"], torch.ones_like(act["model.tokenizer.latent_scale"])
    )
    # a tokenizer checkpoint cannot be a distillation's teacher: it has no trained action layers
    from worldsim.models.config import get_preset
    from worldsim.train.initial_weights import LoadPathError, inspect_load_path

    with pytest.raises(LoadPathError, match="stage=distill needs a trained action model"):
        inspect_load_path(str(tok_ckpts), get_preset("tiny"), "distill", True)


def test_tokenizer_path_puts_a_new_tokenizer_under_a_trained_dynamics(reference, out, data, tmp_path):
    """A model's tokenizer trained on (its latent statistics reset) and one of another encoder width,
    each put under the reference run's dynamics with tokenizer_path: the tokenizer comes from one source,
    the dynamics (action layers included) from the other, and the new latents get new statistics."""
    from safetensors.torch import save_file

    env = train_env(out)
    model_ckpts = reference / "checkpoints"
    before = load_dcp(model_ckpts / "iter_000000030" / "model", tmp_path)
    tokenizer_only = tmp_path / "tokenizer.safetensors"  # a file of the tokenizer's tensors alone will do
    weights = {k.removeprefix("ema."): v for k, v in before.items() if k.startswith("ema.tokenizer.")}
    weights |= {
        k.removeprefix("model."): v for k, v in before.items() if k.startswith("model.tokenizer.latent_")
    }
    save_file(weights, tokenizer_only)
    tok = run(python_cmd("experiment=bridge_tiny_tokenizer", f"dataset.root={data}", "job.name=retok",
                         f"tokenizer_path={tokenizer_only}", "trainer.max_iter=4", "trainer.val_every=0"), env)  # fmt: skip
    assert "tokenizer weights from" in tok.stdout and "latent statistics reset" in tok.stdout
    run(python_cmd("experiment=bridge_tiny_tokenizer", f"dataset.root={data}", "job.name=widetok",
                   "model.overrides.tokenizer_channels=[12,16,16]", "trainer.max_iter=4", "trainer.val_every=0"),
        env)  # fmt: skip
    act = run(python_cmd("experiment=bridge_tiny", f"dataset.root={data}", "job.name=newtok",
                         "model.overrides.tokenizer_channels=[12,16,16]", f"load_path={model_ckpts}",
                         f"tokenizer_path={job_dir(out, 'widetok') / 'checkpoints'}", "trainer.max_iter=2",
                         "trainer.lr=1e-12", "trainer.val_every=0"), env)  # fmt: skip
    assert "tokenizer weights from" in act.stdout and "latent stats set" in act.stdout
    wide = load_dcp(job_dir(out, "widetok") / "checkpoints" / "iter_000000004" / "model", tmp_path)
    after = load_dcp(job_dir(out, "newtok") / "checkpoints" / "iter_000000002" / "model", tmp_path)
    retok = load_dcp(job_dir(out, "retok") / "checkpoints" / "iter_000000004" / "model", tmp_path)
    assert torch.equal(
        retok["model.tokenizer.latent_scale"], torch.ones_like(retok["model.tokenizer.latent_scale"])
    )
    weights = [k.removeprefix("model.") for k in after if k.startswith("model.")]
    assert any(k.startswith("dynamics.action_embed.") for k in weights)
    for k in weights:
        if k.startswith("tokenizer.latent_"):
            continue
        # lr 1e-12: the weights are still the initial ones
        source = wide if k.startswith("tokenizer.") else before
        torch.testing.assert_close(after["model." + k], source["ema." + k], rtol=0, atol=1e-6, msg=k)
    assert (
        wide["model.tokenizer.encoder.stem.weight"].shape
        != before["model.tokenizer.encoder.stem.weight"].shape
    )


def test_decoder_stage_trains_the_decoder_alone(reference, out, data, tmp_path):
    """stage=decoder from a trained model: its reconstruction loss falls, and nothing but the decoder
    moves (the encoder's latents, which the dynamics was trained on, stay exactly as they were)."""
    run(python_cmd("experiment=bridge_tiny_tokenizer", "stage=decoder", f"dataset.root={data}", "job.name=dec",
                   f"load_path={reference / 'checkpoints'}", "trainer.max_iter=24", "trainer.log_every=4",
                   "trainer.val_every=24", "trainer.val_rollout_steps=2"), train_env(out))  # fmt: skip
    logs = metrics(job_dir(out, "dec"))
    losses = [m["loss"] for m in logs if "loss" in m and "val_loss" not in m]
    assert losses[-1] < 0.7 * losses[0], losses
    val = [m for m in logs if "val_recon_psnr" in m]
    assert val and "val_rollout_psnr" in val[-1]  # the rollout decodes through the new decoder
    before = load_dcp(reference / "checkpoints" / "iter_000000030" / "model", tmp_path)
    after = load_dcp(job_dir(out, "dec") / "checkpoints" / "iter_000000024" / "model", tmp_path)
    weights = [k.removeprefix("model.") for k in after if k.startswith("model.")]
    decoder = [k for k in weights if k.startswith("tokenizer.decoder.")]
    assert decoder and len(decoder) < len(weights)
    for k in weights:
        if k in decoder:
            continue
        assert torch.equal(
            after["model." + k], before["ema." + k if "ema." + k in before else "model." + k]
        ), k
    assert any(not torch.equal(after["model." + k], before["ema." + k]) for k in decoder)


def test_decoder_stage_trains_a_lighter_decoder_from_scratch_under_a_trained_model(
    reference, out, data, tmp_path
):
    """stage=decoder with another decoder shape (model.overrides.decoder_channels): the decoder starts fresh
    and learns, everything else is the trained model's, unchanged; a shape mismatch elsewhere still fails."""
    from worldsim.models.config import get_preset
    from worldsim.train.config import load_config
    from worldsim.train.initial_weights import LoadPathError, inspect_load_path

    result = run(python_cmd("experiment=bridge_tiny_tokenizer", "stage=decoder", f"dataset.root={data}",
                            "job.name=dec_light", f"load_path={reference / 'checkpoints'}",
                            "model.overrides.decoder_channels=[8,8,4,4]", "trainer.max_iter=60",
                            "trainer.log_every=6", "trainer.val_every=60", "trainer.val_rollout_steps=2"),
                 train_env(out))  # fmt: skip
    assert "tensors: fresh decoder" in result.stdout
    logs = metrics(job_dir(out, "dec_light"))
    losses = [m["loss"] for m in logs if "loss" in m and "val_loss" not in m]
    assert losses[-1] < 0.75 * losses[0], losses  # from scratch: 0.86 -> 0.60 in 60 steps
    before = load_dcp(reference / "checkpoints" / "iter_000000030" / "model", tmp_path)
    after = load_dcp(job_dir(out, "dec_light") / "checkpoints" / "iter_000000060" / "model", tmp_path)
    weights = [k.removeprefix("model.") for k in after if k.startswith("model.")]
    decoder = [k for k in weights if k.startswith("tokenizer.decoder.")]
    assert after["model.tokenizer.decoder.stem.weight"].shape[0] == 8  # the lighter decoder's width
    assert before["model.tokenizer.decoder.stem.weight"].shape[0] == 16
    for k in weights:
        if k not in decoder:
            assert torch.equal(
                after["model." + k], before["ema." + k if "ema." + k in before else "model." + k]
            ), k
    meta = json.loads(
        (job_dir(out, "dec_light") / "checkpoints" / "iter_000000060" / "meta.json").read_text()
    )
    assert (meta["stage"], meta["dynamics_stage"]) == ("decoder", "action")  # the dynamics are the source's
    cfg = get_preset("tiny", decoder_channels=(8, 8, 4, 4), dim=32)  # a dynamics mismatch is not forgiven
    with pytest.raises(LoadPathError, match="shape mismatches"):
        inspect_load_path(str(reference / "checkpoints"), cfg, "decoder", True)
    assert load_config(["experiment=bridge_tiny_tokenizer", "stage=decoder", "dataset.root=/d", "load_path=/c",
                        "model.overrides.decoder_channels=[8,8,4,4]"]).model.build().decoder_channels == (8, 8, 4, 4)  # fmt: skip


def test_decoder_stage_keeps_how_the_loaded_dynamics_sample(tmp_path):
    """A decoder stage under a distilled model keeps its one Euler step (the source config's sampler fields)
    and records that its dynamics were distilled, so the new bundle still warns at other step counts; an
    explicit model.overrides value wins, and stages that train the dynamics keep their own settings."""
    from worldsim.models.config import get_preset
    from worldsim.models.world_model import WorldModel
    from worldsim.train.config import load_config
    from worldsim.train.initial_weights import inspect_load_path
    from worldsim.train.trainer import keep_loaded_sampler

    WorldModel(get_preset("tiny", denoise_steps=1, context_noise=0.05)).save_pretrained(
        tmp_path / "student", extra_metadata={"stage": "distill"}
    )
    base = ["experiment=bridge_tiny_tokenizer", "dataset.root=/d", f"load_path={tmp_path / 'student'}"]
    for extra, stage, want in [
        (["stage=decoder"], "distill", (1, 0.05)),
        (["stage=decoder", "model.overrides.denoise_steps=3"], "distill", (3, 0.05)),
        (["stage=action"], "action", (2, 0.02)),  # tiny's own sampler
    ]:
        cfg = load_config(base + extra)
        model_cfg = cfg.model.build()
        source = inspect_load_path(cfg.load_path, model_cfg, cfg.stage, cfg.load_ema)
        kept, dynamics_stage = keep_loaded_sampler(cfg, model_cfg, [source])
        assert ((kept.denoise_steps, kept.context_noise), dynamics_stage) == (want, stage), extra


def test_distill_stage_teaches_the_student_one_step_sampling(reference, out, data, tmp_path):
    """stage=distill from a trained model: the distillation loss falls, the checkpoint is a 1-step model,
    and its 1-step rollout lands nearer the teacher's 2-step rollout than the teacher's own single step
    does (same start, actions and noise)."""
    import numpy as np

    from worldsim.data.dataset import BridgeWindowDataset
    from worldsim.models.world_model import WorldModel
    from worldsim.train.convert import main as convert

    run(python_cmd("experiment=bridge_tiny", "stage=distill", f"dataset.root={data}", "job.name=distill",
                   f"load_path={reference / 'checkpoints'}", "model.overrides.denoise_steps=1",
                   "trainer.max_iter=40", "trainer.log_every=5", "trainer.val_every=40",
                   "trainer.val_rollout_steps=2"), train_env(out))  # fmt: skip
    logs = metrics(job_dir(out, "distill"))
    train = [m for m in logs if "distill_mse" in m]
    assert train[-1]["distill_mse"] < 0.5 * train[0]["distill_mse"], [m["distill_mse"] for m in train]
    assert any("val_distill_mse" in m and "val_rollout_psnr" in m for m in logs)
    models = {}
    for name, job in (("teacher", reference), ("student", job_dir(out, "distill"))):
        ckpt = job / "checkpoints" / ("iter_000000030" if name == "teacher" else "iter_000000040") / "model"
        assert convert([str(ckpt), str(tmp_path / name)]) == 0
        models[name] = WorldModel.from_pretrained(tmp_path / name / "bundle")
    assert models["student"].cfg.denoise_steps == 1 and models["teacher"].cfg.denoise_steps == 2
    frames = BridgeWindowDataset(data, "val", resolution=(32, 48)).episode_frames(0)[:1]
    actions = np.random.default_rng(0).uniform(-0.02, 0.02, (8, 7)) * [1, 1, 1, 5, 5, 5, 0]
    actions[:, 6] = 1.0  # gripper open

    def roll(model, steps):
        r = model.rollout(batch_size=1, denoise_steps=steps, seed=3)
        r.reset(frames)
        return np.stack([r.step(a[None])[0] for a in actions]).astype(np.float64)

    target = roll(models["teacher"], 2)
    own_step = np.mean((roll(models["teacher"], 1) - target) ** 2)
    student = np.mean((roll(models["student"], 1) - target) ** 2)
    assert student < own_step, (student, own_step)


def test_convert_writes_weight_files_and_a_bundle_equal_to_the_ema(reference, data, tmp_path):
    import numpy as np

    from worldsim.models.world_model import WorldModel
    from worldsim.train.convert import ConvertError, main

    ckpt = reference / "checkpoints" / "iter_000000030" / "model"
    out = tmp_path / "converted"
    assert (
        main([str(ckpt), str(out), "--start-frames", str(data), "--split", "val", "--num-start-frames", "4"])
        == 0
    )
    ema = {k.removeprefix("ema."): v for k, v in load_dcp(ckpt, tmp_path).items() if k.startswith("ema.")}
    assert ema
    files = {name: torch.load(out / name, weights_only=True) for name in
             ("model.pt", "model_ema_fp32.pt", "model_ema_bf16.pt")}  # fmt: skip
    for name, value in ema.items():
        assert torch.equal(files["model_ema_fp32.pt"]["model"][name], value), name
        assert torch.equal(files["model_ema_bf16.pt"]["model"][name], value.bfloat16()), name
        assert torch.equal(files["model.pt"]["ema"][name], value), name
    bundle = WorldModel.from_pretrained(out / "bundle")
    for name, value in bundle.state_dict().items():
        assert torch.equal(value, files["model_ema_fp32.pt"]["model"][name]), name
    starts = WorldModel.start_frames(out / "bundle")
    assert starts["images"].shape == (1, bundle.cfg.height, bundle.cfg.width, 3)  # one val episode
    assert np.isfinite(starts["ee_states"]).all()
    # The bundle rolls out exactly like a model built from the converted EMA file.
    live = WorldModel(bundle.cfg)
    live.load_state_dict(files["model_ema_fp32.pt"]["model"])
    frames = []
    for m in (bundle, live.eval()):
        r = m.rollout(batch_size=1, seed=0)
        r.reset(starts["images"])
        frames.append(np.stack([r.step(np.tile([0.01, 0, 0, 0, 0, 0, 1.0], (1, 1))) for _ in range(3)]))
    assert np.array_equal(frames[0], frames[1])
    assert main([str(tmp_path / "nowhere"), str(out)]) == 2
    with pytest.raises(ConvertError, match="not a DCP checkpoint"):
        from worldsim.train.convert import read_checkpoint

        read_checkpoint(tmp_path)


def test_non_finite_gradient_stops_before_a_checkpoint(data, out, monkeypatch):
    """Grad norms are read once per log interval (no host sync per step), yet a non-finite one still
    stops the run before anything is logged or saved from the broken weights."""
    import worldsim.train.trainer as trainer
    from worldsim.train.config import load_config

    real = trainer.clip_gradients
    calls = []

    def clip_then_break(params, max_norm):
        calls.append(1)
        total = real(params, max_norm)
        return total * float("nan") if len(calls) == 3 else total

    monkeypatch.setattr(trainer, "clip_gradients", clip_then_break)
    monkeypatch.setenv("WORLDSIM_OUTPUT_ROOT", str(out))
    cfg = load_config(
        ["experiment=bridge_tiny", f"dataset.root={data}", "job.name=nan", "trainer.max_iter=10",
         "trainer.log_every=5", "checkpoint.save_iter=5", "trainer.val_every=0"]
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"\(0, 5\]"):
        trainer.train(cfg)
    assert len(calls) == 5  # steps 4 and 5 ran; the check came at step 5's log, before its save
    assert not (job_dir(out, "nan") / "checkpoints" / "latest_checkpoint.txt").exists()


def test_compiled_tokenizer_stage_matches_eager(data, out, tmp_path):
    """trainer.compile=true compiles the encoder and decoder too: the same losses as the eager run (to
    float tolerance) and the same parameter names in its checkpoint (compiled in place, no prefixes)."""
    env = train_env(out)
    args = ("experiment=bridge_tiny_tokenizer", f"dataset.root={data}", "trainer.max_iter=4",
            "trainer.log_every=1", "trainer.val_every=0")  # fmt: skip
    run(python_cmd(*args, "job.name=tok_eager"), env)
    run(python_cmd(*args, "job.name=tok_compiled", "trainer.compile=true"), env)
    eager, compiled = (
        [m["loss"] for m in metrics(job_dir(out, name)) if "loss" in m]
        for name in ("tok_eager", "tok_compiled")
    )
    assert len(eager) == len(compiled) == 4
    assert compiled == pytest.approx(eager, rel=1e-3), (eager, compiled)
    a, b = (load_dcp(job_dir(out, name) / "checkpoints" / "iter_000000004" / "model", tmp_path)
            for name in ("tok_eager", "tok_compiled"))  # fmt: skip
    assert sorted(a) == sorted(b)
