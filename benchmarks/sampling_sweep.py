"""Open-loop fidelity of one model under several sampling schedules (Euler steps x time shift).

The number of denoising steps sets the speed of a step; the schedule's shift (SD3's, >1 spends the
steps at high noise) costs nothing. This rolls the same val episodes out under each setting, with the
same seeds, and prints PSNR / SSIM against the ground truth at a few horizons:

    python benchmarks/sampling_sweep.py --checkpoint checkpoints/bridge_small --data DATA --episodes 30 \\
        --settings 4:1 2:6 2:10 3:6 --horizon 60

A setting is STEPS:SHIFT. Writes the rows as JSON with --out.
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


def parse_setting(text: str) -> tuple[int, float]:
    try:
        steps, shift = text.split(":")
        return int(steps), float(shift)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"setting {text!r}: expected STEPS:SHIFT, e.g. 2:6") from e


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", default=None, help="bundle folder or .safetensors (default: the bundled model)"
    )
    p.add_argument("--data", required=True, help="Bridge-format dataset root")
    p.add_argument("--split", default="val")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--horizon", type=int, default=60)
    p.add_argument("--settings", nargs="+", type=parse_setting, default=[(4, 1.0), (2, 6.0), (3, 6.0)])
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
        "| steps | time_shift | "
        + " | ".join(f"PSNR h{h}" for h in horizons)
        + " | mean PSNR h1-H | SSIM h12 |"
    )
    print("|---" * (len(horizons) + 4) + "|")
    for steps, shift in args.settings:
        model.cfg = dataclasses.replace(shipped, denoise_steps=steps, time_shift=shift)
        r = evaluate_open_loop(model, dataset, args.horizon, args.episodes, args.batch_size, progress=False)
        row = {
            "denoise_steps": steps,
            "time_shift": shift,
            "psnr": {h: float(np.nanmean(r.psnr[:, h - 1])) for h in horizons},
            "episodes_at": {h: int(np.isfinite(r.psnr[:, h - 1]).sum()) for h in horizons},
            "mean_psnr": float(np.nanmean(r.psnr)),
            "ssim_h12": float(np.nanmean(r.ssim[:, 11])) if args.horizon >= 12 else None,
        }
        rows.append(row)
        cells = " | ".join(f"{row['psnr'][h]:.2f}" for h in horizons)
        ssim = f"{row['ssim_h12']:.3f}" if row["ssim_h12"] is not None else "-"
        print(f"| {steps} | {shift:g} | {cells} | {row['mean_psnr']:.2f} | {ssim} |", flush=True)
    print(
        "episodes long enough for each horizon: "
        + ", ".join(f"h{h}: {n}" for h, n in rows[0]["episodes_at"].items())
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
