"""Rollout-engine speed: frames/s and ms/step per preset and batch size, KV cache on vs off.

    python benchmarks/rollout_speed.py                       # CPU: small, batch 1 (2 threads)
    python benchmarks/rollout_speed.py --device cuda --presets small 2b --batch-sizes 1 16 64 256 1024

Random weights (speed does not depend on training). The decoder is included: a step returns pixels.
"cache off" recomputes every frame since reset at every denoising step (the reference path), timed
once K = num_context_frames frames are in the window, so the ratio is the KV cache's gain at K.
On CUDA the cached path also runs as one CUDA graph per step (`Rollout.enable_cuda_graph`).
Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from worldsim.models.config import PRESETS, get_preset
from worldsim.models.world_model import WorldModel


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(rollout, actions: np.ndarray, n: int, device: torch.device) -> float:
    """Median seconds per `rollout.step` over n steps (after the caller's warm-up)."""
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        rollout.step(actions)
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench(
    name: str,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    steps: int,
    cache_off: bool,
    graph: bool,
    compile: bool = False,
    denoise_steps: int | None = None,
) -> dict:
    """One row: `name` is a preset (random weights) or a bundle folder / .safetensors file."""
    if name in PRESETS:
        torch.manual_seed(0)
        model = WorldModel(get_preset(name)).to(device=device, dtype=dtype).eval()
        with torch.no_grad():  # randomise the zero-initialised layers so no kernel sees only zeros
            for p in model.parameters():
                if p.abs().sum() == 0:
                    p.normal_(std=0.02)
    else:
        model = WorldModel.from_pretrained(name, device=device, dtype=dtype)
    cfg = model.cfg
    frames = np.random.default_rng(0).integers(0, 256, (batch, cfg.height, cfg.width, 3), dtype=np.uint8)
    actions = np.tile([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], (batch, 1))
    row = {
        "preset": cfg.name,
        "model": name,
        "compiled": compile,
        "batch": batch,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "denoise_steps": denoise_steps or cfg.denoise_steps,
        "K": cfg.num_context_frames,
    }
    rollout = model.rollout(batch_size=batch, seed=0, denoise_steps=denoise_steps)
    rollout.reset(frames)
    for _ in range(cfg.num_context_frames):  # fill the window: steady state
        rollout.step(actions)
    with FlopCounterMode(display=False) as counter:
        rollout.step(actions)
    row["gflop_per_frame"] = counter.get_total_flops() / batch / 1e9
    if compile:  # after counting: a dispatch mode around a compiled call would force recompiles
        model.dynamics.compile(dynamic=False)
    if graph and device.type == "cuda":
        rollout.enable_cuda_graph()
    time_steps(rollout, actions, 3, device)
    s = time_steps(rollout, actions, steps, device)
    row.update(ms_per_step=s * 1e3, frames_per_s=batch / s, cuda_graph=bool(graph and device.type == "cuda"))
    if cache_off:
        ref = model.rollout(batch_size=batch, seed=0, use_cache=False, denoise_steps=denoise_steps)
        ref.reset(frames)
        for _ in range(cfg.num_context_frames - 1):
            ref.step(actions)
        s_off = time_steps(ref, actions, 2, device)
        row.update(ms_per_step_cache_off=s_off * 1e3, cache_speedup=s_off / s)
    # A captured graph and its rollout point at each other: collect the cycle before the next row, or
    # every row's cache and graph pool stay on the GPU.
    del model, rollout
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 (default: bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument("--presets", nargs="+", default=["small"], help="presets and/or bundle paths")
    parser.add_argument("--compile", action="store_true", help="torch.compile the dynamics transformer")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--denoise-steps",
        nargs="+",
        type=int,
        default=[None],
        help="Euler steps per frame (default: the model's)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-cache-off", action="store_true", help="skip the uncached reference timing")
    parser.add_argument("--no-graph", action="store_true", help="eager steps on CUDA")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    rows = []
    for name in args.presets:
        for batch, denoise in itertools.product(args.batch_sizes, args.denoise_steps):
            cache_off = not args.no_cache_off and batch <= 16
            try:
                row = bench(
                    name,
                    batch,
                    device,
                    dtype,
                    args.steps,
                    cache_off,
                    not args.no_graph,
                    args.compile,
                    denoise,
                )
            except torch.OutOfMemoryError:  # record it and go on: the other rows are still worth having
                gc.collect()
                torch.cuda.empty_cache()
                rows.append(
                    {"model": name, "batch": batch, "denoise_steps": denoise, "error": "out of memory"}
                )
                print(f"{name:6s} B={batch:5d}: out of GPU memory", flush=True)
                continue
            rows.append(row)
            extra = (
                f"  cache off {row['ms_per_step_cache_off']:.1f} ms ({row['cache_speedup']:.1f}x)"
                if cache_off
                else ""
            )
            print(f"{name:6s} B={batch:5d} S={row['denoise_steps']} {row['ms_per_step']:9.2f} ms/step {row['frames_per_s']:10.1f} frames/s "
                  f"{row['gflop_per_frame']:8.2f} GFLOP/frame {row['params_M']:8.1f}M params{extra}", flush=True)  # fmt: skip
            if args.out:  # after every row: a later failure keeps what was measured
                with open(args.out, "w") as f:
                    json.dump({"env": env, "rows": rows}, f, indent=1)
    if "2b" in args.presets and "small" in args.presets:
        for b in args.batch_sizes:
            small = next((r for r in rows if r.get("preset") == "small" and r["batch"] == b), None)
            big = next((r for r in rows if r.get("preset") == "2b" and r["batch"] == b), None)
            if small is None or big is None:
                continue
            print(f"B={b}: 2b/small time per step = {big['ms_per_step'] / small['ms_per_step']:.1f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
