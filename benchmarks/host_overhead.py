"""The vector env's per-step work beside the model, old path vs new: noise draws and the success judge.

    python benchmarks/host_overhead.py                                   # CPU, N = 1 16 64 256 1024
    python benchmarks/host_overhead.py --device cuda --num-envs 256 1024

For each number of worlds N it times, as medians of `--repeats` (ms):
- noise: one env step's two draws (denoising noise and commit noise) of the preset's latent: one
  torch.randn per world from its own CPU generator, stacked and copied to the device (the path before
  worldsim/models/noise.py), against `WorldNoise.draw` on the device;
- judge: success flags of N estimated scenes with random instructions: one world at a time through the
  SimView protocol (`worldsim.eval.success.judge`, the per-world path `SuccessModel.judge` took
  before), against `SuccessModel.judge` (instruction strings) and `SuccessModel.judge_tasks` (parsed
  codes: what the env calls every step). The three must give the same flags;
- success model (CUDA only): the state estimate of N frames, eager fp32 in one batch against what
  `SuccessModel.estimate` runs (a CUDA graph padded to a power of two up to 64 frames, eager above),
  and the largest difference between the two.
It prints old / new ratios and writes JSON to `--out`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from worldsim.eval.success import (
    EstimatedScene,
    SceneEstimate,
    StateNet,
    SuccessConfig,
    SuccessModel,
    judge,
    task_code,
)
from worldsim.models.config import get_preset
from worldsim.models.noise import WorldNoise
from worldsim.models.world_model import best_device

INSTRUCTIONS = (
    "put the {} block in the bowl",
    "push the {} block to the left",
    "push the {} block to the right",
    "lift the {} block",
)


@dataclass
class Args:
    device: str = "cpu"  # where the noise is drawn: cpu, cuda, auto
    dtype: str = "bfloat16"  # the rollout's dtype the noise is cast to
    preset: str = "small"  # its latent shape sets the noise size (small: 8 x 16 x 20)
    num_envs: tuple[int, ...] = (1, 16, 64, 256, 1024)
    threads: int = 2  # torch CPU threads
    repeats: int = 20
    success_variants: bool = False  # CUDA: also time the success model channels-last, compiled, in bf16
    out: Path = Path("benchmarks/results/host_overhead.json")


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def random_scenes(n: int, cfg: SuccessConfig, rng: np.random.Generator):
    """Start and current estimates of n worlds (half with the blocks around the bowl) and instructions."""
    K = cfg.keypoints
    texts = [
        INSTRUCTIONS[t].format(cfg.colours[c])
        for t, c in zip(rng.integers(4, size=n), rng.integers(6, size=n))
    ]
    start = rng.normal([0.35, 0.0, 0.02], [0.05, 0.05, 0.005], (n, K, 3))
    now = start + rng.normal(0, [0.05, 0.08, 0.04], (n, K, 3))
    near = rng.random(n) < 0.5
    now[near, :-1] = start[near, -1:] + rng.normal(0, [0.05, 0.05, 0.03], (int(near.sum()), K - 1, 3))
    grasp = rng.uniform(0, 1, (2, n, K))
    return SceneEstimate(now, grasp[0], cfg.colours), SceneEstimate(start, grasp[1], cfg.colours), texts


def time_point(
    n: int, args: Args, device: torch.device, success: SuccessModel, rng: np.random.Generator
) -> dict:
    """Old and new noise draws and judges for n worlds, in ms."""
    dtype = getattr(torch, args.dtype)
    cfg = get_preset(args.preset)
    latent = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    generators = [torch.Generator().manual_seed(i) for i in range(n)]

    def old_noise() -> None:
        for shape in ((1, *latent), latent):
            torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device=device, dtype=dtype)

    noise = WorldNoise(n, device)
    noise.seed(list(range(n)))

    def new_noise() -> None:
        noise.draw((1, *latent), dtype=dtype)
        noise.draw(latent, dtype=dtype)

    now, start, texts = random_scenes(n, success.cfg, rng)
    threshold = success.cfg.grasp_threshold
    tasks, keypoints = np.array([task_code(t, success.cfg) for t in texts]).T

    def per_world() -> np.ndarray:
        scenes = [(EstimatedScene(now, i, threshold), EstimatedScene(start, i, threshold)) for i in range(n)]
        return np.array([judge(t, a, b, success.cfg) for t, (a, b) in zip(texts, scenes)])

    def strings() -> np.ndarray:
        return success.judge(now, start, texts)

    def codes() -> np.ndarray:
        return success.judge_tasks(now, start, tasks, keypoints)

    flags = per_world()
    if not (np.array_equal(flags, strings()) and np.array_equal(flags, codes())):
        raise AssertionError(f"N={n}: the batched judge's flags differ from the per-world judge's")
    cpu = torch.device("cpu")
    row = {
        "num_envs": n,
        "noise_per_world_generators_ms": median_ms(old_noise, args.repeats, device),
        "noise_world_noise_ms": median_ms(new_noise, args.repeats, device),
        "judge_per_world_ms": median_ms(per_world, args.repeats, cpu),
        "judge_strings_ms": median_ms(strings, args.repeats, cpu),
        "judge_codes_ms": median_ms(codes, args.repeats, cpu),
        "successes": int(flags.sum()),
    }
    row["noise_ratio"] = row["noise_per_world_generators_ms"] / row["noise_world_noise_ms"]
    row["judge_ratio"] = row["judge_per_world_ms"] / row["judge_codes_ms"]
    if device.type == "cuda":
        frames = torch.randint(0, 256, (n, success.cfg.height, success.cfg.width, 3), dtype=torch.uint8)
        frames = frames.to(device)
        with torch.inference_mode():
            difference = (success._forward(frames) - success._run(frames)).abs().max()
            row["estimate_eager_ms"] = median_ms(lambda: success._forward(frames), args.repeats, device)
            row["estimate_ms"] = median_ms(lambda: success._run(frames), args.repeats, device)
        row["estimate_max_difference"] = float(difference)
        row["estimate_ratio"] = row["estimate_eager_ms"] / row["estimate_ms"]
        if args.success_variants:
            row.update(success_variants(success, frames, args.repeats, device))
    return row


def success_variants(
    success: SuccessModel, frames: torch.Tensor, repeats: int, device: torch.device
) -> dict[str, float]:
    """Other ways to run the success model on a batch of frames: channels-last, torch.compile (fp32),
    and bf16 autocast; ms each and the largest difference from the eager fp32 output."""
    import copy

    from worldsim.models.rollout import _to_model_frames

    out: dict[str, float] = {}
    net = success.net
    channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    compiled = torch.compile(copy.deepcopy(net), dynamic=False)

    def run(model: torch.nn.Module, layout=torch.contiguous_format, bf16: bool = False):
        x = _to_model_frames(frames, device, torch.float32).contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            p, g = model(x)
        return torch.cat([p, torch.sigmoid(g)[..., None]], dim=-1).float()

    with torch.inference_mode():
        reference = run(net)
        for name, fn in {
            "channels_last": lambda: run(channels_last, torch.channels_last),
            "compiled": lambda: run(compiled),
            "bf16": lambda: run(net, bf16=True),
            "compiled_bf16": lambda: run(compiled, bf16=True),
        }.items():
            difference = (fn() - reference).abs().max()  # also the compile, outside the timing
            out[f"estimate_{name}_ms"] = median_ms(fn, repeats, device)
            out[f"estimate_{name}_max_difference"] = float(difference)
            print(
                f"{'':>5} success model {name}: {out[f'estimate_{name}_ms']:.3f} ms, max difference "
                f"{float(difference):.2e}",
                flush=True,
            )
    return out


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    device = best_device(args.device)
    cfg = get_preset(args.preset)
    latent = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    success = SuccessModel(StateNet(SuccessConfig()), device)  # random weights, the shipped model's size
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'N':>5} {'noise old':>10} {'noise new':>10} {'ratio':>6} | {'judge per world':>15} "
          f"{'strings':>8} {'codes':>8} {'ratio':>6}  (ms)")  # fmt: skip
    for n in args.num_envs:
        row = time_point(n, args, device, success, rng)
        rows.append(row)
        print(
            f"{n:>5} {row['noise_per_world_generators_ms']:>10.3f} {row['noise_world_noise_ms']:>10.3f} "
            f"{row['noise_ratio']:>6.1f} | {row['judge_per_world_ms']:>15.3f} {row['judge_strings_ms']:>8.3f} "
            f"{row['judge_codes_ms']:>8.3f} {row['judge_ratio']:>6.1f}",
            flush=True,
        )
        if "estimate_eager_ms" in row:
            print(
                f"{'':>5} success model: eager {row['estimate_eager_ms']:.3f} ms, estimate (graphed <= 64) "
                f"{row['estimate_ms']:.3f} ms ({row['estimate_ratio']:.1f}x), max difference "
                f"{row['estimate_max_difference']:.2e}",
                flush=True,
            )
    result = {
        "benchmark": "host_overhead",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "latent_shape": list(latent),
        "torch": torch.__version__,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"noise: {args.dtype} on {result['device']}; judge on the CPU; wrote {args.out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
