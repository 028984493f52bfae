"""`worldsim-eval`: how faithful is a world model to its ground truth? Writes metrics.json and report.html.

    worldsim-eval --checkpoint checkpoints/bridge_small --data datasets/bridge_sim --split val --out eval/
    worldsim-eval ... --device cuda --batch-size 64 --workers 14          # GPU machine: sims on 14 CPUs

Stages (`--stages`, default all):
- open_loop: each episode of the split from its first frame with its own actions, PSNR/SSIM per
  horizon 1..H against the video and against the copy-last-frame baseline (open_loop.py);
- counterfactual: random teleop action sequences in BridgeSim and the model from one start (counterfactual.py);
- success: the success model (block and bowl state from a frame + the task predicates): loaded from `--success-model` or the bundle's
  `success.safetensors`, else trained on BridgeSim frames and written to OUT/success.safetensors;
  accuracy on held-out sim episodes (success.py);
- ranking: policies of graded skill in BridgeSim and in the model, success rates and their Pearson and
  Spearman correlation (policy_ranking.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from worldsim.eval.counterfactual import evaluate_counterfactual
from worldsim.eval.open_loop import evaluate_open_loop, make_dataset
from worldsim.eval.policy_ranking import evaluate_ranking
from worldsim.eval.report import headline, write_metrics, write_report
from worldsim.eval.success import (
    SUCCESS_WEIGHTS,
    build_success_model,
    collect_success_frames,
    evaluate_success_model,
    load_success_model,
    round_tripped,
)
from worldsim.models.world_model import WorldModel, best_device, inference_dtype, resolve_weights
from worldsim.sim.policies import POLICIES

STAGES = ("open_loop", "counterfactual", "success", "ranking")


def _pair(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.split(","))
    return h, w


def _names(text: str, known: tuple[str, ...] | dict, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="worldsim-eval", description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint", default=None, help="model bundle folder or .safetensors (default: bundled)"
    )
    p.add_argument("--data", type=Path, help="Bridge-format dataset root (needed by the open_loop stage)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, required=True, help="output folder for metrics.json and report.html")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--horizons", type=int, default=60, help="open-loop and counterfactual horizon H (frames)")
    p.add_argument("--episodes", type=int, default=None, help="open-loop episodes (default: the whole split)")
    p.add_argument(
        "--counterfactual-episodes",
        type=int,
        default=100,
        help="BridgeSim starts driven by random teleop actions (32 until session 12: the same model's gap "
        "then read 0.2 dB apart on two devices, and 100 episodes moved it by 0.24 dB)",
    )
    p.add_argument("--policies", default=",".join(POLICIES), help="comma list of ranking policies")
    p.add_argument("--policy-episodes", type=int, default=50, help="ranking episodes per policy and world")
    p.add_argument(
        "--policy-steps", type=int, default=60, help="ranking episode length (BridgeSim-v0's limit)"
    )
    p.add_argument(
        "--confirm-frames", type=int, default=2, help="consecutive success frames that end a learned episode"
    )
    p.add_argument(
        "--success-model", default=None, help="success.safetensors (default: the bundle's, else train)"
    )
    p.add_argument("--success-train-episodes", type=int, default=400)
    p.add_argument("--success-val-episodes", type=int, default=60)
    p.add_argument("--success-steps", type=int, default=3000, help="success model training steps")
    p.add_argument(
        "--render-resolution", type=_pair, default=(480, 640), help="H,W BridgeSim renders at (the data's)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "auto"),
        help="the model's dtype in the rollouts (auto: what BridgeWorld-v0 runs on this device, bf16 on CUDA "
        "and on CPUs with bf16 kernels); every published table so far was measured in float32",
    )
    p.add_argument("--batch-size", type=int, default=16, help="worlds rolled out together")
    p.add_argument("--workers", type=int, default=1, help="BridgeSim processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _success_model(args: argparse.Namespace, world_model: WorldModel, device: torch.device, progress: bool):
    """Load (and measure on held-out sim frames, also after the world model's tokenizer round trip) or
    train the success model (on renders and their round trips); returns (model, metrics)."""
    resolution = (world_model.cfg.height, world_model.cfg.width)
    bundled = resolve_weights(args.checkpoint).parent / SUCCESS_WEIGHTS
    source = Path(args.success_model) if args.success_model else bundled if bundled.exists() else None
    if source is None:
        model, metrics = build_success_model(
            resolution,
            train_episodes=args.success_train_episodes,
            val_episodes=args.success_val_episodes,
            steps=args.success_steps,
            seed=args.seed,
            render_resolution=args.render_resolution,
            workers=args.workers,
            device=device,
            progress=progress,
            world_model=world_model,
        )
        metrics["saved_to"] = str(model.save(args.out, metrics))
        return model, metrics
    model = load_success_model(source, device)
    if (model.cfg.height, model.cfg.width) != resolution:
        raise SystemExit(
            f"{source}: success model is {model.cfg.height}x{model.cfg.width}, model is {resolution}"
        )
    val = collect_success_frames(
        args.success_val_episodes,
        seed=args.seed + 1_000_000,
        resolution=resolution,
        render_resolution=args.render_resolution,
        workers=args.workers,
        progress=progress,
    )
    return model, {
        "loaded_from": str(source),
        "val": evaluate_success_model(model, val),
        "val_round_trip": evaluate_success_model(model, round_tripped(val, world_model)),
        "val_episodes": len(val.starts),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen stages and write OUT/metrics.json and OUT/report.html; returns the metrics."""
    args = parse_args(argv)
    stages = _names(args.stages, STAGES, "stages")
    progress = not args.no_progress
    if "open_loop" in stages and args.data is None:
        raise SystemExit("the open_loop stage needs --data DIR")
    device = best_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dtype = inference_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype)
    model = WorldModel.from_pretrained(args.checkpoint, device=device, dtype=dtype)
    resolution = (model.cfg.height, model.cfg.width)
    metric_device = str(device)
    metrics: dict = {
        "checkpoint": str(resolve_weights(args.checkpoint)),
        "data": str(args.data) if args.data else None,
        "split": args.split,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch_threads": torch.get_num_threads(),
        "model": {
            "preset": model.cfg.name,
            "resolution": list(resolution),
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),  # what the rollouts ran in
            "denoise_steps": model.cfg.denoise_steps,  # the sampler every rollout here used
            "stage": model.stage,  # the training stage that made the weights
            "dynamics_stage": model.dynamics_stage,  # and the dynamics' ("distill": a one-step student)
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "timings": {"load": round(time.perf_counter() - start, 3)},
    }
    timings = metrics["timings"]
    examples = None
    if "open_loop" in stages:
        t = time.perf_counter()
        dataset = make_dataset(args.data, args.split, model)
        ol = evaluate_open_loop(
            model, dataset, args.horizons, args.episodes, args.batch_size, args.seed, progress, metric_device
        )
        metrics["open_loop"], examples = ol.summary(), ol.examples
        timings["open_loop"] = round(time.perf_counter() - t, 3)
    if "counterfactual" in stages:
        t = time.perf_counter()
        cf = evaluate_counterfactual(
            model,
            args.counterfactual_episodes,
            args.horizons,
            seed=args.seed + 1000,
            batch_size=args.batch_size,
            render_resolution=args.render_resolution,
            workers=args.workers,
            progress=progress,
            metric_device=metric_device,
        )
        metrics["counterfactual"] = cf.summary()
        timings["counterfactual"] = round(time.perf_counter() - t, 3)
    success_model = None
    if "success" in stages or "ranking" in stages:
        t = time.perf_counter()
        success_model, metrics["success"] = _success_model(args, model, device, progress)
        timings["success"] = round(time.perf_counter() - t, 3)
    if "ranking" in stages:
        t = time.perf_counter()
        rk = evaluate_ranking(
            model,
            success_model,
            _names(args.policies, POLICIES, "policies"),
            episodes=args.policy_episodes,
            max_steps=args.policy_steps,
            seed=args.seed + 2000,
            batch_size=args.batch_size,
            confirm_frames=args.confirm_frames,
            render_resolution=args.render_resolution,
            workers=args.workers,
            progress=progress,
        )
        metrics["ranking"] = rk.summary()
        timings["ranking"] = round(time.perf_counter() - t, 3)
    timings["total"] = round(time.perf_counter() - start, 3)
    metrics["headline"] = headline(metrics)
    write_metrics(metrics, args.out)
    report = write_report(metrics, args.out, examples)
    if progress:
        print(f"wrote {args.out / 'metrics.json'} and {report} in {timings['total']:.1f} s")
    return metrics


if __name__ == "__main__":
    main()
