"""The training loop: one program for 1..N processes, CPU or GPU, every stage.

Order of work, so that every user error surfaces before a device is touched:
config checks (config.py) -> dataset scan (data.py) -> load_path shape check (initial_weights.py) ->
process group -> model (same seed on every rank), initial weights, latent statistics -> FSDP2 ->
AdamW + LambdaLR + EMA -> resume from the latest complete checkpoint -> loop.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.profiler import record_function
from tqdm import tqdm

from worldsim.models.config import WorldModelConfig
from worldsim.models.dynamics import set_flex_forward_tile
from worldsim.models.flow import training_sequence_frames
from worldsim.models.world_model import WorldModel
from worldsim.train.checkpoint import CheckpointManager, rng_state
from worldsim.train.config import TrainConfig
from worldsim.train.data import DataPosition, TrainStream, make_datasets, val_batches
from worldsim.train.ema import EMA
from worldsim.train.initial_weights import InitialWeights, inspect_load_path
from worldsim.train.latents import cache_latents
from worldsim.train.metrics import MetricsLog, ProfileWindow, peak_flops, train_flops_per_window
from worldsim.train.parallelize import (
    DistInfo,
    close_distributed,
    init_distributed,
    parallelize,
    resolve_precision,
)
from worldsim.train.stages import (
    RECONSTRUCTION_STAGES,
    StageModule,
    latent_stats_are_default,
    resolve_attention,
    set_latent_stats,
)
from worldsim.train.validate import gather_ema_model, validation_loss, validation_rollout


def lr_lambda(warmup: int, max_iter: int, final_ratio: float):  # noqa: ANN201 - a LambdaLR factor
    """Linear warm-up from 0 to 1 over `warmup` steps, then linear decay to `final_ratio` at max_iter."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, max_iter - warmup)
        return 1.0 - (1.0 - final_ratio) * min(1.0, progress)

    return factor


def fit_to_budget(
    steps: int,
    seconds: float,
    max_minutes: float,
    now: int,
    last: int,
    info: DistInfo,
    elapsed: float | None = None,
) -> int:
    """The last iteration that fits a wall-clock budget, from the speed of `steps` steps that took
    `seconds`, with `elapsed` seconds of the budget spent (default `seconds`), keeping 10% for
    validation and checkpoints.

    Every rank must stop at the same step (the last step's logging, validation and save are
    collectives), but each rank measured its own `seconds`: the answer is agreed on with one
    all-reduce (MIN: the slowest rank decides), never computed per rank."""
    rate = steps / max(seconds, 1e-6)
    remaining = max(0.0, max_minutes * 60 - (seconds if elapsed is None else elapsed)) * 0.9
    mine = torch.tensor(
        [max(now + 1, min(last, now + int(rate * remaining)))], dtype=torch.int64, device=info.device
    )
    dist.all_reduce(mine, op=dist.ReduceOp.MIN)
    return int(mine.item())


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; no weight decay on biases and norm gains (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.trainer.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    t = cfg.trainer
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), fused=device.type == "cuda")


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global gradient norm over all ranks' shards, a 0-d tensor on the device (reading it is a host
    sync, so the loop reads it once per log interval); clipped to max_norm when > 0 (torchtitan's recipe)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if hasattr(total, "full_tensor"):  # a DTensor holding per-rank partial norms
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def build_model(
    model_cfg: WorldModelConfig,
    cfg: TrainConfig,
    initial: list[InitialWeights],
    resuming: bool,
    info: DistInfo,
) -> tuple[WorldModel, str]:
    """The plain model on this rank's device: identical init on every rank, initial weights, latent stats."""
    torch.manual_seed(cfg.trainer.seed)  # every rank builds the same weights before fully_shard splits them
    model = WorldModel(model_cfg)
    notes = []
    if resuming:  # the checkpoint restores every weight; the initial ones are not read
        initial = []
    for source in initial:  # load_path first, then tokenizer_path over its tokenizer
        source.load_into(model)
        what = "tokenizer" if source.part == "tokenizer" else "initial"
        notes.append(
            f"{what} weights from {source.path}"
            + (f" (dropped {len(source.dropped)} tensors: fresh {source.fresh})" if source.dropped else "")
        )
    if cfg.stage == "tokenizer" and initial and not latent_stats_are_default(model):
        # The encoder is about to change: the loaded latent statistics no longer describe it, so they go
        # back to the identity and the next stage measures them on the new latents.
        model.tokenizer.latent_shift.zero_()
        model.tokenizer.latent_scale.fill_(1.0)
        notes.append("latent statistics reset (the next stage measures them for the retrained encoder)")
    note = "\n".join(notes)
    model.to(info.device)
    return model, note


def build_teacher(
    model_cfg: WorldModelConfig, cfg: TrainConfig, initial: list[InitialWeights], info: DistInfo
) -> torch.nn.Module:
    """stage=distill: the frozen teacher's dynamics, read from load_path on every start (a resumed run
    too: checkpoints hold only the student), replicated on each rank; compiled block by block like the
    student's blocks when trainer.compile is on."""
    teacher = WorldModel(model_cfg)
    initial[0].load_into(teacher)
    dynamics = teacher.dynamics.to(info.device)
    if cfg.trainer.compile:
        for block in dynamics.blocks:
            block.compile(mode=cfg.trainer.compile_mode)
    return dynamics


def initial_weights(cfg: TrainConfig, model_cfg: WorldModelConfig) -> list[InitialWeights]:
    """The shape-checked sources of the initial weights: load_path, then tokenizer_path over its tokenizer."""
    sources = []
    if cfg.load_path:
        part = "no_tokenizer" if cfg.tokenizer_path else "all"
        sources.append(inspect_load_path(cfg.load_path, model_cfg, cfg.stage, cfg.load_ema, part))
    if cfg.tokenizer_path:
        sources.append(inspect_load_path(cfg.tokenizer_path, model_cfg, cfg.stage, cfg.load_ema, "tokenizer"))
    return sources


# How the dynamics samples belongs to its weights (a distilled model is made for its one Euler step).
SAMPLER_FIELDS = ("denoise_steps", "time_shift", "context_noise")


def keep_loaded_sampler(
    cfg: TrainConfig, model_cfg: WorldModelConfig, initial: list[InitialWeights]
) -> tuple[WorldModelConfig, str]:
    """stage=decoder keeps load_path's dynamics as they are, so it keeps how they sample (the source
    config's SAMPLER_FIELDS, unless model.overrides names them) and the stage that trained them; other
    stages train the dynamics they save. Returns (model config, the dynamics' training stage)."""
    source = initial[0] if initial and initial[0].part == "all" else None
    if cfg.stage != "decoder" or source is None:
        return model_cfg, cfg.stage
    recorded = source.source_config or {}
    kept = {f: recorded[f] for f in SAMPLER_FIELDS if f in recorded and f not in cfg.model.overrides}
    return dataclasses.replace(model_cfg, **kept), source.source_dynamics_stage or cfg.stage


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) the job `cfg` describes; returns the job folder."""
    model_cfg = cfg.model.build()
    train_ds, val_ds = make_datasets(cfg.dataset, model_cfg)
    initial = initial_weights(cfg, model_cfg)
    model_cfg, dynamics_stage = keep_loaded_sampler(cfg, model_cfg, initial)
    info = init_distributed()
    try:
        return _train(cfg, model_cfg, train_ds, val_ds, initial, info, dynamics_stage)
    finally:
        close_distributed()


def _train(
    cfg: TrainConfig,
    model_cfg: WorldModelConfig,
    train_ds,
    val_ds,
    initial: list[InitialWeights],
    info: DistInfo,
    dynamics_stage: str,
) -> Path:
    t = cfg.trainer
    device, main = info.device, info.is_main
    job_dir = cfg.job_dir
    manager = CheckpointManager(job_dir, cfg.checkpoint.keep_last, info.rank, info.world_size)
    resume = manager.latest()
    if main:
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

    model, note = build_model(model_cfg, cfg, initial, resume is not None, info)
    param_dtype = resolve_precision(t.precision, device)
    if cfg.dataset.latents and cfg.stage not in RECONSTRUCTION_STAGES:
        if resume is not None:  # the frozen tokenizer the checkpoint holds, read before sharding
            inspect_load_path(str(resume), model_cfg, cfg.stage, False, "tokenizer").load_into(model)
        train_ds = cache_latents(
            train_ds,
            model.tokenizer,
            cfg.dataset.cache_dir,
            device,
            param_dtype,
            info.rank,
            info.world_size,
            workers=max(1, cfg.dataset.num_workers),
            progress=main,
        )
        note += f"\ntraining on cached latents: {train_ds.folder}"
    stream = TrainStream(
        train_ds,
        t.batch_size,
        info.rank,
        info.world_size,
        t.seed,
        cfg.dataset.num_workers,
        device.type == "cuda",
    )
    if cfg.stage != "tokenizer" and resume is None and latent_stats_are_default(model):
        # The flow model wants ~unit-variance latents; a fresh tokenizer checkpoint has none recorded yet.
        sample = val_batches(train_ds, t.batch_size, info.rank, info.world_size, n=8)
        mu, std = set_latent_stats(model, sample, device)
        note += f"\nlatent stats set from training frames: shift {np.round(mu, 3)}, scale {np.round(std, 3)}"

    attention = resolve_attention(t.attention, device)
    # read when the blocks are traced
    set_flex_forward_tile(t.flex_forward_tile, model_cfg.dim // model_cfg.heads)
    teacher = build_teacher(model_cfg, cfg, initial, info) if cfg.stage == "distill" else None
    root = StageModule(
        model, cfg.stage, param_dtype, attention, t.motion_weight, teacher, t.distill_teacher_steps
    )
    parallelize(root, model, device, param_dtype, t.activation_checkpointing, t.compile, t.compile_mode)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, cfg, device)
    last_iter = t.max_iter  # lowered once by a wall-clock budget (trainer.max_minutes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(t.warmup_iter, last_iter, t.lr_final_ratio)(s)
    )
    ema = EMA(model, t.ema_decay)

    start = 0
    random.seed(t.seed + info.rank)
    np.random.seed(t.seed + info.rank)
    torch.manual_seed(t.seed + 1000 * info.rank + 1)  # ranks draw different noise
    if resume is not None:
        state = manager.load(resume, model, optimizer, scheduler, ema, device)
        start = int(state["iteration"])
        stream.position = DataPosition(int(state["epoch"]), int(state["index"]))
        note += f"\nresumed from {resume} (iteration {start})"

    flops = train_flops_per_window(model_cfg, cfg.stage, t.distill_teacher_steps)
    peak = peak_flops(device, param_dtype)
    n_train = sum(p.numel() for p in params)
    log = MetricsLog(job_dir, main)
    if main:
        print(
            f"worldsim-train: {cfg.experiment} stage={cfg.stage} preset={model_cfg.name} ranks={info.world_size} "
            f"device={device} precision={str(param_dtype).removeprefix('torch.')} attention={attention} trainable={n_train / 1e6:.2f}M "
            f"train windows={len(train_ds)} job={job_dir}{note and chr(10) + note.strip()}",
            flush=True,
        )
    fixed_val = val_batches(val_ds, t.batch_size, info.rank, info.world_size, t.val_batches)
    eval_model: WorldModel | None = None

    data = iter(stream)
    bar = tqdm(total=t.max_iter, initial=start, disable=not main, desc=cfg.experiment, dynamic_ncols=True)
    # Per-step values stay on the device (0-d tensors) and are read once per log interval: a host sync
    # each step would stall the GPU while the CPU launches the next step.
    window_t0, window_steps, loss_sum, logs_sum = time.perf_counter(), 0, 0.0, {}
    finite = torch.ones((), dtype=torch.bool, device=device)  # every grad norm since the last check
    run_t0 = time.perf_counter()
    chunk_over = False
    profile = ProfileWindow(t.profile_start, t.profile_iters, job_dir / "profile", info.rank, device)
    for step in range(start + 1, t.max_iter + 1):
        if step > last_iter:
            break
        # The speed for a wall-clock budget is measured over the second half of the warm-up: the first
        # steps include torch.compile's compilation (tens of seconds), which would halve the estimate.
        if t.max_minutes > 0 and step == start + t.warmup_iter // 2 + 1:
            rate_t0, rate_from = time.perf_counter(), step - 1
        if t.max_minutes > 0 and step == start + t.warmup_iter + 1:
            now = time.perf_counter()
            last_iter = fit_to_budget(
                step - 1 - rate_from, now - rate_t0, t.max_minutes, step - 1, last_iter, info, now - run_t0
            )
            bar.total = last_iter
        profile.before(step)
        # (the record_function labels name the phases in a profile's device-idle report)
        for micro in range(t.grad_accum):
            with record_function("train: data"):
                batch = next(data)
                # frames, or (dataset.latents) the encoder's cached latent means
                inputs = {
                    k: batch[k].to(device, non_blocking=True) for k in ("video", "latents") if k in batch
                }
                action = batch["action"].to(device, non_blocking=True)
            root.set_requires_gradient_sync(micro == t.grad_accum - 1)  # reduce-scatter once per step
            with record_function("train: forward + backward"):
                loss, logs = root(inputs.get("video"), action, latents=inputs.get("latents"))
                (loss / t.grad_accum).backward()
            loss_sum = loss_sum + loss.detach().float() / t.grad_accum
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + v.float() / t.grad_accum
        with record_function("train: optimizer"):
            grad_norm = clip_gradients(params, t.clip_grad_norm)
            finite &= torch.isfinite(grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function("train: ema"):
            ema.update(step)
        window_steps += 1
        if (ops := profile.after(step)) and main:
            tqdm.write(f"profile of iterations {t.profile_start}..{step}: {ops}")
        saving = (cfg.checkpoint.save_iter and step % cfg.checkpoint.save_iter == 0) or (
            step == last_iter and cfg.checkpoint.save_final
        )
        logging = step % t.log_every == 0 or step == last_iter
        if (logging or saving or t.val_every and step % t.val_every == 0) and not bool(finite):
            # checked before anything is logged, validated or saved from the broken weights
            raise FloatingPointError(
                f"non-finite gradient norm at an iteration in ({step - window_steps}, {step}]; lower trainer.lr?"
            )

        if logging:
            dt = time.perf_counter() - window_t0
            keys = sorted(logs_sum)
            late = t.stop_after_minutes > 0 and time.perf_counter() - run_t0 > t.stop_after_minutes * 60
            totals = torch.stack(
                [torch.as_tensor(loss_sum, device=device)]
                + [logs_sum[k] for k in keys]
                + [torch.tensor(float(late), device=device)]  # ranks that want to stop: any of them decides
            ).to(torch.float64)
            dist.all_reduce(totals)
            # trainer.stop_after_minutes reached: the all-reduce makes every rank stop at this step
            chunk_over = bool(totals[-1] > 0) and step < last_iter
            totals = (totals[:-1] / (info.world_size * window_steps)).tolist()
            windows = window_steps * t.grad_accum * t.batch_size * info.world_size
            record: dict[str, Any] = {
                "iter": step,
                "loss": totals[0],
                **dict(zip(keys, totals[1:])),
                "lr": lr,
                "grad_norm": float(grad_norm),  # of this step
                "it_per_s": window_steps / dt,
                "frames_per_s": windows * model_cfg.num_frames / dt,
                "tflops_per_s_per_rank": flops * windows / dt / info.world_size / 1e12,
                "mfu": (flops * windows / dt / (peak * info.world_size)) if peak else "n/a",
            }
            # dynamics tokens (both streams) through the transformer
            if cfg.stage not in RECONSTRUCTION_STAGES:
                record["tokens_per_s"] = (
                    windows * training_sequence_frames(model_cfg.num_frames) * model_cfg.tokens_per_frame / dt
                )
            if device.type == "cuda":  # this rank's peak since the start (FSDP shards: ranks are alike)
                record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", it_s=f"{record['it_per_s']:.2f}")
            window_t0, window_steps, loss_sum, logs_sum = time.perf_counter(), 0, 0.0, {}
        bar.update(1)

        if t.val_every and (step % t.val_every == 0 or step == last_iter) and not chunk_over:
            record = {"iter": step, **validation_loss(root, fixed_val, device, t.seed)}
            # The decoder stage rolls out too: its decoder is what turns the dynamics' latents into frames.
            if cfg.stage != "tokenizer" and t.val_rollout_steps > 0:
                eval_model = gather_ema_model(ema, model, eval_model, main)
                if main and eval_model is not None:
                    video = job_dir / "val" / f"iter_{step:09d}.mp4"
                    record.update(validation_rollout(eval_model, val_ds, t.val_rollout_steps, t.seed, video))
            log.write(record)
            if main:
                tqdm.write("validation: " + json.dumps({k: round(v, 4) for k, v in record.items()}))
            window_t0 = time.perf_counter()  # validation time is not training throughput

        if saving or chunk_over:
            trainer_state = {
                "iteration": step,
                "epoch": stream.position.epoch,
                "index": stream.position.index,
                "rng": rng_state(device),
            }
            meta = {
                "iteration": step,
                "stage": cfg.stage,
                "dynamics_stage": dynamics_stage,
                "experiment": cfg.experiment,
                "world_size": info.world_size,
                "model_config": json.loads(model_cfg.to_json()),
                "train_config": cfg.to_dict(),
            }
            manager.save(step, model, optimizer, scheduler, ema, trainer_state, meta)
            window_t0 = time.perf_counter()
        if chunk_over:
            break
    bar.close()
    log.close()
    if main:
        if chunk_over:
            print(
                f"worldsim-train: stopped at iteration {step} of {last_iter} after trainer.stop_after_minutes="
                f"{t.stop_after_minutes:g}; checkpoint in {manager.dir}: run the same command again to continue",
                flush=True,
            )
        else:
            print(f"worldsim-train: done at iteration {last_iter}; checkpoints in {manager.dir}", flush=True)
    return job_dir
