"""Open-loop fidelity of one model under several sampling schedules (Euler steps x time shift x context noise).

The number of denoising steps sets the speed of a step; the schedule's shift (SD3's, >1 spends the
steps at high noise) and the context noise (the flow time given to, and added to, the frames a new
frame attends to; training draws it from U(0, context_noise_max)) cost nothing. This rolls the same
val episodes out under each setting, with the same seeds, and prints PSNR / SSIM against the ground
truth at a few horizons:

    python benchmarks/sampling_sweep.py --checkpoint checkpoints/bridge_small --data DATA --episodes 30 \\
        --settings 4:1 2:6 2:10 3:6 2:6:0.05 --horizon 60

A setting is STEPS:SHIFT[:CONTEXT_NOISE] (the checkpoint's context noise when left out). Writes the rows
as JSON with --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from worldsim.eval.open_loop import evaluate_open_loop, make_dataset
from worldsim.models.world_model import WorldModel, best_device, inference_dtype


def parse_setting(text: str) -> tuple[int, float, float | None]:
    """'2:6' -> (2, 6.0, None); '2:6:0.05' -> (2, 6.0, 0.05)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError(text)
        steps, shift = int(parts[0]), float(parts[1])
        context = float(parts[2]) if len(parts) == 3 else None
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"setting {text!r}: expected STEPS:SHIFT[:CONTEXT_NOISE], e.g. 2:6 or 2:6:0.05"
        ) from e
    if steps < 1 or shift <= 0 or (context is not None and not 0 <= context < 1):
        raise argparse.ArgumentTypeError(
            f"setting {text!r}: steps >= 1, shift > 0 and context noise in [0, 1) are needed"
        )
    return steps, shift, context


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", default=None, help="bundle folder or .safetensors (default: the bundled model)"
    )
    p.add_argument("--data", required=True, help="Bridge-format dataset root")
    p.add_argument("--split", default="val")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--horizon", type=int, default=60)
    p.add_argument(
        "--settings", nargs="+", type=parse_setting, default=[(4, 1.0, None), (2, 6.0, None), (3, 6.0, None)]
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = best_device(args.device)
    # Its own copy (not load_shared's): each setting replaces the copy's sampling config.
    model = WorldModel.from_pretrained(args.checkpoint, device=device, dtype=inference_dtype(device))
    dataset = make_dataset(args.data, args.split, model)
    shipped = model.cfg
    horizons = [h for h in (1, 12, 30, 60) if h <= args.horizon]
    rows = []
    print(
        f"{len(dataset.episodes[: args.episodes])} episodes of {args.data} ({args.split}), {device}, {inference_dtype(device)}"
    )
    print(
        "| steps | time_shift | context noise | "
        + " | ".join(f"PSNR h{h}" for h in horizons)
        + " | mean PSNR h1-H | SSIM h12 |"
    )
    print("|---" * (len(horizons) + 5) + "|")
    for steps, shift, context in args.settings:
        context = shipped.context_noise if context is None else context
        model.cfg = dataclasses.replace(shipped, denoise_steps=steps, time_shift=shift, context_noise=context)
        r = evaluate_open_loop(model, dataset, args.horizon, args.episodes, args.batch_size, progress=False)
        row = {
            "denoise_steps": steps,
            "time_shift": shift,
            "context_noise": context,
            "psnr": {h: float(np.nanmean(r.psnr[:, h - 1])) for h in horizons},
            "episodes_at": {h: int(np.isfinite(r.psnr[:, h - 1]).sum()) for h in horizons},
            "mean_psnr": float(np.nanmean(r.psnr)),
            "ssim_h12": float(np.nanmean(r.ssim[:, 11])) if args.horizon >= 12 else None,
        }
        rows.append(row)
        cells = " | ".join(f"{row['psnr'][h]:.2f}" for h in horizons)
        ssim = f"{row['ssim_h12']:.3f}" if row["ssim_h12"] is not None else "-"
        print(
            f"| {steps} | {shift:g} | {context:g} | {cells} | {row['mean_psnr']:.2f} | {ssim} |", flush=True
        )
    print(
        "episodes long enough for each horizon: "
        + ", ".join(f"h{h}: {n}" for h, n in rows[0]["episodes_at"].items())
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
