"""Frames per second of BridgeWorld-v0: the single env on the CPU, and the native vector env at several N.

    python benchmarks/env_speed.py                         # the bundled checkpoint
    python benchmarks/env_speed.py --preset small          # random weights of a preset (same compute)
    python benchmarks/env_speed.py --checkpoint PATH --num-envs 1 16 64 256 1024 --device cuda

The single env is timed on the CPU with `--threads` torch threads (the laptop case), and on CUDA too
when the chosen device is CUDA. The vector env runs on `--device` (auto: CUDA when available); on the
CPU, N above `--max-cpu-envs` is skipped. Every point runs `--warmup` untimed steps, then times
`--steps` steps (fewer if `--max-seconds` runs out). One frame = one world advanced by one action,
decoded to pixels. Prints a table and writes JSON (`--out`).

Random actions end episodes at random (the success model's spurious successes) and all at once at
the time limit (60 steps): a vector env then resets those worlds, and with `compile=True` each new
number of worlds reset at once captures a CUDA graph or compiles the success model the first time
(a one-time cost of up to seconds). For steady-state throughput, warm up past the first time limit
(`--warmup 130`) and compare runs with their `episode_ends`.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from worldsim.envs import worlds
from worldsim.envs.bridge_world import BridgeWorldEnv, BridgeWorldVectorEnv
from worldsim.models.config import get_preset
from worldsim.models.world_model import WorldModel, best_device, read_config, resolve_weights
from worldsim.sim.spaces import ACTION_HIGH, ACTION_LOW


@dataclass
class Args:
    checkpoint: str | None = None  # bundle folder or .safetensors; None = the bundled model
    preset: str | None = None  # instead: a random-weight model of this preset (e.g. small), in a temp bundle
    device: str = "auto"  # where the vector env runs: auto (CUDA if available), cpu, cuda
    dtype: str = "float32"  # float32, bfloat16 or float16
    threads: int = 2  # torch CPU threads
    num_envs: tuple[int, ...] = (1, 16, 64, 256, 1024)  # vector env sizes
    max_cpu_envs: int = 64  # on the CPU, larger N are skipped (each step takes seconds)
    denoise_steps: int | None = None  # None = the checkpoint's
    compile: bool = False  # torch.compile the model (the env's compile=True)
    single_devices: tuple[str, ...] = ("cpu", "cuda")  # where the single env is timed (cuda if available)
    # untimed steps per point; None = 3, or with --compile the steps until the KV cache is full (K + 2): the
    # masked steps of a filling cache and the unmasked ones after it each compile once, and 3 warm-up steps
    # left the second compilation in the timed steps (session 13, CPU: 146.8 ms/step read instead of 71.2)
    warmup: int | None = None
    steps: int = 30  # timed steps per point
    max_seconds: float = 60.0  # stop timing a point after this long (at least 2 steps)
    profile_steps: int = 0  # after timing each vector point, profile this many more steps: where a step goes
    # partial resets of the vector env on CUDA: graphed (where they apply: N <= --graph-max-worlds) and/or
    # eager, timed back to back at each N for an A/B of the graphed resets
    resets: tuple[Literal["graphed", "eager"], ...] = ("graphed",)
    # the vector env's `copy`: True returns observations of their own, False the env's frame buffer (no
    # host copy of every frame); several values are timed back to back at each N
    obs_copy: tuple[bool, ...] = (True,)
    # vector envs up to this N step as one CUDA graph (None: the env's CUDA_GRAPH_MAX_WORLDS, 1024)
    graph_max_worlds: int | None = None
    out: Path = Path("benchmarks/results/env_speed.json")  # the results as JSON


def random_bundle(preset: str, folder: Path) -> Path:
    """A bundle of `preset` with random weights (zero-initialised layers randomised too, so no path is
    skipped) and random start frames: same compute as a trained model of that size."""
    torch.manual_seed(0)
    model = WorldModel(get_preset(preset))
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.02)
    cfg = model.cfg
    rng = np.random.default_rng(0)
    start = {
        "images": rng.integers(0, 256, (4, cfg.height, cfg.width, 3), dtype=np.uint8),
        "ee_states": np.zeros((4, 7)),
    }
    return model.save_pretrained(folder / preset, start_frames=start)


def time_steps(env, actions: np.ndarray, args: Args) -> dict:
    """Reset, warm up, then time steps; returns ms per step and frames per second."""
    env.reset(seed=0)
    for a in actions[: args.warmup]:
        env.step(a)
    done, ends, start = 0, 0, time.perf_counter()
    for a in actions[args.warmup :]:
        _, _, terminated, truncated, _ = env.step(a)
        ends += int(np.sum(np.logical_or(terminated, truncated)))
        done += 1
        if done >= 2 and time.perf_counter() - start > args.max_seconds:
            break
    seconds = time.perf_counter() - start
    worlds = getattr(env, "num_envs", 1)
    return {
        "steps": done,
        "ms_per_step": 1000 * seconds / done,
        "frames_per_s": worlds * done / seconds,
        # Episodes that ended in the timed steps (random actions: the success model's spurious successes,
        # and the time limit): each is a reset at the next step (a vector env's autoreset), whose cost
        # varies from run to run with these counts.
        "episode_ends": ends,
    }


def breakdown(env, actions: np.ndarray, steps: int) -> dict[str, float]:
    """Wall time per step in the env's labelled parts (`record_function` ranges named "worlds: ..." and
    "vector env: ..."), from the profiler over `steps` more steps; the parts wait for the device where
    they read its results, so their times add up to about a step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            env.step(actions[i % len(actions)])
    start = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % len(actions)])
    total = (time.perf_counter() - start) / steps * 1e3  # the same steps, unprofiled
    parts = {
        e.key: e.cpu_time_total / 1e3 / steps
        for e in prof.key_averages()
        if e.key.startswith(("worlds: ", "vector env: "))
    }
    print(f"{'':8} breakdown over {steps} steps (ms per step; unprofiled step {total:.2f} ms):", flush=True)
    for key, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"{'':10} {key:34} {ms:8.2f}", flush=True)
    return {"step": total, **parts}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(line for line in open("/proc/cpuinfo") if line.startswith("model name"))
        return model.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    if args.graph_max_worlds is not None:
        worlds.CUDA_GRAPH_MAX_WORLDS = args.graph_max_worlds
    device = best_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = random_bundle(args.preset, Path(tmp)) if args.preset else args.checkpoint
        settings = dict(
            checkpoint=checkpoint, dtype=args.dtype, denoise_steps=args.denoise_steps, compile=args.compile
        )
        rng = np.random.default_rng(0)
        if args.warmup is None:
            args.warmup = (
                read_config(resolve_weights(checkpoint)).num_context_frames + 2 if args.compile else 3
            )
        n_actions = args.warmup + args.steps
        rows = []
        print(
            f"{'env':8} {'device':6} {'N':>5} {'ms/step':>10} {'frames/s':>10} {'steps':>6} {'ends':>6} resets"
        )
        singles = [d for d in args.single_devices if d == "cpu" or device.type == "cuda"]
        for single_device in singles:
            env = BridgeWorldEnv(device=single_device, **settings)
            cfg, denoise_steps = env.worlds.model.cfg, env.worlds.rollout.denoise_steps
            actions = rng.uniform(ACTION_LOW, ACTION_HIGH, (n_actions, 7)).astype(np.float32)
            rows.append(
                {"env": "single", "device": single_device, "num_envs": 1, **time_steps(env, actions, args)}
            )
            print_row(rows[-1])
        for n in args.num_envs:
            if device.type == "cpu" and n > args.max_cpu_envs:
                print(f"vector N={n}: skipped on the CPU (above --max-cpu-envs {args.max_cpu_envs})")
                continue
            actions = rng.uniform(ACTION_LOW, ACTION_HIGH, (n_actions, n, 7)).astype(np.float32)
            for resets, copy in itertools.product(args.resets, args.obs_copy):
                env = BridgeWorldVectorEnv(num_envs=n, device=device, copy=copy, **settings)
                cfg, denoise_steps = env.worlds.model.cfg, env.worlds.rollout.denoise_steps
                env.worlds.rollout.graph_resets = resets == "graphed"
                row = {"env": "vector", "device": device.type, "num_envs": n, "resets": resets, "copy": copy}
                rows.append({**row, **time_steps(env, actions, args)})
                print_row(rows[-1])
                if args.profile_steps:
                    rows[-1]["breakdown_ms_per_step"] = breakdown(env, actions, args.profile_steps)
                del env  # free its KV cache before the next, larger one
    result = {
        "benchmark": "env_speed",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
        "model": {"name": cfg.name, "resolution": [cfg.height, cfg.width], "denoise_steps": denoise_steps},
        "device": device_name(device),
        "cpu_device": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_end": list(os.getloadavg()),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"model {cfg.name} {cfg.height}x{cfg.width}, {result['model']['denoise_steps']} denoising steps; "
        f"{result['device']}; load average {result['load_average_at_end']}; wrote {args.out}"
    )
    return result


def print_row(row: dict) -> None:
    print(
        f"{row['env']:8} {row['device']:6} {row['num_envs']:>5} {row['ms_per_step']:>10.1f} "
        f"{row['frames_per_s']:>10.1f} {row['steps']:>6} {row['episode_ends']:>6} {row.get('resets', '')}"
        f"{'' if row.get('copy', True) else ' no-copy'}",
        flush=True,
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
